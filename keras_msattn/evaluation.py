"""Evaluating a segmentation model on a dataset: mIoU, pixel and class accuracy.

`evaluate` streams through the dataset one image at a time and keeps only the
`(C, C)` confusion matrix (int64, rows: ground truth, columns: prediction), so
memory stays bounded however many or however large the images are. Scores come
from `keras_msattn.metrics.segmentation_scores`.

How one image is predicted (`predict_probabilities`, shared with
`keras_msattn.prediction`):

- **Multi-scale testing** (`tta_scales`): the image is resized bilinearly to
  `round(H * s) x round(W * s)` for every scale `s`, the model runs on it, its
  logits are resized bilinearly back to `H x W` and turned into softmax
  probabilities. The probabilities of all scales (and flips) are averaged, the
  DeepLab / PSPNet convention: averaging probabilities keeps one overconfident
  view from outvoting the others, which averaging raw logits would not.
- **Flip** (`flip=True`): every scale also runs on the horizontally flipped
  image, whose logits are flipped back before averaging.
- **Sliding window** (`sliding_window`): the (scaled) image is tiled with
  windows of the crop size overlapping by a third; images smaller than the crop
  are padded on the bottom and right with the ImageNet mean colour (padding is
  cropped off the prediction, so no label is needed for it). Logits of
  overlapping windows are averaged. A model built for a fixed input size (a PSP
  export) gets windows of that size automatically, and an image smaller than the
  model's minimum side is padded up to it: `check_input_size` decides.

With `tta_scales=(1.0,)`, no flip and no sliding window the prediction is the
argmax of the model's logits on the image, i.e. plain single-scale evaluation.

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

import json
import math
import os
import tempfile
import zipfile

import keras
import numpy as np

from keras_msattn.errors import make_ordinary
from keras_msattn.metrics import segmentation_scores

# RGB colour of padded image pixels (normalizes to about zero), as the data pipelines pad.
PAD_COLOR = (123.68, 116.779, 103.939)
IGNORE_LABEL = 255
# Consecutive sliding windows overlap by this fraction of the crop.
WINDOW_OVERLAP = 1 / 3


# === One image ===


def _pair(size, name):
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    try:
        size = tuple(int(s) for s in size)
    except TypeError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`{name}` must be a positive int or (height, width), got {size!r}.")
    return size


def fixed_input_size(model):
    """`(H, W)` the model was built for (either may be None), or None where it takes any size."""
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else (None,) * 4
    height, width = shape[1], shape[2]
    if height is None and width is None:
        return None
    return height, width


def accepts_input_size(model, height, width):
    """Whether the model takes `(height, width)` images as they are (`check_input_size`)."""
    check = getattr(model, "check_input_size", None)
    if check is not None:
        try:
            check(height, width)
        except ValueError:
            return False
        return True
    fixed = fixed_input_size(model)
    return fixed is None or (fixed[0] in (None, height) and fixed[1] in (None, width))


def _fallback_crop(model, height, width):
    """The window for an image the model cannot take as it is: its fixed size, else padding."""
    fixed = fixed_input_size(model)
    min_side = getattr(model, "min_input_side", 1)
    crop_h = fixed[0] if fixed and fixed[0] is not None else max(height, min_side)
    crop_w = fixed[1] if fixed and fixed[1] is not None else max(width, min_side)
    return crop_h, crop_w


def _logits(model, images):
    """The model's logits as a float32 numpy array; a deep-supervision dict gives "final"."""
    # predict_on_batch runs a compiled graph that relaxes to any image size after
    # a few distinct shapes, instead of tracing every odd size anew.
    outputs = model.predict_on_batch(np.ascontiguousarray(images, np.float32))
    if isinstance(outputs, dict):
        if "final" not in outputs:
            raise ValueError(
                f"The model returns a dict without a 'final' entry (keys {sorted(outputs)}); "
                "expected logits or a deep-supervision dict."
            )
        outputs = outputs["final"]
    return keras.ops.convert_to_numpy(outputs).astype(np.float32)


def _resize(array, height, width):
    """Bilinear resize of (B, h, w, C) to (B, height, width, C), as the model's own resizing."""
    if array.shape[1:3] == (height, width):
        return array
    resized = keras.ops.image.resize(array, (height, width), interpolation="bilinear")
    return keras.ops.convert_to_numpy(resized).astype(np.float32)


