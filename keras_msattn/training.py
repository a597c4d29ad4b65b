"""Training: `train(config, out_dir)`, read top to bottom.

The config (`TrainConfig`, recipes, `--set`) lives in `keras_msattn.config`,
the callbacks in `keras_msattn.callbacks`; this module is the run itself.

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

import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_msattn import files
from keras_msattn.callbacks import (
    EpochRecords,
    InferenceExport,
    ResumableBackup,
    StopAtStep,
    StopOnNonFiniteLoss,
    TrainingDiverged,
    best_path,
    restored_epoch,
)
from keras_msattn.config import (
    TrainConfig,
    config_to_json,
    differing_keys,
    load_recipe,
    parse_overrides,
    recipe_config,
    resolve_config,
)
from keras_msattn.data import eval_pipeline, load_dataset, train_pipeline
from keras_msattn.distribute import describe, is_chief, make_strategy, multi_worker_fit
from keras_msattn.keras_internals import flatten_layers
from keras_msattn.losses import deep_supervision_losses
from keras_msattn.metrics import MeanIoU, PixelAccuracy
from keras_msattn.optimizers import PolyDecay, make_optimizer
from keras_msattn.run_lock import run_folder_lock
from keras_msattn.segmenter import MultiScaleSegmenter, output_names
from keras_msattn.summary import estimate_training_memory

# Kept importable from here: recipes and scripts import them with `train`.
__all__ = ["TrainConfig", "TrainingDiverged", "train", "run_recipe", "recipe_config"]


# === Data ===


def _load(config, split, shuffle_seed=None):
    # Training reads a new full permutation of the examples on every pass (the
    # shuffle buffer of `train_pipeline` only mixes neighbours). A folder dataset
    # without classes.txt takes the model's class count.
    options = {"num_classes": config.num_classes, **config.dataset_options}
    return load_dataset(
        config.dataset,
        split,
        data_dir=config.data_dir,
        skip_bad=config.skip_bad,
        shuffle=shuffle_seed is not None,
        seed=shuffle_seed,
        **options,
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
        rotation=config.rotation_range,
        shear=config.shear_range,
        crops_per_image=config.crops_per_image,
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
    dataset = _whole_image_batches(dataset, config).apply(
        tf.data.experimental.assert_cardinality(math.ceil(count / config.batch_size))
    )
    return _shard_by_data(_with_label_dict(dataset, output_names(config.scales)))


def _whole_image_batches(dataset, config):
    # Validation's view of whole images: shrunk to fit val_size, padded to it.
    if config.val_size is not None:
        dataset = dataset.map(
            lambda image, label: _shrink_to_fit(image, label, config.val_size),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return eval_pipeline(dataset, batch_size=config.batch_size, pad_to=config.val_size)


def batch_norm_batches(config):
    """What `batch_norm_images` re-estimates on: the first training images, whole
    (shrunk to fit `val_size` and padded to it, as validation sees them), not
    augmented, in batches of `batch_size`; a short last batch is left out."""
    count = config.batch_norm_images - config.batch_norm_images % config.batch_size
    dataset = _load(config, config.train_split).take(count)
    return _whole_image_batches(dataset, config).map(lambda images, labels: images)


# === Model ===


def build_model(config, deep_supervision=True):
    """The `MultiScaleSegmenter` a resolved config's `model` section describes."""
    return MultiScaleSegmenter(
        **config.model,
        deep_supervision=deep_supervision,
        loss_stride=config.loss_stride if deep_supervision else 1,
    )


def learning_rate_schedule(config):
    """The backbone's learning rate: poly decay from `learning_rate` to 0 at `steps`."""
    return PolyDecay(config.learning_rate, config.steps, power=config.poly_power)


def compile_model(model, config):
    """Deep-supervision losses, mIoU and pixel accuracy on "final", the optimizer."""
    names = output_names(config.scales)
    losses, loss_weights = deep_supervision_losses(
        names, config.loss_weights, hard_pixel_fraction=config.hard_pixel_fraction
    )
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
    _build_loss_and_metric_trackers(model, config)
    return model


def _build_loss_and_metric_trackers(model, config):
    # Keras creates the per-output loss means and the metrics' variables on their
    # first call. Without an explicit strategy that call falls inside the first
    # traced training step, and a tf.function that creates variables traces twice:
    # 12 of the quickstart's 25 s of tracing. One eager call on a tiny dummy batch
    # creates them now; the reset forgets its values.
    side = 4 * config.loss_stride
    labels = keras.ops.zeros((1, side, side), "int32")
    logits = keras.ops.zeros((1, 4, 4, config.num_classes))
    names = output_names(config.scales)
    y_true, y_pred = dict.fromkeys(names, labels), dict.fromkeys(names, logits)
    model.compute_loss(y=y_true, y_pred=y_pred)
    model.compute_metrics(None, y_true, y_pred)
    model.reset_metrics()


