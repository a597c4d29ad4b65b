"""Pictures of segmentations and of what the attention branches do.

Image outputs (`colorize`, `overlay`, `save_image`) need only numpy and PIL.
Figures (`plot_predictions`, `plot_scale_attention`, `plot_recalibration`) use
matplotlib's object-oriented API with the Agg canvas, imported when first
needed, so nothing here changes the matplotlib backend of the caller. Every PNG
is written atomically (through `keras_msattn.files`).

Colours: the PASCAL VOC palette (`palette`), which spreads the bits of the class
index over the high bits of R, G and B, so neighbouring classes get clearly
different colours for up to 255 classes; class 0 is black. The ignore label 255
is drawn white.
"""

import numpy as np
from PIL import Image

from keras_msattn import files

IGNORE_LABEL = 255
IGNORE_COLOR = (255, 255, 255)
# Figure resolution; panel sizes below are in inches.
DPI = 100
PANEL_INCHES = 3.2
MAX_PANELS_PER_ROW = 4


# === Colours and image outputs ===


def palette(num_colors=256):
    """`(num_colors, 3)` uint8 VOC palette; entry 255 is `IGNORE_COLOR`."""
    if not 1 <= num_colors <= 256:
        raise ValueError(f"`num_colors` must be in [1, 256], got {num_colors!r}.")
    index = np.arange(256)
    colors = np.zeros((256, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            colors[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    colors[IGNORE_LABEL] = IGNORE_COLOR
    return colors[:num_colors].astype(np.uint8)


def _check_labels(labels, name="labels"):
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"`{name}` must be an (H, W) map of class indices, got shape {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"`{name}` must hold class indices in [0, 255] (255 = ignore), got values "
            f"{labels.min()}..{labels.max()}."
        )
    return labels.astype(np.int64)


def _check_image(image, name="image"):
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"`{name}` must be (H, W, 3) RGB, got shape {image.shape}.")
    return np.clip(image[..., :3], 0, 255).astype(np.uint8)


def colorize(labels):
    """RGB uint8 `(H, W, 3)` picture of an `(H, W)` map of class indices (255 = ignore)."""
    return palette()[_check_labels(labels)]


def overlay(image, labels, alpha=0.5):
    """The image with the coloured labels blended in (`alpha` of colour); ignore pixels stay."""
    image = _check_image(image)
    labels = _check_labels(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(
            f"`labels` shape {labels.shape} does not match the image size {image.shape[:2]}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}.")
    colors = colorize(labels).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colors
    blended[labels == IGNORE_LABEL] = image[labels == IGNORE_LABEL]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_image(array, path):
    """Writes a uint8 `(H, W)` (grayscale) or `(H, W, 3)` (RGB) array as a PNG, atomically."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(
            f"`array` must be uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}."
        )
    return files.write_with(lambda tmp: Image.fromarray(array).save(tmp, format="PNG"), path)


# === Figures ===


def _figure(rows, cols):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return figure, axes


def _save_figure(figure, path):
    return files.write_with(lambda tmp: figure.savefig(tmp, format="png", dpi=DPI), path)


def _class_names(class_names, needed):
    if class_names is None:
        return [f"class {i}" for i in range(needed)]
    class_names = [str(name) for name in class_names]
    if len(class_names) < needed:
        raise ValueError(
            f"`class_names` has {len(class_names)} names but the labels use class {needed - 1}."
        )
    return class_names


def _legend(figure, classes, class_names):
    """A colour key of `classes` under the figure."""
    from matplotlib.patches import Patch

    colors = palette()
    handles = [
        Patch(
            facecolor=colors[c] / 255.0,
            edgecolor="black",
            label="ignore" if c == IGNORE_LABEL else class_names[c],
        )
        for c in classes
    ]
    if handles:
        figure.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 6),
            fontsize="small",
            frameon=False,
        )


def plot_predictions(images, labels, predictions, class_names, path, max_legend_classes=24):
    """One row per image: image | ground truth | prediction, with a colour key.

    Args:
        images: sequence of `(H, W, 3)` RGB images (0..255).
        labels: matching `(H, W)` ground-truth maps (255 = ignore), or None to
            leave the column out.
        predictions: matching `(H, W)` predicted class maps.
        class_names: names of the classes (None: "class <i>").
        path: the PNG to write.
        max_legend_classes: the key shows at most this many classes, the most
            frequent first.

    Returns:
        `path`.
    """
    images = [_check_image(image, "images") for image in images]
    predictions = [_check_labels(p, "predictions") for p in predictions]
    if labels is not None:
        labels = [_check_labels(label, "labels") for label in labels]
    if (
        not images
        or len(predictions) != len(images)
        or (labels is not None and len(labels) != len(images))
    ):
        raise ValueError(
            "`images`, `labels` and `predictions` must be non-empty and of the same length."
        )
    maps = predictions + (labels or [])
    present = np.bincount(np.concatenate([m.reshape(-1) for m in maps]), minlength=256)
    classes = [int(c) for c in np.argsort(-present, kind="stable") if present[c] > 0]
    non_ignore = [c for c in classes if c != IGNORE_LABEL]
    names = _class_names(class_names, max(non_ignore) + 1 if non_ignore else 0)
    legend_classes = sorted(non_ignore[:max_legend_classes]) + (
        [IGNORE_LABEL] if IGNORE_LABEL in classes else []
    )

    columns = [("image", images)]
    if labels is not None:
        columns.append(("ground truth", labels))
    columns.append(("prediction", predictions))
    figure, axes = _figure(len(images), len(columns))
    for row in range(len(images)):
        for col, (title, values) in enumerate(columns):
            ax = axes[row, col]
            picture = values[row] if title == "image" else colorize(values[row])
            ax.imshow(picture, interpolation="nearest")
            if row == 0:
                ax.set_title(title)
    legend_rows = -(-len(legend_classes) // 6)
    figure.subplots_adjust(
        left=0.02, right=0.98, top=0.93, bottom=min(0.4, 0.04 + 0.06 * legend_rows / len(images))
    )
    _legend(figure, legend_classes, names)
    return _save_figure(figure, path)


def _upsample(values, height, width):
    """Bilinear resize of an `(h, w)` float map to `(height, width)` for display."""
    if values.shape == (height, width):
        return values
    resized = Image.fromarray(np.asarray(values, np.float32), mode="F").resize(
        (width, height), Image.BILINEAR
    )
    return np.asarray(resized)


def _heat_maps(image, maps, titles, path, vmin, vmax, cmap, suptitle):
    """The image, then one heat map per entry of `maps` with its colour bar, 4 panels a row."""
    image = _check_image(image)
    height, width = image.shape[:2]
    cols = min(MAX_PANELS_PER_ROW, len(maps) + 1)
    rows = -(-(len(maps) + 1) // cols)
    figure, axes = _figure(rows, cols)
    axes = axes.flatten()
    axes[0].imshow(image)
    axes[0].set_title("image")
    for ax, values, title in zip(axes[1:], maps, titles, strict=False):
        shown = ax.imshow(
            _upsample(values, height, width),
            vmin=vmin,
            vmax=vmax,
            cmap=cmap,
            interpolation="nearest",
        )
        ax.set_title(title, fontsize="medium")
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    figure.suptitle(suptitle)
    figure.subplots_adjust(
        left=0.02, right=0.93, top=1 - 0.18 / rows, bottom=0.04, wspace=0.25, hspace=0.3
    )
    return _save_figure(figure, path)


def _scale_label(scale):
    return f"{float(scale):g}" if float(scale) != int(scale) else f"{float(scale):.1f}"


def plot_scale_attention(image, scale_weights, scales, path):
    """The image and, per scale, the location-attention weight of its stream (0..1).

    Args:
        image: `(H, W, 3)` RGB image the weights were computed on.
        scale_weights: `(h, w, S)` (or `(1, h, w, S)`) softmax weights over the
            scales, as `model.attention_maps(images)["scale_weights"]`; shown
            resized to the image.
        scales: the S scales, in the order of the last axis (`model.scales`).
        path: the PNG to write.

    Returns:
        `path`.
    """
    weights = np.asarray(scale_weights, np.float32)
    if weights.ndim == 4 and weights.shape[0] == 1:
        weights = weights[0]
    scales = [float(s) for s in scales]
    if weights.ndim != 3 or weights.shape[-1] != len(scales):
        raise ValueError(
            f"`scale_weights` must be (h, w, S) with S = {len(scales)} scales, got shape "
            f"{weights.shape}."
        )
    titles = [f"weight of the {_scale_label(s)}x stream" for s in scales]
    maps = [weights[..., i] for i in range(len(scales))]
    return _heat_maps(
        image, maps, titles, path, 0.0, 1.0, "viridis", "location attention over scales"
    )


def plot_recalibration(
    image, recalibration, class_names, path, classes=None, predictions=None, max_classes=6
):
    """Per-class recalibration maps (the extra branch's weight per pixel and class).

    Args:
        image: `(H, W, 3)` RGB image.
        recalibration: `(h, w, C)` (or `(1, h, w, C)`) recalibration map, as
            `model.attention_maps(images)["recalibration"]`: in (0, 1) for the
            multiplicative branch (colour bar 0..1), an additive bias otherwise
            (colour bar symmetric around 0).
        class_names: C names (None: "class <i>").
        path: the PNG to write.
        classes: class indices to show. Default: the classes present in
            `predictions`, largest area first, else those with the highest mean
            recalibration; at most `max_classes`.
        predictions: optional `(H, W)` predicted class map to choose classes from.

    Returns:
        `path`.
    """
    values = np.asarray(recalibration, np.float32)
    if values.ndim == 4 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 3:
        raise ValueError(f"`recalibration` must be (h, w, C), got shape {values.shape}.")
    num_classes = values.shape[-1]
    names = _class_names(class_names, num_classes)
    if classes is None:
        if predictions is not None:
            counts = np.bincount(
                _check_labels(predictions, "predictions").reshape(-1), minlength=256
            )[:num_classes]
            classes = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
        else:
            classes = [int(c) for c in np.argsort(-values.mean(axis=(0, 1)), kind="stable")]
        classes = classes[:max_classes]
    classes = [int(c) for c in classes]
    if not classes or any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f"`classes` must be indices in [0, {num_classes}), got {classes!r}.")
    in_unit_interval = values.min() >= 0.0 and values.max() <= 1.0
    if in_unit_interval:
        vmin, vmax, cmap = 0.0, 1.0, "magma"
    else:
        limit = float(np.abs(values).max()) or 1.0
        vmin, vmax, cmap = -limit, limit, "coolwarm"
    titles = [f"recalibration of {names[c]!r}" for c in classes]
    maps = [values[..., c] for c in classes]
    suptitle = "class recalibration" + ("" if in_unit_interval else " (additive bias)")
    return _heat_maps(image, maps, titles, path, vmin, vmax, cmap, suptitle)


def plot_training_curve(history, path, x_key="elapsed_seconds", y_key="val_final_miou"):
    """Validation mIoU against minutes of training, from a run's history.json entries.

    Args:
        history: list of per-epoch dicts (as `keras_msattn.training.train` returns).
        path: the PNG to write.

    Returns:
        `path`.
    """
    points = [
        (entry[x_key] / 60.0, entry[y_key])
        for entry in history
        if entry.get(x_key) is not None and entry.get(y_key) is not None
    ]
    if not points:
        raise ValueError(f"`history` has no entries with both {x_key!r} and {y_key!r}.")
    figure, axes = _figure(1, 1)
    axes = axes[0, 0]
    axes.set_axis_on()
    axes.plot([0.0] + [p[0] for p in points], [0.0] + [p[1] for p in points], marker="o")
    axes.set_xlabel("training time (minutes)")
    axes.set_ylabel("validation mIoU")
    axes.set_title("validation mIoU during training")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return _save_figure(figure, path)