def _window_starts(size, crop, stride):
    if size <= crop:
        return [0]
    count = math.ceil((size - crop) / stride) + 1
    return [min(i * stride, size - crop) for i in range(count)]


def sliding_window_logits(model, image, crop_size, batch_size=1):
    """Logits `(H, W, C)` of one image `(H, W, 3)` from overlapping windows of `crop_size`.

    Windows overlap by a third of the crop; where they overlap their logits are
    averaged. A side shorter than the crop is padded with `PAD_COLOR` on the
    bottom or right, and the padding is cut off the result. `batch_size` windows
    go through the model at a time.
    """
    crop_h, crop_w = _pair(crop_size, "sliding_window")
    height, width = image.shape[:2]
    padded_h, padded_w = max(height, crop_h), max(width, crop_w)
    if (padded_h, padded_w) != (height, width):
        padded = np.empty((padded_h, padded_w, 3), np.float32)
        padded[:] = PAD_COLOR
        padded[:height, :width] = image
        image = padded
    stride_h = max(1, math.ceil(crop_h * (1 - WINDOW_OVERLAP)))
    stride_w = max(1, math.ceil(crop_w * (1 - WINDOW_OVERLAP)))
    boxes = [
        (top, left)
        for top in _window_starts(padded_h, crop_h, stride_h)
        for left in _window_starts(padded_w, crop_w, stride_w)
    ]
    total = None
    counts = np.zeros((padded_h, padded_w, 1), np.float32)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        crops = np.stack([image[y : y + crop_h, x : x + crop_w] for y, x in chunk])
        logits = _logits(model, crops)
        if total is None:
            total = np.zeros((padded_h, padded_w, logits.shape[-1]), np.float32)
        for (top, left), window in zip(chunk, logits, strict=True):
            total[top : top + crop_h, left : left + crop_w] += window
            counts[top : top + crop_h, left : left + crop_w] += 1.0
    return (total / counts)[:height, :width]


def _view_logits(model, image, sliding_window, batch_size):
    """Logits (H, W, C) of one view of the image, tiled or padded where needed."""
    height, width = image.shape[:2]
    crop = sliding_window
    if crop is None and not accepts_input_size(model, height, width):
        crop = _fallback_crop(model, height, width)
    if crop is not None:
        crop = _pair(crop, "sliding_window")
        if not accepts_input_size(model, *crop):
            fixed = fixed_input_size(model)
            raise ValueError(
                f"`sliding_window`: the model cannot take {crop[0]}x{crop[1]} windows"
                + (f"; it was built for {fixed[0]}x{fixed[1]} inputs." if fixed else ".")
            )
        return sliding_window_logits(model, image, crop, batch_size)
    return _logits(model, image[None])[0]


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def predict_probabilities(
    model, image, tta_scales=(1.0,), flip=False, sliding_window=None, batch_size=1
):
    """Class probabilities `(H, W, C)` of one image, averaged over scales and flips.

    Args:
        model: a segmentation model returning logits (or a deep-supervision dict).
        image: `(H, W, 3)` RGB, 0..255, any numeric dtype.
        tta_scales: scales to run the image at; probabilities are averaged at `H x W`.
        flip: also run on the horizontally flipped image.
        sliding_window: None, or a crop size (int or (h, w)) to tile each scaled
            image with. Images the model cannot take are tiled (fixed-size model)
            or padded (too small) automatically.
        batch_size: windows per model call when tiling.

    Returns:
        float32 numpy `(H, W, C)`, summing to 1 over classes.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be (H, W, 3) RGB, got shape {image.shape}.")
    scales = _check_scales(tta_scales)
    height, width = image.shape[:2]
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = _resize(image[None], *size)[0]
        views = [(scaled, False), (scaled[:, ::-1], True)] if flip else [(scaled, False)]
        for view, flipped in views:
            logits = _view_logits(model, np.ascontiguousarray(view), sliding_window, batch_size)
            if flipped:
                logits = logits[:, ::-1]
            probabilities = _softmax(_resize(logits[None], height, width)[0])
            total = probabilities if total is None else total + probabilities
    return total / (len(scales) * (2 if flip else 1))


def predict_labels(model, image, **options):
    """Class indices `(H, W)` int32 of one image; options as `predict_probabilities`."""
    return np.argmax(predict_probabilities(model, image, **options), axis=-1).astype(np.int32)


def _check_scales(tta_scales):
    try:
        scales = tuple(float(s) for s in tta_scales)
    except TypeError as error:
        raise ValueError(
            f"`tta_scales` must be a sequence of floats, got {tta_scales!r}."
        ) from error
    if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales):
        raise ValueError(f"`tta_scales` must be one or more positive scales, got {tta_scales!r}.")
    return scales


# === A dataset ===


def confusion_matrix(labels, predictions, num_classes, ignore_label=IGNORE_LABEL):
    """`(C, C)` int64 counts of (ground truth, prediction); ignore and out-of-range labels skipped."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    cells = labels[valid] * num_classes + predictions[valid]
    return np.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


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


