import math

import keras
import numpy as np
import pytest

from keras_msattn.backbones import BACKBONE_NAMES, build_backbone, preprocessing_mode
from keras_msattn.backbones.weights import copy_weights_by_name

STAGE_STRIDES = {8: (4, 8, 8, 8), 16: (4, 8, 16, 16)}
STAGE_CHANNELS = {
    "vgg16_largefov": (256, 512, 512, 1024),
    "resnet18_d8": (64, 128, 256, 512),
    "resnet34_d8": (64, 128, 256, 512),
    "resnet50_d8": (256, 512, 1024, 2048),
    "resnet101_d8": (256, 512, 1024, 2048),
    "mobilenet_v2": (24, 32, 96, 320),
}
STAGE_LAYERS = {
    "vgg16_largefov": ("block3_conv3", "block4_conv3", "block5_conv3", "fc7_dropout"),
    "resnet18_d8": ("conv2_block2_out", "conv3_block2_out", "conv4_block2_out", "conv5_block2_out"),
    "resnet34_d8": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet50_d8": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet101_d8": (
        "conv2_block3_out",
        "conv3_block4_out",
        "conv4_block23_out",
        "conv5_block3_out",
    ),
    "mobilenet_v2": ("block_2_add", "block_5_add", "block_12_add", "block_16_project_BN"),
}
OUTPUT_STRIDES = [(name, 8) for name in BACKBONE_NAMES] + [
    (name, 16) for name in BACKBONE_NAMES if name != "vgg16_largefov"
]

_cache = {}


def _backbone(name, output_stride=8):
    # Each configuration is built once per test session.
    key = (name, output_stride)
    if key not in _cache:
        _cache[key] = build_backbone(name, output_stride=output_stride)
    return _cache[key]


def _expected_shapes(name, output_stride, height, width):
    return {
        f"stage{i + 1}": (1, math.ceil(height / s), math.ceil(width / s), c)
        for i, (s, c) in enumerate(
            zip(STAGE_STRIDES[output_stride], STAGE_CHANNELS[name], strict=True)
        )
    }


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_output_contract(name):
    model = _backbone(name)
    assert model.name == "backbone"
    assert tuple(model.input.shape) == (None, None, None, 3)
    assert list(model.output) == ["stage1", "stage2", "stage3", "stage4"]
    layer_names = tuple(model.output[key]._keras_history[0].name for key in model.output)
    assert layer_names == STAGE_LAYERS[name]


@pytest.mark.parametrize("name,output_stride", OUTPUT_STRIDES)
def test_feature_shapes(name, output_stride):
    model = _backbone(name, output_stride)
    # resnet101 differs from resnet50 only in conv4's depth: one real call is enough.
    sizes = [(65, 64)] if name == "resnet101_d8" else [(65, 64), (33, 40)]
    for height, width in sizes:
        features = model(np.zeros((1, height, width, 3), "float32"))
        shapes = {key: tuple(value.shape) for key, value in features.items()}
        assert shapes == _expected_shapes(name, output_stride, height, width)
    # Odd full-size crops, symbolically.
    spec = model.compute_output_spec(keras.KerasTensor((1, 321, 481, 3)))
    shapes = {key: tuple(value.shape) for key, value in spec.items()}
    assert shapes == _expected_shapes(name, output_stride, 321, 481)


def test_parameter_counts_match_keras_applications():
    vgg = keras.applications.VGG16(include_top=False, weights=None)
    fc6 = 3 * 3 * 512 * 1024 + 1024
    fc7 = 1024 * 1024 + 1024
    assert _backbone("vgg16_largefov").count_params() == vgg.count_params() + fc6 + fc7
    assert _backbone("vgg16_largefov").count_params() == 20_483_904

    resnet50 = keras.applications.ResNet50(include_top=False, weights=None)
    assert _backbone("resnet50_d8").count_params() == resnet50.count_params() == 23_587_712
    assert _backbone("resnet101_d8").count_params() == 42_658_176


@pytest.mark.parametrize(
    "name,trainable", [("resnet18_d8", 11_176_512), ("resnet34_d8", 21_284_672)]
)
def test_basic_block_resnets_match_the_original_parameter_count(name, trainable):
    # torchvision's resnet18/34 without the fc layer (BN moving statistics are buffers there).
    model = _backbone(name)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable


@pytest.mark.parametrize("width", [0.35, 1.0, 1.4])
def test_mobilenet_v2_parameter_count(width):
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=width)
    head = (
        reference.get_layer("Conv_1").count_params()
        + reference.get_layer("Conv_1_bn").count_params()
    )
    model = build_backbone("mobilenet_v2", width=width)
    assert model.count_params() == reference.count_params() - head
    if width == 1.0:
        assert model.count_params() == 1_843_264


