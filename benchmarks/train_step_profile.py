"""Where a training step of the quickstart-sized model spends its time, per part and per op.

Builds the models of `benchmarks/train_step.py` (the quickstart's model and
training settings, one repeated synthetic batch), traces `--steps` training
steps of each with TensorFlow's profiler after `--warmup` untimed ones, and sums
the time of every TensorFlow op the trace records (on all threads, so on 2
cores the total can exceed the wall time). Ops are grouped by the part of the
model their name belongs to:

    backbone     the shared MobileNetV2 (both scales), forward and gradient
    heads        hypercolumn projections, dilated convs, attention, recalibration, merge
    upsample     the logits' resize to the input size (and its gradient)
    losses       the 1 + S cross-entropy losses
    metrics      mIoU and pixel accuracy on "final"
    optimizer    Adam's updates
    other        everything else (input resize, normalization, ...)

    python benchmarks/train_step_profile.py                  # single scale and attention
    python benchmarks/train_step_profile.py --loss-strides 1 4 --top 10

Profiling slows every op a little; the shares, not the milliseconds, are the
result. `benchmarks/train_step.py` gives the untraced step times.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_step import build  # noqa: E402

PARTS = ("backbone", "heads", "upsample", "losses", "metrics", "optimizer", "other")
HEAD_NAMES = (
    "hypercolumn_",
    "_dilated_conv",
    "location_attention",
    "recalibration",
    "scale_fusion",
    "_to_grid",
    "grid_reference",
    "attention_features",
    "_hypercolumn",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="traced steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="ops listed per model")
    parser.add_argument(
        "--loss-strides", type=int, nargs="+", default=[4], choices=(1, 2, 4, 8),
        help="grids of the 1 + S losses (4: the quickstart's)",
    )  # fmt: skip
    return parser.parse_args(argv)


def part_of(op_name):
    """The model part a TensorFlow op name (`scope/.../op:Type`) belongs to."""
    name = op_name.lower()
    if "compile_loss" in name or "cross_entropy" in name:
        return "losses"
    if "/backbone" in name or name.startswith("backbone"):
        return "backbone"
    if any(part in name for part in HEAD_NAMES):
        return "heads"
    if "_upsample" in name:
        return "upsample"
    if "miou" in name or "pixel_accuracy" in name or "confusion" in name:
        return "metrics"
    if "adam" in name or "assignvariableop" in name or "optimizer" in name:
        return "optimizer"
    return "other"


def op_times(xplane_path):
    """{op name: total milliseconds} from a profiler trace (`*.xplane.pb`)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as handle:
        space.ParseFromString(handle.read())
    totals = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # Op events are `scope/op:Type`; executor, thread-pool and function
                # events (ExecutorState::Process, ParallelFor, "EagerLocalExecute: f")
                # wrap them and would count twice.
                if ":" in name and "::" not in name and " " not in name:
                    totals[name] += event.duration_ps / 1e9
    return totals


def profile(model, images, labels, steps, warmup):
    """({op name: ms per step}, wall ms per step) over `steps` traced training steps."""
    import tensorflow as tf

    for _ in range(warmup):
        model.train_on_batch(images, labels)
    with tempfile.TemporaryDirectory() as logdir:
        options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2)
        tf.profiler.experimental.start(logdir, options=options)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        wall = (time.perf_counter() - start) / steps
        tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        totals = op_times(path)
    return {name: ms / steps for name, ms in totals.items()}, 1000 * wall


def main(argv=None):
    args = parse_args(argv)
    variants = {}
    for loss_stride in args.loss_strides:
        suffix = f", losses at stride {loss_stride}"
        variants["single scale" + suffix] = (
            dict(scales=(1.0,), fusion=None, recalibration=None),
            loss_stride,
        )
        variants["attention" + suffix] = ({}, loss_stride)
    by_part = {}
    for name, (overrides, loss_stride) in variants.items():
        model, images, labels = build(overrides, loss_stride)
        per_op, wall = profile(model, images, labels, args.steps, args.warmup)
        parts = collections.Counter()
        for op, ms in per_op.items():
            parts[part_of(op)] += ms
        by_part[name] = (parts, wall)
        print(f"\n{name}: {wall:.0f} ms per traced step, op time {sum(parts.values()):.0f} ms")
        print("| op | ms per step | part |")
        print("|---|---|---|")
        for op, ms in collections.Counter(per_op).most_common(args.top):
            print(
                f"| `{op.split(':')[0][-90:]}` ({op.split(':')[-1]}) | {ms:.1f} | {part_of(op)} |"
            )

    names = list(variants)
    print(
        f"\nop time per step by part ({args.steps} traced steps after {args.warmup}; "
        f"load average (1 min) {os.getloadavg()[0]:.2f})"
    )
    print("| part | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for part in PARTS:
        print(f"| {part} | " + " | ".join(f"{by_part[n][0][part]:.1f}" for n in names) + " |")
    print("| all ops | " + " | ".join(f"{sum(by_part[n][0].values()):.1f}" for n in names) + " |")
    print(
        "| wall time of a traced step | " + " | ".join(f"{by_part[n][1]:.1f}" for n in names) + " |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
