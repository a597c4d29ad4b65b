"""All-or-nothing writes: build under a hidden temporary name, rename at the end.

Every file or folder the package writes goes through here. The temporary lives
in the destination folder, so the final `os.replace` is a rename on one file
system; a failure removes it, and a kill leaves only a `TEMPORARY_PREFIX` name
that `remove_stale_temporaries` deletes on the next run. Nothing that looks
like a finished artifact (a `.keras` model, a `.tflite`, a numeric SavedModel
version folder, a report, a checkpoint) exists until all of it was written.
"""

import contextlib
import errno
import json
import os
import shutil
import tempfile

from keras_msattn.errors import UserError, make_ordinary

# Every temporary starts with this, so a later run can find what a kill left.
TEMPORARY_PREFIX = ".msattn-partial-"
_RAISE = object()


class WriteFailed(UserError):
    """A file could not be written (e.g. a full disk); the previous version is intact."""


class DamagedFile(UserError):
    """A file the package wrote earlier can no longer be read."""


def _temporary_name(path, directory=False, suffix=""):
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix = f"{TEMPORARY_PREFIX}{name}-"
    if directory:
        return tempfile.mkdtemp(prefix=prefix, dir=folder)
    handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(handle)
    return temporary


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def staged_file(path, suffix=""):
    """Yields a temporary file path; the caller commits it with `commit`.

    `suffix` is for writers that pick a format by extension (`.keras`, `.h5`).
    """
    temporary = _temporary_name(path, suffix=suffix)
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise


@contextlib.contextmanager
def staged_directory(path):
    """Yields a temporary folder; the caller commits it with `commit`."""
    temporary = _temporary_name(path, directory=True)
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


def write_with(write, path, suffix=""):
    """Calls `write(temporary_path)`, then renames the result onto `path`; returns `path`.

    Raises:
        WriteFailed: the write failed (a full disk, say); it names `path` and
            nothing else was changed.
    """
    path = os.fspath(path)
    try:
        with staged_file(path, suffix) as temporary:
            write(temporary)
            commit(temporary, path)
    except OSError as error:
        # ENOSPC and friends carry no file name, or the temporary's: name the
        # destination, and say that the previous version of it is untouched.
        reason = error.strerror or str(error)
        raise WriteFailed(
            f"could not write {path}: {reason}. Nothing was changed: "
            + (
                f"the previous {os.path.basename(path)} is as it was."
                if os.path.lexists(path)
                else f"{os.path.basename(path)} was not created."
            )
            + (" Free some disk space and run the command again." if _is_full(error) else "")
        ) from error
    return path


def _is_full(error):
    return error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error)


def write_bytes(path, data):
    def write(temporary):
        with open(temporary, "wb") as handle:
            handle.write(data)

    write_with(write, path)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path, default=_RAISE):
    """The JSON value in `path`; `default` when the file does not exist (if given).

    Raises:
        DamagedFile: the file is not JSON (a truncated or hand-edited file); the
            message names it.
    """
    if default is not _RAISE and not os.path.exists(path):
        return default
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise DamagedFile(
            f"{path} is damaged: not a JSON file ({error}). Restore it from a copy, or "
            f"delete the folder {os.path.dirname(os.path.abspath(path))} to start over."
        ) from None


def copy_file(source, path):
    return write_with(lambda temporary: shutil.copyfile(source, temporary), path)


def save_model(model, path):
    """`model.save(path)` through a temporary `.keras` file."""
    return write_with(model.save, path, suffix=".keras")


def remove_stale_temporaries(folder):
    """Deletes what a run killed while writing left under `folder`; never read."""
    for root, directories, names in os.walk(folder):
        for name in names:
            if name.startswith(TEMPORARY_PREFIX):
                os.remove(os.path.join(root, name))
        for name in list(directories):
            if name.startswith(TEMPORARY_PREFIX):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                directories.remove(name)
