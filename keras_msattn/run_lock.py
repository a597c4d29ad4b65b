"""One training run per folder: an exclusive lock on the run's output folder.

`keras_msattn.training.train` holds `OUT/.msattn-lock` for the whole run, so a
second `msattn train` on the same `--out` stops with a message naming the
folder and the process that has it, instead of writing its files between the
first run's.

The lock is the kernel's (`fcntl.flock`): taking it is atomic, and it is
released when its process ends, however it ends. The file also records its
holder (pid, host, start time) for the messages. A clean release empties the
file; a lock file that still names a holder but is not locked was left by a
process that died, and is taken over with a message naming that process.

`flock` is local to one machine: on a network file system shared by several
hosts it may not exclude a process on another host.
"""

import contextlib
import fcntl
import json
import os
import socket
import time

from keras_msattn.errors import UserError

LOCK_NAME = ".msattn-lock"


class RunFolderBusy(UserError):
    """Another live process is training into the same folder."""


def lock_path(folder):
    return os.path.join(folder, LOCK_NAME)


def _holder_text(holder):
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"


def _read_holder(handle):
    handle.seek(0)
    text = handle.read()
    if not text.strip():
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {"pid": "?", "host": "?", "started": "unknown"}
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def run_folder_lock(folder, log=print):
    """Holds the lock of `folder` (created if needed) for the `with` block.

    Raises:
        RunFolderBusy: a live process holds it; the message names the folder,
            the holder's pid and host, and what to do.
    """
    os.makedirs(folder, exist_ok=True)
    path = lock_path(folder)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the block)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(
                f"{folder} is in use: {_holder_text(_read_holder(handle))} is training into "
                f"it ({path}). Wait for that run to finish, or use another --out."
            ) from None
        stale = _read_holder(handle)
        if stale is not None:
            log(
                f"{folder}: taking over the lock left by {_holder_text(stale)}, which ended "
                "without releasing it (killed or crashed)"
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        try:
            yield path
        finally:
            # Empty: the next run sees a clean release, not a crashed holder.
            handle.seek(0)
            handle.truncate()
            handle.flush()
    finally:
        handle.close()  # releases the flock
