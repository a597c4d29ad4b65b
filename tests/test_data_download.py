import hashlib
import io
import os
import tarfile
import urllib.request

import pytest

from keras_msattn.data import download, load_dataset


class _Response(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def _refuse(url, *args, **kwargs):
    raise OSError("network is unreachable")


def _sbd_archive():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in [
            ("benchmark_RELEASE/dataset/train.txt", b"2009_000001\n"),
            ("benchmark_RELEASE/dataset/val.txt", b"2009_000002\n"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def _leftovers(data_dir):
    return [n for n in os.listdir(data_dir) if n.startswith(".extract-")]


@pytest.mark.parametrize(
    "fetch, archive",
    [
        (download.download_voc2012, "VOCtrainval_11-May-2012.tar"),
        (download.download_sbd, "benchmark.tgz"),
        (download.download_ade20k, "ADEChallengeData2016.zip"),
    ],
)
def test_failed_download_says_how_to_place_files_by_hand(tmp_path, monkeypatch, fetch, archive):
    monkeypatch.setattr(urllib.request, "urlopen", _refuse)
    with pytest.raises(download.DownloadError) as error:
        fetch(str(tmp_path))
    message = str(error.value)
    assert "failed" in message and "network is unreachable" in message
    assert "by hand" in message and archive in message
    assert not os.path.exists(tmp_path / "downloads" / archive)


def test_load_dataset_download_option_reports_the_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _refuse)
    with pytest.raises(download.DownloadError, match="VOCtrainval_11-May-2012.tar"):
        load_dataset("voc2012", "val", data_dir=str(tmp_path), download=True)


def test_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url: _Response(b"not the archive"))
    with pytest.raises(download.DownloadError, match="checksum mismatch"):
        download.download_sbd(str(tmp_path))
    assert os.listdir(tmp_path / "downloads") == []
    assert not os.path.exists(tmp_path / "benchmark_RELEASE")


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    data = _sbd_archive()
    monkeypatch.setitem(download.SBD, "md5", hashlib.md5(data).hexdigest())
    monkeypatch.setattr(urllib.request, "urlopen", lambda url: _Response(data))
    target = download.download_sbd(str(tmp_path))
    assert target == os.path.join(str(tmp_path), "benchmark_RELEASE")
    with open(os.path.join(target, "dataset", "train.txt")) as f:
        assert f.read() == "2009_000001\n"
    assert _leftovers(tmp_path) == []
    # Already there: no second download.
    monkeypatch.setattr(urllib.request, "urlopen", _refuse)
    assert download.download_sbd(str(tmp_path)) == target


def test_archive_without_the_dataset_folder_leaves_nothing(tmp_path, monkeypatch):
    data = _sbd_archive()
    monkeypatch.setitem(download.SBD, "md5", None)
    monkeypatch.setitem(download.SBD, "member", "not_in_archive")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url: _Response(data))
    with pytest.raises(download.DownloadError, match="has no folder not_in_archive"):
        download.download_sbd(str(tmp_path))
    assert not os.path.exists(tmp_path / "not_in_archive")
    assert not os.path.exists(tmp_path / "benchmark_RELEASE")
    assert _leftovers(tmp_path) == []


def test_known_checksums():
    assert download.VOC2012["md5"] == "6cd6e144f989b92b3379bac3b3de84fd"
    assert download.SBD["md5"] == "82b4d87ceb2ed10f6038a1cba92111cb"
    assert download.ADE20K["md5"] is None  # none is published
