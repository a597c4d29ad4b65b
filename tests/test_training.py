"""`msattn train`: a recipe end to end on a fake VOC tree, the inference copy, NaN, bad input."""

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from fake_datasets import make_fake_voc

import keras_msattn  # noqa: F401  (registers the classes for safe-mode loading)
from keras_msattn import training
from keras_msattn.cli import main
from keras_msattn.config import (
    TrainConfig,
    apply_overrides,
    load_recipe,
    parse_overrides,
    recipe_config,
    resolve_config,
)
from keras_msattn.files import TEMPORARY_PREFIX
from keras_msattn.keras_internals import flatten_layers
from keras_msattn.segmenter import inference_copy, output_names

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
VOC_RECIPE = str(RECIPES / "voc2012_vgg16_largefov.py")
ADE_RECIPE = str(RECIPES / "ade20k_resnet34_d8.py")
DIGITS_RECIPE = str(RECIPES / "scale_digits_mobilenet_v2.py")

# A tiny model and run in place of the recipe's VGG16 at 321 px for 20k steps.
TINY = [
    'backbone="resnet18_d8"',  # traces in 2/3 of MobileNetV2's time
    "output_stride=16",  # a 4x dilation on 64-px crops' 8x8 maps: 2.7 s a step on CPU
    "backbone_weights=None",
    "head_channels=8",
    "crop_size=64",
    "val_size=64",
    "batch_size=2",
    "steps=3",
    "steps_per_epoch=2",
]


# The ScaleDigits recipe, cut down to a 2-step run on 64-px images.
TINY_DIGITS = [
    "crop_size=64",
    "val_size=64",
    "backbone_width=0.35",
    "head_channels=8",
    "batch_size=2",
    "steps=2",
    "steps_per_epoch=2",
]


def sets(values):
    return [arg for value in values for arg in ("--set", value)]


def read(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory):
    return make_fake_voc(tmp_path_factory.mktemp("voc"))["data_dir"]


def test_train_voc_recipe_writes_every_output(voc_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", VOC_RECIPE, "--data-dir", voc_dir, "--out", str(out), "--mixed-precision"]
        + sets(TINY)
    )
    assert code == 0, capsys.readouterr().err

    config = read(out / "config.json")
    assert config["model"]["num_classes"] == 21  # resolved from the dataset
    assert config["mixed_precision"] is True and config["data_dir"] == voc_dir
    model_config = config["model"]
    assert (model_config["fusion"], model_config["recalibration"]) == ("attention", "multiply")
    assert model_config["backbone"] == "resnet18_d8" and model_config["head_channels"] == 8

    # 3 steps in epochs of 2: the last epoch is cut at the target step.
    history = read(out / "history.json")
    assert [(e["epoch"], e["step"]) for e in history] == [(1, 2), (2, 3)]
    # Poly decay: 1e-3 * (1 - 2/3)^0.9 after epoch 1, 0 at the last step.
    assert history[0]["learning_rate"] == pytest.approx(1e-3 * (1 / 3) ** 0.9, rel=1e-5)
    assert history[1]["learning_rate"] == 0.0
    scores = [e["val_final_miou"] for e in history]
    best = read(out / "best.json")
    assert best["monitor"] == "val_final_miou" and best["value"] == max(scores)
    assert best["epoch"] == 1 + scores.index(max(scores))
    assert read(out / "backup" / "training_metadata.json")["epoch"] == 2
    assert any(name.startswith("events") for name in os.listdir(out / "logs" / "train"))
    assert not [
        name for _, _, files in os.walk(out) for name in files if name.startswith(TEMPORARY_PREFIX)
    ]

    # Inference models: one float32 logits output, even after mixed-precision training.
    images = np.random.default_rng(0).integers(0, 256, (1, 64, 80, 3), dtype=np.uint8)
    for name in ("model.keras", "best.keras"):
        model = keras.saving.load_model(out / name, safe_mode=True)
        assert not model.deep_supervision and model.dtype_policy.name == "float32"
        logits = model.predict(images, verbose=0)
        assert logits.shape == (1, 64, 80, 21) and logits.dtype == np.float32
        assert np.isfinite(logits).all()


