"""What a segmentation model predicts, in numpy: one home for inference.

Evaluation, prediction, export verification and the quickstart all go through
here:

- `load_segmenter`: a `.keras` file, loaded in safe mode, with errors that name it;
- `final_output`: the logits of a model output (a deep-supervision dict gives
  its "final" entry);
- input sizes: `fixed_input_size`, `model_input_size`, `check_input_size`,
  `accepts_input_size`;
- `predict_probabilities` / `predict_labels`: one image, with multi-scale
  testing, flips and sliding windows; `batch_probabilities`: a batch of
  same-size images, with multi-scale testing and flips;
- `confusion_matrix`, `mean_iou`, `segmentation_scores`: the numpy scores
  (the streaming Keras metrics are `keras_msattn.metrics`).

How one image is predicted (`predict_probabilities`):

- **Multi-scale testing** (`tta_scales`): the image is resized bilinearly to
  `round(H * s) x round(W * s)` for every scale `s`, the model runs on it, its
  logits are resized bilinearly back to `H x W` and turned into softmax
  probabilities. The probabilities of all scales (and flips) are averaged, the
  DeepLab / PSPNet convention: averaging probabilities keeps one overconfident
  view from outvoting the others, which averaging raw logits would not.
  `tta_weights` weighs the scales unequally, e.g. `tta_scales=(1.0, 2.0),
  tta_weights=(2, 1)`: a zoomed view that finds small objects without
  outvoting the 1x view on large ones.
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
"""

import math
import os
import zipfile

import keras
import numpy as np

from keras_msattn.data.base import IGNORE_LABEL

# RGB colour of padded image pixels (normalizes to about zero), as the data pipelines pad.
PAD_COLOR = (123.68, 116.779, 103.939)
# Consecutive sliding windows overlap by this fraction of the crop.
WINDOW_OVERLAP = 1 / 3


# === Models ===


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
        model = keras.saving.load_model(path, safe_mode=True, compile=compile)
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(
            f"{path}: damaged or not a model this package wrote, cannot load it ({error}); "
            "save or copy the model again"
        ) from error
    problem = segmenter_problem(model)
    if problem:
        raise ValueError(
            f"{path} holds a {type(model).__name__} that is not a segmentation model: "
            f"{problem}. keras_msattn commands take a model that maps (B, H, W, 3) images "
            "to (B, H, W, C) logits at the input's size, as a MultiScaleSegmenter does."
        )
    return model


def segmenter_problem(model):
    """None for a model of images to per-pixel logits at their size, else what is wrong."""
    inputs = getattr(model, "inputs", None)
    try:
        output = model.output  # a deep-supervision dict stays a dict here
    except AttributeError:  # a loaded Sequential has only `outputs`
        outputs = getattr(model, "outputs", None) or []
        output = outputs[0] if len(outputs) == 1 else (outputs or None)
    if not inputs or output is None:
        return "it has no functional inputs and outputs"
    if len(inputs) != 1:
        return f"it takes {len(inputs)} inputs, not one image batch"
    if isinstance(output, (list, tuple)):
        return f"it returns {len(output)} outputs, not one logits map"
    try:
        logits = final_output(output)
    except ValueError as error:
        return str(error)
    image, logits = tuple(inputs[0].shape), tuple(logits.shape)
    if len(image) != 4 or image[-1] != 3:
        return f"its input is {image}, not (B, H, W, 3) images"
    if len(logits) != 4 or logits[1:3] != image[1:3] or (logits[-1] or 0) < 2:
        return f"its output is {logits} for inputs {image}, not (B, H, W, C) logits"
    return None


def final_output(outputs):
    """The logits of a model output; a deep-supervision dict gives its "final" entry."""
    if isinstance(outputs, dict):
        if "final" not in outputs:
            raise ValueError(
                f"The model returns a dict with keys {sorted(outputs)} and no 'final' logits."
            )
        return outputs["final"]
    return outputs


