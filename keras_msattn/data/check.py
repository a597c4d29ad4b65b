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
        try:
            return image_rules.read_sbd_mat(path).astype(np.int64), None
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


def progress_bar(iterable, total, description, progress):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit="file", disable=not progress)


def check_files(list_files, description, data_dir, num_classes=None, progress=True):
    """Checks every pair `list_files()` names (a `SplitFiles`); a `CheckResult`.

    A failure of `list_files` itself (a wrong root, a missing list) is reported as
    one problem, not raised.
    """
    try:
        files = list_files()
    except (FileNotFoundError, ValueError) as error:
        where = getattr(error, "filename", None) or str(data_dir)
        return CheckResult([(where, str(error))], 0)
    if num_classes is not None:
        files.num_classes = num_classes
    files = image_rules.set_aside_unreadable(files)
    labels = files.label_sources or files.labels

    def one(pair):
        image, label = pair
        return check_pair(image, label, files.num_classes, files.reduce_zero_label)

    problems = list(files.missing)
    # PIL releases the GIL while decoding, so threads speed this up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(one, zip(files.images, labels, strict=True))
        for found in progress_bar(results, len(files.images), f"Checking {description}", progress):
            problems.extend(found)
    return CheckResult(problems, len(files.images) + len(files.missing))


def check_generated(dataset, description, num_classes, progress=True):
    """Checks every `(image, label)` of a generated tf.data `dataset`; a `CheckResult`."""
    problems, count = [], 0
    for index, (image, label) in enumerate(
        progress_bar(dataset.as_numpy_iterator(), None, f"Checking {description}", progress)
    ):
        count += 1
        where = f"{description}[{index}]"
        if image.shape[:2] != label.shape or image.ndim != 3 or image.shape[2] != 3:
            problems.append((where, f"image {image.shape} and label {label.shape} do not match"))
        problem = values_problem(label.astype(np.int64), num_classes, False)
        if problem:
            problems.append((where, problem))
    return CheckResult(problems, count)


def first_bad_pair(files):
    """The first (file, problem) of a `SplitFiles`, or None: for `images.find_bad_file`."""
    labels = files.label_sources or files.labels

    def one(pair):
        image, label, name = pair
        return check_pair(image, label, files.num_classes, files.reduce_zero_label, name)

    pairs = zip(files.images, files.labels, labels, strict=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for problems in pool.map(one, pairs):
            if problems:
                return problems[0]
    return None
