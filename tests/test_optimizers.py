import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from subprocess_script import run_script

from keras_msattn.optimizers import (
    MultiRateAdam,
    MultiRateAdamW,
    MultiRateSGD,
    PolyDecay,
    make_optimizer,
)


def tiny_model():
    """A functional model whose backbone is a nested keras.Model, plus a decoder."""
    backbone_inputs = keras.Input((6,))
    backbone = keras.Model(
        backbone_inputs, keras.layers.Dense(5, name="conv1")(backbone_inputs), name="backbone"
    )
    inputs = keras.Input((6,))
    features = backbone(inputs)
    outputs = keras.layers.Dense(3, name="decoder")(keras.layers.Dense(4, name="head")(features))
    model = keras.Model(inputs, outputs)
    model.backbone = backbone
    return model


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(8, 6)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")


def gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = keras.ops.mean(keras.ops.square(model(x) - y))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def backbone_mask(model):
    ids = {id(v) for v in model.backbone.trainable_variables}
    return [id(v) in ids for v in model.trainable_variables]


def test_poly_decay_values():
    schedule = PolyDecay(0.01, decay_steps=100)
    for step in (0, 1, 37, 99, 100, 250):
        expected = 0.01 * (1 - min(step, 100) / 100) ** 0.9
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12)
    schedule = PolyDecay(0.1, decay_steps=10, power=2.0, end_learning_rate=0.001)
    for step in (0, 5, 10, 20):
        expected = 0.099 * (1 - min(step, 10) / 10) ** 2 + 0.001
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_poly_decay_config_round_trip():
    schedule = PolyDecay(0.02, decay_steps=500, power=0.8, end_learning_rate=1e-5)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, PolyDecay)
    assert restored.get_config() == schedule.get_config()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial_learning_rate": 0.1, "decay_steps": 0}, "decay_steps"),
        ({"initial_learning_rate": 0.1, "decay_steps": 10.5}, "decay_steps"),
        ({"initial_learning_rate": -0.1, "decay_steps": 10}, "initial_learning_rate"),
        ({"initial_learning_rate": 0.1, "decay_steps": 10, "power": -1}, "power"),
    ],
)
def test_poly_decay_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolyDecay(**kwargs)


def test_sgd_decoder_update_is_ten_times_the_backbone_update_in_fit():
    model = tiny_model()
    x, y = data()
    lr = 0.05
    optimizer = make_optimizer(
        "sgd", lr, model.backbone.trainable_variables, momentum=0.0, weight_decay=0.0
    )
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    before = [v.numpy() for v in model.trainable_variables]
    grads = gradients(model, x, y)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    in_backbone = backbone_mask(model)
    assert in_backbone == [True, True, False, False, False, False]
    np.testing.assert_array_equal(optimizer.lr_multipliers, [1, 1, 10, 10, 10, 10])
    for variable, w0, g, member in zip(
        model.trainable_variables, before, grads, in_backbone, strict=True
    ):
        rate = np.float32(lr) * np.float32(1.0 if member else 10.0)
        np.testing.assert_allclose(variable.numpy(), w0 - rate * g, rtol=1e-6, atol=1e-7)
        # The ratio where the update is large against float32 rounding of the
        # weight (a tolerance in gradient alone depends on the initial weights).
        update = w0 - variable.numpy()
        significant = np.abs(update) > 20000 * np.spacing(np.abs(w0))
        assert significant.any()
        np.testing.assert_allclose(update[significant] / g[significant], rate, rtol=1e-4)


def test_adam_first_step_is_ten_times_larger_for_the_decoder():
    model = tiny_model()
    x, y = data(1)
    lr = 1e-3
    optimizer = make_optimizer("adam", lr, model.backbone.trainable_variables, weight_decay=0)
    before = [v.numpy() for v in model.trainable_variables]
    grads = gradients(model, x, y)
    optimizer.apply([tf.constant(g) for g in grads], model.trainable_variables)
    for variable, w0, g, member in zip(
        model.trainable_variables, before, grads, backbone_mask(model), strict=True
    ):
        # Adam's first step is lr * g / (|g| + eps'), eps' = eps / sqrt(1 - beta_2):
        # about lr per entry, exactly this formula.
        rate = lr * (1.0 if member else 10.0)
        eps = optimizer.epsilon / np.sqrt(1.0 - optimizer.beta_2)
        considered = np.abs(g) > 1e-4
        assert considered.any()
        step = np.abs(w0 - variable.numpy())[considered]
        expected = rate * np.abs(g[considered]) / (np.abs(g[considered]) + eps)
        np.testing.assert_allclose(step, expected, rtol=1e-3)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("traced", [False, True])
