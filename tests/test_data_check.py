import os

import numpy as np
import pytest
from fake_datasets import (
    make_fake_ade20k,
    make_fake_folder,
    make_fake_voc,
    truncate_file,
    write_gray_png,
    write_palette_png,
    write_sbd_mat,
)
from PIL import Image

from keras_msattn.cli import main
from keras_msattn.data import check_dataset, load_dataset


@pytest.fixture
def bad_voc(tmp_path):
    """A VOC + SBD tree with one bad file of every kind; returns (fake, {path: problem})."""
    fake = make_fake_voc(tmp_path / "voc", n_train=6, n_val=3, n_sbd=4)
    voc, sbd = fake["voc_root"], fake["sbd_root"]
    train, val = fake["voc_train"], fake["voc_val"]

    def image(i):
        return os.path.join(voc, "JPEGImages", i + ".jpg")

    def label(i):
        return os.path.join(voc, "SegmentationClass", i + ".png")

    bad = {}
    truncate_file(image(train[0]))
    bad[image(train[0])] = "unreadable image"
    os.remove(image(train[1]))
    bad[image(train[1])] = "missing file"
    write_palette_png(label(train[2]), np.zeros((44, 60), np.uint8))
    bad[label(train[2])] = "mask size 60x44 differs from its image size 60x45"
    values = np.zeros((45, 60), np.uint8)
    values[3, 3], values[4, 4] = 21, 99
    write_palette_png(label(train[3]), values)
    bad[label(train[3])] = "mask values outside the valid range 0..20 or 255: 21, 99"
    other = Image.fromarray(np.ones((45, 60), np.uint8), mode="P")
    other.putpalette([9, 9, 9] * 256)
    other.save(label(val[0]))
    bad[label(val[0])] = "not the PASCAL VOC palette"
    Image.fromarray(np.zeros((45, 60, 3), np.uint8)).save(label(val[1]))
    bad[label(val[1])] = "RGB/RGBA"
    # SBD-only ids are read from .mat files in train_aug.
    sbd_only = [i for i in fake["train_aug"] if i not in train]
    mat = os.path.join(sbd, "cls", sbd_only[0] + ".mat")
    with open(mat, "wb") as f:
        f.write(b"garbage")
    bad[mat] = "unreadable SBD label"
    mat = os.path.join(sbd, "cls", sbd_only[1] + ".mat")
    segmentation = np.zeros((45, 60), np.uint8)
    segmentation[0, 0] = 40
    write_sbd_mat(mat, segmentation)
    bad[mat] = "mask values outside the valid range 0..20 or 255: 40"
    return fake, bad


def _problems_by_file(problems):
    found = {}
    for path, problem in problems:
        found.setdefault(path, []).append(problem)
    return found


def test_check_finds_every_bad_file(bad_voc):
    fake, bad = bad_voc
    problems = []
    for split in ("train", "val", "train_aug"):
        problems += check_dataset("voc2012", split, fake["data_dir"], progress=False)
    found = _problems_by_file(problems)
    for path, problem in bad.items():
        assert path in found, path
        assert any(problem in p for p in found[path]), (path, found[path])
    # Nothing else is reported (VOC train files show up in train and train_aug).
    assert set(found) == set(bad)


def test_check_agrees_with_the_loader(bad_voc, capfd):
    fake, bad = bad_voc
    problems = check_dataset("voc2012", "val", fake["data_dir"], progress=False)
    ds = load_dataset("voc2012", "val", data_dir=fake["data_dir"], skip_bad=True)
    kept = len(list(ds))
    assert kept == len(fake["voc_val"]) - len(problems) == 1
    err = capfd.readouterr().err
    for path, _ in problems:
        assert f"skipping {path}" in err


def test_cli_names_every_bad_file_and_fails(bad_voc, capsys):
    fake, bad = bad_voc
    code = main(["data", "check", "--dataset", "voc2012", "--data-dir", fake["data_dir"]])
    out = capsys.readouterr().out
    assert code == 1
    for path, problem in bad.items():
        assert any(path in line and problem in line for line in out.splitlines()), path
    assert "problem(s) in" in out


def test_cli_passes_on_a_clean_dataset(tmp_path, capsys):
    fake = make_fake_voc(tmp_path / "voc", n_train=3, n_val=2, n_sbd=2)
    code = main(["data", "check", "--dataset", "voc2012", "--data-dir", fake["data_dir"]])
    out = capsys.readouterr().out
    assert code == 0
    assert "OK:" in out and "no problems found" in out
    code = main(
        ["data", "check", "--dataset", "voc2012", "--data-dir", fake["data_dir"], "--split", "val"]
    )
    assert code == 0 and "OK: 2 examples of voc2012 (val)" in capsys.readouterr().out


def test_cli_wrong_root_and_empty_list(tmp_path, capsys):
    code = main(["data", "check", "--dataset", "ade20k", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert os.path.join(str(tmp_path), "ADEChallengeData2016", "images", "training") in out

    fake = make_fake_voc(tmp_path / "voc", n_train=2, n_val=1, n_sbd=1)
    val_list = os.path.join(fake["voc_root"], "ImageSets", "Segmentation", "val.txt")
    open(val_list, "w").close()
    problems = check_dataset("voc2012", "val", fake["data_dir"], progress=False)
    assert len(problems) == 1 and val_list in problems[0][1] and "no images" in problems[0][1]


def test_check_folder_and_ade20k(tmp_path, capsys):
    fake = make_fake_folder(tmp_path / "folder", n=4, num_classes=2, classes_txt=False)
    masks = fake["masks"]["all"]
    write_gray_png(masks[0], np.full((45, 60), 2, np.uint8))
    os.remove(fake["images"]["all"][3])
    code = main(
        [
            "data",
            "check",
            "--dataset",
            "folder",
            "--data-dir",
            fake["data_dir"],
            "--num-classes",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert masks[0] in out and "0..1 or 255: 2" in out
    assert masks[3] in out and "mask without an image" in out

    ade = make_fake_ade20k(tmp_path / "ade", n_train=2, n_val=2)
    path = ade["annotations"]["val"][0]
    write_gray_png(path, np.full((45, 60), 151, np.uint8))
    problems = check_dataset("ade20k", "val", ade["data_dir"], progress=False)
    assert problems == [
        (path, "mask values outside the valid range 0..150 (0 = unlabelled) or 255: 151")
    ]
    assert check_dataset("ade20k", "train", ade["data_dir"], progress=False) == []
