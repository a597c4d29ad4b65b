"""`msattn export` on the command line."""

import json

import keras
import pytest

from keras_msattn import MultiScaleSegmenter
from keras_msattn.cli import main


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_models")
    keras.utils.set_random_seed(0)
    fixed = MultiScaleSegmenter(
        backbone="mobilenet_v2", num_classes=11, backbone_width=0.35, input_shape=(64, 64, 3)
    )
    fixed.save(folder / "fixed.keras")
    # A training run folder: any-size model plus the config.json `msattn train` writes.
    run = folder / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    MultiScaleSegmenter(
        backbone="mobilenet_v2", num_classes=11, backbone_width=0.35, scales=(1.0,), fusion=None
    ).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"crop_size": [48, 40], "batch_size": 8}))
    return folder


def test_tflite_int8_with_dataset_calibration(saved_models, tmp_path, capsys):
    code = main(
        [
            "export",
            str(saved_models / "fixed.keras"),
            "--format",
            "tflite",
            "--quantization",
            "int8",
            "--calibration",
            "scale_digits",
            "--num-calibration",
            "4",
            "--num-validation",
            "2",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "fixed_int8.report.json").read_text())
    assert (tmp_path / "fixed_int8.tflite").is_file()
    assert report["quantization"] == "int8" and report["input_size"] == [64, 64]
    assert report["samples"] == {"count": 2, "source": "validation images"}
    assert "artifact" in report["miou"] and report["flex_ops"] == []
    assert report["latency"]["num_threads"] == 1
    assert "argmax agreement" in capsys.readouterr().out


def test_recorded_training_crop_is_the_default_size(saved_models, tmp_path):
    code = main(
        [
            "export",
            str(saved_models / "run" / "model.keras"),
            "--format",
            "tflite",
            "--output",
            "labels",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "model_none_labels.report.json").read_text())
    assert report["input_size"] == [48, 40]
    assert report["output"]["shape"] == [1, 48, 40] and report["output"]["dtype"] == "int32"


def test_saved_model(saved_models, tmp_path):
    code = main(
        [
            "export",
            str(saved_models / "fixed.keras"),
            "--format",
            "saved_model",
            "--model-name",
            "digits",
            "--version",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert (tmp_path / "digits" / "2" / "saved_model.pb").is_file()
    assert (tmp_path / "digits" / "2" / "assets.extra" / "export_report.md").is_file()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--format", "tflite", "--quantization", "int8"], "needs --calibration"),
        (["--format", "tflite", "--quantization", "qat"], "needs --calibration"),
        (["--format", "saved_model", "--quantization", "float16"], "tflite only"),
        (["--format", "tflite", "--input-size", "8", "8"], "at least 16x16"),
    ],
)
def test_bad_arguments_exit_with_a_message(saved_models, tmp_path, capsys, arguments, message):
    model = saved_models / "run" / "model.keras"
    code = main(["export", str(model), *arguments, "--out", str(tmp_path / "out")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_model_file(tmp_path, capsys):
    code = main(["export", str(tmp_path / "nope.keras"), "--format", "tflite", "--out", "x"])
    assert code == 2 and "model file not found" in capsys.readouterr().err
