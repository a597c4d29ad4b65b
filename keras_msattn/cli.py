"""The `msattn` command line.

Each subcommand parses its arguments here and calls one function of the module
that owns the work; imports are local so `msattn --help` starts fast.
"""

import argparse
import os
import sys


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_set_argument(parser, metavar, help):
    # `--set a=1 b=2` and `--set a=1 --set b=2` both work: a list of lists.
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        nargs="+",
        default=[],
        metavar=metavar,
        help=help + "; several per --set, and --set repeatable",
    )


def _set_pairs(args):
    return [pair for group in args.sets for pair in group]


# --- msattn summary ---------------------------------------------------------


def _add_summary(subparsers):
    parser = subparsers.add_parser(
        "summary",
        help="Parameters, FLOPs, output shapes and training memory of a model, part by part.",
        description="Builds MultiScaleSegmenter(**model arguments) and prints its parameters, "
        "FLOPs and output shapes per part, and an estimate of its training memory. The model "
        "takes the segmenter's defaults (the paper's VOC model) except where --set says "
        "otherwise, e.g. --set backbone=mobilenet_v2 num_classes=11 fusion=None scales=(1.0,)",
    )
    _add_set_argument(
        parser, "NAME=VALUE", "MultiScaleSegmenter arguments (Python literals, else strings)"
    )
    parser.add_argument("--input-size", type=int, nargs=2, default=[321, 321], metavar=("H", "W"))
    parser.add_argument(
        "--batch-per-device",
        type=int,
        default=None,
        help="also print the training memory for this many images per device",
    )
    parser.set_defaults(run=_run_summary)


def _run_summary(args):
    from keras_msattn.config import model_defaults, parse_overrides
    from keras_msattn.segmenter import MultiScaleSegmenter
    from keras_msattn.summary import estimate_training_memory, summary_text

    overrides = parse_overrides(_set_pairs(args))
    unknown = sorted(set(overrides) - {"model"})
    if unknown:
        raise ValueError(
            f"--set {unknown[0]}=...: not a model argument; allowed: {', '.join(model_defaults())}"
        )
    model_args = {"num_classes": 21, **overrides.get("model", {})}
    if model_args.get("pyramid_pooling"):
        model_args.setdefault("input_shape", (*args.input_size, 3))
    model = MultiScaleSegmenter(**model_args)
    print(summary_text(model, tuple(args.input_size)))
    training_model = MultiScaleSegmenter.from_config(
        {**model.get_config(), "deep_supervision": True}
    )
    memory = estimate_training_memory(training_model, tuple(args.input_size))
    print(memory.format(args.batch_per_device))
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
    from keras_msattn.data.datasets import check_dataset_split, dataset_splits

    splits = [args.split] if args.split is not None else dataset_splits(args.dataset, args.data_dir)
    problems, examples = [], 0
    for split in splits:
        result = check_dataset_split(
            args.dataset, split, args.data_dir, num_classes=args.num_classes
        )
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


# --- msattn evaluate / predict ----------------------------------------------


def _crop(value):
    # "513" or "513x385" (HxW); "model" (the bare flag) means the model's fixed input size.
    if value == "model":
        return value
    parts = value.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes, default=0) < 1:
        raise argparse.ArgumentTypeError(f"expected a crop size like 513 or 513x385, got {value!r}")
    return (sizes[0], sizes[-1])


def _add_inference_options(parser):
    parser.add_argument(
        "--tta-scales",
        type=float,
        nargs="+",
        default=[1.0],
        help="multi-scale testing, e.g. 0.75 1.0 1.25 (softmax probabilities are averaged)",
    )
    parser.add_argument(
        "--tta-weights",
        type=float,
        nargs="+",
        default=None,
        help="one weight per --tta-scales scale for a weighted average, e.g. "
        "--tta-scales 1.0 2.0 --tta-weights 2 1 (default: equal)",
    )
    parser.add_argument("--flip", action="store_true", help="also average the flipped image")
    parser.add_argument(
        "--sliding-window",
        type=_crop,
        nargs="?",
        const="model",
        default=None,
        metavar="CROP",
        help="tile images with CROP windows (H or HxW; default: the model's fixed input size)",
    )


