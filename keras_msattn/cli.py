"""The `msattn` command line.

Each subcommand parses its arguments here and calls one function of the module
that owns the work; imports are local so `msattn --help` starts fast.
"""

import argparse
import os
import sys


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --- msattn summary ---------------------------------------------------------


def _add_summary(subparsers):
    parser = subparsers.add_parser(
        "summary", help="Parameters, FLOPs and output shapes of a model, part by part."
    )
    parser.add_argument("--backbone", default="vgg16_largefov")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument(
        "--fusion",
        default="attention",
        help="attention, attention_to_scale, average, max, or none (single scale)",
    )
    parser.add_argument("--input-size", type=int, nargs=2, default=[321, 321], metavar=("H", "W"))
    parser.add_argument("--no-hypercolumn", action="store_true")
    parser.add_argument(
        "--scale-dilations", default="auto", help="'auto', 'none', or comma-separated integers"
    )
    parser.add_argument("--recalibration", default="multiply", help="multiply, add or none")
    parser.add_argument("--pyramid-pooling", action="store_true")
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--backbone-width", type=float, default=1.0)
    parser.add_argument("--head-channels", type=int, default=None)
    parser.set_defaults(run=_run_summary)


def _none_or(value):
    return None if value is None or str(value).lower() == "none" else value


def _parse_dilations(value):
    if value == "auto" or _none_or(value) is None:
        return _none_or(value)
    return tuple(int(v) for v in value.split(","))


def _run_summary(args):
    from keras_msattn.segmenter import MultiScaleSegmenter
    from keras_msattn.summary import summary_text

    model = MultiScaleSegmenter(
        backbone=args.backbone,
        num_classes=args.num_classes,
        scales=tuple(args.scales),
        fusion=_none_or(args.fusion),
        hypercolumn=not args.no_hypercolumn,
        scale_dilations=_parse_dilations(args.scale_dilations),
        recalibration=_none_or(args.recalibration),
        pyramid_pooling=args.pyramid_pooling,
        output_stride=args.output_stride,
        backbone_width=args.backbone_width,
        head_channels=args.head_channels,
        input_shape=(*args.input_size, 3) if args.pyramid_pooling else (None, None, 3),
    )
    print(summary_text(model, tuple(args.input_size)))
    return 0


# --- msattn data check ------------------------------------------------------


def _add_data(subparsers):
    parser = subparsers.add_parser("data", help="Dataset tools.")
    actions = parser.add_subparsers(dest="data_command", required=True)
    check = actions.add_parser(
        "check", help="Find every missing or bad file of a dataset split up front."
    )
    check.add_argument(
        "--dataset", required=True, help="voc2012, ade20k, tfds:NAME, folder or scale_digits"
    )
    check.add_argument("--data-dir", default=None, help="the dataset root")
    check.add_argument(
        "--split", default=None, help="the split to check (default: every split found)"
    )
    check.add_argument(
        "--num-classes", type=int, default=None, help="class count for the label-range check"
    )
    check.set_defaults(run=_run_data_check)


def _run_data_check(args):
    from keras_msattn.data import folder
    from keras_msattn.data.check import check_split
    from keras_msattn.data.datasets import dataset_info

    if args.split is not None:
        splits = [args.split]
    elif args.dataset == "folder":
        splits = list(folder.available_splits(args.data_dir)) or ["all"]
    else:
        splits = list(dataset_info(args.dataset).splits)
    problems, examples = [], 0
    for split in splits:
        result = check_split(args.dataset, split, args.data_dir, num_classes=args.num_classes)
        problems += result.problems
        examples += result.num_examples
    for path, problem in problems:
        print(f"{path}: {problem}")
    where = f"{args.dataset} ({', '.join(str(s) for s in splits)})"
    if problems:
        print(f"{len(problems)} problem(s) in {examples} examples of {where}")
        return 1
    print(f"OK: {examples} examples of {where}, no problems found")
    return 0


# --- entry point ------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(
        prog="msattn", description="Multi-scale attention semantic segmentation."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_summary(subparsers)
    _add_data(subparsers)
    return parser


def main(argv=None):
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"msattn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