def test_inference_copy_is_the_final_output_with_the_same_weights():
    config = TrainConfig(model=dict(
        backbone="mobilenet_v2", backbone_width=0.35, backbone_weights=None, head_channels=8,
        num_classes=5, scales=(1.0, 0.5),
    ))  # fmt: skip
    model = training.build_model(config)
    # Move every weight off its initial value, so that a missed copy shows.
    rng = np.random.default_rng(1)
    for variable in model.weights:
        variable.assign(variable.numpy() + rng.normal(0, 0.05, variable.shape).astype("float32"))
    clone = inference_copy(model)
    assert not clone.deep_supervision and len(clone.weights) == len(model.weights)
    # Trained with its losses on the stride-4 grid, a model still infers at full size.
    coarse = inference_copy(training.build_model(dataclasses.replace(config, loss_stride=4)))
    assert coarse.loss_stride == 1 and coarse(np.zeros((1, 64, 64, 3))).shape == (1, 64, 64, 5)
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = model(images, training=False)["final"]
    np.testing.assert_allclose(clone(images, training=False), expected, rtol=1e-5, atol=1e-5)


def test_inference_copy_of_a_mixed_precision_model_is_float32():
    config = TrainConfig(model=dict(
        backbone="mobilenet_v2", backbone_width=0.35, backbone_weights=None,
        num_classes=5, scales=(1.0,), fusion=None,
    ))  # fmt: skip
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = training.build_model(config)
    finally:
        keras.config.set_dtype_policy(previous)
    clone = inference_copy(model)
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert {layer.dtype_policy.name for layer in flatten_layers(clone)} == {"float32"}
    for source, target in zip(model.weights, clone.weights, strict=True):
        np.testing.assert_array_equal(source.numpy(), target.numpy())


def test_nan_loss_stops_with_the_step_and_a_nonzero_exit(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", DIGITS_RECIPE, "--variant", "single_scale", "--out", str(out)]
        + sets(
            [
                'dataset_options={"image_size": 64}',
                "crop_size=64",
                "val_size=64",
                "val_images=2",
                "backbone_width=0.35",
                "head_channels=8",
                "batch_size=2",
                "steps=6",
                "steps_per_epoch=3",
                'optimizer="sgd"',
                "learning_rate=1e30",
            ]
        )
    )
    error = capsys.readouterr().err
    assert code == 3
    assert "msattn train: training stopped: the loss is nan at step" in error
    assert "Try a lower learning rate (now 1e+30)" in error
    assert not (out / "model.keras").exists() and not (out / "best.keras").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "stepz=3"], "unknown key 'stepz' in --set; allowed keys: dataset, data_dir"),
        (["--set", "steps"], "--set expects key=value, got 'steps'"),
        (
            ["--variant", "fulll"],
            "unknown variant 'fulll'; allowed variants: single_scale, max_merge",
        ),
        (["--set", "steps=0"], "`steps` must be an integer >= 1, got 0"),
        (["--set", 'optimizer="lamb"'], "`optimizer` must be one of ('sgd', 'adam', 'adamw')"),
        (["--set", "loss_stride=3"], "`loss_stride` must be one of (1, 2, 4, 8), got 3"),
        (["--set", "model.loss_stride=4"], "`model.loss_stride` is set by training itself"),
        (["--set", "rotation_range=270"], "`rotation_range` must be in [0, 180] degrees, got 270"),
        (["--set", "shear_range=-0.1"], "`shear_range` must be in [0, 1), got -0.1"),
        (["--set", "crops_per_image=0"], "`crops_per_image` must be an integer >= 1, got 0"),
        (["--set", "batch_norm_images=4", "batch_size=8"], "`batch_norm_images` 4 needs"),
        (["--set", "hard_pixel_fraction=0"], "`hard_pixel_fraction` must be a number in"),
    ],
)
def test_bad_arguments_are_errors_naming_the_choices(arguments, message, tmp_path, capsys):
    code = main(["train", VOC_RECIPE, "--out", str(tmp_path / "run")] + arguments)
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_recipe_is_an_error(tmp_path, capsys):
    code = main(["train", str(tmp_path / "nope.py"), "--out", str(tmp_path / "run")])
    assert code == 2 and "recipe not found" in capsys.readouterr().err


def test_set_values_are_literals_where_they_parse():
    # Model arguments go into the model section, by bare name or as model.NAME.
    assert parse_overrides(
        [
            "steps=5",
            "scales=(1.0,)",
            "model.fusion=None",
            "backbone=resnet34_d8",
            'dataset="ade20k"',
        ]
    ) == {
        "steps": 5,
        "dataset": "ade20k",
        "model": {"scales": (1.0,), "fusion": None, "backbone": "resnet34_d8"},
    }


