import os
import re

import numpy as np
import pytest
import tensorflow as tf
from fake_datasets import make_fake_ade20k, write_gray_png

from keras_msattn.data import ade20k, dataset_info, load_dataset


@pytest.fixture
def fake_ade(tmp_path):
    return make_fake_ade20k(tmp_path / "data", n_train=3, n_val=2)


@pytest.mark.parametrize("split", ["train", "val"])
def test_labels_shift_by_one_and_other_is_ignored(fake_ade, split):
    got = list(load_dataset("ade20k", split, data_dir=fake_ade["data_dir"]).as_numpy_iterator())
    assert len(got) == len(fake_ade["labels"][split])
    for (image, label), expected in zip(got, fake_ade["labels"][split], strict=True):
        assert image.shape == (45, 60, 3) and image.dtype == np.uint8
        assert label.dtype == np.int32
        np.testing.assert_array_equal(label, expected)
        # The planted corner: raw 0 ("other") -> 255, 1 -> 0, 150 -> 149.
        np.testing.assert_array_equal(label[0, :3], [255, 0, 149])
        assert label.max() == 255 and label[label != 255].max() <= 149


def test_map_labels_function():
    from keras_msattn.data.images import map_labels

    raw = tf.constant([[0, 1, 2], [150, 255, 7]], tf.uint8)
    np.testing.assert_array_equal(
        map_labels(raw, reduce_zero_label=True).numpy(), [[255, 0, 1], [149, 255, 6]]
    )
    np.testing.assert_array_equal(map_labels(raw, reduce_zero_label=False).numpy(), raw.numpy())


def test_value_above_150_names_the_annotation(fake_ade, capfd):
    path = fake_ade["annotations"]["val"][1]
    raw = np.full((45, 60), 3, np.uint8)
    raw[10, 10] = 151
    write_gray_png(path, raw)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(load_dataset("ade20k", "val", data_dir=fake_ade["data_dir"]))
    assert path in error.value.message
    assert "outside the valid range 0..150 (0 = unlabelled) or 255: 151" in error.value.message
    ds = load_dataset("ade20k", "val", data_dir=fake_ade["data_dir"], skip_bad=True)
    assert len(list(ds)) == 1
    assert "ade20k/val: skipped 1 of 2 files" in capfd.readouterr().err


def test_missing_annotation_is_named(fake_ade):
    path = fake_ade["annotations"]["train"][0]
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        load_dataset("ade20k", "train", data_dir=fake_ade["data_dir"])
    ds = load_dataset("ade20k", "train", data_dir=fake_ade["data_dir"], skip_bad=True)
    assert len(list(ds)) == 2


def test_wrong_root_names_the_expected_folder(tmp_path):
    expected = os.path.join(str(tmp_path), "ADEChallengeData2016", "images", "training")
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        load_dataset("ade20k", "train", data_dir=str(tmp_path))


def test_empty_split_folder_is_an_error(fake_ade):
    for path in fake_ade["images"]["val"]:
        os.remove(path)
    with pytest.raises(ValueError, match="validation.*no .jpg images"):
        load_dataset("ade20k", "val", data_dir=fake_ade["data_dir"])


def test_dataset_info():
    info = dataset_info("ade20k")
    assert info.num_classes == 150 == len(set(info.class_names))
    assert info.class_names[:3] == ("wall", "building", "sky")
    assert info.class_names[-1] == "flag"
    assert info.ignore_label == 255 and info.splits == ("train", "val")
    assert ade20k.NUM_CLASSES == 150
