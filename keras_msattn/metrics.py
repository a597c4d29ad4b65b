"""Streaming confusion-matrix metrics for semantic segmentation.

All metrics here accumulate one `(C, C)` confusion matrix (rows: ground
truth, columns: prediction) over every `update_state` call and derive their
score from it, so mIoU is computed over the whole dataset, not averaged over
batches. Pixels labelled `ignore_label` are skipped, and so are labels (or
predicted ids) outside `[0, num_classes)`: checking label ranges is the data
check's job, not the metric's.

Scores follow the usual conventions (all fractions in [0, 1]):
- IoU of class c = TP / (TP + FP + FN). A class absent from both ground truth
  and prediction has no IoU; it is left out of the mean (and reported as None
  per class by `segmentation_scores`). A class that is only predicted has IoU 0.
- pixel accuracy = trace / total.
- mean class accuracy = mean over classes present in the ground truth of
  TP / (TP + FN); classes absent from the ground truth are left out.
- an empty matrix gives 0 for every mean score.

The counts are float64 variables, exact up to 2^53 per cell; float32 would
stop counting at 2^24 (16.7M pixels: the background cell reaches it after
about 130 VOC images).
Each batch is counted with an int32 `bincount` first, so a batch is exact up
to 2^31 pixels. The variables are sync-on-read with SUM aggregation (the
Keras default for metrics), so under `tf.distribute` each replica counts its
shard and reading the result sums them.

`keras.metrics.MeanIoU(num_classes, ignore_class=255, sparse_y_pred=False)`
computes the same mIoU (a test checks it). It is not used as the base because
it fixes at construction whether `y_pred` holds logits or ids, its integer
accumulator truncates fractional sample weights, and pixel accuracy, mean
class accuracy and per-class IoU would each need their own matrix.
"""

import keras
from keras import ops

from keras_msattn.losses import labels_on_grid


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive int. Received: num_classes={num_classes!r}"
        )


@keras.saving.register_keras_serializable(package="keras_msattn")
class ConfusionMatrix(keras.metrics.Metric):
    """Streaming `(C, C)` confusion matrix; `result()` returns the matrix.

    Args:
        num_classes: number of classes C.
        ignore_label: ground-truth value to skip. Defaults to 255.
        name: metric name.
        dtype: dtype of `result()` for the scalar subclasses. The counts
            themselves are always float64.

    Inputs of `update_state(y_true, y_pred, sample_weight=None)`:
        y_true: class ids `(B, H, W)` or `(B, H, W, 1)`, int or float.
        y_pred: logits or probabilities `(B, H, W, C)` (argmax is taken), or
            class ids `(B, H, W)` / `(B, H, W, 1)`. Logits on a coarser grid
            `(B, h, w, C)` (a model trained with `loss_stride`) are scored
            against the labels sampled onto that grid (`labels_on_grid`).
        sample_weight: optional, `(B,)` or `(B, H, W)`; weights each pixel's count.

    Example:
    ```python
    cm = ConfusionMatrix(num_classes=21)
    for images, labels in dataset:
        cm.update_state(labels, model(images))
    scores = segmentation_scores(cm.result())
    ```
    """

    def __init__(self, num_classes, ignore_label=255, name="confusion_matrix", dtype=None):
        super().__init__(name=name, dtype=dtype)
        _check_num_classes(num_classes)
        if isinstance(ignore_label, bool) or not isinstance(ignore_label, int):
            raise ValueError(
                f"`ignore_label` must be an int. Received: ignore_label={ignore_label!r}"
            )
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.total_confusion = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="float64",
            aggregation="sum",
            name="total_confusion_matrix",
        )

    def _class_ids(self, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) == 4 and y_pred.shape[-1] == self.num_classes:
            return ops.argmax(y_pred, axis=-1)
        if len(y_pred.shape) == 4 and y_pred.shape[-1] == 1:
            return ops.squeeze(y_pred, axis=-1)
        if len(y_pred.shape) == 4:
            raise ValueError(
                f"`y_pred` has {y_pred.shape[-1]} channels; expected {self.num_classes} "
                f"(logits) or 1 (class ids). Received shape {y_pred.shape}"
            )
        return y_pred

    def update_state(self, y_true, y_pred, sample_weight=None):
        num_cells = self.num_classes * self.num_classes
        labels = ops.convert_to_tensor(y_true)
        if len(labels.shape) == 4 and labels.shape[-1] == 1:
            labels = ops.squeeze(labels, axis=-1)
        labels = ops.cast(labels, "int32")
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) == 4 and y_pred.shape[-1] == self.num_classes:
            labels = labels_on_grid(labels, y_pred)
        predictions = ops.cast(self._class_ids(y_pred), "int32")
        valid = (
            ops.not_equal(labels, self.ignore_label)
            & ops.greater_equal(labels, 0)
            & ops.less(labels, self.num_classes)
            & ops.greater_equal(predictions, 0)
            & ops.less(predictions, self.num_classes)
        )
        # Skipped pixels go to an extra bin (index C*C) that is dropped below.
        cells = ops.where(valid, labels * self.num_classes + predictions, num_cells)
        cells = ops.reshape(cells, (-1,))
        if sample_weight is None:
            counts = ops.bincount(cells, minlength=num_cells + 1)
        else:
            weights = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            if len(weights.shape) == 4 and weights.shape[-1] == 1:
                weights = ops.squeeze(weights, axis=-1)
            if len(weights.shape) == 1:
                weights = ops.reshape(weights, (-1, 1, 1))
            else:
                weights = labels_on_grid(weights, predictions[..., None])
            weights = ops.reshape(ops.broadcast_to(weights, ops.shape(labels)), (-1,))
            counts = ops.bincount(cells, weights=weights, minlength=num_cells + 1)
        counts = ops.cast(counts[:num_cells], "float64")
        self.total_confusion.assign_add(ops.reshape(counts, (self.num_classes, self.num_classes)))

    def reset_state(self):
        self.total_confusion.assign(ops.zeros((self.num_classes, self.num_classes), "float64"))

    def result(self):
        return ops.copy(self.total_confusion)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "ignore_label": self.ignore_label})
        return config


