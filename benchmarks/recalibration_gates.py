"""When does a class's recalibration gate die? One `paper_tables.py` run, logged per N steps.

Trains the run `paper_tables.py` would train for `--variant` and `--seed` with the
given settings (the same config, so the same trajectory on the same machine),
with an epoch every `--every` steps, and prints per epoch the mean training loss
of the final output and of each scale's stream. The final output is the
streams' merge times the per-class recalibration gate `wr = sigmoid(z)`; when
the gate of a class saturates at 0, the final loss stays above the 1x stream's.
At the end it prints each class's gate mean and maximum over 20 test images.

    python benchmarks/recalibration_gates.py --seed 1 --backbone-width 0.5 \\
        --learning-rate 0.006 --steps 2800 --every 200
"""

import argparse
import dataclasses
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from paper_tables import VARIANTS, parse_args, recalibration_by_class, run_config  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every other option is paper_tables.py's (--steps, --learning-rate, ...).",
    )
    parser.add_argument("--variant", default="full", choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=200, help="steps per logged epoch")
    own, rest = parser.parse_known_args(argv)
    if own.every < 1:
        parser.error(f"--every must be >= 1, got {own.every}")
    args = parse_args(rest)
    variant, seed, every = own.variant, own.seed, own.every

    import keras
    import numpy as np

    from keras_msattn.data import scale_digits
    from keras_msattn.training import train

    config = dataclasses.replace(run_config(args, variant, seed), steps_per_epoch=every)
    with tempfile.TemporaryDirectory() as out:
        result = train(config, out, verbose=0, log=lambda message: None)
        model = keras.saving.load_model(result["model_path"])
    streams = [key for key in result["history"][0] if key.startswith("scale_")]
    print("| step | final loss | " + " | ".join(streams) + " |")
    print("|---|---|" + "---|" * len(streams))
    for entry in result["history"]:
        cells = [f"{entry[key]:.3f}" for key in ["final_loss", *streams]]
        print(f"| {entry['step']} | " + " | ".join(cells) + " |")
    images = np.stack([scale_digits.generate("test", i)[0] for i in range(20)])
    gates = recalibration_by_class(model, images)
    print("class:", " ".join(f"{name:>6}" for name in scale_digits.CLASS_NAMES))
    for key in ("mean", "max"):
        print(f"{key:>5}:", " ".join(f"{value:6.3f}" for value in gates[key]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
