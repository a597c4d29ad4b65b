import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msattn.layers import (
    ImageNormalization,
    PyramidPooling,
    ResizeByScale,
    ResizeToReference,
    ScaleFusion,
)
from keras_msattn.layers.pyramid_pooling import adaptive_average_pool


@pytest.mark.parametrize(
    "layer",
    [
        ImageNormalization(mode="tf"),
        ResizeByScale(0.5, interpolation="nearest"),
        ResizeToReference(interpolation="bilinear"),
        ScaleFusion("attention", recalibration="add"),
        PyramidPooling(bins=(1, 3), channels=8),
    ],
)
def test_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_image_normalization_modes():
    pixels = np.array([[[[255.0, 0.0, 127.5]]]], "float32")
    np.testing.assert_allclose(ImageNormalization("tf")(pixels), [[[[1.0, -1.0, 0.0]]]])
    caffe = np.asarray(ImageNormalization("caffe")(pixels))
    np.testing.assert_allclose(caffe, [[[[127.5 - 103.939, -116.779, 255.0 - 123.68]]]], rtol=1e-6)
    with pytest.raises(ValueError, match="`mode`"):
        ImageNormalization("torch")


def test_resize_by_scale_rounds_sizes():
    out = ResizeByScale(0.5)(np.zeros((1, 321, 64, 2), "float32"))
    assert tuple(out.shape) == (1, 160, 32, 2)
    with pytest.raises(ValueError, match="`scale`"):
        ResizeByScale(0.0)


def test_adaptive_average_pool_matches_numpy_cells():
    features = np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype("float32")
    pooled = np.asarray(adaptive_average_pool(features, 3))
    assert pooled.shape == (2, 3, 3, 3)
    # Row cells of 7 into 3: [0, 3), [2, 5), [4, 7); columns of 9: [0, 3), [3, 6), [6, 9).
    np.testing.assert_allclose(pooled[:, 1, 2], features[:, 2:5, 6:9].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(adaptive_average_pool(features, 1))[:, 0, 0],
        features.mean(axis=(1, 2)),
        rtol=1e-5,
    )


def test_pyramid_pooling_trains_in_a_compiled_graph():
    inputs = keras.Input((8, 8, 16))
    outputs = keras.layers.Conv2D(2, 1)(PyramidPooling(channels=8)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(np.ones((2, 8, 8, 16)), np.zeros((2, 8, 8, 2)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    graph = tf.function(lambda x: model(x))
    assert tuple(graph(tf.ones((1, 8, 8, 16))).shape) == (1, 8, 8, 2)
