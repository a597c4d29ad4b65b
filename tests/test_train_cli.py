"""`msattn train` end to end on a fake VOC tree: outputs, overrides, errors."""

import json
import os

import keras
import numpy as np
import pytest
from fake_datasets import make_fake_voc

from keras_msattn.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_RECIPE = os.path.join(ROOT, "recipes", "voc2012_vgg16_largefov.py")
# A small model at a small crop, so a real run of the recipe takes seconds.
SMALL = [
    "--set",
    "backbone='resnet18_d8'",
    "--set",
    "backbone_weights=None",
    "--set",
    "head_channels=8",
    "--set",
    "crop_size=64",
    "--set",
    "val_size=64",
    "--set",
    "batch_size=2",
    "--set",
    "steps=2",
    "--set",
    "steps_per_epoch=1",
]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_fake_voc(str(tmp_path_factory.mktemp("voc")))["data_dir"]


def test_train_recipe_writes_a_loadable_inference_model(voc_root, tmp_path):
    out = tmp_path / "run"
    code = main(["train", VOC_RECIPE, "--data-dir", voc_root, "--out", str(out), *SMALL])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "resnet18_d8" and config["steps"] == 2
    history = json.loads((out / "history.json").read_text())
    assert [entry["step"] for entry in history] == [1, 2]
    assert all(np.isfinite(entry["loss"]) for entry in history)
    assert (out / "best.keras").exists() and any((out / "logs").iterdir())
    model = keras.saving.load_model(str(out / "model.keras"), safe_mode=True)
    logits = model(np.zeros((1, 64, 64, 3), "uint8"))
    # The inference model returns logits, not the deep-supervision dict.
    assert tuple(logits.shape) == (1, 64, 64, 21)


def test_variant_selects_the_model(voc_root, tmp_path):
    out = tmp_path / "single"
    code = main(
        ["train", VOC_RECIPE, "--variant", "single_scale", "--data-dir", voc_root]
        + ["--out", str(out), *SMALL]
    )
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["scales"] == [1.0] and config["fusion"] is None


def test_unknown_set_key_names_the_allowed_keys(voc_root, tmp_path, capsys):
    code = main(
        ["train", VOC_RECIPE, "--data-dir", voc_root, "--out", str(tmp_path / "x")]
        + ["--set", "stepz=3"]
    )
    assert code != 0
    error = capsys.readouterr().err
    assert "stepz" in error and "steps" in error and "crop_size" in error
    assert not (tmp_path / "x" / "model.keras").exists()


def test_unknown_variant_names_the_variants(voc_root, tmp_path, capsys):
    code = main(
        ["train", VOC_RECIPE, "--variant", "bigger", "--data-dir", voc_root]
        + ["--out", str(tmp_path / "x")]
    )
    assert code != 0
    error = capsys.readouterr().err
    assert "bigger" in error and "attention_to_scale" in error
