"""Forward latency of the single-scale model vs the two-scale attention model.

Same backbone, batch 1, this machine's CPU; median of repeated runs after
warm-up, the two models timed in alternation so that machine load hits both.
Also prints the attention heads' share of the FLOPs (TF's profiler).

    python benchmarks/model_latency.py                       # both cases below
    python benchmarks/model_latency.py --backbone mobilenet_v2 --size 513 --runs 20
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_msattn import MultiScaleSegmenter  # noqa: E402
from keras_msattn.summary import summarize  # noqa: E402

CASES = [("vgg16_largefov", 321), ("mobilenet_v2", 513)]


def compiled_forward(model, size):
    forward = tf.function(lambda x: model(x, training=False), jit_compile=False)
    return forward.get_concrete_function(tf.TensorSpec((1, size, size, 3), tf.float32))


def measure(backbone, size, runs, warmup, num_classes):
    single = MultiScaleSegmenter(
        backbone=backbone, num_classes=num_classes, scales=(1.0,), fusion=None
    )
    # The paper's heads (full 3x3 convs on the stride-4 grid), also for mobilenet_v2,
    # whose lighter default heads are measured in docs/performance.md's edge section.
    multi = MultiScaleSegmenter(
        backbone=backbone, num_classes=num_classes, scales=(1.0, 0.5),
        separable_heads=False, head_stride=4,
    )  # fmt: skip
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)), tf.float32)
    forwards = {
        "single": compiled_forward(single, size),
        "attention": compiled_forward(multi, size),
    }
    times = {name: [] for name in forwards}
    for index in range(warmup + runs):
        for name, forward in forwards.items():
            start = time.perf_counter()
            forward(images).numpy()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    summary = summarize(multi, (size, size))
    heads = summary.parts[-1].flops
    return medians, heads / summary.total_flops, summary.total_flops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None, help="one case only (default: both cases)")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=21)
    args = parser.parse_args()
    cases = [(args.backbone, args.size)] if args.backbone else CASES
    print(f"CPU threads: {os.cpu_count()}, tensorflow {tf.__version__}")
    print(
        "| backbone | input | single scale (ms) | 1.0+0.5 attention (ms) | ratio | heads' FLOPs share |"
    )
    print("|---|---|---|---|---|---|")
    for backbone, size in cases:
        medians, head_share, _ = measure(backbone, size, args.runs, args.warmup, args.num_classes)
        ratio = medians["attention"] / medians["single"]
        print(
            f"| {backbone} | {size}x{size} | {medians['single'] * 1e3:.0f} | "
            f"{medians['attention'] * 1e3:.0f} | {ratio:.2f}x | {head_share:.1%} |"
        )


if __name__ == "__main__":
    main()
