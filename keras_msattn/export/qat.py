"""Quantization-aware fine-tuning, natively in Keras 3.

tensorflow-model-optimization only accepts tf_keras (Keras 2) models, so the
QAT graph is built here instead: the float model is cloned layer by layer and

- every Conv2D / DepthwiseConv2D becomes a `QuantizedConv` that folds the
  BatchNormalization it feeds (frozen statistics, as the TFLite converter folds
  it) and fake-quantizes the folded kernel per output channel, symmetric, in
  [-127, 127]: the int8 weight scheme of TFLite;
- every float tensor that becomes an int8 tensor in TFLite (layer outputs,
  except where a ReLU follows and is fused; the model input) goes through an
  `ActivationFakeQuant`: per-tensor asymmetric 8-bit, its range calibrated on
  images first, then tracked by an exponential moving average while training.

BatchNormalization statistics stay frozen everywhere, also inside layers the
rewrite does not open (e.g. `PyramidPooling`). Fine-tuning uses the
straight-through gradients of `tf.quantization.fake_quant_*`. The fine-tuned
graph keeps its FakeQuant ops when it is converted, so the converter takes the
learned ranges; the few tensors without one (inside composite layers such as
`ScaleFusion`) are calibrated on representative images.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_msattn.keras_internals import (
    flatten_layers,
    has_functional_graph,
    inbound_nodes,
    producing_layer,
)

# ReLU variants TFLite fuses into the preceding conv / add / mul: no fake quant
# on their input, only on their output.
_FUSED_ACTIVATIONS = ("relu", "relu6")
# Fine-tuning this short runs eagerly (see `fine_tune`).
EAGER_STEPS = 10


@keras.saving.register_keras_serializable(package="keras_msattn")
class ActivationFakeQuant(keras.layers.Layer):
    """Per-tensor 8-bit fake quantization with a tracked range.

    Args:
        ema_decay: decay of the moving average of batch min/max in training.
    """

    def __init__(self, ema_decay=0.99, **kwargs):
        super().__init__(**kwargs)
        self.ema_decay = float(ema_decay)
        # "calibrate": widen the range to the running min/max (as the TFLite
        # calibrator); read when a function is traced.
        self.calibrating = False

    def build(self, input_shape):
        self.range_min = self.add_weight(
            name="range_min", shape=(), initializer="zeros", trainable=False
        )
        self.range_max = self.add_weight(
            name="range_max", shape=(), initializer="zeros", trainable=False
        )

    def call(self, inputs, training=False):
        # The range always holds 0 so that zero is exact (TFLite requirement).
        batch_min = tf.minimum(tf.reduce_min(inputs), 0.0)
        batch_max = tf.maximum(tf.reduce_max(inputs), 0.0)
        if self.calibrating:
            self.range_min.assign(tf.minimum(self.range_min, batch_min))
            self.range_max.assign(tf.maximum(self.range_max, batch_max))
            return inputs
        if training:
            decay = self.ema_decay
            self.range_min.assign(decay * self.range_min + (1.0 - decay) * batch_min)
            self.range_max.assign(decay * self.range_max + (1.0 - decay) * batch_max)
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, self.range_min, self.range_max, num_bits=8, narrow_range=False
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ema_decay": self.ema_decay}


@keras.saving.register_keras_serializable(package="keras_msattn")
class QuantizedConv(keras.layers.Layer):
    """Conv2D or DepthwiseConv2D (+ folded BatchNormalization), int8 weights.

    The BatchNormalization statistics are frozen (fine-tuning a few hundred
    steps with batch statistics would fight the folding); gamma and beta train.

    Args:
        depthwise: DepthwiseConv2D (True) or Conv2D (False).
        filters: output channels of a Conv2D; depth_multiplier of a depthwise.
        kernel_size, strides, padding, dilation_rate, activation, use_bias:
            as in the Keras conv layer.
        fold_batch_norm: a BatchNormalization follows and is folded in.
        epsilon: the BatchNormalization epsilon.
    """

    def __init__(
        self,
        depthwise,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        dilation_rate=(1, 1),
        activation=None,
        use_bias=True,
        fold_batch_norm=False,
        epsilon=1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.depthwise = bool(depthwise)
        self.filters = int(filters)
        self.kernel_size = tuple(kernel_size)
        self.strides = tuple(strides)
        self.padding = padding
        self.dilation_rate = tuple(dilation_rate)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.fold_batch_norm = bool(fold_batch_norm)
        self.epsilon = float(epsilon)

    @classmethod
    def from_layers(cls, conv, batch_norm=None):
        """A QuantizedConv carrying the weights of `conv` (and `batch_norm`)."""
        config = conv.get_config()
        if config.get("data_format", "channels_last") != "channels_last":
            raise ValueError(f"QAT needs channels_last convolutions; {conv.name!r} is not.")
        if config.get("groups", 1) != 1:
            raise ValueError(f"QAT does not handle grouped convolutions ({conv.name!r}).")
        depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
        layer = cls(
            depthwise=depthwise,
            filters=config["depth_multiplier"] if depthwise else config["filters"],
            kernel_size=config["kernel_size"],
            strides=config["strides"],
            padding=config["padding"],
            dilation_rate=config["dilation_rate"],
            activation=config["activation"],
            use_bias=config["use_bias"],
            fold_batch_norm=batch_norm is not None,
            epsilon=batch_norm.epsilon if batch_norm is not None else 1e-3,
            name=conv.name,
        )
        kernel = conv.kernel
        layer.build((None, None, None, kernel.shape[2]))
        layer.kernel.assign(kernel)
        if layer.use_bias:
            layer.bias.assign(conv.bias)
        if batch_norm is not None:
            channels = layer.out_channels
            one, zero = np.ones(channels, "float32"), np.zeros(channels, "float32")
            layer.gamma.assign(batch_norm.gamma if batch_norm.scale else one)
            layer.beta.assign(batch_norm.beta if batch_norm.center else zero)
            layer.moving_mean.assign(batch_norm.moving_mean)
            layer.moving_variance.assign(batch_norm.moving_variance)
        return layer

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        self.out_channels = in_channels * self.filters if self.depthwise else self.filters
        self.kernel = self.add_weight(
            name="kernel", shape=(*self.kernel_size, in_channels, self.filters)
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.out_channels,), initializer="zeros"
            )
        if self.fold_batch_norm:
            shape = (self.out_channels,)
            self.gamma = self.add_weight(name="gamma", shape=shape, initializer="ones")
            self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros")
            self.moving_mean = self.add_weight(
                name="moving_mean", shape=shape, initializer="zeros", trainable=False
            )
            self.moving_variance = self.add_weight(
                name="moving_variance", shape=shape, initializer="ones", trainable=False
            )

    def folded_kernel_and_bias(self):
        """The kernel and bias the TFLite converter will see (BN folded in)."""
        kernel = tf.convert_to_tensor(self.kernel)
        bias = tf.convert_to_tensor(self.bias) if self.use_bias else tf.zeros(self.out_channels)
        if self.fold_batch_norm:
            scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
            # Output channel c*multiplier+m of a depthwise kernel is [:, :, c, m].
            kernel = kernel * (tf.reshape(scale, kernel.shape[2:]) if self.depthwise else scale)
            bias = (bias - self.moving_mean) * scale + self.beta
        return kernel, bias

    def call(self, inputs):
        kernel, bias = self.folded_kernel_and_bias()
        kernel = _fake_quant_per_output_channel(kernel, self.depthwise)
        if self.depthwise:
            outputs = keras.ops.depthwise_conv(
                inputs, kernel, self.strides, self.padding, dilation_rate=self.dilation_rate
            )
        else:
            outputs = keras.ops.conv(
                inputs, kernel, self.strides, self.padding, dilation_rate=self.dilation_rate
            )
        return self.activation(outputs + bias)

    def compute_output_shape(self, input_shape):
        probe = keras.layers.Conv2D(
            1, self.kernel_size, self.strides, self.padding, dilation_rate=self.dilation_rate
        )
        shape = probe.compute_output_shape(input_shape)
        return (*shape[:-1], self.out_channels)

    def get_config(self):
        return {
            **super().get_config(),
            "depthwise": self.depthwise,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "fold_batch_norm": self.fold_batch_norm,
            "epsilon": self.epsilon,
        }


def _fake_quant_per_output_channel(kernel, depthwise):
    """Symmetric per-channel int8 fake quantization of a conv kernel.

    TFLite quantizes conv filters per output channel with scale max|w|/127;
    a depthwise kernel (kh, kw, in, multiplier) has in*multiplier output
    channels, so it is flattened to put them on the last axis.
    """
    shape = tf.shape(kernel)
    flat = tf.reshape(kernel, (shape[0], shape[1], 1, -1)) if depthwise else kernel
    bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(flat), axis=(0, 1, 2)), 1e-8))
    quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        flat, -bound, bound, num_bits=8, narrow_range=True
    )
    return tf.reshape(quantized, shape) if depthwise else quantized


def _graph_facts(model):
    """Consumers of every layer and the layers whose output leaves a model.

    Walks nested functional models too (the backbone is one).
    """
    consumers, model_outputs = {}, set()

    def visit(functional):
        for tensor in keras.tree.flatten(functional.outputs):
            model_outputs.add(id(producing_layer(tensor)))
        for layer in functional.layers:
            for node in inbound_nodes(layer):
                for tensor in node.input_tensors:
                    consumers.setdefault(id(producing_layer(tensor)), []).append(layer)
            if has_functional_graph(layer):
                visit(layer)

    visit(model)
    return consumers, model_outputs


def _is_fused_activation(layer):
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        return (
            config["max_value"] in (None, 6.0)
            and not config["negative_slope"]
            and not config["threshold"]
        )
    if isinstance(layer, keras.layers.Activation):
        return keras.activations.serialize(layer.activation) in _FUSED_ACTIVATIONS
    return False


def _is_plain_conv(layer):
    # Conv2D subclasses (e.g. Conv2DTranspose) compute something else.
    return type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _copy_model(model):
    """An independent copy, so that fine-tuning leaves `model` untouched."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def quantize_model(model, output_name=None, ema_decay=0.99):
    """The QAT graph of a float functional model (which it leaves untouched).

    Args:
        model: a functional Keras model (nested functional models are walked).
        output_name: for a model returning a dict, the key of the output to
            keep (e.g. "final"); the QAT model has that single output.
        ema_decay: decay of the activation range moving averages.

    Returns:
        A functional `keras.Model` with the same input and one output.
    """
    if not has_functional_graph(model):
        raise ValueError(
            f"QAT needs a functional Keras model; got {type(model).__name__} "
            "(a subclassed model without a functional graph)."
        )
    work = _copy_model(model)
    consumers, model_outputs = _graph_facts(work)

    folded = {}  # id(conv) -> the BatchNormalization folded into it
    for layer in _all_layers(work):
        users = consumers.get(id(layer), [])
        if (
            _is_plain_conv(layer)
            and keras.activations.serialize(layer.activation) == "linear"
            and len({id(u) for u in users}) == 1
            and isinstance(users[0], keras.layers.BatchNormalization)
            and users[0].axis in (-1, 3)
            and id(layer) not in model_outputs
            and all(
                producing_layer(t) is layer
                for node in inbound_nodes(users[0])
                for t in node.input_tensors
            )
        ):
            folded[id(layer)] = users[0]
    folded_bns = {id(bn) for bn in folded.values()}

    origin = {}  # id(clone) -> original layer

    def clone_function(layer):
        if _is_plain_conv(layer):
            new = QuantizedConv.from_layers(layer, folded.get(id(layer)))
        elif id(layer) in folded_bns:
            new = keras.layers.Identity(name=layer.name)
        else:
            new = layer
        origin[id(new)] = layer
        return new

    inputs = [
        keras.Input(batch_shape=t.shape, dtype="float32", name=t.name)
        for t in keras.tree.flatten(work.inputs)
    ]
    input_quant = {}
    calls = {}

    def needs_fake_quant(original):
        if isinstance(original, (keras.layers.Dropout, keras.layers.InputLayer)):
            return False
        if id(original) in folded:
            return False  # its BatchNormalization output is quantized instead
        if id(original) in model_outputs:
            return True
        users = consumers.get(id(original), [])
        fusing = (
            _is_plain_conv(original)
            or id(original) in folded_bns
            or isinstance(
                original, (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply)
            )
        )
        return not (fusing and users and all(_is_fused_activation(u) for u in users))

    def call_function(layer, *args, **kwargs):
        args = keras.tree.map_structure(lambda t: _quantize_input(t, inputs, input_quant), args)
        original = origin.get(id(layer), layer)
        if original is not layer and not isinstance(layer, keras.Model):
            kwargs = {}  # replacements take the tensor only (BN's mask=..., etc.)
        outputs = layer(*args, **kwargs)
        if isinstance(layer, keras.Model) or not needs_fake_quant(original):
            return outputs
        count = calls[id(original)] = calls.get(id(original), 0) + 1
        suffix = "" if count == 1 else f"_{count}"
        flat = keras.tree.flatten(outputs)
        quantized = [
            ActivationFakeQuant(
                ema_decay,
                name=f"{original.name}_quant{suffix}" + (f"_{i}" if len(flat) > 1 else ""),
            )(t)
            if keras.backend.standardize_dtype(t.dtype).startswith("float")
            else t
            for i, t in enumerate(flat)
        ]
        return keras.tree.pack_sequence_as(outputs, quantized)

    clone = keras.models.clone_model(
        work,
        input_tensors=inputs if len(inputs) > 1 else inputs[0],
        clone_function=clone_function,
        call_function=call_function,
        recursive=True,
    )
    outputs = clone.output
    if isinstance(outputs, dict):
        if output_name not in outputs:
            raise ValueError(
                f"The model returns a dict with keys {sorted(outputs)}; "
                f"output_name={output_name!r} is not one of them."
            )
        outputs = outputs[output_name]
    inputs = clone.inputs[0] if len(clone.inputs) == 1 else clone.inputs
    quantized = keras.Model(inputs, outputs, name=f"{model.name}_qat")
    _freeze_batch_norms(quantized)
    return quantized


