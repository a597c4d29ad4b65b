"""Which of the unseen split's rules costs a model its mIoU there?

ScaleDigits' `unseen` split changes five things at once against the training
rules (keras_msattn/data/scale_digits.py, `_RULES`): the photographs, the
digits' fill, their rendering, their placement and a photometric change. This
scores trained models on the unseen split's images (its random stream and digit
samples) drawn with the training rules ("none"), with the training rules and
one unseen rule at a time, and with all unseen rules ("all", the split as
shipped). The gap between "none" and each single rule is what that rule costs.

With `--reestimate N` each model's batch-norm statistics are first
re-estimated on N whole training images (`keras_msattn.batch_norm`), as
`TrainConfig.batch_norm_images` does.

One JSON line per (model, rule, reestimate) in `--out`; recorded ones are
skipped.

    python benchmarks/unseen_factors.py benchmarks/results/quickstart_heads_runs/full-*/model.keras
    python benchmarks/unseen_factors.py --report
"""

import argparse
import dataclasses
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from batch_norm_reestimation import training_batches  # noqa: E402
from paper_tables import append_record, git_commit, read_records  # noqa: E402

DEFAULT_OUT = os.path.join("benchmarks", "results", "unseen_factors.jsonl")
RULES = ("none", "photos", "fills", "rendering", "placement", "photometric", "all")
METRICS = ("miou", "miou_small", "miou_medium", "miou_large")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=".keras models saved by keras_msattn")
    parser.add_argument("--images", type=int, default=200, help="unseen-split images per rule")
    parser.add_argument("--reestimate", type=int, default=0, help="re-estimate BN on N images")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="print the table of --out only")
    args = parser.parse_args(argv)
    if not args.models and not args.report:
        parser.error("name at least one model, or --report")
    for path in args.models:
        if not os.path.isfile(path):
            parser.error(f"model not found: {path}")
    return args


def unseen_images(rule, count):
    """The unseen split's first `count` examples with the training rules and `rule`."""
    from keras_msattn.data import scale_digits

    shipped = scale_digits._RULES["unseen"]
    standard = scale_digits._RULES["standard"]
    if rule == "all":
        rules = shipped
    elif rule == "none":
        rules = standard
    else:
        rules = dataclasses.replace(standard, **{rule: getattr(shipped, rule)})
    scale_digits._RULES["unseen"] = rules
    try:
        return [scale_digits.generate("unseen", index)[:3] for index in range(count)]
    finally:
        scale_digits._RULES["unseen"] = shipped


def score(model, examples):
    from keras_msattn.data import scale_digits
    from keras_msattn.evaluation import evaluate

    results = evaluate(
        model, examples, scale_digits.NUM_CLASSES,
        extra_scores=scale_digits.SizeBucketScores(), verbose=0,
    )  # fmt: skip
    return {name: results[name] for name in METRICS}


def report(path):
    import numpy as np

    records = read_records(path)

    def group(record):
        # The run's folder with its seed left out (one configuration), and the
        # batch-norm setting.
        run_dir = os.path.dirname(record["model"])
        return re.sub(r"seed\d+", "seed*", run_dir), record["reestimate"]

    for folder, count in sorted({group(r) for r in records}):
        chosen = [r for r in records if group(r) == (folder, count)]
        models = sorted({r["model"] for r in chosen})
        print(
            f"\n{folder}; batch norm: "
            f"{'moving averages' if not count else f're-estimated on {count} images'}"
            f"; mean of {len(models)} models, mIoU points (small / medium / large)\n"
        )
        print("| unseen rules used | mIoU | small | medium | large | mIoU − none |")
        print("|---|---|---|---|---|---|")
        base = np.mean([r["miou"] for r in chosen if r["rule"] == "none"])
        for rule in RULES:
            rows = [r for r in chosen if r["rule"] == rule]
            if not rows:
                continue
            cells = [f"{100 * np.mean([r[m] for r in rows]):.1f}" for m in METRICS]
            gap = 100 * (np.mean([r["miou"] for r in rows]) - base)
            print(f"| {rule} | {' | '.join(cells)} | {gap:+.1f} |")


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        report(args.out)
        return
    from keras_msattn.batch_norm import reestimate_statistics
    from keras_msattn.inference import load_segmenter

    commit = git_commit()
    done = {(r["model"], r["rule"], r["reestimate"]) for r in read_records(args.out)}
    examples = {rule: unseen_images(rule, args.images) for rule in RULES}
    for path in args.models:
        todo = [rule for rule in RULES if (path, rule, args.reestimate) not in done]
        if not todo:
            print(f"skip (recorded): {path}")
            continue
        model = load_segmenter(path)
        if args.reestimate:
            # As batch_norm_reestimation.py: the first N training images of image seed 1.
            reestimate_statistics(model, training_batches(args.reestimate, 16, crop=None))
        for rule in todo:
            start = time.perf_counter()
            record = {"model": path, "rule": rule, "reestimate": args.reestimate}
            record.update(score(model, examples[rule]), images=args.images, commit=commit)
            record["seconds"] = round(time.perf_counter() - start, 1)
            append_record(args.out, record)
            print(
                f"{os.path.basename(os.path.dirname(path))} {rule}: {record['miou']:.4f}",
                flush=True,
            )
    report(args.out)


if __name__ == "__main__":
    main()
