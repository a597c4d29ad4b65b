"""Reading (image, mask) file pairs into tf.data, with a clear error for every bad file.

Every file-based loader (VOC, ADE20K, folder) lists its split as a `SplitFiles` and hands
it to `pairs_dataset`, which decodes with TensorFlow ops in a parallel map and yields
`(image uint8 (H, W, 3), label int32 (H, W))`, 255 = ignore.

What counts as bad, and what happens:
- a file named by the split that does not exist: `FileNotFoundError` when the dataset is
  built (or skipped and counted with `skip_bad=True`);
- an image that is not a JPEG/PNG/GIF/BMP, or cannot be decoded; a mask that is not a PNG,
  is RGB(A), is a palette PNG whose colours are not the PASCAL VOC palette, has a size
  different from its image, or holds values outside the valid class range other than 255:
  an `InvalidArgumentError` naming the file and the problem when iteration reaches it (or
  skipped with a warning on stderr and a running count, with `skip_bad=True`).
Handled, not errors: grayscale and RGBA images are converted to RGB; 16-bit PNG images
are reduced to 8 bits (their high byte, v // 256) by `tf.io.decode_image`. Masks may be
8-bit or 16-bit grayscale PNGs holding class indices, or palette PNGs whose palette index
is the class (as VOC's SegmentationClass).

Memory stays bounded: an image whose header (read without decoding) gives more than
`MAX_IMAGE_PIXELS` pixels is refused before anything is decoded (or skipped and counted
with `skip_bad=True`); `image_size_problem` is the one rule every command applies.

A split read without `skip_bad` is remembered, so that when its pipeline stops at a bad
file `find_bad_file` can name it (with the plain-Python checks of `check.py`) as a
`keras_msattn.errors.DataError`, instead of a TensorFlow traceback.

Decode failures raise inside TensorFlow's decoders, whose messages do not name the file.
So the pipeline numbers the elements, drops failing ones with `ignore_errors`, and a `scan`
that sees a gap in the numbering reports the files it lost. A sentinel after the last file
makes a failure at the very end visible too.
"""

import dataclasses
import functools
import logging
import os
import sys
import zlib

import numpy as np
import tensorflow as tf

from keras_msattn.data.base import IGNORE_LABEL
from keras_msattn.errors import DataError

# 16.8 megapixels (4096 x 4096): a full-resolution forward pass of a larger image needs
# many GB of memory.
MAX_IMAGE_PIXELS = 4096 * 4096
SKIP_HINT = (
    "fix or remove the file (`msattn data check` lists every bad file), or skip bad files: "
    "`msattn evaluate --skip-bad`, `msattn train ... --set skip_bad=True`"
)
# Splits read without skip_bad, newest last (see find_bad_file).
_WATCHED = []
LOG = logging.getLogger("keras_msattn.data")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", _PNG_SIGNATURE, b"GIF8", b"BM")

# Problem texts, shared with the plain-Python checker (check.py).
EMPTY_FILE = "empty file"
NOT_AN_IMAGE = "not an image file (expected JPEG, PNG, GIF or BMP)"
NOT_PNG_MASK = "mask is not a PNG file"
LOW_DEPTH_MASK = "grayscale mask with fewer than 8 bits per pixel; save masks as 8-bit PNGs"
RGB_MASK = (
    "mask is an RGB/RGBA image; masks must be single-channel class indices "
    "(8-bit grayscale or palette PNG)"
)
NOT_VOC_PALETTE = (
    "palette PNG whose colours are not the PASCAL VOC palette; save masks as 8-bit "
    "grayscale PNGs holding class indices"
)


