"""`msattn data check`: find every bad file of a split up front.

Reads every file in plain Python (PIL, numpy, scipy), not tf.data, so that it reports all
problems instead of stopping at the first: files named by the split that are missing,
unreadable or non-image files, masks that are not single-channel PNGs, masks whose size
differs from their image, label values outside [0, C) other than 255, empty split lists
and a wrong dataset root. The rules are the ones the tf.data loaders enforce.
"""

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_msattn.data import images as image_rules
from keras_msattn.data.images import IGNORE_LABEL, VOC_COLORMAP, valid_values_text

_IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")


@dataclasses.dataclass
class CheckResult:
    """problems: (file, problem) pairs; num_examples: examples (pairs) examined."""

    problems: list
    num_examples: int


def _error_text(error):
    return f"{type(error).__name__}: {error}".replace("\n", " ")


def _read_image_size(path):
    """((height, width), problem)."""
    from PIL import Image

    if os.path.getsize(path) == 0:
        return None, image_rules.EMPTY_FILE
    too_large = image_rules.image_size_problem(path)
    if too_large:
        return None, too_large
    try:
        with Image.open(path) as image:
            if image.format not in _IMAGE_FORMATS:
                return None, image_rules.NOT_AN_IMAGE
            image.load()
            return (image.height, image.width), None
    except Exception as error:  # any failure to decode is the finding
        return None, f"unreadable image ({_error_text(error)})"


def _png_kind(path):
    with open(path, "rb") as f:
        header = f.read(33)
    if not header.startswith(b"\x89PNG\r\n\x1a\n") or len(header) < 26:
        return None, None
    return header[24], header[25]  # bit depth, colour type


def _read_mask(path):
    """(raw values (H, W) int64, problem)."""
    from PIL import Image

    if path.endswith(".mat"):
        from keras_msattn.data.voc import read_sbd_mat

        try:
            return read_sbd_mat(path).astype(np.int64), None
        except Exception as error:
            return None, f"unreadable SBD label ({_error_text(error)})"
    if os.path.getsize(path) == 0:
        return None, image_rules.EMPTY_FILE
    depth, color_type = _png_kind(path)
    if depth is None:
        return None, image_rules.NOT_PNG_MASK
    if color_type in (0, 4) and depth < 8:
        return None, image_rules.LOW_DEPTH_MASK
    if color_type not in (0, 3, 4):
        return None, image_rules.RGB_MASK
    try:
        with Image.open(path) as mask:
            mask.load()
            if color_type == 3:
                values = np.asarray(mask.convert("P") if mask.mode != "P" else mask)
                palette = np.asarray(mask.getpalette() or [], np.uint8).reshape(-1, 3)
                used = np.unique(values)
                if used.max() >= len(palette) or np.any(palette[used] != VOC_COLORMAP[used]):
                    return None, image_rules.NOT_VOC_PALETTE
            else:
                values = np.asarray(mask)
                if values.ndim == 3:  # gray + alpha
                    values = values[..., 0]
    except Exception as error:
        return None, f"unreadable mask ({_error_text(error)})"
    return values.astype(np.int64), None


def values_problem(raw, num_classes, reduce_zero_label, valid_text=None):
    """The loaders' label-range rule in numpy: None, or the message naming bad values."""
    labels = raw
    if reduce_zero_label:
        labels = np.where(raw == 0, IGNORE_LABEL, raw - 1)
        labels = np.where(raw == IGNORE_LABEL, IGNORE_LABEL, labels)
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != IGNORE_LABEL)
    if not bad.any():
        return None
    shown = ", ".join(str(v) for v in np.unique(raw[bad])[:10])
    valid_text = valid_text or valid_values_text(num_classes, reduce_zero_label)
    return f"mask values outside the valid range {valid_text}: {shown}"


def check_pair(image_path, label_path, num_classes, reduce_zero_label=False, label_name=None):
    """Every problem of one (image, mask) pair, as (file, problem) pairs."""
    label_name = label_name or label_path
    problems = []
    size, problem = _read_image_size(image_path)
    if problem:
        problems.append((image_path, problem))
    raw, problem = _read_mask(label_path)
    if problem:
        problems.append((label_name, problem))
        return problems
    if size is not None and raw.shape != size:
        problems.append(
            (
                label_name,
                f"mask size {raw.shape[1]}x{raw.shape[0]} differs from its image size "
                f"{size[1]}x{size[0]}",
            )
        )
    problem = values_problem(raw, num_classes, reduce_zero_label)
    if problem:
        problems.append((label_name, problem))
    return problems


