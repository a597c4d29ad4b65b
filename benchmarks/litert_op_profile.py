"""Per-operator LiteRT time of the edge model: where the second scale's milliseconds go.

The Python LiteRT interpreter has no operator profiler, so each operator of the
exported `.tflite` is cut out into a model of its own (its constant inputs
kept, its other inputs fed random values of the right type and shape) and
timed alone with the same interpreter, thread count and XNNPACK delegate as
the whole file. The per-operator medians are summed by operator type and by
the part of the model the operator's output belongs to (its tensor name; the
exports keep names for this), and the sum is printed beside the whole file's
time: what the cut leaves out (memory traffic between operators, XNNPACK
fusing neighbours) is the difference.

    python benchmarks/litert_op_profile.py                       # the edge model, float32 and int8
    python benchmarks/litert_op_profile.py --head-stride 4 --separable-heads --top 10
    python benchmarks/litert_op_profile.py --size 256 --runs 5   # a quick look

The model is the one of `benchmarks/edge_latency.py` (MobileNetV2 x1.0, output
stride 16, 21 classes, full-resolution logits) or, with `--single`, its
single-scale counterpart.
"""

import argparse
import collections
import copy
import os
import re
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# (part, substrings of a tensor name), first match wins; names are the Keras
# layers' (docs/architecture.md). The backbone's ops are told apart by scale below.
PARTS = (
    ("final upsample and output", ("final_upsample", "Identity", "StatefulPartitionedCall:0")),
    ("merge (scale fusion)", ("scale_fusion",)),
    ("location attention", ("location_attention", "scale_weights")),
    ("recalibration", ("recalibration",)),
    ("scale-specific dilated convs", ("dilated_conv",)),
    ("hypercolumn (projections, resizes, concat)", ("hypercolumn", "_to_grid", "attention_feat")),
    ("classifier", ("classifier", "logits")),
    ("resize to the other scales", ("_resize",)),
    ("input normalization", ("image_normalization",)),
)
# The shared backbone runs once per scale, each call under a scope of its own
# ("backbone", "backbone_1", ...; the numbering is the tracer's, not the scales').
BACKBONE_SCOPE = re.compile(r"/(backbone(?:_\d+)?)/")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width")
    parser.add_argument("--head-stride", type=int, default=4)
    parser.add_argument("--separable-heads", action="store_true")
    parser.add_argument("--single", action="store_true", help="the single-scale model")
    parser.add_argument(
        "--quantizations", nargs="+", default=["none", "int8"], choices=["none", "int8"]
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs per operator")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=8, help="the slowest operators listed")
    return parser.parse_args(argv)


def export(args, folder):
    """{quantization: path} of the model, exported with tensor names kept."""
    import keras
    import numpy as np

    from keras_msattn import MultiScaleSegmenter
    from keras_msattn.export import export_tflite

    keras.utils.set_random_seed(0)
    common = dict(
        backbone="mobilenet_v2",
        num_classes=args.num_classes,
        output_stride=16,
        backbone_width=args.width,
        input_shape=(args.size, args.size, 3),
    )
    if args.single:
        model = MultiScaleSegmenter(scales=(1.0,), fusion=None, **common)
    else:
        model = MultiScaleSegmenter(
            head_stride=args.head_stride, separable_heads=args.separable_heads, **common
        )
    calibration = np.random.default_rng(0).uniform(0, 255, (8, args.size, args.size, 3))
    calibration = calibration.astype("float32")
    paths = {}
    for quantization in args.quantizations:
        path = os.path.join(folder, f"model_{quantization}.tflite")
        export_tflite(
            model,
            path,
            quantization=quantization,
            calibration_images=calibration if quantization == "int8" else None,
            num_calibration=len(calibration),
            sample_images=calibration[:1],
            num_validation=1,
            strip_names=False,
        )
        paths[quantization] = path
    return paths


def single_operator_models(model_bytes):
    """[(operator name, output tensor name, output shape, .tflite bytes)], one per operator."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    subgraph = model.subgraphs[0]
    names = {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    cut = []
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        used = list(dict.fromkeys(t for t in [*op.inputs, *op.outputs] if t >= 0))
        new_index = {t: i for i, t in enumerate(used)}
        part = schema.ModelT()
        part.version = model.version
        part.operatorCodes = model.operatorCodes
        part.buffers = [schema.BufferT()]  # buffer 0: the empty one
        tensors, graph_inputs = [], []
        for t in used:
            tensor = copy.copy(subgraph.tensors[t])
            data = model.buffers[tensor.buffer].data
            if data is not None and len(data):
                part.buffers.append(model.buffers[tensor.buffer])
                tensor.buffer = len(part.buffers) - 1
            else:
                tensor.buffer = 0
                if t not in op.outputs:
                    graph_inputs.append(new_index[t])
            tensors.append(tensor)
        single = copy.copy(op)
        single.inputs = [new_index[t] if t >= 0 else -1 for t in op.inputs]
        single.outputs = [new_index[t] for t in op.outputs]
        graph = schema.SubGraphT()
        graph.tensors = tensors
        graph.operators = [single]
        graph.inputs = graph_inputs
        graph.outputs = list(single.outputs)
        part.subgraphs = [graph]
        output = subgraph.tensors[op.outputs[0]]
        cut.append(
            (
                name,
                output.name.decode() if isinstance(output.name, bytes) else str(output.name),
                tuple(int(d) for d in output.shape),
                bytes(flatbuffer_utils.convert_object_to_bytearray(part)),
            )
        )
    return cut


def median_ms(model_bytes, args, seed=0):
    """Median wall time of `invoke` on random inputs of the model's input types."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes, num_threads=args.threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(seed)
    for details in interpreter.get_input_details():
        dtype = np.dtype(details["dtype"])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, details["shape"], endpoint=True)
        else:
            value = rng.uniform(0, 255, details["shape"])
        interpreter.set_tensor(details["index"], value.astype(dtype))
    for _ in range(2):
        interpreter.invoke()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def parts(rows):
    """The part of the model each operator belongs to, from its output tensor's name."""
    # A backbone scope's scale: the first conv's output height against the largest.
    first_height = {}
    for _, _, tensor, shape, _ in rows:
        scope = BACKBONE_SCOPE.search(tensor)
        if scope and len(shape) == 4:
            first_height.setdefault(scope.group(1), shape[1])
    largest = max(first_height.values(), default=1)
    labels = []
    for _, _, tensor, _, _ in rows:
        scope = BACKBONE_SCOPE.search(tensor)
        if scope:
            labels.append(f"backbone at {first_height[scope.group(1)] / largest:g}x")
            continue
        labels.append(next((p for p, keys in PARTS if any(k in tensor for k in keys)), "other"))
    return labels


