"""LiteRT latency of several `.tflite` files, interleaved, against the first one.

    python benchmarks/tflite_latency.py none=bench/tflite/model_none.tflite \
        int8=bench/tflite/model_int8.tflite --threads 2 --rounds 15 --runs 100

All files are loaded in one process and timed in rounds, the order rotating
every round, so that other load on the machine falls on every file alike. Each
round times `--runs` invocations of every file on the same ScaleDigits `val`
image (after warm-up) and keeps their median and minimum. Printed per file: the
median over rounds of the per-round medians and minima, and the median and
quartiles of the per-round ratio to the first file.
"""

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", metavar="NAME=PATH", help="the first is the baseline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=100, help="invocations per file and round")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    for item in args.files:
        name, _, path = item.partition("=")
        if not name or not path:
            parser.error(f"expected NAME=PATH, got {item!r}")
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    if min(args.threads, args.rounds, args.runs) < 1:
        parser.error("--threads, --rounds and --runs must be >= 1")
    return args


def quartiles(values):
    low, median, high = np.percentile(values, [25, 50, 75])
    return f"{median:.3f} ({low:.3f} to {high:.3f})"


def main(argv=None):
    args = parse_args(argv)
    from keras_msattn.data import scale_digits
    from keras_msattn.export.report import LiteRTModel

    files = dict(item.split("=", 1) for item in args.files)
    models = {name: LiteRTModel(path, num_threads=args.threads) for name, path in files.items()}
    image = scale_digits.generate("val", 0, image_seed=0)[0].astype("float32")
    names = list(models)
    medians = {name: [] for name in names}
    minima = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            timing = models[name].latency_ms(image, runs=args.runs, warmup=args.warmup)
            medians[name].append(timing["median_ms"])
            minima[name].append(timing["min_ms"])
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{args.rounds} rounds x {args.runs} runs, {args.threads} threads, ScaleDigits val "
        f"image 0, load average (1 min) at the end {load:.2f}"
    )
    print("| file | median ms | min ms | ratio of medians (quartiles) | ratio of minima |")
    print("|---|---|---|---|---|")
    base = names[0]
    for name in names:
        ratio_median = [a / b for a, b in zip(medians[name], medians[base], strict=True)]
        ratio_min = [a / b for a, b in zip(minima[name], minima[base], strict=True)]
        print(
            f"| `{name}` | {statistics.median(medians[name]):.3f} | "
            f"{statistics.median(minima[name]):.3f} | {quartiles(ratio_median)} | "
            f"{quartiles(ratio_min)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
