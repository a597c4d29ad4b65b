"""Batch-norm statistics re-estimated after training: the averages, the restores, `train`."""

import keras
import numpy as np
import pytest

import keras_msattn  # noqa: F401  (registers the classes for safe-mode loading)
from keras_msattn import training
from keras_msattn.batch_norm import PASS_MOMENTUM, batch_norm_layers, reestimate_statistics
from keras_msattn.callbacks import InferenceExport
from keras_msattn.config import TrainConfig, check_config
from keras_msattn.inference import load_segmenter
from keras_msattn.segmenter import MultiScaleSegmenter


def one_batch_norm_model(passes=1):
    """Input -> one batch norm, run on `x`, and with passes=2 also on `2x + 1`."""
    inputs = keras.Input((4, 4, 3))
    norm = keras.layers.BatchNormalization(name="norm")
    outputs = [norm(inputs)]
    if passes == 2:
        outputs.append(norm(inputs * 2.0 + 1.0))
    return keras.Model(inputs, outputs), norm


def batches(count, size=4, seed=0):
    rng = np.random.default_rng(seed)
    # Different means and spreads per batch: an average of them is not any one of them.
    return [
        (rng.normal(size=(size, 4, 4, 3)) * (1 + k) + k).astype("float32") for k in range(count)
    ]


def moments(x):
    return x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))


def test_one_pass_gives_the_mean_of_the_batch_statistics():
    model, norm = one_batch_norm_model()
    data = batches(5)
    assert reestimate_statistics(model, data) == 5
    means, variances = zip(*(moments(x) for x in data), strict=True)
    np.testing.assert_allclose(norm.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-4)
    np.testing.assert_allclose(norm.moving_variance.numpy(), np.mean(variances, axis=0), rtol=1e-4)


def test_two_passes_per_call_give_every_call_its_share():
    model, norm = one_batch_norm_model(passes=2)
    data = batches(6)
    reestimate_statistics(model, data, passes_per_call=2)

    # The documented weights: within a call the later pass 1, the earlier 0.99, in
    # the order the graph runs the two passes (not fixed by how they were written);
    # the calls' weighted means averaged.
    def weighted(second_first):
        m = PASS_MOMENTUM
        calls = []
        for x in data:
            first, second = (2 * x + 1, x) if second_first else (x, 2 * x + 1)
            calls.append(
                [
                    (m * a + b) / (1 + m)
                    for a, b in zip(moments(first), moments(second), strict=True)
                ]
            )
        return np.mean(calls, axis=0)

    actual = np.stack([norm.moving_mean.numpy(), norm.moving_variance.numpy()])
    matches = [np.allclose(actual, weighted(order), rtol=1e-4) for order in (False, True)]
    assert any(matches)
    # Within 0.5% of the plain mean of all 12 passes' statistics.
    both = [moments(b) for x in data for b in (x, 2 * x + 1)]
    np.testing.assert_allclose(actual[0], np.mean([b[0] for b in both], axis=0), rtol=5e-3)