def test_adam_updates_are_kerass_to_the_bit(amsgrad, traced):
    # MultiRateAdam computes Adam's step sizes once per step for all variables;
    # Keras's Adam at each variable's own rate (base rate x multiplier, in
    # float32) must give the same bits, step after step, with a decaying rate.
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (5,)]
    start = [rng.normal(size=shape).astype("float32") for shape in shapes]
    steps = [[rng.normal(size=shape).astype("float32") for shape in shapes] for _ in range(4)]
    schedule = PolyDecay(0.01, decay_steps=5)
    ours = [keras.Variable(w) for w in start]
    optimizer = make_optimizer("adam", schedule, ours[:1], decoder_lr_multiplier=3.0,
                               weight_decay=0, amsgrad=amsgrad)  # fmt: skip
    references = [keras.Variable(w) for w in start]

    class Scaled(keras.optimizers.schedules.LearningRateSchedule):
        # Each variable's rate as MultiRateAdam forms it: the float32 base rate x multiplier.
        def __init__(self, multiplier):
            self.multiplier = multiplier

        def __call__(self, step):
            return keras.ops.cast(schedule(step), "float32") * self.multiplier

    reference_optimizers = [
        keras.optimizers.Adam(learning_rate=Scaled(m), amsgrad=amsgrad) for m in (1.0, 3.0, 3.0)
    ]

    def step(grads):
        optimizer.apply(grads, ours)
        for reference, g, variable in zip(reference_optimizers, grads, references, strict=True):
            reference.apply([g], [variable])

    if traced:
        step = tf.function(step)
    for grads in steps:
        step([tf.constant(g) for g in grads])
    for variable, reference in zip(ours, references, strict=True):
        np.testing.assert_array_equal(variable.numpy(), reference.numpy())
    assert not np.array_equal(ours[0].numpy(), start[0])


def standalone_variables():
    backbone = keras.Variable(np.array([1.0, -2.0, 0.5], "float32"), name="backbone_w")
    decoder = keras.Variable(np.array([0.3, 4.0, -1.0], "float32"), name="decoder_w")
    grads = [np.array([0.2, -0.1, 0.4], "float32"), np.array([-0.3, 0.05, 0.1], "float32")]
    return backbone, decoder, grads


def test_sgd_weight_decay_is_l2_through_momentum_at_each_rate():
    backbone, decoder, grads = standalone_variables()
    lr, wd, momentum = 0.1, 0.01, 0.9
    optimizer = make_optimizer("sgd", lr, [backbone], momentum=momentum, weight_decay=wd)
    variables = [backbone, decoder]
    w = [v.numpy().astype(np.float64) for v in variables]
    velocity = [np.zeros(3), np.zeros(3)]
    for _ in range(2):
        optimizer.apply([tf.constant(g) for g in grads], variables)
        for i, rate in enumerate((lr, 10 * lr)):
            velocity[i] = momentum * velocity[i] - rate * (grads[i] + wd * w[i])
            w[i] = w[i] + velocity[i]
    for variable, expected in zip(variables, w, strict=True):
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5)


def test_adamw_weight_decay_is_decoupled_at_each_rate():
    backbone, decoder, grads = standalone_variables()
    lr, wd = 0.01, 0.1
    optimizer = make_optimizer("adamw", lr, [backbone], weight_decay=wd)
    variables = [backbone, decoder]
    before = [v.numpy().astype(np.float64) for v in variables]
    optimizer.apply([tf.constant(g) for g in grads], variables)
    eps = optimizer.epsilon
    for variable, w0, g, rate in zip(variables, before, grads, (lr, 10 * lr), strict=True):
        # First Adam step: lr * sqrt(1 - b2) * g / (sqrt(1 - b2) * |g| + eps).
        adam = rate * np.sqrt(0.001) * g / (np.sqrt(0.001) * np.abs(g) + eps)
        np.testing.assert_allclose(variable.numpy(), w0 * (1 - rate * wd) - adam, rtol=1e-5)


