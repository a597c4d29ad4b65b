"""Where the paper-tables models put their scale attention, by digit size.

    python benchmarks/paper_tables_attention.py --steps 1500 --images 100

For every run of `benchmarks/paper_tables.py` with an attention fusion
(attention-to-scale and the paper's variants) found in the runs folder, the
mean weight of the 0.5x stream over the pixels of background, small, medium
and large digits, on the first `--images` ScaleDigits test images (the test
images of the benchmark). The paper's motivation predicts more 0.5x weight on
large objects and less on small ones.
"""

import argparse
import os
import re
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

RUNS = os.path.join("benchmarks", "results", "paper_tables_runs")
ATTENTION_VARIANTS = ("attention_to_scale", "multi_stage", "diverse_dilations", "full", "full_psp")
BUCKETS = ("background", "small", "medium", "large")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=RUNS, help="the runs folder of paper_tables.py")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs):
        parser.error(f"no runs folder {args.runs!r}; run benchmarks/paper_tables.py first")
    return args


def find_runs(folder, steps, image_size):
    """{variant: {seed: model path}} of the finished attention runs."""
    pattern = re.compile(rf"^(\w+)-seed(\d+)-{steps}steps-{image_size}px$")
    runs = {}
    for name in sorted(os.listdir(folder)):
        match = pattern.match(name)
        model = os.path.join(folder, name, "model.keras")
        if match and match.group(1) in ATTENTION_VARIANTS and os.path.isfile(model):
            runs.setdefault(match.group(1), {})[int(match.group(2))] = model
    return runs


def main(argv=None):
    args = parse_args(argv)
    import keras

    import keras_msattn  # noqa: F401  (registers the model classes)
    from keras_msattn.data import scale_digits
    from keras_msattn.quickstart import scale_weight_by_size

    runs = find_runs(args.runs, args.steps, args.image_size)
    if not runs:
        raise SystemExit(f"no finished attention runs at {args.steps} steps in {args.runs}")
    dataset = scale_digits.load(
        "test", image_seed=0, num_images=args.images, image_size=args.image_size, with_size_map=True
    )
    images, size_maps = [], []
    for image, _, size_map in dataset.as_numpy_iterator():
        images.append(image)
        size_maps.append(size_map)
    import numpy as np

    images, size_maps = np.stack(images), np.stack(size_maps)
    print(f"Mean weight of the 0.5x stream, first {len(images)} ScaleDigits test images")
    print("| variant | seeds | " + " | ".join(BUCKETS) + " |")
    print("|---|---|" + "---|" * len(BUCKETS))
    for variant in ATTENTION_VARIANTS:
        if variant not in runs:
            continue
        per_bucket = {bucket: [] for bucket in BUCKETS}
        for _, path in sorted(runs[variant].items()):
            model = keras.saving.load_model(path, compile=False)
            weights = scale_weight_by_size(model, images, size_maps)
            for bucket in BUCKETS:
                per_bucket[bucket].append(weights[bucket]["0.5"])
        cells = []
        for bucket in BUCKETS:
            values = per_bucket[bucket]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.3f}{spread}")
        seeds = ",".join(str(seed) for seed in sorted(runs[variant]))
        print(f"| {variant} | {seeds} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
