"""Verification of exported artifacts, written beside them as JSON and markdown.

For a LiteRT (`.tflite`) file: its size, inputs/outputs (with quantization),
the operator list (read with LiteRT's interpreter with its default delegates
off, so every node is a real operator, not an XNNPACK "DELEGATE"), whether any
operator would need the Flex delegate, argmax agreement and logit differences
against the Keras model on sample images, mIoU of both on a validation set when
given, and latency measured with `ai_edge_litert.interpreter.Interpreter`.
For a SavedModel: size, signatures, agreement, mIoU and TensorFlow latency.
"""

import collections
import os
import statistics
import time

import numpy as np

from keras_msattn import inference
from keras_msattn.inference import batch_logits, confusion_matrix
from keras_msattn.keras_internals import interpreter_operators

# Operators that only move data between float and int8: not "float compute".
_CONVERSION_OPS = {"QUANTIZE", "DEQUANTIZE"}


def report_paths(artifact_path):
    """`model.tflite` -> (`model.report.json`, `model.report.md`)."""
    stem = artifact_path[: -len(".tflite")] if artifact_path.endswith(".tflite") else artifact_path
    return f"{stem}.report.json", f"{stem}.report.md"


# --- LiteRT ---------------------------------------------------------------------


def _interpreter(path_or_bytes, num_threads=None, delegates=True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"num_threads": num_threads}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(path_or_bytes, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(path_or_bytes), **kwargs)
    else:
        interpreter = Interpreter(model_path=str(path_or_bytes), **kwargs)
    interpreter.allocate_tensors()
    return interpreter


def operators(path_or_bytes):
    """The operator nodes of a `.tflite` model: list of (name, operand dtypes)."""
    interpreter = _interpreter(path_or_bytes, delegates=False)
    return [
        (details["op_name"], [np.dtype(t).name for t in details["operand_types"]])
        for details in interpreter_operators(interpreter)
    ]


def op_summary(path_or_bytes):
    """Operator counts, Flex/custom operators, and operators computing in float."""
    nodes = operators(path_or_bytes)
    counts = collections.Counter(name for name, _ in nodes)
    flex = sorted(
        name for name in counts if name.startswith("Flex") or name not in _builtin_names()
    )
    float_ops = collections.Counter(
        name
        for name, types in nodes
        if name not in _CONVERSION_OPS and any(t.startswith("float") for t in types)
    )
    return {
        "ops": dict(sorted(counts.items())),
        "num_ops": len(nodes),
        "flex_ops": flex,
        "float_ops": dict(sorted(float_ops.items())),
    }


def _builtin_names():
    from ai_edge_litert import schema_py_generated as schema

    return {name for name in vars(schema.BuiltinOperator) if name.isupper()} - {"CUSTOM"}


def _tensor_info(details):
    scale, zero_point = details["quantization"]
    return {
        "name": details["name"],
        "shape": [int(d) for d in details["shape"]],
        "dtype": np.dtype(details["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


class LiteRTModel:
    """Runs a one-input, one-output segmentation `.tflite` on float 0..255 images.

    Quantized inputs are quantized with the tensor's scale and zero point;
    quantized outputs are dequantized. `predict` returns logits `(N, H, W, C)`
    (float32) or labels `(N, H, W)` (int32), whichever the model outputs.
    """

    def __init__(self, path_or_bytes, num_threads=None):
        self.interpreter = _interpreter(path_or_bytes, num_threads=num_threads)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"Expected a model with 1 input and 1 output; got {len(inputs)} and {len(outputs)}."
            )
        self.input, self.output = inputs[0], outputs[0]
        self.input_size = tuple(int(d) for d in self.input["shape"][1:3])
        self.outputs_labels = len(self.output["shape"]) == 3

    def _quantize(self, images):
        dtype = np.dtype(self.input["dtype"])
        if dtype == np.float32:
            return images.astype(np.float32)
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        values = np.round(images / scale + zero_point) if scale else images
        return np.clip(values, info.min, info.max).astype(dtype)

    def _dequantize(self, values):
        scale, zero_point = self.output["quantization"]
        if np.dtype(self.output["dtype"]) in (np.int8, np.uint8, np.int16) and scale:
            return (values.astype(np.float32) - zero_point) * scale
        return values

    def invoke(self, image):
        self.interpreter.set_tensor(self.input["index"], self._quantize(image[None]))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]))[0]

    def predict(self, images):
        return np.stack([self.invoke(image) for image in images])

    def latency_ms(self, image, runs=20, warmup=3):
        for _ in range(warmup):
            self.invoke(image)
        self.interpreter.set_tensor(self.input["index"], self._quantize(image[None]))
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append((time.perf_counter() - start) * 1000.0)
        return {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "mean_ms": statistics.fmean(times),
            "runs": runs,
            "warmup_runs": warmup,
        }