def _check_inference_options(args):
    """Fails fast, before any model or data is loaded, on --tta-* values that cannot work."""
    from keras_msattn.inference import check_tta_scales, check_tta_weights

    try:
        check_tta_weights(args.tta_weights, check_tta_scales(args.tta_scales))
    except ValueError as error:
        message = str(error).replace("`tta_weights`", "--tta-weights")
        raise ValueError(message.replace("`tta_scales`", "--tta-scales")) from None


def _add_evaluate(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="mIoU, pixel accuracy and per-class IoU of a .keras model on a dataset."
    )
    parser.add_argument("model", help="the .keras model file")
    parser.add_argument(
        "--dataset", required=True, help="voc2012, ade20k, tfds:NAME, folder or scale_digits"
    )
    parser.add_argument("--data-dir", default=None, help="the dataset root")
    parser.add_argument("--split", default=None, help="default: val (test for scale_digits)")
    _add_inference_options(parser)
    parser.add_argument("--max-images", type=int, default=None, help="score only the first N")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable, too large or badly labelled files (counted) instead of failing",
    )
    parser.add_argument(
        "--out", default=None, help="JSON file (default: MODEL_eval_<dataset>_<split>.json)"
    )
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args):
    from keras_msattn.evaluation import evaluate_saved_model, format_results

    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be a positive integer, got {args.max_images}")
    _check_inference_options(args)
    results, path = evaluate_saved_model(
        args.model,
        args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        out=args.out,
        tta_scales=tuple(args.tta_scales),
        tta_weights=args.tta_weights,
        flip=args.flip,
        sliding_window=args.sliding_window,
        max_images=args.max_images,
        skip_bad=args.skip_bad,
    )
    print(f"{args.dataset} {results['split']}: {args.model}")
    if args.skip_bad:
        skipped = results["num_skipped"]
        print(f"skipped {'an unknown number of' if skipped is None else skipped} bad file(s)")
    print(format_results(results))
    print(f"wrote {path}")
    return 0


def _add_predict(subparsers):
    parser = subparsers.add_parser(
        "predict", help="Segment image files: label, colour-mask, overlay and attention PNGs."
    )
    parser.add_argument("model", help="the .keras model file")
    parser.add_argument("images", nargs="+", help="image files (any size; JPEG, PNG, ...)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--class-names", default=None, help="text file, one class name a line")
    parser.add_argument(
        "--no-attention", action="store_true", help="skip the attention and recalibration figures"
    )
    _add_inference_options(parser)
    parser.set_defaults(run=_run_predict)


def _run_predict(args):
    from keras_msattn.prediction import predict_with_saved_model

    _check_inference_options(args)
    results = predict_with_saved_model(
        args.model,
        args.images,
        args.out,
        class_names_file=args.class_names,
        attention=not args.no_attention,
        tta_scales=tuple(args.tta_scales),
        tta_weights=args.tta_weights,
        flip=args.flip,
        sliding_window=args.sliding_window,
    )
    print(f"wrote {sum(len(r) for r in results)} files for {len(results)} image(s) to {args.out}")
    return 0


# --- msattn train -----------------------------------------------------------


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="Train from a recipe file; rerun the same command to resume.",
        description="Train from a recipe (recipes/*.py). Outputs: config.json, backup/, "
        "history.json, best.keras, model.keras, logs/ in --out. Rerunning the same "
        "command resumes from the last finished epoch.",
    )
    parser.add_argument("recipe", help="path of a recipe .py file")
    parser.add_argument("--variant", default=None, help="one of the recipe's VARIANTS")
    _add_set_argument(
        parser,
        "KEY=VALUE",
        "override TrainConfig fields (Python literals, else strings), model arguments "
        "as model.NAME (or NAME)",
    )
    parser.add_argument("--data-dir", default=None, help="dataset root (overrides the recipe)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--strategy",
        default="auto",
        choices=("auto", "one_device", "mirrored", "multi_worker", "tpu"),
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="mixed_float16 on GPU, mixed_bfloat16 elsewhere (logits and loss in float32)",
    )
    parser.set_defaults(run=_run_train)


