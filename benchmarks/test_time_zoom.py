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
            args.split, num_images=args.images, with_size_map=True
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


def report(records):
    print("| model | split | images | views (scale:weight) | mIoU | small | medium | large |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['run']} | {r['split']} | {r['images']} | {r['combo']} | {r['miou']:.3f} | "
            f"{r['miou_small']:.3f} | {r['miou_medium']:.3f} | {r['miou_large']:.3f} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help=".keras model files")
    parser.add_argument("--split", default="val", help="ScaleDigits split (default val)")
    parser.add_argument("--images", type=int, default=300, help="first N images of the split")
    parser.add_argument(
        "--combos",
        type=parse_combo,
        nargs="+",
        default=[parse_combo("1:1"), parse_combo("1:0.6,2:0.4")],
        help="views and weights, e.g. 1:1 2:1 1:0.6,2:0.4",
    )
    parser.add_argument("--out", required=True, help="JSONL file of records (appended)")
    parser.add_argument("--report", action="store_true", help="print the records as a table")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be a positive integer, got {args.images}")
    if args.report:
        report(read_records(args.out))
        return 0
    if not args.models:
        parser.error("name one or more .keras models, or --report")
    missing = [path for path in args.models if not os.path.isfile(path)]
    if missing:
        parser.error(f"no such model file: {', '.join(missing)}")
    done = {
        (r["model"], r["combo"])
        for r in read_records(args.out)
        if r["split"] == args.split and r["images"] == args.images
    }
    for path in args.models:
        score(args, path, args.combos, done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
