"""MirroredStrategy on 2 logical CPUs trains like one device: same losses, step by step.

Why the comparison is exact up to rounding: the same seed gives the same initial
weights and the same batches (ScaleDigits, a seeded pipeline, no random scaling:
every image is 64x64 with no ignored pixel, so each replica's valid-pixel mean
weighs the same number of pixels); ResNet-18 has no dropout; batch normalization
is synchronized, so each replica normalizes with the statistics of the global
batch of 4 as one device does (the same formula is used on one device). The
first step's loss is a forward pass at identical weights: it must agree to 1e-5.
Later steps agree to about 2e-4 here (the synchronized variance, E[x^2] - E[x]^2,
sums in a different order); a wrong loss scale (2x the learning rate) changes the
second loss by ~50%, a lost decoder multiplier by ~200%; 2e-3 separates them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_msattn.training import run_recipe

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "scale_digits_mobilenet_v2.py")
SETS = [
    'dataset_options={"image_size": 64}',
    "crop_size=64",
    "val_size=64",
    "val_images=4",
    "batch_size=4",
    "steps=3",
    "steps_per_epoch=1",
    'backbone="resnet18_d8"',
    "backbone_width=1.0",
    "head_channels=8",
    'optimizer="sgd"',
    "learning_rate=0.001",
    "decoder_lr_multiplier=10.0",
    "weight_decay=0.0005",
]
LOSSES = ("loss", "final_loss", "scale_1.0_loss", "scale_0.5_loss")
FIRST_STEP_RTOL = 1e-5
LATER_STEPS_RTOL = 2e-3


def train_command(out, strategy):
    command = [sys.executable, "-m", "keras_msattn.cli", "train", RECIPE, "--out", str(out)]
    command += ["--strategy", strategy]
    for value in SETS:
        command += ["--set", value]
    return command


def history(out):
    with open(Path(out) / "history.json") as f:
        return json.load(f)


def assert_same_training(reference, other):
    assert [e["step"] for e in other] == [e["step"] for e in reference] == [1, 2, 3]
    for index, (expected, actual) in enumerate(zip(reference, other, strict=True)):
        rtol = FIRST_STEP_RTOL if index == 0 else LATER_STEPS_RTOL
        for key in LOSSES:
            assert actual[key] == pytest.approx(expected[key], rel=rtol), (index, key)
    # Training mIoU of the first step: the same predictions, summed over replicas.
    assert other[0]["final_miou"] == pytest.approx(reference[0]["final_miou"], abs=1e-4)
    assert other[0]["val_final_miou"] == pytest.approx(reference[0]["val_final_miou"], abs=5e-3)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_device")
    run_recipe(RECIPE, sets=SETS, out_dir=out, strategy="one_device", verbose=0)
    return history(out)


def test_mirrored_on_two_logical_cpus_matches_one_device(one_device, tmp_path):
    env = {**os.environ, "MSATTN_LOGICAL_CPUS": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        train_command(tmp_path, "mirrored"), env=env, capture_output=True, text=True, timeout=400
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "MirroredStrategy with 2 replica(s)" in log
    assert_same_training(one_device, history(tmp_path))
    assert (tmp_path / "model.keras").exists() and (tmp_path / "best.keras").exists()
