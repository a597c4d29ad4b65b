"""The pyramid pooling module of PSPNet (Zhao et al., 2017), used in the paper's Table 3."""

import keras
from keras import layers


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
        self.pools = [layers.AdaptiveAveragePooling2D((b, b), name=f"pool_{b}") for b in bins]
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
        for pool, (conv, bn) in zip(self.pools, self.projections, strict=True):
            pooled = keras.ops.relu(bn(conv(pool(features)), training=training))
            branches.append(
                keras.ops.image.resize(pooled, (height, width), interpolation="bilinear")
            )
        fused = self.fuse_conv(keras.ops.concatenate(branches, axis=-1))
        return keras.ops.relu(self.fuse_bn(fused, training=training))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.channels)

    def get_config(self):
        return {**super().get_config(), "bins": self.bins, "channels": self.channels}