def voc_colormap(n=256):
    """The PASCAL VOC palette: colour of index i spreads i's bits over the RGB high bits."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


VOC_COLORMAP = voc_colormap()


@dataclasses.dataclass
class SplitFiles:
    """The files of one split of a file-based dataset.

    Args:
        images: image paths.
        labels: mask paths the pipeline reads (same length as `images`).
        num_classes: number of classes C; valid mapped labels are 0..C-1 and 255.
        reduce_zero_label: mask value 0 means "unlabelled" (-> 255) and value k is class
            k - 1 (ADE20K's convention).
        missing: (file, problem) pairs found while listing (files named by the split that
            do not exist); those pairs are not in `images`/`labels`.
        label_sources: what to name in messages for each label when it differs from the
            file read (SBD masks are read from a PNG cache of the original .mat files).
        description: "dataset/split", for messages.
    """

    images: list
    labels: list
    num_classes: int
    reduce_zero_label: bool = False
    missing: list = dataclasses.field(default_factory=list)
    label_sources: list = None
    description: str = ""


def read_sbd_mat(path):
    """The class map (H, W) uint8 of an SBD cls/*.mat file (struct GTcls, field Segmentation)."""
    from scipy.io import loadmat

    mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    if "GTcls" not in mat:
        raise ValueError(f"{path}: no GTcls struct (not an SBD cls .mat file)")
    segmentation = np.asarray(mat["GTcls"].Segmentation)
    if segmentation.ndim != 2:
        raise ValueError(f"{path}: GTcls.Segmentation has shape {segmentation.shape}, not (H, W)")
    if segmentation.min() < 0 or segmentation.max() > 255:
        raise ValueError(f"{path}: GTcls.Segmentation values outside 0..255")
    return segmentation.astype(np.uint8)


def valid_values_text(num_classes, reduce_zero_label):
    """How the valid raw mask values read in messages."""
    if reduce_zero_label:
        return f"0..{num_classes} (0 = unlabelled) or 255"
    return f"0..{num_classes - 1} or 255"


def map_labels(raw, reduce_zero_label):
    """Raw mask values -> class ids (int32), 255 kept as ignore."""
    raw = tf.cast(raw, tf.int32)
    if not reduce_zero_label:
        return raw
    shifted = tf.where(raw == 0, IGNORE_LABEL, raw - 1)
    return tf.where(raw == IGNORE_LABEL, IGNORE_LABEL, shifted)


def label_values_problem(raw, labels, num_classes, reduce_zero_label, valid_text=None):
    """'' when every label is in [0, C) or 255; else a message listing the bad raw values."""
    valid_text = valid_text or valid_values_text(num_classes, reduce_zero_label)
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != IGNORE_LABEL)

    def describe():
        values = tf.sort(tf.unique(tf.boolean_mask(tf.cast(raw, tf.int32), bad))[0])
        shown = tf.strings.reduce_join(tf.strings.as_string(values[:10]), separator=", ")
        return tf.strings.join(
            [
                "mask values outside the valid range ",
                valid_text,
                ": ",
                shown,
            ]
        )

    return tf.cond(tf.reduce_any(bad), describe, lambda: tf.constant(""))


def _header(contents):
    # Pad so that fixed offsets exist even in a file shorter than a PNG header.
    head = tf.strings.join([tf.strings.substr(contents, 0, 33), b"\0" * 33])
    return tf.io.decode_raw(head, tf.uint8)


def _starts_with(contents, prefix):
    return tf.strings.substr(contents, 0, len(prefix)) == prefix


def _decode_image(contents):
    """(image uint8 (H, W, 3), problem) without raising for non-images."""
    known = tf.reduce_any(tf.stack([_starts_with(contents, s) for s in _IMAGE_SIGNATURES]))
    problem = tf.where(tf.strings.length(contents) == 0, EMPTY_FILE, NOT_AN_IMAGE)
    return tf.cond(
        known,
        lambda: (
            tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False),
            tf.constant(""),
        ),
        lambda: (tf.zeros([0, 0, 3], tf.uint8), problem),
    )


def _palette_to_index(rgb):
    """Palette PNGs decode to colours; invert the VOC palette to get the indices back."""
    rgb = tf.cast(rgb, tf.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Bit j of a channel's top bits (from the most significant) is bit 3j+c of the index.
    index = tf.zeros_like(r)
    for j in range(3):
        for c, channel in enumerate((r, g, b)):
            if 3 * j + c < 8:
                bit = (channel // 2 ** (7 - j)) % 2
                index += bit * 2 ** (3 * j + c)
    roundtrip = tf.gather(tf.constant(VOC_COLORMAP, tf.int32), index)
    exact = tf.reduce_all(roundtrip == rgb)
    problem = tf.where(exact, "", NOT_VOC_PALETTE)
    return index, problem


# CRC-32 is affine over GF(2): turning IHDR's colour type from 3 (palette) into 0 (gray)
# flips the chunk's CRC by this constant, whatever the other header fields are.
_CRC_FLIP = np.frombuffer(
    (zlib.crc32(bytes(13) + b"\x03" + bytes(3)) ^ zlib.crc32(bytes(17))).to_bytes(4, "big"),
    np.uint8,
)
_BYTE_STRINGS = np.array([bytes([i]) for i in range(256)], dtype=object)


def _substr(contents, position, length):
    """tf.strings.substr with int64 positions (a negative length: to the end)."""
    return tf.strings.substr(contents, tf.cast(position, tf.int64), tf.cast(length, tf.int64))


def _be_uint32(contents, offset):
    b = tf.cast(tf.io.decode_raw(_substr(contents, offset, 4), tf.uint8), tf.int64)
    return ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3]


def _find_chunk(contents, kind, max_chunks=64):
    """(offset, data length) of the first `kind` chunk before IDAT, or (-1, 0)."""
    size = tf.cast(tf.strings.length(contents), tf.int64)

    def cond(offset, found, steps):
        return (found == -1) & (steps < max_chunks) & (offset + 8 <= size)

    def body(offset, found, steps):
        name = _substr(contents, offset + 4, 4)
        stop = tf.constant(-2, tf.int64)
        found = tf.where(name == kind, offset, tf.where(name == b"IDAT", stop, found))
        return offset + 12 + _be_uint32(contents, offset), found, steps + 1

    start = tf.constant(33, tf.int64)  # first chunk after the signature and IHDR
    _, found, _ = tf.while_loop(cond, body, (start, tf.constant(-1, tf.int64), 0))
    found = tf.maximum(found, -1)
    length = tf.cond(
        found >= 0, lambda: _be_uint32(contents, found), lambda: tf.constant(0, tf.int64)
    )
    return found, length


def _decode_palette8(contents):
    """8-bit palette PNG -> (indices int32, problem), decoding the indices directly.

    TensorFlow's decoder expands palettes to RGB, and inverting colours per pixel costs
    more than the decode. Instead, relabel the PNG as 8-bit grayscale (IHDR colour type
    3 -> 0, CRC fixed), drop its PLTE chunk, and decode: the gray values are the palette
    indices. The palette is then checked against VOC's for the indices in use.
    """
    offset, length = _find_chunk(contents, b"PLTE")
    # A palette's transparency chunk would be invalid in a gray PNG: drop it too.
    alpha, alpha_length = _find_chunk(contents, b"tRNS")

    def direct():
        crc = tf.bitwise.bitwise_xor(
            tf.io.decode_raw(tf.strings.substr(contents, 29, 4), tf.uint8), _CRC_FLIP
        )
        crc = tf.strings.reduce_join(tf.gather(tf.constant(_BYTE_STRINGS), tf.cast(crc, tf.int32)))
        after_palette = offset + 12 + length
        has_alpha = alpha > offset
        gray = tf.strings.join(
            [
                tf.strings.substr(contents, 0, 25),
                b"\0",
                tf.strings.substr(contents, 26, 3),
                crc,
                _substr(contents, 33, offset - 33),
                _substr(contents, after_palette, tf.where(has_alpha, alpha - after_palette, -1)),
                tf.where(
                    has_alpha,
                    _substr(contents, tf.maximum(alpha, 0) + 12 + alpha_length, -1),
                    b"",
                ),
            ]
        )
        indices = tf.cast(tf.io.decode_png(gray, channels=1)[..., 0], tf.int32)
        palette = tf.reshape(
            tf.io.decode_raw(_substr(contents, offset + 8, length), tf.uint8), [-1, 3]
        )[:256]
        # Entries past the palette's end can never match (VOC colours have low bits 0).
        palette = tf.pad(palette, [[0, 256 - tf.shape(palette)[0]], [0, 0]], constant_values=1)
        used = tf.math.bincount(indices, minlength=256, maxlength=256) > 0
        differs = tf.reduce_any(palette != VOC_COLORMAP, axis=1)
        problem = tf.where(tf.reduce_any(used & differs), NOT_VOC_PALETTE, "")
        return indices, problem

    def via_rgb():
        return _palette_to_index(tf.io.decode_png(contents, channels=3))

    return tf.cond(offset >= 33, direct, via_rgb)


def _decode_mask(contents):
    """(raw values int32 (H, W), problem) without raising for unsupported PNG kinds."""
    header = _header(contents)
    depth, color_type = tf.cast(header[24], tf.int32), tf.cast(header[25], tf.int32)
    empty = tf.zeros([0, 0], tf.int32)

    def gray8():
        return tf.cast(tf.io.decode_png(contents, channels=1)[..., 0], tf.int32), tf.constant("")

    def gray16():
        values = tf.io.decode_png(contents, channels=1, dtype=tf.uint16)[..., 0]
        return tf.cast(values, tf.int32), tf.constant("")

    def palette8():
        return _decode_palette8(contents)

    def palette():
        return _palette_to_index(tf.io.decode_png(contents, channels=3))

    def fail(message):
        return lambda: (empty, tf.constant(message))

    gray = (color_type == 0) | (color_type == 4)
    return tf.case(
        [
            (~_starts_with(contents, _PNG_SIGNATURE), fail(NOT_PNG_MASK)),
            ((color_type == 3) & (depth == 8), palette8),
            (color_type == 3, palette),
            (gray & (depth == 8), gray8),
            (gray & (depth == 16), gray16),
            (gray, fail(LOW_DEPTH_MASK)),
        ],
        default=fail(RGB_MASK),
        exclusive=False,
    )


def _first_nonempty(problems):
    problems = tf.stack(problems)
    nonempty = tf.where(tf.strings.length(problems) > 0)
    return tf.cond(tf.size(nonempty) > 0, lambda: problems[nonempty[0, 0]], lambda: tf.constant(""))


def _size_text(shape):
    return tf.strings.join([tf.strings.as_string(shape[1]), "x", tf.strings.as_string(shape[0])])


def _decode_pair(image_path, label_path, num_classes, reduce_zero_label):
    image, image_problem = _decode_image(tf.io.read_file(image_path))
    raw, mask_problem = _decode_mask(tf.io.read_file(label_path))
    labels = map_labels(raw, reduce_zero_label)
    image_shape, mask_shape = tf.shape(image)[:2], tf.shape(raw)
    size_problem = tf.cond(
        tf.reduce_all(image_shape == mask_shape),
        lambda: tf.constant(""),
        lambda: tf.strings.join(
            [
                "mask size ",
                _size_text(mask_shape),
                " differs from its image size ",
                _size_text(image_shape),
            ]
        ),
    )
    values_problem = label_values_problem(raw, labels, num_classes, reduce_zero_label)
    # Attach the problem to the file it is about: the image for image problems, else the mask.
    problem = _first_nonempty([image_problem, mask_problem, size_problem, values_problem])
    on_image = tf.strings.length(image_problem) > 0
    return image, labels, problem, on_image


def _truncation_hint(path):
    """For a file a decoder rejected: does it look cut short? (JPEG/PNG end markers)."""
    contents = tf.io.read_file(path)
    size = tf.strings.length(contents)
    tail = tf.strings.substr(contents, tf.maximum(size - 12, 0), 12)
    jpeg = _starts_with(contents, b"\xff\xd8\xff")
    png = _starts_with(contents, _PNG_SIGNATURE)
    truncated_jpeg = jpeg & (
        tf.strings.substr(tail, tf.maximum(tf.strings.length(tail) - 2, 0), 2) != b"\xff\xd9"
    )
    truncated_png = png & (
        tf.strings.substr(tail, tf.maximum(tf.strings.length(tail) - 8, 0), 8) != _PNG_END
    )
    return truncated_jpeg | truncated_png


def _decode_failure_message(image_path, label_path):
    image_cut, label_cut = _truncation_hint(image_path), _truncation_hint(label_path)
    return tf.case(
        [
            (
                image_cut,
                lambda: tf.strings.join(
                    [image_path, ": corrupt image (truncated file, decoder failed)"]
                ),
            ),
            (
                label_cut,
                lambda: tf.strings.join(
                    [label_path, ": corrupt mask (truncated file, decoder failed)"]
                ),
            ),
        ],
        default=lambda: tf.strings.join(
            [image_path, " or its mask ", label_path, ": corrupt file (decoder failed)"]
        ),
        exclusive=False,
    )


def image_size_problem(path):
    """None, or why the image at `path` is too large to decode (from its header alone)."""
    from PIL import Image

    try:
        with Image.open(path) as image:  # reads the header, decodes nothing
            width, height = image.size
    except Exception:  # not an image: the decoders report that with a better message
        return None
    if width * height <= MAX_IMAGE_PIXELS:
        return None
    return (
        f"image of {width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is larger "
        f"than the {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels this package decodes; downscale it"
    )


def display_path(path):
    """`path` as text that prints anywhere (a non-UTF-8 byte shows as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def path_problem(path):
    """Why a listed file cannot be read at all (its name or a dangling link), or None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8, which TensorFlow cannot open; rename the file"
    if os.path.islink(path) and not os.path.exists(path):
        return f"a symbolic link to {display_path(os.readlink(path))}, which does not exist"
    return None


def set_aside_unreadable(files):
    """`files` with every pair whose image or mask `path_problem` refuses moved to
    `missing`: the checker and the pipelines accept exactly the same files."""
    labels = files.label_sources or files.labels
    keep, missing = [], list(files.missing)
    for index, (image, label) in enumerate(zip(files.images, labels, strict=True)):
        problems = [(p, path_problem(p)) for p in (image, label)]
        problems = [(display_path(p), problem) for p, problem in problems if problem]
        if problems:
            missing.append(problems[0])  # one entry per pair lost
        else:
            keep.append(index)
    if len(keep) == len(files.images):
        return files
    return dataclasses.replace(
        files,
        images=[files.images[i] for i in keep],
        labels=[files.labels[i] for i in keep],
        label_sources=files.label_sources and [files.label_sources[i] for i in keep],
        missing=missing,
    )


def _oversized(paths):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(pool.map(image_size_problem, paths))
    return {path: problem for path, problem in zip(paths, problems, strict=True) if problem}


def find_bad_file():
    """A `DataError` naming the first bad file of the splits read without skip_bad, or None.

    For a pipeline that stopped: the tf.data checks raise inside TensorFlow, where the
    error cannot carry the file; the same rules in plain Python find it again.
    """

    for watched in reversed(_WATCHED):
        found = watched()
        if found is not None:
            path, problem = found
            return DataError(f"{path}: {problem}; {SKIP_HINT}")
    return None


def forget_watched():
    """Forget the splits read so far (a new command starts)."""
    _WATCHED.clear()


def watch(first_problem):
    """Register `first_problem()` -> (where, problem) or None for `find_bad_file`."""
    _WATCHED.append(first_problem)
    del _WATCHED[:-8]  # a long-lived process keeps only its latest splits


def pairs_dataset(files, skip_bad=False, shuffle=False, seed=None, first_bad_pair=None):
    """tf.data.Dataset of (image uint8 (H, W, 3), label int32 (H, W)) from a `SplitFiles`.

    Args:
        files: the split's `SplitFiles`.
        first_bad_pair: `first_bad_pair(files)` -> (file, problem) or None, for
            `find_bad_file` to name the file after a failed read
            (`keras_msattn.data.check.first_bad_pair`).
        skip_bad: skip bad files (missing, corrupt, wrong size, bad values) with a warning
            and a running count instead of raising.
        shuffle: shuffle the file order (cheap: before decoding), differently each pass.
        seed: shuffle seed.
    """
    description = files.description or "dataset"
    files = set_aside_unreadable(files)
    oversized = _oversized(files.images)
    if oversized:
        keep = [i for i, path in enumerate(files.images) if path not in oversized]
        files = dataclasses.replace(
            files,
            images=[files.images[i] for i in keep],
            labels=[files.labels[i] for i in keep],
            label_sources=files.label_sources and [files.label_sources[i] for i in keep],
            missing=files.missing + list(oversized.items()),
        )
    if files.missing:
        shown = "\n".join(f"  {path}: {problem}" for path, problem in files.missing[:10])
        more = len(files.missing) - 10
        shown += f"\n  ... and {more} more" if more > 0 else ""
        if not skip_bad:
            raise FileNotFoundError(
                f"{description}: {len(files.missing)} file(s) of the split are missing, "
                f"unreadable or too large; {SKIP_HINT}:\n{shown}"
            )
        LOG.warning(
            "%s: skipping %d missing or unreadable file(s):\n%s",
            description,
            len(files.missing),
            shown,
        )
    if not files.images:
        raise ValueError(f"{description}: no usable images in the split")
    if not skip_bad and first_bad_pair is not None:
        watch(functools.partial(first_bad_pair, files))

    n = len(files.images)
    image_paths = tf.constant(files.images)
    label_paths = tf.constant(files.labels)
    label_names = tf.constant(files.label_sources or files.labels)
    num_classes, reduce_zero_label = files.num_classes, files.reduce_zero_label
    skipped_before = len(files.missing)
    prefix = f"keras_msattn.data: {description}: "

    def read(position, index):
        def sentinel():
            return (
                tf.zeros([1, 1, 3], tf.uint8),
                tf.zeros([1, 1], tf.int32),
                tf.constant(""),
                tf.constant(False),
            )

        def real():
            return _decode_pair(
                image_paths[index], label_paths[index], num_classes, reduce_zero_label
            )

        return (position, index, *tf.cond(index < 0, sentinel, real))

    def one_pass(order):
        indices = tf.data.Dataset.from_tensor_slices(order).concatenate(
            tf.data.Dataset.from_tensors(tf.constant(-1, tf.int64))
        )
        ds = indices.enumerate().map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # Decoder errors drop the element; the scan below names the files lost in a gap.
        ds = ds.ignore_errors()

        def check(state, element):
            last, skipped = state
            position, index, image, labels, problem, on_image = element
            lost = order[last + 1 : position]

            def report_lost():
                return tf.map_fn(
                    lambda i: _decode_failure_message(image_paths[i], label_names[i]),
                    lost,
                    fn_output_signature=tf.string,
                )

            lost_messages = tf.cond(
                tf.size(lost) > 0, report_lost, lambda: tf.zeros([0], tf.string)
            )
            bad_file = tf.where(
                on_image, image_paths[tf.maximum(index, 0)], label_names[tf.maximum(index, 0)]
            )
            own = tf.cond(
                tf.strings.length(problem) > 0,
                lambda: tf.strings.join([bad_file, ": ", problem])[None],
                lambda: tf.zeros([0], tf.string),
            )
            messages = tf.concat([lost_messages, own], 0)
            count = skipped + tf.cast(tf.size(messages), tf.int64)
            if skip_bad:
                ops = [
                    tf.cond(
                        tf.size(messages) > 0,
                        lambda: _print_skips(prefix, messages, count),
                        tf.no_op,
                    )
                ]
                ops.append(
                    tf.cond(
                        (index < 0) & (count > 0),
                        lambda: _print_summary(prefix, count, n + skipped_before),
                        tf.no_op,
                    )
                )
            else:
                ops = [
                    tf.debugging.Assert(
                        tf.size(messages) == 0,
                        [tf.strings.join([prefix, tf.strings.reduce_join(messages[:1])])],
                    )
                ]
            with tf.control_dependencies(ops):
                keep = (index >= 0) & (tf.strings.length(problem) == 0)
                return (position, count), (keep, image, labels)

        ds = ds.scan((tf.constant(-1, tf.int64), tf.constant(skipped_before, tf.int64)), check)
        return ds.filter(lambda keep, image, labels: keep).map(
            lambda keep, image, labels: (image, labels)
        )

    order = tf.data.Dataset.range(n)
    if shuffle:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    # One element per pass: that pass's file order, which the gap check needs as a whole.
    ds = order.batch(n).flat_map(one_pass)
    # Files of the split, skipped ones included: what `evaluate` counts skips against.
    ds.msattn_num_files = n + skipped_before
    return ds


def validated(ds, num_classes, description, skip_bad=False, valid_text=None):
    """Check an already decoded dataset of (name, image, raw mask, labels) elements.

    Raises (or, with skip_bad, skips with a counted warning) on a mask whose size differs
    from its image or holds labels outside [0, C) other than 255, naming the element.
    Returns the dataset of (image uint8, labels int32).
    """
    prefix = f"keras_msattn.data: {description}: "

    def problem_of(name, image, raw, labels):
        size_problem = tf.cond(
            tf.reduce_all(tf.shape(image)[:2] == tf.shape(labels)),
            lambda: tf.constant(""),
            lambda: tf.strings.join(
                [
                    "mask size ",
                    _size_text(tf.shape(labels)),
                    " differs from its image size ",
                    _size_text(tf.shape(image)),
                ]
            ),
        )
        values_problem = label_values_problem(raw, labels, num_classes, False, valid_text)
        problem = _first_nonempty([size_problem, values_problem])
        return name, image, labels, problem

    def check(skipped, element):
        name, image, labels, problem = element
        bad = tf.strings.length(problem) > 0
        message = tf.strings.join([name, ": ", problem])[None]
        count = skipped + tf.cast(bad, tf.int64)
        if skip_bad:
            op = tf.cond(bad, lambda: _print_skips(prefix, message, count), tf.no_op)
        else:
            op = tf.debugging.Assert(~bad, [tf.strings.join([prefix, message[0]])])
        with tf.control_dependencies([op]):
            return count, (~bad, image, labels)

    ds = ds.map(problem_of, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.scan(tf.constant(0, tf.int64), check)
    return ds.filter(lambda keep, image, labels: keep).map(
        lambda keep, image, labels: (image, labels)
    )


def _print_skips(prefix, messages, count):
    lines = tf.strings.join([prefix, "skipping ", messages])
    text = tf.strings.join(
        [
            tf.strings.reduce_join(lines, separator="\n"),
            " (",
            tf.strings.as_string(count),
            " skipped so far)",
        ]
    )
    return tf.print(text, output_stream=sys.stderr)


def _print_summary(prefix, count, total):
    text = tf.strings.join([prefix, "skipped ", tf.strings.as_string(count), f" of {total} files"])
    return tf.print(text, output_stream=sys.stderr)
