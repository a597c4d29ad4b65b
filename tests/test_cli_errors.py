"""Bad files, bad arguments and damaged artifacts through `msattn`: exit 2, one message
that names the file, no traceback."""

import json
import os
import stat
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from cli_checks import fails_naming
from fake_datasets import make_fake_folder, truncate_file, write_gray_png
from PIL import Image

from keras_msattn import MultiScaleSegmenter
from keras_msattn.cli import main

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
TINY_TRAIN = [
    'dataset="folder"',
    "train_split='train'",
    "val_split='val'",
    "num_classes=3",
    'backbone="mobilenet_v2"',
    "backbone_width=0.35",
    "backbone_weights=None",
    "head_channels=8",
    "crop_size=32",
    "val_size=64",
    "batch_size=2",
    "steps=1",
    "steps_per_epoch=1",
]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = MultiScaleSegmenter(
        backbone="resnet18_d8", num_classes=NUM_CLASSES, head_channels=8, scales=(1.0,), fusion=None
    )
    model(np.zeros((1, 32, 32, 3), np.float32))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def folder_with(tmp_path, bad, splits=("val",)):
    """A folder dataset whose first example of every split is made bad by `bad(image, mask)`."""
    fake = make_fake_folder(tmp_path / "data", n=3, num_classes=NUM_CLASSES, splits=splits)
    victims = {}
    for split in splits:
        image, mask = fake["images"][split][0], fake["masks"][split][0]
        victims[split] = bad(image, mask)
    return fake["data_dir"], victims


def text_as_png(image, mask):
    os.remove(image)
    path = os.path.splitext(image)[0] + ".png"
    Path(path).write_text("not an image\n")
    return path


def label_37(image, mask):
    values = np.asarray(Image.open(mask)).copy()
    values[0, 0] = 37
    write_gray_png(mask, values)
    return mask


def test_evaluate_text_file_named_png_and_skip_bad(saved_model, tmp_path, capsys):
    data_dir, victims = folder_with(tmp_path, text_as_png)
    argv = ["evaluate", str(saved_model), "--dataset", "folder", "--data-dir", data_dir]
    err = fails_naming(argv + ["--out", str(tmp_path / "r.json")], capsys, victims["val"])
    assert "unreadable image" in err and "--skip-bad" in err
    assert not (tmp_path / "r.json").exists()

    out = tmp_path / "skipped.json"
    assert main(argv + ["--skip-bad", "--out", str(out)]) == 0
    assert "skipped 1 bad file(s)" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert (results["num_images"], results["num_skipped"]) == (2, 1)


