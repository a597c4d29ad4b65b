"""DeepLab-style augmentation and batching for (image, label) datasets.

`train_pipeline`: shuffle, repeat, then per example a random scale (image bilinear,
label nearest), padding up to the crop size (image with the mean colour, label with the
ignore label, on the bottom and right), a random crop, a random horizontal flip and,
when asked, a random rotation and shear of the crop, all applied to image and label
together; then batch and prefetch.

`eval_pipeline`: no augmentation; batches images of different sizes by padding them on
the bottom and right (label with the ignore label), so predictions cropped to the
top-left H x W line up with the original image.

Both output float32 images in 0..255 (the model normalizes) and int32 labels.
"""

import math

import tensorflow as tf

IMAGENET_MEAN = (123.68, 116.779, 103.939)  # RGB


def _pair(size, name):
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return size


def _pad_bottom_right(image, label, height, width, mean, ignore_label):
    """Pad to at least (height, width): image channels with `mean`, label with ignore."""
    shape = tf.shape(label)
    paddings = [[0, tf.maximum(height - shape[0], 0)], [0, tf.maximum(width - shape[1], 0)]]
    # tf.pad takes one fill value, so pad each channel with its own mean.
    image = tf.stack(
        [tf.pad(image[..., c], paddings, constant_values=mean[c]) for c in range(3)], axis=-1
    )
    label = tf.pad(label, paddings, constant_values=ignore_label)
    return image, label


def scaled_size(shape, scale):
    """(round(H * scale), round(W * scale)), at least 1: the size after random scaling."""
    size = tf.round(tf.cast(shape, tf.float32) * tf.cast(scale, tf.float32))
    return tf.maximum(tf.cast(size, tf.int32), 1)


