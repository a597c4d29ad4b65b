"""Segmentation cross-entropy with an ignore label, and the deep-supervision loss set.

How the loss is reduced (and why it is correct under `tf.distribute`):

`SegmentationCrossEntropy.call` returns the per-pixel cross-entropy `(B, H, W)`,
and `__call__` passes the valid-pixel mask (times any user `sample_weight`) to
Keras as the sample weight with the reduction `"mean_with_sample_weight"`. Keras
then computes `sum(loss * w) / sum(w)` with `divide_no_nan` (0, not NaN, when
every pixel is ignored) and divides by the number of replicas in sync, exactly
as it does for its built-in losses. Gradients are summed across replicas, so
the objective is the mean over replicas of each replica's valid-pixel mean; on
one device it is the valid-pixel mean of the batch. Returning an already
reduced scalar from `call` would be wrong under `tf.distribute`: Keras skips
both the reduction and the per-replica scaling for scalars, which multiplies
the effective learning rate by the number of replicas.

With several replicas whose shards hold different numbers of valid pixels, the
mean of per-replica means is not the global valid-pixel mean (that needs a
cross-replica sum of the pixel count). It is what PyTorch's DDP computes with
`CrossEntropyLoss(ignore_index=255)`, the setting of the paper.
"""

import numbers

import keras
from keras import ops


def _squeeze_channel(labels):
    # Labels may arrive as (B, H, W, 1) from image pipelines.
    if len(labels.shape) == 4 and labels.shape[-1] == 1:
        return ops.squeeze(labels, axis=-1)
    return labels


def _hard_pixels(losses, valid, fraction):
    """1.0 where a pixel is among the `fraction` of its image's pixels with the highest loss.

    `losses (B, h, w)`; only `valid` pixels are chosen. The threshold is the
    k-th largest loss of each image, k = ceil(fraction * h * w); an image with
    fewer valid pixels than k keeps all of them.
    """
    flat = ops.reshape(
        ops.where(valid, ops.stop_gradient(losses), -1.0), (ops.shape(losses)[0], -1)
    )
    count = ops.cast(ops.shape(flat)[1], "float32")
    k = ops.cast(ops.maximum(ops.ceil(fraction * count), 1.0), "int32")
    descending = -ops.sort(-flat, axis=-1)
    threshold = ops.take(descending, k - 1, axis=1)
    chosen = ops.greater_equal(losses, ops.reshape(threshold, (-1, 1, 1)))
    return ops.cast(ops.logical_and(chosen, valid), "float32")


def _cell_centres(size, cells):
    # The pixel under the centre of each of `cells` equal cells spanning `size` pixels.
    centres = (ops.cast(ops.arange(cells), "float32") + 0.5) * ops.cast(size, "float32")
    return ops.cast(ops.floor(centres / ops.cast(cells, "float32")), "int32")


def labels_on_grid(labels, logits):
    """`labels (B, H, W)` sampled onto the spatial grid of `logits (B, h, w, C)`.

    Each grid cell takes the label of the pixel under its centre (nearest
    neighbour, half-pixel centres, as the model's resizes align their grids):
    for a stride-4 grid of a 128-px crop, pixels 2, 6, ..., 126 of each row and
    column. Labels already the logits' size are returned unchanged. This is how
    a model with `loss_stride` > 1 is trained: its logits are compared with the
    labels where they are, not upsampled to every pixel first.
    """
    label_size, grid_size = labels.shape[1:3], logits.shape[1:3]
    if None not in label_size and tuple(label_size) == tuple(grid_size):
        return labels
    label_shape, grid_shape = ops.shape(labels), ops.shape(logits)
    rows = _cell_centres(label_shape[1], grid_shape[1])
    cols = _cell_centres(label_shape[2], grid_shape[2])
    return ops.take(ops.take(labels, rows, axis=1), cols, axis=2)


