"""Choosing a `tf.distribute` strategy for training.

`make_strategy(name)` with `name` one of:

- `"auto"`: a TPU if a TPU cluster resolver finds one, `MirroredStrategy` over all
  GPUs if there are several, else TensorFlow's default strategy (one device,
  and Keras may still compile with XLA on a GPU).
- `"one_device"`: `OneDeviceStrategy` on the first GPU, or the CPU.
- `"mirrored"`: `MirroredStrategy` over every local GPU; on a machine without
  GPUs, over the logical CPUs (see below).
- `"multi_worker"`: `MultiWorkerMirroredStrategy`; needs `TF_CONFIG`. It must be
  created before TensorFlow runs any op in the process, so create it first.
- `"tpu"`: `TPUStrategy` on the TPU named by `TPU_NAME` (a Cloud TPU) or on the
  local TPU of a TPU VM.

Testing aid: with `MSATTN_LOGICAL_CPUS=N` in the environment, the CPU is split
into N logical devices before TensorFlow initializes, so that `"mirrored"` runs N
replicas on a machine without GPUs. It must be set before the process first
uses TensorFlow (set it in the environment of a fresh process).
"""

import contextlib
import glob
import importlib.util
import json
import os

import tensorflow as tf

from keras_msattn.keras_internals import multi_worker_trainer_fixes

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
LOGICAL_CPUS_ENV = "MSATTN_LOGICAL_CPUS"


def split_cpu(count):
    """Splits the first CPU into `count` logical devices (before TF initializes)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{LOGICAL_CPUS_ENV} must be a positive integer, got {count!r}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise ValueError(
            f"{LOGICAL_CPUS_ENV}={count}: TensorFlow was already initialized in this "
            "process; set the variable in the environment of a fresh process."
        ) from error


def _logical_cpus_from_env():
    value = os.environ.get(LOGICAL_CPUS_ENV)
    if not value:
        return
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{LOGICAL_CPUS_ENV} must be a positive integer, got {value!r}.") from None
    split_cpu(count)


def _tf_config():
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "strategy 'multi_worker' needs TF_CONFIG in the environment of every worker, "
            'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\'.'
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {text!r}") from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise ValueError(f"TF_CONFIG must have 'cluster' and 'task' entries, got {text!r}.")
    return config


def _tpu_resolver():
    """A connected TPU cluster resolver, or None when no TPU is found."""
    resolver_class = tf.distribute.cluster_resolver.TPUClusterResolver
    try:
        # A Cloud TPU named by TPU_NAME (or the GKE / TPU_CONFIG variables).
        resolver = resolver_class()
    except ValueError:
        # A TPU VM: the chips are local devices, driven through libtpu.
        has_chips = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
        if not has_chips or importlib.util.find_spec("libtpu") is None:
            return None
        resolver = resolver_class(tpu="local")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return resolver


def make_strategy(name="auto"):
    """Returns the `tf.distribute.Strategy` called `name` (see the module docstring).

    Raises:
        ValueError: an unknown name, "tpu" when no TPU is found, "multi_worker"
            without a usable TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}.")
    _logical_cpus_from_env()
    if name == "multi_worker":
        _tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name in ("tpu", "auto"):
        resolver = _tpu_resolver()
        if resolver is not None:
            return tf.distribute.TPUStrategy(resolver)
        if name == "tpu":
            raise ValueError(
                "strategy 'tpu': no TPU found (set TPU_NAME for a Cloud TPU, or run on a TPU VM)."
            )
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    # "mirrored": every GPU, or every logical CPU on a machine without GPUs.
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])


def is_chief(strategy):
    """Whether this process writes the run's outputs (every process but non-chief workers)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def describe(strategy):
    """A short description: the strategy class and its number of replicas."""
    name = type(strategy).__name__.lstrip("_")
    return f"{name} with {strategy.num_replicas_in_sync} replica(s)"


def _several_workers(strategy):
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    tasks = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(tasks.get("worker", [])) + len(tasks.get("chief", [])) > 1


@contextlib.contextmanager
def multi_worker_fit(model):
    """Lets Keras 3 `fit` and `evaluate` run on several workers; a no-op otherwise.

    Keras 3.15's trainer fails under `MultiWorkerMirroredStrategy` with more
    than one worker; `keras_internals.multi_worker_trainer_fixes` says how and
    patches it for the duration of the block, only on several workers (every
    process of such a run is dedicated to it).
    """
    strategy = model.distribute_strategy
    if not _several_workers(strategy):
        yield
        return
    with multi_worker_trainer_fixes(model, strategy):
        yield
