"""Backbone input normalization, done inside the model so exported models take raw pixels."""

import keras
from keras import ops

# keras.applications' "caffe" preprocessing: BGR channel order minus the ImageNet means.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)

NORMALIZATION_MODES = ("caffe", "tf")


@keras.saving.register_keras_serializable(package="keras_msattn")
class ImageNormalization(keras.layers.Layer):
    """Turns raw RGB pixels (0..255, any dtype) into what a backbone was trained on.

    Args:
        mode: `"caffe"` (RGB -> BGR, minus the ImageNet BGR means; VGG16 and ResNet
            in keras.applications) or `"tf"` (scaled to [-1, 1]; MobileNetV2).

    Example:
    >>> layer = ImageNormalization(mode="tf")
    >>> layer(np.full((1, 2, 2, 3), 255, "uint8"))  # all ones
    """

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in NORMALIZATION_MODES:
            raise ValueError(f"`mode` must be one of {NORMALIZATION_MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        bgr = ops.flip(images, axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
