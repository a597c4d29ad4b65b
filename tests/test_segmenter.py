import keras
import numpy as np
import pytest

from keras_msattn import MultiScaleSegmenter, output_names
from keras_msattn.backbones import BACKBONE_NAMES
from keras_msattn.segmenter import default_scale_dilations


def tiny(**kwargs):
    """A small model with healthy activations at initialization: ResNet18-d8, 16-channel heads."""
    options = dict(backbone="resnet18_d8", num_classes=4, head_channels=16)
    options.update(kwargs)
    return MultiScaleSegmenter(**options)


def random_images(batch=2, height=64, width=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype("float32")


def probe(model, names):
    """The outputs of named layers, for checking the graph's intermediate values."""
    return keras.Model(model.input, [model.get_layer(name).output for name in names])


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_every_backbone_gives_logits_at_input_size(backbone):
    model = MultiScaleSegmenter(backbone=backbone, num_classes=3, head_channels=8)
    logits = model(random_images(1, 48, 56))
    assert tuple(logits.shape) == (1, 48, 56, 3)
    assert logits.dtype == "float32"


@pytest.mark.parametrize(
    "fusion, scales",
    [
        ("attention", (1.0, 0.5)),
        ("attention_to_scale", (1.0, 0.5)),
        ("average", (1.0, 0.5)),
        ("max", (1.0, 0.5)),
        (None, (1.0,)),
        ("attention", (1.25, 1.0, 0.5)),
    ],
)
def test_every_fusion_gives_logits_at_input_size(fusion, scales):
    model = tiny(fusion=fusion, scales=scales)
    # Odd sizes: the scales and grids do not divide them evenly.
    assert tuple(model(random_images(2, 65, 71)).shape) == (2, 65, 71, 4)


def test_paper_model_on_voc_crop():
    model = MultiScaleSegmenter(backbone="vgg16_largefov", num_classes=21)
    single = MultiScaleSegmenter(
        backbone="vgg16_largefov", num_classes=21, scales=(1.0,), fusion=None
    )
    images = np.random.default_rng(1).integers(0, 256, (2, 321, 321, 3)).astype("uint8")
    assert tuple(model(images).shape) == (2, 321, 321, 21)
    assert model.backbone.count_params() == single.backbone.count_params()
    maps = model.attention_maps(images[:1])
    np.testing.assert_allclose(maps["scale_weights"].sum(-1), 1.0, atol=1e-5)


def test_backbone_weights_are_shared_across_scales():
    counts = {
        scales: tiny(
            scales=scales, fusion="average" if len(scales) > 1 else None
        ).backbone.count_params()
        for scales in [(1.0,), (1.0, 0.5), (1.5, 1.0, 0.5)]
    }
    assert len(set(counts.values())) == 1
    one, two = tiny(scales=(1.0,), fusion=None), tiny(scales=(1.0, 0.5), fusion="average")
    # Average merge adds no weights at all: the same backbone and classifier serve both scales.
    assert one.count_params() == two.count_params()
    assert sum(layer.name == "backbone" for layer in two.layers) == 1


def test_scale_weights_sum_to_one_and_recalibration_is_in_unit_interval():
    model = tiny(num_classes=5)
    maps = model.attention_maps(random_images(2, 64, 64))
    assert maps["scale_weights"].shape == (2, 16, 16, 2)
    np.testing.assert_allclose(maps["scale_weights"].sum(-1), 1.0, atol=1e-5)
    assert maps["recalibration"].shape == (2, 16, 16, 5)
    # A sigmoid: in (0, 1) up to float32 saturation, and exactly sigmoid(branch logits).
    assert maps["recalibration"].min() >= 0.0 and maps["recalibration"].max() <= 1.0
    recal, recal_logits = probe(model, ["recalibration", "recalibration_logits"])(random_images())
    np.testing.assert_allclose(
        np.asarray(recal), 1 / (1 + np.exp(-np.asarray(recal_logits))), rtol=1e-5, atol=1e-6
    )
    assert 0.05 < float(np.mean(np.asarray(recal))) < 0.95
    assert set(maps["scale_logits"]) == {1.0, 0.5}
    assert maps["scale_logits"][0.5].shape == (2, 16, 16, 5)


@pytest.mark.parametrize("fusion, reduce", [("average", np.mean), ("max", np.max)])
def test_average_and_max_merge_are_the_mean_and_max_of_scale_logits(fusion, reduce):
    model = tiny(fusion=fusion)
    merged, full, half = probe(
        model, ["scale_fusion", "scale_1.0_logits_to_grid", "scale_0.5_logits_to_grid"]
    )(random_images())
    expected = reduce(np.stack([np.asarray(full), np.asarray(half)]), axis=0)
    np.testing.assert_allclose(np.asarray(merged), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(full), np.asarray(half))


@pytest.mark.parametrize("recalibration", ["multiply", "add", None])
def test_attention_merge_follows_equation_3(recalibration):
    model = tiny(recalibration=recalibration)
    names = [
        "scale_fusion",
        "scale_weights",
        "scale_1.0_logits_to_grid",
        "scale_0.5_logits_to_grid",
    ]
    if recalibration:
        names.append("recalibration")
    merged, weights, full, half, *recal = [
        np.asarray(t) for t in probe(model, names)(random_images())
    ]
    if recalibration == "multiply":
        full, half = full * recal[0], half * recal[0]
    elif recalibration == "add":
        full, half = full + recal[0], half + recal[0]
    expected = weights[..., :1] * full + weights[..., 1:] * half
    np.testing.assert_allclose(merged, expected, rtol=1e-4, atol=1e-5)


def test_single_scale_is_backbone_plus_classifier():
    model = tiny(scales=(1.0,), fusion=None)
    images = random_images(1, 64, 64)
    normalized = images[..., ::-1] - np.array([103.939, 116.779, 123.68], "float32")
    scores = model.get_layer("classifier")(model.backbone(normalized)["stage4"])
    expected = keras.ops.image.resize(scores, (64, 64), interpolation="bilinear")
    np.testing.assert_allclose(np.asarray(model(images)), np.asarray(expected), atol=1e-4)


def test_uint8_and_float_inputs_agree():
    model = tiny()
    images = np.random.default_rng(2).integers(0, 256, (1, 64, 64, 3)).astype("uint8")
    np.testing.assert_allclose(
        np.asarray(model(images)), np.asarray(model(images.astype("float32"))), atol=1e-5
    )


def test_deep_supervision_returns_final_and_each_scale():
    model = tiny(deep_supervision=True)
    outputs = model(random_images(1, 64, 64))
    assert list(outputs) == output_names((1.0, 0.5)) == ["final", "scale_1.0", "scale_0.5"]
    for value in outputs.values():
        assert tuple(value.shape) == (1, 64, 64, 4) and value.dtype == "float32"
    assert output_names((1.0,)) == ["final"]


@pytest.mark.parametrize(
    "fusion, scales",
    [("attention", (1.0, 0.5)), ("average", (1.0, 0.5)), (None, (1.0,))],
)
def test_loss_stride_puts_every_deep_supervision_output_on_its_grid(fusion, scales):
    model = tiny(fusion=fusion, scales=scales, deep_supervision=True, loss_stride=4)
    images = random_images(2, 64, 72)
    outputs = model(images)
    assert list(outputs) == output_names(scales)
    for value in outputs.values():
        assert tuple(value.shape) == (2, 16, 18, 4) and value.dtype == "float32"
    # "final" is the fused logits map, resized onto the loss grid; on the heads'
    # stride-4 grid of the attention fusion that resize changes nothing.
    fused_name = "classifier" if fusion is None else "scale_fusion"
    fused = keras.Model(model.input, model.get_layer(fused_name).output)(images)
    on_grid = keras.ops.image.resize(fused, (16, 18))
    np.testing.assert_allclose(np.asarray(outputs["final"]), np.asarray(on_grid), atol=1e-5)
    # The same weights at full resolution: the inference output is that map upsampled.
    full = MultiScaleSegmenter.from_config({**model.get_config(), "loss_stride": 1})
    full.set_weights(model.get_weights())
    expected = keras.ops.image.resize(fused, (64, 72))
    np.testing.assert_allclose(np.asarray(full(images)["final"]), np.asarray(expected), atol=1e-4)


def test_deep_supervision_trains_with_one_plus_s_losses():
    model = tiny(deep_supervision=True)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="sgd", loss={name: loss for name in output_names(model.scales)})
    labels = np.random.default_rng(3).integers(0, 4, (2, 64, 64))
    history = model.fit(random_images(), {k: labels for k in output_names(model.scales)}, verbose=0)
    assert {"final_loss", "scale_1.0_loss", "scale_0.5_loss"} <= set(history.history)