def _run_train(args):
    from keras_msattn.training import TrainingDiverged, run_recipe

    try:
        run_recipe(
            args.recipe,
            variant=args.variant,
            sets=_set_pairs(args),
            out_dir=args.out,
            data_dir=args.data_dir,
            strategy=args.strategy,
            mixed_precision=args.mixed_precision,
        )
    except TrainingDiverged as error:
        print(f"msattn train: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"msattn train: interrupted. {_resume_hint(args.out)}", file=sys.stderr)
        return 130  # 128 + SIGINT, as the shell reports it
    return 0


def _resume_hint(out_dir):
    from keras_msattn.callbacks import restored_epoch

    try:
        done = restored_epoch(os.path.join(out_dir, "backup"))
    except Exception:  # a damaged backup: the rerun itself says what it finds
        done = None
    if done:
        return (
            f"{out_dir} holds the state after epoch {done}; rerunning the same command "
            f"resumes from epoch {done + 1}."
        )
    return f"No epoch had finished; rerunning the same command starts {out_dir} from the beginning."


# --- msattn export ----------------------------------------------------------


def _add_export(subparsers):
    from keras_msattn.export.command import add_export_arguments

    parser = subparsers.add_parser(
        "export",
        help="SavedModel (TF Serving) or LiteRT .tflite (quantized), with a verification report.",
    )
    add_export_arguments(parser)
    parser.set_defaults(run=_run_export)


def _run_export(args):
    from keras_msattn.export.command import run_export

    return run_export(args)


# --- msattn quickstart ------------------------------------------------------


def _add_quickstart(subparsers):
    parser = subparsers.add_parser(
        "quickstart",
        help="Train, score, export and report on the embedded ScaleDigits data, on a CPU.",
    )
    parser.add_argument("--out", default="quickstart", help="output folder (default ./quickstart)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of batch 8 (default 2800; fewer for a shorter run, more for a better model)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads for the latency")
    parser.set_defaults(run=_run_quickstart)


def _run_quickstart(args):
    from keras_msattn.quickstart import DEFAULT_STEPS, run_quickstart

    steps = DEFAULT_STEPS if args.steps is None else args.steps
    if steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {steps}")
    run_quickstart(args.out, steps=steps, seed=args.seed, threads=args.threads)
    return 0


# --- entry point ------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(
        prog="msattn", description="Multi-scale attention semantic segmentation."
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of a one-line message",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_summary(subparsers)
    _add_data(subparsers)
    _add_evaluate(subparsers)
    _add_predict(subparsers)
    _add_train(subparsers)
    _add_export(subparsers)
    _add_quickstart(subparsers)
    return parser


def _user_error(error):
    """The message for an expected failure, or None for a bug (which keeps its traceback)."""
    from keras_msattn.errors import UserError

    if isinstance(error, (UserError, ValueError, FileNotFoundError, FileExistsError)):
        return str(error)
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror or error}"
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(error, tf.errors.OpError):
        # A data pipeline stopped at a bad file: find it with the plain-Python checks.
        from keras_msattn.data.images import find_bad_file

        found = find_bad_file()
        return None if found is None else str(found)
    return None


def main(argv=None):
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    images = sys.modules.get("keras_msattn.data.images")
    if images is not None:  # only this command's splits may be blamed for its errors
        images.forget_watched()
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        # Every file is written whole or not at all, so nothing is left half done.
        print(
            f"msattn {args.command}: interrupted; no output was left half written.", file=sys.stderr
        )
        return 130
    except Exception as error:
        message = None if args.debug else _user_error(error)
        if message is None:
            raise
        print(f"msattn {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
