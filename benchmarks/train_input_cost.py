"""What the input pipeline costs a quickstart training step, at output stride 16 and 8.

The quickstart's model and training settings (`keras_msattn.quickstart.
quickstart_config`), built and compiled as `msattn train` does, each trained on
two inputs: the real training pipeline (`keras_msattn.training.train_dataset`:
ScaleDigits images generated on the fly, random scale and crop, batch 8) and
the first `--cached` batches of that same pipeline held in memory and repeated
(the pipeline then costs nothing). On a 2-core CPU the images are generated on
the same cores the step runs on, so the difference is what generation takes
from training. After `--warmup` untimed steps each, the four runs take turns
in `--rounds` rounds of `--steps` steps (the order rotates each round).

    python benchmarks/train_input_cost.py                  # ~5 min on 2 cores
    python benchmarks/train_input_cost.py --strides 8 --rounds 4 --steps 20
    python benchmarks/train_input_cost.py --strides 16 --loss-strides 1 4
    python benchmarks/train_input_cost.py --strides 16 --loss-strides 4 --crops-per-image 1 2 4

`--crops-per-image` adds runs whose pipeline crops each generated image that
many times (`TrainConfig.crops_per_image`), so it generates that many times
fewer images per step.
"""

import argparse
import dataclasses
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strides", type=int, nargs="+", default=[16, 8], choices=(8, 16, 32))
    parser.add_argument(
        "--loss-strides", type=int, nargs="+", default=[1], choices=(1, 2, 4, 8),
        help="grids of the 1 + S losses (TrainConfig.loss_stride)",
    )  # fmt: skip
    parser.add_argument(
        "--crops-per-image", type=int, nargs="+", default=[1],
        help="TrainConfig.crops_per_image values of the generated-image runs",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cached", type=int, default=4, help="batches held in memory")
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "cached"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.crops_per_image) < 1:
        parser.error(f"--crops-per-image must be >= 1, got {args.crops_per_image}")
    return args


def build(output_stride, loss_stride=1):
    import keras

    from keras_msattn import training
    from keras_msattn.config import apply_overrides, resolve_config
    from keras_msattn.quickstart import quickstart_config

    overrides = {"model": {"output_stride": output_stride}, "loss_stride": loss_stride}
    config = apply_overrides(quickstart_config(), overrides)
    config = resolve_config(config)
    keras.utils.set_random_seed(0)
    model = training.build_model(config)
    training.synchronize_batchnorm(model)
    training.compile_model(model, config)
    return model, config


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.train_step import time_in_rounds
    from keras_msattn import training

    runs = {}
    for stride in args.strides:
        for loss_stride in args.loss_strides:
            model, config = build(stride, loss_stride)
            real = training.train_dataset(config, seed=0)
            cached = real.take(args.cached).cache().repeat()
            name = f"stride {stride}" + (
                f" losses at {loss_stride}" if args.loss_strides != [1] else ""
            )
            for crops in args.crops_per_image:
                echoed = dataclasses.replace(config, crops_per_image=crops)
                label = "" if crops == 1 else f", {crops} crops each"
                runs[f"{name}, images generated{label}"] = (
                    model,
                    iter(training.train_dataset(echoed, seed=0)),
                )
            runs[f"{name}, {args.cached} batches in memory"] = (model, iter(cached))
    steps = {
        name: (lambda model=model, batches=batches: model.train_on_batch(*next(batches)))
        for name, (model, batches) in runs.items()
    }
    medians = time_in_rounds(steps, args.rounds, args.steps, args.warmup)
    names = list(runs)
    print(
        f"\nquickstart model (two-scale attention, 1+S losses), batch 8 of 128 px, "
        f"{args.rounds} rounds x {args.steps} steps, load average (1 min) at the end "
        f"{os.getloadavg()[0]:.2f}"
    )
    print("| input | ms per step (median of rounds) | / in memory, same stride |")
    print("|---|---|---|")
    for name in names:
        stride = name.split(",")[0]
        reference = f"{stride}, {args.cached} batches in memory"
        ratio = statistics.median(
            a / b for a, b in zip(medians[name], medians[reference], strict=True)
        )
        print(f"| {name} | {1000 * statistics.median(medians[name]):.0f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
