"""Layers of the multi-scale attention model."""

from keras_msattn.layers.image_normalization import ImageNormalization
from keras_msattn.layers.pyramid_pooling import PyramidPooling
from keras_msattn.layers.resize import ResizeByScale, ResizeToReference
from keras_msattn.layers.scale_fusion import BoundedLogits, ScaleFusion

__all__ = [
    "BoundedLogits",
    "ImageNormalization",
    "PyramidPooling",
    "ResizeByScale",
    "ResizeToReference",
    "ScaleFusion",
]