def _scores(confusion):
    # keras.ops version of `segmentation_scores` for the compile() metrics.
    true_positives = ops.diagonal(confusion)
    ground_truth = ops.sum(confusion, axis=1)
    union = ground_truth + ops.sum(confusion, axis=0) - true_positives
    present = ops.cast(ops.greater(union, 0), confusion.dtype)
    in_ground_truth = ops.cast(ops.greater(ground_truth, 0), confusion.dtype)
    iou = ops.divide_no_nan(true_positives, union)
    accuracy = ops.divide_no_nan(true_positives, ground_truth)
    return {
        "miou": ops.divide_no_nan(ops.sum(iou * present), ops.sum(present)),
        "pixel_accuracy": ops.divide_no_nan(ops.sum(true_positives), ops.sum(confusion)),
        "mean_class_accuracy": ops.divide_no_nan(
            ops.sum(accuracy * in_ground_truth), ops.sum(in_ground_truth)
        ),
    }


@keras.saving.register_keras_serializable(package="keras_msattn")
class MeanIoU(ConfusionMatrix):
    """Streaming mean intersection-over-union (see the module docstring)."""

    def __init__(self, num_classes, ignore_label=255, name="mean_iou", dtype=None):
        super().__init__(num_classes, ignore_label=ignore_label, name=name, dtype=dtype)

    def result(self):
        return ops.cast(_scores(ops.copy(self.total_confusion))["miou"], self.dtype)


@keras.saving.register_keras_serializable(package="keras_msattn")
class PixelAccuracy(ConfusionMatrix):
    """Streaming fraction of correctly classified non-ignored pixels."""

    def __init__(self, num_classes, ignore_label=255, name="pixel_accuracy", dtype=None):
        super().__init__(num_classes, ignore_label=ignore_label, name=name, dtype=dtype)

    def result(self):
        return ops.cast(_scores(ops.copy(self.total_confusion))["pixel_accuracy"], self.dtype)


@keras.saving.register_keras_serializable(package="keras_msattn")
class MeanClassAccuracy(ConfusionMatrix):
    """Streaming mean over ground-truth classes of per-class recall."""

    def __init__(self, num_classes, ignore_label=255, name="mean_class_accuracy", dtype=None):
        super().__init__(num_classes, ignore_label=ignore_label, name=name, dtype=dtype)

    def result(self):
        return ops.cast(_scores(ops.copy(self.total_confusion))["mean_class_accuracy"], self.dtype)
