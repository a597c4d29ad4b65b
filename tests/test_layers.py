import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msattn.layers import (
    BoundedLogits,
    ImageNormalization,
    PyramidPooling,
    ResizeByScale,
    ResizeToReference,
    ScaleFusion,
)
from keras_msattn.layers.pyramid_pooling import adaptive_average_pool


@pytest.mark.parametrize(
    "layer,fields",
    [
        # Every value differs from the default, so a field dropped from
        # get_config comes back as the default and fails.
        (ImageNormalization(mode="tf"), {"mode": "tf"}),
        (ResizeByScale(0.5, interpolation="nearest"), {"scale": 0.5, "interpolation": "nearest"}),
        (ResizeToReference(interpolation="nearest"), {"interpolation": "nearest"}),
        (ScaleFusion("max"), {"fusion": "max", "recalibration": None}),
        (
            ScaleFusion("weighted_sum", recalibration="add"),
            {"fusion": "weighted_sum", "recalibration": "add"},
        ),
        (PyramidPooling(bins=(1, 3), channels=8), {"bins": (1, 3), "channels": 8}),
        (BoundedLogits(2.5), {"bound": 2.5}),
    ],
)
def test_config_round_trip(layer, fields):
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    for name, value in fields.items():
        stored = config[name]
        assert (tuple(stored) if isinstance(stored, list) else stored) == value, name
        restored = getattr(clone, name)
        assert (tuple(restored) if isinstance(restored, list) else restored) == value, name


def test_scale_fusion_reads_its_former_name():
    # Models saved when "weighted_sum" was called "attention" still load.
    layer = ScaleFusion.from_config({"fusion": "attention", "recalibration": "multiply"})
    assert (layer.fusion, layer.get_config()["fusion"]) == ("weighted_sum", "weighted_sum")
    logits = [np.full((1, 2, 2, 3), 1.0, "float32"), np.full((1, 2, 2, 3), 3.0, "float32")]
    weights = np.full((1, 2, 2, 2), 0.5, "float32")
    merged = layer(logits, weights, np.full((1, 2, 2, 3), 2.0, "float32"))
    np.testing.assert_allclose(merged, np.full((1, 2, 2, 3), 4.0))  # (0.5*1 + 0.5*3) * 2
    with pytest.raises(ValueError, match="`fusion`"):
        ScaleFusion("attention_to_scale")


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


def test_bounded_logits_stay_inside_the_bound_and_keep_small_values():
    layer = BoundedLogits(4.0)
    values = np.array([[-1e4, -8.0, -0.01, 0.0, 0.01, 8.0, 1e4]], "float32")
    out = np.asarray(layer(values))
    assert np.all(np.abs(out) <= 4.0) and np.all(np.diff(out) >= 0)
    np.testing.assert_allclose(out[0, 2:5], values[0, 2:5], atol=1e-5)  # identity near 0
    np.testing.assert_allclose(out[0, 5], 4.0 * np.tanh(2.0), rtol=1e-6)
    with pytest.raises(ValueError, match="`bound`"):
        BoundedLogits(0)
