"""SavedModel export: TF Serving layout, uint8 signatures, loading without keras_msattn."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msattn import MultiScaleSegmenter
from keras_msattn.export import export_saved_model
from keras_msattn.losses import SegmentationCrossEntropy

SIZE = 64
NUM_CLASSES = 3

# Runs in a fresh interpreter where importing keras_msattn raises.
LOAD_WITHOUT_PACKAGE = r"""
import json, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "keras_msattn" or name.startswith("keras_msattn."):
            raise ImportError("keras_msattn is not available here")
        return None

sys.meta_path.insert(0, Refuse())
import numpy as np
import tensorflow as tf

loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
served = loaded.signatures["serving_default"](images=tf.constant(images))
logits = loaded.signatures["logits"](images=tf.constant(images))["logits"]
np.savez(sys.argv[3], labels=served["labels"].numpy(),
         probabilities=served["probabilities"].numpy(), logits=logits.numpy())
print(json.dumps({
    "signatures": sorted(loaded.signatures),
    "labels_dtype": served["labels"].dtype.name,
    "probabilities_dtype": served["probabilities"].dtype.name,
    "imported": sorted(m for m in sys.modules if m.startswith("keras_msattn")),
}))
"""


def uint8_images(count, size=(SIZE, SIZE), seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 4, 4, 3)).astype("float32")
    images = np.asarray(keras.ops.image.resize(coarse, size))
    return np.clip(np.round(images), 0, 255).astype("uint8")


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2",
        num_classes=NUM_CLASSES,
        backbone_width=0.35,
        input_shape=(SIZE, SIZE, 3),
        deep_supervision=True,
    )
    images = uint8_images(4).astype("float32")
    labels = (images[..., 0] > 128).astype("int32")
    model.compile(
        keras.optimizers.Adam(3e-3),
        {name: SegmentationCrossEntropy() for name in ("final", "scale_1.0", "scale_0.5")},
        run_eagerly=True,
    )
    targets = {name: labels for name in ("final", "scale_1.0", "scale_0.5")}
    model.fit(images, targets, batch_size=4, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("serving")
    validation = (uint8_images(3, seed=5), (uint8_images(3, seed=5)[..., 0] > 128).astype("int32"))
    report = export_saved_model(trained, out, model_name="segmenter", validation_data=validation)
    return out, report


def test_tf_serving_layout_and_report(exported):
    out, report = exported
    version = out / "segmenter" / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables").is_dir()
    assert sorted(os.listdir(out / "segmenter")) == ["1"]  # no temporary folder left
    stored = json.loads((version / "assets.extra" / "export_report.json").read_text())
    assert (version / "assets.extra" / "export_report.md").is_file()
    assert stored["labels_equal_argmax_logits"] is True
    assert stored["agreement"]["argmax_agreement"] == 1.0
    assert stored["agreement"]["max_abs_logit_diff"] < 1e-3
    assert stored["miou"]["artifact"] == pytest.approx(stored["miou"]["keras"])
    assert stored["size_bytes"] == report["size_bytes"] > 0
    serving = stored["signatures"]["serving_default"]
    assert serving["inputs"]["images"] == {"shape": [None, SIZE, SIZE, 3], "dtype": "uint8"}
    assert serving["outputs"]["labels"] == {"shape": [None, SIZE, SIZE], "dtype": "int32"}
    assert serving["outputs"]["probabilities"]["shape"] == [None, SIZE, SIZE, NUM_CLASSES]


def test_loads_and_serves_without_keras_msattn(exported, trained, tmp_path):
    out, _ = exported
    images = uint8_images(3, seed=9)
    np.save(tmp_path / "images.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_WITHOUT_PACKAGE,
            str(out / "segmenter" / "1"),
            str(tmp_path / "images.npy"),
            str(tmp_path / "outputs.npz"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    info = json.loads(completed.stdout.strip().splitlines()[-1])
    assert info["imported"] == []
    assert info["signatures"] == ["logits", "serving_default"]
    assert info["labels_dtype"] == "int32" and info["probabilities_dtype"] == "float32"
    outputs = np.load(tmp_path / "outputs.npz")
    assert outputs["labels"].shape == (3, SIZE, SIZE)
    assert outputs["probabilities"].shape == (3, SIZE, SIZE, NUM_CLASSES)
    np.testing.assert_allclose(outputs["probabilities"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(outputs["labels"], outputs["logits"].argmax(-1))
    # The "final" output of the deep-supervision model, on the same uint8 pixels.
    expected = np.asarray(trained(images.astype("float32"), training=False)["final"])
    np.testing.assert_allclose(outputs["logits"], expected, atol=1e-4)


def test_existing_version_is_kept_unless_overwrite(exported, trained):
    out, _ = exported
    with pytest.raises(ValueError, match="exists"):
        export_saved_model(trained, out, model_name="segmenter", version=1)
    with pytest.raises(ValueError, match="version"):
        export_saved_model(trained, out, model_name="segmenter", version=0)


def test_dynamic_size_model_serves_any_size(tmp_path):
    keras.utils.set_random_seed(1)
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2", num_classes=2, backbone_width=0.35, scales=(1.0,), fusion=None
    )
    report = export_saved_model(model, tmp_path, model_name="any_size", version=3)
    assert report["signatures"]["serving_default"]["inputs"]["images"]["shape"] == [
        None,
        None,
        None,
        3,
    ]
    loaded = tf.saved_model.load(str(tmp_path / "any_size" / "3"))
    for size in ((64, 64), (48, 80)):
        labels = loaded.signatures["serving_default"](images=tf.constant(uint8_images(2, size)))
        assert labels["labels"].shape == (2, *size)
    # No size given: the report says it compared at the model's smallest usable size.
    assert report["compared_at"] == [64, 64]
    assert report["samples"]["source"] == "synthetic images"


def test_dynamic_export_compares_at_the_requested_size(tmp_path):
    keras.utils.set_random_seed(1)
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2", num_classes=2, backbone_width=0.35, scales=(1.0,), fusion=None
    )
    validation = (uint8_images(2, (96, 96), seed=3), np.zeros((2, 96, 96), "int32"))
    report = export_saved_model(
        model, tmp_path, validation_data=validation, compare_size=(80, 48), version=1
    )
    assert report["input_size"] is None and report["compared_at"] == [80, 48]
    assert report["samples"] == {"count": 2, "source": "validation images"}
    assert report["agreement"]["argmax_agreement"] == 1.0
    stored = (tmp_path / model.name / "1" / "assets.extra" / "export_report.md").read_text()
    assert "compared_at" in stored and "80" in stored


def test_fixed_size_signature_rejects_another_size(exported):
    out, _ = exported
    loaded = tf.saved_model.load(str(out / "segmenter" / "1"))
    serve = loaded.signatures["serving_default"]
    assert serve(images=tf.constant(uint8_images(1)))["labels"].shape == (1, SIZE, SIZE)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{SIZE}, {SIZE}, 3"):
        serve(images=tf.constant(uint8_images(1, (SIZE + 32, SIZE))))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be"):
        loaded.signatures["logits"](images=tf.constant(uint8_images(1, (SIZE, SIZE // 2))))
