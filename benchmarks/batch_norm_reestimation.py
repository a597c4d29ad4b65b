"""What re-estimating the batch-norm statistics on whole images does to mIoU.

For each trained model, scores the first `--test-images` ScaleDigits test and
unseen images (as `paper_tables.py` does) twice: with the moving statistics
training left, and after `keras_msattn.batch_norm.reestimate_statistics` on the
first `--images` training images (image seed 1, batches of `--batch-size`).
`--crop N` re-estimates on random N-px crops of those images instead of the
whole 192-px images: it tells the size of the images apart from the averaging.

One JSON line per (model, images, crop) in `--out`; one already recorded is
skipped, so the script can be stopped and rerun.

    python benchmarks/batch_norm_reestimation.py benchmarks/results/quickstart_heads_runs/*/model.keras
    python benchmarks/batch_norm_reestimation.py --report
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from paper_tables import append_record, git_commit, read_records  # noqa: E402

DEFAULT_OUT = os.path.join("benchmarks", "results", "batch_norm_reestimation.jsonl")
METRICS = ("miou", "miou_small", "miou_medium", "miou_large")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=".keras models saved by keras_msattn")
    parser.add_argument("--images", type=int, default=256, help="training images to average over")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=None, help="re-estimate on random crops")
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="print the tables of --out only")
    args = parser.parse_args(argv)
    if not args.models and not args.report:
        parser.error("name at least one model, or --report")
    for path in args.models:
        if not os.path.isfile(path):
            parser.error(f"model not found: {path}")
    if args.batch_size < 2 or args.images < args.batch_size:
        parser.error("need --batch-size >= 2 and --images >= --batch-size")
    return args


def key(record):
    return record["model"], record["images"], record["crop"]


def score(model, split, count):
    from keras_msattn.data import scale_digits
    from keras_msattn.evaluation import evaluate

    images = scale_digits.load(split, image_seed=0, num_images=count, with_size_map=True)
    results = evaluate(
        model, images, scale_digits.NUM_CLASSES,
        extra_scores=scale_digits.SizeBucketScores(), max_images=count, verbose=0,
    )  # fmt: skip
    return {name: results[name] for name in METRICS}


def training_batches(count, batch_size, crop):
    import numpy as np

    from keras_msattn.data import scale_digits

    images = np.stack(
        [image for image, _ in scale_digits.load("train", image_seed=1, num_images=count)]
    ).astype("float32")
    if crop is not None:
        rng = np.random.default_rng(0)
        corners = rng.integers(0, images.shape[1] - crop + 1, size=(len(images), 2))
        images = np.stack(
            [im[y : y + crop, x : x + crop] for im, (y, x) in zip(images, corners, strict=True)]
        )
    return [images[i : i + batch_size] for i in range(0, len(images) - batch_size + 1, batch_size)]


def run(path, args, commit):
    from keras_msattn.batch_norm import reestimate_statistics
    from keras_msattn.inference import load_segmenter

    model = load_segmenter(path)
    record = {
        "model": path,
        "images": args.images,
        "crop": args.crop,
        "batch_size": args.batch_size,
    }
    for split in ("test", "unseen"):
        record[f"moving_{split}"] = score(model, split, args.test_images)
    start = time.perf_counter()
    reestimate_statistics(model, training_batches(args.images, args.batch_size, args.crop))
    record["reestimate_seconds"] = round(time.perf_counter() - start, 1)
    for split in ("test", "unseen"):
        record[f"reestimated_{split}"] = score(model, split, args.test_images)
    record["commit"] = commit
    return record


def run_name(record):
    return os.path.basename(os.path.dirname(record["model"]))


def report(path):
    import numpy as np

    records = read_records(path)
    for crop in sorted({r["crop"] for r in records}, key=str):
        chosen = [r for r in records if r["crop"] == crop]
        where = "whole images" if crop is None else f"{crop}-px crops"
        print(f"\nre-estimated on {where}; mIoU points, moving -> re-estimated\n")
        print("| model | test mIoU | small | medium | large | unseen mIoU |")
        print("|---|---|---|---|---|---|")
        for r in chosen:
            cells = [
                f"{100 * r['moving_test'][m]:.1f} → {100 * r['reestimated_test'][m]:.1f}"
                for m in METRICS
            ]
            unseen = f"{100 * r['moving_unseen']['miou']:.1f} → {100 * r['reestimated_unseen']['miou']:.1f}"
            print(f"| {run_name(r)} | {' | '.join(cells)} | {unseen} |")
        for split in ("test", "unseen"):
            gains = np.array(
                [
                    100 * (r[f"reestimated_{split}"]["miou"] - r[f"moving_{split}"]["miou"])
                    for r in chosen
                ]
            )
            t = (
                gains.mean() / (gains.std(ddof=1) / np.sqrt(len(gains)))
                if len(gains) > 1
                else float("nan")
            )
            print(
                f"\n{split}: gain {gains.mean():+.2f} ± {gains.std(ddof=1) if len(gains) > 1 else 0:.2f} "
                f"points over {len(gains)} models (paired t {t:.2f}; min {gains.min():+.1f}, "
                f"max {gains.max():+.1f})"
            )


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        report(args.out)
        return
    commit = git_commit()
    done = {key(r) for r in read_records(args.out)}
    for path in args.models:
        if (path, args.images, args.crop) in done:
            print(f"skip (recorded): {path}")
            continue
        record = run(path, args, commit)
        append_record(args.out, record)
        print(
            f"{run_name(record)}: test {record['moving_test']['miou']:.4f} -> "
            f"{record['reestimated_test']['miou']:.4f}, unseen {record['moving_unseen']['miou']:.4f} "
            f"-> {record['reestimated_unseen']['miou']:.4f}",
            flush=True,
        )
    report(args.out)


if __name__ == "__main__":
    main()
