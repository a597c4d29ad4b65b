import os

import numpy as np
import pytest
from PIL import Image

from keras_msattn import visualization
from keras_msattn.data.images import VOC_COLORMAP

PANEL = int(visualization.PANEL_INCHES * visualization.DPI)  # pixels per figure panel
VIRIDIS_LOW, VIRIDIS_HIGH = (68, 1, 84), (253, 231, 37)


def rng_image(height=45, width=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


def read_png(path):
    assert os.path.getsize(path) > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def count_color(pixels, color, tolerance=6):
    return int((np.abs(pixels.astype(int) - color).max(axis=-1) <= tolerance).sum())


def test_palette_is_the_voc_palette_with_white_ignore():
    colors = visualization.palette()
    assert colors.shape == (256, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors[:255], VOC_COLORMAP[:255])
    assert tuple(colors[0]) == (0, 0, 0) and tuple(colors[1]) == (128, 0, 0)
    assert tuple(colors[255]) == visualization.IGNORE_COLOR
    assert len(np.unique(colors, axis=0)) == 256
    np.testing.assert_array_equal(visualization.palette(21), colors[:21])
    with pytest.raises(ValueError, match="num_colors"):
        visualization.palette(300)


def test_colorize_and_overlay():
    labels = np.array([[0, 1, 2], [15, 255, 1]])
    colors = visualization.colorize(labels)
    assert colors.shape == (2, 3, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors[1, 0], VOC_COLORMAP[15])
    np.testing.assert_array_equal(colors[1, 1], (255, 255, 255))

    image = rng_image(2, 3)
    np.testing.assert_array_equal(visualization.overlay(image, labels, alpha=0.0), image)
    full = visualization.overlay(image, labels, alpha=1.0)
    np.testing.assert_array_equal(full[0], colors[0])
    np.testing.assert_array_equal(full[1, 1], image[1, 1])  # ignore pixels keep the image
    half = visualization.overlay(image, labels, alpha=0.5)
    expected = np.rint(0.5 * image[0, 1].astype(float) + 0.5 * colors[0, 1])
    np.testing.assert_array_equal(half[0, 1], expected)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: visualization.colorize(np.zeros((2, 2, 2), int)), "labels"),
        (lambda: visualization.colorize(np.array([[-1, 0]])), r"\[0, 255\]"),
        (lambda: visualization.colorize(np.array([[256, 0]])), r"\[0, 255\]"),
        (lambda: visualization.overlay(rng_image(4, 4), np.zeros((4, 5), int)), "does not match"),
        (lambda: visualization.overlay(rng_image(4, 4), np.zeros((4, 4), int), 2.0), "alpha"),
        (lambda: visualization.save_image(np.zeros((4, 4), "float32"), "x.png"), "uint8"),
    ],
)
def test_bad_inputs_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_plot_predictions_writes_a_readable_png(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng_image(seed=i) for i in range(2)]
    labels = [np.pad(rng.integers(0, 4, (41, 56)), 2, constant_values=255) for _ in range(2)]
    predictions = [rng.integers(0, 4, (45, 60)) for _ in range(2)]
    path = tmp_path / "figures" / "predictions.png"
    names = ["background", "cat", "dog", "person"]
    assert visualization.plot_predictions(images, labels, predictions, names, path) == str(path)
    pixels = read_png(path)
    assert pixels.shape == (2 * PANEL, 3 * PANEL, 3)
    # The class colours appear (in the maps and the key).
    for c in range(4):
        assert count_color(pixels, VOC_COLORMAP[c], tolerance=0) > 100
    assert os.listdir(path.parent) == ["predictions.png"]

    without_labels = visualization.plot_predictions(
        images[:1], None, predictions[:1], None, tmp_path / "p.png"
    )
    assert read_png(without_labels).shape == (PANEL, 2 * PANEL, 3)
    with pytest.raises(ValueError, match="same length"):
        visualization.plot_predictions(images, labels[:1], predictions, names, tmp_path / "x.png")
    with pytest.raises(ValueError, match="class_names"):
        visualization.plot_predictions(images, labels, predictions, ["a"], tmp_path / "x.png")


def test_scale_attention_colour_bar_is_fixed_to_zero_one(tmp_path):
    image = rng_image(48, 64)
    one_hot = np.zeros((12, 16, 2), np.float32)
    one_hot[..., 0] = 1.0
    path = visualization.plot_scale_attention(image, one_hot, (1.0, 0.5), tmp_path / "a.png")
    pixels = read_png(path)
    assert pixels.shape == (PANEL, 3 * PANEL, 3)
    # One panel is all weight 1 (bright), the other all weight 0 (dark).
    assert count_color(pixels, VIRIDIS_HIGH) > 10_000 and count_color(pixels, VIRIDIS_LOW) > 10_000
    even = np.full((1, 12, 16, 2), 0.5, np.float32)
    pixels = read_png(
        visualization.plot_scale_attention(image, even, (1.0, 0.5), tmp_path / "b.png")
    )
    assert count_color(pixels, VIRIDIS_HIGH) < 3_000 and count_color(pixels, VIRIDIS_LOW) < 3_000
    with pytest.raises(ValueError, match="S = 3 scales"):
        visualization.plot_scale_attention(image, one_hot, (1.0, 0.5, 0.25), tmp_path / "c.png")


def test_plot_recalibration_chooses_classes(tmp_path):
    image = rng_image(48, 64)
    recalibration = np.random.default_rng(2).uniform(0, 1, (12, 16, 8)).astype(np.float32)
    predictions = np.full((48, 64), 4)
    predictions[:10] = 2
    path = visualization.plot_recalibration(
        image, recalibration, None, tmp_path / "r.png", predictions=predictions
    )
    assert read_png(path).shape == (PANEL, 3 * PANEL, 3)  # image + the 2 predicted classes
    path = visualization.plot_recalibration(image, recalibration, None, tmp_path / "top.png")
    assert read_png(path).shape == (2 * PANEL, 4 * PANEL, 3)  # image + 6 classes, 4 a row
    additive = recalibration - 0.5
    path = visualization.plot_recalibration(
        image, additive, None, tmp_path / "add.png", classes=[1]
    )
    assert read_png(path).shape == (PANEL, 2 * PANEL, 3)
    with pytest.raises(ValueError, match="classes"):
        visualization.plot_recalibration(
            image, recalibration, None, tmp_path / "x.png", classes=[8]
        )
    with pytest.raises(ValueError, match="class_names"):
        visualization.plot_recalibration(image, recalibration, ["a"], tmp_path / "x.png")
