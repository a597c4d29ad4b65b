"""Errors a user can fix, and the file mode of written outputs.

`UserError` and its subclasses carry a message that names the file or argument at
fault and what to do; `msattn` prints it on one line (exit status 2) instead of a
traceback. This module imports nothing heavy, so the command line and the data
checks can use it freely.
"""

import os


class UserError(Exception):
    """A failure caused by an input (file, argument, artifact) that the user can fix."""


class DataError(UserError):
    """A dataset file that cannot be used: unreadable, not an image, bad mask values."""


class CheckpointError(UserError):
    """No usable training checkpoint where one is expected."""


def _umask():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no way to read it without setting it elsewhere
    os.umask(mask)
    return mask


def make_ordinary(path):
    """Give a file written through `tempfile.mkstemp` (mode 0600) the mode `open` would:
    0666 less the umask."""
    os.chmod(path, 0o666 & ~_umask())
