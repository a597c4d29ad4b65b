"""Training checkpoints that survive damage: two generations, checked when read.

A backup folder holds the weights of the last two finished epochs,
`epoch-NNNN.weights.h5`, and one index, `training_metadata.json`:

    {"epoch": 3, "batch": 0, "weights": "epoch-0003.weights.h5", "sha256": "...",
     "previous": {"epoch": 2, "batch": 0, "weights": "epoch-0002.weights.h5", "sha256": "..."}}

A save writes the new weights file (temporary name, then rename), then the index (the
same way), then removes weights the index no longer names. The index's rename is the
one commit point: a kill anywhere leaves an index naming two whole files.

Reading checks each checkpoint, newest first: its file exists, its SHA-256 matches the
index and the model loads it. A damaged newest checkpoint (cut short, changed, copied
half) is reported and the previous one is used. When none is usable the run stops with
a `CheckpointError` naming the files: it never silently starts over. A lost or unreadable
index falls back to the weights files found, newest first, checked by loading them.
"""

import hashlib
import json
import os
import re

from keras_msattn import files
from keras_msattn.errors import CheckpointError

INDEX = "training_metadata.json"
_WEIGHTS = re.compile(r"^epoch-(\d+)\.weights\.h5$")
LEGACY_WEIGHTS = "latest.weights.h5"  # what Keras's BackupAndRestore writes


def weights_name(epoch):
    return f"epoch-{epoch:04d}.weights.h5"


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_index(folder):
    """The index dict; None when there is none; raises CheckpointError when unreadable."""
    path = os.path.join(folder, INDEX)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            index = json.load(f)
        int(index["epoch"])
        return index
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: damaged checkpoint index ({error})") from error


def save(model, folder, epoch, batch=0):
    """Writes epoch `epoch`'s checkpoint; keeps the previous good one beside it."""
    os.makedirs(folder, exist_ok=True)
    name = weights_name(epoch)
    path = os.path.join(folder, name)
    files.write_with(lambda t: model.save_weights(t, overwrite=True), path, suffix=".weights.h5")
    try:
        previous = read_index(folder)
    except CheckpointError:
        previous = None
    if previous is not None and "weights" not in previous:  # Keras's own backup
        previous = {**previous, "weights": LEGACY_WEIGHTS}
    entry = {"epoch": int(epoch), "batch": int(batch), "weights": name, "sha256": sha256(path)}
    if previous is not None and previous.get("weights") not in (None, name):
        previous.pop("previous", None)
        entry["previous"] = previous

    files.write_json(os.path.join(folder, INDEX), entry)
    kept = {name, entry.get("previous", {}).get("weights")}
    for other in os.listdir(folder):
        if (_WEIGHTS.match(other) or other == LEGACY_WEIGHTS) and other not in kept:
            os.remove(os.path.join(folder, other))


def candidates(folder):
    """(checkpoints to try, newest first, as index entries; problems found so far)."""
    problems = []
    try:
        index = read_index(folder)
    except CheckpointError as error:
        problems.append(str(error))
        index = None
    if index is not None:
        if "weights" not in index:  # written by Keras's BackupAndRestore
            index = {**index, "weights": LEGACY_WEIGHTS}
        entries = [index] + ([index["previous"]] if index.get("previous") else [])
    else:
        found = []
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                match = _WEIGHTS.match(name)
                if match:
                    found.append({"epoch": int(match.group(1)), "batch": 0, "weights": name})
        entries = sorted(found, key=lambda e: -e["epoch"])
    return entries, problems


def check(folder, entry):
    """None when the checkpoint's file is whole; else what is wrong with it."""
    path = os.path.join(folder, entry["weights"])
    if not os.path.isfile(path):
        return f"{path}: missing"
    if entry.get("sha256") and sha256(path) != entry["sha256"]:
        return f"{path}: damaged (its SHA-256 differs from the one recorded at save time)"
    try:
        import h5py

        with h5py.File(path, "r") as f:
            if not list(f.keys()):
                return f"{path}: damaged (holds no weights)"
    except OSError as error:
        return f"{path}: damaged, cannot be opened ({error})"
    return None


def _none_usable(folder, problems):
    shown = "; ".join(problems)
    return CheckpointError(
        f"no usable checkpoint in {folder}: {shown}. Restore the folder from a copy, or "
        f"move {folder} aside to start the run over"
    )


def usable_epoch(folder):
    """The epoch the run resumes after (0 for a new run), as `restore` will choose it."""
    entries, problems = candidates(folder)
    if not entries and not problems:
        return 0
    for entry in entries:
        problem = check(folder, entry)
        if problem is None:
            return int(entry["epoch"])
        problems.append(problem)
    raise _none_usable(folder, problems)


def exists(folder):
    """Whether `folder` holds any checkpoint, usable or not."""
    entries, problems = candidates(folder)
    return bool(entries or problems)


def restore(model, folder, log=print):
    """Loads the newest usable checkpoint into `model`; returns its epoch (0: none)."""
    entries, problems = candidates(folder)
    if not entries and not problems:
        return 0
    for entry in entries:
        problem = check(folder, entry)
        if problem is None:
            try:
                model.load_weights(os.path.join(folder, entry["weights"]))
            except (OSError, ValueError, KeyError) as error:
                problem = f"{os.path.join(folder, entry['weights'])}: cannot be loaded ({error})"
        if problem is None:
            for earlier in problems:
                log(f"checkpoint {earlier}; resuming from the previous one, epoch {entry['epoch']}")
            return int(entry["epoch"])
        problems.append(problem)
    raise _none_usable(folder, problems)
