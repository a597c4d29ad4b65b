"""`make_strategy`: clear errors for strategies that cannot be made here."""

import pytest
import tensorflow as tf

from keras_msattn.distribute import is_chief, make_strategy


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match="Unknown strategy 'gpu'; allowed: auto, one_device"):
        make_strategy("gpu")


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG in the environment of every worker"):
        make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"task": {"type": "worker", "index": 0}}')
    with pytest.raises(ValueError, match="must have 'cluster' and 'task' entries"):
        make_strategy("multi_worker")


def test_tpu_without_a_tpu_is_an_error(monkeypatch):
    for name in ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="strategy 'tpu': no TPU found"):
        make_strategy("tpu")


def test_bad_logical_cpu_count_is_an_error(monkeypatch):
    monkeypatch.setenv("MSATTN_LOGICAL_CPUS", "two")
    with pytest.raises(ValueError, match="MSATTN_LOGICAL_CPUS must be a positive integer"):
        make_strategy("one_device")


def test_one_device_and_auto_on_a_cpu_machine(monkeypatch):
    monkeypatch.delenv("MSATTN_LOGICAL_CPUS", raising=False)
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU machine picks other strategies")
    one = make_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and one.num_replicas_in_sync == 1
    auto = make_strategy("auto")
    assert auto is tf.distribute.get_strategy() and is_chief(auto)