def _bucket_scores(bucket_confusion):
    from keras_msattn.data.scale_digits import SIZE_BUCKETS, miou_from_confusion

    scores = {}
    for b, name in enumerate(SIZE_BUCKETS):
        miou = miou_from_confusion(bucket_confusion[b])
        scores[f"miou_{name}"] = None if math.isnan(miou) else miou
    return scores


def evaluate(
    model,
    dataset,
    num_classes,
    tta_scales=(1.0,),
    flip=False,
    sliding_window=None,
    batch_size=1,
    class_names=None,
    size_buckets=False,
    max_images=None,
    ignore_label=IGNORE_LABEL,
    verbose=1,
):
    """Scores a segmentation model on a dataset, one image at a time.

    Args:
        model: returns logits `(B, H, W, C)` (or a dict with "final") for raw RGB images.
        dataset: unbatched `(image (H, W, 3), label (H, W))` examples, a
            `tf.data.Dataset` or any iterable (batched datasets are unbatched here);
            with `size_buckets`, `(image, label, size_map)` as ScaleDigits'
            `load(..., with_size_map=True)` yields.
        num_classes: number of classes C.
        tta_scales, flip, sliding_window, batch_size: see `predict_probabilities`.
        class_names: C names for `per_class_iou`; default "class_<i>".
        size_buckets: also score ScaleDigits' small / medium / large digits.
        max_images: stop after this many images.
        ignore_label: label value that is not scored.
        verbose: 1 shows a progress bar with the running mIoU, 0 is silent.

    Returns:
        A JSON-ready dict: `miou`, `pixel_accuracy`, `mean_class_accuracy` (in
        [0, 1]), `per_class_iou` and `per_class_accuracy` ({name: value or None
        where undefined}), `num_images`, `num_pixels`, `confusion_matrix` (C lists
        of C ints), the settings used, and with `size_buckets` `miou_small`,
        `miou_medium`, `miou_large` (None for a bucket with no digits).
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
    scales = _check_scales(tta_scales)
    if sliding_window is not None:
        sliding_window = _pair(sliding_window, "sliding_window")
    num_classes = int(num_classes)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    bucket_confusion = np.zeros((3, num_classes, num_classes), np.int64)
    progress = None
    if verbose:
        progress = keras.utils.Progbar(
            _num_examples(dataset, max_images), stateful_metrics=["miou"], unit_name="image"
        )
    num_images = 0
    for example in _examples(dataset):
        if max_images is not None and num_images >= max_images:
            break
        if size_buckets and len(example) < 3:
            raise ValueError(
                "`size_buckets=True` needs (image, label, size_map) examples, e.g. "
                "scale_digits.load(split, with_size_map=True)."
            )
        image, label = example[0], example[1]
        if label.ndim == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"Example {num_images}: label shape {label.shape} does not match the image "
                f"{image.shape[:2]}."
            )
        probabilities = predict_probabilities(
            model,
            image,
            tta_scales=scales,
            flip=flip,
            sliding_window=sliding_window,
            batch_size=batch_size,
        )
        if probabilities.shape[-1] != num_classes:
            raise ValueError(
                f"The model predicts {probabilities.shape[-1]} classes; `num_classes` is "
                f"{num_classes}."
            )
        prediction = np.argmax(probabilities, axis=-1)
        del probabilities
        confusion += confusion_matrix(label, prediction, num_classes, ignore_label)
        if size_buckets:
            from keras_msattn.data.scale_digits import size_bucket_confusion

            bucket_confusion += size_bucket_confusion(
                label,
                prediction,
                example[2],
                num_classes=num_classes,
                image_size=image.shape[0],
                ignore_label=ignore_label,
            )
        num_images += 1
        if progress is not None:
            progress.update(num_images, values=[("miou", _running_miou(confusion))])
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
        "flip": bool(flip),
        "sliding_window": list(sliding_window) if sliding_window is not None else None,
    }
    if size_buckets:
        results.update(_bucket_scores(bucket_confusion))
    results["confusion_matrix"] = confusion.tolist()
    return results


def _running_miou(confusion):
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    present = union > 0
    return float(np.mean(true_positives[present] / union[present])) if present.any() else 0.0


# === Reports ===


def write_json(results, path):
    """Writes `results` to `path` as indented JSON, atomically (temporary file + os.replace)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        make_ordinary(tmp)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def evaluate_to_json(path, model, dataset, num_classes, metadata=None, write=True, **options):
    """`evaluate(model, dataset, num_classes, **options)`, written to `path` as JSON.

    `metadata` (e.g. {"model": ..., "dataset": ..., "split": ...}) goes into the
    file first. Returns the results dict (with the metadata).
    """
    results = dict(metadata or {})
    results.update(evaluate(model, dataset, num_classes, **options))
    if write:
        write_json(results, path)
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