def _quantize_input(tensor, inputs, cache):
    if not any(tensor is t for t in inputs):
        return tensor
    if id(tensor) not in cache:
        cache[id(tensor)] = ActivationFakeQuant(name=f"{tensor.name}_quant")(tensor)
    return cache[id(tensor)]


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if has_functional_graph(layer):
            yield from _all_layers(layer)


def fake_quant_layers(model):
    return [layer for layer in _all_layers(model) if isinstance(layer, ActivationFakeQuant)]


def calibrate(qat_model, images, batch_size=8):
    """Sets every activation range to the min/max over `images` (float model).

    Args:
        images: an iterable of image batches (B, H, W, 3), raw 0..255.
    """
    layers = fake_quant_layers(qat_model)
    for layer in layers:
        layer.calibrating = True
    try:
        run = tf.function(lambda x: qat_model(x, training=False), reduce_retracing=True)
        for batch in images:
            run(tf.cast(batch, tf.float32))
    finally:
        for layer in layers:
            layer.calibrating = False


def fine_tune(qat_model, dataset, steps, learning_rate=1e-5, ignore_label=255, verbose=False):
    """Fine-tunes the QAT graph with the training loss; returns the loss history.

    Args:
        dataset: repeated (images, labels) batches at the model's input size.
    """
    from keras_msattn.losses import SegmentationCrossEntropy

    if steps < 1:
        raise ValueError(f"`qat_steps` must be >= 1; got {steps}.")
    qat_model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=SegmentationCrossEntropy(ignore_label=ignore_label),
        jit_compile=False,
        # Tracing the training step of a large graph costs more than a handful
        # of eager steps.
        run_eagerly=steps <= EAGER_STEPS,
    )
    history = qat_model.fit(
        dataset, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=2 if verbose else 0
    )
    return [float(v) for v in history.history["loss"]]


