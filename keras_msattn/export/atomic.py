"""All-or-nothing writes: build under a hidden temporary name, rename at the end.

The temporary lives in the destination folder, so the final `os.replace` is a
rename on one file system; a failure removes it. Nothing that looks like a
finished artifact (`.tflite`, a numeric SavedModel version folder, a report)
exists until everything it depends on has been written.
"""

import contextlib
import json
import os
import shutil
import tempfile

from keras_msattn.errors import make_ordinary


def _temporary_name(path, directory=False):
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if directory:
        return tempfile.mkdtemp(prefix=f".{name}.partial-", dir=folder)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.partial-", dir=folder)
    os.close(handle)
    return temporary


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def staged_file(path):
    """Yields a temporary file path; it becomes `path` only if the block succeeds."""
    temporary = _temporary_name(path)
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise


def commit(temporary, path):
    """Moves a staged file or folder into place (replacing a previous one)."""
    if os.path.isdir(temporary):
        if os.path.lexists(path):
            # A folder cannot be renamed over a non-empty one: move the old one
            # aside first, so that `path` is never half old, half new.
            previous = _temporary_name(path, directory=True)
            os.rmdir(previous)
            os.replace(path, previous)
            os.replace(temporary, path)
            _remove(previous)
        else:
            os.replace(temporary, path)
    else:
        make_ordinary(temporary)  # mkstemp makes it private
        os.replace(temporary, path)


@contextlib.contextmanager
def staged_directory(path):
    """Yields a temporary folder; the caller commits it with `commit`."""
    temporary = _temporary_name(path, directory=True)
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise


def write_bytes(path, data):
    with staged_file(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)
        commit(temporary, path)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")