# === Saved models ===


def load_segmenter(path, compile=True):
    """A `.keras` model file, loaded with `safe_mode=True` (after registering our classes)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    if not path.endswith(".keras"):
        raise ValueError(f"{path}: expected a .keras model file (as `model.save(path)` writes)")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: damaged, or not a .keras model (a .keras file is a whole zip archive); "
            "save or copy the model again"
        )
    import keras_msattn  # noqa: F401  (registers the package's layers for deserialization)

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(
            f"{path}: damaged or not a model this package wrote, cannot load it ({error}); "
            "save or copy the model again"
        ) from error


def default_split(dataset, data_dir=None):
    """The split `msattn evaluate` scores by default: "test" for ScaleDigits, else "val"."""
    if dataset == "scale_digits":
        return "test"
    if dataset == "folder":
        from keras_msattn.data import folder

        return "val" if "val" in folder.available_splits(data_dir) else "all"
    return "val"


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
):
    """Loads a `.keras` model, scores it on a dataset split and writes the JSON report.

    Args:
        model_path: the `.keras` file.
        dataset: a `keras_msattn.data.load_dataset` name.
        split: default `default_split(dataset)`.
        data_dir: the dataset root.
        out: the JSON path; default `default_json_path(model_path, dataset, split)`.
        sliding_window: None, a crop size, or "model" for the model's fixed input size.
        tta_scales, flip, max_images, verbose: as `evaluate`. ScaleDigits also gets
            per-size-bucket mIoU.
        skip_bad: skip bad files (counted on stderr, and in the results as
            `num_skipped`: None where the count is unknown, e.g. cut short by
            `max_images`) instead of failing.

    Returns:
        (results dict, JSON path).
    """
    from keras_msattn.data import dataset_info, load_dataset

    model = load_segmenter(model_path)
    split = split or default_split(dataset, data_dir)
    info = dataset_info(dataset, data_dir)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != info.num_classes:
        raise ValueError(
            f"{model_path}: the model predicts {num_classes} classes; dataset {dataset!r} "
            f"has {info.num_classes}"
        )
    sliding_window = resolve_sliding_window(model, sliding_window, model_path)
    size_buckets = dataset == "scale_digits"
    options = {"with_size_map": True} if size_buckets else {}
    if skip_bad:
        options["skip_bad"] = True
    ds = load_dataset(dataset, split, data_dir, **options)
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
        flip=flip,
        sliding_window=sliding_window,
        class_names=info.class_names,
        size_buckets=size_buckets,
        max_images=max_images,
        verbose=verbose,
        write=False,
    )
    num_files = getattr(ds, "msattn_num_files", None)
    complete = max_images is None or results["num_images"] < max_images
    skipped = num_files - results["num_images"] if num_files is not None and complete else None
    results["num_skipped"] = skipped if skip_bad else 0
    write_json(results, out)
    return results, out