def test_excluded_variables_get_no_weight_decay():
    backbone, decoder, _ = standalone_variables()
    optimizer = make_optimizer("sgd", 0.1, [backbone], momentum=0.0, weight_decay=0.5)
    optimizer.exclude_from_weight_decay(var_list=[decoder])
    before = decoder.numpy()
    zero = np.zeros(3, "float32")
    optimizer.apply([tf.constant(zero), tf.constant(zero)], [backbone, decoder])
    np.testing.assert_array_equal(decoder.numpy(), before)
    assert not np.allclose(backbone.numpy(), [1.0, -2.0, 0.5])


def test_unknown_backbone_refuses_to_train_until_set():
    model = tiny_model()
    x, y = data()
    optimizer = MultiRateSGD(learning_rate=0.1)
    grads = [tf.constant(g) for g in gradients(model, x, y)]
    with pytest.raises(ValueError, match="backbone variables"):
        optimizer.apply(grads, model.trainable_variables)
    optimizer.set_backbone_variables(model.backbone.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    np.testing.assert_array_equal(optimizer.lr_multipliers, [1, 1, 10, 10, 10, 10])


def test_backbone_of_another_model_raises():
    model, other = tiny_model(), tiny_model()
    optimizer = make_optimizer("sgd", 0.1, other.backbone.trainable_variables)
    with pytest.raises(ValueError, match="another model"):
        optimizer.build(model.trainable_variables)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_optimizer("rmsprop", 0.1, []), r"\['adam', 'adamw', 'sgd'\]"),
        (lambda: make_optimizer("sgd", 0.1, [], decoder_lr_multiplier=0), "decoder_lr_multiplier"),
        (lambda: make_optimizer("sgd", 0.1, tiny_model().backbone), "list of variables"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_config_round_trip(name):
    schedule = PolyDecay(0.01, decay_steps=1000)
    optimizer = make_optimizer(name, schedule, [], decoder_lr_multiplier=4.0, weight_decay=1e-4)
    expected_class = {"sgd": MultiRateSGD, "adam": MultiRateAdam, "adamw": MultiRateAdamW}[name]
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is expected_class
    assert restored.get_config() == optimizer.get_config()
    assert restored.get_config()["decoder_lr_multiplier"] == 4.0
    assert isinstance(restored._learning_rate, PolyDecay)


def test_save_and_load_keep_the_multipliers(tmp_path):
    model = tiny_model()
    x, y = data()
    optimizer = make_optimizer(
        "sgd", PolyDecay(0.05, decay_steps=10), model.backbone.trainable_variables
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is MultiRateSGD
    assert loaded.optimizer.get_config() == optimizer.get_config()
    np.testing.assert_array_equal(loaded.optimizer.lr_multipliers, [1, 1, 10, 10, 10, 10])
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 2


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras_msattn.optimizers import make_optimizer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6)).astype("float32")
    y = rng.normal(size=(4, 3)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        backbone_inputs = keras.Input((6,))
        backbone = keras.Model(
            backbone_inputs, keras.layers.Dense(5, name="conv1")(backbone_inputs), name="backbone"
        )
        inputs = keras.Input((6,))
        model = keras.Model(inputs, keras.layers.Dense(3, name="decoder")(backbone(inputs)))
        optimizer = make_optimizer(
            "sgd", 0.01, backbone.trainable_variables, momentum=0.0, weight_decay=0.0
        )
        model.compile(optimizer=optimizer, loss="mse")
    with tf.GradientTape() as tape:
        loss = keras.ops.mean(keras.ops.square(model(x) - y))
    grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    before = [v.numpy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    rates = [
        float(np.median((w0 - v.numpy()) / g))
        for v, w0, g in zip(model.trainable_variables, before, grads, strict=True)
    ]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "rates": rates}))
    """
)


def test_rates_under_mirrored_strategy():
    out = run_script(DISTRIBUTED_SCRIPT)
    assert out["replicas"] == 2
    np.testing.assert_allclose(out["rates"], [0.01, 0.01, 0.1, 0.1], rtol=1e-4)
