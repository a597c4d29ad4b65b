"""Bilinear resizing between the scales and grids of the multi-scale model.

Two layers, because the model resizes in two ways: the input image by a scale
factor (1x -> 0.5x), and feature or score maps onto the grid of another tensor
(every scale onto the common stride-4 grid; the fused logits back to the image).
Both read sizes from the tensors at run time, so one model takes any image size.
"""

import keras
from keras import ops

from keras_msattn.keras_internals import resize_with_tensor_size

INTERPOLATIONS = ("bilinear", "nearest")


def _check_interpolation(interpolation):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}, got {interpolation!r}.")


def scaled_size(size, scale):
    """The side length an image of side `size` has at `scale` (`round(size * scale)`)."""
    return max(1, int(round(size * scale)))


@keras.saving.register_keras_serializable(package="keras_msattn")
class ResizeByScale(keras.layers.Layer):
    """Resizes `(B, H, W, C)` images to `(B, round(H * scale), round(W * scale), C)`.

    Args:
        scale: positive float, the resize factor.
        interpolation: `"bilinear"` (default) or `"nearest"`.
    """

    def __init__(self, scale, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        if not scale > 0:
            raise ValueError(f"`scale` must be positive, got {scale!r}.")
        _check_interpolation(interpolation)
        self.scale = float(scale)
        self.interpolation = interpolation

    def call(self, images):
        static_h, static_w = images.shape[1], images.shape[2]
        if static_h is not None and static_w is not None:
            size = (scaled_size(static_h, self.scale), scaled_size(static_w, self.scale))
        else:
            shape = ops.cast(ops.shape(images)[1:3], "float32")
            size = ops.cast(ops.maximum(ops.round(shape * self.scale), 1.0), "int32")
            # Only when the size is dynamic: see `resize_with_tensor_size`.
            return resize_with_tensor_size(images, (size[0], size[1]), self.interpolation)
        return ops.image.resize(images, size, interpolation=self.interpolation)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        h = None if h is None else scaled_size(h, self.scale)
        w = None if w is None else scaled_size(w, self.scale)
        return (input_shape[0], h, w, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="keras_msattn")
class ResizeToReference(keras.layers.Layer):
    """Resizes `inputs` to the spatial size of `reference`.

    Called as `layer([inputs, reference])`; only the shape of `reference` is used.

    Args:
        interpolation: `"bilinear"` (default) or `"nearest"`.
    """

    def __init__(self, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        _check_interpolation(interpolation)
        self.interpolation = interpolation

    def call(self, inputs):
        images, reference = inputs
        static_h, static_w = reference.shape[1], reference.shape[2]
        if static_h is not None and static_w is not None:
            size = (static_h, static_w)
        else:
            shape = ops.shape(reference)
            return resize_with_tensor_size(images, (shape[1], shape[2]), self.interpolation)
        return ops.image.resize(images, size, interpolation=self.interpolation)

    def compute_output_shape(self, input_shape):
        images_shape, reference_shape = input_shape
        return (images_shape[0], reference_shape[1], reference_shape[2], images_shape[3])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}