def _progress(iterable, total, description, progress):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit="file", disable=not progress)


def _split_files(name, split, data_dir, num_classes):
    if name == "voc2012":
        from keras_msattn.data import voc

        return voc.split_files(data_dir, split)
    if name == "ade20k":
        from keras_msattn.data import ade20k

        return ade20k.split_files(data_dir, split)
    from keras_msattn.data import folder

    return folder.split_files(data_dir, split, num_classes=num_classes)


def _check_files(name, split, data_dir, num_classes, progress):
    try:
        files = _split_files(name, split, data_dir, num_classes)
    except (FileNotFoundError, ValueError) as error:
        where = getattr(error, "filename", None) or str(data_dir)
        return CheckResult([(where, str(error))], 0)
    if num_classes is not None:
        files.num_classes = num_classes
    labels = files.label_sources or files.labels

    def one(pair):
        image, label = pair
        return check_pair(image, label, files.num_classes, files.reduce_zero_label)

    problems = list(files.missing)
    # PIL releases the GIL while decoding, so threads speed this up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(one, zip(files.images, labels, strict=True))
        for found in _progress(results, len(files.images), f"Checking {name}/{split}", progress):
            problems.extend(found)
    return CheckResult(problems, len(files.images) + len(files.missing))


def _check_tfds(name, split, data_dir, progress):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from keras_msattn.data import tfds_masks

    spec = tfds_masks.spec(name)
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    except (AssertionError, FileNotFoundError) as error:
        return CheckResult([(str(data_dir), f"TFDS dataset {name!r} is not prepared: {error}")], 0)
    problems, count = [], 0
    ds = ds.map(spec.to_pair, num_parallel_calls=tf.data.AUTOTUNE)
    for file_name, image, raw, labels in _progress(
        tfds.as_numpy(ds), None, f"Checking tfds:{name}/{split}", progress
    ):
        count += 1
        where = f"tfds:{name}/{split}/{file_name.decode()}"
        if image.shape[:2] != labels.shape:
            problems.append(
                (
                    where,
                    f"mask size {labels.shape[1]}x{labels.shape[0]} differs from its image "
                    f"size {image.shape[1]}x{image.shape[0]}",
                )
            )
        bad = ((labels < 0) | (labels >= len(spec.class_names))) & (labels != IGNORE_LABEL)
        if bad.any():
            shown = ", ".join(str(v) for v in np.unique(raw[bad])[:10])
            problems.append(
                (where, f"mask values outside the valid range {spec.valid_text}: {shown}")
            )
    return CheckResult(problems, count)


def _check_generated(name, split, num_classes, progress, **options):
    from keras_msattn.data.datasets import dataset_info, load_dataset

    num_classes = num_classes or dataset_info(name).num_classes
    problems, count = [], 0
    ds = load_dataset(name, split, **options)
    for index, (image, label) in enumerate(
        _progress(ds.as_numpy_iterator(), None, f"Checking {name}/{split}", progress)
    ):
        count += 1
        where = f"{name}/{split}[{index}]"
        if image.shape[:2] != label.shape or image.ndim != 3 or image.shape[2] != 3:
            problems.append((where, f"image {image.shape} and label {label.shape} do not match"))
        problem = values_problem(label.astype(np.int64), num_classes, False)
        if problem:
            problems.append((where, problem))
    return CheckResult(problems, count)


def check_split(name, split, data_dir=None, num_classes=None, progress=True, **options):
    """Check every example of one split; returns a `CheckResult`.

    Args:
        name: dataset name, as for `load_dataset`.
        split: the split (for "folder": None or "all" = the flat layout).
        data_dir: the dataset root.
        num_classes: overrides the dataset's class count for the label-range check
            (for "folder" without classes.txt it is required).
        progress: show a progress bar on stderr.
        **options: loader options, for generated datasets (scale_digits).
    """
    if name in ("voc2012", "ade20k", "folder"):
        return _check_files(name, split, data_dir, num_classes, progress)
    if name.startswith("tfds:"):
        return _check_tfds(name[5:], split, data_dir, progress)
    if name == "scale_digits":
        return _check_generated(name, split, num_classes, progress, **options)
    from keras_msattn.data.datasets import _unknown

    raise _unknown(name)


def check_dataset(name, split, data_dir=None, num_classes=None, progress=True, **options):
    """Every problem of a split as a list of (file, problem) pairs; [] when all is well."""
    return check_split(name, split, data_dir, num_classes, progress, **options).problems
