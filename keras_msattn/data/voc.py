"""PASCAL VOC 2012 segmentation, with the SBD augmented training set ("train_aug").

Expected layout under `data_dir` (the archives as extracted):

    VOCdevkit/VOC2012/JPEGImages/*.jpg
    VOCdevkit/VOC2012/SegmentationClass/*.png      palette PNGs: palette index = class,
                                                   255 = object border (ignored)
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    benchmark_RELEASE/dataset/{cls/*.mat, img/*.jpg, train.txt, val.txt}   (train_aug only)

Splits: "train" (1,464), "val" (1,449) and "train_aug" (10,582): VOC train + SBD train +
SBD val, minus VOC val, deduplicated and sorted. A train_aug image in VOC train takes its
label from SegmentationClass, every other one from SBD's cls/*.mat (MATLAB struct GTcls,
field Segmentation). The .mat files are converted once into a PNG cache (built in a
temporary folder and renamed into place, with a completion marker written last), so the
training pipeline decodes PNGs with TensorFlow ops.
"""

import glob
import os
import shutil
import tempfile

from keras_msattn.data.base import DatasetInfo
from keras_msattn.data.check import check_files, first_bad_pair
from keras_msattn.data.images import LOG, SplitFiles, read_sbd_mat

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ("train_aug", "train", "val")
CACHE_MARKER = "COMPLETE"


def voc_root(data_dir):
    return os.path.join(data_dir, "VOCdevkit", "VOC2012")


def sbd_root(data_dir):
    return os.path.join(data_dir, "benchmark_RELEASE", "dataset")


def _require_dir(path, what, hint):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: expected the folder {path} ({hint})")


def read_list(path):
    """Image ids of a list file, one per line; an empty list is an error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list not found: expected the file {path}")
    with open(path) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"split list {path} lists no images")
    return ids


def train_aug_ids(voc_train, voc_val, sbd_train, sbd_val):
    """VOC train + SBD train + SBD val, minus VOC val; deduplicated and sorted."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def _check_roots(data_dir, split):
    if data_dir is None:
        raise ValueError("voc2012 needs data_dir: the folder that contains VOCdevkit/")
    _require_dir(
        voc_root(data_dir),
        "PASCAL VOC 2012",
        "data_dir must contain VOCdevkit/VOC2012 as extracted from "
        "VOCtrainval_11-May-2012.tar; keras_msattn.data.download.download_voc2012(data_dir) "
        "fetches it",
    )
    if split == "train_aug":
        _require_dir(
            sbd_root(data_dir),
            "SBD (needed for train_aug)",
            "data_dir must contain benchmark_RELEASE/dataset as extracted from benchmark.tgz; "
            "keras_msattn.data.download.download_sbd(data_dir) fetches it",
        )


def split_files(data_dir, split):
    """The split's image and label paths. train_aug's SBD labels are the original .mat files."""
    if split not in SPLITS:
        raise ValueError(f"voc2012 has no split {split!r}; splits: {', '.join(SPLITS)}")
    _check_roots(data_dir, split)
    voc = voc_root(data_dir)
    lists = os.path.join(voc, "ImageSets", "Segmentation")
    voc_image = os.path.join(voc, "JPEGImages", "{}.jpg")
    voc_label = os.path.join(voc, "SegmentationClass", "{}.png")
    if split in ("train", "val"):
        ids = read_list(os.path.join(lists, f"{split}.txt"))
        pairs = [(voc_image.format(i), voc_label.format(i)) for i in ids]
    else:
        sbd = sbd_root(data_dir)
        voc_train = read_list(os.path.join(lists, "train.txt"))
        voc_val = read_list(os.path.join(lists, "val.txt"))
        sbd_train = read_list(os.path.join(sbd, "train.txt"))
        sbd_val = read_list(os.path.join(sbd, "val.txt"))
        in_voc_train = set(voc_train)
        pairs = []
        for i in train_aug_ids(voc_train, voc_val, sbd_train, sbd_val):
            image = voc_image.format(i)
            sbd_image = os.path.join(sbd, "img", f"{i}.jpg")
            if not os.path.exists(image) and os.path.exists(sbd_image):
                image = sbd_image
            if i in in_voc_train:
                label = voc_label.format(i)
            else:
                label = os.path.join(sbd, "cls", f"{i}.mat")
            pairs.append((image, label))
    images, labels, missing = [], [], []
    for image, label in pairs:
        absent = [p for p in (image, label) if not os.path.exists(p)]
        missing.extend((p, "missing file (named by the split list)") for p in absent)
        if not absent:
            images.append(image)
            labels.append(label)
    return SplitFiles(
        images=images,
        labels=labels,
        num_classes=NUM_CLASSES,
        missing=missing,
        description=f"voc2012/{split}",
    )