def model_num_classes(model):
    """The number of classes a model predicts (its "final" logits' channels)."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        num_classes = final_output(model.output).shape[-1]
    return int(num_classes)


# === Input sizes ===


def fixed_input_size(model):
    """`(H, W)` the model was built for (either may be None), or None where it takes any size."""
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else (None,) * 4
    height, width = shape[1], shape[2]
    if height is None and width is None:
        return None
    return height, width


def model_input_size(model):
    """`(H, W)` when the model was built for one fixed size, else None."""
    fixed = fixed_input_size(model)
    if fixed is None or None in fixed:
        return None
    return int(fixed[0]), int(fixed[1])


def check_input_size(model, height, width):
    """Raises ValueError if the model cannot take `(height, width)` images."""
    if hasattr(model, "check_input_size"):
        model.check_input_size(height, width)
        return
    fixed = fixed_input_size(model) or (None, None)
    for side, built in zip((height, width), fixed, strict=True):
        if built is not None and side != built:
            raise ValueError(
                f"`input_size`: the model was built for {fixed[0]}x{fixed[1]} inputs; "
                f"got {height}x{width}."
            )


def accepts_input_size(model, height, width):
    """Whether the model takes `(height, width)` images as they are (`check_input_size`)."""
    try:
        check_input_size(model, height, width)
    except ValueError:
        return False
    return True


def size_pair(size, name):
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    try:
        size = tuple(int(s) for s in size)
    except TypeError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`{name}` must be a positive int or (height, width), got {size!r}.")
    return size


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
    outputs = final_output(model.predict_on_batch(np.ascontiguousarray(images, np.float32)))
    return keras.ops.convert_to_numpy(outputs).astype(np.float32)


def batch_logits(model, images, batch_size=4):
    """The model's final logits (float32 numpy `(N, H, W, C)`) on `(N, H, W, 3)` images."""
    images = np.asarray(images, np.float32)
    return np.concatenate(
        [
            _logits(model, images[start : start + batch_size])
            for start in range(0, len(images), batch_size)
        ]
    )


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
    crop_h, crop_w = size_pair(crop_size, "sliding_window")
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
        crop = size_pair(crop, "sliding_window")
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


def _merged_probabilities(images, scales, weights, flip, view_logits):
    """Softmax probabilities `(N, H, W, C)` of `(N, H, W, 3)` images, weighted over views.

    Every scale's image (and its mirror with `flip`) goes through
    `view_logits((N, h, w, 3)) -> (N, h, w, C)`; its logits are resized back to
    `H x W` and turned into probabilities, which are summed with the scale's weight.
    """
    height, width = images.shape[1:3]
    mirrors = (False, True) if flip else (False,)
    total = None
    for size, weight in zip(scaled_sizes(height, width, scales), weights, strict=True):
        scaled = _resize(images, *size)
        for mirrored in mirrors:
            view = scaled[:, :, ::-1] if mirrored else scaled
            logits = view_logits(np.ascontiguousarray(view))
            if mirrored:
                logits = logits[:, :, ::-1]
            probabilities = _softmax(_resize(logits, height, width))
            probabilities *= weight / len(mirrors)
            total = probabilities if total is None else total + probabilities
    return total


def predict_probabilities(
    model,
    image,
    tta_scales=(1.0,),
    flip=False,
    sliding_window=None,
    batch_size=1,
    tta_weights=None,
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
        tta_weights: None (every scale weighs the same) or one non-negative
            weight per scale; the average is weighted by them.

    Returns:
        float32 numpy `(H, W, C)`, summing to 1 over classes.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be (H, W, 3) RGB, got shape {image.shape}.")
    scales = check_tta_scales(tta_scales)
    weights = check_tta_weights(tta_weights, scales)

    def view_logits(views):
        return _view_logits(model, views[0], sliding_window, batch_size)[None]

    return _merged_probabilities(image[None], scales, weights, flip, view_logits)[0]


def batch_probabilities(model, images, tta_scales=(1.0,), flip=False, tta_weights=None):
    """`predict_probabilities` of `(N, H, W, 3)` images of one size, in one model call
    per view; for models that take every scaled size whole (`accepts_input_size`)."""
    images = np.asarray(images, np.float32)
    scales = check_tta_scales(tta_scales)
    weights = check_tta_weights(tta_weights, scales)
    return _merged_probabilities(images, scales, weights, flip, lambda views: _logits(model, views))


def scaled_sizes(height, width, tta_scales):
    """The `(h, w)` each of `tta_scales` resizes an `H x W` image to."""
    return [(max(1, round(height * s)), max(1, round(width * s))) for s in tta_scales]


def predict_labels(model, image, **options):
    """Class indices `(H, W)` int32 of one image; options as `predict_probabilities`."""
    return np.argmax(predict_probabilities(model, image, **options), axis=-1).astype(np.int32)


def check_tta_scales(tta_scales):
    try:
        scales = tuple(float(s) for s in tta_scales)
    except TypeError as error:
        raise ValueError(
            f"`tta_scales` must be a sequence of floats, got {tta_scales!r}."
        ) from error
    if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales):
        raise ValueError(f"`tta_scales` must be one or more positive scales, got {tta_scales!r}.")
    return scales


