import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from subprocess_script import run_script

from keras_msattn.losses import SegmentationCrossEntropy, deep_supervision_losses, labels_on_grid


def numpy_cross_entropy(labels, logits, ignore_label=255, pixel_weights=None):
    """Mean over non-ignored pixels of -log softmax(logits)[label], in float64."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    valid = labels != ignore_label
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    weights = valid.astype(np.float64)
    if pixel_weights is not None:
        weights = weights * pixel_weights
    return float((-picked * weights).sum() / weights.sum()) if weights.sum() > 0 else 0.0


def random_batch(seed=0, shape=(3, 5, 6), num_classes=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(*shape, num_classes)).astype("float32")
    labels = rng.integers(0, num_classes, size=shape).astype("int32")
    # Different numbers of ignored pixels per example: 0, 18 and 29 of 30.
    labels[1, :3] = 255
    labels[2] = 255
    labels[2, 0, 0] = 1
    return labels, logits


def test_value_is_mean_over_valid_pixels_of_the_batch():
    labels, logits = random_batch()
    expected = numpy_cross_entropy(labels, logits)
    value = float(SegmentationCrossEntropy()(labels, logits))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # The per-example mean would weight the single valid pixel of example 2 like
    # the 30 of example 0; make sure the batch has examples where that differs.
    per_example = np.mean([numpy_cross_entropy(labels[i], logits[i]) for i in range(3)])
    assert abs(per_example - expected) > 0.05


def test_matches_keras_sparse_cross_entropy_with_ignore_class():
    labels, logits = random_batch(seed=1)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    np.testing.assert_allclose(
        float(SegmentationCrossEntropy()(labels, logits)),
        float(keras_loss(labels, logits)),
        rtol=1e-6,
    )


def test_label_formats_give_the_same_value():
    labels, logits = random_batch(seed=2)
    loss = SegmentationCrossEntropy()
    reference = float(loss(labels, logits))
    for variant in (
        labels.astype("float32"),
        labels.astype("int64"),
        labels[..., None],
        labels[..., None].astype("float32"),
        tf.constant(labels.astype("uint8")),
    ):
        assert float(loss(variant, logits)) == pytest.approx(reference, rel=1e-6)


def test_all_ignored_gives_zero_and_finite_gradient():
    _, logits = random_batch(seed=3)
    labels = np.full(logits.shape[:-1], 255, dtype="int32")
    logits_var = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = SegmentationCrossEntropy()(labels, logits_var)
    gradient = tape.gradient(value, logits_var).numpy()
    assert float(value) == 0.0
    assert np.all(gradient == 0.0)


def test_custom_ignore_label():
    labels, logits = random_batch(seed=4)
    labels = np.where(labels == 255, 0, labels)
    labels[0, 0] = 3
    expected = numpy_cross_entropy(labels, logits, ignore_label=3)
    assert float(SegmentationCrossEntropy(ignore_label=3)(labels, logits)) == pytest.approx(
        expected, rel=1e-5
    )


def test_float16_logits_are_computed_in_float32():
    labels, logits = random_batch(seed=5)
    half = logits.astype("float16")
    value = SegmentationCrossEntropy()(labels, tf.constant(half))
    assert value.dtype == tf.float32
    expected = numpy_cross_entropy(labels, half.astype("float32"))
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_sample_weight_is_a_weighted_mean_over_valid_pixels():
    labels, logits = random_batch(seed=6)
    loss = SegmentationCrossEntropy()
    per_image = np.array([1.0, 3.0, 0.5], dtype="float32")
    expected = numpy_cross_entropy(
        labels, logits, pixel_weights=np.broadcast_to(per_image[:, None, None], labels.shape)
    )
    np.testing.assert_allclose(float(loss(labels, logits, per_image)), expected, rtol=1e-5)
    per_pixel = np.random.default_rng(0).uniform(size=labels.shape).astype("float32")
    expected = numpy_cross_entropy(labels, logits, pixel_weights=per_pixel)
    np.testing.assert_allclose(float(loss(labels, logits, per_pixel)), expected, rtol=1e-5)


def test_config_round_trip_and_serialization():
    loss = SegmentationCrossEntropy(ignore_label=7, name="ce")
    assert loss.get_config() == {"name": "ce", "ignore_label": 7, "hard_pixel_fraction": 1.0}
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SegmentationCrossEntropy)
    assert restored.get_config() == loss.get_config()


def numpy_hard_pixel_loss(labels, logits, fraction, ignore_label=255):
    """Per image, the losses of the ceil(fraction * pixels) highest-loss valid pixels;
    their mean over the batch."""
    chosen = []
    for image_labels, image_logits in zip(labels, logits, strict=True):
        shifted = image_logits - image_logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        valid = image_labels != ignore_label
        safe = np.where(valid, image_labels, 0)[..., None]
        losses = -np.take_along_axis(log_probs, safe, axis=-1)[..., 0][valid]
        k = int(np.ceil(fraction * image_labels.size))
        chosen.extend(np.sort(losses)[::-1][:k])
    return float(np.mean(chosen))


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_hard_pixel_fraction_averages_each_images_highest_losses(fraction):
    labels, logits = random_batch(seed=5)
    value = float(SegmentationCrossEntropy(hard_pixel_fraction=fraction)(labels, logits))
    expected = numpy_hard_pixel_loss(labels, logits, fraction)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # Harder pixels only: above the plain mean, which counts the easy ones too.
    assert value > numpy_cross_entropy(labels, logits) + 0.1


def test_hard_pixel_fraction_one_is_the_plain_mean():
    labels, logits = random_batch(seed=6)
    np.testing.assert_allclose(
        float(SegmentationCrossEntropy(hard_pixel_fraction=1.0)(labels, logits)),
        numpy_cross_entropy(labels, logits),
        rtol=1e-5,
    )


def test_hard_pixels_get_the_whole_gradient():
    labels, logits = random_batch(seed=7)
    loss = SegmentationCrossEntropy(hard_pixel_fraction=0.25)
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = loss(labels, logits)
    moved = np.abs(tape.gradient(value, logits).numpy()).sum(axis=-1) > 0
    # Image 0: 30 valid pixels, ceil(0.25 * 30) = 8 get a gradient; image 2 has a
    # single valid pixel, which is kept; ignored pixels never move.
    assert moved[0].sum() == 8
    assert moved[2].sum() == 1 and moved[2, 0, 0]
    assert not moved[labels == 255].any()


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, "0.5", True])
def test_bad_hard_pixel_fraction_raises(fraction):
    with pytest.raises(ValueError, match="hard_pixel_fraction"):
        SegmentationCrossEntropy(hard_pixel_fraction=fraction)


def test_bad_ignore_label_raises():
    with pytest.raises(ValueError, match="ignore_label"):
        SegmentationCrossEntropy(ignore_label="255")


def test_deep_supervision_losses_defaults_and_weights():
    names = ["final", "scale_1.0", "scale_0.5"]
    losses, weights = deep_supervision_losses(names)
    assert list(losses) == names and weights == dict.fromkeys(names, 1.0)
    assert all(isinstance(v, SegmentationCrossEntropy) for v in losses.values())
    _, weights = deep_supervision_losses(names, weights={"scale_0.5": 0.4})
    assert weights == {"final": 1.0, "scale_1.0": 1.0, "scale_0.5": 0.4}
    _, weights = deep_supervision_losses(names, weights=[1, 0.5, 0.25])
    assert weights == {"final": 1.0, "scale_1.0": 0.5, "scale_0.5": 0.25}


@pytest.mark.parametrize(
    "output_names, weights, match",
    [
        (["final", "scale_1.0"], {"scale_2.0": 1.0}, r"allowed names: \['final', 'scale_1.0'\]"),
        (["final", "scale_1.0"], [1.0], "sequence of 2"),
        (["final", "scale_1.0"], {"final": -1.0}, ">= 0"),
        ("final", None, "sequence"),
        ([], None, "non-empty"),
        (["final", "final"], None, "unique"),
    ],
)
def test_deep_supervision_losses_bad_input(output_names, weights, match):
    with pytest.raises(ValueError, match=match):
        deep_supervision_losses(output_names, weights=weights)


def test_compiled_total_is_the_weighted_sum_of_output_losses():
    labels, logits = random_batch(seed=7, num_classes=3)
    inputs = keras.Input(logits.shape[1:])
    # Fixed, non-trainable maps so the numpy reference can use the same logits.
    outputs = {
        "final": keras.layers.Identity(name="final")(inputs),
        "scale_1.0": keras.layers.Rescaling(0.5, name="scale_1.0")(inputs),
    }
    model = keras.Model(inputs, outputs)
    losses, loss_weights = deep_supervision_losses(
        ["final", "scale_1.0"], weights={"scale_1.0": 0.3}
    )
    model.compile(loss=losses, loss_weights=loss_weights)
    logs = model.evaluate(
        logits,
        {"final": labels, "scale_1.0": labels},
        batch_size=len(labels),
        verbose=0,
        return_dict=True,
    )
    final = numpy_cross_entropy(labels, logits)
    scale = numpy_cross_entropy(labels, 0.5 * logits)
    np.testing.assert_allclose(logs["loss"], final + 0.3 * scale, rtol=1e-5)
    np.testing.assert_allclose(logs["final_loss"], final, rtol=1e-5)
    np.testing.assert_allclose(logs["scale_1.0_loss"], scale, rtol=1e-5)


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras_msattn.losses import SegmentationCrossEntropy

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 4, 5)).astype("float32")
    y = rng.integers(0, 3, size=(4, 3, 4)).astype("int32")
    y[0] = 255
    y[0, 0, 0] = 1  # replica 0 (examples 0, 1): 13 valid pixels
    y[2, :2] = 255  # replica 1 (examples 2, 3): 16 valid pixels
    kernel = rng.normal(size=(5, 3)).astype("float32")

    def build():
        model = keras.Sequential([keras.Input((3, 4, 5)), keras.layers.Dense(3, use_bias=False)])
        model.layers[0].kernel.assign(kernel)
        return model

    loss = SegmentationCrossEntropy()
    reference = build()
    with tf.GradientTape() as tape:
        replica_mean = 0.5 * (loss(y[:2], reference(x[:2])) + loss(y[2:], reference(x[2:])))
    gradient = tape.gradient(replica_mean, reference.trainable_variables)[0].numpy()
    with tf.GradientTape() as tape:
        batch_mean = loss(y, reference(x))
    batch_gradient = tape.gradient(batch_mean, reference.trainable_variables)[0].numpy()

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build()
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=SegmentationCrossEntropy())
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0)
    update = kernel - model.layers[0].kernel.numpy()
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "reported": history.history["loss"][0],
        "replica_mean": float(replica_mean),
        "batch_mean": float(batch_mean),
        "update_error": float(np.abs(update - gradient).max()),
        "batch_gradient_gap": float(np.abs(batch_gradient - gradient).max()),
    }))
    """
)


