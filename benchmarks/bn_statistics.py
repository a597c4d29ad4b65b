"""Do the shared batch-norm statistics hold the 0.5x stream back?

The backbone's weights are shared by the scales, and so are its batch-norm
moving statistics: at inference the 0.5x pass is normalised with means and
variances accumulated over both scales' activations. For each trained model,
this scores every stream alone by digit size (pixel accuracy of the argmax of
`scale_{s}_logits_to_grid`, nearest-neighbour resized to the image; as in the
quickstart's report), the final output, and the 0.5x stream's attention weight,
twice on the same test images:

- "moving": inference as shipped (`training=False`), the shared moving statistics;
- "batch": batch-norm on the statistics of each call's own batch
  (`training=True`, batches of `--batch-size`), so every scale is normalised
  with its own statistics. This is a diagnostic (it reads the test batch), not
  a way to deploy: if it lifts the 0.5x stream, per-scale statistics are a
  lever worth building.

One JSON line per (model, mode) in `--out`; a model already recorded is skipped.

    python benchmarks/bn_statistics.py benchmarks/results/paper_tables_campaign_runs/full*/model.keras
    python benchmarks/bn_statistics.py --report
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from paper_tables import git_commit, read_records  # noqa: E402

DEFAULT_OUT = os.path.join("benchmarks", "results", "bn_statistics.jsonl")
SIZES = ("small", "medium", "large")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="two-scale .keras models saved by keras_msattn")
    parser.add_argument("--images", type=int, default=96, help="first N ScaleDigits test images")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="print the table of --out only")
    args = parser.parse_args(argv)
    if not args.models and not args.report:
        parser.error("name at least one model, or --report")
    for path in args.models:
        if not os.path.isfile(path):
            parser.error(f"model not found: {path}")
    if args.batch_size < 2 or args.images % args.batch_size:
        # Batch statistics of a short last batch would not be comparable.
        parser.error("need --batch-size >= 2 and --images a multiple of --batch-size")
    return args


def score(model, images, labels, size_maps, batch_size, training):
    """{stream: {size: pixel accuracy}} and the 0.5x weight by size, one BN mode."""
    from keras_msattn.quickstart import scale_weight_by_size, stream_accuracy_by_size

    accuracy = stream_accuracy_by_size(model, images, labels, size_maps, batch_size, training)
    weights = scale_weight_by_size(model, images, size_maps, batch_size, training)
    return accuracy, {size: weights[size]["0.5"] for size in SIZES}


def report(path):
    import numpy as np

    records = read_records(path)
    print(
        "| model | BN statistics | 1x stream acc. s / m / l | 0.5x stream acc. | final acc. | 0.5x weight |"
    )
    print("|---|---|---|---|---|---|")
    for r in records:
        cells = [
            " / ".join(f"{r['accuracy'][k][s]:.3f}" for s in SIZES) for k in ("1.0", "0.5", "final")
        ]
        weight = " / ".join(f"{r['weight_0.5'][s]:.3f}" for s in SIZES)
        name = os.path.basename(os.path.dirname(r["model"])).split("-1500steps")[0]
        print(f"| {name} | {r['mode']} | {' | '.join(cells)} | {weight} |")
    for mode in ("moving", "batch"):
        chosen = [r for r in records if r["mode"] == mode]
        cells = [
            " / ".join(f"{np.mean([r['accuracy'][k][s] for r in chosen]):.3f}" for s in SIZES)
            for k in ("1.0", "0.5", "final")
        ]
        weight = " / ".join(f"{np.mean([r['weight_0.5'][s] for r in chosen]):.3f}" for s in SIZES)
        print(f"| mean of {len(chosen)} models | {mode} | {' | '.join(cells)} | {weight} |")


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        report(args.out)
        return
    import numpy as np

    from keras_msattn.data import scale_digits
    from keras_msattn.inference import load_segmenter

    dataset = scale_digits.load("test", num_images=args.images, with_size_map=True)
    images, labels, size_maps = (
        np.stack(a) for a in zip(*dataset.as_numpy_iterator(), strict=True)
    )
    commit = git_commit()
    done = {record["model"] for record in read_records(args.out)}
    for path in args.models:
        if path in done:
            print(f"skip (recorded): {path}")
            continue
        lines = []
        for mode, training in (("moving", False), ("batch", True)):
            # Reloaded per mode: training=True also updates the moving statistics.
            model = load_segmenter(path)
            if len(model.scales) != 2 or model.fusion != "attention":
                print(f"skip (not a two-scale attention model): {path}")
                break
            start = time.time()
            accuracy, weight = score(model, images, labels, size_maps, args.batch_size, training)
            lines.append(
                dict(
                    model=path,
                    mode=mode,
                    images=args.images,
                    batch_size=args.batch_size,
                    accuracy=accuracy,
                    **{"weight_0.5": weight},
                    commit=commit,
                    seconds=round(time.time() - start, 1),
                )
            )
            print(path, mode, json.dumps(accuracy["0.5"]), json.dumps(accuracy["final"]))
        if len(lines) == 2:
            with open(args.out, "a") as f:
                f.write("".join(json.dumps(line) + "\n" for line in lines))
    report(args.out)


if __name__ == "__main__":
    main()