def test_scale_dilations_default_to_the_paper():
    assert default_scale_dilations((1.0, 0.5)) == (12, 2)
    assert default_scale_dilations((1.0, 0.75, 0.5)) == (12, 6, 2)
    model = tiny()
    assert model.get_layer("scale_1.0_dilated_conv").dilation_rate == (12, 12)
    assert model.get_layer("scale_0.5_dilated_conv").dilation_rate == (2, 2)
    plain = tiny(scale_dilations=None)
    assert plain.get_layer("scale_1.0_dilated_conv").dilation_rate == (1, 1)
    swapped = tiny(scale_dilations=(2, 12))
    assert swapped.get_layer("scale_0.5_dilated_conv").dilation_rate == (12, 12)


def test_ablation_switches_change_the_graph():
    names = {layer.name for layer in tiny().layers}
    assert {"hypercolumn_stage1_conv", "recalibration", "scale_0.5_dilated_conv"} <= names
    no_stages = {layer.name for layer in tiny(hypercolumn=False).layers}
    assert "hypercolumn_stage1_conv" not in no_stages and "hypercolumn_stage4_conv" in no_stages
    assert "recalibration" not in {layer.name for layer in tiny(recalibration=None).layers}
    chen = {layer.name for layer in tiny(fusion="attention_to_scale").layers}
    assert "scale_weights" in chen and "hypercolumn_stage4_conv" not in chen
    assert "pyramid_pooling" in {layer.name for layer in tiny(pyramid_pooling=True).layers}


