"""Poly learning-rate schedule and optimizers that train the decoder faster.

The paper: poly learning rate `(1 - iter/max_iter)^0.9`, and the decoder
(every trainable variable outside `model.backbone`) at 10x the encoder's
learning rate. Keras 3 has no per-variable learning rate, so `MultiRateSGD`,
`MultiRateAdam` and `MultiRateAdamW` scale the learning rate passed to
`update_step` by a per-variable multiplier: 1 for backbone variables,
`decoder_lr_multiplier` for the rest. What every variable's update shares (the
rates, Adam's bias-corrected step size) is computed once per step: computed
per variable, it was 40% of the ops a training step traces.

Backbone variables are recognised by identity, not by name: a Keras variable's
`path` does not include the enclosing model's name (a nested backbone's kernel
is just "conv1/kernel"). Under `tf.distribute` the TensorFlow backend calls
`update_step` with the per-device `tf.Variable`, so the multiplier is looked up
through the optimizer's own variable index (`_get_variable_index`), which maps
both the Keras variable and its per-device components to one index.

The multipliers live in an optimizer variable (`lr_multipliers`, one entry per
trained variable), so they are saved with the optimizer state and restored by
`keras.models.load_model`. An optimizer rebuilt from its config alone (no
backbone variables, no saved state) refuses to train until
`set_backbone_variables` is called: silently training every variable at one
rate would be the wrong experiment.

Weight decay follows `torch.optim`, the framework of the paper, at each
variable's own learning rate `lr_v = lr * multiplier`:
- SGD and Adam: L2, `weight_decay * w` is added to the gradient (so for SGD it
  goes through momentum, as in Caffe/PyTorch DeepLab training);
- AdamW: decoupled, `w -= lr_v * weight_decay * w` before the Adam step.
Keras's own decoupled decay (which would use the base rate for every
variable) is switched off. `exclude_from_weight_decay(...)` works as in Keras
(call it before the first step).
"""