def test_reduction_under_mirrored_strategy():
    """Two replicas: value and gradient are the mean of per-replica valid-pixel means."""
    out = run_script(DISTRIBUTED_SCRIPT)
    assert out["replicas"] == 2
    # Not scaled by the replica count (a scalar returned from `call` would double it).
    assert out["reported"] == pytest.approx(out["replica_mean"], rel=1e-5)
    assert out["update_error"] < 1e-5
    # The shards hold 13 and 16 valid pixels, so this differs from the batch mean.
    assert out["batch_gradient_gap"] > 1e-3


def test_labels_on_grid_takes_the_pixel_under_each_cell_centre():
    labels = np.arange(16 * 12).reshape(1, 16, 12)
    logits = np.zeros((1, 4, 3, 2), "float32")
    sampled = np.asarray(labels_on_grid(labels, logits))
    # Cells of 4x4 pixels: centres at rows and columns 2, 6, 10, (14).
    np.testing.assert_array_equal(sampled, labels[:, 2::4, 2::4])
    # Uneven cells: 10 pixels onto 4 cells have centres 1.25, 3.75, 6.25, 8.75.
    uneven = np.asarray(labels_on_grid(labels[:, :10, :10], np.zeros((1, 4, 4, 2))))
    np.testing.assert_array_equal(uneven, labels[:, [1, 3, 6, 8]][:, :, [1, 3, 6, 8]])
    same = np.zeros((1, 16, 12, 2), "float32")
    np.testing.assert_array_equal(np.asarray(labels_on_grid(labels, same)), labels)