def test_keras_file_round_trip_with_safe_mode(tmp_path):
    model = tiny(deep_supervision=True, pyramid_pooling=True, recalibration="add")
    images = random_images(1, 64, 64)
    expected = model(images)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, MultiScaleSegmenter)
    actual = restored(images)
    for key in expected:
        np.testing.assert_allclose(np.asarray(actual[key]), np.asarray(expected[key]), atol=1e-5)
    assert restored.get_config() == model.get_config()
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in restored._flatten_layers())


def test_config_round_trip():
    model = tiny(scales=(1.25, 1.0, 0.5), scale_dilations=(12, 6, 2), recalibration=None)
    clone = MultiScaleSegmenter.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert clone.count_params() == model.count_params()


def test_nests_inside_a_functional_model():
    inner = tiny()
    images = keras.Input((64, 64, 3))
    probabilities = keras.layers.Softmax(name="probabilities")(inner(images))
    outer = keras.Model(images, probabilities)
    batch = random_images(1, 64, 64)
    np.testing.assert_allclose(
        np.asarray(outer(batch)), np.asarray(keras.ops.softmax(inner(batch))), atol=1e-6
    )
    assert outer.count_params() == inner.count_params()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_returns_float32_logits(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = tiny(deep_supervision=True)
        outputs = model(random_images(1, 64, 64))
        assert model.get_layer("scale_0.5_dilated_conv").compute_dtype == policy.split("_")[1]
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    for value in outputs.values():
        assert value.dtype == "float32"
        assert np.isfinite(np.asarray(value)).all()


def test_rejects_images_smaller_than_the_scales_allow():
    model = tiny()
    assert model.min_input_side == 32
    with pytest.raises(ValueError, match="at least 32x32"):
        model(random_images(1, 24, 64))
    with pytest.raises(ValueError, match="built for 64x64"):
        tiny(input_shape=(64, 64, 3)).check_input_size(96, 96)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(backbone="vgg19"), "backbone"),
        (dict(fusion="sum"), "fusion"),
        (dict(scales=()), "scales"),
        (dict(scales=(1.0, 0.0)), "scales"),
        (dict(scales=(1.0, 4.5)), "scales"),
        (dict(num_classes=1), "num_classes"),
        (dict(scale_dilations=(12,)), "scale_dilations"),
        (dict(scales=(1.0,), fusion="attention"), "fusion"),
        (dict(recalibration="scale"), "recalibration"),
        (dict(attention_bound=0), "attention_bound"),
        (dict(attention_bound=True), "attention_bound"),
        (dict(deep_supervision=True, loss_stride=3), "loss_stride"),
        (dict(deep_supervision=True, loss_stride=True), "loss_stride"),
        (dict(loss_stride=4), "loss_stride"),  # one output: logits at the input size
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`|{argument}="):
        tiny(**kwargs)


def test_runs_in_a_graph_with_unknown_image_size():
    import tensorflow as tf

    model = tiny()
    forward = tf.function(
        lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
    )
    for height, width in [(64, 64), (70, 81)]:
        images = random_images(1, height, width)
        np.testing.assert_allclose(
            forward(images).numpy(), np.asarray(model(images)), rtol=1e-5, atol=1e-4
        )
    # predict() retraces for a new size; every size must work.
    assert model.predict_on_batch(random_images(1, 48, 52)).shape == (1, 48, 52, 4)


@pytest.mark.parametrize("fusion", ["attention_to_scale", "average", "max"])
def test_arguments_the_fusion_does_not_use_are_stored_as_none(fusion):
    config = tiny(fusion=fusion).get_config()
    assert (config["hypercolumn"], config["scale_dilations"], config["recalibration"]) == (
        None,
        None,
        None,
    )
    if fusion != "attention_to_scale":
        assert config["head_channels"] is None  # no attention heads to size
    # The saved config rebuilds the same model.
    clone = MultiScaleSegmenter.from_config(config)
    assert (
        clone.get_config() == config and clone.count_params() == tiny(fusion=fusion).count_params()
    )


@pytest.mark.parametrize(
    "argument, value",
    [
        ("recalibration", "add"),
        ("scale_dilations", (2, 12)),
        ("hypercolumn", False),
        ("attention_bound", 4.0),
    ],
)
def test_arguments_the_fusion_ignores_are_refused_when_set(argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`.*no effect with fusion='max'"):
        tiny(fusion="max", **{argument: value})


