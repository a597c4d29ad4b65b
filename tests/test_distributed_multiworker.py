"""MultiWorkerMirroredStrategy with 2 local worker processes trains like one device.

The comparison is the one of test_distributed_mirrored.py (see there why it is
exact up to rounding), with two processes on 127.0.0.1 talking through TF_CONFIG
instead of two logical CPUs. The chief (worker 0) writes the outputs; worker 1
writes into a temporary folder that it removes at the end.
"""

import json
import os
import socket
import subprocess

from test_distributed_mirrored import RECIPE, SETS, assert_same_training, history, train_command

from keras_msattn.training import run_recipe

TIMEOUT = 400


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_match_one_device(tmp_path):
    reference = tmp_path / "one_device"
    run_recipe(RECIPE, sets=SETS, out_dir=reference, strategy="one_device", verbose=0)

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

    assert_same_training(history(reference), history(out))
    assert (out / "model.keras").exists() and (out / "best.keras").exists()
    # Worker 1 saved into its own temporary folder, then removed it.
    temporary = [line for line in texts[1].splitlines() if "saved /" in line]
    assert temporary and all(str(out) not in line for line in temporary)
    folder = temporary[-1].rsplit("saved ", 1)[1].rsplit("/", 1)[0]
    assert "msattn-worker-" in folder and not os.path.exists(folder)