def synchronize_batchnorm(model):
    """Batch statistics over the global batch (Keras's TensorFlow-only option)."""
    for layer in flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def _check_or_write_config(config, out_dir, write):
    """Refuses a folder that holds another run's config.json; writes this one's."""
    path = os.path.join(out_dir, "config.json")
    stored = files.read_json(path, None)
    current = config_to_json(config)
    # Whatever else the folder holds (a backup or not): its outputs belong to that
    # config, and a run with another one would overwrite them.
    if stored is not None:
        # A config written before a field existed ran with that field's default.
        defaults = config_to_json(TrainConfig())
        stored = {**{key: defaults[key] for key in defaults if key != "model"}, **stored}
        # The data may move between restarts; everything else defines the run.
        differing = differing_keys(stored, current)
        if differing:
            raise ValueError(
                f"{out_dir} holds a run with a different config ({path} differs in: "
                f"{', '.join(differing)}). Use another --out, or delete {out_dir} to "
                "start over."
            )
    if write:
        files.write_json(path, current)


# === Training ===


def _log_memory_estimate(model, config, replicas, log):
    # Said before the first step: an out-of-memory kill gives no message of its own.
    crop = config.crop_size
    crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
    slots = 1 if config.optimizer == "sgd" else 2
    memory = estimate_training_memory(model, crop, optimizer_slots=slots)
    log(
        memory.format(config.batch_size // replicas)
        + ". If a device runs out of memory, lower batch_size or crop_size."
    )


def _precision_policy(enabled):
    if not enabled:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def train(config, out_dir, strategy="auto", verbose="auto", log=print):
    """Trains (or resumes) the run `config` describes; outputs go to `out_dir`.

    Args:
        config: a `TrainConfig`.
        out_dir: output folder (see the module docstring). A folder holding an
            unfinished run with the same config resumes it.
        strategy: a `make_strategy` name or a `tf.distribute.Strategy`.
        verbose: `model.fit` verbosity (1: progress bar, 2: one line per epoch);
            "auto": the bar on a terminal, one line per epoch into a log file
            (the bar would write a line per step there).
        log: where progress messages go.

    Returns:
        A dict: `steps` (optimizer steps taken in total), `epochs`,
        `history` (the entries of history.json), `best` (best.json or None),
        `model_path`.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        RunFolderBusy: another process is training into `out_dir`.
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
    out_dir = os.path.abspath(out_dir)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    log(
        f"training {config.model['backbone']} ({config.model['fusion'] or 'single scale'}, "
        f"scales {config.scales}) on {config.dataset}: {config.steps} steps, global batch "
        f"{config.batch_size}, {describe(strategy)}, output {out_dir}"
    )

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(_precision_policy(config.mixed_precision))
    try:
        # The model is built before anything is written: an argument it refuses
        # leaves no folder behind.
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            model = build_model(config)
            if config.sync_batchnorm:
                # Also on one device, so that 1 and N replicas compute the same thing.
                synchronize_batchnorm(model)
            compile_model(model, config)
        _log_memory_estimate(model, config, replicas, log)

        # One run per folder: the chief holds its lock until the last file is written.
        chief = is_chief(strategy)
        with run_folder_lock(out_dir, log=log) if chief else contextlib.nullcontext():
            return _fit(model, config, out_dir, strategy, chief, verbose, log)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _fit(model, config, out_dir, strategy, chief, verbose, log):
    # Workers other than the chief write into a temporary folder (the usual Keras
    # multi-worker pattern) and read the chief's backup to resume.
    write_dir = out_dir if chief else tempfile.mkdtemp(prefix="msattn-worker-")
    if chief:
        files.remove_stale_temporaries(out_dir)
    backup_dir = os.path.join(out_dir, "backup")
    start_epoch = restored_epoch(backup_dir)
    _check_or_write_config(config, out_dir, write=chief)
    epochs = math.ceil(config.steps / config.steps_per_epoch)
    # A resumed run reads its records first: a damaged one stops it before
    # anything is written.
    best = files.read_json(best_path(out_dir), None) if start_epoch > 0 else None
    if start_epoch > 0:
        files.read_json(os.path.join(out_dir, "history.json"), [])

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
            best=best,
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
    start = time.perf_counter()
    batches = export.save(
        model_path, batch_norm_batches(config) if config.batch_norm_images else None
    )
    if config.batch_norm_images:
        log(
            f"re-estimated the batch-norm statistics of model.keras on {batches} batches of "
            f"{config.batch_size} training images in {time.perf_counter() - start:.0f} s"
            if batches
            else "model.keras has no batch norm to re-estimate"
        )

    best = files.read_json(best_path(write_dir), None)
    history = files.read_json(os.path.join(write_dir, "history.json"), [])
    log(
        f"finished at step {steps} of {config.steps}"
        + (f"; best {best['monitor']} {best['value']:.4f} at epoch {best['epoch']}" if best else "")
        + f"; saved {model_path}"
    )
    if not chief:
        # Nothing this worker wrote is needed once the chief has its outputs.
        shutil.rmtree(write_dir, ignore_errors=True)
    return {
        "steps": steps,
        "epochs": epochs,
        "history": history,
        "best": best,
        "model_path": model_path,
        "restored_epoch": backup.restored_epoch,
    }


def run_recipe(path, variant=None, sets=(), out_dir=None, data_dir=None, strategy="auto",
               mixed_precision=False, verbose="auto"):  # fmt: skip
    """What `msattn train` does: load a recipe, apply variant and overrides, train."""
    overrides = parse_overrides(sets)
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if mixed_precision:
        overrides["mixed_precision"] = True
    config = recipe_config(load_recipe(path), variant, overrides)
    return train(config, out_dir, strategy=strategy, verbose=verbose)
