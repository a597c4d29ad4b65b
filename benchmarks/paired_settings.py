"""Paired-seed differences between training settings of one variant, across record files.

`paper_tables.py --report` pairs variants within one setting. This pairs the runs
of one variant under two settings (a learning rate, a step count), seed by seed,
from any of the records files `paper_tables.py` writes; a setting may name
another variant for its side (`variant=full_recalibration_add`). Every setting of
`paper_tables.py`'s resume key is matched: its default there unless `--common`
or the setting itself names it; a record without a setting has the value every
earlier record had (`paper_tables.SETTING_DEFAULTS`).

    python benchmarks/paired_settings.py benchmarks/results/quickstart_heads.jsonl \\
        benchmarks/results/quickstart_learning_rate.jsonl --common batch_norm_images=0 \\
        --baseline steps=2800 learning_rate=0.003 \\
        --compare steps=2800,learning_rate=0.006 steps=2000,learning_rate=0.006
"""

import argparse
import ast
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from paper_tables import parse_args, read_records, records_with_settings, settings  # noqa: E402

METRICS = (("miou", "test"), ("unseen_miou", "unseen"))


def parse_setting(text):
    """'steps=2800,learning_rate=0.006' -> {'steps': 2800, 'learning_rate': 0.006}."""
    setting = {}
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        try:
            setting[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            setting[key] = value
    return setting


def runs(records, variant, setting):
    """{seed: record} of `variant` under `setting` (the last record of a seed wins)."""
    chosen = [r for r in records if r.get("variant") == variant]
    return {r["seed"]: r for r in records_with_settings(chosen, setting)}


def paired(baseline, compared, metric):
    """Per-seed differences in points, their mean and t (nan for one seed)."""
    seeds = sorted(set(baseline) & set(compared))
    diffs = np.array([100 * (compared[s][metric] - baseline[s][metric]) for s in seeds])
    t = diffs.mean() / (diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else np.nan
    return seeds, diffs, t


def label(setting):
    return ", ".join(
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in setting.items()
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="records files (JSON lines)")
    parser.add_argument("--variant", default="full")
    parser.add_argument("--common", nargs="*", default=[], help="KEY=VALUE ... for both sides")
    parser.add_argument("--baseline", nargs="+", required=True, help="KEY=VALUE ...")
    parser.add_argument(
        "--compare", nargs="+", required=True, help="settings, each KEY=VALUE,KEY=VALUE"
    )
    args = parser.parse_args(argv)
    try:
        common = parse_setting(",".join(args.common))
        baseline_setting = parse_setting(",".join(args.baseline))
        compared_settings = [parse_setting(text) for text in args.compare]
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    for path in args.files:
        if not os.path.exists(path):
            parser.error(f"no records file {path}")
    records = [record for path in args.files for record in read_records(path)]
    defaults = settings(parse_args([]))
    unknown = set(common).union(baseline_setting, *compared_settings) - set(defaults) - {"variant"}
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; known: {sorted(defaults)}")

    def full(setting):
        return {**defaults, **common, **{k: v for k, v in setting.items() if k != "variant"}}

    def runs_of(setting):
        return runs(records, setting.get("variant", args.variant), full(setting))

    baseline = runs_of(baseline_setting)
    if not baseline:
        parser.error(f"no {args.variant} runs with {label(baseline_setting)} in {args.files}")

    print(
        f"{args.variant}, mIoU points; baseline: {label(baseline_setting)}; both: {label(common)}"
    )
    print("| setting | seeds | test, per seed | unseen, per seed |")
    print("|---|---|---|---|")
    for setting, found in [(baseline_setting, baseline)] + [
        (s, runs_of(s)) for s in compared_settings
    ]:
        seeds = sorted(found)
        cells = [" / ".join(f"{100 * found[s][m]:.1f}" for s in seeds) for m, _ in METRICS]
        print(
            f"| {label(setting)} | {', '.join(map(str, seeds)) or '-'} | "
            + " | ".join(cells)
            + " |"
        )
    print()
    print(
        "| setting minus baseline | "
        + " | ".join(f"{name}: per seed; mean; t" for _, name in METRICS)
        + " |"
    )
    print("|---|" + "---|" * len(METRICS))
    for setting in compared_settings:
        cells = []
        for metric, _ in METRICS:
            seeds, diffs, t = paired(baseline, runs_of(setting), metric)
            if not seeds:
                cells.append("no paired seed")
                continue
            per_seed = ", ".join(f"{d:+.1f}" for d in diffs)
            cells.append(
                f"{per_seed}; {diffs.mean():+.2f}; " + ("-" if np.isnan(t) else f"t {t:.2f}")
            )
        print(f"| {label(setting)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
