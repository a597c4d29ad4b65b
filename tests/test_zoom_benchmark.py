"""benchmarks/test_time_zoom.py: its records are evaluate's scores with the same
views, a rerun skips what is recorded, and the report pairs variants by seed."""

import argparse
import json

import keras
import pytest
from benchmark_scripts import load_benchmark

from keras_msattn import MultiScaleSegmenter
from keras_msattn.data import scale_digits
from keras_msattn.evaluation import evaluate

zoom = load_benchmark("test_time_zoom")


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_evaluate_s_scores_and_a_rerun_skips_them(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2", backbone_width=0.35, num_classes=11, head_channels=8
    )
    model_path = tmp_path / "full-seed0-tiny" / "model.keras"
    model_path.parent.mkdir()
    model.save(model_path)
    out = tmp_path / "zoom.jsonl"
    argv = [str(model_path), "--split", "val", "--images", "2", "--out", str(out)]
    assert zoom.main([*argv, "--combos", "1:1", "1:0.6,2:0.4"]) == 0
    first = records(out)
    assert [r["combo"] for r in first] == ["1:1", "1:0.6,2:0.4"]
    assert first[0]["run"] == "full-seed0-tiny" and first[0]["images"] == 2
    for record, views in zip(
        first, [{}, {"tta_scales": (1.0, 2.0), "tta_weights": (0.6, 0.4)}], strict=True
    ):
        data = scale_digits.load("val", num_images=2, with_size_map=True)
        expected = evaluate(
            model, data, 11, extra_scores=scale_digits.SizeBucketScores(), verbose=0, **views
        )
        for key in ("miou", "miou_small", "miou_medium", "miou_large"):
            if expected[key] is None:
                assert record[key] != record[key], key  # NaN: no digit of that size
            else:
                assert record[key] == pytest.approx(expected[key], abs=1e-9), key
    # A rerun scores only the combination not yet recorded.
    assert zoom.main([*argv, "--combos", "1:1", "1:0.6,2:0.4", "2:1"]) == 0
    assert [r["combo"] for r in records(out)] == ["1:1", "1:0.6,2:0.4", "2:1"]
    # Another data seed is another set of images: scored anew, on those images.
    assert zoom.main([*argv, "--combos", "1:1", "--image-seed", "1"]) == 0
    last = records(out)[-1]
    assert (last["combo"], last["image_seed"]) == ("1:1", 1)
    data = scale_digits.load("val", num_images=2, with_size_map=True, image_seed=1)
    expected = evaluate(model, data, 11, extra_scores=scale_digits.SizeBucketScores(), verbose=0)
    assert last["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert records(out)[0]["miou"] != last["miou"]


@pytest.mark.parametrize("text", ["1", "1:x", "1:-1", "0:1", "1:0,2:0"])
def test_bad_combinations_are_named(text):
    with pytest.raises(argparse.ArgumentTypeError, match="1:0.6,2:0.4|non-negative"):
        zoom.parse_combo(text)


def test_the_report_pairs_variants_by_seed(capsys):
    def record(variant, seed, miou):
        return {
            "run": f"{variant}-seed{seed}-2000steps", "split": "test", "images": 300,
            "combo": "1:1", "miou": miou, "miou_small": 0.1, "miou_medium": 0.4,
            "miou_large": 0.7,
        }  # fmt: skip

    rows = [record("single_scale", 0, 0.50), record("single_scale", 1, 0.60)]
    rows += [record("full", 0, 0.51), record("full", 1, 0.63), record("full", 2, 0.9)]
    zoom.report(rows, baseline="single_scale")
    out = capsys.readouterr().out
    # Seed 2 has no single-scale run to pair with: the differences are +1 and +3 points.
    assert "| full | 1:1 | 0,1,2 | 68.0 |" in out
    assert "| +1.0, +3.0 | +2.00 | 2.00 |" in out
