"""One training step of the quickstart-sized model: two-scale attention against single scale.

The quickstart's model and training settings (`keras_msattn.quickstart.
quickstart_config`: MobileNetV2 x0.5 (x0.35 before commit 42b6a0f), output
stride 16, 16-channel heads, batch 8 of 128-px crops, Adam, the `1 + S` deep-supervision losses), built and
compiled as `msattn train` does, trained on one repeated synthetic batch (the
input pipeline costs nothing). Models: single scale, and the attention model
with its heads on each `--head-strides` grid (with full or depthwise-separable
3x3 convs, `--head-convs`), each with its losses on each `--loss-strides` grid (`TrainConfig.loss_stride`: 1 is full resolution). After
`--warmup` untimed steps, the models take turns in `--rounds` rounds of
`--steps` steps (the order rotates each round); the ratio to single scale (with
the same loss stride, and with full-resolution losses) is taken round by round.

    python benchmarks/train_step.py                       # heads at stride 4 and 16
    python benchmarks/train_step.py --head-strides 4 --loss-strides 1 4
    python benchmarks/train_step.py --head-strides 4 8 --head-convs full separable --loss-strides 4
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-strides", type=int, nargs="+", default=[4, 16])
    parser.add_argument(
        "--head-convs",
        nargs="+",
        default=["full"],
        choices=["full", "separable"],
        help="the heads' 3x3 convs: full, or depthwise + 1x1 (separable_heads=True)",
    )
    parser.add_argument("--loss-strides", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    parser.add_argument("--warmup", type=int, default=3)
    return parser.parse_args(argv)


def build(model_overrides, loss_stride=1):
    import keras
    import numpy as np

    from keras_msattn import training
    from keras_msattn.config import apply_overrides, resolve_config
    from keras_msattn.quickstart import quickstart_config
    from keras_msattn.segmenter import output_names

    overrides = {"model": model_overrides, "loss_stride": loss_stride}
    config = resolve_config(apply_overrides(quickstart_config(), overrides))
    keras.utils.set_random_seed(0)
    model = training.build_model(config)
    training.synchronize_batchnorm(model)
    training.compile_model(model, config)
    rng = np.random.default_rng(0)
    size, batch = config.crop_size, config.batch_size
    images = rng.integers(0, 256, (batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, config.num_classes, (batch, size, size)).astype("int32")
    return model, images, {name: labels for name in output_names(config.scales)}


def time_in_rounds(steps, rounds, count, warmup):
    """{name: [median seconds of a step, per round]} for {name: a function doing one step}.

    After `warmup` untimed steps each, the runs take turns in `rounds` rounds of
    `count` timed steps; the order rotates each round, so no run always goes first.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    medians = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times = []
            for _ in range(count):
                start = time.perf_counter()
                steps[name]()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
        print(f"round {round_index + 1}/{rounds}", file=sys.stderr, flush=True)
    return medians


def main(argv=None):
    args = parse_args(argv)
    variants = {}
    for loss_stride in args.loss_strides:
        suffix = "" if args.loss_strides == [1] else f", losses at stride {loss_stride}"
        variants[f"single scale{suffix}"] = (
            dict(scales=(1.0,), fusion=None, recalibration=None),
            loss_stride,
        )
        for stride in args.head_strides:
            for conv in args.head_convs:
                separable = conv == "separable"
                kind = ", separable" if separable else ""
                variants[f"attention, heads at stride {stride}{kind}{suffix}"] = (
                    dict(head_stride=stride, separable_heads=separable),
                    loss_stride,
                )
    models = {name: build(*arguments) for name, arguments in variants.items()}
    steps = {
        name: (
            lambda model=model, images=images, labels=labels: model.train_on_batch(images, labels)
        )
        for name, (model, images, labels) in models.items()
    }
    medians = time_in_rounds(steps, args.rounds, args.steps, args.warmup)
    names = list(models)
    singles = {
        loss_stride: next(
            n for n in names if n.startswith("single") and variants[n][1] == loss_stride
        )
        for loss_stride in args.loss_strides
    }

    def ratio(name, reference):
        return statistics.median(
            a / b for a, b in zip(medians[name], medians[reference], strict=True)
        )

    print(
        f"\nquickstart-sized model, batch 8 of 128 px, {args.rounds} rounds x {args.steps} "
        f"steps, load average (1 min) at the end {os.getloadavg()[0]:.2f}"
    )
    print(
        "| model | ms per step | / single scale, same losses | / single scale, full-resolution losses |"
    )
    print("|---|---|---|---|")
    for name in names:
        same = ratio(name, singles[variants[name][1]])
        full = f"{ratio(name, singles[1]):.2f}x" if 1 in singles else "-"
        print(f"| {name} | {1000 * statistics.median(medians[name]):.0f} | {same:.2f}x | {full} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
