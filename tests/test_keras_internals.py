"""One test per private Keras / LiteRT API keras_msattn uses (keras_internals.py).

Each asserts what the shim is for, so a Keras or LiteRT upgrade that moves a
private name fails here, by name, before it fails inside a training run.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msattn import keras_internals
from keras_msattn.keras_internals import KerasChanged
from keras_msattn.layers import PyramidPooling


def test_flatten_layers_reaches_nested_models_and_sublayers():
    inner = keras.Sequential([keras.Input((8, 8, 4)), PyramidPooling(bins=(1, 2), channels=4)])
    outer = keras.Sequential([keras.Input((8, 8, 4)), inner, keras.layers.Conv2D(2, 1)])
    kinds = [type(layer).__name__ for layer in keras_internals.flatten_layers(outer)]
    # The nested model, its PyramidPooling, and the batch norms PyramidPooling holds.
    assert "Sequential" in kinds and "PyramidPooling" in kinds and "Conv2D" in kinds
    assert kinds.count("BatchNormalization") == 3  # two branches + the fuse
    assert outer not in keras_internals.flatten_layers(outer)


def test_resize_with_tensor_size_takes_a_size_known_only_in_the_graph():
    @tf.function(input_signature=[tf.TensorSpec((1, None, None, 1), tf.float32)])
    def half(images):
        size = tf.cast(tf.shape(images)[1:3] // 2, "int32")
        return keras_internals.resize_with_tensor_size(images, (size[0], size[1]), "bilinear")

    out = half(tf.ones((1, 10, 6, 1)))
    assert tuple(out.shape) == (1, 5, 3, 1)
    np.testing.assert_allclose(out.numpy(), 1.0)


def test_set_initial_epoch_moves_fit_on():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")

    class Jump(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            keras_internals.set_initial_epoch(self.model, 2)

    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))
    model.fit(np.zeros((2, 1)), np.zeros((2, 1)), epochs=4, verbose=0, callbacks=[Jump(), record])
    assert seen == [2, 3]


def test_backup_position_reads_the_epoch_and_batch_being_saved(tmp_path):
    positions = []

    class Backup(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            positions.append(keras_internals.backup_position(self))
            super()._save_model()

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(
        np.zeros((4, 1)), np.zeros((4, 1)), batch_size=2, epochs=2, verbose=0,
        callbacks=[Backup(str(tmp_path / "backup"))],
    )  # fmt: skip
    # Saved at the end of each epoch: the number of epochs finished.
    assert [epoch for epoch, _ in positions] == [1, 2]
    assert all(isinstance(batch, int) for _, batch in positions)


def test_multi_worker_trainer_fixes_patch_and_restore_the_trainer():
    trainer = __import__("keras.src.backend.tensorflow.trainer", fromlist=["x"])
    original = trainer.reduce_per_replica
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    strategy = tf.distribute.get_strategy()
    with keras_internals.multi_worker_trainer_fixes(model, strategy):
        assert trainer.reduce_per_replica is not original
        # Scalars are averaged without an axis (the fix for Keras's axis=0).
        assert float(trainer.reduce_per_replica(tf.constant(3.0), strategy, "auto")) == 3.0
        model.compile(optimizer="sgd", loss="mse")
        model.fit(np.zeros((2, 1)), np.zeros((2, 1)), epochs=1, verbose=0)
    assert trainer.reduce_per_replica is original
    assert "_maybe_symbolic_build" not in vars(model)


def test_interpreter_operators_list_every_node():
    from ai_edge_litert.interpreter import Interpreter

    @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
    def function(x):
        return tf.math.tanh(x * 2.0)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    interpreter = Interpreter(model_content=converter.convert())
    names = [op["op_name"] for op in keras_internals.interpreter_operators(interpreter)]
    assert names == ["MUL", "TANH"]


def test_a_missing_private_name_is_a_clear_error():
    with pytest.raises(KerasChanged, match=r"fit's initial epoch .*pyproject.toml"):
        keras_internals.set_initial_epoch(object(), 1)


def test_producing_layer_and_inbound_nodes_walk_a_functional_graph():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(2, name="dense")
    outputs = dense(inputs)
    model = keras.Model(inputs, outputs)
    assert keras_internals.producing_layer(outputs) is dense
    (node,) = keras_internals.inbound_nodes(dense)
    assert [t.shape for t in node.input_tensors] == [(None, 4)]
    assert keras_internals.has_functional_graph(model)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not keras_internals.has_functional_graph(Subclassed())


def test_disable_per_channel_quantization_gives_one_scale_per_tensor():
    from ai_edge_litert.interpreter import Interpreter

    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(8, 3)])

    def int8_weight_scales(per_channel):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [np.random.default_rng(i).normal(size=(1, 4, 4, 2)).astype("float32")] for i in range(4)
        )
        if not per_channel:
            keras_internals.disable_per_channel_quantization(converter)
        interpreter = Interpreter(model_content=converter.convert())
        kernels = [
            t for t in interpreter.get_tensor_details()
            if t["dtype"] == np.int8 and len(t["shape"]) == 4 and t["shape"][0] == 8
        ]  # fmt: skip
        return len(kernels[0]["quantization_parameters"]["scales"])

    assert int8_weight_scales(per_channel=True) == 8
    assert int8_weight_scales(per_channel=False) == 1
