"""Dilated MobileNetV2, output stride 8 or 16: the edge backbone.

`keras.applications.MobileNetV2` up to `block_16_project_BN` (the final 1x1
conv to 1280 channels is left out), with its layer names and width multiplier
rules, so ImageNet weights map by name. Strides past the output stride are
replaced as in DeepLabV3: the block that would stride runs at stride 1 with
the current dilation, and every later depthwise conv's dilation is multiplied
by the dropped stride (output stride 8: blocks 7-13 dilation 2, blocks 14-16
dilation 4; output stride 16: blocks 14-16 dilation 2).

Strided depthwise convs use "same" padding instead of keras.applications'
ZeroPadding2D + "valid": identical on even sizes, and ceil(H/2) on odd ones.

References:
- Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and
  Linear Bottlenecks", CVPR 2018 (arXiv:1801.04381).
- Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for
  Semantic Image Segmentation", 2017 (arXiv:1706.05587), DeepLabV3.
"""

import keras
from keras import layers

# Width multipliers keras.applications.MobileNetV2 has ImageNet weights for.
MOBILENET_V2_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

# (expansion, filters, stride) of blocks 0..16, as keras.applications.
_BLOCKS = (
    (1, 16, 1),
    (6, 24, 2),
    (6, 24, 1),
    (6, 32, 2),
    (6, 32, 1),
    (6, 32, 1),
    (6, 64, 2),
    (6, 64, 1),
    (6, 64, 1),
    (6, 64, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 160, 2),
    (6, 160, 1),
    (6, 160, 1),
    (6, 320, 1),
)
# The block whose output is each stage: block_2_add, block_5_add,
# block_12_add and block_16_project_BN.
_STAGE_BLOCKS = {"stage1": 2, "stage2": 5, "stage3": 12, "stage4": 16}


def make_divisible(value, divisor=8, min_value=None):
    """Rounds a channel count as keras.applications' MobileNetV2 does."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    # Never round down by more than 10%.
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def _bn(name):
    # keras.applications uses momentum 0.999, tuned for ImageNet-length runs;
    # 0.99 lets the moving statistics settle within a short from-scratch run.
    return layers.BatchNormalization(epsilon=1e-3, momentum=0.99, name=name)


# He initialization for training from scratch. Keras counts a depthwise kernel's
# fan-in as 9 * channels, which shrinks activations layer after layer until a
# fresh MobileNetV2 outputs ~1e-11; a depthwise filter really sees 9 inputs.
_CONV_INIT = "he_normal"


def _depthwise_init():
    # A new initializer per layer: one shared instance draws its seed once, at
    # import (outside `keras.utils.set_random_seed`), and gives every depthwise
    # kernel of one shape the same values.
    return keras.initializers.RandomNormal(stddev=(2.0 / 9.0) ** 0.5)


def _inverted_res_block(x, expansion, filters, stride, dilation, residual, block_id):
    in_channels = x.shape[-1]
    inputs = x
    if block_id:
        prefix = f"block_{block_id}_"
        x = layers.Conv2D(
            expansion * in_channels,
            1,
            padding="same",
            use_bias=False,
            kernel_initializer=_CONV_INIT,
            name=f"{prefix}expand",
        )(x)
        x = _bn(f"{prefix}expand_BN")(x)
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    else:
        prefix = "expanded_conv_"
    x = layers.DepthwiseConv2D(
        3,
        strides=stride,
        padding="same",
        dilation_rate=dilation,
        use_bias=False,
        depthwise_initializer=_depthwise_init(),
        name=f"{prefix}depthwise",
    )(x)
    x = _bn(f"{prefix}depthwise_BN")(x)
    x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = layers.Conv2D(
        filters,
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=f"{prefix}project",
    )(x)
    x = _bn(f"{prefix}project_BN")(x)
    if residual:
        x = layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def build_mobilenet_v2(output_stride=8, width=1.0):
    """Builds the dilated MobileNetV2 backbone.

    Args:
        output_stride: int, 8 or 16.
        width: float, the width multiplier (keras.applications' `alpha`), one
            of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.

    Returns:
        A functional `keras.Model` named `"backbone"` taking normalized
        images `(B, H, W, 3)` ("tf" preprocessing, [-1, 1]) and returning
        `{"stage1": block_2_add (stride 4), "stage2": block_5_add (stride 8),
        "stage3": block_12_add (stride 8 or 16), "stage4": block_16_project_BN
        (stride 8 or 16)}`; at width 1.0 these have 24/32/96/320 channels.
    """
    if output_stride not in (8, 16):
        raise ValueError(
            f"`output_stride` must be 8 or 16. Received: output_stride={output_stride}"
        )
    if width not in MOBILENET_V2_WIDTHS:
        raise ValueError(
            f"`width` must be one of {MOBILENET_V2_WIDTHS} for mobilenet_v2. Received: width={width}"
        )
    images = keras.Input(shape=(None, None, 3), name="images")
    x = layers.Conv2D(
        make_divisible(32 * width),
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name="Conv1",
    )(images)
    x = _bn("bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)

    current_stride = 2
    dilation = 1
    block_outputs = []
    for block_id, (expansion, filters, stride) in enumerate(_BLOCKS):
        out_channels = make_divisible(int(filters * width))
        # keras.applications adds the residual only for stride-1 blocks that
        # keep the channel count; keep that structure when a stride is dropped.
        residual = stride == 1 and x.shape[-1] == out_channels
        block_dilation = dilation
        if stride > 1 and current_stride == output_stride:
            # DeepLabV3: this block keeps the resolution at the current
            # dilation; the blocks after it dilate by the dropped stride.
            dilation *= stride
            stride = 1
        else:
            current_stride *= stride
        x = _inverted_res_block(
            x,
            expansion,
            out_channels,
            stride=stride,
            dilation=block_dilation,
            residual=residual,
            block_id=block_id,
        )
        block_outputs.append(x)

    outputs = {key: block_outputs[block_id] for key, block_id in _STAGE_BLOCKS.items()}
    return keras.Model(images, outputs, name="backbone")
