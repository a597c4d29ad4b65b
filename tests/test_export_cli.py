"""`msattn export` on the command line."""

import json

import keras
import pytest

from keras_msattn import MultiScaleSegmenter
from keras_msattn.cli import main
from keras_msattn.export.command import DEFAULT_AUGMENTATION, recorded_augmentation


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
        (["--format", "tflite", "--per-tensor"], "--per-tensor applies"),
        (["--format", "tflite", "--quantization", "dynamic", "--per-tensor"], "int8_full only"),
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


def test_recorded_augmentation_beside_the_model_or_in_training(tmp_path):
    model = tmp_path / "model.keras"
    augmentation, source = recorded_augmentation(model)
    assert augmentation == DEFAULT_AUGMENTATION and "no training config" in source
    # The quickstart's layout: config.json in training/ beside model.keras.
    (tmp_path / "training").mkdir()
    recorded = {"crop_size": 128, "scale_range": [0.75, 1.25], "flip": False}
    (tmp_path / "training" / "config.json").write_text(json.dumps(recorded))
    augmentation, source = recorded_augmentation(model)
    assert augmentation == {"scale_range": (0.75, 1.25), "flip": False}
    assert source == str(tmp_path / "training" / "config.json")
    # `msattn train`'s layout, beside the model, comes first.
    (tmp_path / "config.json").write_text(json.dumps({"scale_range": [0.5, 1.5], "flip": True}))
    assert recorded_augmentation(model)[0] == {"scale_range": (0.5, 1.5), "flip": True}
    # Unusable values fall back to the defaults rather than failing the export.
    (tmp_path / "config.json").write_text(json.dumps({"scale_range": "big", "flip": True}))
    augmentation, source = recorded_augmentation(model)
    assert augmentation == DEFAULT_AUGMENTATION and "no usable scale_range" in source


def test_qat_fine_tunes_with_the_recorded_augmentation(tmp_path, monkeypatch, capsys):
    import keras_msattn.data.augment as augment

    keras.utils.set_random_seed(0)
    MultiScaleSegmenter(
        backbone="mobilenet_v2", num_classes=11, backbone_width=0.35, scales=(1.0,), fusion=None
    ).save(tmp_path / "model.keras")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "config.json").write_text(
        json.dumps({"crop_size": 64, "scale_range": [0.75, 1.25], "flip": False})
    )
    seen = {}

    class Stop(Exception):
        pass

    def fake_pipeline(dataset, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(augment, "train_pipeline", fake_pipeline)
    arguments = ["--format", "tflite", "--quantization", "qat", "--calibration", "scale_digits"]
    with pytest.raises(Stop):
        main(["export", str(tmp_path / "model.keras"), *arguments, "--out", str(tmp_path / "o")])
    assert seen["scale_range"] == (0.75, 1.25) and seen["flip"] is False
    assert seen["crop_size"] == (64, 64)
    assert "random scale (0.75, 1.25), flips off" in capsys.readouterr().out