@pytest.mark.parametrize("recipe", [VOC_RECIPE, ADE_RECIPE, DIGITS_RECIPE])
def test_every_recipe_variant_is_a_valid_model(recipe):
    module = load_recipe(recipe)
    assert module.DEFAULT_VARIANT in module.VARIANTS
    for name, overrides in module.VARIANTS.items():
        # Variants change the model only.
        assert set(overrides) == {"model"}, name
        config = resolve_config(recipe_config(module, name))
        for key, value in overrides["model"].items():
            expected = tuple(value) if isinstance(value, list) else value
            stored = config.model[key]
            assert (tuple(stored) if isinstance(stored, list) else stored) == expected, (name, key)
        # The same arguments on a small backbone: MultiScaleSegmenter accepts them.
        small = apply_overrides(
            config,
            {"model": dict(backbone="mobilenet_v2", backbone_width=0.35, backbone_weights=None,
                           head_channels=8, output_stride=8)},
        )  # fmt: skip
        model = training.build_model(small)
        outputs = model(np.zeros((1, 64, 64, 3), "float32"))
        assert sorted(outputs) == sorted(keras_msattn.output_names(config.scales)), name


def test_one_set_takes_several_values(tmp_path, capsys):
    # `--set steps=3 stepz=4`: the second value reaches the config (and is refused
    # by name), it is not an unrecognized argument of the command line.
    code = main(
        ["train", VOC_RECIPE, "--out", str(tmp_path / "run"), "--set", "steps=3", "stepz=4"]
    )
    error = capsys.readouterr().err
    assert code == 2 and "unknown key 'stepz' in --set" in error
    assert "unrecognized arguments" not in error


def test_several_values_per_set_and_repeated_sets_train_the_same_config(tmp_path, capsys):
    from keras_msattn.cli import _set_pairs, build_parser

    values = ['dataset_options={"image_size": 64}', "val_images=2", *TINY_DIGITS]
    head = ["train", DIGITS_RECIPE, "--variant", "single_scale", "--out", str(tmp_path / "run")]
    repeated = build_parser().parse_args(head + sets(values))
    together = build_parser().parse_args(head + ["--set", *values])
    assert _set_pairs(repeated) == _set_pairs(together) == values
    code = main(head + ["--set", *values])
    assert code == 0, capsys.readouterr().err
    config = read(tmp_path / "run" / "config.json")
    assert config["steps"] == 2 and config["model"]["head_channels"] == 8
    assert config["model"]["backbone_width"] == 0.35 and config["crop_size"] == 64
    assert config["dataset_options"] == {"image_size": 64} and config["val_images"] == 2
    # The start-up line gives the training-memory estimate for the batch per device.
    out = capsys.readouterr().out
    assert out.count("training memory (estimate):") == 1
    assert "GiB per device at 2 image(s) per device" in out


def test_a_config_written_before_a_field_existed_resumes_with_its_default(tmp_path):
    config = resolve_config(TrainConfig(dataset="scale_digits", train_split="train"))
    training._check_or_write_config(config, str(tmp_path), write=True)
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["loss_stride"]  # as an older version wrote it
    (tmp_path / "config.json").write_text(json.dumps(stored))
    training._check_or_write_config(config, str(tmp_path), write=False)
    # A field that differs from that default is still another run's config.
    with pytest.raises(ValueError, match="differs in: loss_stride"):
        training._check_or_write_config(
            dataclasses.replace(config, loss_stride=4), str(tmp_path), write=False
        )


def test_the_first_training_step_creates_no_variables():
    # A variable created inside the traced step makes tf.function trace it twice.
    config = resolve_config(
        TrainConfig(dataset="scale_digits", train_split="train", loss_stride=4, model=dict(
            backbone="mobilenet_v2", backbone_width=0.35, backbone_weights=None,
            head_channels=8, output_stride=16,
        ), hard_pixel_fraction=0.5)
    )  # fmt: skip
    model = training.compile_model(training.build_model(config), config)
    # Every one of the 1 + S losses averages its hardest half of the pixels.
    assert {loss.hard_pixel_fraction for loss in model.loss.values()} == {0.5}
    # The dummy batch that built the trackers left no value in them.
    values = [float(v) for m in model.metrics for v in keras.tree.flatten(m.result())]
    assert values and all(v == 0.0 for v in values)
    created = []

    def record(next_creator, **kwargs):
        created.append(kwargs.get("name"))
        return next_creator(**kwargs)

    images = np.zeros((2, 64, 64, 3), "float32")
    labels = {name: np.zeros((2, 64, 64), "int32") for name in output_names(config.scales)}
    with tf.variable_creator_scope(record):
        model.train_on_batch(images, labels)
    assert created == []
