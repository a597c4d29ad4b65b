"""Export to LiteRT (`.tflite`) with builtin operators only.

Every conversion traces the model at one fixed (1, H, W, 3) float32 input and
converts the traced function with
`supported_ops = [TFLITE_BUILTINS]` (`[TFLITE_BUILTINS_INT8]` for `int8_full`):
never `SELECT_TF_OPS`, so a model that would need the Flex delegate (absent on
edge runtimes) fails here with the operators named, instead of on the device.

Quantization:
    none       float32.
    float16    float16 weights, float32 compute where the device has no fp16.
    dynamic    int8 weights, activations quantized on the fly (no data needed).
    int8       full-integer operators, calibrated on representative images;
               float32 input and output (operators without an int8 kernel
               may stay float).
    int8_full  int8 operators only, uint8 input (raw pixels) and int8 logits.
    qat        quantization-aware fine-tuning (`keras_msattn.export.qat`), then
               int8 conversion that keeps the learned ranges; float32 I/O.

int8 and int8_full quantize weights per output channel by default;
`per_channel=False` uses one scale per tensor, which saves a float32 scale per
channel and tensor use (a sixth of the quickstart model's int8 file). Every
file is rewritten compactly (`compact`): equal vectors stored once (per-channel
zero points are all zeros), tensors without data sharing the empty buffer, and
tensor names stripped unless kept (LiteRT never reads them).
"""

import os
import re
import warnings

import flatbuffers
import numpy as np
import tensorflow as tf

from keras_msattn import files
from keras_msattn.export import calibration, report
from keras_msattn.inference import (
    batch_logits,
    check_input_size,
    final_output,
    model_input_size,
)
from keras_msattn.keras_internals import disable_per_channel_quantization

QUANTIZATIONS = ("none", "float16", "dynamic", "int8", "int8_full", "qat")
OUTPUTS = ("logits", "labels")
NEEDS_IMAGES = ("int8", "int8_full", "qat")
PER_TENSOR_OK = ("int8", "int8_full")


class UnsupportedOpsError(ValueError):
    """The model uses TensorFlow operators that LiteRT has no builtin kernel for."""

    def __init__(self, ops, locations=()):
        self.ops = list(ops)
        self.locations = list(locations)
        where = f" (at {', '.join(self.locations[:5])})" if self.locations else ""
        super().__init__(
            f"The model needs TensorFlow operator(s) {', '.join(self.ops)}{where} that are not "
            "LiteRT builtins. They would need the Flex delegate (SELECT_TF_OPS), which edge "
            "runtimes do not ship; rewrite those layers with operators LiteRT supports."
        )


# --- input size -----------------------------------------------------------------


def resolve_input_size(model, input_size=None):
    """The export (H, W): `input_size`, else the model's fixed input size."""
    if input_size is None:
        input_size = model_input_size(model)
        if input_size is None:
            raise ValueError(
                "`input_size` is required: this model takes any image size, and a LiteRT "
                "model has one fixed size (pass e.g. the training crop, input_size=(513, 513) in Python, --input-size 513 513 on the command line)."
            )
    try:
        height, width = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"`input_size` must be (height, width); got {input_size!r}.") from None
    if height < 1 or width < 1:
        raise ValueError(f"`input_size` must be positive; got {input_size!r}.")
    check_input_size(model, height, width)
    return height, width


# --- the graph that gets converted ----------------------------------------------


def inference_function(model, output="logits"):
    """images float32 (B, H, W, 3), 0..255 -> logits (B, H, W, C) or labels (B, H, W)."""
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {OUTPUTS}; got {output!r}.")

    def run(images):
        logits = final_output(model(images, training=False))
        if output == "labels":
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.cast(logits, tf.float32)

    return run


