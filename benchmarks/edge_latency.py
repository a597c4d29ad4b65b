"""What the second scale costs on a phone-sized model: LiteRT latency, float32 and int8.

The edge model of docs/performance.md: MobileNetV2 x1.0, output stride 16, a
512x512 input, 21 classes, full-resolution logits, exported with
`export_tflite` (int8: post-training, 8 random calibration images). For the
single-scale model and the two-scale attention model with its heads on each
`--head-strides` grid (with full or depthwise-separable 3x3 convs,
`--head-convs`), both files are timed with the LiteRT interpreter in
interleaved rounds (the order rotates each round, so machine load hits all),
and the ratios to single scale are taken round by round, in one run.

    python benchmarks/edge_latency.py                         # heads at stride 4 and 16
    python benchmarks/edge_latency.py --head-strides 4 8 16 --rounds 8 --threads 2
    python benchmarks/edge_latency.py --size 256 --rounds 2   # a quick look
    python benchmarks/edge_latency.py --head-strides 4 8 --head-convs full separable
    python benchmarks/edge_latency.py --head-strides 4 --head-convs separable --head-channels 32 16

Exports go to `--out` (default: a temporary folder) with their verification
reports; `--keep` leaves them there for a per-op profile. `--reference DIR`
times TF Model Garden's MobileNetV2-DeepLabV3 files written there by
`benchmarks/model_garden_export.py` in the same rounds, and adds each model's
ratio to the one with the same full-resolution output.
"""

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-strides", type=int, nargs="+", default=[4, 16])
    parser.add_argument(
        "--head-convs",
        nargs="+",
        default=["full"],
        choices=["full", "separable"],
        help="the heads' 3x3 convs: full, or depthwise + 1x1 (separable_heads=True)",
    )
    parser.add_argument(
        "--head-channels",
        type=int,
        nargs="+",
        default=[None],
        help="the heads' width (head_channels); default: the model's (32 for mobilenet_v2)",
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per file per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--reference",
        default=None,
        help="folder of benchmarks/model_garden_export.py's .tflite files, timed alongside",
    )
    return parser.parse_args(argv)


def build(name, head_stride, separable, head_channels, args):
    import keras

    from keras_msattn import MultiScaleSegmenter

    keras.utils.set_random_seed(0)
    common = dict(
        backbone="mobilenet_v2",
        num_classes=args.num_classes,
        output_stride=16,
        backbone_width=args.width,
        input_shape=(args.size, args.size, 3),
    )
    if name == "single":
        return MultiScaleSegmenter(scales=(1.0,), fusion=None, **common)
    return MultiScaleSegmenter(
        scales=(1.0, 0.5),
        head_stride=head_stride,
        separable_heads=separable,
        head_channels=head_channels,
        **common,
    )


def export_all(args, folder):
    """{name: {quantization: (path, ops)}} for every model."""
    import keras
    import numpy as np

    from keras_msattn.export import export_tflite

    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 255, (8, args.size, args.size, 3)).astype("float32")
    models = [("single", None, False, None, "single")] + [
        (
            f"attention, heads at stride {stride}"
            + (", separable" if conv == "separable" else "")
            + (f", {channels} channels" if channels else ""),
            stride,
            conv == "separable",
            channels,
            f"attention{stride}"
            + ("_separable" if conv == "separable" else "")
            + (f"_{channels}ch" if channels else ""),
        )
        for conv in args.head_convs
        for stride in args.head_strides
        for channels in args.head_channels
    ]
    files = {}
    for name, stride, separable, channels, stem in models:
        keras.backend.clear_session()
        model = build(name, stride, separable, channels, args)
        files[name] = {}
        for quantization in ("none", "int8"):
            path = os.path.join(folder, f"{stem}_{quantization}.tflite")
            report = export_tflite(
                model,
                path,
                quantization=quantization,
                calibration_images=calibration if quantization == "int8" else None,
                num_calibration=len(calibration),
                sample_images=calibration[:2],
                num_validation=2,
            )
            files[name][quantization] = (path, report.get("num_ops"))
            print(f"exported {name} ({quantization}): {os.path.getsize(path):,} bytes", flush=True)
    return files


REFERENCES = {
    "model_garden_os16": "Model Garden MNv2-DeepLabV3, its stride-16 logits",
    "model_garden_512": "Model Garden MNv2-DeepLabV3, upsampled to 512x512",
}


def load_references(folder):
    """{name: {quantization: (path, ops)}} for Model Garden's files in `folder`."""
    from ai_edge_litert import schema_py_generated as schema

    files = {}
    for stem, name in REFERENCES.items():
        files[name] = {}
        for quantization in ("none", "int8"):
            path = os.path.join(folder, f"{stem}_{quantization}.tflite")
            if not os.path.exists(path):
                sys.exit(
                    f"error: --reference: {path} does not exist. Write it with "
                    f"benchmarks/model_garden_export.py --out {folder}"
                )
            with open(path, "rb") as file:
                model = schema.ModelT.InitFromPackedBuf(file.read(), 0)
            files[name][quantization] = (path, len(model.subgraphs[0].operators))
    return files


def time_all(files, args):
    import numpy as np

    from keras_msattn.export.report import LiteRTModel

    image = np.random.default_rng(1).uniform(0, 255, (args.size, args.size, 3)).astype("float32")
    keys = [(name, q) for name in files for q in ("none", "int8")]
    models = {key: LiteRTModel(files[key[0]][key[1]][0], num_threads=args.threads) for key in keys}
    medians = {key: [] for key in keys}
    for round_index in range(args.rounds):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            timing = models[key].latency_ms(image, runs=args.runs, warmup=2)
            medians[key].append(timing["median_ms"])
        print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
    return medians


def report(files, medians, args):
    load = os.getloadavg()[0]
    print(
        f"\nMobileNetV2 x{args.width}, OS16, {args.size}x{args.size}, {args.num_classes} classes, "
        f"{args.rounds} rounds x {args.runs} runs, {args.threads} LiteRT threads, load average "
        f"(1 min) at the end {load:.2f}"
    )
    print(
        "| model | float32 ms | int8 ms | float32 / single | int8 / single | int8 / float32 "
        "| int8 ops |"
    )
    print("|---|---|---|---|---|---|---|")

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(medians[a], medians[b], strict=True))

    for name in files:
        float_ms = statistics.median(medians[(name, "none")])
        int8_ms = statistics.median(medians[(name, "int8")])
        print(
            f"| {name} | {float_ms:.1f} | {int8_ms:.1f} | "
            f"{ratio((name, 'none'), ('single', 'none')):.2f}x | "
            f"{ratio((name, 'int8'), ('single', 'int8')):.2f}x | "
            f"{ratio((name, 'int8'), (name, 'none')):.2f}x | {files[name]['int8'][1]} |"
        )
    reference = REFERENCES["model_garden_512"]
    if reference in files:
        print(f"\n| model | float32 / {reference} | int8 / {reference} |")
        print("|---|---|---|")
        for name in files:
            if name not in REFERENCES.values():
                print(
                    f"| {name} | {ratio((name, 'none'), (reference, 'none')):.2f}x | "
                    f"{ratio((name, 'int8'), (reference, 'int8')):.2f}x |"
                )


def main(argv=None):
    args = parse_args(argv)
    folder = args.out or tempfile.mkdtemp(prefix="edge-latency-")
    os.makedirs(folder, exist_ok=True)
    references = load_references(args.reference) if args.reference else {}
    files = export_all(args, folder)
    files.update(references)
    medians = time_all(files, args)
    report(files, medians, args)
    if not args.keep and args.out is None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
