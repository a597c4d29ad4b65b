"""Training: one `TrainConfig` and `train(config, out_dir)`, read top to bottom.

`train` picks the `tf.distribute` strategy, builds the data (training:
`load_dataset` + `train_pipeline`, repeated; validation: `eval_pipeline` at one
fixed size), builds the model with deep supervision (the paper's `1 + S`
cross-entropies) and its optimizer (poly learning rate, decoder at 10x the
backbone's rate) inside `strategy.scope()`, and runs `model.fit`.

`batch_size` is the global batch: tf.data batches it whole and Keras splits it
over the replicas, so a config trains the same model on 1 or 8 devices. Batch
normalization is synchronized (`sync_batchnorm`, Keras's `synchronized=True`):
every replica normalizes with the statistics of the global batch. It is used on
one device too (where it reduces over nothing), so that one and several
replicas compute the same formula and their results agree to rounding.

What `train` writes into `out_dir`:

    config.json     the resolved config, written first; a rerun must match it
    backup/         the training state after the last finished epoch (weights,
                    optimizer state incl. its step, epoch number). Rerunning the
                    same command resumes from it; a finished run is not redone.
    history.json    one entry per finished epoch: step, learning rate, losses,
                    training metrics and validation scores
    best.keras      the inference model with the best validation mIoU so far,
    best.json       with its epoch, step and score
    model.keras     the inference model after the last step
    logs/           TensorBoard logs (train/ and validation/)

`best.keras` and `model.keras` are inference models: the same weights in a
`deep_supervision=False` model (one output), float32 even after mixed-precision
training, without optimizer state. After `import keras_msattn`,
`keras.saving.load_model(path)` (safe mode) returns a model mapping raw RGB
images `(B, H, W, 3)` to logits `(B, H, W, C)`.

Every file is written under a temporary name in its folder and renamed into
place, so a run killed at any moment leaves the previous version of a file or
the new one, never a truncated one.

One "epoch" is `steps_per_epoch` optimizer steps (not a pass over the data): the
unit of checkpointing, validation and logging. The last epoch is cut short at
`steps`, so the optimizer always ends at exactly `steps` updates.
"""

import ast
import dataclasses
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_msattn import checkpoints
from keras_msattn.data import dataset_info, eval_pipeline, load_dataset, train_pipeline
from keras_msattn.distribute import describe, is_chief, make_strategy, multi_worker_fit
from keras_msattn.errors import make_ordinary
from keras_msattn.losses import deep_supervision_losses
from keras_msattn.metrics import MeanIoU, PixelAccuracy
from keras_msattn.optimizers import PolyDecay, make_optimizer
from keras_msattn.segmenter import MultiScaleSegmenter, output_names

