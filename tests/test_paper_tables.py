"""The paper-tables campaign: one record per finished run, skipped on a rerun, and a
kill loses at most the run in progress."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "2", "--image-size", "64", "--crop-size", "64", "--test-images", "2"]
TINY += ["--analysis-images", "2", "--batch-size", "2", "--head-channels", "4", "--seeds", "0"]
TINY += ["--batch-norm-images", "4"]  # the default's 256 images took 22 s a run


def campaign(out, *variants, wait=True):
    command = [sys.executable, str(ROOT / "benchmarks" / "paper_tables.py"), *TINY]
    command += ["--out", str(out), "--variants", *variants]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if not wait:
        return process
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output
    return output


def records(out):
    return [json.loads(line) for line in Path(out).read_text().splitlines()]


def test_a_killed_campaign_resumes_and_skips_what_it_recorded(tmp_path, capsys):
    out = tmp_path / "tables.jsonl"
    process = campaign(out, "single_scale", "average_merge", wait=False)
    deadline = time.time() + 600
    while not (out.exists() and out.read_text().count("\n") >= 1):
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no record in 10 minutes"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # during the second run, or just after the first
    process.wait()
    first = out.read_text().splitlines()[0]

    output = campaign(out, "single_scale", "average_merge")
    assert "1 already in" in output or "0 runs to do (2 already in" in output, output
    lines = out.read_text().splitlines()
    assert lines[0] == first  # the finished run is kept as it was
    assert sorted(r["variant"] for r in records(out)) == ["average_merge", "single_scale"]
    for record in records(out):
        assert record["seed"] == 0 and record["steps"] == 2
        assert set(record["stream_accuracy"]) >= {"1.0", "final"}
        assert record["commit"] is None or len(record["commit"]) >= 7
        # The CPU is recorded: the same seed trains differently on another machine.
        assert record["cpu"] == load_benchmark("paper_tables").cpu_name()
        # Both test splits are scored; the training images' rules are part of the key.
        assert 0 <= record["unseen_miou"] <= 1 and record["variety"] == "standard"
    assert "weight_0.5" not in records(out)[0]  # single scale has no attention

    # Everything recorded: a rerun trains nothing and reports the pair (in this
    # process: a third interpreter would only import TensorFlow again).
    paper_tables = load_benchmark("paper_tables")
    argv = [*TINY, "--out", str(out), "--variants", "single_scale", "average_merge"]
    assert paper_tables.main(argv) == 0
    output = capsys.readouterr().out
    assert "0 runs to do (2 already in" in output
    assert "| single scale (DeepLab-LargeFOV) | 0 |" in output, output
    assert len(out.read_text().splitlines()) == 2
    assert os.path.isdir(str(out)[: -len(".jsonl")] + "_runs")


def test_the_learning_rate_is_trained_with_and_part_of_the_resume_key():
    paper_tables = load_benchmark("paper_tables")
    default = paper_tables.parse_args([])
    lower = paper_tables.parse_args(["--learning-rate", "0.001"])
    assert paper_tables.run_config(lower, "full", 0).learning_rate == 0.001
    assert paper_tables.run_config(default, "full", 0).learning_rate == default.learning_rate
    # Records from before the setting existed were trained at the quickstart's rate.
    old = {k: v for k, v in paper_tables.settings(default).items() if k != "learning_rate"}
    old.update(variant="full", seed=0)
    assert paper_tables.matching([old], default) == [old]
    assert paper_tables.matching([old], lower) == []


@pytest.mark.parametrize(
    "flag, option, value, default",
    [("--extra-small-digits", "extra_small_digits", 8, 0), ("--max-slant", "max_slant", 0.2, 0.0)],
)
def test_training_image_options_reach_the_training_images_only_and_key_the_resume(
    flag, option, value, default
):
    paper_tables = load_benchmark("paper_tables")
    plain = paper_tables.parse_args([])
    changed = paper_tables.parse_args([flag, str(value)])
    assert paper_tables.run_config(changed, "full", 0).dataset_options[option] == value
    assert paper_tables.run_config(plain, "full", 0).dataset_options[option] == default
    # Records from before the setting existed had the default.
    old = {k: v for k, v in paper_tables.settings(plain).items() if k != option}
    old.update(variant="full", seed=0)
    assert paper_tables.matching([old], plain) == [old]
    assert paper_tables.matching([old], changed) == []


def test_paired_settings_pairs_seeds_and_matches_every_setting(tmp_path, capsys):
    paired_settings = load_benchmark("paired_settings")
    # The resume key's settings as paper_tables writes them, less the two that
    # records from before those options lack.
    base = paired_settings.settings(paired_settings.parse_args([]))
    del base["learning_rate"], base["hard_pixel_fraction"]
    base.update(variant="full", steps=2800, batch_norm_images=0, unseen_miou=0.3)
    rows = [
        {**base, "seed": 0, "miou": 0.50},  # no learning_rate key: an earlier 3e-3 record
        {**base, "seed": 1, "miou": 0.60},
        {**base, "seed": 0, "miou": 0.90, "hard_pixel_fraction": 0.5},  # another setting
        {**base, "seed": 0, "miou": 0.53, "learning_rate": 0.006},
        {**base, "seed": 1, "miou": 0.61, "learning_rate": 0.006},
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    paired_settings.main(
        [str(path), "--common", "batch_norm_images=0", "steps=2800"]
        + ["--baseline", "learning_rate=0.003", "--compare", "learning_rate=0.006"]
    )
    output = capsys.readouterr().out
    assert "| learning_rate 0.003 | 0, 1 | 50.0 / 60.0 |" in output
    # +3.0 and +1.0: mean 2.0, std 1.414, t = 2 / (1.414 / sqrt 2) = 2.0
    assert "| learning_rate 0.006 | +3.0, +1.0; +2.00; t 2.00 |" in output


def test_paired_settings_pairs_another_variant_named_in_a_setting(tmp_path, capsys):
    paired_settings = load_benchmark("paired_settings")
    base = paired_settings.settings(paired_settings.parse_args([]))
    base.update(variant="full", unseen_miou=0.3)
    rows = [
        {**base, "seed": 0, "miou": 0.50},
        {**base, "seed": 1, "miou": 0.60},
        {
            **base,
            "seed": 0,
            "miou": 0.55,
            "variant": "full_recalibration_add",
            "backbone_width": 0.5,
        },
        {
            **base,
            "seed": 1,
            "miou": 0.64,
            "variant": "full_recalibration_add",
            "backbone_width": 0.5,
        },
        {**base, "seed": 0, "miou": 0.10, "backbone_width": 0.5},  # full at x0.5: not compared
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    paired_settings.main(
        [str(path), "--baseline", "backbone_width=0.35"]
        + ["--compare", "backbone_width=0.5,variant=full_recalibration_add"]
    )
    output = capsys.readouterr().out
    assert "| backbone_width 0.5, variant full_recalibration_add | 0, 1 | 55.0 / 64.0 |" in output
    # +5.0 and +4.0: mean 4.5, std 0.707, t = 4.5 / (0.707 / sqrt 2) = 9.0
    assert "| +5.0, +4.0; +4.50; t 9.00 |" in output


def test_recalibration_by_class_averages_every_pixel_across_batches():
    import numpy as np

    from keras_msattn import MultiScaleSegmenter

    paper_tables = load_benchmark("paper_tables")
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2", num_classes=3, backbone_width=0.35, backbone_weights=None,
        scales=(1.0, 0.5), head_channels=4, input_shape=(64, 64, 3),
    )  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype("uint8")
    gates = model.attention_maps(images.astype("float32"))["recalibration"].reshape(-1, 3)
    # Batches of 2 and 1 image: the mean is over all pixels, not a mean of batch means.
    found = paper_tables.recalibration_by_class(model, images, batch_size=2)
    np.testing.assert_allclose(found["mean"], gates.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(found["max"], gates.max(axis=0), atol=1e-4)


def test_the_report_names_the_digits_whose_gate_closed():
    paper_tables = load_benchmark("paper_tables")
    gates = lambda means: {"mean": means, "max": [1.0] * len(means)}  # noqa: E731
    found = paper_tables.closed_gates_table(
        [
            {"variant": "full", "seed": 1, "miou": 0.482,
             "recalibration_by_class": gates([0.0, 0.0, 0.5, 0.003, 0.01])},
            {"variant": "full", "seed": 0, "miou": 0.71,
             "recalibration_by_class": gates([0.9, 0.8, 0.5, 0.6, 0.7])},
            {"variant": "single_scale", "seed": 0, "miou": 0.6},  # no gate
        ],
        ["single_scale", "full"],
    )  # fmt: skip
    rows = found.splitlines()[2:]
    # Seeds in order; class c is digit c - 1; the background's gate does not count;
    # a mean at exactly the threshold is open.
    assert rows == ["| full model (this paper) | 0 | none | 71.0 |",
                    "| full model (this paper) | 1 | 0, 2 | 48.2 |"]  # fmt: skip
    assert paper_tables.closed_gates_table([{"variant": "full", "seed": 0}], ["full"]) is None


def test_runs_of_one_seed_on_different_cpus_are_no_pair():
    paper_tables = load_benchmark("paper_tables")
    run = lambda variant, seed, miou, cpu: dict(variant=variant, seed=seed, miou=miou, cpu=cpu)  # noqa: E731
    found = paper_tables.paired_differences(
        [
            run("full", 0, 0.62, "AMD EPYC, avx512_vnni"),
            run("single_scale", 0, 0.60, "AMD EPYC, avx512_vnni"),
            run("full", 1, 0.70, "AMD EPYC, avx2"),
            run("single_scale", 1, 0.60, "AMD EPYC, avx512_vnni"),
            {"variant": "full", "seed": 2, "miou": 0.5},  # recorded before the cpu field
            {"variant": "single_scale", "seed": 2, "miou": 0.4},
        ],
        "full",
        "single_scale",
    )
    assert list(found) == [0, 2]
    assert round(found[0], 6) == 2.0 and round(found[2], 6) == 10.0


def test_resuming_a_seed_on_another_cpu_warns(tmp_path, monkeypatch, capsys):
    paper_tables = load_benchmark("paper_tables")
    out = tmp_path / "tables.jsonl"
    argv = [*TINY, "--out", str(out), "--variants", "single_scale", "full"]
    recorded = dict(
        paper_tables.settings(paper_tables.parse_args(argv)),
        variant="single_scale", seed=0, miou=0.5, train_seconds=1.0, eval_seconds=1.0,
        cpu="Another CPU",
        miou_small=0.1, miou_medium=0.2, miou_large=0.3,
    )  # fmt: skip
    out.write_text(json.dumps(recorded) + "\n")
    # Only the bookkeeping is under test: the run itself is not trained.
    monkeypatch.setattr(
        paper_tables,
        "train_and_evaluate",
        lambda args, variant, seed: dict(recorded, variant=variant, cpu=paper_tables.cpu_name()),
    )
    assert paper_tables.main(argv) == 0
    output = capsys.readouterr().out
    assert "warning: seed 0 has runs recorded on Another CPU" in output, output
    assert "1 runs to do (1 already in" in output
    assert [r["variant"] for r in records(out)] == ["single_scale", "full"]
