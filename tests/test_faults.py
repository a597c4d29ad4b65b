"""Faults that used to lose a finished run or print a traceback: each through `msattn`,
checking the exit status, that no traceback is printed and that the file or argument
at fault is named."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_checks import fails_naming, folder_digest
from fake_datasets import make_fake_folder

from keras_msattn.cli import main
from keras_msattn.run_lock import lock_path, run_folder_lock

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "voc2012_vgg16_largefov.py")
TINY_TRAIN = [
    'dataset="folder"',
    "train_split='train'",
    "val_split='val'",
    'backbone="resnet18_d8"',  # traces in 2/3 of MobileNetV2's time
    "output_stride=16",  # a 4x dilation on tiny maps costs seconds a step on CPU
    "backbone_weights=None",
    "head_channels=8",
    "crop_size=32",
    "val_size=32",
    "val_images=2",
    "batch_size=2",
    "steps=1",
    "steps_per_epoch=1",
]


def train_argv(data_dir, out, *sets):
    argv = ["train", RECIPE, "--variant", "single_scale", "--data-dir", str(data_dir)]
    argv += ["--out", str(out), "--set", *TINY_TRAIN, *sets]
    return argv


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return make_fake_folder(root / "data", n=2, splits=("train", "val"))["data_dir"]


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_argv(data_dir, out)) == 0
    return out


def _copy_tree(source, target):
    shutil.copytree(source, target)
    return target


# === Data loss ===


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from keras_msattn.run_lock import run_folder_lock
    with run_folder_lock(sys.argv[1], log=lambda *_: None):
        print("locked", flush=True)
        time.sleep(600)
    """
)


def _hold_lock(folder):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_train_on_a_folder_in_use_stops_and_changes_nothing(
    finished_run, data_dir, tmp_path, capsys
):
    out = _copy_tree(finished_run, tmp_path / "run")
    holder = _hold_lock(out)  # the first run, still training
    before = folder_digest(out)
    try:
        err = fails_naming(
            train_argv(data_dir, out, "learning_rate=0.05"), capsys, out, f"pid {holder.pid}"
        )
        assert "in use" in err and "another --out" in err
    finally:
        holder.kill()
        holder.wait()
    assert folder_digest(out) == before


def test_a_lock_left_by_a_killed_process_is_named_and_taken_over(tmp_path):
    holder = _hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    messages = []
    with run_folder_lock(tmp_path, log=messages.append):
        assert f'"pid": {os.getpid()}' in Path(lock_path(tmp_path)).read_text()
        assert len(messages) == 1 and f"pid {holder.pid}" in messages[0], messages
        assert "ended without releasing it" in messages[0]
    # A clean release leaves nothing to take over.
    messages.clear()
    with run_folder_lock(tmp_path, log=messages.append):
        pass
    assert messages == []


def test_a_finished_run_without_its_backup_keeps_its_config(
    finished_run, data_dir, tmp_path, capsys
):
    out = _copy_tree(finished_run, tmp_path / "run")
    shutil.rmtree(out / "backup")
    before = folder_digest(out)
    err = fails_naming(
        train_argv(data_dir, out, "learning_rate=0.05"), capsys, out, "learning_rate"
    )
    assert "different config" in err
    assert folder_digest(out) == before


# === Recipes and --set values ===


