"""Quantization-aware export: the Keras 3 QAT graph and its int8 conversion."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from keras_msattn import MultiScaleSegmenter
from keras_msattn.export import LiteRTModel, convert, export_tflite, op_summary, qat
from keras_msattn.losses import SegmentationCrossEntropy

SIZE = 64


def colour_data(count, seed, size=SIZE):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 4, 4, 3)).astype("float32")
    images = np.asarray(keras.ops.image.resize(coarse, (size, size)))
    labels = (images[..., 0] > 128).astype("int32") + (images[..., 1] > 128).astype("int32")
    return images, labels


def small_functional_model():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0, name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    shared = keras.layers.Conv2D(3, 1, name="head")
    a = shared(x)
    b = shared(keras.layers.AveragePooling2D(1, name="pool")(x))
    outputs = keras.layers.Add(name="add")([a, b])
    model = keras.Model(inputs, outputs)
    # Non-trivial BN statistics, so folding is really exercised.
    rng = np.random.default_rng(0)
    for layer in (model.get_layer("bn"), model.get_layer("dw_bn")):
        channels = layer.gamma.shape[0]
        layer.set_weights(
            [
                rng.uniform(0.5, 2.0, channels),
                rng.normal(0, 0.5, channels),
                rng.normal(0, 0.5, channels),
                rng.uniform(0.5, 2.0, channels),
            ]
        )
    return model


def test_qat_graph_structure_and_folding():
    model = small_functional_model()
    images = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    quantized = qat.quantize_model(model)
    names = [layer.name for layer in quantized.layers]
    # BN folded into the convs; a fake quant after the fused ReLU, none between conv and BN.
    assert isinstance(quantized.get_layer("conv"), qat.QuantizedConv)
    assert quantized.get_layer("conv").fold_batch_norm
    assert quantized.get_layer("dw").fold_batch_norm and quantized.get_layer("dw").depthwise
    assert "relu_quant" in names and "conv_quant" not in names and "bn_quant" not in names
    assert "dw_bn_quant" in names and "add_quant" in names
    # The shared head is called twice: one fake quant per call.
    assert {"head_quant", "head_quant_2"} <= set(names)

    # Calibrated on the same images, the QAT graph computes the float model up
    # to int8 rounding (a few steps of 1/255 of each tensor's range).
    qat.calibrate(quantized, [images])
    for layer in qat.fake_quant_layers(quantized):
        assert layer.range_min.numpy() <= 0.0 < layer.range_max.numpy()
    expected = np.asarray(model(images, training=False))
    simulated = np.asarray(quantized(images, training=False))
    scale = np.abs(expected).max()
    assert np.abs(simulated - expected).max() < 0.05 * scale
    assert np.abs(simulated - expected).max() > 0.0


def test_folded_weights_match_conv_and_batch_norm():
    model = small_functional_model()
    images = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 6)).astype("float32")
    quantized = qat.quantize_model(model)
    for conv_name, bn_name in (("dw", "dw_bn"),):
        layer = quantized.get_layer(conv_name)
        kernel, bias = layer.folded_kernel_and_bias()
        reference = model.get_layer(bn_name)(model.get_layer(conv_name)(images), training=False)
        folded = tf.nn.depthwise_conv2d(images, kernel, (1, 1, 1, 1), "SAME") + bias
        np.testing.assert_allclose(folded, reference, atol=1e-4)
        # The fake-quantized kernel lies on the int8 grid of each output channel.
        flat = np.asarray(kernel).reshape(-1, kernel.shape[2] * kernel.shape[3])
        quantized_kernel = qat._fake_quant_per_output_channel(kernel, True).numpy()
        steps = np.abs(flat).max(0) / 127.0
        codes = quantized_kernel.reshape(flat.shape) / steps
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)


def test_quantize_model_rejects_what_it_cannot_rewrite():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional"):
        qat.quantize_model(Subclassed())


@pytest.fixture(scope="module")
def trained_segmenter():
    keras.utils.set_random_seed(0)
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2", num_classes=3, backbone_width=0.35, input_shape=(SIZE, SIZE, 3)
    )
    images, labels = colour_data(8, seed=0)
    model.compile(keras.optimizers.Adam(3e-3), SegmentationCrossEntropy(), run_eagerly=True)
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    return model


def test_qat_export_end_to_end(trained_segmenter, tmp_path):
    model = trained_segmenter
    before = [w.copy() for w in model.get_weights()]
    train = colour_data(16, seed=3)
    validation = colour_data(4, seed=4)
    report = export_tflite(
        model,
        tmp_path / "model_qat.tflite",
        quantization="qat",
        qat_dataset=train,
        qat_steps=3,
        qat_learning_rate=1e-4,
        num_calibration=8,
        validation_data=validation,
    )
    # The float model is left as it was.
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    stored = json.loads((tmp_path / "model_qat.report.json").read_text())
    assert stored["quantization"] == "qat"
    assert stored["qat"]["steps"] == 3 and np.isfinite(stored["qat"]["loss"])
    assert stored["qat"]["num_fake_quants"] > 50
    assert stored["flex_ops"] == [] and stored["float_ops"] == {}
    # The int8 file computes what the fine-tuned QAT graph computes; against
    # the float model (barely trained, near-tied logits) it only roughly agrees.
    assert stored["qat"]["agreement_with_qat_graph"]["argmax_agreement"] >= 0.9
    assert report["agreement"]["argmax_agreement"] >= 0.5
    runner = LiteRTModel(str(tmp_path / "model_qat.tflite"))
    assert runner.input["dtype"] == np.float32


def test_converter_keeps_the_learned_ranges(trained_segmenter):
    images, _ = colour_data(8, seed=5)
    quantized = qat.quantize_model(trained_segmenter)
    qat.calibrate(quantized, [images])
    # A range calibration could not give (input 0..510, i.e. scale 2): if the
    # int8 model has it, the converter took the QAT ranges over calibration.
    input_quant = quantized.get_layer("images_quant")
    input_quant.range_min.assign(0.0)
    input_quant.range_max.assign(510.0)
    flatbuffer = convert(quantized, (SIZE, SIZE), "qat", representative_images=images)
    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    quantize = next(op for op in interpreter._get_ops_details() if op["op_name"] == "QUANTIZE")
    scale, _ = interpreter._get_tensor_details(quantize["outputs"][0], 0)["quantization"]
    assert scale == pytest.approx(2.0, rel=1e-3)
    # And the int8 model computes what the Keras QAT graph computes.
    assert op_summary(flatbuffer)["float_ops"] == {}
    expected = np.asarray(quantized(images, training=False))
    outputs = LiteRTModel(flatbuffer).predict(images)
    assert (outputs.argmax(-1) == expected.argmax(-1)).mean() >= 0.9
