"""Shared checks for tests that run `msattn` in this process."""

import hashlib
import os

from keras_msattn.cli import main


def fails_naming(argv, capsys, *names, code=2):
    """Runs `msattn argv`; it must exit `code` with one message naming every one of `names`."""
    status = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert status == code, text
    assert "Traceback" not in text
    message = [line for line in out.err.splitlines() if ": error: " in line]
    assert len(message) == 1, out.err
    for name in names:
        assert str(name) in out.err, out.err
    return out.err


def folder_digest(folder):
    """{relative path: sha256} of every file under `folder`."""
    digest = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                digest[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return digest