def _freeze_batch_norms(model):
    # trainable=False makes a Keras 3 BatchNormalization use its moving
    # statistics even in training, like the folded ones.
    for layer in flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def quantization_aware_model(
    model,
    input_size,
    calibration_images,
    dataset,
    steps=300,
    learning_rate=1e-5,
    batch_size=8,
    ignore_label=255,
    verbose=False,
):
    """The fine-tuned QAT graph of `model`, ready for int8 conversion.

    Args:
        model: the float model (left untouched).
        input_size: (H, W) of the export; training batches are fitted to it.
        calibration_images: float32 (N, H, W, 3) images for the initial ranges.
        dataset: (image, label) training data (see `calibration.training_batches`).
        steps, learning_rate: the fine-tuning schedule (Adam).

    Returns:
        (qat_model, info) where info records the schedule and the loss.
    """
    from keras_msattn.export import calibration

    output_name = "final" if isinstance(model.output, dict) else None
    qat_model = quantize_model(model, output_name=output_name)
    batches = [
        calibration_images[i : i + batch_size]
        for i in range(0, len(calibration_images), batch_size)
    ]
    calibrate(qat_model, batches)
    training = calibration.training_batches(dataset, input_size, batch_size)
    losses = fine_tune(qat_model, training, steps, learning_rate, ignore_label, verbose)
    info = {
        "steps": int(steps),
        "learning_rate": float(learning_rate),
        "batch_size": int(batch_size),
        "loss": losses[-1],
        "num_fake_quants": len(fake_quant_layers(qat_model)),
    }
    return qat_model, info
