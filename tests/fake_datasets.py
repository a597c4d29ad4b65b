"""Small fake dataset trees in the real layouts (VOC + SBD, ADE20K, folder), for tests.

Every maker writes real files (JPEGs, PNGs, MATLAB .mat) and returns what it wrote,
including the label array each image should load with.
"""

import os

import numpy as np
from PIL import Image

from keras_msattn.data.images import VOC_COLORMAP

SIZE = (45, 60)  # (height, width) of the fake images


def write_jpeg(path, height, width, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def write_palette_png(path, indices):
    """A VOC-style palette PNG: the palette index is the class."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(VOC_COLORMAP.flatten().tolist())
    image.save(path)
    return path


def write_gray_png(path, values):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    return path


def write_sbd_mat(path, segmentation):
    """An SBD cls/*.mat file: struct GTcls with fields Segmentation, Boundaries, ..."""
    from scipy.io import savemat

    os.makedirs(os.path.dirname(path), exist_ok=True)
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    savemat(
        path,
        {
            "GTcls": {
                "Segmentation": segmentation.astype(np.uint8),
                "Boundaries": np.zeros((20, 1), dtype=object),
                "CategoriesPresent": present,
            }
        },
    )
    return path


def object_label(height, width, class_id, rng, border=True):
    """Background with one rectangle of `class_id`, outlined with 255 like VOC."""
    label = np.zeros((height, width), np.uint8)
    top, left = rng.integers(2, height // 3), rng.integers(2, width // 3)
    bottom, right = (
        rng.integers(2 * height // 3, height - 2),
        rng.integers(2 * width // 3, width - 2),
    )
    label[top:bottom, left:right] = class_id
    if border:
        label[top - 1, left - 1 : right + 1] = 255
        label[bottom, left - 1 : right + 1] = 255
        label[top - 1 : bottom + 1, left - 1] = 255
        label[top - 1 : bottom + 1, right] = 255
    return label


def truncate_file(path, keep=200):
    """Cut a file short, the usual way an image gets corrupted."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:keep])
    return path


def make_fake_voc(root, n_train=4, n_val=3, n_sbd=6, size=SIZE, seed=0):
    """VOCdevkit/VOC2012 + benchmark_RELEASE/dataset under root.

    SBD's lists overlap VOC's on purpose: SBD train holds the first VOC train id and the
    first VOC val id, SBD val repeats one SBD train id, and the rest are SBD-only ids (the
    last of them has its image only in SBD img/). An id in both VOC train and SBD gets
    different labels in the two, so tests can see which one was read.

    Returns a dict: data_dir, voc_train, voc_val, sbd_train, sbd_val, train_aug (the
    expected sorted ids) and labels {split: {id: expected label array}}.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    sbd = os.path.join(root, "benchmark_RELEASE", "dataset")
    voc_train = [f"2007_{i:06d}" for i in range(n_train)]
    voc_val = [f"2008_{i:06d}" for i in range(n_val)]
    sbd_only = [f"2009_{i:06d}" for i in range(n_sbd)]
    half = max(1, n_sbd // 2)
    sbd_train = [voc_train[0], voc_val[0]] + sbd_only[:half]
    sbd_val = sbd_only[half:] + [sbd_only[0]]

    voc_labels = {}
    for k, image_id in enumerate(voc_train + voc_val):
        write_jpeg(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), height, width, rng)
        voc_labels[image_id] = object_label(height, width, 1 + k % 20, rng)
        write_palette_png(
            os.path.join(voc, "SegmentationClass", f"{image_id}.png"), voc_labels[image_id]
        )
    sbd_labels = {}
    for k, image_id in enumerate(dict.fromkeys(sbd_train + sbd_val)):
        sbd_labels[image_id] = object_label(height, width, 20 - k % 20, rng, border=False)
        write_sbd_mat(os.path.join(sbd, "cls", f"{image_id}.mat"), sbd_labels[image_id])
        if image_id in voc_labels:
            continue
        image_path = os.path.join(sbd, "img", f"{image_id}.jpg")
        write_jpeg(image_path, height, width, rng)
        if image_id != sbd_only[-1]:
            # VOC 2012's JPEGImages holds the SBD images too.
            os.makedirs(os.path.join(voc, "JPEGImages"), exist_ok=True)
            with open(image_path, "rb") as src:
                data = src.read()
            with open(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), "wb") as dst:
                dst.write(data)

    def write_list(path, ids):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("".join(f"{i}\n" for i in ids))

    lists = os.path.join(voc, "ImageSets", "Segmentation")
    write_list(os.path.join(lists, "train.txt"), voc_train)
    write_list(os.path.join(lists, "val.txt"), voc_val)
    write_list(os.path.join(sbd, "train.txt"), sbd_train)
    write_list(os.path.join(sbd, "val.txt"), sbd_val)

    train_aug = sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))
    labels = {
        "train": {i: voc_labels[i] for i in voc_train},
        "val": {i: voc_labels[i] for i in voc_val},
        "train_aug": {i: voc_labels[i] if i in voc_train else sbd_labels[i] for i in train_aug},
    }
    return dict(
        data_dir=str(root),
        voc_train=voc_train,
        voc_val=voc_val,
        sbd_train=sbd_train,
        sbd_val=sbd_val,
        train_aug=train_aug,
        labels=labels,
        voc_root=voc,
        sbd_root=sbd,
    )


def make_fake_ade20k(root, n_train=3, n_val=2, size=SIZE, seed=0):
    """ADEChallengeData2016/{images,annotations}/{training,validation} under root.

    Annotations hold 0 ("other") and values up to 150. Returns a dict: data_dir,
    images {split: [paths]}, annotations {split: [paths]} and labels {split: [expected
    mapped arrays]} (0 -> 255, k -> k - 1).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    base = os.path.join(root, "ADEChallengeData2016")
    out = dict(data_dir=str(root), images={}, annotations={}, labels={})
    for split, folder, n in (("train", "training", n_train), ("val", "validation", n_val)):
        out["images"][split], out["annotations"][split], out["labels"][split] = [], [], []
        for i in range(n):
            stem = f"ADE_{folder}_{i + 1:08d}"
            raw = rng.integers(0, 151, (height, width)).astype(np.uint8)
            raw[0, :3] = (0, 1, 150)
            image = write_jpeg(
                os.path.join(base, "images", folder, stem + ".jpg"), height, width, rng
            )
            mask = write_gray_png(os.path.join(base, "annotations", folder, stem + ".png"), raw)
            mapped = np.where(raw == 0, 255, raw.astype(np.int32) - 1)
            out["images"][split].append(image)
            out["annotations"][split].append(mask)
            out["labels"][split].append(mapped)
    return out


def make_fake_folder(root, n=4, num_classes=3, splits=None, classes_txt=True, size=SIZE, seed=0):
    """A folder dataset: images/ + masks/ (flat) or <split>/images/ + <split>/masks/.

    Images alternate .jpg and .png; masks are 8-bit grayscale class maps with some 255.
    Returns a dict: data_dir, class_names, and per split ("all" for flat) images,
    masks and labels (expected arrays), in sorted stem order.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    names = tuple(f"thing{i}" for i in range(num_classes))
    if classes_txt:
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "classes.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
    out = dict(data_dir=str(root), class_names=names, images={}, masks={}, labels={})
    for split in splits or ("all",):
        base = root if split == "all" else os.path.join(root, split)
        out["images"][split], out["masks"][split], out["labels"][split] = [], [], []
        for i in range(n):
            stem = f"{split}_{i:03d}"
            label = rng.integers(0, num_classes, (height, width)).astype(np.uint8)
            label[-2:, :] = 255
            if i % 2:
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                image = os.path.join(base, "images", stem + ".png")
                os.makedirs(os.path.dirname(image), exist_ok=True)
                Image.fromarray(pixels).save(image)
            else:
                image = write_jpeg(os.path.join(base, "images", stem + ".jpg"), height, width, rng)
            mask = write_gray_png(os.path.join(base, "masks", stem + ".png"), label)
            out["images"][split].append(image)
            out["masks"][split].append(mask)
            out["labels"][split].append(label.astype(np.int32))
    return out
