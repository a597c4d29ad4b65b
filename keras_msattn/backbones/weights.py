"""Pretrained weights for the backbones: ImageNet by layer name, or a local file.

`weights="imagenet"` builds the matching `keras.applications` model (which
downloads its weights into the Keras cache) and copies every layer whose name
exists in both models. Dilation does not change kernel shapes, so the
stride-32 ImageNet kernels fit the dilated build exactly. Layers only the
backbone has (DeepLab-LargeFOV's fc6/fc7) keep their initialization.

`weights="path/to/file.weights.h5"` loads a file saved from the same backbone
with `model.save_weights(...)`.
"""

import os

import keras

# backbone name -> (keras.applications constructor, weights file URL). The
# URL is where keras.applications fetches the `include_top=False` weights
# from; `{width}` is MobileNetV2's alpha.
_URL_ROOT = "https://storage.googleapis.com/tensorflow/keras-applications"
IMAGENET_SOURCES = {
    "vgg16_largefov": (
        "VGG16",
        f"{_URL_ROOT}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet50_d8": (
        "ResNet50",
        f"{_URL_ROOT}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet101_d8": (
        "ResNet101",
        f"{_URL_ROOT}/resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "mobilenet_v2": (
        "MobileNetV2",
        f"{_URL_ROOT}/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{{width}}_224_no_top.h5",
    ),
}


def check_weights_argument(name, weights):
    """Raises if `weights` is not usable for backbone `name`; builds nothing."""
    if weights is None:
        return
    if isinstance(weights, str) and weights == "imagenet":
        if name not in IMAGENET_SOURCES:
            raise ValueError(
                f"`weights='imagenet'` is not available for backbone {name!r}: "
                "keras.applications has no ImageNet weights for it. Backbones with "
                f"ImageNet weights: {sorted(IMAGENET_SOURCES)}. Pass weights=None or a "
                "local '.weights.h5' file."
            )
        return
    if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).endswith(".weights.h5"):
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"`weights` file not found: {os.fspath(weights)}")
        return
    raise ValueError(
        "`weights` must be None, 'imagenet' or the path of a '.weights.h5' file. "
        f"Received: weights={weights!r}"
    )


def load_backbone_weights(model, name, weights, width=1.0):
    """Loads `weights` (None, "imagenet" or a `.weights.h5` path) into `model`."""
    check_weights_argument(name, weights)
    if weights is None:
        return
    if isinstance(weights, str) and weights == "imagenet":
        load_imagenet_weights(model, name, width=width)
    else:
        model.load_weights(os.fspath(weights))


def copy_weights_by_name(source, target):
    """Copies the weights of every layer of `target` that `source` also has.

    Args:
        source: a built `keras.Model`, e.g. a `keras.applications` model.
        target: a built `keras.Model` with some layers of the same names.

    Returns:
        The number of layers whose weights were copied.
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    mapped = 0
    for layer in target.layers:
        if not layer.weights or layer.name not in source_layers:
            continue
        values = source_layers[layer.name].get_weights()
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(v.shape) for v in values]
        if expected != found:
            raise ValueError(
                f"Cannot copy weights of layer {layer.name!r}: the target expects shapes "
                f"{expected}, the source has {found}."
            )
        layer.set_weights(values)
        mapped += 1
    return mapped


def _keras_cache_dir():
    # keras.utils.get_file's default: $KERAS_HOME or ~/.keras, subfolder "models".
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "models")


def load_imagenet_weights(model, name, width=1.0):
    """Copies keras.applications' ImageNet weights into backbone `model`.

    Args:
        model: the backbone built by `build_backbone(name, width=width)`.
        name: the backbone name; one of `IMAGENET_SOURCES`.
        width: MobileNetV2's width multiplier (ignored for the others).

    Returns:
        The number of layers whose weights were copied.

    Raises:
        RuntimeError: the weights could not be downloaded.
    """
    check_weights_argument(name, "imagenet")
    constructor_name, url = IMAGENET_SOURCES[name]
    url = url.format(width=float(width))
    kwargs = {"alpha": width} if name == "mobilenet_v2" else {}
    # Looked up at call time so it is the public constructor, as patched.
    constructor = getattr(keras.applications, constructor_name)
    try:
        source = constructor(
            include_top=False, weights="imagenet", input_shape=(224, 224, 3), **kwargs
        )
    except Exception as error:  # keras.utils.get_file raises a bare Exception.
        cache_dir = _keras_cache_dir()
        raise RuntimeError(
            f"The ImageNet weights for backbone {name!r} could not be downloaded: "
            f"keras.applications.{constructor_name} fetches {url} into the Keras cache "
            f"{cache_dir} (set KERAS_HOME to move it), and that failed ({error}). "
            f"Without network access, copy {os.path.basename(url)} into {cache_dir}, or "
            "pass a local weights file: weights='path/to/backbone.weights.h5', saved with "
            f"build_backbone({name!r}, weights='imagenet').save_weights(...) on a machine "
            "with network access."
        ) from error
    mapped = copy_weights_by_name(source, model)
    if mapped == 0:
        raise ValueError(
            f"No layer of keras.applications.{constructor_name} matched a layer of backbone "
            f"{name!r} by name; nothing was loaded."
        )
    source_names = {layer.name for layer in source.layers}
    fresh = [
        layer.name for layer in model.layers if layer.weights and layer.name not in source_names
    ]
    print(
        f"Loaded ImageNet weights into {name!r}: {mapped} layers mapped by name from "
        f"keras.applications.{constructor_name}"
        + (f"; not pretrained: {', '.join(fresh)}." if fresh else ".")
    )
    return mapped
