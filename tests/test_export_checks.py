"""Export input checks, failures that leave nothing behind, and small helpers."""

import os

import keras
import numpy as np
import pytest

from keras_msattn import MultiScaleSegmenter
from keras_msattn.export import (
    LiteRTModel,
    UnsupportedOpsError,
    calibration,
    export_saved_model,
    export_tflite,
    report,
    tflite,
)


def small_model(input_shape=(32, 32, 3), classes=3):
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(classes, 1)(x)
    return keras.Model(inputs, x)


class InverseErf(keras.layers.Layer):
    """erfinv has no LiteRT builtin kernel (TensorFlow would need Flex)."""

    def call(self, x):
        return keras.ops.erfinv(keras.ops.tanh(x))


def flex_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(3, 1)(inputs)
    return keras.Model(inputs, InverseErf(name="inverse_erf")(x))


def images(count=2, size=(32, 32)):
    return np.random.default_rng(0).uniform(0, 255, (count, *size, 3)).astype("float32")


def listing(folder):
    return sorted(os.listdir(folder))


@pytest.fixture
def no_conversion(monkeypatch):
    """Fails the test if a conversion starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("conversion started before the arguments were checked")

    monkeypatch.setattr(tflite, "convert", refuse)


@pytest.mark.parametrize("quantization", ["int8", "int8_full", "qat"])
def test_integer_quantization_needs_calibration_data(tmp_path, quantization, no_conversion):
    with pytest.raises(ValueError, match="calibration|qat_dataset"):
        export_tflite(small_model(), tmp_path / "m.tflite", quantization=quantization)
    assert listing(tmp_path) == []


def test_unknown_quantization_and_output(tmp_path, no_conversion):
    with pytest.raises(ValueError, match="quantization"):
        export_tflite(small_model(), tmp_path / "m.tflite", quantization="int4")
    with pytest.raises(ValueError, match="output"):
        export_tflite(small_model(), tmp_path / "m.tflite", output="probabilities")


def test_dynamic_model_needs_an_input_size(tmp_path, no_conversion):
    with pytest.raises(ValueError, match="input_size"):
        export_tflite(small_model((None, None, 3)), tmp_path / "m.tflite")


def test_fixed_model_refuses_another_size(tmp_path, no_conversion):
    with pytest.raises(ValueError, match="32x32"):
        export_tflite(small_model(), tmp_path / "m.tflite", input_size=(48, 48))


def test_segmenter_size_below_its_minimum(tmp_path, no_conversion):
    model = MultiScaleSegmenter(backbone="mobilenet_v2", num_classes=2, backbone_width=0.35)
    with pytest.raises(ValueError, match="at least 32x32"):
        export_tflite(model, tmp_path / "m.tflite", input_size=(24, 64))
    with pytest.raises(ValueError, match="at least 32x32"):
        export_saved_model(model, tmp_path, input_size=(24, 64))
    assert listing(tmp_path) == []


def test_psp_segmenter_only_at_its_built_size(tmp_path, no_conversion):
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2",
        num_classes=2,
        backbone_width=0.35,
        pyramid_pooling=True,
        input_shape=(64, 64, 3),
    )
    with pytest.raises(ValueError, match="built for 64x64"):
        export_tflite(model, tmp_path / "m.tflite", input_size=(96, 96))
    assert listing(tmp_path) == []


def test_flex_op_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(UnsupportedOpsError, match="Erfinv") as caught:
        export_tflite(flex_model(), tmp_path / "m.tflite")
    assert caught.value.ops == ["Erfinv"]
    assert "Flex" in str(caught.value) and "inverse_erf" in str(caught.value)
    assert listing(tmp_path) == []


def test_converter_failures_on_builtins_are_not_called_flex():
    class Operator:
        def __init__(self, name):
            self.name = name

    class Item:
        def __init__(self, name):
            self.operator = Operator(name)

    class ConverterFailure(Exception):
        def __init__(self, *names):
            super().__init__("conversion failed")
            self.errors = [Item(name) for name in names]

    # A quantization failure on a builtin concatenation is not a Flex problem:
    # the converter's own error must surface, not "needs the Flex delegate".
    assert tflite._unsupported_ops(ConverterFailure("tfl.concatenation")) == []
    assert tflite._unsupported_ops(ConverterFailure("tf.Erfinv", "tfl.add")) == ["Erfinv"]


def test_failed_export_keeps_the_previous_artifact(tmp_path, monkeypatch):
    model = small_model()
    path = tmp_path / "m.tflite"
    export_tflite(model, path)
    before = {name: (tmp_path / name).read_bytes() for name in listing(tmp_path)}
    assert sorted(before) == ["m.report.json", "m.report.md", "m.tflite"]

    def broken(*args, **kwargs):
        raise RuntimeError("verification crashed")

    monkeypatch.setattr(report, "verify_tflite", broken)
    with pytest.raises(RuntimeError, match="verification crashed"):
        export_tflite(model, path, quantization="float16")
    # Old files intact, no partial file (hidden or not) left behind.
    assert {name: (tmp_path / name).read_bytes() for name in listing(tmp_path)} == before


def test_failed_saved_model_export_leaves_no_version_folder(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("verification crashed")

    monkeypatch.setattr(report, "verify_saved_model", broken)
    with pytest.raises(RuntimeError, match="verification crashed"):
        export_saved_model(small_model(), tmp_path, model_name="m")
    assert listing(tmp_path / "m") == []


def test_deep_supervision_model_exports_final_logits():
    keras.utils.set_random_seed(0)
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2",
        num_classes=3,
        backbone_width=0.35,
        input_shape=(64, 64, 3),
        deep_supervision=True,
    )
    flatbuffer = tflite.convert(model, (64, 64))
    runner = LiteRTModel(flatbuffer)
    assert len(runner.interpreter.get_output_details()) == 1
    x = images(2, (64, 64))
    np.testing.assert_allclose(
        runner.predict(x), np.asarray(model(x, training=False)["final"]), atol=1e-4
    )
    labels = LiteRTModel(tflite.convert(model, (64, 64), output="labels")).predict(x)
    assert labels.dtype == np.int32 and labels.shape == (2, 64, 64)


def test_fit_to_size_covers_and_centre_crops():
    image = np.zeros((40, 80, 3), np.float32)
    image[:, 40:] = 255.0  # right half white
    fitted = calibration.fit_to_size(image, (20, 20)).numpy()
    # 40x80 -> 20x40 -> centre 20x20: the left half of the crop is black, the right white.
    assert fitted.shape == (20, 20, 3)
    assert fitted[:, :9].max() == 0.0 and fitted[:, 11:].min() == 255.0
    label = np.arange(4, dtype=np.int32).reshape(2, 2).repeat(10, 0).repeat(10, 1)
    fitted_label = calibration.fit_to_size(label[..., None], (40, 40), "nearest").numpy()
    assert fitted_label.dtype == np.int32 and set(np.unique(fitted_label)) == {0, 1, 2, 3}


def test_labelled_examples_are_checked():
    with pytest.raises(ValueError, match="label map"):
        calibration.labelled((images(1), np.zeros((1, 8, 8), np.int32)), (32, 32))
    with pytest.raises(ValueError, match="pairs"):
        calibration.labelled(images(2), (32, 32))
    with pytest.raises(ValueError, match="RGB"):
        calibration.images(np.zeros((2, 32, 32, 4), np.float32), (32, 32))
