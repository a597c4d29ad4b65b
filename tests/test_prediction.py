import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_msattn import MultiScaleSegmenter, inference, prediction, visualization
from keras_msattn.cli import main

NUM_CLASSES = 5


def tiny(**kwargs):
    keras.utils.set_random_seed(0)
    return MultiScaleSegmenter(
        backbone="resnet18_d8", num_classes=NUM_CLASSES, head_channels=8, **kwargs
    )


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Image files of different sizes and modes, with the RGB array each should read as."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (50, 40), dtype=np.uint8)
    rgba = rng.integers(0, 256, (36, 70, 4), dtype=np.uint8)
    small = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)  # below the model's 32 px minimum
    deep = rng.integers(0, 65536, (40, 40), dtype=np.uint16)
    files = {
        "photo.jpg": (Image.fromarray(rgb), None),
        "gray.png": (Image.fromarray(gray, mode="L"), np.repeat(gray[..., None], 3, -1)),
        "rgba.png": (Image.fromarray(rgba, mode="RGBA"), rgba[..., :3]),
        "small.png": (Image.fromarray(small), small),
        "deep.png": (Image.fromarray(deep), None),
    }
    out = {}
    for name, (image, expected) in files.items():
        path = str(folder / name)
        image.save(path)
        out[path] = expected
    return out


def test_read_image_converts_to_rgb(images):
    for path, expected in images.items():
        image = prediction.read_image(path)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        if expected is not None:
            np.testing.assert_array_equal(image, expected)
    deep_path = next(p for p in images if p.endswith("deep.png"))
    with Image.open(deep_path) as raw:
        deep = np.asarray(raw).astype(float)
    np.testing.assert_array_equal(prediction.read_image(deep_path)[..., 0], np.rint(deep / 257))


def test_cli_predict_writes_masks_of_the_input_size(model, saved_model, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", saved_model, *images, "--out", str(out)]) == 0
    assert "5 image(s)" in capsys.readouterr().out
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        image = prediction.read_image(path)
        height, width = image.shape[:2]
        with Image.open(out / f"{stem}_labels.png") as labels_png:
            assert labels_png.mode == "L" and labels_png.size == (width, height)
            labels = np.asarray(labels_png)
        # The label PNG holds the model's predicted class indices.
        np.testing.assert_array_equal(labels, inference.predict_labels(model, image))
        assert labels.max() < NUM_CLASSES
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.mode == "RGB" and mask.size == (width, height)
            np.testing.assert_array_equal(np.asarray(mask), visualization.colorize(labels))
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.size == (width, height)
        for figure in ("attention", "recalibration"):
            with Image.open(out / f"{stem}_{figure}.png") as png:
                assert png.size[0] >= 2 * visualization.PANEL_INCHES * visualization.DPI
    assert not [name for name in os.listdir(out) if name.startswith(".tmp")]


def test_cli_predict_passes_weighted_test_time_scales_on(model, saved_model, images, tmp_path):
    photo = next(iter(images))
    argv = ["predict", saved_model, photo, "--out", str(tmp_path / "w"), "--no-attention",
            "--tta-scales", "1", "2", "--tta-weights", "0", "1"]  # fmt: skip
    assert main(argv) == 0
    stem = os.path.splitext(os.path.basename(photo))[0]
    with Image.open(tmp_path / "w" / f"{stem}_labels.png") as labels_png:
        labels = np.asarray(labels_png)
    # Weight 0 on 1x: the labels are those of the 2x view alone.
    image = prediction.read_image(photo)
    zoomed = inference.predict_labels(model, image, tta_scales=(2.0,))
    np.testing.assert_array_equal(labels, zoomed)
    assert (zoomed != inference.predict_labels(model, image)).any(), "the views must differ"


def test_no_attention_flag_and_models_without_attention(model, saved_model, images, tmp_path):
    photo = next(iter(images))
    assert (
        main(["predict", saved_model, photo, "--out", str(tmp_path / "a"), "--no-attention"]) == 0
    )
    assert sorted(os.listdir(tmp_path / "a")) == [
        "photo_labels.png",
        "photo_mask.png",
        "photo_overlay.png",
    ]
    average = tiny(fusion="average")
    written = prediction.predict_files(average, [photo], tmp_path / "b")
    assert sorted(written[0]) == ["labels", "mask", "overlay"]
    no_extra = tiny(recalibration=None)
    written = prediction.predict_files(no_extra, [photo], tmp_path / "c")
    assert sorted(written[0]) == ["attention", "labels", "mask", "overlay"]


def test_fixed_size_model_segments_any_size(images, tmp_path):
    fixed = tiny(input_shape=(32, 32, 3))
    photo = next(iter(images))
    written = prediction.predict_files(fixed, [photo], tmp_path, tta_scales=(1.0, 0.75), flip=True)
    with Image.open(written[0]["labels"]) as labels:
        assert labels.size == (60, 45)
    assert os.path.exists(written[0]["attention"])


def test_class_names_file(saved_model, images, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("sky\nroad\n\ncar\nperson\ntree\n")
    photo = next(iter(images))
    argv = [
        "predict",
        saved_model,
        photo,
        "--out",
        str(tmp_path / "o"),
        "--class-names",
        str(names),
    ]
    assert main(argv) == 0
    names.write_text("sky\nroad\n")
    assert main(argv) == 2
    assert "2 names; the model predicts 5 classes" in capsys.readouterr().err


def test_unreadable_files_are_named_and_fail_the_command(saved_model, images, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    photo = next(iter(images))
    out = tmp_path / "out"
    argv = ["predict", saved_model, str(broken), photo, str(text), str(tmp_path / "missing.png"),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "3 of 4 image(s) could not be read" in err
    for bad in (broken, text):
        assert f"{bad}: cannot read the image" in err
    assert f"{tmp_path / 'missing.png'}: no such image file" in err
    assert os.path.exists(out / "photo_labels.png")  # the readable image is still done


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "nope.keras", "x.png", "--out", "o"], "nope.keras: no such model file"),
        (["predict", "{images}", "x.png", "--out", "o"], "expected a .keras model file"),
        (
            ["predict", "{garbage}", "x.png", "--out", "o"],
            "garbage.keras: damaged, or not a .keras model",
        ),
    ],
)
def test_bad_model_files_are_named(images, argv, message, tmp_path, capsys):
    garbage = tmp_path / "garbage.keras"
    garbage.write_text("not a model")
    argv = [
        a.replace("{images}", next(iter(images))).replace("{garbage}", str(garbage)) for a in argv
    ]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_inputs_with_the_same_stem_are_refused(model, images, tmp_path):
    photo = next(iter(images))
    other = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(other)
    with pytest.raises(ValueError, match="same name 'photo'"):
        prediction.predict_files(model, [photo, other], tmp_path / "out")
