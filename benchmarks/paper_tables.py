"""The paper's Tables 1-2 in miniature: every baseline and ablation on ScaleDigits.

One backbone (MobileNetV2 x0.35 unless `--backbone-width`, from scratch) and one
training budget for all variants: the quickstart's training settings
(`keras_msattn.quickstart.quickstart_config`: 128-px crops of the 192-px
images, output stride 16, 16-channel heads, Adam 3e-3 with poly decay) with
about half its steps (1,500), so that 8 variants x 3 seeds train on a 2-core
CPU in about two hours. Each run trains with `keras_msattn.training.train` and
is scored with `keras_msattn.evaluation.evaluate` on the first
`--test-images` images of the ScaleDigits test split (data seed 0 for every run):
mIoU overall and on small / medium / large digits.

Every finished run appends one JSON line to `--out` (flushed and fsynced), so
a killed benchmark loses at most the run in progress, and rerunning the same
command skips the runs already recorded. Run folders (model.keras,
config.json, history.json) go to `<out without .jsonl>_runs/`. At the end a
markdown table is printed: mean ± std over seeds, in the paper's order, with
the paper's PASCAL VOC 2012 numbers (VGG16) for reference.

    python benchmarks/paper_tables.py                            # everything
    python benchmarks/paper_tables.py --steps 3 --seeds 0 --variants single_scale full \\
        --test-images 4 --out /tmp/smoke.jsonl                   # a smoke test
    python benchmarks/paper_tables.py --report                   # the table only
    python benchmarks/paper_tables.py --timing 100               # ms per step, idle machine

Absolute numbers are far below the paper's: a tiny network trained from
scratch for 1,500 steps on another dataset. What can carry over is the
ordering of the variants, above all on small and large digits.
"""

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join("benchmarks", "results", "paper_tables.jsonl")
TEST_SEED = 0  # the same test images for every run

