"""`msattn export`: the command line of `keras_msattn.export`.

    msattn export MODEL.keras --format saved_model|tflite
        [--quantization none|float16|dynamic|int8|int8_full|qat]
        [--calibration DATASET [--data-dir DIR]] [--num-calibration N]
        [--input-size H W] [--output logits|labels] [--per-tensor] [--keep-names]
        [--threads N] --out DIR

Calibration, QAT and validation images come from `keras_msattn.data`: the
training split (shuffled) for calibration, the training pipeline for QAT (crops
at the export size, with the random scaling and flips the model was trained
with, as recorded in its `config.json`), the validation split for the report's
agreement and mIoU.
"""

import json
import os

from keras_msattn.export.tflite import OUTPUTS, QUANTIZATIONS

# `msattn train` writes this beside model.keras / best.keras; `msattn quickstart`
# keeps it in the `training/` folder beside its model.keras.
TRAINING_CONFIG = "config.json"
TRAINING_CONFIG_PLACES = ("", "training")
# QAT augmentation when no training config is found: train_pipeline's own.
DEFAULT_AUGMENTATION = {"scale_range": (0.5, 2.0), "flip": True}


def add_export_arguments(parser):
    parser.add_argument("model", help="a .keras model file")
    parser.add_argument("--format", required=True, choices=("saved_model", "tflite"))
    parser.add_argument("--quantization", default="none", choices=QUANTIZATIONS, help="LiteRT only")
    parser.add_argument(
        "--calibration",
        metavar="DATASET",
        help="voc2012, ade20k, tfds:NAME, folder or scale_digits: calibration (int8, "
        "int8_full), fine-tuning (qat) and validation images",
    )
    parser.add_argument("--data-dir", help="root folder of the --calibration dataset")
    parser.add_argument("--num-calibration", type=int, default=100, metavar="N")
    parser.add_argument(
        "--num-validation",
        type=int,
        default=50,
        metavar="N",
        help="validation images for the report's agreement and mIoU (0: none)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="fixed input size (default: the model's own, else the recorded training crop)",
    )
    parser.add_argument("--output", default="logits", choices=OUTPUTS, help="LiteRT only")
    parser.add_argument(
        "--per-tensor",
        action="store_true",
        help="int8 / int8_full: one weight scale per tensor, not per output channel "
        "(a smaller file; check the report's agreement)",
    )
    parser.add_argument(
        "--keep-names", action="store_true", help="LiteRT: keep tensor names in the file"
    )
    parser.add_argument("--threads", type=int, default=None, help="LiteRT latency threads")
    parser.add_argument("--qat-steps", type=int, default=300)
    parser.add_argument("--qat-learning-rate", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=8, help="QAT batch size")
    parser.add_argument("--model-name", help="SavedModel folder name (default: the model's)")
    parser.add_argument("--version", type=int, default=1, help="SavedModel version folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a SavedModel version")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def recorded_training_config(model_path):
    """(path, dict) of the training config recorded with `model_path`, or (None, {})."""
    folder = os.path.dirname(os.path.abspath(model_path))
    for place in TRAINING_CONFIG_PLACES:
        path = os.path.join(folder, place, TRAINING_CONFIG)
        try:
            with open(path) as handle:
                config = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            return path, config
    return None, {}


def recorded_crop_size(model_path):
    """The training crop recorded with `model_path`, or None."""
    crop = recorded_training_config(model_path)[1].get("crop_size")
    if isinstance(crop, int):
        return crop, crop
    if isinstance(crop, (list, tuple)) and len(crop) == 2:
        return int(crop[0]), int(crop[1])
    return None


def recorded_augmentation(model_path):
    """The random scale range and flips the model was trained with (train_pipeline's
    defaults when nothing is recorded), and where they came from."""
    path, config = recorded_training_config(model_path)
    scale_range, flip = config.get("scale_range"), config.get("flip")
    valid_range = (
        isinstance(scale_range, (list, tuple))
        and len(scale_range) == 2
        and all(isinstance(v, (int, float)) and v > 0 for v in scale_range)
    )
    if not (valid_range and isinstance(flip, bool)):
        why = f"{path} has no usable scale_range and flip" if path else "no training config.json"
        return dict(DEFAULT_AUGMENTATION), f"train_pipeline defaults ({why})"
    return {"scale_range": tuple(float(v) for v in scale_range), "flip": flip}, path


def _check_arguments(args):
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"model file not found: {args.model}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(
            f"--out {args.out}: is a file; --out names the folder the export is written "
            "into (it is created if need be)"
        )
    if args.format == "saved_model" and args.quantization != "none":
        raise ValueError("--quantization applies to --format tflite only.")
    if args.format == "saved_model" and args.output != "logits":
        raise ValueError(
            "--output applies to --format tflite only (a SavedModel serves labels and logits)."
        )
    if args.quantization in ("int8", "int8_full", "qat") and not args.calibration:
        raise ValueError(
            f"--quantization {args.quantization} needs --calibration DATASET: full-integer "
            "ranges come from real images."
        )
    for name in ("num_calibration", "qat_steps", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1.")
    if args.num_validation < 0:
        raise ValueError("--num-validation must be >= 0.")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1.")
    if args.per_tensor and args.quantization not in ("int8", "int8_full"):
        raise ValueError("--per-tensor applies to --quantization int8 and int8_full only.")


def run_export(args):
    _check_arguments(args)

    import keras_msattn  # noqa: F401  (registers the model classes for loading)
    from keras_msattn.export import calibration
    from keras_msattn.export.saved_model import export_saved_model
    from keras_msattn.export.tflite import export_tflite
    from keras_msattn.inference import load_segmenter, model_input_size, model_num_classes

    model = load_segmenter(args.model, compile=False)
    # LiteRT needs one size: the model's own, else the recorded training crop. A
    # SavedModel stays dynamic unless --input-size is given; its report then
    # compares at that same default size.
    input_size = args.input_size
    if input_size is None and model_input_size(model) is None:
        input_size = recorded_crop_size(args.model)

    ignore_label = 255
    calibration_images = validation = qat_dataset = None
    if args.calibration:
        from keras_msattn.data.datasets import dataset_info

        name, data_dir = args.calibration, args.data_dir
        # A folder dataset without classes.txt takes its class count from the model.
        options = {"num_classes": model_num_classes(model)}
        ignore_label = dataset_info(name, data_dir, **options).ignore_label
        train_split, validation_split = calibration.dataset_splits(name, data_dir, **options)
        calibration_images = calibration.load_split(
            name, train_split, data_dir, shuffle=True, **options
        )
        if validation_split is not None and args.num_validation > 0:
            validation = calibration.load_split(name, validation_split, data_dir, **options)
        if args.quantization == "qat":
            from keras_msattn.data.augment import train_pipeline
            from keras_msattn.export.tflite import resolve_input_size

            # Fine-tune on the distribution the model was trained on: other
            # augmentation (e.g. flips for digits) costs accuracy QAT must win back.
            augmentation, source = recorded_augmentation(args.model)
            print(
                f"QAT batches: random scale {augmentation['scale_range']}, flips "
                f"{'on' if augmentation['flip'] else 'off'} (from {source})",
                flush=True,
            )
            qat_dataset = train_pipeline(
                calibration.load_split(name, train_split, data_dir, shuffle=True, **options),
                crop_size=resolve_input_size(model, input_size),
                batch_size=args.batch_size,
                ignore_label=ignore_label,
                seed=0,
                **augmentation,
            )

    if args.format == "saved_model":
        result = export_saved_model(
            model,
            args.out,
            model_name=args.model_name,
            version=args.version,
            input_size=args.input_size,
            compare_size=input_size,
            validation_data=validation,
            num_validation=args.num_validation,
            overwrite=args.overwrite,
            ignore_label=ignore_label,
        )
    else:
        stem = os.path.splitext(os.path.basename(args.model))[0]
        suffix = "" if args.output == "logits" else "_labels"
        out_path = os.path.join(args.out, f"{stem}_{args.quantization}{suffix}.tflite")
        result = export_tflite(
            model,
            out_path,
            quantization=args.quantization,
            input_size=input_size,
            output=args.output,
            calibration_images=calibration_images,
            num_calibration=args.num_calibration,
            qat_dataset=qat_dataset,
            qat_steps=args.qat_steps,
            qat_learning_rate=args.qat_learning_rate,
            qat_batch_size=args.batch_size,
            validation_data=validation,
            num_validation=args.num_validation,
            num_threads=args.threads,
            ignore_label=ignore_label,
            verbose=True,
            per_channel=not args.per_tensor,
            strip_names=not args.keep_names,
        )
    print(_summary(result))
    return 0


def _summary(result):
    lines = [f"wrote {result['path']} ({result['size_bytes'] / 1e6:.2f} MB)"]
    if result.get("format") == "saved_model":
        declared = result.get("input_size")
        signature = "x".join(map(str, declared)) if declared else "any HxW (dynamic)"
        height, width = result["compared_at"]
        lines.append(
            f"  signatures: uint8 images of {signature}; checked at {height}x{width} on "
            f"{result['samples']['count']} {result['samples']['source']}"
        )
    agreement = result.get("agreement")
    if agreement:
        line = f"  argmax agreement with Keras: {agreement['argmax_agreement']:.4f}"
        if agreement.get("max_abs_logit_diff") is not None:
            line += f", max |logit diff| {agreement['max_abs_logit_diff']:.4g}"
        lines.append(line)
    if "miou" in result:
        miou = result["miou"]
        lines.append(f"  mIoU: artifact {miou['artifact']:.4f}, Keras {miou['keras']:.4f}")
    latency = result["latency"]
    lines.append(f"  latency: median {latency['median_ms']:.2f} ms ({latency['runtime']})")
    if result.get("float_ops") and result.get("quantization") in ("int8", "qat"):
        lines.append(f"  operators left in float: {result['float_ops']}")
    return "\n".join(lines)
