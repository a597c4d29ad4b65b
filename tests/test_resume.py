"""Kill a real training process with SIGKILL after its first checkpoint; the same command resumes."""

import json
import os
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


def test_killed_run_resumes_where_it_stopped(tmp_path):
    data_dir = make_fake_voc(tmp_path / "voc")["data_dir"]
    out = tmp_path / "run"
    # The recipe run as a script: the same command both times.
    command = [
        sys.executable,
        str(ROOT / "recipes" / "voc2012_vgg16_largefov.py"),
        "--variant", "single_scale",  # resuming does not depend on the fusion
        "--data-dir", data_dir,
        "--out", str(out),
    ]  # fmt: skip
    for value in [
        'backbone="mobilenet_v2"',
        "backbone_width=0.35",
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
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MSATTN_LOGICAL_CPUS", None)
    metadata = out / "backup" / "training_metadata.json"

    first = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not metadata.exists():
            assert first.poll() is None, (
                f"training ended before its first checkpoint:\n{first.stdout.read()}"
            )
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
        first.kill()  # SIGKILL: no cleanup of any kind
        first_log = first.communicate(timeout=60)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -9, first_log
    saved_epoch = read(metadata)["epoch"]
    assert 1 <= saved_epoch < STEPS, f"the first run finished before it was killed:\n{first_log}"
    killed_history = read(out / "history.json")
    config = (out / "config.json").read_text()
    # What the first run wrote is whole: best.keras loads.
    keras.saving.load_model(out / "best.keras", safe_mode=True)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log
    assert f"resuming from {out / 'backup'}: epoch {saved_epoch}, step {saved_epoch}" in log
    # Only the remaining epochs ran (verbose=2 prints one "Epoch k/N" line per epoch).
    assert f"Epoch {saved_epoch + 1}/{STEPS}" in log and f"Epoch {saved_epoch}/{STEPS}" not in log
    assert f"finished at step {STEPS} of {STEPS}" in log

    history = read(out / "history.json")
    assert [(e["epoch"], e["step"]) for e in history] == [(k, k) for k in range(1, STEPS + 1)]
    # The epochs before the kill are the first run's records, untouched.
    assert history[:saved_epoch] == killed_history[:saved_epoch]
    assert (out / "config.json").read_text() == config
    assert read(metadata)["epoch"] == STEPS
    best = read(out / "best.json")
    assert best["value"] == max(e["val_miou"] for e in history)
    assert not [
        name for _, _, files in os.walk(out) for name in files if name.startswith(TEMPORARY_PREFIX)
    ]
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert model.predict(np.zeros((1, 64, 64, 3), "uint8"), verbose=0).shape == (1, 64, 64, 21)


def test_damaged_newest_checkpoint_resumes_from_the_previous_one(tmp_path):
    """SIGKILL after two epochs, cut the newest checkpoint short: the rerun reports it,
    resumes from the epoch before and finishes; with both damaged it stops, naming them."""
    data_dir = make_fake_voc(tmp_path / "voc")["data_dir"]
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "recipes" / "voc2012_vgg16_largefov.py"),
        "--variant", "single_scale",
        "--data-dir", data_dir,
        "--out", str(out),
    ]  # fmt: skip
    for value in [
        'backbone="mobilenet_v2"',
        "backbone_width=0.35",
        "backbone_weights=None",
        "head_channels=8",
        "crop_size=64",
        "val_size=64",
        "val_images=1",
        "batch_size=2",
        f"steps={STEPS}",
        "steps_per_epoch=1",
    ]:
        command += ["--set", value]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MSATTN_LOGICAL_CPUS", None)
    metadata = out / "backup" / "training_metadata.json"

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
        first.kill()
        first_log = first.communicate(timeout=60)[0]
    finally:
        if first.poll() is None:
            first.kill()
    index = read(metadata)
    newest, previous = index["epoch"], index["previous"]["epoch"]
    assert 2 <= newest < STEPS and previous == newest - 1, first_log
    backup = out / "backup"
    assert sorted(p.name for p in backup.glob("*.weights.h5")) == [
        f"epoch-{previous:04d}.weights.h5",
        f"epoch-{newest:04d}.weights.h5",
    ]
    newest_file = backup / index["weights"]
    truncate_file(newest_file, keep=os.path.getsize(newest_file) // 2)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log
    assert "Traceback" not in log
    assert f"checkpoint {newest_file}: damaged" in log
    assert f"resuming from {backup}: epoch {previous}, step {previous}" in log
    assert f"Epoch {previous + 1}/{STEPS}" in log and f"Epoch {previous}/{STEPS}" not in log
    assert f"finished at step {STEPS} of {STEPS}" in log
    history = read(out / "history.json")
    assert [(e["epoch"], e["step"]) for e in history] == [(k, k) for k in range(1, STEPS + 1)]

    # Both generations damaged: stop with exit 2, naming both files; never start over.
    index = read(metadata)
    damaged = [backup / index["weights"], backup / index["previous"]["weights"]]
    for path in damaged:
        truncate_file(path, keep=100)
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    log = third.stdout + third.stderr
    assert third.returncode == 2, log
    assert "Traceback" not in log and "no usable checkpoint" in log
    assert all(str(path) in log for path in damaged), log
    assert read(out / "history.json") == history
