import numpy as np
import pytest
import tensorflow as tf

from keras_msattn.data.augment import (
    IMAGENET_MEAN,
    _pad_bottom_right,
    augment,
    eval_pipeline,
    rotate_and_shear,
    scale_pad_crop,
    scaled_size,
    train_pipeline,
)

MEAN = np.float32(IMAGENET_MEAN)


def _dataset(pairs):
    def gen():
        yield from pairs

    return tf.data.Dataset.from_generator(
        gen,
        output_signature=(
            tf.TensorSpec((None, None, 3), tf.uint8),
            tf.TensorSpec((None, None), tf.int32),
        ),
    )


def _column_pair(height=30, width=60):
    """Image and label that both encode the column: image = 4 * col, label = col // 3."""
    cols = np.arange(width)
    image = np.broadcast_to((4 * cols)[None, :, None], (height, width, 3)).astype(np.uint8)
    label = np.broadcast_to((cols // 3)[None, :], (height, width)).astype(np.int32)
    return image, label


def test_train_pipeline_shapes_and_dtypes():
    rng = np.random.default_rng(0)
    pairs = [
        (
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            rng.integers(0, 5, (h, w)).astype(np.int32),
        )
        for h, w in [(20, 30), (41, 17), (50, 50)]
    ]
    ds = train_pipeline(_dataset(pairs), crop_size=(24, 32), batch_size=4, seed=1)
    images, labels = next(iter(ds))
    assert images.shape == (4, 24, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (4, 24, 32) and labels.dtype == tf.int32
    assert ds.element_spec[0].shape == (4, 24, 32, 3)
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 255.0
    assert set(np.unique(labels.numpy())) <= {0, 1, 2, 3, 4, 255}


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_padding_uses_mean_and_ignore(scale):
    image = np.full((10, 12, 3), 7, np.uint8)
    label = np.full((10, 12), 3, np.int32)
    ds = train_pipeline(
        _dataset([(image, label)]),
        crop_size=20,
        batch_size=1,
        scale_range=(scale, scale),
        flip=False,
        seed=0,
    )
    images, labels = (t.numpy()[0] for t in next(iter(ds)))
    h, w = round(10 * scale), round(12 * scale)
    np.testing.assert_allclose(images[:h, :w], 7.0, atol=1e-4)
    assert (labels[:h, :w] == 3).all()
    padded = np.ones((20, 20), bool)
    padded[:h, :w] = False
    assert (labels[padded] == 255).all()
    # Exactly the mean colour, per channel.
    np.testing.assert_array_equal(images[padded], np.broadcast_to(MEAN, (padded.sum(), 3)))


def test_flip_and_scale_move_image_and_label_together():
    image, label = _column_pair()
    ds = train_pipeline(
        _dataset([(image, label)]),
        crop_size=(16, 40),
        batch_size=16,
        scale_range=(1.0, 1.0),
        seed=3,
        shuffle_buffer=0,
    )
    images, labels = (t.numpy() for t in next(iter(ds)))
    directions = set()
    for out_image, out_label in zip(images, labels, strict=True):
        # At scale 1 samples fall on pixel centres: the image code matches the label.
        np.testing.assert_array_equal(np.round(out_image[..., 0]) // 12, out_label)
        directions.add(np.sign(out_label[0, -1] - out_label[0, 0]))
    assert directions == {-1, 1}  # both flipped and unflipped crops occurred

    ds = train_pipeline(
        _dataset([(image, label)]), crop_size=(16, 40), batch_size=16, seed=4, shuffle_buffer=0
    )
    images, labels = (t.numpy() for t in next(iter(ds)))
    inside = labels != 255
    # Random scales: bilinear image and nearest label still agree to within one column.
    assert np.abs(images[..., 0][inside] / 12.0 - labels[inside]).max() < 1.0


def _reference(image, label, scale, offset, crop):
    """The textbook order: resize the whole image, pad, then crop."""
    size = scaled_size(tf.shape(label), scale)
    resized = tf.image.resize(tf.cast(image, tf.float32), size, "bilinear")
    resized_label = tf.image.resize(label[..., None], size, "nearest")[..., 0]
    resized, resized_label = _pad_bottom_right(
        resized, resized_label, crop[0], crop[1], IMAGENET_MEAN, 255
    )
    y, x = offset
    return resized[y : y + crop[0], x : x + crop[1]], resized_label[
        y : y + crop[0], x : x + crop[1]
    ]


def test_scale_pad_crop_matches_resize_then_pad_then_crop():
    rng = np.random.default_rng(0)
    for trial in range(24):
        height, width = (int(v) for v in rng.integers(15, 70, 2))
        image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        label = rng.integers(0, 21, (height, width)).astype(np.int32)
        scale = [0.5, 1.0, 2.0][trial % 3] if trial < 12 else float(rng.uniform(0.5, 2.0))
        crop = tuple(int(c) for c in rng.integers(8, 90, 2))
        size = scaled_size(tf.shape(label), scale).numpy()
        offset = tuple(
            int(rng.integers(0, max(s - c, 0) + 1)) for s, c in zip(size, crop, strict=True)
        )
        got_image, got_label = scale_pad_crop(image, label, scale, offset, crop)
        want_image, want_label = _reference(image, label, scale, offset, crop)
        np.testing.assert_allclose(got_image, want_image, atol=0.01)
        agreement = (got_label.numpy() == want_label.numpy()).mean()
        # Scales 0.5/1/2 sample exactly; others may differ at float rounding ties.
        assert agreement == 1.0 if trial < 12 else agreement > 0.97, (trial, agreement)


def test_seed_makes_it_reproducible():
    rng = np.random.default_rng(0)
    pairs = [
        (rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), np.zeros((30, 40), np.int32))
        for _ in range(6)
    ]

    def first_batch(seed):
        ds = train_pipeline(_dataset(pairs), crop_size=24, batch_size=6, seed=seed)
        return next(iter(ds))[0].numpy()

    np.testing.assert_array_equal(first_batch(5), first_batch(5))
    assert not np.array_equal(first_batch(5), first_batch(6))


def test_bad_arguments():
    ds = _dataset([])
    with pytest.raises(ValueError, match="crop_size"):
        train_pipeline(ds, crop_size=(0, 10), batch_size=2)
    with pytest.raises(ValueError, match="scale_range"):
        train_pipeline(ds, crop_size=10, batch_size=2, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="batch_size"):
        eval_pipeline(ds, batch_size=0)
    with pytest.raises(ValueError, match="rotation"):
        train_pipeline(ds, crop_size=10, batch_size=2, rotation=200.0)
    with pytest.raises(ValueError, match="shear"):
        train_pipeline(ds, crop_size=10, batch_size=2, shear=1.0)
    with pytest.raises(ValueError, match="crops_per_image"):
        train_pipeline(ds, crop_size=10, batch_size=2, crops_per_image=0)


def test_crops_per_image_crops_each_image_that_many_times_differently():
    # Image i is filled with value 10 * i and labelled i everywhere: a crop says which
    # image it came from, and its scale and position make the copies differ.
    pairs = [
        (np.full((40, 40, 3), 10 * i, np.uint8), np.full((40, 40), i, np.int32)) for i in range(4)
    ]
    for i in range(4):  # a gradient tells crops of one image apart
        pairs[i][0][..., 1] = np.arange(40, dtype=np.uint8)[None, :]
    ds = train_pipeline(
        _dataset(pairs),
        crop_size=16,
        batch_size=1,
        scale_range=(0.5, 1.5),
        seed=3,
        repeat=False,
        flip=False,
        crops_per_image=3,
    )
    crops = [(int(label.numpy().max()), image.numpy()[0]) for image, label in ds]
    sources = [source for source, _ in crops]
    assert sorted(sources) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # The shuffle buffer spreads the copies: not every image's three in a row.
    assert sources != sorted(sources)
    for source in range(4):
        copies = [image for s, image in crops if s == source]
        assert not np.array_equal(copies[0], copies[1]) or not np.array_equal(copies[1], copies[2])


def test_shear_moves_rows_by_their_distance_from_the_centre():
    # Row-coded label (label = row), one marked column: a shear keeps every row
    # (labels stay on their row) and moves the mark by shear * (row - centre).
    size, centre = 41, 20
    label = np.broadcast_to(np.arange(size)[:, None], (size, size)).astype(np.int32).copy()
    image = np.zeros((size, size, 3), np.float32)
    image[:, centre] = 250.0
    for seed in range(20):  # a seed that draws a strong shear (|factor| >= 0.3)
        out_image, out_label = (
            x.numpy()
            for x in rotate_and_shear(
                tf.constant(image), tf.constant(label), tf.constant([seed, 4]), 0.0, 0.5
            )
        )
        shifts = out_image[:, :, 0].argmax(axis=1) - centre
        if abs(shifts[0]) >= 6:
            break
    rows = np.arange(size)[:, None]
    assert np.all((out_label == rows) | (out_label == 255))
    assert shifts[centre] == 0  # the centre row stays put
    assert shifts[0] == -shifts[-1] and abs(shifts[0]) >= 6
    assert np.all(np.diff(shifts) * np.sign(shifts[-1]) >= 0)  # monotone in the row
    # Uncovered pixels: the ignore label, and the mean colour in the image away
    # from the edge (there bilinear sampling blends in the nearest covered pixel).
    uncovered = out_label == 255
    inside = uncovered & np.roll(uncovered, 1, axis=1) & np.roll(uncovered, -1, axis=1)
    assert inside.sum() > 20
    np.testing.assert_allclose(
        out_image[inside], np.broadcast_to(MEAN, (inside.sum(), 3)), atol=1e-3
    )


def test_rotation_and_shear_leave_the_other_random_draws_alone():
    image, label = _column_pair(40, 50)
    seed = tf.constant([7, 9])

    def crop(**affine):
        return augment(image, label, seed, 24, scale_range=(0.7, 1.3), **affine)

    plain_image, plain_label = crop()
    # An all but identity transform: the same scale, crop and flip as without it.
    near_image, near_label = crop(rotation=1e-4, shear=1e-6)
    np.testing.assert_array_equal(near_label.numpy(), plain_label.numpy())
    np.testing.assert_allclose(near_image.numpy(), plain_image.numpy(), atol=0.05)
    _, turned = crop(rotation=30.0)
    assert not np.array_equal(turned.numpy(), plain_label.numpy())


def _two_sizes():
    a = (np.full((10, 12, 3), 50, np.uint8), np.full((10, 12), 1, np.int32))
    b = (np.full((14, 8, 3), 60, np.uint8), np.full((14, 8), 2, np.int32))
    return _dataset([a, b])


def test_eval_pipeline_pads_to_a_fixed_size():
    images, labels = (t.numpy() for t in next(iter(eval_pipeline(_two_sizes(), 2, pad_to=16))))
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.float32
    assert labels.shape == (2, 16, 16) and labels.dtype == np.int32
    assert (images[0, :10, :12] == 50).all() and (labels[0, :10, :12] == 1).all()
    assert (labels[0, 10:] == 255).all() and (labels[0, :, 12:] == 255).all()
    np.testing.assert_array_equal(images[0, 10:, 0], np.broadcast_to(MEAN, (6, 3)))
    assert (labels[1, :14, :8] == 2).all() and (labels[1, 14:] == 255).all()


def test_eval_pipeline_pads_each_batch_to_its_largest_image():
    images, labels = (t.numpy() for t in next(iter(eval_pipeline(_two_sizes(), 2))))
    assert images.shape == (2, 14, 12, 3) and labels.shape == (2, 14, 12)
    assert (labels[0, 10:] == 255).all() and (labels[1, :, 8:] == 255).all()
    np.testing.assert_array_equal(images[1, 0, 8:], np.broadcast_to(MEAN, (4, 3)))
    assert (images[1, :14, :8] == 60).all()


def test_eval_pipeline_batch_one_keeps_sizes():
    shapes = [tuple(images.shape) for images, _ in eval_pipeline(_two_sizes(), 1)]
    assert shapes == [(1, 10, 12, 3), (1, 14, 8, 3)]


def test_eval_pipeline_rejects_images_larger_than_pad_to():
    with pytest.raises(tf.errors.InvalidArgumentError, match="8x14 is larger than pad_to 12x12"):
        list(eval_pipeline(_two_sizes(), 1, pad_to=12))
