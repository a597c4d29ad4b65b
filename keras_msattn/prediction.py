"""Segmenting image files and writing the results as PNGs.

For each image `<stem>.<ext>`, `predict_files` writes into the output folder:

- `<stem>_labels.png`: 8-bit grayscale, the predicted class index per pixel;
- `<stem>_mask.png`: the labels in the VOC colour palette;
- `<stem>_overlay.png`: the image with the colour mask blended in;
- `<stem>_attention.png`: the location-attention weight of every scale stream,
  when the model has location attention;
- `<stem>_recalibration.png`: the recalibration maps of the predicted classes,
  when the model has the recalibrating branch.

All PNGs but the attention figures have the size of the input image. Images of
any size are segmented at their own resolution; where the model cannot take
that size (built for a fixed size, or the image is smaller than its minimum
side) it is tiled or padded, see `keras_msattn.evaluation`. The attention
figures are computed on the image resized to a size the model accepts.
Grayscale, palette, RGBA and 16-bit images are converted to 8-bit RGB.
"""

import os

import numpy as np
from PIL import Image

from keras_msattn import visualization
from keras_msattn.data.base import read_class_names
from keras_msattn.inference import accepts_input_size, fixed_input_size, predict_labels

OUTPUT_SUFFIXES = ("_labels.png", "_mask.png", "_overlay.png")


def read_image(path):
    """An image file as uint8 RGB `(H, W, 3)`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not an image PIL can decode; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such image file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not an image file")
    from keras_msattn.data.images import image_size_problem

    problem = image_size_problem(path)
    if problem:
        raise ValueError(f"{path}: {problem}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grey: scale to 8 bits, as tf.io.decode_image does.
                grey = np.asarray(image, np.float64) / 257.0
                array = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
                return np.repeat(array[..., None], 3, axis=-1)
            if image.mode != "RGB":
                image = (
                    image.convert("RGBA").convert("RGB")
                    if "A" in image.mode
                    else image.convert("RGB")
                )
            return np.asarray(image, np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from error


def _attention_input(model, image):
    """The image resized to a size the model accepts (for `attention_maps`)."""
    height, width = image.shape[:2]
    if accepts_input_size(model, height, width):
        return image
    fixed = fixed_input_size(model)
    if fixed is not None and None not in fixed:
        size = fixed
    else:
        factor = getattr(model, "min_input_side", 1) / min(height, width)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(resized)


def predict_file(
    model,
    path,
    out_dir,
    class_names=None,
    attention=True,
    image=None,
    **options,
):
    """Segments one image file and writes its PNGs into `out_dir`.

    Args:
        model: a segmentation model (logits, or a dict with "final").
        path: the image file; its stem names the outputs.
        out_dir: output folder (created if missing).
        class_names: names for the figures (None: "class <i>").
        attention: also write the attention figures when the model has them.
        image: the already decoded image, to skip reading `path` again.
        **options: `tta_scales`, `tta_weights`, `flip`, `sliding_window`, `batch_size` as in
            `keras_msattn.inference.predict_probabilities`.

    Returns:
        dict of the written paths: "labels", "mask", "overlay" and, where
        written, "attention" and "recalibration".
    """
    if image is None:
        image = read_image(path)
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    base = os.path.join(os.fspath(out_dir), stem)
    labels = predict_labels(model, image, **options)
    if labels.max(initial=0) > 254:
        raise ValueError(
            "the labels PNG holds 8-bit class indices (255 = ignore); this model has more "
            "than 255 classes"
        )
    written = {
        "labels": visualization.save_image(labels.astype(np.uint8), base + "_labels.png"),
        "mask": visualization.save_image(visualization.colorize(labels), base + "_mask.png"),
        "overlay": visualization.save_image(
            visualization.overlay(image, labels), base + "_overlay.png"
        ),
    }
    if attention and hasattr(model, "attention_maps"):
        shown = _attention_input(model, image)
        maps = model.attention_maps(shown[None])
        if "scale_weights" in maps:
            written["attention"] = visualization.plot_scale_attention(
                shown, maps["scale_weights"][0], model.scales, base + "_attention.png"
            )
        if "recalibration" in maps:
            shown_labels = (
                labels
                if shown.shape == image.shape
                else np.asarray(
                    Image.fromarray(labels.astype(np.uint8)).resize(
                        (shown.shape[1], shown.shape[0]), Image.NEAREST
                    )
                )
            )
            written["recalibration"] = visualization.plot_recalibration(
                shown,
                maps["recalibration"][0],
                class_names,
                base + "_recalibration.png",
                predictions=shown_labels,
            )
    return written


def predict_files(model, paths, out_dir, class_names=None, attention=True, **options):
    """Segments image files into `out_dir` (see the module docstring for the outputs).

    Every readable image is processed; files that cannot be read are reported
    together at the end.

    Returns:
        A list with one `predict_file` result per image.

    Raises:
        ValueError: no paths, two inputs with the same stem (their outputs would
            collide), class names that do not match the model, or, after the
            readable images are done, one line per file that could not be read.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("`paths`: no image files given")
    stems = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise ValueError(
                f"{stems[stem]} and {path} have the same name {stem!r}; their outputs would "
                "overwrite each other"
            )
        stems[stem] = path
    num_classes = getattr(model, "num_classes", None)
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names; the model predicts {num_classes} classes"
        )
    os.makedirs(out_dir, exist_ok=True)
    results, failures = [], []
    for path in paths:
        try:
            image = read_image(path)
        except (FileNotFoundError, ValueError) as error:
            failures.append(str(error))
            continue
        results.append(
            predict_file(
                model, path, out_dir, class_names, attention=attention, image=image, **options
            )
        )
    if failures:
        raise ValueError(
            f"{len(failures)} of {len(paths)} image(s) could not be read:\n" + "\n".join(failures)
        )
    return results


def predict_with_saved_model(
    model_path, image_paths, out_dir, class_names_file=None, attention=True, **options
):
    """`predict_files` with a `.keras` model file and an optional class-names file.

    `sliding_window="model"` tiles with the model's fixed input size.
    """
    from keras_msattn.evaluation import resolve_sliding_window
    from keras_msattn.inference import load_segmenter

    class_names = read_class_names(class_names_file) if class_names_file else None
    model = load_segmenter(model_path)
    if "sliding_window" in options:
        options["sliding_window"] = resolve_sliding_window(
            model, options["sliding_window"], model_path
        )
    return predict_files(
        model, image_paths, out_dir, class_names=class_names, attention=attention, **options
    )
