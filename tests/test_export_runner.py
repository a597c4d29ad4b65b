"""export/run_tflite.py: the device-side runner, with TensorFlow and Keras unimportable."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_msattn.export import tflite

RUNNER = os.path.join(os.path.dirname(__file__), os.pardir, "export", "run_tflite.py")
SIZE = 32

# Runs the runner in a fresh interpreter where TensorFlow, Keras and this
# package cannot be imported.
GUARDED = r"""
import runpy, sys

class Refuse:
    BLOCKED = ("tensorflow", "keras", "tf_keras", "keras_msattn", "jax", "torch")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"{name} must not be imported by the runner")
        return None

sys.meta_path.insert(0, Refuse())
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", GUARDED, os.path.abspath(RUNNER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def dominant_channel_model():
    """Logits = the RGB values: the class is the brightest channel (0 red, 1 green, 2 blue)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(3, 1, use_bias=False)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.eye(3, dtype="float32").reshape(1, 1, 3, 3)])
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runner_models")
    model = dominant_channel_model()
    calibration = np.random.default_rng(0).uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    paths = {}
    for name, quantization, output in (
        ("float", "none", "logits"),
        ("int8_full", "int8_full", "logits"),
        ("labels", "int8_full", "labels"),
    ):
        path = folder / f"{name}.tflite"
        path.write_bytes(tflite.convert(model, (SIZE, SIZE), quantization, output, calibration))
        paths[name] = path
    grey = keras.Input((SIZE, SIZE, 1))
    grey_model = keras.Model(grey, keras.layers.Conv2D(2, 1)(grey))
    paths["grey_input"] = folder / "grey_input.tflite"
    paths["grey_input"].write_bytes(convert_any(grey_model, (1, SIZE, SIZE, 1)))
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 1)(inputs))
    paths["classifier"] = folder / "classifier.tflite"
    paths["classifier"].write_bytes(tflite.convert(keras.Model(inputs, pooled), (SIZE, SIZE)))
    return paths


def convert_any(model, shape):
    function = tf.function(model, input_signature=[tf.TensorSpec(shape, tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    return converter.convert()


def halves_image(height=48, width=80):
    """Left half red, right half green, bottom quarter blue (a non-square image)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2, 0] = 220
    image[:, width // 2 :, 1] = 220
    image[3 * height // 4 :, :, :] = (0, 0, 220)
    return image


def expected_mask(image):
    return image.astype(np.int32).argmax(-1)


def check_outputs(out, stem, image):
    mask = Image.open(out / f"{stem}_mask.png")
    overlay = Image.open(out / f"{stem}_overlay.png")
    assert mask.mode == "P" and overlay.mode == "RGB"
    assert mask.size == overlay.size == (image.shape[1], image.shape[0])
    labels = np.asarray(mask)
    agreement = (labels == expected_mask(image)).mean()
    assert agreement > 0.95  # only resampling seams at the region borders differ
    return labels


@pytest.mark.parametrize("name", ["float", "int8_full", "labels"])
def test_png_and_jpeg_end_to_end(models, tmp_path, name):
    image = halves_image()
    Image.fromarray(image).save(tmp_path / "photo.png")
    Image.fromarray(image).save(tmp_path / "photo.jpg", quality=95)
    out = tmp_path / "out"
    result = run(
        models[name], tmp_path / "photo.png", tmp_path / "photo.jpg", "--out", out, "--threads", 1
    )
    assert result.returncode == 0, result.stderr
    assert "median latency" in result.stdout and " ms" in result.stdout
    check_outputs(out, "photo", image)
    check_outputs(out, "photo_1", image)  # same stem, second file
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_image_modes_are_converted(models, tmp_path):
    image = halves_image()
    Image.fromarray(image).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(image).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(image).convert("P").save(tmp_path / "palette.png")
    grey16 = np.tile(np.linspace(0, 65535, 80), (48, 1)).astype(np.uint16)  # dark -> bright
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    out = tmp_path / "out"
    files = ["rgba.png", "cmyk.jpg", "palette.png", "grey16.png"]
    result = run(models["float"], *(tmp_path / f for f in files), "--out", out)
    assert result.returncode == 0, result.stderr
    check_outputs(out, "rgba", image)
    check_outputs(out, "palette", image)
    assert np.asarray(Image.open(out / "cmyk_mask.png")).shape == (48, 80)
    # 16-bit grey is scaled to 8 bits, not clipped: grey (equal channels) is
    # class 0, which the overlay leaves untinted, so it shows the 8-bit ramp.
    assert (np.asarray(Image.open(out / "grey16_mask.png")) == 0).all()
    overlay = np.asarray(Image.open(out / "grey16_overlay.png")).astype(int)
    assert overlay[:, 0].max() <= 2 and overlay[:, -1].min() >= 253
    assert abs(overlay[:, 40].mean() - 255 * 40 / 79) < 3


def test_unreadable_and_missing_images(models, tmp_path):
    (tmp_path / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    result = run(models["float"], tmp_path / "broken.png", "--out", out)
    assert result.returncode == 2
    assert "cannot read image" in result.stderr and "broken.png" in result.stderr
    result = run(models["float"], tmp_path / "missing.jpg", "--out", out)
    assert result.returncode == 2 and "image file not found" in result.stderr
    assert not out.exists()  # nothing written when an input is bad


def test_models_with_unexpected_io(models, tmp_path):
    Image.fromarray(halves_image()).save(tmp_path / "photo.png")
    result = run(models["grey_input"], tmp_path / "photo.png", "--out", tmp_path / "out")
    assert result.returncode == 2 and "(1, H, W, 3)" in result.stderr
    result = run(models["classifier"], tmp_path / "photo.png", "--out", tmp_path / "out")
    assert result.returncode == 2 and "output of shape" in result.stderr
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 64)
    result = run(tmp_path / "junk.tflite", tmp_path / "photo.png", "--out", tmp_path / "out")
    assert result.returncode == 2 and "cannot load" in result.stderr


def test_runner_does_not_import_tensorflow():
    with open(RUNNER) as handle:
        source = handle.read()
    imports = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imports <= {
        "argparse",
        "os",
        "statistics",
        "sys",
        "tempfile",
        "time",
        "numpy",
        "PIL",
        "ai_edge_litert",
    }
