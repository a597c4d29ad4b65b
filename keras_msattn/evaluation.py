"""Evaluating a segmentation model on a dataset: mIoU, pixel and class accuracy.

`evaluate` streams through the dataset and keeps only the `(C, C)` confusion
matrix (int64, rows: ground truth, columns: prediction), so memory stays
bounded however many or however large the images are. Each image is predicted
by `keras_msattn.inference.predict_probabilities` (multi-scale testing, flips,
sliding windows: see there), or, seen as it is, in a batch of up to
`batch_size` images of its size; the scores come from
`keras_msattn.inference.segmentation_scores`.

Example:

```python
from keras_msattn.data import dataset_info, load_dataset

info = dataset_info("voc2012")
ds = load_dataset("voc2012", "val", data_dir="~/data")
results = evaluate(model, ds, info.num_classes, tta_scales=(0.75, 1.0, 1.25), flip=True,
                   class_names=info.class_names)
print(results["miou"])
```
"""

import os
import sys

import keras
import numpy as np

from keras_msattn import files
from keras_msattn.data.base import IGNORE_LABEL
from keras_msattn.inference import (
    accepts_input_size,
    batch_logits,
    batch_probabilities,
    check_tta_scales,
    check_tta_weights,
    confusion_matrix,
    fixed_input_size,
    load_segmenter,
    mean_iou,
    model_num_classes,
    predict_probabilities,
    scaled_sizes,
    segmentation_scores,
    size_pair,
)

# === A dataset ===


def _examples(dataset):
    """(image, label[, size_map]) numpy tuples, one image at a time, from any dataset."""
    iterator = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    for example in iterator:
        example = tuple(np.asarray(part) for part in example)
        if example[0].ndim == 4:  # a batched dataset: unbatch it here
            for i in range(example[0].shape[0]):
                yield tuple(part[i] for part in example)
        else:
            yield example


def _num_examples(dataset, max_images):
    count = None
    if hasattr(dataset, "cardinality"):
        cardinality = int(dataset.cardinality())
        count = cardinality if cardinality >= 0 else None
    elif hasattr(dataset, "__len__"):
        count = len(dataset)
    if max_images is not None:
        count = max_images if count is None else min(count, max_images)
    return count


