"""ADE20K scene parsing, the 150-class MIT SceneParsing benchmark (ADEChallengeData2016).

Expected layout under `data_dir` (ADEChallengeData2016.zip as extracted):

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations/{training,validation}/*.png   8-bit class maps

Splits: "train" (20,210 images) and "val" (2,000). Annotation value 0 is "other"
(unlabelled) and becomes 255 (ignored); values 1..150 become classes 0..149.
"""

import glob
import os

from keras_msattn.data.base import DatasetInfo
from keras_msattn.data.check import check_files, first_bad_pair
from keras_msattn.data.images import SplitFiles

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ("train", "val")
_FOLDERS = {"train": "training", "val": "validation"}


def ade_root(data_dir):
    return os.path.join(data_dir, "ADEChallengeData2016")


def split_files(data_dir, split):
    """Every image of the split folder, paired with the annotation of the same stem."""
    if split not in SPLITS:
        raise ValueError(f"ade20k has no split {split!r}; splits: {', '.join(SPLITS)}")
    if data_dir is None:
        raise ValueError("ade20k needs data_dir: the folder that contains ADEChallengeData2016/")
    root = ade_root(data_dir)
    image_dir = os.path.join(root, "images", _FOLDERS[split])
    label_dir = os.path.join(root, "annotations", _FOLDERS[split])
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"ADE20K not found: expected the folder {folder} (data_dir must contain "
                "ADEChallengeData2016 as extracted from ADEChallengeData2016.zip; "
                "keras_msattn.data.download.download_ade20k(data_dir) fetches it)"
            )
    image_paths = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    if not image_paths:
        raise ValueError(f"ade20k/{split}: the folder {image_dir} holds no .jpg images")
    images, labels, missing = [], [], []
    for image in image_paths:
        stem = os.path.splitext(os.path.basename(image))[0]
        label = os.path.join(label_dir, stem + ".png")
        if os.path.exists(label):
            images.append(image)
            labels.append(label)
        else:
            missing.append((label, "missing annotation for " + image))
    return SplitFiles(
        images=images,
        labels=labels,
        num_classes=NUM_CLASSES,
        reduce_zero_label=True,
        missing=missing,
        description=f"ade20k/{split}",
    )


def info(data_dir=None, num_classes=None):
    return DatasetInfo("ade20k", NUM_CLASSES, CLASS_NAMES, splits=SPLITS)


def splits(data_dir=None):
    return SPLITS


def check(split, data_dir=None, num_classes=None, progress=True):
    """Every bad file of `split` (`keras_msattn.data.check.CheckResult`)."""
    return check_files(
        lambda: split_files(data_dir, split), f"ade20k/{split}", data_dir, num_classes, progress
    )


def load(
    split, data_dir=None, skip_bad=False, shuffle=False, seed=None, num_classes=None, download=False
):
    """tf.data.Dataset of (image uint8 (H, W, 3), label int32 (H, W)); see the module doc.

    Args:
        data_dir: folder containing ADEChallengeData2016/.
        split: "train" or "val".
        skip_bad: skip bad files with a counted warning instead of raising.
        shuffle: shuffle the file order each pass (before decoding).
        seed: shuffle seed.
        num_classes: unused (ADE20K has 150 classes).
        download: fetch ADEChallengeData2016.zip into data_dir first when missing.
    """
    from keras_msattn.data.images import pairs_dataset

    if download and data_dir is not None and not os.path.isdir(ade_root(data_dir)):
        from keras_msattn.data import download as downloads

        downloads.download_ade20k(data_dir)
    files = split_files(data_dir, split)
    return pairs_dataset(
        files, skip_bad=skip_bad, shuffle=shuffle, seed=seed, first_bad_pair=first_bad_pair
    )
