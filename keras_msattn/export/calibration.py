"""Images for calibration, QAT and verification, fitted to the export size.

An exported model has one fixed input size, so every image (and label map) is
resized to cover it, keeping the aspect ratio, and centre-cropped: real image
content at the scale the model will see, no padding.

Sources may be a numpy array `(N, H, W, 3)` or `(H, W, 3)`, a list of such
arrays, or a `tf.data.Dataset` of images or of `(image, label)` pairs, batched
or not (what `keras_msattn.data.load_dataset` and its pipelines yield).
"""

import numpy as np
import tensorflow as tf


def fit_to_size(image, size, method="bilinear"):
    """Resize `image` (H, W, C) to cover `size` keeping its aspect, centre-crop to it.

    Works eagerly and inside `tf.data` maps; "nearest" keeps the dtype (labels).
    """
    height, width = size
    image = tf.convert_to_tensor(image)
    dtype = image.dtype
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.maximum(height / shape[0], width / shape[1])
    resized = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), [height, width])
    image = tf.image.resize(image, resized, method=method)
    if method == "nearest":
        image = tf.cast(image, dtype)
    top = (resized[0] - height) // 2
    left = (resized[1] - width) // 2
    image = image[top : top + height, left : left + width]
    return tf.ensure_shape(image, (height, width, None))


def training_batches(source, size, batch_size=8, seed=0):
    """Repeated, shuffled (images float32 (B, H, W, 3), labels int32 (B, H, W)) batches.

    A dataset already batched at `size` (e.g. `train_pipeline(..., crop_size=size)`)
    is used as it is; anything else is fitted to `size` and batched.
    """
    if isinstance(source, tuple) and len(source) == 2:
        source = tf.data.Dataset.from_tensor_slices(source)
    if not isinstance(source, tf.data.Dataset):
        raise ValueError(
            "The QAT dataset must be a tf.data.Dataset of (image, label) or a tuple "
            f"(images, labels); got {type(source).__name__}."
        )
    spec = source.element_spec
    if not (isinstance(spec, tuple) and len(spec) >= 2):
        raise ValueError(f"The QAT dataset must yield (image, label) pairs; it yields {spec}.")
    image_spec = spec[0]
    if image_spec.shape.rank == 4 and tuple(image_spec.shape[1:3]) == tuple(size):
        return source.map(lambda image, label, *_: (tf.cast(image, tf.float32), label)).repeat()
    if image_spec.shape.rank == 4:
        source = source.unbatch()

    def fit(image, label, *_):
        label = label[..., 0] if label.shape.rank == 3 else label
        image = fit_to_size(tf.cast(image, tf.float32), size)
        label = fit_to_size(tf.cast(label, tf.int32)[..., None], size, "nearest")[..., 0]
        return image, label

    source = source.map(fit, num_parallel_calls=tf.data.AUTOTUNE)
    return source.shuffle(256, seed=seed).repeat().batch(batch_size, drop_remainder=True)


def _examples(source):
    """Yields (image, label-or-None) numpy pairs, one image at a time."""
    if isinstance(source, tf.data.Dataset):
        source = source.as_numpy_iterator()
    elif isinstance(source, np.ndarray):
        source = source[None] if source.ndim == 3 else source
    elif isinstance(source, tuple) and len(source) == 2:
        images, labels = (np.asarray(part) for part in source)
        if images.ndim == 3:
            images, labels = images[None], labels[None]
        source = zip(images, labels, strict=True)
    for element in source:
        image, label = element, None
        if isinstance(element, dict):
            image, label = element.get("image", element.get("images")), element.get("label")
        elif isinstance(element, (tuple, list)):
            image = element[0]
            label = element[1] if len(element) > 1 else None
        image = np.asarray(image)
        label = None if label is None else np.asarray(label)
        if image.ndim == 3:
            yield image, label
        elif image.ndim == 4:  # a batch
            for index in range(image.shape[0]):
                yield image[index], None if label is None else label[index]
        else:
            raise ValueError(
                f"Calibration/validation images must be (H, W, 3) or (N, H, W, 3); got shape "
                f"{image.shape}."
            )


def images(source, size, limit=None):
    """`limit` float32 images (H, W, 3), 0..255, fitted to `size`, from `source`."""
    result = []
    for image, _ in _examples(source):
        if limit is not None and len(result) >= limit:
            break
        _check_image(image)
        result.append(fit_to_size(image.astype(np.float32), size).numpy())
    if not result:
        raise ValueError("The calibration/validation source holds no images.")
    return np.stack(result)


def labelled(source, size, limit=None):
    """(images float32 (N, H, W, 3), labels int32 (N, H, W)) fitted to `size`."""
    images_, labels = [], []
    for image, label in _examples(source):
        if limit is not None and len(images_) >= limit:
            break
        if label is None:
            raise ValueError("Validation data must be (image, label) pairs; got images only.")
        _check_image(image)
        label = label[..., 0] if label.ndim == 3 else label
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"A label map {label.shape} does not match its image {image.shape[:2]}."
            )
        images_.append(fit_to_size(image.astype(np.float32), size).numpy())
        fitted = fit_to_size(label[..., None].astype(np.int32), size, "nearest")
        labels.append(fitted.numpy()[..., 0])
    if not images_:
        raise ValueError("The validation source holds no examples.")
    return np.stack(images_), np.stack(labels)


def _check_image(image):
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Images must be RGB (H, W, 3); got shape {image.shape}.")


def dataset_splits(name, data_dir=None, **options):
    """(training split, validation split or None) of a `load_dataset` name."""
    from keras_msattn.data.datasets import dataset_splits

    del options  # the split names do not depend on the loader options
    splits = dataset_splits(name, data_dir)
    train = next((s for s in ("train_aug", "train") if s in splits), None)
    validation = next((s for s in ("val", "validation", "test") if s in splits), None)
    return train, validation


def load_split(name, split, data_dir=None, shuffle=False, **options):
    """Unbatched (image, label) pairs of one split (see `keras_msattn.data.load_dataset`).

    `shuffle` shuffles the example order (seed 0).
    """
    from keras_msattn.data.datasets import load_dataset

    return load_dataset(name, split, data_dir=data_dir, shuffle=shuffle, seed=0, **options)