# The paper's order (Table 1, then Table 2's ablations, then + PSP from Table 3).
# Model arguments as docs/architecture.md "Baselines and ablations from one builder".
_FULL = dict(
    scales=(1.0, 0.5),
    fusion="attention",
    hypercolumn=True,
    scale_dilations="auto",
    recalibration="multiply",
    pyramid_pooling=False,
    separable_heads=False,  # the paper's full 3x3 convs, not the mobile default
)
VARIANTS = {
    "single_scale": dict(_FULL, scales=(1.0,), fusion=None),
    "max_merge": dict(_FULL, fusion="max"),
    "average_merge": dict(_FULL, fusion="average"),
    "attention_to_scale": dict(_FULL, fusion="attention_to_scale"),
    "multi_stage": dict(_FULL, scale_dilations=None, recalibration=None),
    "diverse_dilations": dict(_FULL, recalibration=None),
    "full": dict(_FULL),
    "full_psp": dict(_FULL, pyramid_pooling=True),
    # Levers beyond the paper's tables (docs/results.md): the other reading of the
    # dilation rule (section 2.1: the large dilation on the small-scale stream),
    # and a location attention whose softmax cannot saturate.
    "full_dilations_reversed": dict(_FULL, scale_dilations=(2, 12)),
    "full_bounded_gate": dict(_FULL, attention_bound=4.0),
    # The paper's other recalibration (section 2.2: a bias per pixel and class, about
    # 1 point lower on VOC): no sigmoid gate that can close on a class for good.
    "full_recalibration_add": dict(_FULL, recalibration="add"),
    # The edge model's cheaper heads (docs/performance.md): the merge on the stride-16
    # grid of the 1x input instead of the paper's stride 4.
    "full_heads_stride16": dict(_FULL, head_stride=16),
    # The edge model's other cheaper heads: depthwise 3x3 + 1x1 convs on the paper's grid.
    "full_separable_heads": dict(_FULL, separable_heads=True),
    "full_separable_heads_stride8": dict(_FULL, separable_heads=True, head_stride=8),
    "full_separable_heads_dilations_reversed": dict(
        _FULL, separable_heads=True, scale_dilations=(2, 12)
    ),
    # Scores finer than the output stride (docs/results.md, "How fine the output can be").
    "full_refined_scores": dict(_FULL, score_refinement=True),
    "full_refined_scores_bounded_gate": dict(_FULL, score_refinement=True, attention_bound=4.0),
    "full_recalibration_add_refined_scores": dict(
        _FULL, recalibration="add", score_refinement=True
    ),
    # In place of the ImageNet pretraining the paper had: the shared backbone first
    # trains alone (single scale, scales 0.5-1.25x) for half the steps, then the full
    # model starts from it for the other half (the same total step count).
    "full_backbone_first": dict(_FULL),
}
# variant -> (share of --steps trained single-scale first, that phase's scale_range)
BACKBONE_FIRST = {"full_backbone_first": (0.5, (0.5, 1.25))}
LABELS = {
    "single_scale": "single scale (DeepLab-LargeFOV)",
    "max_merge": "max merge",
    "average_merge": "average merge",
    "attention_to_scale": "attention-to-scale",
    "multi_stage": "+ multi-stage",
    "diverse_dilations": "+ diverse dilations",
    "full": "full model (this paper)",
    "full_psp": "full model + PSP",
    "full_dilations_reversed": "full, dilations 2 (1x) / 12 (0.5x)",
    "full_bounded_gate": "full, attention softmax(4 tanh(z / 4))",
    "full_recalibration_add": "full, recalibration by an added bias",
    "full_heads_stride16": "full, heads on the stride-16 grid",
    "full_separable_heads": "full, depthwise-separable heads",
    "full_separable_heads_stride8": "full, separable heads on the stride-8 grid",
    "full_separable_heads_dilations_reversed": "full, separable heads, dilations 2 / 12",
    "full_refined_scores": "full, scores refined from the hypercolumn",
    "full_refined_scores_bounded_gate": "full, refined scores, bounded attention",
    "full_recalibration_add_refined_scores": "added recalibration, refined scores",
    "full_backbone_first": "full, backbone trained alone for the first half",
}
# PASCAL VOC 2012 val mIoU (%), VGG16, scales 1x and 0.5x (Tables 1 and 2). The
# paper has no PSP row on VOC; on ADE20K (Table 3) PSP adds 1.14 to its model.
PAPER_VOC = {
    "single_scale": 61.40,
    "max_merge": 63.88,
    "average_merge": 64.07,
    "attention_to_scale": 64.74,
    "multi_stage": 65.80,
    "diverse_dilations": 66.83,
    "full": 67.98,
    "full_psp": None,
    "full_dilations_reversed": None,
    "full_bounded_gate": None,
    "full_recalibration_add": None,
    "full_heads_stride16": None,
    "full_separable_heads": None,
    "full_separable_heads_stride8": None,
    "full_separable_heads_dilations_reversed": None,
    "full_refined_scores": None,
    "full_refined_scores_bounded_gate": None,
    "full_backbone_first": None,
}
METRICS = ("miou", "miou_small", "miou_medium", "miou_large")


