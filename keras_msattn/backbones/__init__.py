"""Dilated backbones for semantic segmentation.

`build_backbone(name)` returns a functional `keras.Model` named `"backbone"`
that takes normalized float images `(B, H, W, 3)` (see
`preprocessing_mode(name)`) and returns a dict of four features:

| key      | stride             | vgg16_largefov | resnet*_d8 | mobilenet_v2        |
|----------|--------------------|----------------|------------|---------------------|
| "stage1" | 4                  | conv3_3        | conv2 out  | block_2_add         |
| "stage2" | 8                  | conv4_3        | conv3 out  | block_5_add         |
| "stage3" | output_stride      | conv5_3        | conv4 out  | block_12_add        |
| "stage4" | output_stride      | fc7            | conv5 out  | block_16_project_BN |

A feature of stride `s` has spatial size `ceil(H / s) x ceil(W / s)`.
"stage4" is the feature the classifier (built by the segmenter) runs on.
"""

from keras_msattn.backbones.mobilenet_v2 import MOBILENET_V2_WIDTHS, build_mobilenet_v2
from keras_msattn.backbones.resnet_d8 import build_resnet_d8
from keras_msattn.backbones.vgg16_largefov import build_vgg16_largefov
from keras_msattn.backbones.weights import check_weights_argument, load_backbone_weights

BACKBONE_NAMES = (
    "vgg16_largefov",
    "resnet18_d8",
    "resnet34_d8",
    "resnet50_d8",
    "resnet101_d8",
    "mobilenet_v2",
)
_RESNET_DEPTHS = {"resnet18_d8": 18, "resnet34_d8": 34, "resnet50_d8": 50, "resnet101_d8": 101}


def _check_name(name):
    if name not in BACKBONE_NAMES:
        raise ValueError(f"`backbone` must be one of {BACKBONE_NAMES}. Received: backbone={name!r}")


def preprocessing_mode(name):
    """The input normalization a backbone expects, in keras.applications' terms.

    Returns:
        "caffe" (RGB -> BGR, minus the ImageNet BGR means, no scaling) for
        VGG16 and the ResNets, "tf" (`x / 127.5 - 1`) for MobileNetV2.
    """
    _check_name(name)
    return "tf" if name == "mobilenet_v2" else "caffe"


def build_backbone(name, weights=None, output_stride=8, width=1.0):
    """Builds a dilated backbone that returns four stage features.

    Args:
        name: str, one of `BACKBONE_NAMES`.
        weights: None (random initialization), `"imagenet"` (VGG16,
            ResNet-50/101 and MobileNetV2: keras.applications' weights copied
            by layer name; needs network access or the Keras cache) or the
            path of a `.weights.h5` file saved from the same backbone.
        output_stride: int, 8 or 16 (vgg16_largefov: 8 only), the stride of
            "stage3" and "stage4".
        width: float, MobileNetV2's width multiplier (0.35, 0.5, 0.75, 1.0,
            1.3 or 1.4); must be 1.0 for the other backbones.

    Returns:
        A functional `keras.Model` named `"backbone"` with input
        `(None, None, 3)` and output `{"stage1", "stage2", "stage3",
        "stage4"}`.

    Example:
    ```python
    backbone = build_backbone("mobilenet_v2", output_stride=16, width=0.5)
    features = backbone(np.zeros((1, 65, 65, 3), "float32"))
    features["stage4"].shape  # (1, 5, 5, 160)
    ```
    """
    _check_name(name)
    if output_stride not in (8, 16):
        raise ValueError(
            f"`output_stride` must be 8 or 16. Received: output_stride={output_stride}"
        )
    if name == "vgg16_largefov" and output_stride != 8:
        raise ValueError(
            "`output_stride` must be 8 for backbone 'vgg16_largefov' (DeepLab-LargeFOV). "
            f"Received: output_stride={output_stride}"
        )
    if name == "mobilenet_v2":
        if width not in MOBILENET_V2_WIDTHS:
            raise ValueError(
                f"`width` must be one of {MOBILENET_V2_WIDTHS} for backbone 'mobilenet_v2'. "
                f"Received: width={width}"
            )
    elif width != 1.0:
        raise ValueError(
            f"`width` applies only to backbone 'mobilenet_v2' and must be 1.0 for {name!r}. "
            f"Received: width={width}"
        )
    # Fail on a bad `weights` before the (slow) build.
    check_weights_argument(name, weights)

    if name == "vgg16_largefov":
        model = build_vgg16_largefov(output_stride)
    elif name == "mobilenet_v2":
        model = build_mobilenet_v2(output_stride, width=width)
    else:
        model = build_resnet_d8(_RESNET_DEPTHS[name], output_stride)
    load_backbone_weights(model, name, weights, width=width)
    return model


__all__ = ["BACKBONE_NAMES", "build_backbone", "preprocessing_mode"]