def profile(path, args):
    with open(path, "rb") as file:
        model_bytes = file.read()
    whole = median_ms(model_bytes, args)
    rows = []
    for index, (name, tensor, shape, single) in enumerate(single_operator_models(model_bytes)):
        rows.append((index, name, tensor, shape, median_ms(single, args)))
    return whole, rows


def report(quantization, whole, rows, args):
    total = sum(row[-1] for row in rows)
    print(
        f"\n### {quantization}: whole file {whole:.1f} ms, sum of its {len(rows)} operators "
        f"timed alone {total:.1f} ms ({args.threads} threads, median of {args.runs} runs)\n"
    )
    for title, groups in (("operator type", [row[1] for row in rows]), ("part", parts(rows))):
        sums, counts = collections.Counter(), collections.Counter()
        for row, group in zip(rows, groups, strict=True):
            sums[group] += row[-1]
            counts[group] += 1
        print(f"| {title} | operators | ms | share |")
        print("|---|---|---|---|")
        for group, ms in sums.most_common():
            print(f"| {group} | {counts[group]} | {ms:.2f} | {100 * ms / total:.1f}% |")
        print()
    print("| slowest operators | output | shape | ms |")
    print("|---|---|---|---|")
    for index, name, tensor, shape, ms in sorted(rows, key=lambda r: -r[-1])[: args.top]:
        short = tensor.split(";")[0][-60:]
        print(f"| {index} {name} | {short} | {'x'.join(map(str, shape))} | {ms:.2f} |")


def main(argv=None):
    args = parse_args(argv)
    load = os.getloadavg()[0]
    model = "single scale" if args.single else f"attention, heads at stride {args.head_stride}"
    if args.separable_heads and not args.single:
        model += ", separable"
    print(
        f"MobileNetV2 x{args.width}, OS16, {args.size}x{args.size}, {args.num_classes} classes, "
        f"{model}; load average (1 min) at the start {load:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="op-profile-") as folder:
        paths = export(args, folder)
        for quantization, path in paths.items():
            whole, rows = profile(path, args)
            report("float32" if quantization == "none" else quantization, whole, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