def scale_pad_crop(image, label, scale, offset, crop_size, mean=IMAGENET_MEAN, ignore_label=255):
    """Resize by `scale`, pad to the crop size, crop at `offset`: in one sampling step.

    The result equals `tf.image.resize` (bilinear image, nearest label, half-pixel
    centres) to `scaled_size`, padding on the bottom and right (image with `mean`, label
    with `ignore_label`) up to the crop size, then cropping `crop_size` at `offset`
    (y, x) - but it samples only the crop's pixels (`tf.image.crop_and_resize`) instead
    of resizing the whole image, which at scale 2 is ~8x the work.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    shape = tf.shape(label)[:2]
    size = scaled_size(shape, scale)
    offset = tf.cast(offset, tf.int32)
    # One replicated pixel around the source makes samples just outside it clamp to the
    # edge, as tf.image.resize does, instead of being extrapolated.
    padded_image = tf.pad(image, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    padded_label = tf.pad(label[..., None], [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    # Source coordinate of output pixel i: (offset + i + 0.5) * H / H_scaled - 0.5, + 1
    # for the replicated border; crop_and_resize wants it normalized by (H + 2 - 1).
    ratio = tf.cast(shape, tf.float32) / tf.cast(size, tf.float32)
    first = (tf.cast(offset, tf.float32) + 0.5) * ratio + 0.5
    last = first + tf.cast([crop_h - 1, crop_w - 1], tf.float32) * ratio
    extent = tf.cast(shape + 1, tf.float32)
    box = tf.concat([first / extent, last / extent], 0)[None]
    out_image = tf.image.crop_and_resize(
        padded_image[None], box, [0], [crop_h, crop_w], method="bilinear"
    )[0]
    # Nearest rounds half up, like resize's floor(); a 1e-3 px nudge keeps float error
    # from turning exact ties (scale 0.5) the other way.
    nudge = 1e-3 / tf.concat([extent, extent], 0)
    out_label = tf.image.crop_and_resize(
        padded_label[None], box + nudge, [0], [crop_h, crop_w], method="nearest"
    )[0, ..., 0]
    # Pixels past the scaled image are padding.
    rows = tf.range(crop_h) + offset[0] < size[0]
    cols = tf.range(crop_w) + offset[1] < size[1]
    inside = rows[:, None] & cols[None, :]
    out_image = tf.where(inside[..., None], out_image, tf.constant(mean, tf.float32))
    out_label = tf.where(inside, tf.cast(out_label, tf.int32), ignore_label)
    return out_image, out_label


def rotate_and_shear(image, label, seed, rotation, shear, ignore_label=255, mean=IMAGENET_MEAN):
    """A random rotation and horizontal shear about the centre, applied jointly.

    Args:
        image: float32 (H, W, 3); label: int32 (H, W).
        seed: shape (2,) int seed.
        rotation: the angle is uniform in [-rotation, rotation] degrees.
        shear: the shear factor (x moves by `shear * y`) is uniform in [-shear, shear].

    Returns:
        The image (bilinear; uncovered pixels the `mean` colour, as padding) and
        the label (nearest; uncovered pixels `ignore_label`), same shapes.
    """
    angle_seed, shear_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    angle = tf.random.stateless_uniform([], angle_seed, -rotation, rotation) * (math.pi / 180.0)
    factor = tf.random.stateless_uniform([], shear_seed, -shear, shear)
    shape = tf.shape(label)
    center_y = (tf.cast(shape[0], tf.float32) - 1.0) / 2.0
    center_x = (tf.cast(shape[1], tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples the input at R S ((x, y) - c) + c, with S the shear.
    a, b, c, d = cos, cos * factor - sin, sin, sin * factor + cos
    transform = tf.stack(
        [a, b, center_x - a * center_x - b * center_y,
         c, d, center_y - c * center_x - d * center_y, 0.0, 0.0]
    )[None]  # fmt: skip

    def warp(values, interpolation, fill):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=values[None], transforms=transform, output_shape=shape,
            fill_value=fill, interpolation=interpolation, fill_mode="CONSTANT",
        )[0]  # fmt: skip

    mean = tf.constant(mean, tf.float32)
    image = warp(image - mean, "BILINEAR", 0.0) + mean
    label = warp(tf.cast(label, tf.float32)[..., None], "NEAREST", float(ignore_label))
    return image, tf.cast(label[..., 0], tf.int32)


def augment(image, label, seed, crop_size, scale_range=(0.5, 2.0), ignore_label=255,
            mean=IMAGENET_MEAN, flip=True, rotation=0.0, shear=0.0):  # fmt: skip
    """Random scale, pad, crop, flip, rotation and shear of one (image, label)
    pair, applied jointly.

    Args:
        image: (H, W, 3) image, any numeric dtype.
        label: (H, W) integer label.
        seed: shape (2,) int seed for the stateless random ops.
        crop_size: int or (height, width).
        rotation, shear: ranges of `rotate_and_shear` on the crop; 0 and 0 (the
            default) leave it out.

    Returns:
        (float32 image (crop_h, crop_w, 3), int32 label (crop_h, crop_w)).
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    scale_seed, y_seed, x_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    label = tf.cast(label, tf.int32)
    scale = tf.random.stateless_uniform([], scale_seed, scale_range[0], scale_range[1])
    size = scaled_size(tf.shape(label), scale)
    # The crop lies anywhere inside the scaled image padded up to the crop size.
    y = tf.random.stateless_uniform(
        [], y_seed, 0, tf.maximum(size[0] - crop_h, 0) + 1, dtype=tf.int32
    )
    x = tf.random.stateless_uniform(
        [], x_seed, 0, tf.maximum(size[1] - crop_w, 0) + 1, dtype=tf.int32
    )
    image, label = scale_pad_crop(
        image, label, scale, tf.stack([y, x]), (crop_h, crop_w), mean, ignore_label
    )
    if flip:
        flipped = tf.random.stateless_uniform([], flip_seed) < 0.5
        image, label = tf.cond(
            flipped,
            lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
            lambda: (image, label),
        )
    if rotation or shear:
        # Folded from the example's seed: the draws above stay what they were.
        affine_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        image, label = rotate_and_shear(
            image, label, affine_seed, rotation, shear, ignore_label, mean
        )
    image = tf.ensure_shape(image, (crop_h, crop_w, 3))
    label = tf.ensure_shape(label, (crop_h, crop_w))
    return image, label


