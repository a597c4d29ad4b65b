"""Datasets, augmentation and data checks.

`load_dataset(name, split, data_dir)` gives unbatched (image uint8 (H, W, 3),
label int32 (H, W)) with 255 = ignore for "voc2012", "ade20k", "tfds:NAME", "folder"
and "scale_digits"; `train_pipeline` / `eval_pipeline` augment and batch it;
`check_dataset` finds every bad file of a split up front.
"""

from keras_msattn.data.augment import eval_pipeline, train_pipeline
from keras_msattn.data.check import check_dataset
from keras_msattn.data.datasets import DATASET_NAMES, DatasetInfo, dataset_info, load_dataset
from keras_msattn.data.images import IGNORE_LABEL

__all__ = [
    "DATASET_NAMES",
    "IGNORE_LABEL",
    "DatasetInfo",
    "check_dataset",
    "dataset_info",
    "eval_pipeline",
    "load_dataset",
    "train_pipeline",
]