def parse_args(argv=None):
    from keras_msattn.quickstart import quickstart_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=192, help="ScaleDigits image side")
    parser.add_argument("--crop-size", type=int, default=128, help="training crop side")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT"
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON lines file, one line per run")
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument(
        "--analysis-images",
        type=int,
        default=100,
        help="test images for the attention and per-stream accuracy by digit size",
    )
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16, 32))
    parser.add_argument(
        "--loss-stride",
        type=int,
        default=quickstart_config().loss_stride,
        choices=(1, 2, 4, 8),
        help="grid of the 1 + S losses (TrainConfig.loss_stride; default: the quickstart's); "
        "1 is full resolution",
    )
    parser.add_argument(
        "--variety",
        default="standard",
        choices=("standard", "broad"),
        help="ScaleDigits rules of the training images (the test splits never change)",
    )
    parser.add_argument(
        "--extra-small-digits",
        type=int,
        default=0,
        help="ScaleDigits' extra_small_digits for the training images: 0 to N more "
        "small digits per image (the test splits never change)",
    )
    parser.add_argument(
        "--max-slant",
        type=float,
        default=0.0,
        help="ScaleDigits' max_slant for the training images: each digit slanted by a "
        "shear in [-m, m] (the test splits never change); default 0, upright, as in every "
        "record before the option (the quickstart trains with 0.2)",
    )
    parser.add_argument(
        "--rotation", type=float, default=0.0, help="TrainConfig.rotation_range (degrees)"
    )
    parser.add_argument("--shear", type=float, default=0.0, help="TrainConfig.shear_range")
    parser.add_argument(
        "--batch-norm-images",
        type=int,
        default=quickstart_config().batch_norm_images,
        help="TrainConfig.batch_norm_images (default: the quickstart's); 0 keeps the "
        "moving averages",
    )
    parser.add_argument(
        "--hard-pixel-fraction",
        type=float,
        default=quickstart_config().hard_pixel_fraction,
        help="TrainConfig.hard_pixel_fraction (default: the quickstart's)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=SETTING_DEFAULTS["learning_rate"],
        help="TrainConfig.learning_rate, poly-decayed to 0 (default 3e-3, the rate of "
        "every record before this option; the quickstart's may differ)",
    )
    parser.add_argument("--backbone-width", type=float, default=0.35)
    parser.add_argument("--head-channels", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--crops-per-image",
        type=int,
        default=1,
        help="TrainConfig.crops_per_image: augmented crops from each generated image",
    )
    parser.add_argument(
        "--report", action="store_true", help="print the table from --out, train nothing"
    )
    parser.add_argument(
        "--timing",
        type=int,
        metavar="N",
        help="only time every variant: 2N steps, the second N timed (ms per step); "
        "run it on an otherwise idle machine",
    )
    args = parser.parse_args(argv)
    if args.timing is not None and args.timing < 1:
        parser.error(f"--timing must be >= 1, got {args.timing}")
    for name in ("steps", "test_images", "batch_size", "head_channels", "crops_per_image"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0, got {args.learning_rate}")
    if not 0 < args.hard_pixel_fraction <= 1:
        parser.error(f"--hard-pixel-fraction must be in (0, 1], got {args.hard_pixel_fraction}")
    if args.image_size < 64:
        parser.error(f"--image-size must be >= 64 (ScaleDigits' minimum), got {args.image_size}")
    if any(seed < 0 for seed in args.seeds):
        parser.error(f"--seeds must be >= 0, got {args.seeds}")
    return args


def settings(args):
    """What makes two runs of one variant and seed comparable (the resume key)."""
    return {
        "steps": args.steps,
        "image_size": args.image_size,
        "crop_size": args.crop_size,
        "output_stride": args.output_stride,
        "loss_stride": args.loss_stride,
        "variety": args.variety,
        "test_images": args.test_images,
        "backbone_width": args.backbone_width,
        "head_channels": args.head_channels,
        "batch_size": args.batch_size,
        "rotation": args.rotation,
        "shear": args.shear,
        "batch_norm_images": args.batch_norm_images,
        "hard_pixel_fraction": args.hard_pixel_fraction,
        "learning_rate": args.learning_rate,
        "extra_small_digits": args.extra_small_digits,
        "crops_per_image": args.crops_per_image,
        "max_slant": args.max_slant,
    }


def run_config(args, variant, seed):
    """The quickstart's config at this benchmark's budget, for one variant and seed."""
    from keras_msattn.config import apply_overrides
    from keras_msattn.quickstart import quickstart_config

    overrides = dict(
        model=dict(
            VARIANTS[variant],
            backbone_width=args.backbone_width,
            head_channels=args.head_channels,
            output_stride=args.output_stride,
        ),
        # The seed picks the model's initialization, the training images and their order.
        dataset_options={
            "image_size": args.image_size,
            "image_seed": seed,
            "variety": args.variety,
            "extra_small_digits": args.extra_small_digits,
            "max_slant": args.max_slant,
        },
        crop_size=args.crop_size,
        loss_stride=args.loss_stride,
        val_images=0,  # no validation: the test split scores every run afterwards
        val_size=args.image_size,
        batch_size=args.batch_size,
        steps=args.steps,
        steps_per_epoch=args.steps,  # one backup, at the end
        seed=seed,
        rotation_range=args.rotation,
        shear_range=args.shear,
        batch_norm_images=args.batch_norm_images,
        hard_pixel_fraction=args.hard_pixel_fraction,
        learning_rate=args.learning_rate,
        crops_per_image=args.crops_per_image,
    )
    return apply_overrides(quickstart_config(steps=args.steps, seed=seed), overrides)


def read_records(path):
    """The JSON lines of `path` ([] if it does not exist); a torn last line is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"warning: skipping an unreadable line in {path}", file=sys.stderr)
    return records


def append_record(path, record):
    # One write of one line, flushed to disk: a kill loses at most the run in progress.
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# Settings added after the first records were written, with the value those records had.
SETTING_DEFAULTS = {
    "output_stride": 16, "variety": "standard", "loss_stride": 1,
    "rotation": 0.0, "shear": 0.0, "batch_norm_images": 0, "hard_pixel_fraction": 1.0,
    "learning_rate": 3e-3, "extra_small_digits": 0, "crops_per_image": 1,
    "max_slant": 0.0,
}  # fmt: skip


def matching(records, args):
    return records_with_settings(records, settings(args))


def records_with_settings(records, wanted):
    """The records trained with every setting of `wanted` (a `settings` dict)."""
    return [
        r for r in records if all(r.get(k, SETTING_DEFAULTS.get(k)) == v for k, v in wanted.items())
    ]


def runs_dir(out):
    stem = out[: -len(".jsonl")] if out.endswith(".jsonl") else out
    return stem + "_runs"


def git_commit():
    """The commit the package was imported from, "-dirty" if it had changes; None outside git."""
    import subprocess

    def git(*arguments):
        return subprocess.run(
            ["git", "-C", ROOT, *arguments], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "keras_msattn")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if changed else "")


def cpu_name():
    """This CPU's model and widest vector extension, e.g. "AMD EPYC, avx512_vnni"."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = {
                key.strip(): value
                for key, value in (line.split(":", 1) for line in f if ":" in line)
            }
    except OSError:
        return None
    flags = set(fields.get("flags", "").split())
    widest = next((flag for flag in ("avx512_vnni", "avx512f", "avx2") if flag in flags), None)
    return ", ".join(v for v in (fields.get("model name", "").strip(), widest) if v) or None