def check_tta_weights(tta_weights, scales):
    """The weights of `scales` normalised to sum to 1 (equal when `tta_weights` is None)."""
    if tta_weights is None:
        return tuple(1.0 / len(scales) for _ in scales)
    try:
        weights = tuple(float(w) for w in tta_weights)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`tta_weights` must be a sequence of numbers, got {tta_weights!r}."
        ) from error
    if len(weights) != len(scales):
        raise ValueError(
            f"`tta_weights` needs one weight per scale of `tta_scales` {list(scales)}, got "
            f"{list(weights)}."
        )
    if any(not (w >= 0 and math.isfinite(w)) for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"`tta_weights` must be non-negative numbers with a positive sum, got {tta_weights!r}."
        )
    return tuple(w / sum(weights) for w in weights)


# === Scores ===


def confusion_matrix(labels, predictions, num_classes, ignore_label=IGNORE_LABEL):
    """`(C, C)` int64 counts of (ground truth, prediction); ignore and out-of-range labels skipped."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    cells = labels[valid] * num_classes + predictions[valid]
    return np.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion, empty=0.0):
    """Mean IoU over the classes whose union is nonempty (`empty` when none is)."""
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    present = union > 0
    return float(np.mean(true_positives[present] / union[present])) if present.any() else empty


def segmentation_scores(confusion_matrix, class_names=None):
    """Scores from a confusion matrix (rows: ground truth, columns: prediction).

    Args:
        confusion_matrix: `(C, C)` array-like of counts, e.g.
            `ConfusionMatrix.result()`.
        class_names: optional list of C names; defaults to `"class_<i>"`.

    Returns:
        A dict of plain Python values (JSON-ready): `miou`, `pixel_accuracy`,
        `mean_class_accuracy` (floats in [0, 1]); `per_class_iou` and
        `per_class_accuracy` (lists of C floats, None where undefined: IoU for
        a class absent from both ground truth and prediction, accuracy for a
        class absent from the ground truth; these are left out of the means);
        `class_names`; `num_pixels` (the matrix total).
    """
    confusion = np.asarray(confusion_matrix, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(
            f"`confusion_matrix` must be a square (C, C) matrix. Received shape {confusion.shape}"
        )
    if not np.all(np.isfinite(confusion)) or np.any(confusion < 0):
        raise ValueError("`confusion_matrix` must hold finite counts >= 0.")
    num_classes = confusion.shape[0]
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names for a {num_classes}-class matrix."
        )
    true_positives = np.diag(confusion)
    ground_truth = confusion.sum(axis=1)
    union = ground_truth + confusion.sum(axis=0) - true_positives
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positives / union, np.nan)
        accuracy = np.where(ground_truth > 0, true_positives / ground_truth, np.nan)
    total = confusion.sum()

    def mean_or_zero(values):
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else 0.0

    def as_list(values):
        return [None if math.isnan(v) else float(v) for v in values]

    return {
        "miou": mean_or_zero(iou),
        "pixel_accuracy": float(true_positives.sum() / total) if total > 0 else 0.0,
        "mean_class_accuracy": mean_or_zero(accuracy),
        "per_class_iou": as_list(iou),
        "per_class_accuracy": as_list(accuracy),
        "class_names": class_names,
        "num_pixels": float(total),
    }