def train_pipeline(
    ds,
    crop_size,
    batch_size,
    scale_range=(0.5, 2.0),
    ignore_label=255,
    mean=IMAGENET_MEAN,
    seed=None,
    shuffle_buffer=256,
    drop_remainder=True,
    repeat=True,
    flip=True,
    rotation=0.0,
    shear=0.0,
    crops_per_image=1,
):
    """Shuffle, repeat, augment, batch and prefetch a dataset of (image, label).

    Args:
        ds: unbatched (image uint8 (H, W, 3), label int32 (H, W)), as `load_dataset` gives.
        crop_size: int or (height, width) of the training crops.
        batch_size: images per batch.
        scale_range: (min, max) of the uniform random scale factor.
        ignore_label: label of padded pixels.
        mean: RGB colour of padded image pixels (the normalization mean, so padding
            becomes 0 after normalization).
        seed: makes shuffling and augmentation reproducible; None = random.
        shuffle_buffer: examples in the shuffle buffer (0 = no shuffle). Decoded VOC
            images take ~1.3 MB each here; shuffle the file list in `load_dataset`
            (shuffle=True) for a cheap full shuffle.
        drop_remainder: drop the last partial batch (only matters with repeat=False).
        repeat: repeat forever (use `steps_per_epoch` in `fit`).
        flip: random horizontal flips.
        rotation: random rotation of each crop, uniform in [-rotation, rotation] degrees.
        shear: random horizontal shear of each crop, uniform in [-shear, shear].
        crops_per_image: augmented crops taken from each image of `ds` (data
            echoing); the copies are spread apart by the shuffle buffer, each gets
            its own random scale, crop, flip, rotation and shear.

    Returns:
        tf.data.Dataset of (float32 images (B, crop_h, crop_w, 3) in 0..255,
        int32 labels (B, crop_h, crop_w)).
    """
    crop_size = _pair(crop_size, "crop_size")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
    if len(mean) != 3:
        raise ValueError(f"mean must have 3 values (RGB), got {mean!r}")
    if not 0 <= rotation <= 180:
        raise ValueError(f"rotation must be in [0, 180] degrees, got {rotation}")
    if not 0 <= shear < 1:
        raise ValueError(f"shear must be in [0, 1), got {shear}")
    if not isinstance(crops_per_image, int) or crops_per_image < 1:
        raise ValueError(f"crops_per_image must be an integer >= 1, got {crops_per_image!r}")
    mean = tuple(float(m) for m in mean)
    if crops_per_image > 1:
        # Each image is made once and cropped several times: where making an image
        # costs a good part of a step (ScaleDigits generates each one), this buys
        # steps. The shuffle below spreads the copies over different batches.
        ds = ds.flat_map(
            lambda image, label: tf.data.Dataset.from_tensors((image, label)).repeat(
                crops_per_image
            )
        )
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    if repeat:
        ds = ds.repeat()
    # One stateless seed per example keeps the parallel map deterministic for a given seed.
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        lambda pair, s: augment(
            pair[0],
            pair[1],
            s,
            crop_size,
            scale_range,
            ignore_label,
            mean,
            flip,
            rotation,
            shear,
        ),  # fmt: skip
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_pipeline(ds, batch_size=1, pad_to=None, ignore_label=255, mean=IMAGENET_MEAN):
    """Batch a dataset of (image, label) for evaluation, padding to a common size.

    Args:
        ds: unbatched (image (H, W, 3), label (H, W)).
        batch_size: images per batch. With batch_size > 1 and no `pad_to`, each batch
            is padded to its largest image.
        pad_to: None, or int / (height, width): pad every image to this size (an image
            larger than it is an error), e.g. 513 for VOC.
        ignore_label: label of padded pixels.
        mean: RGB colour of padded image pixels.

    Returns:
        tf.data.Dataset of (float32 images (B, H', W', 3), int32 labels (B, H', W')),
        images at the top left, padding on the bottom and right.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mean = tuple(float(m) for m in mean)

    def cast(image, label):
        return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

    ds = ds.map(cast, num_parallel_calls=tf.data.AUTOTUNE)
    if pad_to is not None:
        height, width = _pair(pad_to, "pad_to")

        def pad(image, label):
            shape = tf.shape(label)
            check = tf.debugging.Assert(
                (shape[0] <= height) & (shape[1] <= width),
                [
                    tf.strings.join(
                        [
                            "eval_pipeline: image of size ",
                            tf.strings.as_string(shape[1]),
                            "x",
                            tf.strings.as_string(shape[0]),
                            f" is larger than pad_to {width}x{height}",
                        ]
                    )
                ],
            )
            with tf.control_dependencies([check]):
                image, label = _pad_bottom_right(image, label, height, width, mean, ignore_label)
            return tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(
                label, (height, width)
            )

        ds = ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    elif batch_size == 1:
        ds = ds.batch(1)
    else:
        # padded_batch fills with one scalar per component; a validity mask lets us put
        # the mean colour into padded image pixels afterwards.
        ds = ds.map(
            lambda image, label: (image, label, tf.ones_like(label, tf.bool)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        ds = ds.padded_batch(
            batch_size, padding_values=(0.0, tf.constant(ignore_label, tf.int32), False)
        )

        def fill(images, labels, valid):
            images = tf.where(valid[..., None], images, tf.constant(mean, tf.float32))
            return images, labels

        ds = ds.map(fill, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