def test_the_paper_model_keeps_its_arguments():
    config = tiny(scale_dilations=(2, 12), recalibration="add").get_config()
    assert (config["fusion"], config["hypercolumn"]) == ("attention", True)
    assert (tuple(config["scale_dilations"]), config["recalibration"]) == ((2, 12), "add")
    assert config["head_channels"] == 16


def test_training_memory_estimate_grows_with_the_pixels_and_the_second_scale():
    from keras_msattn.summary import estimate_training_memory

    def per_image(size, **kwargs):
        model = tiny(deep_supervision=True, **kwargs)
        return estimate_training_memory(model, (size, size)).per_image

    small, large = per_image(64), per_image(128)
    # Activations scale with the pixel count (per-channel statistics do not).
    assert 3.0 < large / small < 4.2
    single = per_image(64, scales=(1.0,), fusion=None)
    assert 1.2 < small / single < 3.0  # the 0.5x stream and the heads add to 1x
    memory = estimate_training_memory(tiny(), (64, 64), optimizer_slots=2)
    params = sum(int(np.prod(w.shape)) for w in tiny().trainable_weights)
    assert memory.fixed >= 4 * 4 * params  # weights, gradients, two Adam slots
    assert memory.total(4) == memory.fixed + 4 * memory.per_image
    assert "per device at 4 image(s) per device" in memory.format(4)