def test_mobilenet_v2_initialization_is_seeded_and_distinct():
    def depthwise_kernels(seed):
        keras.utils.set_random_seed(seed)
        model = build_backbone("mobilenet_v2", weights=None, output_stride=16, width=0.35)
        return [
            np.asarray(layer.kernel)
            for layer in model.layers
            if isinstance(layer, keras.layers.DepthwiseConv2D)
        ]

    first, again, other = depthwise_kernels(0), depthwise_kernels(0), depthwise_kernels(1)
    assert len(first) == 17
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    # Kernels of one shape are drawn separately, not copies of one draw.
    same_shape = [k for k in first if k.shape == first[-1].shape]
    assert len(same_shape) > 1
    assert len({k.tobytes() for k in same_shape}) == len(same_shape)


def _dilation(model, layer_name):
    return model.get_layer(layer_name).dilation_rate


def _strides(model, layer_name):
    return model.get_layer(layer_name).strides


def test_vgg16_largefov_dilations():
    model = _backbone("vgg16_largefov")
    assert _dilation(model, "block4_conv3") == (1, 1)
    assert all(_dilation(model, f"block5_conv{i}") == (2, 2) for i in (1, 2, 3))
    assert _dilation(model, "fc6") == (12, 12)
    assert model.get_layer("fc6").kernel.shape == (3, 3, 512, 1024)
    assert model.get_layer("fc7").kernel.shape == (1, 1, 1024, 1024)
    assert [_strides(model, f"block{i}_pool") for i in range(1, 6)] == [(2, 2)] * 3 + [(1, 1)] * 2
    assert all(model.get_layer(f"block{i}_pool").pool_size == (3, 3) for i in range(1, 6))
    assert [model.get_layer(n).rate for n in ("fc6_dropout", "fc7_dropout")] == [0.5, 0.5]
    assert not any(layer.name.startswith("fc8") for layer in model.layers)


