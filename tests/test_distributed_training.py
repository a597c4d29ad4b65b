"""MirroredStrategy on 2 logical CPUs, and MultiWorkerMirroredStrategy with 2 local
worker processes, train like one device: same losses, step by step.

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

The multi-worker run has two processes on 127.0.0.1 talking through TF_CONFIG
instead of two logical CPUs. The chief (worker 0) writes the outputs; worker 1
writes into a temporary folder that it removes at the end. Both are compared
with one one-device run.
"""

import json
import os
import socket
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
    "output_stride=16",  # a 4x dilation on 64-px images' 8x8 maps: 2.7 s a step on CPU
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
TIMEOUT = 400


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
        train_command(tmp_path, "mirrored"),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "MirroredStrategy with 2 replica(s)" in log
    assert_same_training(one_device, history(tmp_path))
    assert (tmp_path / "model.keras").exists() and (tmp_path / "best.keras").exists()


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_match_one_device(one_device, tmp_path):
    out = tmp_path / "multi_worker"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers, logs = [], []
    try:
        for index in range(2):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            env = {**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "2"}
            env.pop("MSATTN_LOGICAL_CPUS", None)
            log = open(tmp_path / f"worker{index}.log", "w+")  # noqa: SIM115
            logs.append(log)
            workers.append(
                subprocess.Popen(
                    train_command(out, "multi_worker"),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        # A worker whose peer died waits for it; never let the pair outlive the test.
        for worker in workers:
            worker.wait(timeout=TIMEOUT)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    for worker, text in zip(workers, texts, strict=True):
        assert worker.returncode == 0, text
        assert "CollectiveAllReduceStrategy with 2 replica(s)" in text

    assert_same_training(one_device, history(out))
    assert (out / "model.keras").exists() and (out / "best.keras").exists()
    # Worker 1 saved into its own temporary folder, then removed it.
    temporary = [line for line in texts[1].splitlines() if "saved /" in line]
    assert temporary and all(str(out) not in line for line in temporary)
    folder = temporary[-1].rsplit("saved ", 1)[1].rsplit("/", 1)[0]
    assert "msattn-worker-" in folder and not os.path.exists(folder)
