"""LiteRT export of a tiny trained segmenter in every post-training format."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from keras_msattn import MultiScaleSegmenter
from keras_msattn.export import LiteRTModel, export_tflite, op_summary, tflite, verify_tflite
from keras_msattn.losses import SegmentationCrossEntropy

SIZE = 64
NUM_CLASSES = 3


def tiny_trained_segmenter(**kwargs):
    """MobileNetV2 (alpha 0.35) segmenter, a few eager steps on colour-threshold labels."""
    keras.utils.set_random_seed(0)
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2",
        num_classes=NUM_CLASSES,
        backbone_width=0.35,
        input_shape=(SIZE, SIZE, 3),
        **kwargs,
    )
    images, labels = colour_data(8, seed=0)
    # With the seed set above this is the same model in every run (checked: equal
    # weight hashes in separate processes); the int8 bounds below rely on it.
    model.compile(keras.optimizers.SGD(0.05), SegmentationCrossEntropy(), run_eagerly=True)
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    return model


def colour_data(count, seed):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 4, 4, 3)).astype("float32")
    images = np.asarray(keras.ops.image.resize(coarse, (SIZE, SIZE)))
    labels = (images[..., 0] > 128).astype("int32") + (images[..., 1] > 128).astype("int32")
    return images, labels


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    model = tiny_trained_segmenter()
    calibration, _ = colour_data(8, seed=1)
    validation = colour_data(4, seed=2)
    reports = {}
    for quantization in ("none", "float16", "dynamic", "int8", "int8_full"):
        reports[quantization] = export_tflite(
            model,
            out / f"model_{quantization}.tflite",
            quantization=quantization,
            calibration_images=calibration,
            num_calibration=8,
            validation_data=validation,
            num_threads=1,
        )
    reports["int8_per_tensor"] = export_tflite(
        model,
        out / "model_int8_per_tensor.tflite",
        quantization="int8",
        per_channel=False,
        calibration_images=calibration,
        num_calibration=8,
        validation_data=validation,
    )
    reports["none_with_names"] = export_tflite(
        model, out / "model_none_with_names.tflite", strip_names=False, validation_data=validation
    )
    reports["int8_full_labels"] = export_tflite(
        model,
        out / "model_int8_full_labels.tflite",
        quantization="int8_full",
        output="labels",
        calibration_images=calibration,
        num_calibration=8,
        validation_data=validation,
    )
    return model, out, reports, validation


@pytest.mark.parametrize(
    "quantization", ["none", "float16", "dynamic", "int8", "int8_full", "int8_full_labels"]
)
def test_artifact_and_report_are_written(exported, quantization):
    _, out, reports, _ = exported
    path = out / f"model_{quantization}.tflite"
    assert path.is_file()
    stored = json.loads((out / f"model_{quantization}.report.json").read_text())
    markdown = (out / f"model_{quantization}.report.md").read_text()
    assert stored["size_bytes"] == os.path.getsize(path) > 0
    assert stored["latency"]["median_ms"] > 0
    assert stored["samples"]["source"] == "validation images"
    assert 0.0 <= stored["miou"]["artifact"] <= 1.0 and 0.0 <= stored["miou"]["keras"] <= 1.0
    assert "argmax_agreement" in markdown and "CONV_2D" in markdown
    assert reports[quantization]["path"] == str(path)
    # No partial files left behind.
    assert not [p for p in os.listdir(out) if p.startswith(".")]


@pytest.mark.parametrize(
    "quantization", ["none", "float16", "dynamic", "int8", "int8_full", "int8_full_labels"]
)
def test_builtin_ops_only(exported, quantization):
    _, out, reports, _ = exported
    summary = op_summary(str(out / f"model_{quantization}.tflite"))
    assert summary["flex_ops"] == []
    assert not any(name.startswith("Flex") for name in summary["ops"])
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "RESIZE_BILINEAR"} <= set(summary["ops"])
    assert reports[quantization]["ops"] == summary["ops"]


# Tolerances: logits of the float artifacts against Keras. float16 rounds the
# weights to 11 significant bits, dynamic range to 8 bits per channel.
@pytest.mark.parametrize(
    "quantization, max_diff, min_agreement",
    [("none", 1e-3, 0.999), ("float16", 0.05, 0.99), ("dynamic", 0.5, 0.95)],
)
def test_float_artifacts_match_keras(exported, quantization, max_diff, min_agreement):
    model, out, _, validation = exported
    runner = LiteRTModel(str(out / f"model_{quantization}.tflite"))
    logits = runner.predict(validation[0])
    expected = np.asarray(model(validation[0], training=False))
    assert logits.shape == expected.shape == (4, SIZE, SIZE, NUM_CLASSES)
    assert np.abs(logits - expected).max() < max_diff
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() >= min_agreement


@pytest.mark.parametrize(
    "quantization", ["int8", "int8_full", "int8_full_labels", "int8_per_tensor"]
)
def test_integer_artifacts_agree_with_keras(exported, quantization):
    model, out, reports, validation = exported
    runner = LiteRTModel(str(out / f"model_{quantization}.tflite"))
    outputs = runner.predict(validation[0])
    logits = np.asarray(model(validation[0], training=False))
    expected = logits.argmax(-1)
    labels = outputs if quantization.endswith("labels") else outputs.argmax(-1)
    agreement = (labels == expected).mean()
    assert reports[quantization]["agreement"]["argmax_agreement"] == pytest.approx(agreement)
    # The tiny model is the same in every run (seeded initializers, SGD); 99.7% seen.
    assert agreement >= 0.98
    # Where Keras's top-2 margin is well above int8's typical logit error, the
    # artifact must pick the same class.
    top2 = np.sort(logits, axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 4 * reports["int8"]["agreement"][
        "mean_abs_logit_diff"
    ]
    assert decided.mean() > 0.5  # 0.93 seen
    assert (labels[decided] == expected[decided]).mean() >= 0.995
    # Every compute operator runs in int8.
    assert reports[quantization]["float_ops"] == {}


def test_separable_heads_export_as_dilated_depthwise_convs_in_int8(tmp_path):
    model = tiny_trained_segmenter(separable_heads=True)
    calibration, _ = colour_data(8, seed=1)
    validation = colour_data(4, seed=2)
    path = tmp_path / "separable_int8.tflite"
    report = export_tflite(
        model,
        path,
        quantization="int8",
        calibration_images=calibration,
        num_calibration=8,
        validation_data=validation,
        num_threads=1,
    )
    assert report["flex_ops"] == [] and report["float_ops"] == {}
    # The dilated depthwise convs stay single ops (no SPACE_TO_BATCH_ND around them).
    assert "SPACE_TO_BATCH_ND" not in report["ops"]
    model_object = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    depthwise_code = [
        index
        for index, code in enumerate(model_object.operatorCodes)
        if max(code.builtinCode, code.deprecatedBuiltinCode)
        == schema.BuiltinOperator.DEPTHWISE_CONV_2D
    ]
    factors = sorted(
        op.builtinOptions.dilationHFactor
        for op in model_object.subgraphs[0].operators
        if op.opcodeIndex in depthwise_code
    )
    assert factors[-1] == model.get_layer("scale_1.0_dilated_conv").dilation_rate[0] == 12
    assert report["agreement"]["argmax_agreement"] >= 0.98


def test_int8_full_io_types(exported):
    _, _, reports, _ = exported
    full = reports["int8_full"]
    assert full["input"]["dtype"] == "uint8"
    # Raw pixels 0..255 map onto uint8 almost one to one.
    assert full["input"]["scale"] == pytest.approx(1.0, rel=0.02)
    assert full["input"]["zero_point"] == 0
    assert full["output"]["dtype"] == "int8"
    assert full["output"]["shape"] == [1, SIZE, SIZE, NUM_CLASSES]
    labels = reports["int8_full_labels"]
    assert labels["output"]["dtype"] == "int32"
    assert labels["output"]["shape"] == [1, SIZE, SIZE]
    assert "ARG_MAX" in labels["ops"]
    assert "ARG_MAX" not in full["ops"]
    assert reports["int8"]["input"]["dtype"] == "float32"
    assert reports["int8"]["output"]["dtype"] == "float32"


def test_sizes_shrink_with_quantization(exported):
    _, _, reports, _ = exported
    size = {name: report["size_bytes"] for name, report in reports.items()}
    assert size["float16"] < 0.6 * size["none"]
    assert size["int8"] < 0.6 * size["none"]
    assert size["dynamic"] < 0.6 * size["none"]


def test_per_tensor_weights_and_stripped_names(exported):
    _, out, reports, _ = exported
    per_channel, per_tensor = reports["int8"], reports["int8_per_tensor"]
    assert per_channel["weight_scales"] == "per channel"
    assert per_tensor["weight_scales"] == "per tensor"

    def weight_scale_counts(name):
        runner = LiteRTModel(str(out / f"model_{name}.tflite"))
        return [
            len(t["quantization_parameters"]["scales"])
            for t in runner.interpreter.get_tensor_details()
            if t["dtype"] == np.int8 and len(t["shape"]) == 4
        ]

    assert max(weight_scale_counts("int8")) > 1
    assert set(weight_scale_counts("int8_per_tensor")) == {1}
    # Each per-channel scale beyond the first is a float32 scale and an int64 zero
    # point (12 bytes); going per tensor must save at least 8 of them per channel
    # (the rest may go to flatbuffer alignment). A fixed fraction of the file size
    # depends on how much of the file is weights, so it is not asserted.
    extra_channels = sum(count - 1 for count in weight_scale_counts("int8"))
    saved = per_channel["size_bytes"] - per_tensor["size_bytes"]
    assert saved >= 8 * extra_channels, (saved, extra_channels)

    def tensor_names(name):
        runner = LiteRTModel(str(out / f"model_{name}.tflite"))
        return [t["name"] for t in runner.interpreter.get_tensor_details()]

    assert not any(tensor_names("none"))
    assert all(tensor_names("none_with_names"))
    assert reports["none"]["tensor_names"] == "stripped"
    assert reports["none_with_names"]["tensor_names"] == "kept"
    assert reports["none_with_names"]["size_bytes"] > reports["none"]["size_bytes"]
    # The same numbers either way.
    assert reports["none_with_names"]["agreement"] == reports["none"]["agreement"]


@pytest.mark.parametrize("quantization", ["none", "float16", "dynamic", "qat"])
def test_per_tensor_weights_only_for_full_integer(tmp_path, quantization):
    with pytest.raises(ValueError, match="Per-tensor"):
        export_tflite(None, tmp_path / "m.tflite", quantization, per_channel=False)
    assert not list(tmp_path.iterdir())


def test_verify_tflite_without_model_or_images(exported):
    _, out, _, _ = exported
    result = verify_tflite(str(out / "model_none.tflite"), latency_runs=3, warmup_runs=1)
    assert result["samples"]["source"] == "synthetic images"
    assert "agreement" not in result and result["latency"]["runs"] == 3


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")
def test_compact_stores_each_vector_once_and_runs_the_same():
    # A convolution used twice on differently ranged inputs: the int8 file holds
    # its weights once, one bias per call, and per-channel zero points all zero.
    inputs = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(8, 3, padding="same", name="shared_conv")
    outputs = keras.layers.Concatenate()([conv(inputs), conv(inputs * 4.0)])
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (8, 16, 16, 3)).astype("float32")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in images)
    original = converter.convert()
    small = tflite.compact(original, strip_names=False)
    assert len(small) < len(original)

    stored = schema.Model.GetRootAsModel(small, 0)
    graph = stored.Subgraphs(0)
    zero_point_vectors = set()
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        # Only constants have a buffer of their own; the rest share the empty one.
        assert (tensor.Buffer() == 0) == (stored.Buffers(tensor.Buffer()).DataLength() == 0)
        quantization = tensor.Quantization()
        if quantization is not None and quantization.ZeroPointLength() == 8:
            zero_point_vectors.add(quantization._tab.Vector(quantization._tab.Offset(10)))
    assert stored.Buffers(0).DataLength() == 0
    assert len(zero_point_vectors) == 1  # kernel and both biases: one stored vector
    assert graph.Tensors(0).Name()  # names kept when asked

    def run(flatbuffer):
        interpreter = Interpreter(model_content=flatbuffer)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images[:1])
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    np.testing.assert_array_equal(run(small), run(original))
    assert (
        not schema.Model.GetRootAsModel(tflite.compact(original), 0).Subgraphs(0).Tensors(0).Name()
    )