OPTIMIZERS = ("sgd", "adam", "adamw")
TEMPORARY_PREFIX = ".msattn-partial-"


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run depends on. Defaults: the paper's VOC setting.

    Model fields are the `MultiScaleSegmenter` arguments of the same name.
    """

    # --- Data ---
    dataset: str = "voc2012"  # a `load_dataset` name
    data_dir: str | None = None
    train_split: str = "train_aug"
    val_split: str = "val"
    dataset_options: dict = dataclasses.field(default_factory=dict)  # to load_dataset
    skip_bad: bool = False  # skip unreadable files with a warning instead of failing
    crop_size: int = 321
    scale_range: tuple = (0.5, 2.0)  # random scaling before the crop (DeepLab)
    flip: bool = True  # random horizontal flips
    val_images: int | None = None  # validate on the first N images; None: all, 0: none
    # Validation images larger than this are shrunk to fit, then all are padded
    # to val_size x val_size: one fixed shape (one trace; PSP needs static shapes).
    val_size: int | None = 512

    # --- Model ---
    backbone: str = "vgg16_largefov"
    backbone_weights: str | None = "imagenet"
    backbone_width: float = 1.0
    output_stride: int = 8
    num_classes: int | None = None  # None: from dataset_info
    scales: tuple = (1.0, 0.5)
    fusion: str | None = "attention"
    hypercolumn: bool = True
    scale_dilations: str | tuple | None = "auto"
    recalibration: str | None = "multiply"
    pyramid_pooling: bool = False
    head_channels: int | None = None

    # --- Optimization ---
    batch_size: int = 10  # global, over all replicas
    steps: int = 20000  # optimizer steps in total
    steps_per_epoch: int = 1000  # checkpoint + validation interval
    optimizer: str = "sgd"  # "sgd", "adam" or "adamw"
    learning_rate: float = 1e-3  # the backbone's; poly-decayed to 0 over `steps`
    decoder_lr_multiplier: float = 10.0
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    loss_weights: dict | None = None  # {output name: weight}; None: 1 for each
    sync_batchnorm: bool = True  # batch statistics over the global batch, not per replica
    mixed_precision: bool = False  # mixed_float16 on GPU, mixed_bfloat16 elsewhere
    # XLA stays off: the confusion-matrix metrics count with a data-sized bincount,
    # which XLA cannot compile (Keras's "auto" would pick XLA on one GPU and fail).
    jit_compile: str | bool = False
    seed: int = 0


def config_keys():
    return [field.name for field in dataclasses.fields(TrainConfig)]


def _is_int(value, minimum):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_config(config):
    """Raises ValueError naming the first field with an unusable value."""
    for name, minimum in (("steps", 1), ("steps_per_epoch", 1), ("batch_size", 1), ("seed", 0)):
        if not _is_int(getattr(config, name), minimum):
            raise ValueError(
                f"`{name}` must be an integer >= {minimum}, got {getattr(config, name)!r}."
            )
    for name in ("val_images", "val_size", "num_classes"):
        value = getattr(config, name)
        if value is not None and not _is_int(value, 0 if name == "val_images" else 1):
            raise ValueError(f"`{name}` must be None or a positive integer, got {value!r}.")
    crop = config.crop_size
    if not (_is_int(crop, 1) or (isinstance(crop, (tuple, list)) and len(crop) == 2)):
        raise ValueError(f"`crop_size` must be an int or (height, width), got {crop!r}.")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {config.optimizer!r}.")
    for name in ("learning_rate", "poly_power", "weight_decay", "momentum"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
    if not isinstance(config.dataset_options, dict):
        raise ValueError(f"`dataset_options` must be a dict, got {config.dataset_options!r}.")
    if len(config.scale_range) != 2 or not 0 < config.scale_range[0] <= config.scale_range[1]:
        raise ValueError(
            f"`scale_range` must be (min, max), 0 < min <= max, got {config.scale_range!r}."
        )


def resolve_config(config):
    """Fills in `num_classes` from the dataset and checks the config."""
    check_config(config)
    if config.num_classes is None:
        info = dataset_info(config.dataset, config.data_dir, **_info_options(config))
        config = dataclasses.replace(config, num_classes=info.num_classes)
    return config


def _info_options(config):
    # Only the "folder" dataset reads an option here (num_classes without classes.txt).
    return {k: v for k, v in config.dataset_options.items() if k == "num_classes"}


def config_to_json(config):
    # Through JSON and back, so tuples and lists compare equal with a stored config.
    return json.loads(json.dumps(dataclasses.asdict(config)))


# === Data ===


def _load(config, split, shuffle_seed=None):
    options = dict(config.dataset_options)
    if shuffle_seed is not None and config.dataset != "scale_digits":
        # A full permutation of the file list per pass; the shuffle buffer of
        # `train_pipeline` only mixes neighbours. (ScaleDigits is generated i.i.d.)
        options.setdefault("shuffle", True)
        options.setdefault("seed", shuffle_seed)
    return load_dataset(
        config.dataset, split, data_dir=config.data_dir, skip_bad=config.skip_bad, **options
    )


def _with_label_dict(dataset, names):
    # The deep-supervision model has one output per name; all learn the same labels.
    return dataset.map(
        lambda images, labels: (images, {name: labels for name in names}),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _shard_by_data(dataset):
    # Multi-worker: every worker runs the same pipeline and keeps its part of each
    # global batch (our datasets are not file-sharded record files).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def train_dataset(config, seed):
    """Augmented, repeated batches of `(images, {output name: labels})`."""
    dataset = train_pipeline(
        _load(config, config.train_split, shuffle_seed=seed),
        crop_size=config.crop_size,
        batch_size=config.batch_size,
        scale_range=tuple(config.scale_range),
        seed=seed,
        flip=config.flip,
    )
    return _shard_by_data(_with_label_dict(dataset, output_names(config.scales)))


def _shrink_to_fit(image, label, size):
    shape = tf.cast(tf.shape(label), tf.float32)
    scale = tf.minimum(1.0, size / tf.reduce_max(shape))
    new_size = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_size, method="bilinear")
    label = tf.image.resize(label[..., None], new_size, method="nearest")[..., 0]
    return image, label


def val_dataset(config):
    """Validation batches, or None when `val_images` is 0."""
    if config.val_images == 0:
        return None
    dataset = _load(config, config.val_split)
    if config.val_images is not None:
        dataset = dataset.take(config.val_images)
    # Counted once (this reads the images): with a known number of batches Keras
    # never runs into the end of the data, where its graph-mode evaluation adds
    # one uncounted step to the per-output loss means (Keras 3.15).
    count = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    if count == 0:
        raise ValueError(f"the {config.val_split!r} split of {config.dataset!r} has no images.")
    if config.val_size is not None:
        dataset = dataset.map(
            lambda image, label: _shrink_to_fit(image, label, config.val_size),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = eval_pipeline(dataset, batch_size=config.batch_size, pad_to=config.val_size)
    dataset = dataset.apply(
        tf.data.experimental.assert_cardinality(math.ceil(count / config.batch_size))
    )
    return _shard_by_data(_with_label_dict(dataset, output_names(config.scales)))


# === Model ===


def build_model(config, deep_supervision=True):
    """The `MultiScaleSegmenter` a config describes."""
    return MultiScaleSegmenter(
        backbone=config.backbone,
        num_classes=config.num_classes,
        scales=tuple(config.scales),
        fusion=config.fusion,
        hypercolumn=config.hypercolumn,
        scale_dilations=config.scale_dilations,
        recalibration=config.recalibration,
        pyramid_pooling=config.pyramid_pooling,
        deep_supervision=deep_supervision,
        backbone_weights=config.backbone_weights,
        output_stride=config.output_stride,
        backbone_width=config.backbone_width,
        head_channels=config.head_channels,
    )


def learning_rate_schedule(config):
    """The backbone's learning rate: poly decay from `learning_rate` to 0 at `steps`."""
    return PolyDecay(config.learning_rate, config.steps, power=config.poly_power)


