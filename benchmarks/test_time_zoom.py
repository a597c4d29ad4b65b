"""Trained models scored with finer views of the image at test time.

Each model runs on every view of the first N images of a ScaleDigits split
(the image resized by each scale, the logits resized back, as
`keras_msattn.inference.predict_probabilities` does); each combination of views
averages their class probabilities with its weights, and is scored overall and
by digit size. A view's probabilities are computed once per model and shared by
every combination. One JSON line per (model, split, images, combination) is
appended to --out; lines already there are skipped, so a killed run resumes.

    python benchmarks/test_time_zoom.py quickstart/model.keras --split val --images 300 \\
        --combos 1:1 2:1 3:1 1:0.6,2:0.4 1:0.6,2:0.2,3:0.2 --out benchmarks/results/test_time_zoom.jsonl
    python benchmarks/test_time_zoom.py --report --out benchmarks/results/test_time_zoom.jsonl
    python benchmarks/test_time_zoom.py --report --baseline single_scale --out ...   # paired by seed

`--image-seed` draws the split's images with another data seed (as
`msattn quickstart --seed N` scores its model on `image_seed=N`).
"""

import argparse
import json
import os
import sys
import time

import numpy as np


def parse_combo(text):
    """'1:0.6,2:0.4' -> ((1.0, 0.6), (2.0, 0.4)): scales and their weights."""
    try:
        pairs = tuple(
            (float(scale), float(weight))
            for scale, weight in (item.split(":") for item in text.split(","))
        )
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"a combination is scale:weight pairs like 1:0.6,2:0.4, got {text!r}"
        ) from error
    if any(scale <= 0 or weight < 0 for scale, weight in pairs) or not any(w for _, w in pairs):
        raise argparse.ArgumentTypeError(
            f"scales must be positive and weights non-negative with one above 0, got {text!r}"
        )
    return pairs


def combo_name(pairs):
    return ",".join(f"{scale:g}:{weight:g}" for scale, weight in pairs)


