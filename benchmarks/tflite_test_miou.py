"""Test-set mIoU of `.tflite` files against their Keras model, with a paired bootstrap.

    python benchmarks/tflite_test_miou.py quickstart/model.keras \
        int8=bench/tflite/model_int8.tflite qat=bench/tflite/model_qat.tflite

Scores the Keras model and every file on the ScaleDigits `test` split (all 500
images by default) at the files' input size. The drop is Keras mIoU minus the
file's mIoU, in points; its 95% interval comes from resampling the images
(paired: the same resample for the model and the file) 1,000 times.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="the .keras model the files were exported from")
    parser.add_argument("files", nargs="+", metavar="NAME=PATH")
    parser.add_argument("--images", type=int, default=500, help="first N test images")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    for path in [args.model] + [item.partition("=")[2] for item in args.files]:
        if not os.path.isfile(path):
            parser.error(f"no such file: {path!r} (files are given as NAME=PATH)")
    return args


def per_image_confusion(labels, predictions, num_classes, ignore_label=255):
    """(N, C, C) confusion matrices, one per image."""
    from keras_msattn.inference import confusion_matrix

    return np.stack(
        [
            confusion_matrix(label, prediction, num_classes, ignore_label)
            for label, prediction in zip(labels, predictions, strict=True)
        ]
    )


def main(argv=None):
    args = parse_args(argv)
    import keras

    import keras_msattn  # noqa: F401  (registers the model classes)
    from keras_msattn.export import calibration, report
    from keras_msattn.inference import batch_logits, mean_iou

    files = dict(item.split("=", 1) for item in args.files)
    runners = {name: report.LiteRTModel(path) for name, path in files.items()}
    sizes = {runner.input_size for runner in runners.values()}
    if len(sizes) != 1:
        raise SystemExit(f"the files have different input sizes: {sorted(sizes)}")
    size = sizes.pop()
    images, labels = calibration.labelled(
        calibration.load_split("scale_digits", "test"), size, args.images
    )
    model = keras.saving.load_model(args.model, compile=False)
    keras_predictions = batch_logits(model, images).argmax(-1)
    num_classes = int(batch_logits(model, images[:1]).shape[-1])
    reference = per_image_confusion(labels, keras_predictions, num_classes)
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, len(images), len(images)) for _ in range(args.resamples)]
    print(f"ScaleDigits test, {len(images)} images at {size[0]}x{size[1]}")
    print(f"Keras mIoU {mean_iou(reference.sum(0)):.4f}")
    print("| file | mIoU | drop (points) | 95% interval of the drop | argmax agreement |")
    print("|---|---|---|---|---|")
    for name, runner in runners.items():
        outputs = runner.predict(images)
        predictions = outputs if runner.outputs_labels else outputs.argmax(-1)
        confusion = per_image_confusion(labels, predictions, num_classes)
        drops = [
            100 * (mean_iou(reference[index].sum(0)) - mean_iou(confusion[index].sum(0)))
            for index in samples
        ]
        low, high = np.percentile(drops, [2.5, 97.5])
        drop = 100 * (mean_iou(reference.sum(0)) - mean_iou(confusion.sum(0)))
        agreement = float((predictions == keras_predictions).mean())
        print(
            f"| `{name}` | {mean_iou(confusion.sum(0)):.4f} | {drop:.2f} | {low:.2f} to {high:.2f} "
            f"| {100 * agreement:.2f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
