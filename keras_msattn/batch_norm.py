"""Batch-norm statistics re-estimated at the size a model is used at.

Training sees random crops (the quickstart: 128 px of 192-px images), inference
whole images. The moving means and variances are exponential averages of the
crops' batch statistics, and they do not fit whole images: on a crop a larger
share of every feature map is near the zero-padded border, most of all in the
0.5x pass, whose stride-16 map of a 128-px crop is 4x4 cells. After training,
`reestimate_statistics` replaces them with the mean of the batch statistics of
whole training images, without touching a weight (as "precise BN" does at the
end of training; docs/results.md measures it).
"""

import keras
import numpy as np
from keras import ops

from keras_msattn.keras_internals import flatten_layers


def batch_norm_layers(model):
    """Every `BatchNormalization` layer of `model`, nested models and custom
    layers' sublayers (e.g. `PyramidPooling`'s) included, once each."""
    found = {}
    for layer in flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.setdefault(id(layer), layer)
    return list(found.values())


# Within one call the passes are weighted by powers of this momentum (below).
PASS_MOMENTUM = 0.99


class _TrainingModeForward(keras.Model):
    """`model(images, training=True)` as a model of its own, so `predict_on_batch`
    runs it as one traced graph (the eager call cost 1.3 s a batch on 2 cores)."""

    def __init__(self, model):
        super().__init__(name="batch_norm_reestimation")
        self.wrapped = model

    def call(self, images):
        return self.wrapped(images, training=True)


def reestimate_statistics(model, batches, passes_per_call=None):
    """Sets every batch norm's moving statistics to the mean over `batches`.

    Args:
        model: a Keras model; only the moving means and variances of its
            `BatchNormalization` layers change.
        batches: an iterable of image batches `(B, H, W, 3)` as the model takes
            them (B >= 2: the statistics of one image miss the spread between
            images).
        passes_per_call: how often one call of `model` runs each batch norm; a
            `MultiScaleSegmenter` runs its shared backbone once per scale (the
            default: `len(model.scales)`, else 1).

    Returns:
        The number of batches read (0, and nothing changed, if the model has no
        batch norm).

    Each batch runs `model(images, training=True)` in one traced graph, with
    every moving statistic set to zero before and the momentum fixed at
    `PASS_MOMENTUM` (m). A batch norm run P times in the call then holds
    `(1 - m) * sum_p m ** (P - p) * s_p`; divided by `1 - m ** P` that is the
    weighted mean of the passes' statistics `s_p`, the later pass weighted 1
    and the one before it m = 0.99 (a momentum cannot weigh passes of one call
    equally). The result is the mean of these over the batches.
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    if passes_per_call is None:
        passes_per_call = len(getattr(model, "scales", (1.0,)))
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    statistics = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
    sums = [(np.zeros(mean.shape), np.zeros(variance.shape)) for mean, variance in statistics]
    weight = 1.0 - PASS_MOMENTUM**passes_per_call
    forward = _TrainingModeForward(model)
    forward.jit_compile = False  # XLA traces slowly and runs slower on CPU
    count = 0
    finished = False
    try:
        for layer in layers:
            # A frozen batch norm (trainable=False) never updates its statistics.
            layer.trainable = True
            layer.momentum = PASS_MOMENTUM
        for images in batches:
            if len(images) < 2:
                raise ValueError(
                    f"batch {count} has {len(images)} image; re-estimating batch-norm "
                    "statistics needs batches of 2 or more"
                )
            for layer in layers:
                layer.moving_mean.assign(ops.zeros_like(layer.moving_mean))
                layer.moving_variance.assign(ops.zeros_like(layer.moving_variance))
            forward.predict_on_batch(images)
            for layer, (mean_sum, variance_sum) in zip(layers, sums, strict=True):
                mean_sum += ops.convert_to_numpy(layer.moving_mean) / weight
                variance_sum += ops.convert_to_numpy(layer.moving_variance) / weight
            count += 1
        if count == 0:
            raise ValueError("no batches to re-estimate batch-norm statistics from")
        for layer, (mean_sum, variance_sum) in zip(layers, sums, strict=True):
            layer.moving_mean.assign(mean_sum / count)
            layer.moving_variance.assign(variance_sum / count)
        finished = True
    finally:
        for layer, (momentum, trainable) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            layer.trainable = trainable
        if not finished:
            # An error or an interrupt halfway leaves the statistics as they were.
            for layer, (mean, variance) in zip(layers, statistics, strict=True):
                layer.moving_mean.assign(mean)
                layer.moving_variance.assign(variance)
    return count