def read_records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_record(path, record):
    # One line per finished combination, flushed and synced: a kill loses at most
    # the combination being scored.
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def model_label(path):
    """The run folder's name (variant, seed and settings) or the file's path."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return folder if folder not in ("", "quickstart", "training") else path


def score(args, model_path, combos, done):
    import keras_msattn  # noqa: F401  (registers the classes for loading)
    from keras_msattn.data import scale_digits
    from keras_msattn.inference import (
        batch_probabilities,
        confusion_matrix,
        load_segmenter,
        mean_iou,
    )

    todo = [pairs for pairs in combos if (model_path, combo_name(pairs)) not in done]
    if not todo:
        return
    model = load_segmenter(model_path)
    examples = list(
        scale_digits.load(
            args.split, num_images=args.images, with_size_map=True, image_seed=args.image_seed
        ).as_numpy_iterator()
    )
    images, labels, sizes = (np.stack(part) for part in zip(*examples, strict=True))
    views, seconds = {}, {}
    for scale in sorted({scale for pairs in todo for scale, _ in pairs}):
        start = time.perf_counter()
        views[scale] = np.concatenate(
            [
                batch_probabilities(model, images[i : i + 16], tta_scales=(scale,))
                for i in range(0, len(images), 16)
            ]
        )
        seconds[scale] = time.perf_counter() - start
    for pairs in todo:
        total = sum(weight for _, weight in pairs)
        merged = sum(views[scale] * (weight / total) for scale, weight in pairs if weight)
        predictions = merged.argmax(-1)
        confusion = sum(
            confusion_matrix(label, prediction, scale_digits.NUM_CLASSES)
            for label, prediction in zip(labels, predictions, strict=True)
        )
        by_size = scale_digits.size_bucket_confusion(
            labels, predictions, sizes, image_size=labels.shape[1]
        )
        record = {
            "model": model_path,
            "run": model_label(model_path),
            "split": args.split,
            "images": len(images),
            "image_seed": args.image_seed,
            "combo": combo_name(pairs),
            "miou": mean_iou(confusion),
            **{
                f"miou_{name}": mean_iou(by_size[b], empty=float("nan"))
                for b, name in enumerate(scale_digits.SIZE_BUCKETS)
            },
            "view_seconds": {f"{scale:g}": round(seconds[scale], 1) for scale, _ in pairs},
        }
        append_record(args.out, record)
        print(
            f"{record['run']} {record['combo']:>16s}: mIoU {record['miou']:.3f} (small "
            f"{record['miou_small']:.3f}, medium {record['miou_medium']:.3f}, large "
            f"{record['miou_large']:.3f})",
            flush=True,
        )


def variant_and_seed(run):
    """('full', 0) from a paper_tables run folder like 'full-seed0-2000steps-...'."""
    variant, _, rest = run.partition("-seed")
    seed = rest.split("-")[0]
    return variant, int(seed) if seed.isdigit() else None


def split_seed(record):
    """' (image seed 1)' for a record of another data seed than 0, else ''."""
    seed = record.get("image_seed", 0)
    return f" (image seed {seed})" if seed else ""


def report(records, baseline=None):
    """The records as a table; with `baseline`, each variant's mean over seeds and
    its paired difference from the baseline variant's run of the same seed."""
    if baseline is None:
        print("| model | split | images | views (scale:weight) | mIoU | small | medium | large |")
        print("|---|---|---|---|---|---|---|---|")
        for r in records:
            print(
                f"| {r['run']} | {r['split']}{split_seed(r)} | {r['images']} | {r['combo']} | "
                f"{r['miou']:.3f} | "
                f"{r['miou_small']:.3f} | {r['miou_medium']:.3f} | {r['miou_large']:.3f} |"
            )
        return
    table = {}
    for r in records:
        variant, seed = variant_and_seed(r["run"])
        if seed is not None:
            key = (variant, r["combo"], r["split"] + split_seed(r), r["images"])
            table[key] = table.get(key, {}) | {seed: r}
    print(
        f"| variant | views | seeds | mIoU | small | medium | large | mIoU - {baseline}, "
        "per seed | mean | t |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (variant, combo, split, images), runs in sorted(table.items()):
        seeds = sorted(runs)
        means = {
            key: 100 * np.mean([runs[s][key] for s in seeds])
            for key in ("miou", "miou_small", "miou_medium", "miou_large")
        }
        base = table.get((baseline, combo, split, images), {})
        paired = [s for s in seeds if s in base]
        cells = ["-", "-", "-"]
        if variant != baseline and paired:
            diffs = np.array([100 * (runs[s]["miou"] - base[s]["miou"]) for s in paired])
            t = (
                diffs.mean() / (diffs.std(ddof=1) / np.sqrt(len(diffs)))
                if len(diffs) > 1 and diffs.std(ddof=1) > 0
                else float("nan")
            )
            cells = [", ".join(f"{d:+.1f}" for d in diffs), f"{diffs.mean():+.2f}", f"{t:.2f}"]
        print(
            f"| {variant} | {combo} | {','.join(map(str, seeds))} | {means['miou']:.1f} | "
            f"{means['miou_small']:.1f} | {means['miou_medium']:.1f} | {means['miou_large']:.1f} | "
            + " | ".join(cells)
            + " |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help=".keras model files")
    parser.add_argument("--split", default="val", help="ScaleDigits split (default val)")
    parser.add_argument("--images", type=int, default=300, help="first N images of the split")
    parser.add_argument(
        "--image-seed", type=int, default=0, help="ScaleDigits data seed of the images (default 0)"
    )
    parser.add_argument(
        "--combos",
        type=parse_combo,
        nargs="+",
        default=[parse_combo("1:1"), parse_combo("1:0.6,2:0.4")],
        help="views and weights, e.g. 1:1 2:1 1:0.6,2:0.4",
    )
    parser.add_argument("--out", required=True, help="JSONL file of records (appended)")
    parser.add_argument("--report", action="store_true", help="print the records as a table")
    parser.add_argument(
        "--baseline",
        default=None,
        help="with --report: a paper_tables variant (e.g. single_scale) that the other "
        "variants' runs are paired with by seed",
    )
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be a positive integer, got {args.images}")
    if args.report:
        report(read_records(args.out), args.baseline)
        return 0
    if not args.models:
        parser.error("name one or more .keras models, or --report")
    missing = [path for path in args.models if not os.path.isfile(path)]
    if missing:
        parser.error(f"no such model file: {', '.join(missing)}")
    done = {
        (r["model"], r["combo"])
        for r in read_records(args.out)
        if r["split"] == args.split
        and r["images"] == args.images
        and r.get("image_seed", 0) == args.image_seed
    }
    for path in args.models:
        score(args, path, args.combos, done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
