import os
import re

import numpy as np
import pytest
import tensorflow as tf
from fake_datasets import make_fake_voc, truncate_file, write_gray_png, write_palette_png
from PIL import Image

from keras_msattn.data import dataset_info, load_dataset, voc


def _ids(paths):
    return [os.path.splitext(os.path.basename(p))[0] for p in paths]


@pytest.fixture
def fake_voc(tmp_path):
    return make_fake_voc(tmp_path / "data")


def test_train_aug_list_arithmetic():
    voc_train = ["b", "a", "c"]
    voc_val = ["v1", "v2"]
    sbd_train = ["a", "v1", "s2", "s1", "s1"]
    sbd_val = ["s3", "s2", "v2"]
    ids = voc.train_aug_ids(voc_train, voc_val, sbd_train, sbd_val)
    assert ids == ["a", "b", "c", "s1", "s2", "s3"]


def test_train_aug_files_follow_the_lists(fake_voc):
    files = voc.split_files(fake_voc["data_dir"], "train_aug")
    assert _ids(files.images) == fake_voc["train_aug"]
    assert _ids(files.labels) == fake_voc["train_aug"]
    voc_train = set(fake_voc["voc_train"])
    for image_id, label in zip(_ids(files.labels), files.labels, strict=True):
        # VOC train ids take SegmentationClass, every other one SBD's .mat.
        assert label.endswith(".png" if image_id in voc_train else ".mat")
    # The SBD-only image that VOC's JPEGImages lacks is read from SBD's img/.
    assert files.images[-1].startswith(fake_voc["sbd_root"])
    assert not set(fake_voc["voc_val"]) & set(_ids(files.images))


@pytest.mark.parametrize("split", ["train", "val", "train_aug"])
def test_splits_yield_expected_images_and_labels(fake_voc, split):
    ds = load_dataset("voc2012", split, data_dir=fake_voc["data_dir"])
    assert ds.element_spec[0].dtype == tf.uint8 and ds.element_spec[1].dtype == tf.int32
    expected = fake_voc["labels"][split]
    got = list(ds.as_numpy_iterator())
    assert len(got) == len(expected)
    for (image, label), image_id in zip(got, sorted(expected), strict=True):
        assert image.shape == (45, 60, 3) and image.dtype == np.uint8
        assert label.shape == (45, 60) and label.dtype == np.int32
        np.testing.assert_array_equal(label, expected[image_id])
    if split != "train_aug":
        # Palette index 255 (the object border) stays 255 = ignore.
        assert all((label == 255).any() for _, label in got)


def test_shuffle_changes_order_but_not_content(fake_voc):
    ds = load_dataset("voc2012", "train_aug", data_dir=fake_voc["data_dir"], shuffle=True, seed=3)
    first = [label.sum() for _, label in ds.as_numpy_iterator()]
    second = [label.sum() for _, label in ds.as_numpy_iterator()]
    ordered = [v.astype(np.int32).sum() for _, v in sorted(fake_voc["labels"]["train_aug"].items())]
    assert sorted(first) == sorted(ordered) == sorted(second)
    assert first != ordered or second != ordered


def test_sbd_cache_is_written_atomically(fake_voc, monkeypatch):
    sbd_root = fake_voc["sbd_root"]
    cache = os.path.join(sbd_root, "cls_png")
    calls = []
    original = voc.read_sbd_mat

    def crash_on_third(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash while building the cache")
        return original(path)

    monkeypatch.setattr(voc, "read_sbd_mat", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        voc.build_sbd_cache(sbd_root, cache)
    # Nothing that could read as a cache, and no temporary folder left behind.
    assert not os.path.exists(cache)
    assert [n for n in os.listdir(sbd_root) if n.startswith("cls_png")] == []

    # A folder without the completion marker (say, from a copy cut short) is rebuilt.
    monkeypatch.setattr(voc, "read_sbd_mat", original)
    os.makedirs(cache)
    with open(os.path.join(cache, "junk.png"), "w") as f:
        f.write("partial")
    assert voc.build_sbd_cache(sbd_root, cache) == {}
    assert os.path.isfile(os.path.join(cache, voc.CACHE_MARKER))
    assert not os.path.exists(os.path.join(cache, "junk.png"))
    n_mats = len(os.listdir(os.path.join(sbd_root, "cls")))
    assert len([n for n in os.listdir(cache) if n.endswith(".png")]) == n_mats

    # A complete cache is reused, not rebuilt.
    monkeypatch.setattr(voc, "read_sbd_mat", lambda path: pytest.fail("cache was rebuilt"))
    voc.build_sbd_cache(sbd_root, cache)


def test_wrong_root_names_the_expected_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "VOCdevkit" / "VOC2012"))):
        load_dataset("voc2012", "train", data_dir=str(tmp_path))


def test_train_aug_without_sbd_names_its_folder(fake_voc):
    os.rename(fake_voc["sbd_root"], fake_voc["sbd_root"] + "_moved")
    with pytest.raises(FileNotFoundError, match=re.escape(fake_voc["sbd_root"])):
        load_dataset("voc2012", "train_aug", data_dir=fake_voc["data_dir"])