def compile_model(model, config):
    """Deep-supervision losses, mIoU and pixel accuracy on "final", the optimizer."""
    names = output_names(config.scales)
    losses, loss_weights = deep_supervision_losses(names, config.loss_weights)
    optimizer = make_optimizer(
        config.optimizer,
        learning_rate_schedule(config),
        backbone_variables=model.backbone.trainable_variables,
        decoder_lr_multiplier=config.decoder_lr_multiplier,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    metrics = [
        MeanIoU(config.num_classes, name="miou"),
        PixelAccuracy(config.num_classes, name="pixel_accuracy"),
    ]
    model.compile(
        optimizer=optimizer,
        loss=losses,
        loss_weights=loss_weights,
        metrics={"final": metrics},
        jit_compile=config.jit_compile,
    )
    # Optimizer variables now, inside the strategy scope (restoring needs them too).
    model.optimizer.build(model.trainable_variables)
    return model


def synchronize_batchnorm(model):
    """Batch statistics over the global batch (Keras's TensorFlow-only option)."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def inference_model(model):
    """A float32, single-output copy of a (deep-supervision) segmenter, same weights."""
    config = model.get_config()
    config.update(deep_supervision=False, dtype="float32")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clone = MultiScaleSegmenter.from_config(config)
    finally:
        keras.config.set_dtype_policy(previous)
    copy_weights(model, clone)
    return clone


def copy_weights(source, target):
    """Copies weights layer by layer (by name); deep supervision adds no weights."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


# === Files ===


def _temporary(path, suffix=""):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=TEMPORARY_PREFIX + os.path.basename(path) + "-", suffix=suffix, dir=folder
    )
    os.close(handle)
    return temporary


def _replace(write, path, suffix=""):
    """Writes through `write(temporary_path)`, then renames onto `path`."""
    temporary = _temporary(path, suffix)
    try:
        write(temporary)
        make_ordinary(temporary)  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json(path, value):
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(value, f, indent=2)
            f.write("\n")

    _replace(write, path)


