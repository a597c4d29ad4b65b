"""One entry point for every dataset: `load_dataset`, `dataset_info`, `check_dataset`.

Names: "voc2012", "ade20k", "tfds:NAME", "folder", "scale_digits". Each name maps
to a module with the interface that `keras_msattn.data.base` describes; this is
the only module that branches on a dataset's name. Every loader yields unbatched
`(image uint8 (H, W, 3), label int32 (H, W))` with 255 = ignore; batch and
augment with `keras_msattn.data.augment`.
"""

import importlib

from keras_msattn.data.base import DatasetInfo

DATASET_NAMES = ("voc2012", "ade20k", "tfds:NAME", "folder", "scale_digits")
_MODULES = {
    "voc2012": "voc",
    "ade20k": "ade20k",
    "folder": "folder",
    "scale_digits": "scale_digits",
}
TFDS_PREFIX = "tfds:"

__all__ = [
    "DATASET_NAMES",
    "DatasetInfo",
    "check_dataset",
    "dataset_info",
    "dataset_options",
    "dataset_splits",
    "load_dataset",
]


def _unknown(name):
    return ValueError(
        f"unknown dataset {name!r}; allowed names: {', '.join(DATASET_NAMES)} "
        "(tfds:NAME, e.g. tfds:oxford_iiit_pet)"
    )


def dataset_module(name):
    """(module, extra options) for a dataset name; the module has `base`'s interface."""
    if not isinstance(name, str):
        raise _unknown(name)
    if name.startswith(TFDS_PREFIX):
        from keras_msattn.data import tfds_masks

        return tfds_masks, {"tfds_name": name[len(TFDS_PREFIX) :]}
    if name not in _MODULES:
        raise _unknown(name)
    return importlib.import_module(f"keras_msattn.data.{_MODULES[name]}"), {}


def load_dataset(
    name,
    split,
    data_dir=None,
    skip_bad=False,
    shuffle=False,
    seed=None,
    num_classes=None,
    **options,
):
    """Load one split of a dataset as an unbatched tf.data.Dataset.

    Args:
        name: "voc2012", "ade20k", "tfds:NAME", "folder" or "scale_digits".
        split: the split; see `dataset_info(name).splits`. For "folder", None or "all"
            reads the flat layout, another name the subfolder data_dir/<split>/.
        data_dir: the dataset root (VOC: the folder holding VOCdevkit/; ADE20K: the
            folder holding ADEChallengeData2016/; TFDS: its data_dir; unused by
            scale_digits).
        skip_bad: skip missing or corrupt files and bad masks, with a counted warning,
            instead of raising an error that names the file.
        shuffle: a new order of the examples on every pass.
        seed: the shuffle seed.
        num_classes: the class count of a folder dataset without classes.txt
            (ignored by datasets with fixed classes).
        **options: loader options. voc2012: sbd_cache_dir, download. ade20k:
            download. tfds:NAME: download. scale_digits:
            image_seed, image_size, num_images, with_size_map (see
            `keras_msattn.data.scale_digits.load`).

    Returns:
        tf.data.Dataset of (image uint8 (H, W, 3), label int32 (H, W)), 255 = ignore.

    Example:

    ```python
    ds = load_dataset("voc2012", "train_aug", data_dir="~/data", shuffle=True)
    ds = train_pipeline(ds, crop_size=321, batch_size=10)
    ```
    """
    module, fixed = dataset_module(name)
    return module.load(
        split,
        data_dir=data_dir,
        skip_bad=skip_bad,
        shuffle=shuffle,
        seed=seed,
        num_classes=num_classes,
        **fixed,
        **options,
    )


# The arguments every dataset module's `load` takes; what else it takes are its options.
_INTERFACE_ARGUMENTS = ("split", "data_dir", "skip_bad", "shuffle", "seed", "num_classes")


def dataset_options(name):
    """The names of the loader options a dataset takes (`load_dataset(**options)`)."""
    import inspect

    module, fixed = dataset_module(name)
    return tuple(
        parameter
        for parameter in inspect.signature(module.load).parameters
        if parameter not in _INTERFACE_ARGUMENTS and parameter not in fixed
    )


def dataset_info(name, data_dir=None, num_classes=None):
    """`DatasetInfo` (num_classes, class_names, ignore_label=255, splits, eval_split).

    "folder" reads classes.txt under data_dir, or takes `num_classes` when there is
    none; datasets with fixed classes ignore `num_classes`.
    """
    module, fixed = dataset_module(name)
    return module.info(data_dir, num_classes=num_classes, **fixed)


def dataset_splits(name, data_dir=None):
    """The split names of a dataset (for "folder": those found under data_dir)."""
    module, fixed = dataset_module(name)
    return tuple(module.splits(data_dir, **fixed))


def check_dataset_split(name, split, data_dir=None, num_classes=None, progress=True, **options):
    """Checks every example of one split; returns a `keras_msattn.data.check.CheckResult`.

    Args:
        name: dataset name, as for `load_dataset`.
        split: the split (for "folder": None or "all" = the flat layout).
        data_dir: the dataset root.
        num_classes: overrides the dataset's class count for the label-range check
            (for "folder" without classes.txt it is required).
        progress: show a progress bar on stderr.
        **options: loader options (for generated datasets, e.g. scale_digits).
    """
    module, fixed = dataset_module(name)
    return module.check(
        split, data_dir=data_dir, num_classes=num_classes, progress=progress, **fixed, **options
    )


def check_dataset(name, split, data_dir=None, num_classes=None, progress=True, **options):
    """Every problem of a split as a list of (file, problem) pairs; [] when all is well."""
    return check_dataset_split(name, split, data_dir, num_classes, progress, **options).problems


def extra_scores(name):
    """A fresh `ExtraScores` for the dataset, or None when it has none."""
    module, _ = dataset_module(name)
    make = getattr(module, "extra_scores", None)
    return make() if make is not None else None
