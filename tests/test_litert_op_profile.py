"""benchmarks/litert_op_profile.py: each operator cut into a model of its own computes what
it computes inside the whole file, and the backbone's operators are told apart by scale."""

import numpy as np
import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def two_scale_file():
    import keras

    from keras_msattn import MultiScaleSegmenter
    from keras_msattn.export.tflite import convert

    keras.utils.set_random_seed(0)
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2",
        backbone_width=0.35,
        num_classes=3,
        head_channels=4,
        output_stride=16,
        input_shape=(64, 64, 3),
    )
    return convert(model, (64, 64), strip_names=False)


def test_every_cut_operator_reproduces_its_output_in_the_whole_file(two_scale_file):
    from ai_edge_litert.interpreter import Interpreter

    profiler = load_benchmark("litert_op_profile")
    whole = Interpreter(model_content=two_scale_file, experimental_preserve_all_tensors=True)
    whole.allocate_tensors()
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    whole.set_tensor(whole.get_input_details()[0]["index"], image)
    whole.invoke()
    index_of = {d["name"]: d["index"] for d in whole.get_tensor_details()}

    cut = profiler.single_operator_models(two_scale_file)
    assert len(cut) > 100  # every operator of a MobileNetV2 run at two scales
    for name, tensor, shape, model_bytes in cut:
        single = Interpreter(model_content=model_bytes)
        single.allocate_tensors()
        for details in single.get_input_details():
            single.set_tensor(details["index"], whole.get_tensor(index_of[details["name"]]))
        single.invoke()
        output = single.get_output_details()[0]
        assert output["name"] == tensor
        assert tuple(output["shape"]) == shape
        np.testing.assert_allclose(
            single.get_tensor(output["index"]),
            whole.get_tensor(index_of[tensor]),
            rtol=1e-4,
            atol=1e-4,
            err_msg=f"{name} -> {tensor}",
        )


def test_parts_tell_the_backbone_scales_and_the_heads_apart(two_scale_file):
    profiler = load_benchmark("litert_op_profile")
    rows = [
        (index, name, tensor, shape, 0.0)
        for index, (name, tensor, shape, _) in enumerate(
            profiler.single_operator_models(two_scale_file)
        )
    ]
    parts = profiler.parts(rows)
    for part in (
        "backbone at 1x",
        "backbone at 0.5x",
        "scale-specific dilated convs",
        "location attention",
        "recalibration",
        "final upsample and output",
    ):
        assert part in parts, part
    # The 0.5x pass runs the same operators on a quarter of the pixels.
    assert parts.count("backbone at 1x") == parts.count("backbone at 0.5x")
