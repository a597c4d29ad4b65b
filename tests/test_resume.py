"""Kill a real training process with SIGKILL after its second checkpoint; the same
command resumes, from the checkpoint before when the newest one is damaged."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
from fake_datasets import make_fake_voc, truncate_file

import keras_msattn  # noqa: F401  (registers the classes for safe-mode loading)
from keras_msattn.files import TEMPORARY_PREFIX

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def read(path):
    with open(path) as f:
        return json.load(f)


def train_command(data_dir, out):
    # The recipe run as a script: the same command every time.
    command = [
        sys.executable,
        str(ROOT / "recipes" / "voc2012_vgg16_largefov.py"),
        "--variant", "single_scale",  # resuming does not depend on the fusion
        "--data-dir", data_dir,
        "--out", str(out),
    ]  # fmt: skip
    for value in [
        'backbone="resnet18_d8"',  # traces in 2/3 of MobileNetV2's time
        "output_stride=16",  # a 4x dilation on 64-px crops' 8x8 maps: 2.7 s a step on CPU
        "backbone_weights=None",
        "head_channels=8",
        "crop_size=64",
        "val_size=64",
        "val_images=2",
        "batch_size=2",
        f"steps={STEPS}",
        "steps_per_epoch=1",
    ]:
        command += ["--set", value]
    return command


def rerun(command):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MSATTN_LOGICAL_CPUS", None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def kill_after_second_checkpoint(command, metadata):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MSATTN_LOGICAL_CPUS", None)

    def saved_epoch():
        try:
            return read(metadata)["epoch"]
        except (OSError, ValueError):
            return 0

    first = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while saved_epoch() < 2:
            assert first.poll() is None, f"training ended early:\n{first.stdout.read()}"
            assert time.monotonic() < deadline, "no second checkpoint after 240 s"
            time.sleep(0.02)
        first.kill()  # SIGKILL: no cleanup of any kind
        log = first.communicate(timeout=60)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -9, log
    return log


def assert_finished(out, log):
    assert f"finished at step {STEPS} of {STEPS}" in log
    history = read(out / "history.json")
    assert [(e["epoch"], e["step"]) for e in history] == [(k, k) for k in range(1, STEPS + 1)]
    assert read(out / "backup" / "training_metadata.json")["epoch"] == STEPS
    best = read(out / "best.json")
    assert best["value"] == max(e["val_miou"] for e in history)
    assert not [
        name for _, _, files in os.walk(out) for name in files if name.startswith(TEMPORARY_PREFIX)
    ]
    return history


def test_a_killed_run_resumes_where_it_stopped_or_from_the_checkpoint_before(tmp_path):
    data_dir = make_fake_voc(tmp_path / "voc")["data_dir"]
    out = tmp_path / "run"
    metadata = out / "backup" / "training_metadata.json"
    first_log = kill_after_second_checkpoint(train_command(data_dir, out), metadata)
    index = read(metadata)
    newest, previous = index["epoch"], index["previous"]["epoch"]
    assert 2 <= newest < STEPS and previous == newest - 1, first_log
    killed_history = read(out / "history.json")
    config = (out / "config.json").read_text()
    # What the first run wrote is whole: best.keras loads.
    keras.saving.load_model(out / "best.keras", safe_mode=True)
    damaged_out = shutil.copytree(out, tmp_path / "damaged")

    # 1. The same command resumes from the newest checkpoint and runs only the rest.
    status, log = rerun(train_command(data_dir, out))
    assert status == 0, log
    assert f"resuming from {out / 'backup'}: epoch {newest}, step {newest}" in log
    # verbose=2 prints one "Epoch k/N" line per epoch.
    assert f"Epoch {newest + 1}/{STEPS}" in log and f"Epoch {newest}/{STEPS}" not in log
    history = assert_finished(out, log)
    # The epochs before the kill are the first run's records, untouched.
    assert history[:newest] == killed_history[:newest]
    assert (out / "config.json").read_text() == config
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert model.predict(np.zeros((1, 64, 64, 3), "uint8"), verbose=0).shape == (1, 64, 64, 21)

    # 2. The newest checkpoint cut short: the rerun names it and resumes from the one before.
    backup = damaged_out / "backup"
    assert sorted(p.name for p in backup.glob("*.weights.h5")) == [
        f"epoch-{previous:04d}.weights.h5",
        f"epoch-{newest:04d}.weights.h5",
    ]
    newest_file = backup / index["weights"]
    truncate_file(newest_file, keep=os.path.getsize(newest_file) // 2)
    status, log = rerun(train_command(data_dir, damaged_out))
    assert status == 0, log
    assert "Traceback" not in log
    assert f"checkpoint {newest_file}: damaged" in log
    assert f"resuming from {backup}: epoch {previous}, step {previous}" in log
    assert f"Epoch {previous + 1}/{STEPS}" in log and f"Epoch {previous}/{STEPS}" not in log
    history = assert_finished(damaged_out, log)

    # 3. Both generations damaged: stop with exit 2, naming both files; never start over.
    index = read(backup / "training_metadata.json")
    damaged = [backup / index["weights"], backup / index["previous"]["weights"]]
    for path in damaged:
        truncate_file(path, keep=100)
    status, log = rerun(train_command(data_dir, damaged_out))
    assert status == 2, log
    assert "Traceback" not in log and "no usable checkpoint" in log
    assert all(str(path) in log for path in damaged), log
    assert read(damaged_out / "history.json") == history