def test_summary_command_builds_the_model_from_set_arguments(capsys):
    from keras_msattn.cli import main

    argv = ["summary", "--set", "backbone=resnet18_d8", "num_classes=4", "head_channels=16",
            "--set", "output_stride=16", "--input-size", "64", "64", "--batch-per-device", "3"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    params = tiny(output_stride=16).count_params()
    assert f"{params:,}" in out and "logits: (1, 64, 64, 4)" in out
    assert "GiB per image" in out and "at 3 image(s) per device" in out
    assert main(["summary", "--set", "steps=3"]) == 2
    assert "--set steps=...: not a model argument" in capsys.readouterr().err


@pytest.mark.parametrize("fusion", ["attention", "attention_to_scale"])
def test_a_bounded_attention_is_the_softmax_of_squashed_logits(fusion, tmp_path):
    model = tiny(fusion=fusion, attention_bound=0.5)
    images = random_images(1, 64, 64)
    logits, weights = probe(model, ["location_attention_logits", "scale_weights"])(images)
    squashed = 0.5 * np.tanh(np.asarray(logits) / 0.5)
    expected = np.exp(squashed) / np.exp(squashed).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(weights), expected, atol=1e-5)
    # No scale's weight can fall below 1 / (1 + exp(2 * bound)) with two scales.
    assert np.asarray(weights).min() >= 1 / (1 + np.exp(1.0)) - 1e-6
    path = str(tmp_path / "bounded.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert restored.get_config()["attention_bound"] == 0.5
    np.testing.assert_allclose(np.asarray(restored(images)), np.asarray(model(images)), atol=1e-5)
    assert tiny(fusion=fusion).get_config()["attention_bound"] is None  # the paper's softmax


@pytest.mark.parametrize("head_stride", [8, 16])
def test_heads_on_a_coarser_grid(head_stride, tmp_path):
    model = tiny(head_stride=head_stride, deep_supervision=True)
    images = random_images(1, 64, 64)
    maps = model.attention_maps(images)
    assert maps["scale_weights"].shape == (1, 64 // head_stride, 64 // head_stride, 2)
    assert maps["recalibration"].shape == (1, 64 // head_stride, 64 // head_stride, 4)
    outputs = model(images)
    assert all(tuple(value.shape) == (1, 64, 64, 4) for value in outputs.values())
    # Fewer grid pixels, same weights: the heads' parameters do not depend on the grid.
    assert model.count_params() == tiny(deep_supervision=True).count_params()
    path = str(tmp_path / "coarse.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert restored.get_config()["head_stride"] == head_stride
    np.testing.assert_allclose(
        np.asarray(restored(images)["final"]), np.asarray(outputs["final"]), atol=1e-5
    )


def test_head_stride_is_checked_and_only_for_the_paper_attention():
    with pytest.raises(ValueError, match="`head_stride` must be one of"):
        tiny(head_stride=5)
    with pytest.raises(ValueError, match="`head_stride`=16 has no effect"):
        tiny(fusion="average", head_stride=16)
    assert tiny(fusion="average").get_config()["head_stride"] is None
    assert tiny().get_config()["head_stride"] == 4  # the paper's grid


def test_refined_scores_add_a_shared_conv_of_each_scales_hypercolumn(tmp_path):
    model = tiny(score_refinement=True, deep_supervision=True)
    images = random_images(1, 64, 64)
    names = []
    for scale in model.scales:
        names += [f"scale_{scale}_logits_to_grid", f"scale_{scale}_dilated_conv"]
        names += [f"scale_{scale}_refined_logits"]
    values = [np.asarray(v) for v in probe(model, names)(images)]
    kernel, bias = (np.asarray(w) for w in model.get_layer("score_refinement").weights)
    for index in range(len(model.scales)):
        on_grid, features, refined = values[3 * index : 3 * index + 3]
        # P^s on the stride-4 grid plus one 1x1 conv, the same for every scale.
        expected = on_grid + features @ kernel[0, 0] + bias
        np.testing.assert_allclose(refined, expected, rtol=1e-4, atol=1e-4)
    # The streams' own outputs (1+S losses) and attention_maps are the refined scores.
    maps = model.attention_maps(images)["scale_logits"]
    np.testing.assert_allclose(maps[1.0], values[2], atol=1e-5)
    outputs = model(images)
    grid_to_input = keras.layers.Resizing(64, 64, interpolation="bilinear")
    np.testing.assert_allclose(
        np.asarray(outputs["scale_0.5"]), np.asarray(grid_to_input(values[5])), atol=1e-4
    )
    path = str(tmp_path / "refined.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert restored.get_config()["score_refinement"] is True
    np.testing.assert_allclose(
        np.asarray(restored(images)["final"]), np.asarray(outputs["final"]), atol=1e-5
    )


def test_score_refinement_is_checked_and_only_for_the_paper_attention():
    with pytest.raises(ValueError, match="`score_refinement` must be True or False"):
        tiny(score_refinement="yes")
    with pytest.raises(ValueError, match="`score_refinement`=True has no effect"):
        tiny(fusion="max", score_refinement=True)
    assert tiny().get_config()["score_refinement"] is False  # the paper's scores


def _depthwise_then_pointwise(inputs, depthwise, pointwise, bias, dilation):
    """NumPy reference: a 'same'-padded dilated depthwise 3x3 conv, a 1x1 conv, ReLU."""
    height, width, _ = inputs.shape
    padded = np.pad(inputs, ((dilation, dilation), (dilation, dilation), (0, 0)))
    spatial = np.zeros_like(inputs)
    for i in range(3):
        for j in range(3):
            window = padded[
                i * dilation : i * dilation + height, j * dilation : j * dilation + width
            ]
            spatial += window * depthwise[i, j, :, 0]
    return np.maximum(spatial @ pointwise[0, 0] + bias, 0.0)


def test_separable_heads_are_a_dilated_depthwise_conv_then_a_pointwise_conv(tmp_path):
    model = tiny(separable_heads=True, scale_dilations=(3, 2))
    full = tiny()
    images = random_images(1, 64, 64)
    names = ["scale_1.0_hypercolumn", "scale_1.0_dilated_conv"]
    names += ["scale_0.5_hypercolumn", "scale_0.5_dilated_conv"]
    values = [np.asarray(v)[0] for v in probe(model, names)(images)]
    for index, dilation in enumerate((3, 2)):
        layer = model.get_layer(names[2 * index + 1])
        assert isinstance(layer, keras.layers.SeparableConv2D)
        depthwise, pointwise, bias = (np.asarray(w) for w in layer.weights)
        expected = _depthwise_then_pointwise(
            values[2 * index], depthwise, pointwise, bias, dilation
        )
        np.testing.assert_allclose(values[2 * index + 1], expected, rtol=1e-4, atol=1e-4)
    for name in ("location_attention_conv", "recalibration_conv"):
        assert isinstance(model.get_layer(name), keras.layers.SeparableConv2D)
        assert isinstance(full.get_layer(name), keras.layers.Conv2D)
    # Same widths and grid, a fraction of the heads' weights.
    heads = model.count_params() - full.count_params()
    assert heads < -0.5 * (full.count_params() - full.backbone.count_params())
    path = str(tmp_path / "separable.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert restored.get_config()["separable_heads"] is True
    np.testing.assert_allclose(np.asarray(restored(images)), np.asarray(model(images)), atol=1e-5)


def test_separable_heads_are_checked_and_only_for_the_attention_fusions():
    with pytest.raises(ValueError, match="`separable_heads` must be True, False or 'auto'"):
        tiny(separable_heads=1)
    with pytest.raises(ValueError, match="`separable_heads`=True has no effect"):
        tiny(fusion="average", separable_heads=True)
    model = tiny(fusion="attention_to_scale", separable_heads=True)
    assert isinstance(model.get_layer("location_attention_conv"), keras.layers.SeparableConv2D)
    assert tuple(model(random_images(1, 48, 48)).shape) == (1, 48, 48, 4)
    assert tiny().get_config()["separable_heads"] is False  # the paper's full convs


def test_separable_heads_default_to_the_mobile_backbone_and_old_saves_keep_full_convs(tmp_path):
    mobile = dict(backbone="mobilenet_v2", backbone_width=0.35, output_stride=16)
    model = tiny(**mobile)
    assert model.get_config()["separable_heads"] is True
    assert isinstance(model.get_layer("recalibration_conv"), keras.layers.SeparableConv2D)
    assert tiny(**mobile, scales=(1.0,), fusion=None).get_config()["separable_heads"] is False
    assert tiny(**mobile, fusion="average").get_config()["separable_heads"] is False
    assert tiny(fusion="attention_to_scale").get_config()["separable_heads"] is False
    # A config saved before the option existed has no key: it rebuilds the full convs
    # its weights were trained for, not the new default.
    full = tiny(**mobile, separable_heads=False)
    config = full.get_config()
    del config["separable_heads"]
    restored = MultiScaleSegmenter.from_config(config)
    assert isinstance(restored.get_layer("recalibration_conv"), keras.layers.Conv2D)
    assert not isinstance(restored.get_layer("recalibration_conv"), keras.layers.SeparableConv2D)
    restored.set_weights(full.get_weights())


def test_the_mobile_backbone_merges_on_the_stride_8_grid_and_old_saves_keep_stride_4(tmp_path):
    mobile = dict(backbone="mobilenet_v2", backbone_width=0.35, output_stride=16)
    model = tiny(**mobile)
    assert model.get_config()["head_stride"] == 8
    images = random_images(1, 64, 64)
    assert model.attention_maps(images)["scale_weights"].shape == (1, 8, 8, 2)
    path = str(tmp_path / "mobile.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert restored.get_config()["head_stride"] == 8
    np.testing.assert_allclose(np.asarray(restored(images)), np.asarray(model(images)), atol=1e-5)
    assert tiny(**mobile, head_stride=4).get_config()["head_stride"] == 4
    assert tiny(**mobile, fusion="attention_to_scale").get_config()["head_stride"] is None
    assert tiny(**mobile, scales=(1.0,), fusion=None).get_config()["head_stride"] is None
    assert tiny(head_stride="auto").get_config()["head_stride"] == 4  # the paper's backbones
    with pytest.raises(ValueError, match="`head_stride` must be one of .* or 'auto'"):
        tiny(head_stride="coarse")
    # A config saved before the option existed merged on the paper's grid: it
    # rebuilds that, not the new default.
    config = tiny(**mobile, head_stride=4).get_config()
    del config["head_stride"]
    assert MultiScaleSegmenter.from_config(config).get_config()["head_stride"] == 4


def test_attention_maps_in_training_mode_use_the_batch_statistics():
    model = tiny()
    images = random_images(4, 48, 48)
    moving = model.attention_maps(images)["scale_logits"][0.5]
    again = model.attention_maps(images)["scale_logits"][0.5]
    batch = model.attention_maps(images, training=True)["scale_logits"][0.5]
    np.testing.assert_array_equal(moving, again)
    # Fresh moving statistics (mean 0, variance 1) are not the batch's.
    assert np.abs(batch - moving).max() > 1e-3