def test_only_the_statistics_change_and_the_layer_settings_are_restored():
    model, norm = one_batch_norm_model()
    norm.momentum, norm.trainable = 0.9, False  # frozen: updated all the same
    norm.gamma.assign(np.array([2.0, 3.0, 4.0]))
    before = norm.moving_mean.numpy().copy()
    reestimate_statistics(model, batches(3))
    assert not np.allclose(norm.moving_mean.numpy(), before)
    assert (norm.momentum, norm.trainable) == (0.9, False)
    np.testing.assert_array_equal(norm.gamma.numpy(), [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(norm.beta.numpy(), np.zeros(3))


@pytest.mark.parametrize(
    "data, message",
    [
        (batches(3)[:2] + [batches(1)[0][:1]], "batch 2 has 1 image"),
        ([], "no batches"),
    ],
)
def test_a_bad_batch_leaves_the_statistics_as_they_were(data, message):
    model, norm = one_batch_norm_model()
    norm.momentum = 0.5
    reestimate_statistics(model, batches(2, seed=1))
    mean, variance = norm.moving_mean.numpy().copy(), norm.moving_variance.numpy().copy()
    with pytest.raises(ValueError, match=message):
        reestimate_statistics(model, data)
    np.testing.assert_array_equal(norm.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(norm.moving_variance.numpy(), variance)
    assert norm.momentum == 0.5


def test_a_model_without_batch_norm_reads_nothing():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))

    def never():
        raise AssertionError("read a batch")
        yield

    assert reestimate_statistics(model, never()) == 0


def tiny_segmenter():
    return MultiScaleSegmenter(
        num_classes=3, backbone="mobilenet_v2", backbone_width=0.35, backbone_weights=None,
        head_channels=8, scales=(1.0, 0.5),
    )  # fmt: skip


def test_a_two_scale_segmenter_counts_one_pass_per_scale():
    model = tiny_segmenter()
    copy = MultiScaleSegmenter.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    data = [x * 40.0 for x in batches(3, size=2)]
    data = [np.tile(x, (1, 8, 8, 1)) for x in data]  # 32x32 images
    layers = batch_norm_layers(model)
    assert len(layers) > 10  # the backbone's, nested in its own model
    reestimate_statistics(model, data)  # default: len(model.scales) = 2
    reestimate_statistics(copy, data, passes_per_call=2)
    for a, b in zip(layers, batch_norm_layers(copy), strict=True):
        np.testing.assert_allclose(a.moving_mean.numpy(), b.moving_mean.numpy(), rtol=1e-5)
    reestimate_statistics(copy, data, passes_per_call=1)
    assert not all(
        np.allclose(a.moving_mean.numpy(), b.moving_mean.numpy())
        for a, b in zip(layers, batch_norm_layers(copy), strict=True)
    )


@pytest.mark.parametrize("images, batch_size", [(-1, 2), (3, 4), (4, 1), (True, 2)])
def test_config_refuses_unusable_batch_norm_images(images, batch_size):
    config = TrainConfig(batch_norm_images=images, batch_size=batch_size)
    with pytest.raises(ValueError, match="`batch_norm_images`"):
        check_config(config)


def test_train_saves_model_keras_with_reestimated_statistics(tmp_path):
    logs = []
    config = TrainConfig(
        dataset="scale_digits", train_split="train", dataset_options={"image_size": 64},
        crop_size=48, val_images=2, val_size=64, batch_size=2, steps=2, steps_per_epoch=2,
        optimizer="adam", learning_rate=1e-3, batch_norm_images=5,
        model=dict(backbone="mobilenet_v2", backbone_width=0.35, backbone_weights=None,
                   head_channels=8),
    )  # fmt: skip
    result = training.train(config, str(tmp_path / "run"), log=logs.append)
    said = "re-estimated the batch-norm statistics of model.keras on 2 batches of 2 training"
    assert [line for line in logs if said in line]

    # best.keras (the one epoch, saved at its end) holds the statistics training left;
    # model.keras holds them re-estimated on `batch_norm_batches`.
    best = load_segmenter(str(tmp_path / "run" / "best.keras"))
    saved = load_segmenter(result["model_path"])
    best_layers, saved_layers = batch_norm_layers(best), batch_norm_layers(saved)
    assert not all(
        np.allclose(layer.moving_mean.numpy(), other.moving_mean.numpy(), atol=1e-3)
        for layer, other in zip(best_layers, saved_layers, strict=True)
    )
    reestimate_statistics(best, training.batch_norm_batches(training.resolve_config(config)))
    for layer, other in zip(best_layers, saved_layers, strict=True):
        np.testing.assert_allclose(layer.moving_mean.numpy(), other.moving_mean.numpy(), atol=1e-4)
        np.testing.assert_allclose(
            layer.moving_variance.numpy(), other.moving_variance.numpy(), rtol=1e-3, atol=1e-5
        )


def test_the_inference_export_keeps_the_statistics_without_batches(tmp_path):
    # What `train` saves by default (batch_norm_images=0): the training model's statistics.
    model = MultiScaleSegmenter(
        num_classes=3, backbone="mobilenet_v2", backbone_width=0.35, backbone_weights=None,
        head_channels=8,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for layer in batch_norm_layers(model):
        layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype("float32"))
    export = InferenceExport(model)
    assert export.save(str(tmp_path / "plain.keras")) == 0
    plain = load_segmenter(str(tmp_path / "plain.keras"))
    for layer, other in zip(batch_norm_layers(model), batch_norm_layers(plain), strict=True):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), other.moving_mean.numpy())


def test_the_walk_finds_batch_norms_held_by_custom_layers():
    model = MultiScaleSegmenter(
        num_classes=3, backbone="mobilenet_v2", backbone_width=0.35, backbone_weights=None,
        head_channels=8, pyramid_pooling=True,
    )  # fmt: skip
    pooling = model.get_layer("pyramid_pooling")
    held = [
        value for value in vars(pooling).values()
        if isinstance(value, keras.layers.BatchNormalization)
    ] + [
        item for value in vars(pooling).values() if isinstance(value, list)
        for item in value if isinstance(item, keras.layers.BatchNormalization)
    ]  # fmt: skip
    assert held
    found = {id(layer) for layer in batch_norm_layers(model)}
    assert {id(layer) for layer in held} <= found
