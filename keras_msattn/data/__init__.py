"""Datasets, augmentation and data checks.

`load_dataset(name, split, data_dir)` gives unbatched (image uint8 (H, W, 3),
label int32 (H, W)) with 255 = ignore for "voc2012", "ade20k", "tfds:NAME", "folder"
and "scale_digits"; `train_pipeline` / `eval_pipeline` augment and batch it;
`check_dataset` finds every bad file of a split up front.
"""

from keras_msattn.data.augment import eval_pipeline, train_pipeline
from keras_msattn.data.base import IGNORE_LABEL, DatasetInfo
from keras_msattn.data.datasets import (
    DATASET_NAMES,
    check_dataset,
    dataset_info,
    dataset_splits,
    load_dataset,
)

__all__ = [
    "DATASET_NAMES",
    "IGNORE_LABEL",
    "DatasetInfo",
    "check_dataset",
    "dataset_info",
    "dataset_splits",
    "eval_pipeline",
    "load_dataset",
    "train_pipeline",
]