# Read once, at start: a commit made while the campaign runs is not the code it runs.
COMMIT = None


def by_size_analysis(model, args):
    """The 0.5x stream's attention weight and each stream's pixel accuracy by digit size."""
    import numpy as np

    from keras_msattn.data import scale_digits
    from keras_msattn.quickstart import scale_weight_by_size, stream_accuracy_by_size

    test = scale_digits.load(
        "test", image_seed=TEST_SEED, image_size=args.image_size,
        num_images=args.analysis_images, with_size_map=True,
    )  # fmt: skip
    images, labels, size_maps = (np.stack(a) for a in zip(*test.as_numpy_iterator(), strict=True))
    analysis = {"stream_accuracy": stream_accuracy_by_size(model, images, labels, size_maps)}
    if getattr(model, "fusion", None) in ("attention", "attention_to_scale"):
        weights = scale_weight_by_size(model, images, size_maps)
        analysis["weight_0.5"] = {bucket: weights[bucket]["0.5"] for bucket in weights}
    if getattr(model, "recalibration", None) == "multiply":
        analysis["recalibration_by_class"] = recalibration_by_class(model, images)
    return analysis


def recalibration_by_class(model, images, batch_size=16):
    """Mean and maximum of the recalibration gate `wr` of each class over `images`.

    A class whose gate stays near 0 on every pixel is one the final output can no
    longer predict, whatever its streams score: the sigmoid has saturated.
    """
    import numpy as np

    sums, peaks, count = 0.0, None, 0
    for start in range(0, len(images), batch_size):
        gates = model.attention_maps(images[start : start + batch_size].astype("float32"))
        gates = gates["recalibration"].reshape(-1, model.num_classes)
        sums = sums + gates.sum(axis=0)
        peaks = gates.max(axis=0) if peaks is None else np.maximum(peaks, gates.max(axis=0))
        count += len(gates)
    return {
        "mean": np.round((sums / count).astype(float), 4).tolist(),
        "max": np.round(peaks.astype(float), 4).tolist(),
    }


