"""Dilated ResNet-18/34/50/101 ("ResNet-d8"), output stride 8 or 16.

The stem and the first two stages are the ImageNet ResNet. The last two stages
keep the stride-8 resolution: their striding is removed and their 3x3
convolutions are dilated by 2 (conv4) and 4 (conv5), so the receptive field
is unchanged. With output stride 16 only conv5 is dilated (by 2).

ResNet-50/101 use the bottleneck block and the layer names and layout of
`keras.applications.ResNet50`/`ResNet101` (v1: stride on the first 1x1
convolution, convolution biases, BatchNormalization epsilon 1.001e-5), so
ImageNet weights map by name. ResNet-18/34 use the basic block (two 3x3
convolutions, no convolution biases, as in the original ResNet and
torchvision) under the same naming scheme; keras.applications has no weights
for them.

References:
- He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
  CVPR 2016 (arXiv:1512.03385).
- Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions",
  ICLR 2016 (arXiv:1511.07122), and Yu, Koltun & Funkhouser, "Dilated
  Residual Networks", CVPR 2017 (arXiv:1705.09914).
"""

import keras
from keras import layers

# Blocks per stage (conv2..conv5) and whether the stage uses bottleneck blocks.
RESNET_DEPTHS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
}
_STAGE_FILTERS = (64, 128, 256, 512)
_BN_EPSILON = 1.001e-5


def _bottleneck_block(x, filters, stride, dilation, conv_shortcut, name):
    """keras.applications' `residual_block_v1` with a dilated 3x3 conv."""
    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_1_bn")(x)
    x = layers.ReLU(name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_2_bn")(x)
    x = layers.ReLU(name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.ReLU(name=f"{name}_out")(x)


def _basic_block(x, filters, stride, dilation, conv_shortcut, name):
    """The ResNet-18/34 block: two 3x3 convs, both dilated in dilated stages."""
    if conv_shortcut:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(
            x
        )
        shortcut = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        dilation_rate=dilation,
        use_bias=False,
        name=f"{name}_1_conv",
    )(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_1_bn")(x)
    x = layers.ReLU(name=f"{name}_1_relu")(x)
    x = layers.Conv2D(
        filters, 3, padding="same", dilation_rate=dilation, use_bias=False, name=f"{name}_2_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_2_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.ReLU(name=f"{name}_out")(x)


def build_resnet_d8(depth, output_stride=8):
    """Builds a dilated ResNet backbone.

    Args:
        depth: int, one of 18, 34, 50, 101.
        output_stride: int, 8 (conv4 and conv5 dilated by 2 and 4) or 16
            (conv5 dilated by 2).

    Returns:
        A functional `keras.Model` named `"backbone"` taking normalized
        images `(B, H, W, 3)` ("caffe" preprocessing) and returning
        `{"stage1": conv2 output (stride 4), "stage2": conv3 (stride 8),
        "stage3": conv4 (stride 8 or 16), "stage4": conv5 (stride 8 or 16)}`,
        each the `conv{k}_block{n}_out` layer of its stage. Channels are
        64/128/256/512 for ResNet-18/34 and 256/512/1024/2048 for
        ResNet-50/101.
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"`depth` must be one of {sorted(RESNET_DEPTHS)}. Received: depth={depth}")
    if output_stride not in (8, 16):
        raise ValueError(
            f"`output_stride` must be 8 or 16. Received: output_stride={output_stride}"
        )
    blocks_per_stage, bottleneck = RESNET_DEPTHS[depth]
    block_fn = _bottleneck_block if bottleneck else _basic_block
    # (stride, dilation) of conv2..conv5.
    if output_stride == 8:
        strides_dilations = ((1, 1), (2, 1), (1, 2), (1, 4))
    else:
        strides_dilations = ((1, 1), (2, 1), (2, 1), (1, 2))

    images = keras.Input(shape=(None, None, 3), name="images")
    # keras.applications' stem: symmetric zero padding then "valid" 7x7/2 conv
    # and 3x3/2 pool, which is what the ImageNet weights were trained with; it
    # gives ceil(H/2) and ceil(H/4) like "same" padding.
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(images)
    x = layers.Conv2D(64, 7, strides=2, use_bias=bottleneck, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="conv1_bn")(x)
    x = layers.ReLU(name="conv1_relu")(x)
    # Zero padding is safe before a max pool here: its input is post-ReLU.
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    outputs = {}
    in_channels = 64
    for stage, (num_blocks, filters, (stride, dilation)) in enumerate(
        zip(blocks_per_stage, _STAGE_FILTERS, strides_dilations, strict=True), start=1
    ):
        out_channels = 4 * filters if bottleneck else filters
        for i in range(1, num_blocks + 1):
            first = i == 1
            x = block_fn(
                x,
                filters,
                stride=stride if first else 1,
                dilation=dilation,
                # keras.applications' bottleneck stages always open with a
                # projection; basic blocks need one only when the shape changes.
                conv_shortcut=first and (bottleneck or stride != 1 or in_channels != out_channels),
                name=f"conv{stage + 1}_block{i}",
            )
        in_channels = out_channels
        outputs[f"stage{stage}"] = x
    return keras.Model(images, outputs, name="backbone")
