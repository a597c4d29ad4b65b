"""Two checked checkpoint generations, without training: a tiny model saved and restored."""

import json
import os

import keras
import numpy as np
import pytest
from fake_datasets import truncate_file

from keras_msattn import checkpoints
from keras_msattn.errors import CheckpointError


def model_with(value):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    for weight in model.weights:
        weight.assign(np.full(weight.shape, value, "float32"))
    return model


def value_of(model):
    return float(model.weights[0].numpy().reshape(-1)[0])


def test_two_generations_are_kept_and_the_newest_is_used(tmp_path):
    for epoch in (1, 2, 3):
        checkpoints.save(model_with(epoch), tmp_path, epoch)
    assert sorted(os.listdir(tmp_path)) == [
        "epoch-0002.weights.h5",
        "epoch-0003.weights.h5",
        "training_metadata.json",
    ]
    index = json.loads((tmp_path / "training_metadata.json").read_text())
    assert (index["epoch"], index["previous"]["epoch"]) == (3, 2)
    assert checkpoints.usable_epoch(tmp_path) == 3
    model = model_with(0)
    assert checkpoints.restore(model, tmp_path, log=lambda m: None) == 3
    assert value_of(model) == 3


def test_damaged_newest_falls_back_and_none_usable_names_the_files(tmp_path):
    for epoch in (1, 2):
        checkpoints.save(model_with(epoch), tmp_path, epoch)
    newest = tmp_path / "epoch-0002.weights.h5"
    # Same size, one byte changed: only the checksum can tell.
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    logged = []
    model = model_with(0)
    assert checkpoints.usable_epoch(tmp_path) == 1
    assert checkpoints.restore(model, tmp_path, log=logged.append) == 1
    assert value_of(model) == 1
    assert logged == [
        f"checkpoint {newest}: damaged (its SHA-256 differs from the one recorded at save "
        "time); resuming from the previous one, epoch 1"
    ]
    truncate_file(tmp_path / "epoch-0001.weights.h5", keep=50)
    with pytest.raises(CheckpointError) as error:
        checkpoints.restore(model_with(0), tmp_path)
    assert "no usable checkpoint" in str(error.value)
    assert str(newest) in str(error.value)
    assert str(tmp_path / "epoch-0001.weights.h5") in str(error.value)


def test_a_lost_index_falls_back_to_the_weights_files(tmp_path):
    for epoch in (1, 2):
        checkpoints.save(model_with(epoch), tmp_path, epoch)
    (tmp_path / "training_metadata.json").write_text('{"epoch": 2, "wei')  # cut short
    model = model_with(0)
    logged = []
    assert checkpoints.restore(model, tmp_path, log=logged.append) == 2
    assert value_of(model) == 2
    assert "damaged checkpoint index" in logged[0]
    assert checkpoints.usable_epoch(tmp_path / "nothing_here") == 0


def test_a_keras_backup_still_resumes(tmp_path):
    model_with(5).save_weights(tmp_path / "latest.weights.h5")
    (tmp_path / "training_metadata.json").write_text('{"epoch": 4, "batch": 0}')
    model = model_with(0)
    assert checkpoints.restore(model, tmp_path) == 4
    assert value_of(model) == 5
    checkpoints.save(model, tmp_path, 5)
    assert sorted(os.listdir(tmp_path)) == [
        "epoch-0005.weights.h5",
        "latest.weights.h5",
        "training_metadata.json",
    ]
