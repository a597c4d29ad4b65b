"""`msattn export`: the command line of `keras_msattn.export`.

    msattn export MODEL.keras --format saved_model|tflite
        [--quantization none|float16|dynamic|int8|int8_full|qat]
        [--calibration DATASET [--data-dir DIR]] [--num-calibration N]
        [--input-size H W] [--output logits|labels] [--threads N] --out DIR

Calibration, QAT and validation images come from `keras_msattn.data`: the
training split (shuffled) for calibration, the training pipeline (random
scale, crop at the export size, flip) for QAT, the validation split for the
report's agreement and mIoU.
"""

import json
import os

from keras_msattn.export.tflite import OUTPUTS, QUANTIZATIONS

# `msattn train` writes this beside model.keras / best.keras, with "crop_size".
TRAINING_CONFIG = "config.json"


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
    parser.add_argument("--threads", type=int, default=None, help="LiteRT latency threads")
    parser.add_argument("--qat-steps", type=int, default=300)
    parser.add_argument("--qat-learning-rate", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=8, help="QAT batch size")
    parser.add_argument("--model-name", help="SavedModel folder name (default: the model's)")
    parser.add_argument("--version", type=int, default=1, help="SavedModel version folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a SavedModel version")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def recorded_crop_size(model_path):
    """The training crop recorded beside `model_path`, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), TRAINING_CONFIG)
    try:
        with open(path) as handle:
            crop = json.load(handle).get("crop_size")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(crop, int):
        return crop, crop
    if isinstance(crop, (list, tuple)) and len(crop) == 2:
        return int(crop[0]), int(crop[1])
    return None


def _check_arguments(args):
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"model file not found: {args.model}")
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


def run_export(args):
    _check_arguments(args)
    import keras

    import keras_msattn  # noqa: F401  (registers the model classes for loading)
    from keras_msattn.export import calibration
    from keras_msattn.export.saved_model import export_saved_model
    from keras_msattn.export.tflite import export_tflite, model_input_size

    model = keras.saving.load_model(args.model, compile=False)
    input_size = args.input_size
    if input_size is None and model_input_size(model) is None:
        input_size = recorded_crop_size(args.model)

    ignore_label = 255
    calibration_images = validation = qat_dataset = None
    if args.calibration:
        from keras_msattn.data.datasets import dataset_info
        from keras_msattn.export.tflite import final_output

        name, data_dir = args.calibration, args.data_dir
        # A folder dataset without classes.txt takes its class count from the model.
        options = {}
        if name == "folder":
            options["num_classes"] = int(final_output(model.output).shape[-1])
        ignore_label = dataset_info(name, data_dir=data_dir, **options).ignore_label
        train_split, validation_split = calibration.dataset_splits(name, data_dir, **options)
        calibration_images = calibration.load_split(
            name, train_split, data_dir, shuffle=True, **options
        )
        if validation_split is not None and args.num_validation > 0:
            validation = calibration.load_split(name, validation_split, data_dir, **options)
        if args.quantization == "qat":
            from keras_msattn.data.augment import train_pipeline
            from keras_msattn.export.tflite import resolve_input_size

            qat_dataset = train_pipeline(
                calibration.load_split(name, train_split, data_dir, shuffle=True, **options),
                crop_size=resolve_input_size(model, input_size),
                batch_size=args.batch_size,
                ignore_label=ignore_label,
                seed=0,
            )

    if args.format == "saved_model":
        result = export_saved_model(
            model,
            args.out,
            model_name=args.model_name,
            version=args.version,
            input_size=input_size,
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
        )
    print(_summary(result))
    return 0


def _summary(result):
    lines = [f"wrote {result['path']} ({result['size_bytes'] / 1e6:.2f} MB)"]
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
