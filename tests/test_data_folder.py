import os
import re

import numpy as np
import pytest
import tensorflow as tf
from fake_datasets import make_fake_folder, write_gray_png
from PIL import Image

from keras_msattn.data import DATASET_NAMES, dataset_info, load_dataset


def _load(data_dir, split=None, **options):
    return list(load_dataset("folder", split, data_dir=data_dir, **options).as_numpy_iterator())


def test_flat_layout_with_classes_txt(tmp_path):
    fake = make_fake_folder(tmp_path / "flat", n=4, num_classes=3)
    got = _load(fake["data_dir"])
    assert len(got) == 4
    for (image, label), expected in zip(got, fake["labels"]["all"], strict=True):
        assert image.shape == (45, 60, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(label, expected)
    assert len(_load(fake["data_dir"], "all")) == 4
    info = dataset_info("folder", fake["data_dir"])
    assert info.num_classes == 3 and info.class_names == fake["class_names"]
    assert info.splits == ("all",) and info.ignore_label == 255


def test_split_layout_and_num_classes_option(tmp_path):
    fake = make_fake_folder(
        tmp_path / "splits", n=2, num_classes=4, splits=("train", "val"), classes_txt=False
    )
    with pytest.raises(ValueError, match="classes.txt.*num_classes"):
        load_dataset("folder", "train", data_dir=fake["data_dir"])
    got = _load(fake["data_dir"], "val", num_classes=4)
    np.testing.assert_array_equal(got[1][1], fake["labels"]["val"][1])
    info = dataset_info("folder", fake["data_dir"], num_classes=4)
    assert info.splits == ("train", "val") and info.num_classes == 4
    # A split that is not there names the folder it expected and the flat alternative.
    expected = os.path.join(fake["data_dir"], "test", "images")
    with pytest.raises(FileNotFoundError, match=re.escape(expected) + ".*split='all'"):
        load_dataset("folder", "test", data_dir=fake["data_dir"], num_classes=4)


def test_num_classes_must_agree_with_classes_txt(tmp_path):
    fake = make_fake_folder(tmp_path / "flat", n=1, num_classes=3)
    with pytest.raises(ValueError, match="num_classes=5.*lists 3 classes"):
        load_dataset("folder", None, data_dir=fake["data_dir"], num_classes=5)


def test_label_outside_classes_is_named(tmp_path):
    fake = make_fake_folder(tmp_path / "flat", n=3, num_classes=3)
    mask = fake["masks"]["all"][1]
    values = np.zeros((45, 60), np.uint8)
    values[0, 0], values[1, 1] = 3, 254
    write_gray_png(mask, values)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        _load(fake["data_dir"])
    assert mask in error.value.message
    assert "outside the valid range 0..2 or 255: 3, 254" in error.value.message


def test_grayscale_rgba_and_16bit_images_become_rgb(tmp_path):
    fake = make_fake_folder(tmp_path / "flat", n=3, num_classes=3)
    rng = np.random.default_rng(0)
    images = fake["images"]["all"]
    gray = rng.integers(0, 256, (45, 60), dtype=np.uint8)
    rgba = rng.integers(0, 256, (45, 60, 4), dtype=np.uint8)
    deep = (rng.integers(0, 65536, (45, 60))).astype(np.uint16)
    for path in images:
        os.remove(path)
    stems = [os.path.splitext(p)[0] for p in images]
    Image.fromarray(gray, mode="L").save(stems[0] + ".png")
    Image.fromarray(rgba, mode="RGBA").save(stems[1] + ".png")
    Image.fromarray(deep).save(stems[2] + ".png")  # 16-bit grayscale PNG
    got = _load(fake["data_dir"])
    assert [image.shape for image, _ in got] == [(45, 60, 3)] * 3
    # Grayscale -> three equal channels; RGBA -> alpha dropped; 16 bit -> scaled to 8 bit.
    np.testing.assert_array_equal(got[0][0], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(got[1][0], rgba[..., :3])
    np.testing.assert_array_equal(got[2][0][..., 1], deep >> 8)


def test_16bit_masks_hold_class_indices(tmp_path):
    fake = make_fake_folder(tmp_path / "flat", n=1, num_classes=3)
    values = np.full((45, 60), 2, np.uint16)
    values[:, :5] = 255
    Image.fromarray(values).save(fake["masks"]["all"][0])
    ((_, label),) = _load(fake["data_dir"])
    np.testing.assert_array_equal(label, values)


def _plant_unsupported(tmp_path):
    """A folder dataset whose four pairs are each bad in a different way."""
    fake = make_fake_folder(tmp_path / "flat", n=4, num_classes=3)
    masks, images = fake["masks"]["all"], fake["images"]["all"]
    Image.fromarray(np.zeros((45, 60, 3), np.uint8)).save(masks[0])
    with open(images[1], "wb") as f:
        f.write(b"this is not an image")
    Image.fromarray(np.zeros((45, 60), bool)).save(masks[2])  # 1-bit PNG
    # Right markers, garbage inside: the decoder fails without a truncation hint.
    with open(images[3], "rb") as f:
        data = f.read()
    with open(images[3], "wb") as f:
        f.write(data[:33] + bytes(len(data) - 45) + data[-12:])
    problems = [
        (masks[0], "RGB/RGBA"),
        (images[1], "not an image file"),
        (masks[2], "fewer than 8 bits"),
        (images[3], "corrupt file (decoder failed)"),
    ]
    return fake, problems


def test_unsupported_masks_and_non_images_are_named(tmp_path):
    fake, problems = _plant_unsupported(tmp_path)
    ds = load_dataset("folder", None, data_dir=fake["data_dir"])
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(ds)
    path, problem = problems[0]
    assert path in error.value.message and problem in error.value.message


def test_skip_bad_reports_every_kind(tmp_path, capfd):
    fake, problems = _plant_unsupported(tmp_path)
    assert _load(fake["data_dir"], skip_bad=True) == []
    err = capfd.readouterr().err
    for path, problem in problems:
        assert re.search(re.escape(path) + r"[^\n]*" + re.escape(problem), err), (path, err)
    assert "folder/all: skipped 4 of 4 files" in err


def test_unpaired_files_and_duplicate_stems(tmp_path):
    fake = make_fake_folder(tmp_path / "flat", n=3, num_classes=3)
    os.remove(fake["masks"]["all"][0])
    with pytest.raises(FileNotFoundError, match=re.escape(fake["masks"]["all"][0])):
        load_dataset("folder", None, data_dir=fake["data_dir"])
    assert len(_load(fake["data_dir"], skip_bad=True)) == 2
    stem = os.path.splitext(fake["images"]["all"][1])[0]
    Image.fromarray(np.zeros((45, 60, 3), np.uint8)).save(stem + ".jpeg")
    with pytest.raises(ValueError, match="two files with the stem"):
        load_dataset("folder", None, data_dir=fake["data_dir"])


def test_unknown_dataset_name_lists_the_allowed_names():
    with pytest.raises(ValueError) as error:
        load_dataset("cityscapes", "train")
    for name in DATASET_NAMES:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="voc2012"):
        dataset_info("pascal")


def test_scale_digits_is_dispatched():
    info = dataset_info("scale_digits")
    assert info.num_classes == 11 and info.ignore_label == 255
    ds = load_dataset("scale_digits", "val", num_images=2, image_size=64)
    image, label = next(ds.as_numpy_iterator())
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert label.shape == (64, 64) and label.dtype == np.int32