def evaluate(
    model,
    dataset,
    num_classes,
    tta_scales=(1.0,),
    flip=False,
    sliding_window=None,
    batch_size=1,
    class_names=None,
    extra_scores=None,
    max_images=None,
    ignore_label=IGNORE_LABEL,
    verbose=1,
    tta_weights=None,
):
    """Scores a segmentation model on a dataset, one image at a time.

    Args:
        model: returns logits `(B, H, W, C)` (or a dict with "final") for raw RGB images.
        dataset: unbatched `(image (H, W, 3), label (H, W))` examples, a
            `tf.data.Dataset` or any iterable (batched datasets are unbatched here);
            with `extra_scores`, `(image, label, *extras)` as the dataset's `load`
            yields with `extra_scores.load_options`.
        num_classes: number of classes C.
        tta_scales, flip, sliding_window, tta_weights: see `predict_probabilities`.
        batch_size: images per model call; consecutive images of one size that
            need no window (the model takes them at every scale of `tta_scales`)
            are batched (memory grows with it), and a tiled image sends this many
            windows at a time.
        class_names: C names for `per_class_iou`; default "class_<i>".
        extra_scores: a dataset's `ExtraScores` (`keras_msattn.data.datasets.extra_scores`,
            e.g. ScaleDigits' mIoU by digit size), merged into the results.
        max_images: stop after this many images.
        ignore_label: label value that is not scored.
        verbose: 1 shows a progress bar with the running mIoU (one line at the end
            when stdout is not a terminal), 0 is silent.

    Returns:
        A JSON-ready dict: `miou`, `pixel_accuracy`, `mean_class_accuracy` (in
        [0, 1]), `per_class_iou` and `per_class_accuracy` ({name: value or None
        where undefined}), `num_images`, `num_pixels`, `confusion_matrix` (C lists
        of C ints), the settings used, and what `extra_scores` adds (ScaleDigits:
        `miou_small`, `miou_medium`, `miou_large`, None for a bucket with no digits).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}.")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}.")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"`class_names` has {len(class_names)} names for {num_classes} classes.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"`max_images` must be a positive integer or None, got {max_images!r}.")
    scales = check_tta_scales(tta_scales)
    weights = check_tta_weights(tta_weights, scales)
    if sliding_window is not None:
        sliding_window = size_pair(sliding_window, "sliding_window")
    num_classes = int(num_classes)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    progress = None
    if verbose:
        # A bar redrawn per image fills a log file: off a terminal, one line at the end.
        progress = keras.utils.Progbar(
            _num_examples(dataset, max_images),
            stateful_metrics=["miou"],
            unit_name="image",
            verbose=1 if sys.stdout.isatty() else 2,
        )
    num_images = 0
    examples = _checked_examples(_examples(dataset), max_images)
    options = dict(tta_scales=scales, tta_weights=weights, flip=flip, sliding_window=sliding_window)
    for example, probabilities in _predictions(model, examples, batch_size, options):
        label = example[1]
        if probabilities.shape[-1] != num_classes:
            raise ValueError(
                f"The model predicts {probabilities.shape[-1]} classes; `num_classes` is "
                f"{num_classes}."
            )
        prediction = np.argmax(probabilities, axis=-1)
        del probabilities
        confusion += confusion_matrix(label, prediction, num_classes, ignore_label)
        if extra_scores is not None:
            extra_scores.update(label, prediction, tuple(example[2:]))
        num_images += 1
        if progress is not None:
            progress.update(num_images, values=[("miou", mean_iou(confusion))])
    if num_images == 0:
        raise ValueError("`dataset` holds no examples to evaluate.")

    scores = segmentation_scores(confusion, class_names)
    names = scores["class_names"]
    results = {
        "miou": scores["miou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "mean_class_accuracy": scores["mean_class_accuracy"],
        "per_class_iou": dict(zip(names, scores["per_class_iou"], strict=True)),
        "per_class_accuracy": dict(zip(names, scores["per_class_accuracy"], strict=True)),
        "num_images": num_images,
        "num_pixels": int(confusion.sum()),
        "tta_scales": list(scales),
        "tta_weights": list(weights),
        "flip": bool(flip),
        "sliding_window": list(sliding_window) if sliding_window is not None else None,
    }
    if extra_scores is not None:
        results.update(extra_scores.result())
    results["confusion_matrix"] = confusion.tolist()
    return results


def _checked_examples(examples, max_images):
    """The first `max_images` examples, each label squeezed to (H, W) and checked."""
    for index, example in enumerate(examples):
        if max_images is not None and index >= max_images:
            return
        image, label = example[0], example[1]
        if label.ndim == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"Example {index}: label shape {label.shape} does not match the image "
                f"{image.shape[:2]}."
            )
        yield (image, label, *example[2:])


def _predictions(model, examples, batch_size, options):
    """(example, per-pixel scores whose argmax is the prediction) for each example.

    Consecutive images of one size that need no window go through the model
    `batch_size` at a time, once per view: per-call overhead dominates a small
    model's time on one image. Seen as they are (no test-time scales but 1.0, no
    flip), their logits stand in for the probabilities, which have the same
    argmax. Any other image is predicted alone by `predict_probabilities`.
    """
    plain = options["tta_scales"] == (1.0,) and not options["flip"]
    batchable = options["sliding_window"] is None
    views = {k: options[k] for k in ("tta_scales", "tta_weights", "flip")}
    pending = []

    def flush():
        images = np.stack([ex[0] for ex in pending])
        if plain:
            scores = batch_logits(model, images, batch_size=len(pending))
        else:
            scores = batch_probabilities(model, images, **views)
        done = list(zip(pending, scores, strict=True))
        pending.clear()
        return done

    def takes_whole(image):
        sizes = scaled_sizes(*image.shape[:2], options["tta_scales"])
        return all(accepts_input_size(model, *size) for size in sizes)

    for example in examples:
        image = example[0]
        if batchable and image.ndim == 3 and image.shape[-1] == 3 and takes_whole(image):
            if pending and pending[0][0].shape != image.shape:
                yield from flush()
            pending.append(example)
            if len(pending) == batch_size:
                yield from flush()
            continue
        if pending:
            yield from flush()
        yield example, predict_probabilities(model, image, batch_size=batch_size, **options)
    if pending:
        yield from flush()


# === Reports ===


def evaluate_to_json(path, model, dataset, num_classes, metadata=None, write=True, **options):
    """`evaluate(model, dataset, num_classes, **options)`, written to `path` as JSON.

    `metadata` (e.g. {"model": ..., "dataset": ..., "split": ...}) goes into the
    file first. Returns the results dict (with the metadata).
    """
    results = dict(metadata or {})
    results.update(evaluate(model, dataset, num_classes, **options))
    if write:
        files.write_json(path, results)
    return results


def format_results(results):
    """A plain-text table of the scores in an `evaluate` result, IoU per class last."""

    def percent(value):
        return "   n/a" if value is None else f"{100 * value:6.2f}"

    lines = [
        f"images              {results['num_images']}",
        f"mIoU                {percent(results['miou'])}",
        f"pixel accuracy      {percent(results['pixel_accuracy'])}",
        f"mean class accuracy {percent(results['mean_class_accuracy'])}",
    ]
    for bucket in ("small", "medium", "large"):
        if f"miou_{bucket}" in results:
            lines.append(f"mIoU {bucket:<15}{percent(results[f'miou_{bucket}'])}")
    per_class = results["per_class_iou"]
    width = max(len("class"), *(len(name) for name in per_class))
    lines += ["", f"{'class':<{width}}  IoU (%)", f"{'-' * width}  -------"]
    lines += [f"{name:<{width}}  {percent(iou)}" for name, iou in per_class.items()]
    return "\n".join(lines)


def default_json_path(model_path, dataset, split):
    """`MODEL_eval_<dataset>_<split>.json` next to the model file."""
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{dataset}_{split}")
    return f"{os.path.splitext(os.fspath(model_path))[0]}_eval_{tag}.json"


def resolve_sliding_window(model, sliding_window, model_path="the model"):
    """`sliding_window` with "model" replaced by the model's fixed input size."""
    if sliding_window != "model":
        return sliding_window
    fixed = fixed_input_size(model)
    if fixed is None or None in fixed:
        raise ValueError(
            f"{model_path}: a sliding window without a crop size needs a model built for a "
            "fixed input size; give the crop, e.g. --sliding-window 513"
        )
    return fixed


