"""What every dataset module shares: the ignore label and `DatasetInfo`.

A leaf module: it imports nothing from the package, so every dataset module and
`datasets.py` can import it without a circle.

Every dataset module under `keras_msattn.data` offers the same functions, which
`keras_msattn.data.datasets` calls by name (the only place that branches on a
dataset's name):

    info(data_dir=None, num_classes=None) -> DatasetInfo
    splits(data_dir=None) -> the split names found
    load(split, data_dir=None, skip_bad=False, shuffle=False, seed=None,
         num_classes=None, **options)
        -> unbatched tf.data.Dataset of (image uint8 (H, W, 3), label int32 (H, W))
    check(split, data_dir=None, num_classes=None, progress=True, **options)
        -> keras_msattn.data.check.CheckResult

`shuffle` and `seed` always mean the order examples come in. `num_classes` is
the class count for a dataset that does not define its own (a folder without
classes.txt); datasets with fixed classes ignore it, and callers compare the
count they need with `info(...).num_classes`. A dataset may also
define `extra_scores()`, returning an `ExtraScores` that evaluation fills in
beside mIoU (ScaleDigits: mIoU by digit size).
"""

import dataclasses
import os

IGNORE_LABEL = 255


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What training and evaluation need to know about a dataset.

    `eval_split` is the split `msattn evaluate` scores when none is given.
    """

    name: str
    num_classes: int
    class_names: tuple
    ignore_label: int = IGNORE_LABEL
    splits: tuple = ()
    eval_split: str = "val"
    # Where the class list comes from, for messages (a folder's classes.txt).
    classes_source: str = ""


class ExtraScores:
    """Scores a dataset adds to evaluation, from extra tensors its examples carry.

    `load_options` asks the dataset's `load` for them: examples then are
    `(image, label, *extras)`. Evaluation calls `update` once per image with
    the label and the predicted classes, and `result` at the end; it must return
    a JSON-ready dict, merged into the evaluation results.
    """

    load_options: dict = {}

    def update(self, label, prediction, extras):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError


def read_class_names(path):
    """The class names of a UTF-8 text file, one a line (blank lines skipped)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such class-names file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x} at position "
            f"{error.start}); save it as UTF-8, one class name a line."
        ) from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no class names")
    return names