def _unsupported_ops(error):
    """Operator names a converter error complains about (not LiteRT builtins)."""
    text = str(error)
    names = set()
    for item in getattr(error, "errors", None) or []:
        name = getattr(getattr(item, "operator", None), "name", "")
        # "tf.X" is a TensorFlow operator without a builtin; "tfl.X" is a builtin
        # the converter failed on for another reason (e.g. quantization).
        if name.startswith("tf."):
            names.add(name.removeprefix("tf."))
    names.update(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
    for line in re.findall(r"(?:Flex|Custom|Select TF) ops: ([^\n]+)", text):
        names.update(n.strip() for n in line.split(",") if n.strip())
    return sorted(names)


def convert(
    model,
    input_size,
    quantization="none",
    output="logits",
    representative_images=None,
    per_channel=True,
    strip_names=True,
):
    """The `.tflite` bytes of `model` at a fixed (1, H, W, 3) float32 input.

    Args:
        representative_images: float32 (N, H, W, 3) images for int8, int8_full
            and qat (the ranges the fake quants did not learn).
        per_channel: int8 weight scales per output channel (default) or, if
            False, per tensor (int8 and int8_full only).
        strip_names: drop tensor and subgraph names from the file.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}; got {quantization!r}.")
    if quantization in NEEDS_IMAGES and representative_images is None:
        raise ValueError(f"quantization={quantization!r} needs calibration images.")
    _check_per_channel(quantization, per_channel)
    height, width = input_size
    signature = tf.TensorSpec((1, height, width, 3), tf.float32, name="images")
    function = tf.function(inference_function(model, output), input_signature=[signature])
    concrete = function.get_concrete_function()
    # With the tf.function as its trackable object the converter freezes the
    # traced graph directly: several times faster than a SavedModel round trip.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization in NEEDS_IMAGES:
        samples = np.asarray(representative_images, np.float32)

        def representative_dataset():
            for image in samples:
                yield [image[None]]

        converter.representative_dataset = representative_dataset
    if not per_channel:
        disable_per_channel_quantization(converter)
    if quantization == "int8_full":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        if output == "logits":
            converter.inference_output_type = tf.int8
    try:
        with warnings.catch_warnings():
            # Raised for every int8 graph with a float input; nothing to act on.
            warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
            flatbuffer = converter.convert()
    except Exception as error:  # the converter raises ConverterError and others
        ops = _unsupported_ops(error)
        if ops:
            locations = [op.name for op in concrete.graph.get_operations() if op.type in ops]
            raise UnsupportedOpsError(ops, locations) from error
        raise
    return compact(flatbuffer, strip_names)


class _SharingBuilder(flatbuffers.Builder):
    """A flatbuffers builder that writes each distinct numpy vector once.

    Flatbuffer tables point to vectors by offset, so tables may share one: the
    all-zero zero points of per-channel int8 tensors, equal shapes and scales.
    """

    def __init__(self, initial_size):
        super().__init__(initial_size)
        self.written = {}

    def CreateNumpyVector(self, x):  # noqa: N802 (the flatbuffers API's name)
        key = (x.dtype.str, x.tobytes())
        if key not in self.written:
            self.written[key] = super().CreateNumpyVector(x)
        return self.written[key]


def _share_empty_buffer(model):
    """Points every tensor without data to buffer 0 (the schema's empty sentinel)
    and drops the empty buffers the converter gives each such tensor."""
    if model.buffers[0].data is not None and len(model.buffers[0].data):
        return
    used = {0}
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            data = model.buffers[tensor.buffer].data
            if (data is None or not len(data)) and not tensor.isVariable:
                tensor.buffer = 0
            used.add(tensor.buffer)
    for entry in model.metadata or []:
        used.add(entry.buffer)
    kept = sorted(used)
    new_index = {old: new for new, old in enumerate(kept)}
    model.buffers = [model.buffers[old] for old in kept]
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            tensor.buffer = new_index[tensor.buffer]
    for entry in model.metadata or []:
        entry.buffer = new_index[entry.buffer]


def compact(flatbuffer, strip_names=True):
    """The same LiteRT model in fewer bytes: each distinct vector stored once,
    tensors without data sharing the empty buffer, and (`strip_names`) no tensor
    or subgraph names, which LiteRT never reads. Stripping also drops signature
    defs, which refer to tensors by name; `convert` writes none."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    if strip_names:
        flatbuffer_utils.strip_strings(model)
    _share_empty_buffer(model)
    builder = _SharingBuilder(len(flatbuffer))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _check_per_channel(quantization, per_channel):
    if not per_channel and quantization not in PER_TENSOR_OK:
        raise ValueError(
            f"Per-tensor weights (per_channel=False) apply to {PER_TENSOR_OK} only; got "
            f"quantization={quantization!r}."
        )


# --- export ---------------------------------------------------------------------


def export_tflite(
    model,
    out_path,
    quantization="none",
    input_size=None,
    output="logits",
    calibration_images=None,
    num_calibration=100,
    qat_dataset=None,
    qat_steps=300,
    qat_learning_rate=1e-5,
    qat_batch_size=8,
    validation_data=None,
    num_validation=50,
    sample_images=None,
    num_threads=None,
    ignore_label=255,
    verbose=False,
    per_channel=True,
    strip_names=True,
):
    """Converts `model` to a LiteRT file and writes its verification report beside it.

    Args:
        model: a Keras segmentation model (raw RGB 0..255 in, logits out, or a
            deep-supervision dict whose "final" entry is exported).
        out_path: the `.tflite` path. `<stem>.report.json` and `.report.md`
            are written beside it. Nothing is left at these paths on failure.
        quantization: one of `QUANTIZATIONS` (see the module docstring).
        input_size: (H, W) fixed at export; default the model's fixed input size.
        output: "logits" (default; GPU delegates lack ARG_MAX) or "labels"
            (an int32 argmax head).
        calibration_images: images for int8 / int8_full (required there) and
            for qat (default: the images of `qat_dataset`). Array(s) or a
            tf.data.Dataset of images or (image, label) pairs; fitted to the size.
        num_calibration: how many calibration images to use.
        qat_dataset: (image, label) training examples for quantization-aware
            fine-tuning (required for qat); batched or not, fitted to the size.
        qat_steps, qat_learning_rate, qat_batch_size: the fine-tuning schedule
            (Adam; the loss is the segmentation cross-entropy on the final
            logits). A dataset already batched at the export size keeps its
            batches.
        validation_data: (image, label) examples; the report then has mIoU of
            the artifact and of the Keras model, and compares on these images.
        num_validation: how many validation examples to use.
        sample_images: images to compare on when no validation data is given.
        num_threads: LiteRT threads for the latency measurement.
        per_channel: int8 / int8_full weight scales per output channel (default)
            or per tensor (smaller file; check the report's agreement).
        strip_names: drop tensor names from the file (default).

    Returns:
        The report (a dict; "path" is the written file).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}; got {quantization!r}.")
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {OUTPUTS}; got {output!r}.")
    if num_calibration < 1:
        raise ValueError(f"`num_calibration` must be >= 1; got {num_calibration}.")
    _check_per_channel(quantization, per_channel)
    if quantization == "qat" and qat_dataset is None:
        raise ValueError(
            "quantization='qat' needs `qat_dataset`: (image, label) training examples to "
            "fine-tune on (on the command line: --calibration DATASET)."
        )
    if quantization in NEEDS_IMAGES and calibration_images is None and qat_dataset is None:
        raise ValueError(
            f"quantization={quantization!r} needs calibration images (`calibration_images`; on "
            "the command line --calibration DATASET): full-integer ranges come from real data."
        )
    out_path = os.fspath(out_path)
    if os.path.isdir(out_path):
        raise ValueError(f"`out_path` {out_path!r} is a folder; give a .tflite file path.")
    size = resolve_input_size(model, input_size)

    representative = None
    if quantization in NEEDS_IMAGES:
        source = calibration_images if calibration_images is not None else qat_dataset
        representative = calibration.images(source, size, num_calibration)
    validation = None
    if validation_data is not None:
        validation = calibration.labelled(validation_data, size, num_validation)
    if sample_images is not None:
        sample_images = calibration.images(sample_images, size)

    converted_model = model
    details = {
        "quantization": quantization,
        "output": output,
        "input_size": list(size),
        "tensor_names": "stripped" if strip_names else "kept",
    }
    if quantization in PER_TENSOR_OK:
        details["weight_scales"] = "per channel" if per_channel else "per tensor"
    if quantization == "qat":
        from keras_msattn.export import qat

        converted_model, history = qat.quantization_aware_model(
            model,
            size,
            calibration_images=representative,
            dataset=qat_dataset,
            steps=qat_steps,
            learning_rate=qat_learning_rate,
            batch_size=qat_batch_size,
            ignore_label=ignore_label,
            verbose=verbose,
        )
        details["qat"] = history
    flatbuffer = convert(
        converted_model, size, quantization, output, representative, per_channel, strip_names
    )
    if quantization == "qat":
        # Conversion fidelity on its own: the int8 file against the fine-tuned
        # QAT graph it was converted from.
        samples = (validation[0] if validation is not None else representative)[:8]
        details["qat"]["agreement_with_qat_graph"] = report.compare(
            report.LiteRTModel(flatbuffer).predict(samples),
            batch_logits(converted_model, samples),
        )

    json_path, markdown_path = report.report_paths(out_path)
    with files.staged_file(out_path) as staged:
        with open(staged, "wb") as handle:
            handle.write(flatbuffer)
        result = report.verify_tflite(
            staged,
            model=model,
            images=sample_images if sample_images is not None else representative,
            validation=validation,
            num_threads=num_threads,
            ignore_label=ignore_label,
            extra={"path": os.path.abspath(out_path), "format": "tflite", **details},
        )
        if result["flex_ops"]:
            raise UnsupportedOpsError(result["flex_ops"])
        report.write_report(
            result, json_path, markdown_path, f"LiteRT export: {os.path.basename(out_path)}"
        )
        files.commit(staged, out_path)
    return result