def read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def save_model(model, path):
    """`model.save(path)` through a temporary `.keras` file."""
    _replace(lambda temporary: model.save(temporary), path, suffix=".keras")


def _remove_stale_temporaries(folder):
    # Left behind by a run killed while writing; never read.
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TEMPORARY_PREFIX):
                os.remove(os.path.join(root, name))


def _check_or_write_config(config, out_dir, resuming, write):
    path = os.path.join(out_dir, "config.json")
    stored = read_json(path)
    current = config_to_json(config)
    if resuming and stored is not None:
        # The data may move between restarts; everything else defines the run.
        differing = sorted(
            key
            for key in set(stored) | set(current)
            if key != "data_dir" and stored.get(key) != current.get(key)
        )
        if differing:
            raise ValueError(
                f"{out_dir} holds a run with a different config (differs in: "
                f"{', '.join(differing)}). Use another --out, or delete {out_dir} to "
                "start over."
            )
    if write:
        write_json(path, current)


# === Callbacks ===


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
            self.model._initial_epoch = self.restored_epoch
            step = int(self.model.optimizer.iterations.numpy())
            self.log(f"resuming from {self.backup_dir}: epoch {self.restored_epoch}, step {step}")

    def _save_model(self):
        checkpoints.save(self.model, self.write_dir, self._current_epoch, self._last_batch_seen)


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
            history = read_json(self.history_path, [])
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
        write_json(self.history_path, self.history)
        key, value = _monitored(logs)
        if key is None:
            return
        if self.best is None or value > self.best["value"]:
            self.best = {**entry, "monitor": key, "value": value}
            self.export.save(self.best_model_path)
            write_json(self.best_path, self.best)
            self.log(f"epoch {epoch + 1}: {key} {value:.4f}, saved {self.best_model_path}")


class InferenceExport:
    """Saves the inference copy of a training model; the copy is built once."""

    def __init__(self, model):
        self.model = model
        self.clone = None

    def save(self, path):
        if self.clone is None:
            self.clone = inference_model(self.model)
        else:
            copy_weights(self.model, self.clone)
        save_model(self.clone, path)


# === Training ===


