"""TF Model Garden's MobileNetV2-DeepLabV3 as LiteRT files: the reference for the edge model.

Runs in a virtual environment of its own, never the package's (Model Garden
pins its own TensorFlow):

    python -m venv /tmp/mg
    /tmp/mg/bin/pip install "tf-models-official==2.20.0" "tensorflow-cpu==2.20.*"
    /tmp/mg/bin/python benchmarks/model_garden_export.py --out /tmp/model_garden
    python benchmarks/edge_latency.py --reference /tmp/model_garden

The model is Model Garden's `mnv2_deeplabv3_pascal` experiment (MobileNetV2
x1.0, output stride 16, ASPP decoder, 21 classes), built with random weights
at 512x512 by `factory.build_segmentation_model`. Two outputs, each in float32
and int8 (post-training, `TFLITE_BUILTINS_INT8`, 8 random calibration images,
float32 input and output as the package's exports): its own stride-16 logits
(`model_garden_os16_*`), and those logits bilinearly resized to 512x512
(`model_garden_512_*`), the package's full-resolution output. Model Garden's
model expects normalized images; the package's models normalize inside, one
cheap op more.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the .tflite files")
    parser.add_argument("--size", type=int, default=512)
    return parser.parse_args(argv)


def build(size):
    import tensorflow as tf
    import tf_keras
    from official.core import exp_factory
    from official.vision import registry_imports  # noqa: F401 (registers the experiments)
    from official.vision.modeling import factory

    config = exp_factory.get_exp_config("mnv2_deeplabv3_pascal")
    config.task.model.norm_activation.use_sync_bn = False
    tf.keras.utils.set_random_seed(0)
    input_specs = tf_keras.layers.InputSpec(shape=[1, size, size, 3])
    return factory.build_segmentation_model(input_specs, config.task.model)


def convert(model, size, full_resolution, quantization):
    import numpy as np
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    def run(images):
        logits = model(images, training=False)["logits"]
        if full_resolution:
            logits = tf.image.resize(logits, (size, size), method="bilinear")
        return logits

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [run.get_concrete_function()], model
    )
    if quantization == "int8":
        rng = np.random.default_rng(0)

        def representative_dataset():
            for _ in range(8):
                yield [rng.uniform(-1, 1, (1, size, size, 3)).astype("float32")]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def main(argv=None):
    args = parse_args(argv)
    try:
        import official  # noqa: F401
    except ImportError:
        sys.exit(
            "error: Model Garden is not installed in this Python. Run this script with a "
            "virtual environment that has tf-models-official (see its docstring)."
        )
    os.makedirs(args.out, exist_ok=True)
    model = build(args.size)
    for stem, full_resolution in (("model_garden_os16", False), ("model_garden_512", True)):
        for quantization in ("none", "int8"):
            path = os.path.join(args.out, f"{stem}_{quantization}.tflite")
            with open(path, "wb") as file:
                file.write(convert(model, args.size, full_resolution, quantization))
            print(f"wrote {path}: {os.path.getsize(path):,} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