def test_evaluate_large_image_is_refused_from_its_header(saved_model, tmp_path, capsys):
    def huge(image, mask):
        os.remove(image)
        path = os.path.splitext(image)[0] + ".png"
        Image.new("RGB", (6000, 6000)).save(path)  # 36 MP; decoding it is what must not happen
        write_gray_png(mask, np.zeros((6000, 6000), np.uint8))
        return path

    data_dir, victims = folder_with(tmp_path, huge)
    argv = ["evaluate", str(saved_model), "--dataset", "folder", "--data-dir", data_dir]
    err = fails_naming(argv, capsys, victims["val"], "6000x6000")
    assert "downscale" in err
    assert main(argv + ["--skip-bad", "--out", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert (results["num_images"], results["num_skipped"]) == (2, 1)


def test_train_on_a_label_out_of_range(tmp_path, capsys):
    data_dir, victims = folder_with(tmp_path, label_37, splits=("train", "val"))
    argv = ["train", str(ROOT / "recipes" / "voc2012_vgg16_largefov.py")]
    argv += ["--variant", "single_scale", "--data-dir", data_dir, "--out", str(tmp_path / "run")]
    for value in TINY_TRAIN:
        argv += ["--set", value]
    err = fails_naming(argv, capsys)
    assert "mask values outside the valid range 0..2 or 255: 37" in err
    assert victims["train"] in err or victims["val"] in err
    assert "skip_bad=True" in err


def test_debug_shows_the_traceback(saved_model, tmp_path):
    data_dir, _ = folder_with(tmp_path, text_as_png)
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError):
        main(["--debug", "evaluate", str(saved_model), "--dataset", "folder"]
             + ["--data-dir", data_dir, "--out", str(tmp_path / "r.json")])  # fmt: skip


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_damaged_keras_file_is_not_reported_missing(saved_model, tmp_path, capsys, damage):
    path = tmp_path / f"{damage}.keras"
    if damage == "truncated":
        path.write_bytes(saved_model.read_bytes())
        truncate_file(path, keep=os.path.getsize(path) // 2)
    else:
        path.write_text("not a model\n")
    for argv in (
        ["export", str(path), "--format", "saved_model", "--out", str(tmp_path / "e")],
        ["evaluate", str(path), "--dataset", "scale_digits"],
        ["predict", str(path), str(path), "--out", str(tmp_path / "p")],
    ):
        err = fails_naming(argv, capsys, path)
        assert "damaged" in err and "not found" not in err.lower()


def test_export_out_is_an_existing_file(saved_model, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("something else\n")
    argv = ["export", str(saved_model), "--format", "tflite", "--out", str(out)]
    err = fails_naming(argv, capsys, out)
    assert "is a file" in err
    assert out.read_text() == "something else\n"


def test_int8_calibration_on_a_corrupt_image(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    model = MultiScaleSegmenter(
        backbone="resnet18_d8",
        num_classes=NUM_CLASSES,
        head_channels=8,
        scales=(1.0,),
        fusion=None,
        input_shape=(32, 32, 3),
    )
    model.save(tmp_path / "fixed.keras")

    def corrupt(image, mask):
        return truncate_file(image, keep=100)

    data_dir, victims = folder_with(tmp_path, corrupt, splits=("train", "val"))
    argv = ["export", str(tmp_path / "fixed.keras"), "--format", "tflite"]
    argv += ["--quantization", "int8", "--calibration", "folder", "--data-dir", data_dir]
    argv += ["--num-calibration", "3", "--num-validation", "0", "--out", str(tmp_path / "e")]
    err = fails_naming(argv, capsys)
    assert victims["train"] in err or victims["val"] in err
    assert not list((tmp_path / "e").glob("*.tflite")) if (tmp_path / "e").exists() else True


def test_duplicate_class_names(saved_model, tmp_path, capsys):
    fake = make_fake_folder(tmp_path / "data", n=2, num_classes=NUM_CLASSES)
    classes = Path(fake["data_dir"]) / "classes.txt"
    classes.write_text("cat\ncat\ndog\n")
    assert main(["data", "check", "--dataset", "folder", "--data-dir", fake["data_dir"]]) == 1
    out = capsys.readouterr().out
    assert str(classes) in out and "'cat'" in out and "unique" in out
    argv = ["evaluate", str(saved_model), "--dataset", "folder", "--data-dir", fake["data_dir"]]
    fails_naming(argv, capsys, classes, "'cat'")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_mode_of_an_ordinary_file(saved_model, tmp_path, capsys, umask):
    image = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (90, 20, 200)).save(image)
    previous = os.umask(umask)
    try:
        assert main(["predict", str(saved_model), str(image), "--out", str(tmp_path / "o")]) == 0
    finally:
        os.umask(previous)
    written = sorted((tmp_path / "o").iterdir())
    assert written
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_runner_refuses_a_huge_image_from_its_header(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "export"))
    try:
        import run_tflite
    finally:
        sys.path.pop(0)
    huge = tmp_path / "huge.png"
    Image.new("L", (6000, 6000)).save(huge)
    with pytest.raises(run_tflite.RunnerError, match="huge.png: image of 6000x6000"):
        run_tflite.load_rgb(str(huge))
