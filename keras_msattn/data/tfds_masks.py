"""Segmentation datasets from TensorFlow Datasets: `tfds:NAME`.

Supported: `oxford_iiit_pet` (splits "train", "test"; any TFDS split string works).
Its `segmentation_mask` is a trimap: 1 = pet, 2 = background, 3 = border. We map
2 -> 0 (background), 1 -> 1 (pet) and the border 3 -> 255 (ignored: the outline is
ambiguous by construction). Any other value is reported as a bad mask.

Nothing is downloaded unless `download=True`: a dataset that is not prepared under
`data_dir` (default ~/tensorflow_datasets) is a FileNotFoundError saying how to prepare it.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_msattn.data.base import IGNORE_LABEL, DatasetInfo
from keras_msattn.data.check import CheckResult, progress_bar
from keras_msattn.data.images import validated, watch

_INVALID = 256  # outside [0, C) and not 255: reported by the mask check


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    class_names: tuple
    splits: tuple
    to_pair: object  # example dict -> (name, image uint8 (H, W, 3), raw mask, labels int32)
    valid_text: str


def pet_example_to_pair(example):
    """oxford_iiit_pet example -> (file name, image, raw trimap, labels int32 (H, W))."""
    raw = tf.cast(example["segmentation_mask"][..., 0], tf.int32)
    # Index by the trimap value: 0 (absent) -> invalid, 1 pet, 2 background, 3 border.
    table = tf.constant([_INVALID, 1, 0, IGNORE_LABEL], tf.int32)
    in_range = (raw >= 1) & (raw <= 3)
    labels = tf.where(in_range, tf.gather(table, tf.clip_by_value(raw, 0, 3)), _INVALID)
    return example["file_name"], example["image"], raw, labels


SPECS = {
    "oxford_iiit_pet": TfdsSpec(
        class_names=("background", "pet"),
        splits=("train", "test"),
        to_pair=pet_example_to_pair,
        valid_text="1 (pet), 2 (background), 3 (border)",
    ),
}


def spec(name):
    if name not in SPECS:
        raise ValueError(
            f"unsupported TFDS dataset {name!r}; supported: "
            + ", ".join(f"tfds:{n}" for n in sorted(SPECS))
        )
    return SPECS[name]


def info(data_dir=None, num_classes=None, *, tfds_name):
    dataset_spec = spec(tfds_name)
    return DatasetInfo(
        f"tfds:{tfds_name}",
        len(dataset_spec.class_names),
        dataset_spec.class_names,
        splits=dataset_spec.splits,
        eval_split=dataset_spec.splits[-1],
    )


def splits(data_dir=None, *, tfds_name):
    return spec(tfds_name).splits


def check(split, data_dir=None, num_classes=None, progress=True, *, tfds_name):
    """Every bad example of `split` (`keras_msattn.data.check.CheckResult`)."""
    import tensorflow_datasets as tfds

    name = tfds_name
    dataset_spec = spec(name)
    num_classes = num_classes or len(dataset_spec.class_names)
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    except (AssertionError, FileNotFoundError) as error:
        return CheckResult([(str(data_dir), f"TFDS dataset {name!r} is not prepared: {error}")], 0)
    problems, count = [], 0
    ds = ds.map(dataset_spec.to_pair, num_parallel_calls=tf.data.AUTOTUNE)
    for file_name, image, raw, labels in progress_bar(
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
        bad = ((labels < 0) | (labels >= num_classes)) & (labels != IGNORE_LABEL)
        if bad.any():
            shown = ", ".join(str(v) for v in np.unique(raw[bad])[:10])
            problems.append(
                (where, f"mask values outside the valid range {dataset_spec.valid_text}: {shown}")
            )
    return CheckResult(problems, count)


def load(
    split,
    data_dir=None,
    skip_bad=False,
    shuffle=False,
    seed=None,
    num_classes=None,
    download=False,
    *,
    tfds_name,
):
    """tf.data.Dataset of (image uint8 (H, W, 3), label int32 (H, W)) for `tfds:NAME`.

    Args:
        split: a TFDS split ("train", "test", "train[:90%]", ...).
        data_dir: TFDS data folder (default: TFDS's, ~/tensorflow_datasets).
        skip_bad: skip bad examples with a counted warning instead of raising.
        download: let TFDS download and prepare the dataset when it is missing.
        shuffle: shuffle the TFDS files each pass.
        seed: file shuffle seed.
        tfds_name: the TFDS name without the "tfds:" prefix.
    """
    name = tfds_name
    import tensorflow_datasets as tfds

    dataset_spec = spec(name)
    try:
        ds = tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            download=download,
            shuffle_files=shuffle,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except (AssertionError, FileNotFoundError) as error:
        where = data_dir or "TFDS's default data folder (~/tensorflow_datasets)"
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {where}. Prepare it once with "
            f"tfds.builder({name!r}, data_dir=...).download_and_prepare(), or pass "
            f"download=True to load_dataset. ({error})"
        ) from error
    ds = ds.map(dataset_spec.to_pair, num_parallel_calls=tf.data.AUTOTUNE)
    if not skip_bad:

        def first_problem():
            problems = check(split, data_dir, progress=False, tfds_name=name).problems
            return problems[0] if problems else None

        watch(first_problem)
    return validated(
        ds,
        len(dataset_spec.class_names),
        f"tfds:{name}/{split}",
        skip_bad=skip_bad,
        valid_text=dataset_spec.valid_text,
    )
