"""Milliseconds per step of the quickstart's training, as `msattn quickstart` trains.

`keras_msattn.quickstart.quickstart_config` with 2N steps in two epochs of N and no
validation, trained with `keras_msattn.training.train` on generated images; the
second epoch's time (history's `elapsed_seconds`) over N is printed. Run it from
the root of any checkout or export of the package to compare versions back to back:

    python benchmarks/quickstart_step_time.py 150
    (cd /tmp/old && python /path/to/benchmarks/quickstart_step_time.py 150)
"""

import dataclasses
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.getcwd())  # the package of the current folder, not an installed one


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    steps = int(argv[0]) if argv else 150
    if steps < 1:
        sys.exit(f"steps must be >= 1, got {steps}")
    from keras_msattn.quickstart import quickstart_config
    from keras_msattn.training import train

    config = dataclasses.replace(
        quickstart_config(steps=2 * steps), steps_per_epoch=steps, val_images=0
    )
    with tempfile.TemporaryDirectory() as out:
        result = train(config, out, verbose=0, log=lambda message: None)
    first, second = (entry["elapsed_seconds"] for entry in result["history"][:2])
    print(f"{os.getcwd()}: {1000 * (second - first) / steps:.1f} ms per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