import numbers

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_msattn")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Poly schedule: `(lr0 - end) * (1 - min(step, N) / N) ** power + end`.

    Args:
        initial_learning_rate: learning rate at step 0.
        decay_steps: N, the step at which `end_learning_rate` is reached
            (the total number of training steps).
        power: exponent. Defaults to 0.9 (the paper).
        end_learning_rate: learning rate from step N on. Defaults to 0.
    """

    def __init__(self, initial_learning_rate, decay_steps, power=0.9, end_learning_rate=0.0):
        for name, value in (
            ("initial_learning_rate", initial_learning_rate),
            ("power", power),
            ("end_learning_rate", end_learning_rate),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
        if isinstance(decay_steps, bool) or not isinstance(decay_steps, numbers.Integral):
            raise ValueError(f"`decay_steps` must be an int > 0. Received: {decay_steps!r}")
        if decay_steps <= 0:
            raise ValueError(f"`decay_steps` must be an int > 0. Received: {decay_steps!r}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)
        self.power = float(power)
        self.end_learning_rate = float(end_learning_rate)

    def __call__(self, step):
        step = ops.minimum(ops.cast(step, "float32"), float(self.decay_steps))
        remaining = 1.0 - step / float(self.decay_steps)
        span = self.initial_learning_rate - self.end_learning_rate
        return span * ops.power(remaining, self.power) + self.end_learning_rate

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
        }


class MultiRateMixin:
    """Per-variable learning-rate multiplier and torch-style weight decay.

    Mixed in before a Keras optimizer class. Constructor arguments added:
    `decoder_lr_multiplier` (float > 0, in the config) and `backbone_variables`
    (a list of variables; not in the config).
    """

    # True: AdamW-style decay applied to the weights; False: L2 added to the gradient.
    decoupled_weight_decay = False

    def __init__(self, *args, decoder_lr_multiplier=10.0, backbone_variables=None, **kwargs):
        super().__init__(*args, **kwargs)
        if (
            isinstance(decoder_lr_multiplier, bool)
            or not isinstance(decoder_lr_multiplier, numbers.Real)
            or decoder_lr_multiplier <= 0
        ):
            raise ValueError(
                "`decoder_lr_multiplier` must be a number > 0. "
                f"Received: decoder_lr_multiplier={decoder_lr_multiplier!r}"
            )
        self.decoder_lr_multiplier = float(decoder_lr_multiplier)
        self._backbone_keys = None
        self._num_backbone_variables = 0
        self._multipliers_known = False
        self._step_values = None  # a dict while `apply` runs (see `_shared`)
        if backbone_variables is not None:
            self.set_backbone_variables(backbone_variables)

    def set_backbone_variables(self, backbone_variables):
        """Sets which variables train at the base rate (all others: the decoder rate).

        Call before the first training step, or after `load_model` when the
        saved optimizer state was lost. An empty list means "no backbone".
        """
        if isinstance(backbone_variables, keras.layers.Layer) or not isinstance(
            backbone_variables, (list, tuple)
        ):
            raise ValueError(
                "`backbone_variables` must be a list of variables, e.g. "
                f"`model.backbone.trainable_variables`. Received: {type(backbone_variables)}"
            )
        self._backbone_keys = frozenset(self._var_key(v) for v in backbone_variables)
        self._num_backbone_variables = len(backbone_variables)
        if self.built:
            self._lr_multipliers.assign(self._multiplier_values(self._trainable_variables))
            self._multipliers_known = True

    @property
    def lr_multipliers(self):
        """Multiplier per trained variable, in `build` order (numpy array)."""
        return np.asarray(self._lr_multipliers.numpy())

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # Keras may build the optimizer while tracing the first train step, where an
        # `assign` would not take effect: the values go in through the initializer.
        values = self._multiplier_values(variables)
        self._lr_multipliers = self.add_variable(
            shape=(len(variables),),
            initializer=lambda shape, dtype: ops.convert_to_tensor(values, dtype),
            dtype="float32",
            name="lr_multipliers",
        )
        self._multipliers_known = self._backbone_keys is not None
        decay = self.weight_decay is not None and self.weight_decay > 0
        self._decay_flags = [decay and self._use_weight_decay(v) for v in variables]

    def _multiplier_values(self, variables):
        if self._backbone_keys is None:
            return np.ones(len(variables), dtype="float32")
        in_backbone = [self._var_key(v) in self._backbone_keys for v in variables]
        if self._num_backbone_variables and not any(in_backbone):
            raise ValueError(
                "None of the `backbone_variables` is among the variables being "
                "optimized; were they taken from another model instance?"
            )
        values = [1.0 if member else self.decoder_lr_multiplier for member in in_backbone]
        return np.asarray(values, dtype="float32")

    def load_own_variables(self, store):
        super().load_own_variables(store)
        # The base class skips loading (with a warning) when the counts differ.
        if self.built and len(store.keys()) == len(self.variables):
            self._multipliers_known = True

    def _apply_weight_decay(self, variables):
        # Weight decay is applied per variable in `update_step`, at its own rate.
        return

    def apply(self, grads, trainable_variables=None):
        # What every variable's update shares (the rates, Adam's step sizes) is
        # computed once per step, not once per variable: per variable it made up
        # 40% of the training graph's ops, and tracing costs about 1 ms an op on a
        # 2-core CPU (docs/performance.md).
        self._step_values = {}
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._step_values = None  # no tensor of a traced step outlives it

    def _shared(self, name, learning_rate, variable, compute):
        """`compute()`, once per step for all the variables on `variable`'s device.

        Keyed by the step's `learning_rate` object (one per step and replica; the
        entry holds it, so its id cannot be reused) and the device. Outside
        `apply` nothing is kept."""
        if self._step_values is None:
            return compute()
        key = (name, id(learning_rate), getattr(variable, "device", None))
        if key not in self._step_values:
            self._step_values[key] = (learning_rate, compute())
        return self._step_values[key][1]

    def _learning_rates(self, learning_rate, variable):
        """Every variable's learning rate this step: the base rate times its multiplier."""
        return self._shared(
            "learning_rates",
            learning_rate,
            variable,
            lambda: ops.unstack(ops.cast(learning_rate, "float32") * self._lr_multipliers),
        )

    def update_step(self, gradient, variable, learning_rate):
        if not self._multipliers_known:
            raise ValueError(
                f"Optimizer '{self.name}' does not know the backbone variables. Pass "
                "`backbone_variables=model.backbone.trainable_variables` (or call "
                "`set_backbone_variables`) before training; `make_optimizer` does."
            )
        index = self._get_variable_index(variable)
        base_rate = learning_rate
        learning_rate = self._learning_rates(base_rate, variable)[index]
        if self._decay_flags[index]:
            decay = ops.cast(self.weight_decay, variable.dtype)
            if self.decoupled_weight_decay:
                step = ops.cast(learning_rate, variable.dtype) * decay
                self.assign_sub(variable, ops.multiply(variable, step))
            else:
                gradient = ops.add(
                    ops.cast(gradient, variable.dtype), ops.multiply(variable, decay)
                )
        self._update(gradient, variable, learning_rate, base_rate, index)

    def _update(self, gradient, variable, learning_rate, base_rate, index):
        """The optimizer's own step for one variable at its `learning_rate`."""
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["decoder_lr_multiplier"] = self.decoder_lr_multiplier
        return config


