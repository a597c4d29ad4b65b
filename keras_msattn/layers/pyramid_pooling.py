"""The pyramid pooling module of PSPNet (Zhao et al., 2017), used in the paper's Table 3."""

import math

import keras
from keras import layers, ops


def adaptive_average_pool(features, bins):
    """Averages `(B, H, W, C)` features over a `bins x bins` grid of cells (static H, W).

    Cell `i` spans rows `[floor(i * H / bins), ceil((i + 1) * H / bins))`, as
    PyTorch's AdaptiveAvgPool2d, so cells overlap when `H` is not a multiple of
    `bins`. Slices and means only: keras' own adaptive pooling builds a window
    larger than the input for one bin, which fails inside a compiled graph.
    """
    height, width = features.shape[1], features.shape[2]

    def edges(size, index):
        return (index * size) // bins, math.ceil((index + 1) * size / bins)

    rows = []
    for i in range(bins):
        top, bottom = edges(height, i)
        cells = []
        for j in range(bins):
            left, right = edges(width, j)
            cell = features[:, top:bottom, left:right, :]
            cells.append(ops.mean(cell, axis=(1, 2), keepdims=True))
        rows.append(cells[0] if bins == 1 else ops.concatenate(cells, axis=2))
    return rows[0] if bins == 1 else ops.concatenate(rows, axis=1)


@keras.saving.register_keras_serializable(package="keras_msattn")
class PyramidPooling(keras.layers.Layer):
    """Pools a feature map to `bins x bins` grids, projects, upsamples and concatenates.

    For each bin count `b`: adaptive average pooling to `b x b`, 1x1 conv + BN + ReLU
    to `in_channels / len(bins)` channels, bilinear upsampling back; the input and
    the pooled maps are concatenated and fused by a 3x3 conv + BN + ReLU to
    `channels` (PSPNet's bottleneck). No auxiliary loss, as in the paper.

    Adaptive pooling needs the spatial size when the graph runs: calls with
    static spatial dimensions (eager, `fit` on fixed crops, exports at a fixed
    size) work at any size; a graph traced with unknown height/width is rejected.

    Args:
        bins: pooled grid sizes, default `(1, 2, 3, 6)`.
        channels: output channels of the fusing conv, default 512.
    """

    def __init__(self, bins=(1, 2, 3, 6), channels=512, **kwargs):
        super().__init__(**kwargs)
        bins = tuple(int(b) for b in bins)
        if not bins or min(bins) < 1:
            raise ValueError(f"`bins` must be positive integers, got {bins!r}.")
        if int(channels) < 1:
            raise ValueError(f"`channels` must be positive, got {channels!r}.")
        self.bins = bins
        self.channels = int(channels)
        self.projections = []
        self.fuse_conv = layers.Conv2D(
            self.channels, 3, padding="same", use_bias=False, name="fuse_conv"
        )
        self.fuse_bn = layers.BatchNormalization(name="fuse_bn")

    def build(self, input_shape):
        in_channels = input_shape[-1]
        branch_channels = max(1, in_channels // len(self.bins))
        pooled_shape = (input_shape[0], None, None, in_channels)
        self.projections = []
        for b in self.bins:
            conv = layers.Conv2D(branch_channels, 1, use_bias=False, name=f"pool_{b}_conv")
            bn = layers.BatchNormalization(name=f"pool_{b}_bn")
            conv.build(pooled_shape)
            bn.build((*pooled_shape[:3], branch_channels))
            self.projections.append((conv, bn))
        fused_channels = in_channels + branch_channels * len(self.bins)
        self.fuse_conv.build((*input_shape[:3], fused_channels))
        self.fuse_bn.build((*input_shape[:3], self.channels))

    def call(self, features, training=None):
        height, width = features.shape[1], features.shape[2]
        if height is None or width is None:
            raise ValueError(
                "PyramidPooling needs static height and width when it runs; export or "
                "trace the model at a fixed input size."
            )
        branches = [features]
        for bins, (conv, bn) in zip(self.bins, self.projections, strict=True):
            pooled = adaptive_average_pool(features, bins)
            pooled = keras.ops.relu(bn(conv(pooled), training=training))
            branches.append(
                keras.ops.image.resize(pooled, (height, width), interpolation="bilinear")
            )
        fused = self.fuse_conv(keras.ops.concatenate(branches, axis=-1))
        return keras.ops.relu(self.fuse_bn(fused, training=training))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.channels)

    def get_config(self):
        return {**super().get_config(), "bins": self.bins, "channels": self.channels}
