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

from keras_msattn.keras_internals import flatten_layers


def batch_norm_layers(model):
    """Every `BatchNormalization` layer of `model`, nested models and custom
    layers' sublayers (e.g. `PyramidPooling`'s) included, once each."""
    found = {}
    for layer in flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.setdefault(id(layer), layer)
    return list(found.values())


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

    Each batch runs `model(images, training=True)` eagerly. After k batches a
    layer's moving value is the mean of k batch statistics: the momentum of
    batch k + 1 is `(k / (k + 1)) ** (1 / passes)`. With two passes per call
    (1x and 0.5x) the second is weighted a little more than the first (1 to
    0.97 from the 16th batch on), which a momentum shared by both passes cannot
    avoid.
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    if passes_per_call is None:
        passes_per_call = len(getattr(model, "scales", (1.0,)))
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    statistics = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
    count = 0
    finished = False
    try:
        for layer in layers:
            # A frozen batch norm (trainable=False) never updates its statistics.
            layer.trainable = True
        for images in batches:
            if len(images) < 2:
                raise ValueError(
                    f"batch {count} has {len(images)} image; re-estimating batch-norm "
                    "statistics needs batches of 2 or more"
                )
            momentum = (count / (count + 1)) ** (1 / passes_per_call)
            for layer in layers:
                layer.momentum = momentum
            # Eager on purpose: a traced call would keep the first momentum.
            model(images, training=True)
            count += 1
        if count == 0:
            raise ValueError("no batches to re-estimate batch-norm statistics from")
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