@pytest.mark.parametrize(
    "name,output_stride,conv4,conv5",
    [
        ("resnet50_d8", 8, (1, 2), (1, 4)),
        ("resnet50_d8", 16, (2, 1), (1, 2)),
        ("resnet18_d8", 8, (1, 2), (1, 4)),
        ("resnet18_d8", 16, (2, 1), (1, 2)),
    ],
)
def test_resnet_strides_and_dilations(name, output_stride, conv4, conv5):
    model = _backbone(name, output_stride)
    bottleneck = name == "resnet50_d8"
    strided = "_1_conv"  # keras.applications v1 strides the first conv of a block
    dilated = ("_2_conv",) if bottleneck else ("_1_conv", "_2_conv")
    assert _strides(model, f"conv3_block1{strided}") == (2, 2)
    for stage, (stride, dilation) in (("conv4", conv4), ("conv5", conv5)):
        assert _strides(model, f"{stage}_block1{strided}") == (stride, stride)
        assert _strides(model, f"{stage}_block1_0_conv") == (stride, stride)
        convs = [
            layer
            for layer in model.layers
            if layer.name.startswith(stage) and layer.name.endswith(dilated)
        ]
        assert convs and all(layer.dilation_rate == (dilation, dilation) for layer in convs)
    assert all(
        layer.epsilon == 1.001e-5
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


@pytest.mark.parametrize(
    "output_stride,dilations,strided",
    [
        (8, {6: 1, 7: 2, 12: 2, 13: 2, 14: 4, 16: 4}, (1, 3)),
        (16, {6: 1, 7: 1, 12: 1, 13: 1, 14: 2, 16: 2}, (1, 3, 6)),
    ],
)
def test_mobilenet_v2_strides_and_dilations(output_stride, dilations, strided):
    model = _backbone("mobilenet_v2", output_stride)
    for block, dilation in dilations.items():
        assert _dilation(model, f"block_{block}_depthwise") == (dilation, dilation)
    stride_2 = [b for b in range(1, 17) if _strides(model, f"block_{b}_depthwise") == (2, 2)]
    assert tuple(stride_2) == strided
    assert _strides(model, "Conv1") == (2, 2)
    names = {layer.name for layer in model.layers}
    assert "Conv_1" not in names and "block_16_project_BN" in names


def test_copy_weights_by_name_matches_keras_applications_before_the_dilation():
    reference = keras.applications.ResNet50(include_top=False, weights=None)
    model = _backbone("resnet50_d8")
    mapped = copy_weights_by_name(reference, model)
    # Every conv and BN of ResNet50 exists in the dilated build.
    assert mapped == sum(1 for layer in reference.layers if layer.weights) == 106
    kernel = reference.get_layer("conv5_block3_2_conv").kernel
    np.testing.assert_array_equal(model.get_layer("conv5_block3_2_conv").kernel, kernel)
    # conv2 and conv3 are not dilated, so their outputs match the reference exactly.
    images = np.random.RandomState(0).uniform(-100, 100, (1, 65, 64, 3)).astype("float32")
    taps = keras.Model(
        reference.input,
        [reference.get_layer(n).output for n in ("conv2_block3_out", "conv3_block4_out")],
    )(images)
    features = model(images)
    np.testing.assert_allclose(features["stage1"], taps[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(features["stage2"], taps[1], rtol=1e-5, atol=1e-4)


def test_imagenet_weights_are_copied_from_keras_applications(monkeypatch, capsys):
    calls = []

    def fake_mobilenet_v2(**kwargs):
        # Stands in for the download: same architecture, random weights.
        calls.append(kwargs)
        return keras.applications.mobilenet_v2.MobileNetV2(**{**kwargs, "weights": None})

    monkeypatch.setattr(keras.applications, "MobileNetV2", fake_mobilenet_v2)
    model = build_backbone("mobilenet_v2", weights="imagenet", width=0.35)
    assert calls[0]["weights"] == "imagenet" and calls[0]["alpha"] == 0.35
    assert not calls[0]["include_top"]
    weighted = sum(1 for layer in model.layers if layer.weights)
    assert weighted == 102
    assert f"{weighted} layers mapped" in capsys.readouterr().out


def test_imagenet_download_failure_explains_what_to_do(monkeypatch):
    url = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"

    def offline_vgg16(**kwargs):
        # What keras.utils.get_file raises when the URL cannot be fetched.
        raise Exception(
            f"URL fetch failure on {url}: None -- [Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.applications, "VGG16", offline_vgg16)
    with pytest.raises(RuntimeError, match="could not be downloaded") as info:
        build_backbone("vgg16_largefov", weights="imagenet")
    message = str(info.value)
    assert url in message and "models" in message and ".weights.h5" in message
    assert "name resolution" in message
    assert isinstance(info.value.__cause__, Exception)


def test_local_weights_file_round_trip(tmp_path):
    source = build_backbone("mobilenet_v2", width=0.35)
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    model = build_backbone("mobilenet_v2", width=0.35, weights=str(path))
    for a, b in zip(source.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,width", [("mobilenet_v2", 0.35), ("resnet18_d8", 1.0)])
def test_keras_save_and_safe_mode_load(tmp_path, name, width):
    model = build_backbone(name, width=width)
    path = tmp_path / "backbone.keras"
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    images = np.random.RandomState(1).normal(size=(1, 40, 33, 3)).astype("float32")
    expected, actual = model(images), restored(images)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-6, atol=1e-6)


def test_dilated_mobilenet_converts_to_builtin_tflite_ops():
    tf = pytest.importorskip("tensorflow")
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    model = build_backbone("mobilenet_v2", width=0.35)
    images = np.random.RandomState(2).normal(size=(1, 64, 48, 3)).astype("float32")

    @tf.autograph.experimental.do_not_convert
    def serve(x):
        return model(x, training=False)

    # A frozen concrete function converts in seconds (a SavedModel export takes ~15 s here).
    function = tf.function(serve).get_concrete_function(tf.TensorSpec(images.shape, tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [convert_variables_to_constants_v2(function)]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = interpreter_module.Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    # Output names are not kept by the converter; the channel counts tell the stages apart.
    outputs = {
        interpreter.get_tensor(d["index"]).shape[-1]: interpreter.get_tensor(d["index"])
        for d in interpreter.get_output_details()
    }
    for value in model(images).values():
        np.testing.assert_allclose(outputs[value.shape[-1]], value, rtol=1e-4, atol=1e-4)


def test_preprocessing_mode():
    assert {name: preprocessing_mode(name) for name in BACKBONE_NAMES} == {
        "vgg16_largefov": "caffe",
        "resnet18_d8": "caffe",
        "resnet34_d8": "caffe",
        "resnet50_d8": "caffe",
        "resnet101_d8": "caffe",
        "mobilenet_v2": "tf",
    }
    with pytest.raises(ValueError, match="backbone"):
        preprocessing_mode("resnet152_d8")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"name": "resnet152_d8"}, ValueError, "`backbone` must be one of .*vgg16_largefov"),
        ({"name": "resnet50_d8", "output_stride": 32}, ValueError, "output_stride"),
        ({"name": "vgg16_largefov", "output_stride": 16}, ValueError, "output_stride"),
        ({"name": "resnet50_d8", "width": 0.5}, ValueError, "width"),
        ({"name": "mobilenet_v2", "width": 0.6}, ValueError, r"width.*0\.35"),
        ({"name": "resnet18_d8", "weights": "imagenet"}, ValueError, "no ImageNet weights"),
        ({"name": "resnet34_d8", "weights": "imagenet"}, ValueError, "no ImageNet weights"),
        ({"name": "mobilenet_v2", "weights": "missing.weights.h5"}, FileNotFoundError, "missing"),
        ({"name": "mobilenet_v2", "weights": "model.h5"}, ValueError, "weights"),
        ({"name": "mobilenet_v2", "weights": "ImageNet"}, ValueError, "weights"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_backbone(**kwargs)


def test_every_public_backbone_is_covered_by_the_contract_tests():
    # A name added to BACKBONE_NAMES without its stage layers and channels here
    # would otherwise go untested by test_output_contract and test_feature_shapes.
    assert len(set(BACKBONE_NAMES)) == len(BACKBONE_NAMES) == 6
    assert set(BACKBONE_NAMES) == set(STAGE_LAYERS) == set(STAGE_CHANNELS)
    with pytest.raises(ValueError) as error:
        build_backbone("resnet152_d8")
    assert all(name in str(error.value) for name in BACKBONE_NAMES)
