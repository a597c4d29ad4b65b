"""One entry point for every dataset: `load_dataset` and `dataset_info`.

Names: "voc2012", "ade20k", "tfds:NAME", "folder", "scale_digits". Every loader yields
unbatched `(image uint8 (H, W, 3), label int32 (H, W))` with 255 = ignore; batch and
augment with `keras_msattn.data.augment`.
"""

import dataclasses

from keras_msattn.data.images import IGNORE_LABEL

DATASET_NAMES = ("voc2012", "ade20k", "tfds:NAME", "folder", "scale_digits")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What training and evaluation need to know about a dataset."""

    name: str
    num_classes: int
    class_names: tuple
    ignore_label: int = IGNORE_LABEL
    splits: tuple = ()


def _unknown(name):
    return ValueError(
        f"unknown dataset {name!r}; allowed names: {', '.join(DATASET_NAMES)} "
        "(tfds:NAME, e.g. tfds:oxford_iiit_pet)"
    )


def load_dataset(name, split, data_dir=None, skip_bad=False, **options):
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
        **options: loader options. voc2012: shuffle, seed, sbd_cache_dir, download.
            ade20k: shuffle, seed, download. folder: num_classes, shuffle, seed.
            tfds:NAME: download, shuffle, seed. scale_digits: see
            `keras_msattn.data.scale_digits.load`.

    Returns:
        tf.data.Dataset of (image uint8 (H, W, 3), label int32 (H, W)), 255 = ignore.

    Example:

    ```python
    ds = load_dataset("voc2012", "train_aug", data_dir="~/data", shuffle=True)
    ds = train_pipeline(ds, crop_size=321, batch_size=10)
    ```
    """
    if name == "voc2012":
        from keras_msattn.data import voc

        return voc.load(data_dir, split, skip_bad=skip_bad, **options)
    if name == "ade20k":
        from keras_msattn.data import ade20k

        return ade20k.load(data_dir, split, skip_bad=skip_bad, **options)
    if name == "folder":
        from keras_msattn.data import folder

        return folder.load(data_dir, split, skip_bad=skip_bad, **options)
    if name == "scale_digits":
        from keras_msattn.data import scale_digits

        # Generated in memory: there are no files to skip and no data_dir.
        return scale_digits.load(split, **options)
    if name.startswith("tfds:"):
        from keras_msattn.data import tfds_masks

        return tfds_masks.load(name[5:], split, data_dir=data_dir, skip_bad=skip_bad, **options)
    raise _unknown(name)


def dataset_info(name, data_dir=None, **options):
    """`DatasetInfo` (num_classes, class_names, ignore_label=255, splits) of a dataset.

    "folder" reads classes.txt under data_dir, or takes `num_classes=` when there is none.
    """
    if name == "voc2012":
        from keras_msattn.data import voc

        return DatasetInfo(name, voc.NUM_CLASSES, voc.CLASS_NAMES, splits=voc.SPLITS)
    if name == "ade20k":
        from keras_msattn.data import ade20k

        return DatasetInfo(name, ade20k.NUM_CLASSES, ade20k.CLASS_NAMES, splits=ade20k.SPLITS)
    if name == "folder":
        from keras_msattn.data import folder

        num_classes, names = folder.resolve_classes(data_dir, options.get("num_classes"))
        return DatasetInfo(name, num_classes, names, splits=folder.available_splits(data_dir))
    if name == "scale_digits":
        from keras_msattn.data import scale_digits

        return scale_digits.info()
    if name.startswith("tfds:"):
        from keras_msattn.data import tfds_masks

        spec = tfds_masks.spec(name[5:])
        return DatasetInfo(name, len(spec.class_names), spec.class_names, splits=spec.splits)
    raise _unknown(name)