# --- comparison -----------------------------------------------------------------


def compare(artifact_outputs, keras_outputs):
    """Argmax agreement and (for logits) absolute differences."""
    keras_labels = keras_outputs.argmax(-1)
    if artifact_outputs.ndim == keras_outputs.ndim:
        difference = np.abs(artifact_outputs.astype(np.float32) - keras_outputs)
        return {
            "argmax_agreement": float((artifact_outputs.argmax(-1) == keras_labels).mean()),
            "max_abs_logit_diff": float(difference.max()),
            "mean_abs_logit_diff": float(difference.mean()),
        }
    return {
        "argmax_agreement": float((artifact_outputs == keras_labels).mean()),
        "max_abs_logit_diff": None,
        "mean_abs_logit_diff": None,
    }


def mean_iou(labels, predictions, num_classes, ignore_label=255):
    return inference.mean_iou(confusion_matrix(labels, predictions, num_classes, ignore_label))


def _as_labels(outputs):
    return outputs.argmax(-1) if outputs.ndim == 4 else outputs


def synthetic_images(size, count=4, seed=0):
    """Smooth random colour fields, for when no real images are given."""
    rng = np.random.default_rng(seed)
    height, width = size
    coarse = rng.uniform(0, 255, (count, 4, 4, 3)).astype(np.float32)
    import tensorflow as tf

    return tf.image.resize(coarse, (height, width), method="bilinear").numpy()


def verify_tflite(
    tflite_path,
    model=None,
    images=None,
    validation=None,
    num_threads=None,
    latency_runs=20,
    warmup_runs=3,
    ignore_label=255,
    extra=None,
):
    """Verification report (a dict) of a `.tflite` file.

    Args:
        tflite_path: the model file (or its bytes).
        model: the Keras model it came from, to compare against.
        images: float32 `(N, H, W, 3)` sample images at the model's input size.
        validation: `(images, labels)` at the input size; gives mIoU of both
            models, and its images are the sample images.
        num_threads: LiteRT interpreter threads for the latency measurement.
        extra: fields to put first in the report (quantization, source, ...).
    """
    runner = LiteRTModel(tflite_path, num_threads=num_threads)
    report = dict(extra or {})
    if isinstance(tflite_path, (bytes, bytearray)):
        report["size_bytes"] = len(tflite_path)
    else:
        report["size_bytes"] = os.path.getsize(tflite_path)
    report["input"] = _tensor_info(runner.input)
    report["output"] = _tensor_info(runner.output)
    report.update(op_summary(tflite_path))

    sample_source = "given images"
    if validation is not None:
        images, sample_source = validation[0], "validation images"
    elif images is None:
        images, sample_source = synthetic_images(runner.input_size), "synthetic images"
    images = np.asarray(images, np.float32)
    outputs = runner.predict(images)
    report["samples"] = {"count": int(len(images)), "source": sample_source}
    if model is not None:
        reference = batch_logits(model, images)
        report["agreement"] = compare(outputs, reference)
        if validation is not None:
            num_classes = reference.shape[-1]
            report["miou"] = {
                "artifact": mean_iou(validation[1], _as_labels(outputs), num_classes, ignore_label),
                "keras": mean_iou(validation[1], reference.argmax(-1), num_classes, ignore_label),
                "num_images": int(len(images)),
            }
    report["latency"] = {
        **runner.latency_ms(images[0], runs=latency_runs, warmup=warmup_runs),
        "num_threads": num_threads,
        "runtime": "ai_edge_litert.interpreter.Interpreter (default delegates: XNNPACK on CPU)",
    }
    return report


