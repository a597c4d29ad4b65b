"""The callbacks of a training run (`keras_msattn.training.train` uses them all).

- `StopOnNonFiniteLoss`: stops at the first NaN/inf loss, naming the step.
- `StopAtStep`: ends training after exactly `steps` optimizer steps.
- `ResumableBackup`: the training state after each epoch, in two checked
  generations (`keras_msattn.checkpoints`), restored on a rerun.
- `EpochRecords`: history.json, and best.keras + best.json on a better score.
- `InferenceExport`: saves the single-output float32 copy of the training model.
"""

import math
import os
import time

import keras

from keras_msattn import checkpoints, files
from keras_msattn.batch_norm import reestimate_statistics
from keras_msattn.keras_internals import backup_position, set_initial_epoch
from keras_msattn.segmenter import copy_weights, inference_copy


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first NaN/inf loss with a message naming the step.

    Unlike `keras.callbacks.TerminateOnNaN` it raises, so no later callback
    saves the broken weights and the command exits with an error.
    """

    def __init__(self, backup_dir, learning_rate):
        super().__init__()
        self.backup_dir = backup_dir
        self.learning_rate = learning_rate

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = int(self.model.optimizer.iterations.numpy())
        epoch = restored_epoch(self.backup_dir)
        saved = (
            f"The last good state, after epoch {epoch}, is in {self.backup_dir}."
            if epoch
            else "No epoch had finished, so nothing was saved."
        )
        raise TrainingDiverged(
            f"training stopped: the loss is {float(loss)} at step {step}; the weights are "
            f"no longer usable. {saved} Try a lower learning rate (now "
            f"{self.learning_rate:g}), or check the data and labels."
        )


class StopAtStep(keras.callbacks.Callback):
    """Ends training when the optimizer has taken `steps` steps (mid-epoch if need be)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.steps:
            self.model.stop_training = True


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` with atomic writes and separate read and write folders.

    Keras writes `latest.weights.h5` and `training_metadata.json` in place; a kill
    during the write would leave a file that cannot be read. Here
    `keras_msattn.checkpoints` writes each through a temporary name, keeps the
    previous epoch's weights beside the newest, and checks them when read: a
    damaged newest checkpoint is reported and the previous one resumes.

    Multi-worker: every worker restores from the chief's `backup_dir` (a shared
    file system) and writes its own copy into `write_dir`, which is a temporary
    folder on workers other than the chief.
    """

    def __init__(self, backup_dir, write_dir=None, log=print):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.write_dir = write_dir or backup_dir
        self.log = log
        self.restored_epoch = 0

    def on_train_begin(self, logs=None):
        # Two checked generations instead of Keras's one: see keras_msattn.checkpoints.
        if checkpoints.exists(self.backup_dir):
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)  # before loading
            self.restored_epoch = checkpoints.restore(self.model, self.backup_dir, self.log)
            set_initial_epoch(self.model, self.restored_epoch)
            step = int(self.model.optimizer.iterations.numpy())
            self.log(f"resuming from {self.backup_dir}: epoch {self.restored_epoch}, step {step}")

    def _save_model(self):
        epoch, batch = backup_position(self)
        checkpoints.save(self.model, self.write_dir, epoch, batch)


def best_path(out_dir):
    return os.path.join(out_dir, "best.json")


def restored_epoch(backup_dir):
    """The epoch a backup in `backup_dir` resumes at (0 when there is none)."""
    return checkpoints.usable_epoch(backup_dir)


def _float_logs(logs):
    return {key: float(value) for key, value in (logs or {}).items()}


def _monitored(logs):
    # A one-output model logs "val_miou", a multi-output one "val_final_miou".
    for key in ("val_final_miou", "val_miou"):
        if key in logs:
            return key, float(logs[key])
    return None, None


class EpochRecords(keras.callbacks.Callback):
    """Writes history.json, and best.keras + best.json when validation mIoU improves.

    Both survive restarts: history entries of epochs about to be redone are
    dropped, and the best score so far is read back from best.json.
    """

    def __init__(self, out_dir, schedule, export, best=None, log=print):
        super().__init__()
        self.history_path = os.path.join(out_dir, "history.json")
        self.best_path = best_path(out_dir)
        self.best_model_path = os.path.join(out_dir, "best.keras")
        self.schedule = schedule
        self.export = export
        # Kept in memory: every worker must take the same decisions.
        self.best = best
        self.log = log
        self.history = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.history is None:
            history = files.read_json(self.history_path, [])
            self.history = [entry for entry in history if entry["epoch"] <= epoch]
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = _float_logs(logs)
        step = int(self.model.optimizer.iterations.numpy())
        # Training time summed over restarts (validation included), for mIoU-vs-time curves.
        elapsed = self.history[-1].get("elapsed_seconds", 0.0) if self.history else 0.0
        elapsed += time.monotonic() - self.epoch_started
        entry = {
            "epoch": epoch + 1,
            "step": step,
            "learning_rate": float(self.schedule(step)),
            "elapsed_seconds": elapsed,
        }
        self.history.append({**entry, **logs})
        files.write_json(self.history_path, self.history)
        key, value = _monitored(logs)
        if key is None:
            return
        if self.best is None or value > self.best["value"]:
            self.best = {**entry, "monitor": key, "value": value}
            self.export.save(self.best_model_path)
            files.write_json(self.best_path, self.best)
            self.log(f"epoch {epoch + 1}: {key} {value:.4f}, saved {self.best_model_path}")


class InferenceExport:
    """Saves the inference copy of a training model; the copy is built once."""

    def __init__(self, model):
        self.model = model
        self.clone = None

    def save(self, path, batch_norm_batches=None):
        """Saves the copy; with `batch_norm_batches`, its batch-norm statistics
        re-estimated on them first (the training model keeps its own). Returns the
        number of batches re-estimated on (0 for a model without batch norm)."""
        if self.clone is None:
            self.clone = inference_copy(self.model)
        else:
            copy_weights(self.model, self.clone)
        batches = 0
        if batch_norm_batches is not None:
            batches = reestimate_statistics(self.clone, batch_norm_batches)
        files.save_model(self.clone, path)
        return batches