def train_and_evaluate(args, variant, seed):
    """Trains one run from scratch, scores it on the test split; returns its record."""
    import keras

    from keras_msattn.data import scale_digits
    from keras_msattn.evaluation import evaluate
    from keras_msattn.inference import load_segmenter
    from keras_msattn.training import train

    config = run_config(args, variant, seed)
    log = lambda message: print("  " + message)  # noqa: E731
    # Every setting of the resume key, so no two recorded runs share a folder.
    out_dir = os.path.join(
        runs_dir(args.out),
        f"{variant}-seed{seed}-{args.steps}steps-{args.image_size}px-"
        f"crop{args.crop_size}-os{args.output_stride}-{args.variety}-loss{args.loss_stride}"
        + (f"-rot{args.rotation:g}-shear{args.shear:g}" if args.rotation or args.shear else "")
        + (f"-bn{args.batch_norm_images}" if args.batch_norm_images else "")
        + (f"-hard{args.hard_pixel_fraction:g}" if args.hard_pixel_fraction < 1 else "")
        + (f"-small{args.extra_small_digits}" if args.extra_small_digits else "")
        + (f"-slant{args.max_slant:g}" if args.max_slant else "")
        + (
            f"-lr{args.learning_rate:g}"
            if args.learning_rate != SETTING_DEFAULTS["learning_rate"]
            else ""
        )
        + (f"-width{args.backbone_width:g}" if args.backbone_width != 0.35 else "")
        + (f"-heads{args.head_channels}" if args.head_channels != 16 else "")
        + (f"-crops{args.crops_per_image}" if args.crops_per_image > 1 else ""),
    )
    wall_start = time.perf_counter()
    first_phase = {}
    if variant in BACKBONE_FIRST:
        share, scale_range = BACKBONE_FIRST[variant]
        first_steps = max(1, round(share * args.steps))
        first = dataclasses.replace(
            run_config(args, "single_scale", seed),
            steps=first_steps,
            steps_per_epoch=first_steps,
            scale_range=scale_range,
        )
        first_dir = out_dir + "-first-phase"
        shutil.rmtree(first_dir, ignore_errors=True)
        keras.backend.clear_session()
        start = time.perf_counter()
        trained = train(first, first_dir, verbose=0, log=log)
        backbone_path = os.path.join(first_dir, "backbone.weights.h5")
        load_segmenter(trained["model_path"]).backbone.save_weights(backbone_path)
        first_phase = {
            "first_phase_steps": first_steps,
            "first_phase_scale_range": list(scale_range),
            "first_phase_seconds": round(time.perf_counter() - start, 1),
        }
        rest = args.steps - first_steps
        config = dataclasses.replace(
            config,
            steps=rest,
            steps_per_epoch=rest,
            model={**config.model, "backbone_weights": backbone_path},
        )
    # A run not in the JSON lines starts over, so its training time is a whole run's.
    shutil.rmtree(out_dir, ignore_errors=True)
    keras.backend.clear_session()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = train(config, out_dir, verbose=0, log=log)
    train_seconds = time.perf_counter() - start + first_phase.get("first_phase_seconds", 0)
    # Only the inference model and the small JSON files are kept.
    shutil.rmtree(os.path.join(out_dir, "backup"), ignore_errors=True)
    shutil.rmtree(os.path.join(out_dir, "logs"), ignore_errors=True)

    model = load_segmenter(result["model_path"])

    def score(split):
        # "unseen": photographs and rules training never used (how far it generalises).
        images = scale_digits.load(
            split, image_seed=TEST_SEED, image_size=args.image_size,
            num_images=args.test_images, with_size_map=True,
        )  # fmt: skip
        return evaluate(
            model, images, scale_digits.NUM_CLASSES,
            extra_scores=scale_digits.SizeBucketScores(), max_images=args.test_images, verbose=0,
        )  # fmt: skip

    start = time.perf_counter()
    scores = score("test")
    eval_seconds = time.perf_counter() - start
    unseen = score("unseen")
    analysis = by_size_analysis(model, args)
    history = result["history"]
    return {
        "variant": variant,
        "seed": seed,
        **settings(args),
        **{name: scores[name] for name in METRICS},
        **{f"unseen_{name}": unseen[name] for name in METRICS},
        "pixel_accuracy": scores["pixel_accuracy"],
        "num_images": scores["num_images"],
        "final_train_loss": history[-1].get("loss") if history else None,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "num_parameters": int(model.count_params()),
        "model_arguments": {k: v for k, v in config.model.items() if k in VARIANTS[variant]},
        **analysis,
        **first_phase,
        "run_dir": out_dir,
        "commit": COMMIT,
        # Seeds train differently on different CPUs: pair runs of one machine only.
        "cpu": cpu_name(),
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def time_variants(args):
    """Training time per step of every variant, after tracing and warm-up."""
    import tempfile

    import keras

    from keras_msattn.training import train

    print(f"| variant | parameters | ms per step | minutes for {args.steps} steps |")
    print("|---|---|---|---|")
    for variant in args.variants:
        config = dataclasses.replace(
            run_config(args, variant, args.seeds[0]),
            steps=2 * args.timing,
            steps_per_epoch=args.timing,
        )
        keras.backend.clear_session()
        with tempfile.TemporaryDirectory() as out_dir:
            result = train(config, out_dir, verbose=0, log=lambda message: None)
            model = keras.saving.load_model(result["model_path"], compile=False)
        # history's elapsed_seconds counts from the start of fit: the first epoch
        # holds tracing and warm-up, the second only steps.
        first, second = (entry["elapsed_seconds"] for entry in result["history"][:2])
        per_step = (second - first) / args.timing
        print(
            f"| {LABELS[variant]} | {model.count_params():,} | {1000 * per_step:.0f} | "
            f"{per_step * args.steps / 60:.1f} |",
            flush=True,
        )


def _percent(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def table(records, variants):
    """Markdown table of mean (± sample std over seeds) per variant, in the paper's order."""
    lines = [
        "| variant | seeds | mIoU | small | medium | large | unseen mIoU | train min "
        "| paper VOC mIoU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in (v for v in VARIANTS if v in variants):
        rows = [r for r in records if r["variant"] == variant]
        paper = PAPER_VOC[variant]
        paper = "—" if paper is None else f"{paper:.2f}"
        if not rows:
            lines.append(f"| {LABELS[variant]} | none | | | | | | | {paper} |")
            continue
        minutes = statistics.fmean(r["train_seconds"] for r in rows) / 60
        cells = [_percent([r[m] for r in rows]) for m in METRICS]
        cells.append(_percent([r.get("unseen_miou") for r in rows]))
        seeds = ",".join(str(r["seed"]) for r in sorted(rows, key=lambda r: r["seed"]))
        lines.append(
            f"| {LABELS[variant]} | {seeds} | {' | '.join(cells)} | {minutes:.1f} | {paper} |"
        )
    return "\n".join(lines)


# (model, baseline): the paired comparisons the report gives per seed.
PAIRS = (
    ("full", "single_scale"),
    ("full", "attention_to_scale"),
    ("full_recalibration_add", "single_scale"),
    ("full_recalibration_add", "attention_to_scale"),
    ("full_bounded_gate", "full"),
    ("full_recalibration_add", "full"),
    ("full_dilations_reversed", "full"),
    ("full_heads_stride16", "full"),
    ("full_separable_heads", "full"),
    ("full_separable_heads_stride8", "full_separable_heads"),
    ("full_separable_heads_dilations_reversed", "full_separable_heads"),
    ("full_separable_heads_dilations_reversed", "full_dilations_reversed"),
    ("full_refined_scores", "full"),
    ("full_refined_scores_bounded_gate", "full_refined_scores"),
    ("full_backbone_first", "full"),
)


def paired_differences(records, model, baseline, metric="miou"):
    """{seed: model - baseline} in points, over the seeds both have on one CPU.

    A seed trains differently on another CPU, so two runs of one seed recorded
    on different machines are no pair (records before the "cpu" field pair as before).
    """
    by_seed = {}
    for record in records:
        by_seed.setdefault(record["seed"], {})[record["variant"]] = record
    return {
        seed: 100 * (runs[model][metric] - runs[baseline][metric])
        for seed, runs in sorted(by_seed.items())
        if model in runs
        and baseline in runs
        and runs[model].get("cpu") == runs[baseline].get("cpu")
    }


def paired_table(records, variants):
    """Markdown: per pair, the per-seed mIoU differences, their mean, std and t."""
    lines = [
        "| comparison | seeds | per-seed difference (points) | mean | std | t |",
        "|---|---|---|---|---|---|",
    ]
    for model, baseline in PAIRS:
        if model not in variants or baseline not in variants:
            continue
        differences = paired_differences(records, model, baseline)
        values = list(differences.values())
        if not values:
            continue
        mean = statistics.fmean(values)
        if len(values) > 1:
            std = statistics.stdev(values)
            t = mean / (std / len(values) ** 0.5) if std > 0 else float("inf")
            spread, t_text = f"{std:.2f}", f"{t:.2f}"
        else:
            spread, t_text = "n/a", "n/a"
        per_seed = ", ".join(f"{value:+.1f}" for value in values)
        seeds = ",".join(str(seed) for seed in differences)
        lines.append(
            f"| {LABELS[model]} − {LABELS[baseline]} | {seeds} | {per_seed} | {mean:+.2f} | "
            f"{spread} | {t_text} |"
        )
    return "\n".join(lines)


def by_size_table(records, variants):
    """Markdown: the 0.5x weight and each stream's pixel accuracy by digit size."""
    lines = [
        "| variant | seeds | 0.5x weight small / medium / large | 1x stream acc. "
        "small / medium / large | 0.5x stream acc. | final acc. |",
        "|---|---|---|---|---|---|",
    ]
    sizes = ("small", "medium", "large")

    def cell(rows, get):
        # A size with no pixels in the analysed images (tiny runs) has no value.
        values = [[get(r)[size] for r in rows if size in get(r)] for size in sizes]
        return " / ".join(f"{statistics.fmean(v):.3f}" if v else "n/a" for v in values)

    for variant in (v for v in VARIANTS if v in variants):
        rows = [r for r in records if r["variant"] == variant and "stream_accuracy" in r]
        if not rows:
            continue
        seeds = ",".join(str(r["seed"]) for r in sorted(rows, key=lambda r: r["seed"]))
        weight = cell(rows, lambda r: r["weight_0.5"]) if "weight_0.5" in rows[0] else "—"
        streams = [
            cell(rows, lambda r, s=stream: r["stream_accuracy"][s])
            if stream in rows[0]["stream_accuracy"]
            else "—"
            for stream in ("1.0", "0.5", "final")
        ]
        lines.append(f"| {LABELS[variant]} | {seeds} | {weight} | {' | '.join(streams)} |")
    return "\n".join(lines)


# A class whose recalibration gate averages under this over the analysed pixels is
# one the final output can no longer predict ("Backbone width, and a recalibration
# gate that closes for good" in docs/results.md).
CLOSED_GATE = 0.01


def closed_gates_table(records, variants):
    """Markdown: per run with the sigmoid gate, the digits whose gate stayed closed."""
    lines = [
        f"| variant | seed | digits whose mean gate is under {CLOSED_GATE:g} | test mIoU |",
        "|---|---|---|---|",
    ]
    for variant in (v for v in VARIANTS if v in variants):
        for record in sorted(records, key=lambda r: r["seed"]):
            if record["variant"] != variant or "recalibration_by_class" not in record:
                continue
            means = record["recalibration_by_class"]["mean"]
            # Class 0 is the background, class c the digit c - 1.
            closed = [str(c - 1) for c, mean in enumerate(means) if c and mean < CLOSED_GATE]
            lines.append(
                f"| {LABELS[variant]} | {record['seed']} | {', '.join(closed) or 'none'} | "
                f"{100 * record['miou']:.1f} |"
            )
    return "\n".join(lines) if len(lines) > 2 else None


def latest_per_run(records):
    # A run recorded twice (e.g. by two runs of the benchmark at once) counts once.
    latest = {}
    for record in records:
        latest[(record["variant"], record["seed"])] = record
    return list(latest.values())


def main(argv=None):
    global COMMIT
    args = parse_args(argv)
    COMMIT = git_commit()
    if args.timing is not None:
        time_variants(args)
        return 0
    failed = []
    if not args.report:
        recorded = matching(read_records(args.out), args)
        done = {(r["variant"], r["seed"]) for r in recorded}
        here = cpu_name()
        for seed in args.seeds:
            others = {r.get("cpu") for r in recorded if r["seed"] == seed} - {here}
            if others and any((variant, seed) not in done for variant in args.variants):
                print(
                    f"warning: seed {seed} has runs recorded on {', '.join(map(str, others))}, "
                    f"and this is {here}: the report pairs only runs of one CPU",
                    flush=True,
                )
        # Seed by seed: a benchmark stopped early still has every variant at the same seeds.
        todo = [
            (variant, seed)
            for seed in args.seeds
            for variant in VARIANTS
            if variant in args.variants and (variant, seed) not in done
        ]
        print(
            f"{len(todo)} runs to do ({len(args.variants) * len(args.seeds) - len(todo)} already "
            f"in {args.out}); settings {settings(args)}",
            flush=True,
        )
        for index, (variant, seed) in enumerate(todo, 1):
            print(f"[{index}/{len(todo)}] {variant} seed {seed}", flush=True)
            try:
                record = train_and_evaluate(args, variant, seed)
            except Exception:  # one broken variant must not stop the others
                traceback.print_exc()
                print(f"  FAILED: {variant} seed {seed} (not recorded; a rerun retries it)")
                failed.append((variant, seed))
                continue
            append_record(args.out, record)
            print(
                f"  mIoU {100 * record['miou']:.2f} (small {_percent([record['miou_small']])}, "
                f"medium {_percent([record['miou_medium']])}, large "
                f"{_percent([record['miou_large']])}); train {record['train_seconds']:.0f} s, "
                f"eval {record['eval_seconds']:.0f} s",
                flush=True,
            )
    records = [
        r
        for r in latest_per_run(matching(read_records(args.out), args))
        if r["variant"] in args.variants and r["seed"] in args.seeds
    ]
    config = run_config(args, args.variants[0], args.seeds[0])
    print()
    print(
        f"ScaleDigits test mIoU (%), first {args.test_images} test images at "
        f"{args.image_size} px; MobileNetV2 x{args.backbone_width} from scratch, output stride "
        f"{config.model['output_stride']}, heads {args.head_channels}, batch {args.batch_size} of "
        f"{args.crop_size}-px crops, {args.steps} steps ({config.optimizer} "
        f"{config.learning_rate:g}, poly)."
    )
    print(table(records, args.variants))
    print("\nPaired by seed: mIoU of the first minus the second, t = mean / (std / sqrt(n)).")
    print(paired_table(records, args.variants))
    print(
        f"\nBy digit size, first {args.analysis_images} test images: mean over seeds of the "
        "0.5x stream's attention weight, and of each stream's pixel accuracy."
    )
    print(by_size_table(records, args.variants))
    gates = closed_gates_table(records, args.variants)
    if gates:
        print(
            f"\nThe sigmoid recalibration gate by class (first {args.analysis_images} test "
            "images): the digits it closed for good."
        )
        print(gates)
    print(
        "\nPaper VOC: PASCAL VOC 2012 val, VGG16 pretrained, scales 1x + 0.5x (Tables 1-2); "
        "no PSP row on VOC (ADE20K, Table 3: ours 37.07, ours + PSP 38.21)."
    )
    if failed:
        print(f"\n{len(failed)} runs failed: {', '.join(f'{v} seed {s}' for v, s in failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