def _precision_policy(enabled):
    if not enabled:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def train(config, out_dir, strategy="auto", verbose=1, log=print):
    """Trains (or resumes) the run `config` describes; outputs go to `out_dir`.

    Args:
        config: a `TrainConfig`.
        out_dir: output folder (see the module docstring). A folder holding an
            unfinished run with the same config resumes it.
        strategy: a `make_strategy` name or a `tf.distribute.Strategy`.
        verbose: `model.fit` verbosity (1: progress bar, 2: one line per epoch).
        log: where progress messages go.

    Returns:
        A dict: `steps` (optimizer steps taken in total), `epochs`,
        `history` (the entries of history.json), `best` (best.json or None),
        `model_path`.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        ValueError: a bad config, or `out_dir` holds a run with another config.
    """
    # First: a multi-worker strategy must exist before TensorFlow runs any op.
    if isinstance(strategy, str):
        strategy = make_strategy(strategy)
    config = resolve_config(config)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"`batch_size` {config.batch_size} (the global batch) does not split evenly "
            f"over {replicas} replicas."
        )

    # Workers other than the chief write into a temporary folder (the usual Keras
    # multi-worker pattern) and read the chief's backup to resume.
    out_dir = os.path.abspath(out_dir)
    chief = is_chief(strategy)
    write_dir = out_dir if chief else tempfile.mkdtemp(prefix="msattn-worker-")
    if chief:
        os.makedirs(out_dir, exist_ok=True)
        _remove_stale_temporaries(out_dir)
    backup_dir = os.path.join(out_dir, "backup")
    start_epoch = restored_epoch(backup_dir)
    # Only a backup ties a folder to its config: without one, start over.
    _check_or_write_config(config, out_dir, resuming=start_epoch > 0, write=chief)
    epochs = math.ceil(config.steps / config.steps_per_epoch)
    log(
        f"training {config.backbone} ({config.fusion or 'single scale'}, scales "
        f"{tuple(config.scales)}) on {config.dataset}: {config.steps} steps, global batch "
        f"{config.batch_size}, {describe(strategy)}, output {out_dir}"
    )

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(_precision_policy(config.mixed_precision))
    try:
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            model = build_model(config)
            if config.sync_batchnorm:
                # Also on one device, so that 1 and N replicas compute the same thing.
                synchronize_batchnorm(model)
            compile_model(model, config)

        # A resumed run draws a fresh data order instead of replaying the first epochs.
        data_seed = int(np.random.SeedSequence([config.seed, start_epoch]).generate_state(1)[0])
        train_data = train_dataset(config, seed=data_seed)
        val_data = val_dataset(config)

        export = InferenceExport(model)
        schedule = learning_rate_schedule(config)
        backup = ResumableBackup(backup_dir, write_dir=os.path.join(write_dir, "backup"), log=log)
        callbacks = [
            StopOnNonFiniteLoss(backup_dir, config.learning_rate),
            StopAtStep(config.steps),
            # Records before the backup: if a kill falls between them, the epoch is
            # redone and its records rewritten, never lost.
            EpochRecords(
                write_dir,
                schedule,
                export,
                best=read_json(best_path(out_dir)) if start_epoch > 0 else None,
                log=log,
            ),
            backup,
            keras.callbacks.TensorBoard(
                os.path.join(write_dir, "logs"), update_freq=min(100, config.steps_per_epoch)
            ),
        ]
        with warnings.catch_warnings(), multi_worker_fit(model):
            # Keras warns each time the (finite) validation data ends; the training
            # data repeats forever.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            model.fit(
                train_data,
                epochs=epochs,
                steps_per_epoch=config.steps_per_epoch,
                validation_data=val_data,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # tf.data shuffles; Keras would only warn
            )
        steps = int(model.optimizer.iterations.numpy())
        model_path = os.path.join(write_dir, "model.keras")
        export.save(model_path)
    finally:
        keras.config.set_dtype_policy(previous_policy)

    best = read_json(best_path(write_dir))
    history = read_json(os.path.join(write_dir, "history.json"), [])
    log(
        f"finished at step {steps} of {config.steps}"
        + (f"; best {best['monitor']} {best['value']:.4f} at epoch {best['epoch']}" if best else "")
        + f"; saved {model_path}"
    )
    if not chief:
        # Nothing this worker wrote is needed once the chief has its outputs.
        import shutil

        shutil.rmtree(write_dir, ignore_errors=True)
    return {
        "steps": steps,
        "epochs": epochs,
        "history": history,
        "best": best,
        "model_path": model_path,
        "restored_epoch": backup.restored_epoch,
    }


# === Recipes ===


def load_recipe(path):
    """Imports a recipe file; it must define `CONFIG` (a TrainConfig) and may define
    `VARIANTS` ({name: overrides}) and `DEFAULT_VARIANT`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe not found: {path}")
    name = "msattn_recipe_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "CONFIG", None), TrainConfig):
        raise ValueError(f"recipe {path} must define CONFIG = TrainConfig(...)")
    return module


def parse_overrides(pairs):
    """`["key=value", ...]` -> dict; values are Python literals where they parse, else strings."""
    keys = config_keys()
    overrides = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        key = key.strip()
        if not separator:
            raise ValueError(f"--set expects key=value, got {pair!r}.")
        if key not in keys:
            raise ValueError(f"unknown key {key!r} in --set; allowed keys: {', '.join(keys)}.")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return overrides


def recipe_config(recipe, variant=None, overrides=None):
    """The config of a loaded recipe, with a variant and `--set` overrides applied."""
    variants = getattr(recipe, "VARIANTS", {})
    variant = variant or getattr(recipe, "DEFAULT_VARIANT", None)
    config = recipe.CONFIG
    if variant is not None:
        if variant not in variants:
            allowed = ", ".join(variants) or "none (this recipe has no variants)"
            raise ValueError(f"unknown variant {variant!r}; allowed variants: {allowed}.")
        config = dataclasses.replace(config, **variants[variant])
    return dataclasses.replace(config, **(overrides or {}))


def run_recipe(path, variant=None, sets=(), out_dir=None, data_dir=None, strategy="auto",
               mixed_precision=False, verbose=None):  # fmt: skip
    """What `msattn train` does: load a recipe, apply variant and overrides, train."""
    overrides = parse_overrides(sets)
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if mixed_precision:
        overrides["mixed_precision"] = True
    config = recipe_config(load_recipe(path), variant, overrides)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    return train(config, out_dir, strategy=strategy, verbose=verbose)