@keras.saving.register_keras_serializable(package="keras_msattn")
class MultiRateSGD(MultiRateMixin, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with a decoder learning-rate multiplier and L2 weight decay.

    Args:
        decoder_lr_multiplier: learning-rate factor for non-backbone variables.
        backbone_variables: variables trained at the base learning rate.
        **kwargs: `keras.optimizers.SGD` arguments (`learning_rate`,
            `momentum`, `weight_decay` (here L2 through momentum), ...).
    """


class MultiRateAdamMixin(MultiRateMixin):
    """Keras's Adam step, its bias-corrected step sizes computed once per step.

    `keras.optimizers.Adam.update_step` computes `lr * sqrt(1 - beta_2 ** t) /
    (1 - beta_1 ** t)` for every variable; here it is one vector op per step,
    element by element the same float32 arithmetic, so the updates are Keras's
    to the bit (tests/test_optimizers.py compares them).
    """

    def _update(self, gradient, variable, learning_rate, base_rate, index):
        def step_sizes():
            step = ops.cast(self.iterations + 1, "float32")
            beta_1_power = ops.power(ops.cast(self.beta_1, "float32"), step)
            beta_2_power = ops.power(ops.cast(self.beta_2, "float32"), step)
            rates = ops.cast(base_rate, "float32") * self._lr_multipliers
            return ops.unstack(rates * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power))

        step_size = self._shared("adam_step_sizes", base_rate, variable, step_sizes)[index]
        step_size = ops.cast(step_size, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        m = self._momentums[index]
        v = self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        if self.amsgrad:
            v_hat = self._velocity_hats[index]
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        self.assign_sub(
            variable, ops.divide(ops.multiply(m, step_size), ops.add(ops.sqrt(v), self.epsilon))
        )


@keras.saving.register_keras_serializable(package="keras_msattn")
class MultiRateAdam(MultiRateAdamMixin, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with a decoder learning-rate multiplier and L2 weight decay."""


@keras.saving.register_keras_serializable(package="keras_msattn")
class MultiRateAdamW(MultiRateAdamMixin, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with a decoder learning-rate multiplier (decoupled decay)."""

    decoupled_weight_decay = True


_OPTIMIZERS = {"sgd": MultiRateSGD, "adam": MultiRateAdam, "adamw": MultiRateAdamW}


def make_optimizer(
    name,
    learning_rate,
    backbone_variables,
    decoder_lr_multiplier=10.0,
    momentum=0.9,
    weight_decay=1e-4,
    **kwargs,
):
    """Builds the training optimizer.

    Args:
        name: "sgd", "adam" or "adamw".
        learning_rate: float or a `LearningRateSchedule` (e.g. `PolyDecay`):
            the backbone's rate; the decoder trains at `decoder_lr_multiplier`
            times it.
        backbone_variables: list of variables trained at the base rate,
            normally `model.backbone.trainable_variables`.
        decoder_lr_multiplier: defaults to 10 (the paper).
        momentum: SGD momentum (ignored by Adam and AdamW, which use `beta_1`).
        weight_decay: L2 for "sgd" and "adam", decoupled for "adamw"; 0 or
            None disables it.
        **kwargs: passed to the Keras optimizer (e.g. `nesterov`, `beta_1`,
            `clipnorm`).

    Returns:
        A `MultiRateSGD`, `MultiRateAdam` or `MultiRateAdamW`.
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"Unknown optimizer name={name!r}; expected one of {sorted(_OPTIMIZERS)}.")
    if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
        learning_rate = float(learning_rate)
    if name == "sgd":
        kwargs["momentum"] = float(momentum)
    return _OPTIMIZERS[name](
        learning_rate=learning_rate,
        weight_decay=float(weight_decay or 0.0),
        decoder_lr_multiplier=decoder_lr_multiplier,
        backbone_variables=backbone_variables,
        **kwargs,
    )