def _recipe(tmp_path, text, name="recipe.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


GOOD_RECIPE = """
from keras_msattn.config import TrainConfig

CONFIG = TrainConfig(dataset="folder", model=dict(backbone="mobilenet_v2"))
"""


@pytest.mark.parametrize(
    "text, expected",
    [
        ("CONFIG = TrainConfig(\n", ["line 1", "syntax error"]),
        (
            "import os\nfrom keras_msattn.config import TrainConfig\n"
            "CONFIG = TrainConfig(data_dir=os.environ['MSATTN_UNSET_VARIABLE'])\n",
            ["line 3", "KeyError", "MSATTN_UNSET_VARIABLE"],
        ),
        (
            GOOD_RECIPE + "VARIANTS = {'fast': {'stpes': 10}}\n",
            ["VARIANTS['fast']", "'stpes'", "steps"],
        ),
        (
            "from keras_msattn.config import TrainConfig\nCONFIG = TrainConfig(batchsize=4)\n",
            ["line 2", "TypeError", "batchsize"],
        ),
    ],
    ids=["syntax_error", "raises", "misspelt_variant_key", "misspelt_config_field"],
)
def test_a_broken_recipe_is_named_with_its_line(tmp_path, capsys, text, expected):
    recipe = _recipe(tmp_path, text)
    argv = ["train", recipe, "--out", str(tmp_path / "run")]
    if "VARIANTS" in text:
        argv += ["--variant", "fast"]
    fails_naming(argv, capsys, recipe, *expected)
    assert not (tmp_path / "run").exists()


def test_a_recipe_that_is_not_a_python_file(tmp_path, capsys):
    recipe = _recipe(tmp_path, GOOD_RECIPE, name="recipe.txt")
    fails_naming(["train", recipe, "--out", str(tmp_path / "run")], capsys, recipe, ".py")


@pytest.mark.parametrize(
    "value, named",
    [
        ("scale_range=5", "scale_range"),
        ("loss_weights=5", "loss_weights"),
        ("loss_weights={'fina': 1.0}", "fina"),
        ('dataset_options={"shufle": True}', "shufle"),
        ("steps='many'", "steps"),
        ("flip=3", "flip"),
        ("learning_rate=[0.1]", "learning_rate"),
        ("backbone_width=0", "backbone_width"),
        ("output_stride=7", "output_stride"),
        ("output_stride='8'", "output_stride"),
        ("scales=5", "scales"),
        ("pyramid_pooling='yes'", "pyramid_pooling"),
    ],
)
def test_a_bad_set_value_is_refused_before_anything_is_written(
    data_dir, tmp_path, capsys, value, named
):
    out = tmp_path / "run"
    fails_naming(train_argv(data_dir, out, value), capsys, named)
    assert not out.exists()


# === A full disk, Ctrl-C ===


class _FullDisk:
    """A file whose every write fails as on a full disk."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_the_evaluation_json(
    finished_run, data_dir, tmp_path, capsys, monkeypatch
):
    from keras_msattn import files

    out = tmp_path / "scores.json"
    out.write_text('{"earlier": true}\n')
    monkeypatch.setattr(files, "open", _FullDisk, raising=False)
    argv = ["evaluate", str(finished_run / "model.keras"), "--dataset", "folder"]
    argv += ["--data-dir", str(data_dir), "--split", "val", "--out", str(out)]
    err = fails_naming(argv, capsys, out, "No space left on device")
    assert "Nothing was changed" in err
    assert out.read_text() == '{"earlier": true}\n'
    assert sorted(os.listdir(tmp_path)) == ["scores.json"]  # no temporary left


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import keras

    from keras_msattn import checkpoints
    from keras_msattn.files import WriteFailed

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    checkpoints.save(model, tmp_path, 1)
    before = folder_digest(tmp_path)

    def full_disk(self, path, overwrite=True):
        with open(path, "wb") as handle:
            handle.write(b"\0" * 64)  # a partial file, as a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    with pytest.raises(WriteFailed, match="epoch-0002.weights.h5: No space left") as error:
        checkpoints.save(model, tmp_path, 2)
    assert "Nothing was changed" in str(error.value)
    assert folder_digest(tmp_path) == before
    assert checkpoints.usable_epoch(tmp_path) == 1


def test_ctrl_c_during_train_says_where_a_rerun_resumes(data_dir, tmp_path, capsys, monkeypatch):
    from keras_msattn.callbacks import EpochRecords

    original = EpochRecords.on_epoch_begin

    def interrupt_in_epoch_2(self, epoch, logs=None):
        if epoch == 1:  # 0-based: epoch 1 is finished and backed up
            raise KeyboardInterrupt
        return original(self, epoch, logs)

    monkeypatch.setattr(EpochRecords, "on_epoch_begin", interrupt_in_epoch_2)
    out = tmp_path / "run"
    code = main(train_argv(data_dir, out, "steps=2"))
    captured = capsys.readouterr()
    assert code == 130, captured.err
    assert "Traceback" not in captured.out + captured.err
    assert "msattn train: interrupted" in captured.err
    assert "resumes from epoch 2" in captured.err and str(out) in captured.err
    assert (out / ".msattn-lock").read_text() == ""  # released
    # Into a file or a pipe (not a terminal), one line per epoch, no progress bar.
    assert "1/1 - " in captured.out and "━" not in captured.out


# === Silent acceptance ===


def test_num_classes_other_than_classes_txt_is_refused(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    classes = os.path.join(data_dir, "classes.txt")
    fails_naming(train_argv(data_dir, out, "num_classes=5"), capsys, "=5", classes, "lists 3")
    assert not out.exists()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    import keras

    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)]
    )
    path = tmp_path_factory.mktemp("classifier") / "classifier.keras"
    model.save(path)
    return path


def test_a_model_that_is_not_a_segmenter_is_refused(classifier, data_dir, tmp_path, capsys):
    image = make_fake_folder(tmp_path / "d", n=1)["images"]["all"][0]
    out = tmp_path / "masks"
    err = fails_naming(
        ["predict", str(classifier), image, "--out", str(out)], capsys, classifier, "(None, 4)"
    )
    assert "not a segmentation model" in err
    assert not out.exists()
    argv = ["evaluate", str(classifier), "--dataset", "folder", "--data-dir", str(data_dir)]
    fails_naming(argv + ["--split", "val"], capsys, classifier, "not a segmentation model")


def _bad_name_folder(tmp_path, kind):
    fake = make_fake_folder(tmp_path / "data", n=2)
    image = fake["images"]["all"][0]
    stem, ext = os.path.splitext(os.path.basename(image))
    if kind == "non_utf8_name":
        # The pair's image and mask renamed to a stem with a byte that is not UTF-8.
        bad_stem = os.fsdecode(b"bad\xff")
        folder = os.path.dirname(image)
        os.rename(image, os.path.join(folder, bad_stem + ext))
        masks = os.path.join(fake["data_dir"], "masks")
        os.rename(os.path.join(masks, stem + ".png"), os.path.join(masks, bad_stem + ".png"))
        return fake, "bad\\xff"
    os.remove(image)
    os.symlink(str(tmp_path / "gone.jpg"), image)  # a dangling link
    return fake, image


@pytest.mark.parametrize("kind", ["non_utf8_name", "dangling_symlink"])
def test_check_and_the_pipelines_refuse_the_same_files(kind, finished_run, tmp_path, capsys):
    fake, named = _bad_name_folder(tmp_path, kind)
    data = fake["data_dir"]
    assert main(["data", "check", "--dataset", "folder", "--data-dir", data]) == 1
    report = capsys.readouterr()
    assert named in report.out and "Traceback" not in report.out + report.err
    argv = ["evaluate", str(finished_run / "model.keras"), "--dataset", "folder"]
    argv += ["--data-dir", data, "--split", "all", "--out", str(tmp_path / "r.json")]
    fails_naming(argv, capsys, named, "--skip-bad")
    assert main(argv + ["--skip-bad"]) == 0
    assert '"num_skipped": 1' in (tmp_path / "r.json").read_text()


# === Unclear messages ===


def test_classes_txt_that_is_not_utf8(finished_run, tmp_path, capsys):
    fake = make_fake_folder(tmp_path / "data", n=2)
    classes = os.path.join(fake["data_dir"], "classes.txt")
    Path(classes).write_bytes("thing0\nthing1\nth\xefng2\n".encode("latin-1"))
    assert main(["data", "check", "--dataset", "folder", "--data-dir", fake["data_dir"]]) == 1
    report = capsys.readouterr()
    assert f"{classes} is not UTF-8 text" in report.out and "Traceback" not in report.err
    argv = ["evaluate", str(finished_run / "model.keras"), "--dataset", "folder"]
    argv += ["--data-dir", fake["data_dir"], "--split", "all"]
    fails_naming(argv, capsys, classes, "not UTF-8")
    image = fake["images"]["all"][0]
    argv = ["predict", str(finished_run / "model.keras"), image, "--out", str(tmp_path / "o")]
    fails_naming(argv + ["--class-names", classes], capsys, classes, "not UTF-8")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_data_dir_that_is_not_a_folder(kind, finished_run, data_dir, tmp_path, capsys):
    bad = tmp_path / "nowhere"
    if kind == "file":
        bad.write_text("not a folder\n")
    expected = "is a file" if kind == "file" else "does not exist"
    fails_naming(train_argv(bad, tmp_path / "run"), capsys, bad, expected)
    argv = ["evaluate", str(finished_run / "model.keras"), "--dataset", "folder"]
    fails_naming(argv + ["--data-dir", str(bad)], capsys, bad, expected)


@pytest.mark.parametrize("name", ["config.json", "history.json", "best.json"])
def test_a_damaged_record_in_the_run_folder_is_named(
    name, finished_run, data_dir, tmp_path, capsys
):
    out = _copy_tree(finished_run, tmp_path / "run")
    (out / name).write_text('{"epoch": 1, "val')  # cut short
    before = folder_digest(out)
    fails_naming(train_argv(data_dir, out), capsys, out / name, "damaged")
    assert folder_digest(out) == before


def test_ctrl_c_in_any_command_is_one_line(finished_run, data_dir, tmp_path, capsys, monkeypatch):
    from keras_msattn import evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate", interrupted)
    argv = ["evaluate", str(finished_run / "model.keras"), "--dataset", "folder"]
    code = main(argv + ["--data-dir", str(data_dir), "--split", "val"])
    captured = capsys.readouterr()
    assert code == 130 and "Traceback" not in captured.out + captured.err
    assert captured.err.strip() == (
        "msattn evaluate: interrupted; no output was left half written."
    )
