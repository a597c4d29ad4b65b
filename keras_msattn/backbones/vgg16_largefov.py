"""DeepLab-LargeFOV: VGG16 with dilated conv5 and fc6, output stride 8.

VGG16 conv1-conv5 with the layer names of `keras.applications.VGG16`
(`block1_conv1` ... `block5_conv3`), so ImageNet weights map by name. Pools 1-3
halve the resolution; pools 4 and 5 keep it (3x3, stride 1), conv5 uses
dilation 2 and fc6 is a 3x3 convolution with dilation 12 (the "large field of
view"). fc8, the classifier, is not part of the backbone.

References:
- Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
  Image Recognition", ICLR 2015 (arXiv:1409.1556).
- Chen, Papandreou, Kokkinos, Murphy & Yuille, "Semantic Image Segmentation
  with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015
  (arXiv:1412.7062), the DeepLab-LargeFOV variant.
"""

import keras
from keras import layers

# (number of convs, filters) per VGG16 block.
_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def build_vgg16_largefov(output_stride=8):
    """Builds the DeepLab-LargeFOV backbone.

    Args:
        output_stride: int. Only 8 (the architecture's stride).

    Returns:
        A functional `keras.Model` named `"backbone"` taking normalized
        images `(B, H, W, 3)` ("caffe" preprocessing) and returning
        `{"stage1": conv3_3 (stride 4, 256 ch), "stage2": conv4_3 (stride 8,
        512 ch), "stage3": conv5_3 (stride 8, 512 ch), "stage4": fc7 (stride 8,
        1024 ch)}`.
    """
    if output_stride != 8:
        raise ValueError(
            "vgg16_largefov supports only `output_stride=8` (DeepLab-LargeFOV). "
            f"Received: output_stride={output_stride}"
        )
    images = keras.Input(shape=(None, None, 3), name="images")
    x = images
    taps = {}
    for block, (num_convs, filters) in enumerate(_BLOCKS, start=1):
        # conv5 sees stride-8 features that used to be stride 16: dilate by 2.
        dilation = 2 if block == 5 else 1
        for i in range(1, num_convs + 1):
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                dilation_rate=dilation,
                activation="relu",
                name=f"block{block}_conv{i}",
            )(x)
        taps[block] = x
        # DeepLab pools with 3x3 windows; pools 4 and 5 keep the resolution.
        x = layers.MaxPooling2D(
            3, strides=2 if block <= 3 else 1, padding="same", name=f"block{block}_pool"
        )(x)

    x = layers.Conv2D(1024, 3, padding="same", dilation_rate=12, activation="relu", name="fc6")(x)
    x = layers.Dropout(0.5, name="fc6_dropout")(x)
    x = layers.Conv2D(1024, 1, padding="same", activation="relu", name="fc7")(x)
    x = layers.Dropout(0.5, name="fc7_dropout")(x)

    outputs = {"stage1": taps[3], "stage2": taps[4], "stage3": taps[5], "stage4": x}
    return keras.Model(images, outputs, name="backbone")
