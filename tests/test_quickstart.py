import json
import os
import re

import numpy as np
import pytest

from keras_msattn import quickstart
from keras_msattn.quickstart import merge_gain_by_size, quickstart_config, run_quickstart


def test_quickstart_config_is_the_two_scale_attention_edge_model():
    config = quickstart_config(steps=10)
    model = config.model
    assert config.dataset == "scale_digits" and model["backbone"] == "mobilenet_v2"
    assert tuple(model["scales"]) == (1.0, 0.5) and model["fusion"] == "attention"
    assert config.steps == 10 and model["backbone_weights"] is None
    # Full head convs: the separable default scored lower at the quickstart's budget.
    assert model["separable_heads"] is False
    # Batch-norm statistics of whole images, not of the training crops.
    assert config.batch_norm_images == 256 and config.val_size == 192 > config.crop_size
    # Adam at 6e-3: 3.9 mIoU points over 3e-3 on three paired seeds (docs/results.md).
    assert config.optimizer == "adam" and config.learning_rate == 6e-3
    # x0.5 with an added recalibration bias: the sigmoid gate can close on a class
    # for good (docs/results.md, "Backbone width").
    assert model["backbone_width"] == 0.5 and model["recalibration"] == "add"
    # Slanted training digits, but none as slanted as the unseen split's (0.25-0.5).
    assert config.dataset_options == {"max_slant": 0.2}


def test_quickstart_writes_model_exports_figures_and_report(tmp_path, monkeypatch):
    out = tmp_path / "quickstart"
    # 16 images, not 256: the re-estimation is tested in test_batch_norm.py.
    monkeypatch.setattr(quickstart, "BATCH_NORM_IMAGES", 16)
    summary = run_quickstart(
        str(out), steps=2, test_images=6, export_images=4, threads=1, log=lambda *_: None
    )
    for name in [
        "model.keras",
        "evaluation.json",
        "summary.json",
        "report.md",
        "model_float32.tflite",
        "model_int8.tflite",
        "model_int8.report.json",
        "model_int8.report.md",
    ]:
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", report)
    assert {"figures/predictions.png", "figures/training_curve.png"} <= set(figures)
    for figure in figures:
        assert os.path.getsize(out / figure) > 5000, figure
    scores = json.loads((out / "evaluation.json").read_text())
    # The scores are those of the confusion matrix of 6 whole 192-px images.
    confusion = np.asarray(scores["confusion_matrix"], dtype=np.float64)
    assert scores["num_images"] == 6 and confusion.sum() == 6 * 192 * 192
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    assert np.isclose(scores["miou"], np.mean(hits[present] / union[present]))
    assert np.isclose(scores["pixel_accuracy"], hits.sum() / confusion.sum())
    weights = scores["scale_weight_by_digit_size"]
    for values in weights.values():
        assert abs(sum(values.values()) - 1.0) < 1e-4
    # Each stream alone against the merged output, in the scores and in the report.
    accuracy = scores["stream_accuracy_by_digit_size"]
    assert set(accuracy) == {"1.0", "0.5", "final"}
    for stream, name in (("1.0", "1.0x stream alone"), ("0.5", "0.5x stream alone")):
        row = " | ".join(f"{accuracy[stream][size]:.3f}" for size in ("small", "medium", "large"))
        assert f"| {name} | {row} |" in report
    assert "| merged output |" in report
    gains = merge_gain_by_size(accuracy)
    assert f"{gains['large']:+.3f} on large digits" in report
    assert "batch-norm statistics re-estimated on 16 whole training images" in report
    int8 = json.loads((out / "model_int8.report.json").read_text())
    # The summary repeats what the export verified, and the report names the
    # thread count it was timed with.
    assert summary["int8_argmax_agreement"] == int8["agreement"]["argmax_agreement"]
    assert summary["int8_miou"] == int8["miou"]["artifact"]
    assert f"{summary['int8_argmax_agreement']:.2%}" in report
    assert "latency, 1 LiteRT thread |" in report and "2 threads" not in report
    assert int8["flex_ops"] == [] and int8["samples"]["count"] == 4
    # The unseen split is scored too, on its own images: the confusion matrix is
    # that of the saved model's predictions on the first 6 unseen images.
    from keras_msattn.data import scale_digits
    from keras_msattn.inference import batch_logits, load_segmenter

    unseen = scores["unseen"]
    examples = [scale_digits.generate("unseen", i, image_seed=0) for i in range(6)]
    images = np.stack([example[0] for example in examples])
    labels = np.stack([example[1] for example in examples])
    predictions = batch_logits(load_segmenter(str(out / "model.keras")), images).argmax(-1)
    expected = np.bincount(labels.ravel() * 11 + predictions.ravel(), minlength=121)
    np.testing.assert_array_equal(np.asarray(unseen["confusion_matrix"]).ravel(), expected)
    assert summary["unseen_miou"] == unseen["miou"]
    # Both splits again with the 2.5x view: the saved model's labels from
    # `predict_labels` with the quickstart's zoom, image by image.
    from keras_msattn.inference import predict_labels

    zoomed = scores["with_zoomed_view"]
    model = load_segmenter(str(out / "model.keras"))
    for split in ("test", "unseen"):
        assert zoomed[split]["tta_scales"] == [1.0, 2.5]
        assert zoomed[split]["tta_weights"] == pytest.approx([0.6, 0.4])
        expected = np.zeros(121, np.int64)
        for i in range(6):
            image, label = scale_digits.generate(split, i, image_seed=0)[:2]
            predicted = predict_labels(model, image, tta_scales=(1.0, 2.5), tta_weights=(3, 2))
            expected += np.bincount(label.ravel() * 11 + predicted.ravel(), minlength=121)
        np.testing.assert_array_equal(np.ravel(zoomed[split]["confusion_matrix"]), expected)
        assert summary["with_zoomed_view"][f"{split}_miou"] == zoomed[split]["miou"]
    assert summary["with_zoomed_view"]["tta_scales"] == [1.0, 2.5]
    assert "`msattn evaluate --tta-scales 1 2.5 --tta-weights 0.6 0.4`" in report
    assert "| metric | test | unseen | test, with a 2.5x view |" in report
    row = [scores["miou"], unseen["miou"], zoomed["test"]["miou"], zoomed["unseen"]["miou"]]
    assert "| mIoU | " + " | ".join(f"{value:.3f}" for value in row) + " |" in report


def test_the_cli_help_names_the_default_step_count():
    # The CLI does not import the quickstart (TensorFlow) to build its parser, so
    # the number in its help is written out; it must stay the one the run uses.
    from keras_msattn.cli import build_parser
    from keras_msattn.quickstart import DEFAULT_STEPS

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    quickstart = subparsers.choices["quickstart"]
    steps = next(a for a in quickstart._actions if a.dest == "steps")
    assert f"default {DEFAULT_STEPS}" in steps.help


def test_merge_gain_is_the_merged_output_minus_the_best_stream_per_size():
    accuracy = {
        "1.0": {"small": 0.10, "medium": 0.40, "large": 0.80},
        "0.5": {"small": 0.00, "medium": 0.50, "large": 0.60},
        "final": {"small": 0.05, "medium": 0.55, "large": 0.85},
    }
    gains = merge_gain_by_size(accuracy)
    assert np.allclose([gains["small"], gains["medium"], gains["large"]], [-0.05, 0.05, 0.05])