def test_labels_on_grid_with_sizes_known_only_at_run_time():
    labels = np.random.default_rng(0).integers(0, 5, (2, 20, 28)).astype("int32")
    logits = np.zeros((2, 5, 7, 3), "float32")
    spec = [tf.TensorSpec((None, None, None), "int32"), tf.TensorSpec((None, None, None, 3))]
    sampled = tf.function(labels_on_grid, input_signature=spec)(labels, logits)
    np.testing.assert_array_equal(np.asarray(sampled), labels[:, 2::4, 2::4])


def test_loss_on_a_coarser_grid_compares_with_the_sampled_labels():
    labels, _ = random_batch(seed=5, shape=(3, 20, 24))
    labels[0, :6] = 255
    logits = np.random.default_rng(6).normal(size=(3, 5, 6, 4)).astype("float32")
    pixel_weights = np.random.default_rng(7).uniform(size=labels.shape).astype("float32")
    loss = SegmentationCrossEntropy()
    sampled, sampled_weights = labels[:, 2::4, 2::4], pixel_weights[:, 2::4, 2::4]
    np.testing.assert_allclose(
        float(loss(labels, logits)), numpy_cross_entropy(sampled, logits), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(loss(labels, logits, sample_weight=pixel_weights)),
        numpy_cross_entropy(sampled, logits, pixel_weights=sampled_weights),
        rtol=1e-5,
    )
    # Upsampling the logits to the labels instead gives another value: the grid matters.
    upsampled = np.repeat(np.repeat(logits, 4, axis=1), 4, axis=2)
    assert abs(float(loss(labels, upsampled)) - float(loss(labels, logits))) > 1e-3