@keras.saving.register_keras_serializable(package="keras_msattn")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Per-pixel softmax cross-entropy on logits, ignoring one label value.

    The value is the mean over the pixels whose label is not `ignore_label`
    (0 when every pixel is ignored). It is computed in float32 even when the
    logits are float16 (mixed precision). See the module docstring for the
    reduction under `tf.distribute`.

    Args:
        ignore_label: int, label value that contributes no loss. Defaults to 255.
        hard_pixel_fraction: in (0, 1]. Below 1, each image's loss is the mean
            over that fraction of its pixels with the highest cross-entropy
            (online hard-pixel mining, the "bootstrapped" cross-entropy): pixels
            the model already gets right stop diluting the few it gets wrong,
            such as a small object's. 1 (default) averages every valid pixel.
        name: loss name.

    Inputs:
        y_true: class ids `(B, H, W)` or `(B, H, W, 1)`, int or float.
        y_pred: logits `(B, H, W, C)`, or on a coarser grid `(B, h, w, C)`: the
            labels are then sampled onto it (`labels_on_grid`).
        sample_weight: optional, `(B,)` per image or `(B, H, W)` per pixel;
            the result is then `sum(w * loss) / sum(w)` over valid pixels.

    Example:
    ```python
    loss = SegmentationCrossEntropy(ignore_label=255)
    value = loss(labels, logits)
    ```
    """

    def __init__(
        self, ignore_label=255, hard_pixel_fraction=1.0, name="segmentation_cross_entropy"
    ):
        if isinstance(ignore_label, bool) or not isinstance(ignore_label, int):
            raise ValueError(
                f"`ignore_label` must be an int. Received: ignore_label={ignore_label!r}"
            )
        check_hard_pixel_fraction(hard_pixel_fraction)
        super().__init__(name=name, reduction="mean_with_sample_weight", dtype="float32")
        self.ignore_label = ignore_label
        self.hard_pixel_fraction = float(hard_pixel_fraction)

    def _labels(self, y_true):
        labels = _squeeze_channel(ops.convert_to_tensor(y_true))
        return ops.cast(labels, "int32")

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        labels = labels_on_grid(self._labels(y_true), y_pred)
        weights = ops.cast(ops.not_equal(labels, self.ignore_label), "float32")
        if sample_weight is not None:
            sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            sample_weight = _squeeze_channel(sample_weight)
            if len(sample_weight.shape) == 1:
                sample_weight = ops.reshape(sample_weight, (-1, 1, 1))
            else:
                sample_weight = labels_on_grid(sample_weight, y_pred)
            weights = weights * sample_weight
        y_pred = ops.cast(y_pred, "float32")
        if self.hard_pixel_fraction < 1.0:
            # The per-pixel losses are computed once more inside Keras' reduction
            # below; on the loss grid that is cheap, and that reduction is what
            # keeps the value right under tf.distribute (module docstring).
            valid = ops.greater(weights, 0.0)
            weights = weights * _hard_pixels(
                self.call(labels, y_pred), valid, self.hard_pixel_fraction
            )
        return super().__call__(labels, y_pred, sample_weight=weights)

    def call(self, y_true, y_pred):
        labels = labels_on_grid(self._labels(y_true), y_pred)
        valid = ops.not_equal(labels, self.ignore_label)
        # Ignored pixels get class 0 so the op stays in range; their loss is zeroed
        # here and their weight is 0 in `__call__`.
        safe_labels = ops.where(valid, labels, 0)
        losses = ops.sparse_categorical_crossentropy(
            safe_labels, ops.cast(y_pred, "float32"), from_logits=True
        )
        return ops.where(valid, losses, 0.0)

    def get_config(self):
        return {
            "name": self.name,
            "ignore_label": self.ignore_label,
            "hard_pixel_fraction": self.hard_pixel_fraction,
        }


def check_hard_pixel_fraction(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise ValueError(f"`hard_pixel_fraction` must be a number in (0, 1], got {value!r}.")


def deep_supervision_losses(output_names, weights=None, ignore_label=255, hard_pixel_fraction=1.0):
    """Losses and loss weights for `model.compile` on a deep-supervision model.

    The paper trains on the sum of `1 + S` cross-entropies: the fused output
    and each scale's score map. Keras adds the weighted per-output losses.

    Args:
        output_names: the model's output keys, e.g. `["final", "scale_1.0",
            "scale_0.5"]` (`keras_msattn.segmenter.output_names(scales)`).
        weights: None (1 for every output), a dict `{output_name: weight}`
            (outputs not named keep 1), or a sequence in `output_names` order.
        ignore_label: label value that contributes no loss.
        hard_pixel_fraction: each output's `SegmentationCrossEntropy` option.

    Returns:
        `(losses, loss_weights)`: two dicts keyed by output name, for
        `model.compile(loss=losses, loss_weights=loss_weights)`. The labels
        must then be given as a dict with the same keys (the same label map
        for every output).
    """
    if isinstance(output_names, str) or not output_names:
        raise ValueError(
            "`output_names` must be a non-empty sequence of output names. "
            f"Received: output_names={output_names!r}"
        )
    names = list(output_names)
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"`output_names` must be unique strings. Received: {names}")

    resolved = dict.fromkeys(names, 1.0)
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(
                f"`weights` has unknown output names {unknown}; allowed names: {names}"
            )
        resolved.update(weights)
    elif weights is not None:
        if isinstance(weights, str) or len(weights) != len(names):
            raise ValueError(
                f"`weights` must be a dict or a sequence of {len(names)} numbers "
                f"(one per output of {names}). Received: weights={weights!r}"
            )
        resolved = dict(zip(names, weights, strict=True))
    for name, value in resolved.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
            raise ValueError(
                f"Loss weight for output '{name}' must be a number >= 0. Received: {value!r}"
            )
    losses = {
        name: SegmentationCrossEntropy(
            ignore_label=ignore_label,
            hard_pixel_fraction=hard_pixel_fraction,
            name=f"{name}_cross_entropy",
        )
        for name in names
    }
    return losses, {name: float(value) for name, value in resolved.items()}
