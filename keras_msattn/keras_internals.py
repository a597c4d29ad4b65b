"""Every use of a private Keras, TFLite-converter or LiteRT API in keras_msattn, behind one door.

Each function here works around something the public API cannot do, names
the Keras version it was written against, and fails with `KerasChanged` (not
an AttributeError deep in a run) when the private name has moved.
tests/test_keras_internals.py exercises every one of them, so a Keras upgrade
that breaks a shim fails there first. pyproject.toml bounds keras to the
versions the suite has run on.

Written against Keras 3.13-3.15 and ai-edge-litert 2.x.
"""

import contextlib
import importlib


class KerasChanged(RuntimeError):
    """A private API keras_msattn relies on is gone or has changed."""


def _require(owner, name, what):
    if not hasattr(owner, name):
        raise KerasChanged(
            f"{what} ({type(owner).__name__}.{name}) is missing in this Keras version; "
            "keras_msattn supports the keras versions pinned in its pyproject.toml."
        )
    return getattr(owner, name)


# --- Layers -----------------------------------------------------------------


def flatten_layers(model):
    """Every layer inside `model`, nested models and layers' sublayers included.

    `model.layers` lists only the top level, and not the sublayers a custom
    layer holds as attributes (e.g. PyramidPooling's batch norms).
    """
    flatten = _require(model, "_flatten_layers", "the recursive layer walk")
    return list(flatten(include_self=False, recursive=True))


def producing_layer(tensor):
    """The layer whose call made a symbolic (functional-graph) tensor."""
    history = _require(tensor, "_keras_history", "a tensor's producing layer")
    return history[0]


def inbound_nodes(layer):
    """The calls of `layer` in functional graphs (each has `.input_tensors`)."""
    return _require(layer, "_inbound_nodes", "a layer's calls in a functional graph")


def has_functional_graph(layer):
    """Whether a nested model is functional (has a graph to walk), not subclassed."""
    return isinstance(layer, _keras().Model) and hasattr(layer, "_nodes_by_depth")


def _keras():
    import keras

    return keras


def resize_with_tensor_size(images, size, interpolation):
    """`keras.ops.image.resize` to a size held in tensors.

    The public op checks `size > 0` in Python, which a graph with unknown height
    and width (tf.function, SavedModel signatures) cannot evaluate; the backend
    function behind it takes tensor sizes.
    """
    backend_image = importlib.import_module("keras.src.backend").image
    return _require(backend_image, "resize", "the backend image resize")(
        images, size, interpolation=interpolation
    )


# --- Training state ---------------------------------------------------------


def set_initial_epoch(model, epoch):
    """Makes the running `fit` continue at `epoch` (what BackupAndRestore does on restore)."""
    _require(model, "_initial_epoch", "fit's initial epoch")
    model._initial_epoch = epoch


def backup_position(callback):
    """`(epoch, batch)` a `keras.callbacks.BackupAndRestore` is about to save."""
    epoch = _require(callback, "_current_epoch", "BackupAndRestore's epoch")
    batch = _require(callback, "_last_batch_seen", "BackupAndRestore's batch")
    return epoch, batch


@contextlib.contextmanager
def multi_worker_trainer_fixes(model, strategy):
    """Lets Keras 3 `fit` and `evaluate` run under a several-worker strategy.

    Keras 3.15's TensorFlow trainer fails under `MultiWorkerMirroredStrategy`
    with more than one worker (keras-team/keras#20585, tensorflow#72388):

    1. Before the first step it all-reduces the first batch, a nested
       structure, to learn its shapes; the collective ops reject it ("Attempt
       to convert a value (PerReplica...) to a Tensor"). Only shapes are
       needed: here the model is built from this worker's first replica's part.
    2. Each step's logs (scalars) are averaged over the workers with
       `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars ("Invalid
       reduction dimension 0 for input with 0 dimensions"); here they are
       averaged with `axis=None`.

    Both replace Keras internals for the duration of the block.
    """
    import tensorflow as tf

    keras_trainer = importlib.import_module("keras.src.backend.tensorflow.trainer")
    original_reduce = _require(keras_trainer, "reduce_per_replica", "the trainer's log reduction")
    _require(model, "_maybe_symbolic_build", "the trainer's first-batch build")
    symbolic_build = _require(model, "_symbolic_build", "the trainer's symbolic build")

    def local_part(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local_part, next(batches))
                break
        with strategy.scope():
            symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean"):
            return original_reduce(values, strategy, reduction)

        def mean(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.reduce("MEAN", value, axis=None)
            return value

        return tf.nest.map_structure(mean, values)

    model._maybe_symbolic_build = maybe_symbolic_build
    keras_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        keras_trainer.reduce_per_replica = original_reduce
        del model._maybe_symbolic_build


# --- LiteRT -----------------------------------------------------------------


def disable_per_channel_quantization(converter):
    """Per-tensor int8 weights from a `tf.lite.TFLiteConverter` (it has no public switch)."""
    _require(converter, "_experimental_disable_per_channel", "the converter's per-channel switch")
    converter._experimental_disable_per_channel = True


def interpreter_operators(interpreter):
    """`[{"op_name", "operand_types", ...}]` of every node of a LiteRT interpreter.

    The interpreter has no public per-node listing; its analyzer only prints.
    """
    details = _require(interpreter, "_get_ops_details", "the interpreter's operator listing")
    return details()