# --- SavedModel -----------------------------------------------------------------


def _folder_size(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def verify_saved_model(
    path,
    model=None,
    images=None,
    validation=None,
    latency_runs=10,
    warmup_runs=2,
    ignore_label=255,
    extra=None,
    images_source="given images",
):
    """Verification report of a SavedModel written by `export_saved_model`."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    serving = loaded.signatures["serving_default"]
    logits_fn = loaded.signatures["logits"]
    report = dict(extra or {})
    report["size_bytes"] = _folder_size(path)
    report["signatures"] = {
        key: {
            "inputs": {
                name: {"shape": spec.shape.as_list(), "dtype": spec.dtype.name}
                for name, spec in fn.structured_input_signature[1].items()
            },
            "outputs": {
                name: {"shape": spec.shape.as_list(), "dtype": spec.dtype.name}
                for name, spec in fn.structured_outputs.items()
            },
        }
        for key, fn in loaded.signatures.items()
    }
    sample_source = images_source
    if validation is not None:
        images, sample_source = validation[0], "validation images"
    elif images is None:
        spec = serving.structured_input_signature[1]["images"]
        size = [d if d is not None else 64 for d in spec.shape.as_list()[1:3]]
        images, sample_source = synthetic_images(size), "synthetic images"
    batch = tf.constant(np.clip(np.round(images), 0, 255).astype(np.uint8))
    served = serving(images=batch)
    logits = logits_fn(images=batch)["logits"].numpy()
    labels = served["labels"].numpy()
    report["samples"] = {"count": int(len(images)), "source": sample_source}
    report["labels_equal_argmax_logits"] = bool((labels == logits.argmax(-1)).all())
    if model is not None:
        reference = batch_logits(model, batch.numpy().astype(np.float32))
        report["agreement"] = compare(logits, reference)
        if validation is not None:
            num_classes = reference.shape[-1]
            report["miou"] = {
                "artifact": mean_iou(validation[1], labels, num_classes, ignore_label),
                "keras": mean_iou(validation[1], reference.argmax(-1), num_classes, ignore_label),
                "num_images": int(len(images)),
            }
    single = batch[:1]
    for _ in range(warmup_runs):
        serving(images=single)
    times = []
    for _ in range(latency_runs):
        start = time.perf_counter()
        serving(images=single)["labels"].numpy()
        times.append((time.perf_counter() - start) * 1000.0)
    report["latency"] = {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "mean_ms": statistics.fmean(times),
        "runs": latency_runs,
        "warmup_runs": warmup_runs,
        "runtime": "TensorFlow (tf.saved_model.load), batch 1",
    }
    return report


# --- writing --------------------------------------------------------------------


def _format(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_format(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(v) for v in value) or "-"
    return "-" if value is None else str(value)


def to_markdown(report, title):
    lines = [f"# {title}", "", "| field | value |", "|---|---|"]
    for key, value in report.items():
        if isinstance(value, dict) and key not in ("ops", "float_ops"):
            for sub_key, sub_value in value.items():
                lines.append(f"| {key}.{sub_key} | {_format(sub_value)} |")
        else:
            lines.append(f"| {key} | {_format(value)} |")
    return "\n".join(lines) + "\n"


def write_report(report, json_path, markdown_path, title):
    from keras_msattn import files

    files.write_json(json_path, report)
    files.write_text(markdown_path, to_markdown(report, title))
