"""Your own data: a folder of images and masks paired by file stem.

Layout, flat (split=None or "all"):

    data_dir/images/*.jpg|*.jpeg|*.png     RGB (grayscale/RGBA are converted)
    data_dir/masks/*.png                   8-bit (or 16-bit) grayscale PNGs, or VOC-palette
                                           PNGs; value = class index, 255 = ignore
    data_dir/classes.txt                   optional, one class name a line

or with splits (split="train", "val", ...):

    data_dir/<split>/images/...   data_dir/<split>/masks/...   data_dir/classes.txt

`images/a.jpg` pairs with `masks/a.png`. The number of classes comes from classes.txt, or
from `num_classes=` when there is none (both given: they must agree).
"""

import os

from keras_msattn.data.base import DatasetInfo, read_class_names
from keras_msattn.data.check import check_files, first_bad_pair
from keras_msattn.data.images import SplitFiles

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FLAT_SPLITS = (None, "all")


def split_dir(data_dir, split):
    if data_dir is None:
        raise ValueError("folder needs data_dir: the folder that contains images/ and masks/")
    return data_dir if split in FLAT_SPLITS else os.path.join(data_dir, split)


def check_data_dir(data_dir):
    """Raises a clear error when `data_dir` is given but is not a folder."""
    if data_dir is None or os.path.isdir(data_dir):
        return
    if os.path.exists(data_dir):
        raise ValueError(
            f"data_dir {data_dir} is a file, not a folder: give the folder that holds "
            "images/ and masks/ (and classes.txt)."
        )
    raise FileNotFoundError(
        f"data_dir {data_dir} does not exist: give the folder that holds images/ and "
        "masks/ (and classes.txt)."
    )


def read_classes(data_dir):
    """Class names from data_dir/classes.txt, or None when there is no such file."""
    check_data_dir(data_dir)
    path = os.path.join(data_dir, "classes.txt")
    if not os.path.isfile(path):
        return None
    names = read_class_names(path)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"{path}: class names must be unique, but {', '.join(map(repr, repeated))} "
            "appear more than once; each line names one class"
        )
    return tuple(names)


def resolve_classes(data_dir, num_classes=None):
    """(num_classes, class_names) from classes.txt and/or the explicit option."""
    names = read_classes(data_dir) if data_dir is not None else None
    if names is not None:
        if num_classes is not None and num_classes != len(names):
            raise ValueError(
                f"num_classes={num_classes} but {os.path.join(data_dir, 'classes.txt')} "
                f"lists {len(names)} classes"
            )
        return len(names), names
    if num_classes is None:
        where = f"folder dataset at {data_dir}" if data_dir else "folder dataset"
        raise ValueError(
            f"{where}: the number of classes is unknown; write classes.txt (one name a "
            "line) into data_dir or pass num_classes"
        )
    if num_classes < 1 or num_classes > 255:
        raise ValueError(
            f"num_classes must be in 1..255 (255 is the ignore label), got {num_classes}"
        )
    return num_classes, tuple(f"class_{i}" for i in range(num_classes))


def available_splits(data_dir):
    """'all' for the flat layout, plus every subfolder that has images/ and masks/."""
    if data_dir is None or not os.path.isdir(data_dir):
        return ()
    splits = []
    if os.path.isdir(os.path.join(data_dir, "images")):
        splits.append("all")
    for name in sorted(os.listdir(data_dir)):
        if os.path.isdir(os.path.join(data_dir, name, "images")):
            splits.append(name)
    return tuple(splits)


def _by_stem(folder, extensions):
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in extensions:
            continue
        if stem in found:
            raise ValueError(
                f"two files with the stem {stem!r} in {folder}: "
                f"{os.path.basename(found[stem])} and {name}"
            )
        found[stem] = os.path.join(folder, name)
    return found


def split_files(data_dir, split=None, num_classes=None):
    """Images paired with the masks of the same stem; unpaired files are reported missing."""
    check_data_dir(data_dir)
    root = split_dir(data_dir, split)
    image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    for folder in (image_dir, mask_dir):
        if not os.path.isdir(folder):
            layout = "images/ and masks/" + (
                "" if split in FLAT_SPLITS else f" under {split}/ (flat layout: split='all')"
            )
            raise FileNotFoundError(
                f"folder dataset not found: expected the folder {folder} (data_dir must "
                f"contain {layout})"
            )
    num_classes, _ = resolve_classes(data_dir, num_classes)
    images = _by_stem(image_dir, IMAGE_EXTENSIONS)
    masks = _by_stem(mask_dir, (".png",))
    if not images:
        raise ValueError(f"folder dataset: {image_dir} holds no .jpg/.jpeg/.png images")
    paired = sorted(set(images) & set(masks))
    missing = [
        (os.path.join(mask_dir, stem + ".png"), "missing mask for " + images[stem])
        for stem in sorted(set(images) - set(masks))
    ]
    missing += [
        (masks[stem], f"mask without an image (no {stem}.jpg/.jpeg/.png in {image_dir})")
        for stem in sorted(set(masks) - set(images))
    ]
    return SplitFiles(
        images=[images[s] for s in paired],
        labels=[masks[s] for s in paired],
        num_classes=num_classes,
        missing=missing,
        description=f"folder/{split or 'all'}",
    )


def info(data_dir=None, num_classes=None):
    """Classes from classes.txt, else `num_classes` (then named class_0, class_1, ...)."""
    source = ""
    if data_dir is not None and read_classes(data_dir) is not None:
        num_classes = None  # classes.txt decides; callers compare with what they need
        source = os.path.join(data_dir, "classes.txt")
    num_classes, names = resolve_classes(data_dir, num_classes)
    found = splits(data_dir)
    eval_split = "val" if "val" in found else "all"
    return DatasetInfo(
        "folder", num_classes, names, splits=found, eval_split=eval_split, classes_source=source
    )


def splits(data_dir=None):
    """The splits under `data_dir`; "all" (the flat layout) when none is found."""
    return available_splits(data_dir) or ("all",)


def check(split=None, data_dir=None, num_classes=None, progress=True):
    """Every bad file of `split` (`keras_msattn.data.check.CheckResult`)."""
    return check_files(
        lambda: split_files(data_dir, split, num_classes=num_classes),
        f"folder/{split}",
        data_dir,
        num_classes,
        progress,
    )


def load(split=None, data_dir=None, skip_bad=False, shuffle=False, seed=None, num_classes=None):
    """tf.data.Dataset of (image uint8 (H, W, 3), label int32 (H, W)); see the module doc.

    Args:
        data_dir: the dataset folder.
        split: None or "all" for the flat layout, else the name of a split subfolder.
        skip_bad: skip bad files with a counted warning instead of raising.
        shuffle: shuffle the file order each pass (before decoding).
        seed: shuffle seed.
        num_classes: the number of classes when there is no classes.txt.
    """
    from keras_msattn.data.images import pairs_dataset

    files = split_files(data_dir, split, num_classes=num_classes)
    return pairs_dataset(
        files, skip_bad=skip_bad, shuffle=shuffle, seed=seed, first_bad_pair=first_bad_pair
    )
