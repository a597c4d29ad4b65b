import json
import os
import re

from keras_msattn.quickstart import quickstart_config, run_quickstart


def test_quickstart_config_is_the_two_scale_attention_edge_model():
    config = quickstart_config(steps=10)
    assert config.dataset == "scale_digits" and config.backbone == "mobilenet_v2"
    assert tuple(config.scales) == (1.0, 0.5) and config.fusion == "attention"
    assert config.steps == 10 and config.backbone_weights is None


def test_quickstart_writes_model_exports_figures_and_report(tmp_path):
    out = tmp_path / "quickstart"
    summary = run_quickstart(str(out), steps=2, test_images=6, export_images=4, log=lambda *_: None)
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
    assert scores["num_images"] == 6 and 0.0 <= scores["miou"] <= 1.0
    weights = scores["scale_weight_by_digit_size"]
    for values in weights.values():
        assert abs(sum(values.values()) - 1.0) < 1e-4
    assert 0.0 <= summary["int8_argmax_agreement"] <= 1.0
    int8 = json.loads((out / "model_int8.report.json").read_text())
    assert int8["flex_ops"] == [] and int8["samples"]["count"] == 4
