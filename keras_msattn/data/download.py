"""Fetch and extract the official VOC 2012, SBD and ADE20K archives into a data_dir.

Each function downloads its archive to data_dir/downloads/ (with a progress bar, into a
`.part` file renamed when complete), verifies its checksum, extracts it into a temporary
folder inside data_dir and renames the dataset folder into place, so an interrupted run
never leaves a half-extracted dataset behind. A dataset folder that is already there is
not downloaded again.
"""

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile

_CHUNK = 1 << 20


class DownloadError(OSError):
    """Raised when an archive cannot be fetched or does not verify."""


# url, archive name, md5 (None: no published checksum), folder inside the archive to move
# into data_dir, and how to place the files by hand.
VOC2012 = dict(
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    archive="VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    member="VOCdevkit/VOC2012",
)
SBD = dict(
    url="http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    archive="benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
    member="benchmark_RELEASE",
)
ADE20K = dict(
    url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    archive="ADEChallengeData2016.zip",
    # No checksum is published for this archive; only its extraction is checked.
    md5=None,
    member="ADEChallengeData2016",
)


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _by_hand(spec, data_dir):
    target = os.path.join(data_dir, spec["member"])
    return (
        f"To place the files by hand: download {spec['url']} with a browser or another "
        f"machine, extract it so that {target} exists (or put {spec['archive']} into "
        f"{os.path.join(data_dir, 'downloads')} and run this again)."
    )


def fetch(url, path, md5=None, description=None):
    """Download url to path (atomically, with a progress bar) and verify its md5."""
    from tqdm.auto import tqdm

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + ".part"
    with urllib.request.urlopen(url) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=description or url) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    if md5 is not None:
        actual = md5sum(part)
        if actual != md5:
            os.remove(part)
            raise DownloadError(f"{url}: checksum mismatch (md5 {actual}, expected {md5})")
    os.replace(part, path)
    return path


def _safe_members(names, root):
    root = os.path.realpath(root)
    for name in names:
        target = os.path.realpath(os.path.join(root, name))
        if not target.startswith(root + os.sep) and target != root:
            raise DownloadError(f"archive member {name!r} would extract outside {root}")


def extract(archive, data_dir, member):
    """Extract `member` (a folder inside the archive) to data_dir/member, atomically."""
    target = os.path.join(data_dir, member)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=data_dir)
    try:
        if archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                _safe_members(z.namelist(), tmp)
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                _safe_members(t.getnames(), tmp)
                # The "data" filter (Python >= 3.11.4 / 3.10.12) also refuses links
                # and device files; older Pythons rely on the path check above.
                if hasattr(tarfile, "data_filter"):
                    t.extractall(tmp, filter="data")
                else:
                    t.extractall(tmp)  # members checked above
        extracted = os.path.join(tmp, member)
        if not os.path.isdir(extracted):
            raise DownloadError(f"{archive} has no folder {member}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(extracted, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _download(spec, data_dir):
    if data_dir is None:
        raise ValueError("data_dir is required: the folder to download the dataset into")
    target = os.path.join(data_dir, spec["member"])
    if os.path.isdir(target):
        return target
    os.makedirs(data_dir, exist_ok=True)
    archive = os.path.join(data_dir, "downloads", spec["archive"])
    if not os.path.isfile(archive):
        try:
            fetch(spec["url"], archive, spec["md5"], description=spec["archive"])
        except DownloadError as error:
            raise DownloadError(f"{error}. {_by_hand(spec, data_dir)}") from error
        except Exception as error:
            raise DownloadError(
                f"downloading {spec['url']} failed ({type(error).__name__}: {error}). "
                + _by_hand(spec, data_dir)
            ) from error
    elif spec["md5"] is not None and md5sum(archive) != spec["md5"]:
        raise DownloadError(
            f"{archive}: checksum mismatch (expected md5 {spec['md5']}); delete it and "
            "run this again. " + _by_hand(spec, data_dir)
        )
    return extract(archive, data_dir, spec["member"])


def download_voc2012(data_dir):
    """VOCtrainval_11-May-2012.tar -> data_dir/VOCdevkit/VOC2012. Returns that folder."""
    return _download(VOC2012, data_dir)


def download_sbd(data_dir):
    """SBD benchmark.tgz -> data_dir/benchmark_RELEASE. Returns that folder."""
    return _download(SBD, data_dir)


def download_ade20k(data_dir):
    """ADEChallengeData2016.zip -> data_dir/ADEChallengeData2016. Returns that folder."""
    return _download(ADE20K, data_dir)