def evaluate_saved_model(
    model_path,
    dataset,
    split=None,
    data_dir=None,
    out=None,
    tta_scales=(1.0,),
    flip=False,
    sliding_window=None,
    max_images=None,
    verbose=1,
    skip_bad=False,
    tta_weights=None,
):
    """Loads a `.keras` model, scores it on a dataset split and writes the JSON report.

    Args:
        model_path: the `.keras` file.
        dataset: a `keras_msattn.data.load_dataset` name.
        split: default the dataset's `eval_split` ("test" for ScaleDigits, else "val").
        data_dir: the dataset root.
        out: the JSON path; default `default_json_path(model_path, dataset, split)`.
        sliding_window: None, a crop size, or "model" for the model's fixed input size.
        tta_scales, tta_weights, flip, max_images, verbose: as `evaluate`. A dataset's extra
            scores (ScaleDigits: mIoU by digit size) are added.
        skip_bad: skip bad files (counted on stderr, and in the results as
            `num_skipped`: None where the count is unknown, e.g. cut short by
            `max_images`) instead of failing.

    Returns:
        (results dict, JSON path).
    """
    from keras_msattn.data import dataset_info, load_dataset
    from keras_msattn.data.datasets import extra_scores

    model = load_segmenter(model_path)
    num_classes = model_num_classes(model)
    # A folder without classes.txt takes the model's class count.
    info = dataset_info(dataset, data_dir, num_classes=num_classes)
    split = split or info.eval_split
    if num_classes is not None and num_classes != info.num_classes:
        raise ValueError(
            f"{model_path}: the model predicts {num_classes} classes; dataset {dataset!r} "
            f"has {info.num_classes}"
        )
    sliding_window = resolve_sliding_window(model, sliding_window, model_path)
    extras = extra_scores(dataset)
    ds = load_dataset(
        dataset,
        split,
        data_dir,
        skip_bad=skip_bad,
        num_classes=info.num_classes,
        **(extras.load_options if extras is not None else {}),
    )
    out = out or default_json_path(model_path, dataset, split)
    metadata = {
        "model": os.path.abspath(model_path),
        "dataset": dataset,
        "split": split,
        "data_dir": os.path.abspath(data_dir) if data_dir else None,
    }
    results = evaluate_to_json(
        out,
        model,
        ds,
        info.num_classes,
        metadata=metadata,
        tta_scales=tta_scales,
        tta_weights=tta_weights,
        flip=flip,
        sliding_window=sliding_window,
        class_names=info.class_names,
        extra_scores=extras,
        max_images=max_images,
        verbose=verbose,
        write=False,
    )
    num_files = getattr(ds, "msattn_num_files", None)
    complete = max_images is None or results["num_images"] < max_images
    skipped = num_files - results["num_images"] if num_files is not None and complete else None
    results["num_skipped"] = skipped if skip_bad else 0
    files.write_json(out, results)
    return results, out