def build_sbd_cache(sbd_dir, cache_dir):
    """Convert every SBD cls/*.mat into an 8-bit PNG under cache_dir, atomically.

    The PNGs are written into a temporary sibling folder, a marker file last; the folder
    is then renamed to cache_dir. A build interrupted at any point leaves no cache_dir
    (or one without the marker, which is rebuilt). Unreadable .mat files are listed in
    the marker file rather than aborting the build. Returns {id: error} for those.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    marker = os.path.join(cache_dir, CACHE_MARKER)
    if os.path.isfile(marker):
        return _read_marker(marker)
    if os.path.isdir(cache_dir):
        # A folder without the marker is not ours to trust: rebuild it.
        shutil.rmtree(cache_dir)
    parent = os.path.dirname(os.path.abspath(cache_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(cache_dir) + ".tmp-", dir=parent)
    try:
        mats = sorted(glob.glob(os.path.join(sbd_dir, "cls", "*.mat")))
        failures = {}
        for path in tqdm(mats, desc="Converting SBD labels to PNG", unit="file"):
            stem = os.path.splitext(os.path.basename(path))[0]
            try:
                segmentation = read_sbd_mat(path)
            except Exception as e:  # reported, not fatal
                failures[stem] = f"{type(e).__name__}: {e}".replace("\n", " ")
                continue
            Image.fromarray(segmentation, mode="L").save(os.path.join(tmp, stem + ".png"))
        with open(os.path.join(tmp, CACHE_MARKER), "w") as f:
            f.write(f"{len(mats) - len(failures)} converted\n")
            for stem, error in sorted(failures.items()):
                f.write(f"{stem}\t{error}\n")
        try:
            os.replace(tmp, cache_dir)
        except OSError:
            # Another process finished first; its complete cache stands.
            if not os.path.isfile(marker):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return _read_marker(marker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    LOG.info("SBD label cache written to %s", cache_dir)
    return failures


def _read_marker(marker):
    with open(marker) as f:
        lines = f.read().splitlines()[1:]
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def default_cache_dir(data_dir):
    return os.path.join(sbd_root(data_dir), "cls_png")


def info(data_dir=None, num_classes=None):
    return DatasetInfo("voc2012", NUM_CLASSES, CLASS_NAMES, splits=SPLITS)


def splits(data_dir=None):
    return SPLITS


def check(split, data_dir=None, num_classes=None, progress=True):
    """Every bad file of `split` (`keras_msattn.data.check.CheckResult`)."""
    return check_files(
        lambda: split_files(data_dir, split), f"voc2012/{split}", data_dir, num_classes, progress
    )


def load(
    split,
    data_dir=None,
    skip_bad=False,
    shuffle=False,
    seed=None,
    num_classes=None,
    sbd_cache_dir=None,
    download=False,
):
    """tf.data.Dataset of (image uint8 (H, W, 3), label int32 (H, W)); see the module doc.

    Args:
        data_dir: folder containing VOCdevkit/ (and benchmark_RELEASE/ for train_aug).
        split: "train_aug", "train" or "val".
        skip_bad: skip bad files with a counted warning instead of raising.
        shuffle: shuffle the file order each pass (before decoding).
        seed: shuffle seed.
        sbd_cache_dir: where the PNG cache of SBD's .mat labels goes (default:
            benchmark_RELEASE/dataset/cls_png).
        num_classes: unused (VOC has 21 classes).
        download: fetch missing archives (VOC, SBD) into data_dir first.
    """
    from keras_msattn.data.images import pairs_dataset

    if download and data_dir is not None:
        from keras_msattn.data import download as downloads

        if not os.path.isdir(voc_root(data_dir)):
            downloads.download_voc2012(data_dir)
        if split == "train_aug" and not os.path.isdir(sbd_root(data_dir)):
            downloads.download_sbd(data_dir)
    files = split_files(data_dir, split)
    if split == "train_aug":
        cache_dir = sbd_cache_dir or default_cache_dir(data_dir)
        failures = build_sbd_cache(sbd_root(data_dir), cache_dir)
        images, labels, sources = [], [], []
        for image, label in zip(files.images, files.labels, strict=True):
            if label.endswith(".mat"):
                stem = os.path.splitext(os.path.basename(label))[0]
                if stem in failures:
                    files.missing.append((label, f"unreadable SBD label: {failures[stem]}"))
                    continue
                png = os.path.join(cache_dir, stem + ".png")
            else:
                png = label
            images.append(image)
            labels.append(png)
            sources.append(label)
        files.images, files.labels, files.label_sources = images, labels, sources
    return pairs_dataset(
        files, skip_bad=skip_bad, shuffle=shuffle, seed=seed, first_bad_pair=first_bad_pair
    )
