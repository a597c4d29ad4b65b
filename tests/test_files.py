"""keras_msattn.files: every write is all-or-nothing, and what a kill leaves is found."""

import json
import os

import pytest

from keras_msattn import files


def listing(folder):
    return sorted(os.listdir(folder))


def test_committing_a_folder_replaces_the_old_one(tmp_path):
    target = tmp_path / "1"
    for content in ("old", "new"):
        with files.staged_directory(str(target)) as staged:
            with open(os.path.join(staged, "file.txt"), "w") as handle:
                handle.write(content)
            files.commit(staged, str(target))
    assert (target / "file.txt").read_text() == "new"
    assert listing(tmp_path) == ["1"]


def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    files.write_json(path, {"miou": 0.5})

    def fail(temporary):
        with open(temporary, "w") as handle:
            handle.write("{half")
        raise OSError("disk full")

    with pytest.raises(files.WriteFailed, match="could not write .*report.json: disk full"):
        files.write_with(fail, path)
    assert json.loads(path.read_text()) == {"miou": 0.5}
    assert listing(tmp_path) == ["report.json"]
    # Written files are readable by others, not private like mkstemp's.
    assert os.stat(path).st_mode & 0o044 == 0o044


def test_read_json_returns_the_default_only_for_a_missing_file(tmp_path):
    assert files.read_json(tmp_path / "none.json", []) == []
    with pytest.raises(FileNotFoundError):
        files.read_json(tmp_path / "none.json")
    files.write_json(tmp_path / "a.json", [1, 2])
    assert files.read_json(tmp_path / "a.json", None) == [1, 2]


def test_remove_stale_temporaries_deletes_only_what_a_kill_left(tmp_path):
    (tmp_path / "sub").mkdir()
    kept = [tmp_path / "model.keras", tmp_path / "sub" / "history.json"]
    for path in kept:
        path.write_text("x")
    stale_file = tmp_path / "sub" / f"{files.TEMPORARY_PREFIX}history.json-abc"
    stale_file.write_text("half")
    stale_folder = tmp_path / f"{files.TEMPORARY_PREFIX}1-xyz"
    stale_folder.mkdir()
    (stale_folder / "saved_model.pb").write_text("half")
    # A staged write in progress is named with the same prefix.
    with files.staged_file(tmp_path / "model.keras") as temporary:
        assert os.path.basename(temporary).startswith(files.TEMPORARY_PREFIX)
    files.remove_stale_temporaries(tmp_path)
    assert listing(tmp_path) == ["model.keras", "sub"]
    assert listing(tmp_path / "sub") == ["history.json"]


def test_save_model_writes_a_loadable_keras_file(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = files.save_model(model, tmp_path / "model.keras")
    assert path == str(tmp_path / "model.keras")
    assert keras.saving.load_model(path).count_params() == 3
    assert listing(tmp_path) == ["model.keras"]