def test_empty_split_list_is_an_error(fake_voc):
    path = os.path.join(fake_voc["voc_root"], "ImageSets", "Segmentation", "val.txt")
    open(path, "w").close()
    with pytest.raises(ValueError, match=re.escape(path) + ".*no images"):
        load_dataset("voc2012", "val", data_dir=fake_voc["data_dir"])


def test_unknown_split(fake_voc):
    with pytest.raises(ValueError, match="train_aug, train, val"):
        load_dataset("voc2012", "test", data_dir=fake_voc["data_dir"])


def test_missing_file_is_named_or_skipped_and_counted(fake_voc, caplog):
    image_id = fake_voc["voc_train"][1]
    path = os.path.join(fake_voc["voc_root"], "JPEGImages", image_id + ".jpg")
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        load_dataset("voc2012", "train", data_dir=fake_voc["data_dir"])
    with caplog.at_level("WARNING", logger="keras_msattn.data"):
        ds = load_dataset("voc2012", "train", data_dir=fake_voc["data_dir"], skip_bad=True)
    assert len(list(ds)) == len(fake_voc["voc_train"]) - 1
    assert "skipping 1 missing or unreadable file" in caplog.text and path in caplog.text


BAD_KINDS = ("truncated image", "mask size", "mask values", "palette")


def _plant(fake, kind, k):
    """Make the k-th VOC train pair bad in one way; return (path, expected problem)."""
    image_id = fake["voc_train"][k]
    image = os.path.join(fake["voc_root"], "JPEGImages", image_id + ".jpg")
    label = os.path.join(fake["voc_root"], "SegmentationClass", image_id + ".png")
    if kind == "truncated image":
        truncate_file(image)
        return image, "corrupt image"
    if kind == "mask size":
        write_palette_png(label, np.zeros((30, 60), np.uint8))
        return label, "mask size 60x30 differs from its image size 60x45"
    if kind == "mask values":
        values = np.zeros((45, 60), np.uint8)
        values[5, 5] = 30
        write_palette_png(label, values)
        return label, "outside the valid range 0..20 or 255: 30"
    other = Image.fromarray(np.ones((45, 60), np.uint8), mode="P")
    other.putpalette([200, 10, 10] * 256)
    other.save(label)
    return label, "not the PASCAL VOC palette"


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_stops_iteration_with_its_name(tmp_path, kind):
    fake = make_fake_voc(tmp_path / "voc", n_train=4, n_val=1, n_sbd=1)
    path, problem = _plant(fake, kind, 2)
    ds = load_dataset("voc2012", "train", data_dir=fake["data_dir"])
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(ds)
    assert path in error.value.message and problem in error.value.message


def test_skip_bad_skips_and_counts(tmp_path, capfd):
    fake = make_fake_voc(tmp_path / "voc", n_train=6, n_val=1, n_sbd=1)
    # The last one is bad too: the end of the split must not hide a failure.
    bad = [_plant(fake, kind, k) for k, kind in zip((0, 1, 3, 5), BAD_KINDS, strict=True)]
    ds = load_dataset("voc2012", "train", data_dir=fake["data_dir"], skip_bad=True)
    assert len(list(ds)) == 2
    err = capfd.readouterr().err
    for path, problem in bad:
        assert f"skipping {path}: " in err and problem in err
    assert "voc2012/train: skipped 4 of 6 files" in err


def test_bad_sbd_mat_is_named(fake_voc):
    mat = os.path.join(fake_voc["sbd_root"], "cls", fake_voc["sbd_train"][2] + ".mat")
    with open(mat, "wb") as f:
        f.write(b"not a mat file")
    with pytest.raises(FileNotFoundError, match=re.escape(mat) + ".*unreadable SBD label"):
        load_dataset("voc2012", "train_aug", data_dir=fake_voc["data_dir"])
    ds = load_dataset("voc2012", "train_aug", data_dir=fake_voc["data_dir"], skip_bad=True)
    assert len(list(ds)) == len(fake_voc["train_aug"]) - 1


def test_rgb_mask_is_an_error(fake_voc):
    label = os.path.join(fake_voc["voc_root"], "SegmentationClass", fake_voc["voc_val"][0] + ".png")
    Image.fromarray(np.zeros((45, 60, 3), np.uint8)).save(label)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(label) + ".*RGB/RGBA"):
        list(load_dataset("voc2012", "val", data_dir=fake_voc["data_dir"]))


def test_grayscale_index_masks_also_work(fake_voc):
    image_id = fake_voc["voc_val"][0]
    expected = fake_voc["labels"]["val"][image_id]
    write_gray_png(
        os.path.join(fake_voc["voc_root"], "SegmentationClass", image_id + ".png"), expected
    )
    _, label = next(
        load_dataset("voc2012", "val", data_dir=fake_voc["data_dir"]).as_numpy_iterator()
    )
    np.testing.assert_array_equal(label, expected)


def test_dataset_info():
    info = dataset_info("voc2012")
    assert info.num_classes == 21 and len(info.class_names) == 21
    assert info.class_names[0] == "background" and info.class_names[15] == "person"
    assert info.ignore_label == 255
    assert info.splits == ("train_aug", "train", "val")
