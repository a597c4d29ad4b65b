"""ScaleDigits: handwritten digits at very different sizes on real photographs.

A small, embedded segmentation dataset that stresses scale: every image holds
1 to 5 digits whose heights span more than 15x, so no single receptive field
suits every object. It needs no download: everything comes from files shipped
inside scikit-learn and scikit-image, and images are generated on the fly.

How an image is made (all randomness from a numpy Generator seeded by
``(image_seed, split, index)``, so the same arguments give byte-identical output):

1. **Background.** A random square crop of one of the photographs in
   `PHOTOS` (scikit-image's bundled images; grey ones are repeated to RGB),
   resized to ``image_size x image_size`` and randomly flipped.
2. **Digit shapes.** Real handwritten digits from ``sklearn.datasets.load_digits``
   (1,797 8x8 samples by 43 writers). Each 8x8 sample is upsampled bicubically,
   Gaussian-smoothed and thresholded into a smooth shape mask (at the highest
   level that keeps its strokes whole, so strokes stay thin), cropped to the
   ink and scaled to the drawn height (aspect ratio kept).
3. **Sizes.** Each digit draws a size bucket with equal probability, then a
   height log-uniformly inside the bucket. Heights lie in
   ``[image_size / 16, 0.98 * image_size]`` (12 to 188 px at 192 px, 15.7x).
   At most one digit per image is large (two would mostly hide each other), so
   about 36 % of digits are small, 43 % medium and 21 % large.
4. **Fill.** Each digit is filled with a texture cut from a *different*
   photograph, its contrast reduced, and its mean colour set to a random RGB
   colour at least `MIN_COLOR_DISTANCE` away from the mean colour of the image
   under the digit's box. The colour depends only on the background, never on
   the class, so colour does not give the class away, while a person can see
   every digit. (Unshifted photo textures camouflage the digits.)
5. **Placement.** Digits are pasted largest first, each at the least occupied
   of several random positions that keep it inside the image. A later digit
   overwrites earlier ones in the image, the label and the size map.

Classes: 11. Class 0 is ``"background"``, class ``d + 1`` is digit ``d``
(`CLASS_NAMES`). Labels hold no ignore pixels; `IGNORE_LABEL` is 255 as
everywhere in the package.

Splits: the 1,797 samples are partitioned once, stratified by digit, into
disjoint train / val / test sets (70 / 15 / 15 %, fixed, independent of the
seed); `split_sample_indices` returns them. Images of a split use only its
samples. Default image counts are `DEFAULT_NUM_IMAGES` (train 100,000, val
200, test 500, unseen 500); a fixed count makes evaluation deterministic.

Varieties and the "unseen" split. The rules above are ``variety="standard"``.
``variety="broad"`` (train / val / test) widens them: half the digits get a
flat, noisy colour instead of a texture; each digit's width is scaled by
0.75-1.33x and its strokes drawn as they are, 1 px bolder or 1 px thinner;
30 % of digits are cut by one border (10-50 % of the box outside); and
the whole image gets a random gain per channel, contrast and brightness.
The fourth split, ``"unseen"``, measures generalisation with what neither
variety ever uses: the photographs `UNSEEN_PHOTOS` (bundled with scikit-image,
never in `PHOTOS`), two-colour gradient fills, slanted digits (shear 0.25-0.5
either way), digits placed touching one another, and a blurred, noisy image
with another tone curve. It draws the test split's digit samples, with the
same sizes and counts as the other splits.

More small digits. Small digits hold 0.4% of a standard image's pixels, large
ones 9.6%. ``extra_small_digits=N`` (train / val / test) pastes 0 to N more
small digits after the others, from a random stream of their own, so the rest
of the image stays as it is without them.

Slanted digits. ``max_slant=m`` (train / val / test) slants each digit by a
shear drawn from [-m, m] (a stream of its own keeps the background, digit
count and heights of m = 0). The unseen split's slants are 0.25-0.5, so m
below 0.25 keeps them a rule training never shows.

Size buckets (`size_bucket`, by the height in px of the digit's mask):
``"small"`` below ``image_size / 6`` (32 px at 192), ``"large"`` above
``image_size / 2`` (96 px at 192), ``"medium"`` in between (inclusive). The
size map (``load(..., with_size_map=True)``) holds per pixel the bucket of the
digit that is visible there: 0 background, 1 small, 2 medium, 3 large. It is
nonzero exactly where the label is > 0.

Per-bucket mIoU (`size_bucket_confusion`, `size_bucket_miou`): for bucket b the
evaluation region is every pixel of a bucket-b digit plus every *background*
pixel within a margin of one (a square dilation); pixels of digits of other
buckets are left out. The margin is a quarter of the bucket's typical height
(the geometric mean of its bounds; 5 / 14 / 34 px at 192 px), so the region
is about as much context as object in every bucket and false positives next to
a digit count against it. The confusion matrix over that region (ignore pixels
excluded) gives the IoU of every class whose union is nonempty; their mean is
the bucket's mIoU. Predicted digits far from any ground-truth digit count only
in the overall mIoU.

Example:

```python
from keras_msattn.data import scale_digits

ds = scale_digits.load("train", image_seed=0, image_size=192)  # (image, label)
val = scale_digits.load("val", with_size_map=True)           # (image, label, size_map)
scale_digits.export_to_folder("digits_val", "val", n=200)
```
"""

import dataclasses
import functools
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from keras_msattn import files
from keras_msattn.data.base import DatasetInfo, ExtraScores
from keras_msattn.data.check import check_generated
from keras_msattn.inference import mean_iou

NAME = "scale_digits"
CLASS_NAMES = ("background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = 255
SPLITS = ("train", "val", "test", "unseen")
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}  # "unseen" draws test's digits
DEFAULT_NUM_IMAGES = {"train": 100_000, "val": 200, "test": 500, "unseen": 500}
VARIETIES = ("standard", "broad")
DEFAULT_IMAGE_SIZE = 192
SIZE_BUCKETS = ("small", "medium", "large")  # size-map values 1, 2, 3

# scikit-image photographs shipped inside the package (verified to load with no
# network). Background and digit texture always come from two different ones.
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "immunohistochemistry",
    "moon",
    "motorcycle",  # left view of skimage.data.stereo_motorcycle()
    "rocket",
)
# Bundled photographs that only the "unseen" split uses, never train / val / test.
UNSEEN_PHOTOS = ("cell", "clock", "hubble_deep_field", "retina")

# Heights and bucket thresholds as fractions of the image size.
MIN_HEIGHT_FRACTION = 1 / 16
MAX_HEIGHT_FRACTION = 0.98
SMALL_BELOW_FRACTION = 1 / 6
LARGE_ABOVE_FRACTION = 1 / 2
MIN_COLOR_DISTANCE = 110.0  # RGB Euclidean, between digit and background means
MIN_DIGITS, MAX_DIGITS = 1, 5
MAX_EXTRA_SMALL_DIGITS = 20  # `extra_small_digits`

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "unseen": 3}
_STREAM = 0x5CA1ED  # keeps these random streams apart from other uses of the seed
_EXTRA_SMALL_STREAM = 1  # the extra small digits' own stream, after the image's
_SLANT_STREAM = 2  # `max_slant`'s own stream, so the rest of the draws stay as they are
_GLYPH_SIZE = 80  # canonical resolution of a smoothed glyph, px
_GLYPH_SIGMA = 2.0
_GLYPH_THRESHOLDS = (0.65, 0.6, 0.55, 0.5, 0.45, 0.4)
_SMALL_THRESHOLDS = (0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2)
_PLACEMENT_TRIES = 20
_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class ScaleDigitsInfo(DatasetInfo):
    """`DatasetInfo` plus the default image size, image counts and size buckets."""

    eval_split: str = "test"

    image_size: int = DEFAULT_IMAGE_SIZE
    num_images: dict = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_NUM_IMAGES), hash=False
    )
    size_buckets: tuple = SIZE_BUCKETS


def info(data_dir=None, num_classes=None):
    """Returns the dataset's `ScaleDigitsInfo` (11 classes, ignore label 255).

    The arguments are the dataset interface's; ScaleDigits reads no files.
    """
    return ScaleDigitsInfo(NAME, NUM_CLASSES, CLASS_NAMES, IGNORE_LABEL, SPLITS)


def splits(data_dir=None):
    return SPLITS


# === Sources (loaded once per process) ===


@functools.cache
def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


@functools.cache
def _split_indices():
    # Stratified by digit, fixed for all seeds: the split is a property of the dataset.
    _, targets = _digits()
    rng = np.random.default_rng([_STREAM, 1797])
    parts = {split: [] for split in SPLIT_FRACTIONS}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(targets == digit))
        n_train = round(len(members) * SPLIT_FRACTIONS["train"])
        n_val = round(len(members) * SPLIT_FRACTIONS["val"])
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    return {split: np.sort(np.concatenate(p)) for split, p in parts.items()}


def split_sample_indices(split):
    """Indices into ``sklearn.datasets.load_digits()`` that `split` draws digits from
    ("unseen" draws the test split's)."""
    _check_split(split)
    return _split_indices()[_sample_split(split)].copy()


def _sample_split(split):
    return "test" if split == "unseen" else split


def load_photo(name):
    """One of `PHOTOS` or `UNSEEN_PHOTOS` as a uint8 RGB array (grey ones repeated to RGB)."""
    if name not in PHOTOS + UNSEEN_PHOTOS:
        raise ValueError(f"photo must be one of {PHOTOS + UNSEEN_PHOTOS}, got {name!r}")
    with _LOCK:
        return _load_photo_cached(name)


def _photo(name):
    """`load_photo(name)` as a PIL image, which crops without a copy through numpy."""
    with _LOCK:  # parallel tf.data workers may ask for the same photo at once
        return _photo_image_cached(name)


@functools.cache
def _photo_image_cached(name):
    return Image.fromarray(_load_photo_cached(name)).copy()  # a copy owns its pixels


@functools.cache
def _load_photo_cached(name):
    import skimage.data

    image = (
        skimage.data.stereo_motorcycle()[0]
        if name == "motorcycle"
        else getattr(skimage.data, name)()
    )
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)  # scipy's default connectivity


def _topology(mask):
    """(components, background regions incl. the outside) of a 2-D boolean mask."""
    from scipy.ndimage import label

    return (
        label(mask, structure=_CROSS)[1],
        label(np.pad(~mask, 1, constant_values=True), structure=_CROSS)[1],
    )


@functools.cache
def _glyph(sample_index):
    """Smooth soft map of one digit sample cropped to its ink, and its threshold."""
    from scipy.ndimage import gaussian_filter

    images, _ = _digits()
    padded = np.pad(images[sample_index], 1)
    soft = np.asarray(
        Image.fromarray(padded, mode="F").resize((_GLYPH_SIZE, _GLYPH_SIZE), Image.BICUBIC)
    )
    soft = gaussian_filter(soft, _GLYPH_SIGMA)
    soft = soft / soft.max()
    # The highest threshold that keeps the strokes' topology: thin strokes, no breaks.
    reference = _topology(soft >= _GLYPH_THRESHOLDS[-1])
    threshold = next(t for t in _GLYPH_THRESHOLDS if _topology(soft >= t) == reference)
    rows = np.flatnonzero((soft >= threshold).any(axis=1))
    cols = np.flatnonzero((soft >= threshold).any(axis=0))
    return np.ascontiguousarray(soft[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]), threshold


@functools.cache
def _glyph_topology(sample_index):
    """`_topology` of the thresholded glyph: what a shrunk digit's mask must keep."""
    glyph, threshold = _glyph(sample_index)
    return _topology(glyph >= threshold)


# === Sizes ===


def height_range(image_size=DEFAULT_IMAGE_SIZE):
    """(min, max) digit height in px for `image_size` (12, 188.16 at 192)."""
    return image_size * MIN_HEIGHT_FRACTION, image_size * MAX_HEIGHT_FRACTION


def size_thresholds(image_size=DEFAULT_IMAGE_SIZE):
    """(small_below, large_above) heights in px: (32, 96) at 192."""
    return image_size * SMALL_BELOW_FRACTION, image_size * LARGE_ABOVE_FRACTION


def size_bucket(height, image_size=DEFAULT_IMAGE_SIZE):
    """Size-map value of a digit `height` px tall: 1 small, 2 medium, 3 large."""
    small_below, large_above = size_thresholds(image_size)
    if height < small_below:
        return 1
    return 3 if height > large_above else 2


def bucket_margins(image_size=DEFAULT_IMAGE_SIZE):
    """Background margin in px around the digits of each bucket (evaluation region)."""
    low, high = height_range(image_size)
    small_below, large_above = size_thresholds(image_size)
    bounds = ((low, small_below), (small_below, large_above), (large_above, high))
    return tuple(max(1, round(0.25 * np.sqrt(a * b))) for a, b in bounds)


def _draw_heights(rng, count, image_size):
    # Equal-probability buckets, log-uniform inside; at most one large digit, since
    # two would mostly hide each other.
    low, high = height_range(image_size)
    small_below, large_above = size_thresholds(image_size)
    bounds = ((low, small_below), (small_below, large_above), (large_above, high))
    heights = []
    for _ in range(count):
        bucket = int(rng.integers(2 if len(heights) and max(heights) > large_above else 3))
        heights.append(_log_uniform(rng, *bounds[bucket]))
    return sorted(heights, reverse=True)


def _log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# === Generation ===


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _check_args(image_seed, image_size):
    if (
        isinstance(image_seed, bool)
        or not isinstance(image_seed, (int, np.integer))
        or image_seed < 0
    ):
        raise ValueError(f"image_seed must be a non-negative integer, got {image_seed!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be an integer, got {image_size!r}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64, got {image_size}")


def _random_crop(rng, photo, side, out_w, out_h):
    w, h = photo.size
    side_h, side_w = min(side[0], h), min(side[1], w)
    top = int(rng.integers(0, h - side_h + 1))
    left = int(rng.integers(0, w - side_w + 1))
    crop = photo.crop((left, top, left + side_w, top + side_h))
    return np.asarray(crop.resize((out_w, out_h), Image.BILINEAR))


def _background(rng, photo, image_size):
    w, h = photo.size
    side = int(rng.uniform(0.35, 1.0) * min(h, w))
    image = _random_crop(rng, photo, (side, side), image_size, image_size)
    return image[:, ::-1] if rng.random() < 0.5 else image


def _digit_mask(sample_index, height, width_factor=1.0, slant=0.0):
    glyph, threshold = _glyph(sample_index)
    scale = height / glyph.shape[0]
    out_h = max(2, round(glyph.shape[0] * scale))
    out_w = max(2, round(glyph.shape[1] * scale * width_factor))
    soft = np.asarray(Image.fromarray(glyph, mode="F").resize((out_w, out_h), Image.BILINEAR))
    if slant:
        # x_in = x_out + slant * y_out - offset: rows shift by `slant` px per px of height.
        extra = int(np.ceil(abs(slant) * out_h))
        offset = max(slant, 0.0) * out_h
        soft = np.asarray(
            Image.fromarray(soft, mode="F").transform(
                (out_w + extra, out_h), Image.AFFINE, (1, slant, -offset, 0, 1, 0), Image.BILINEAR
            )
        )
    mask = soft >= threshold
    if scale < 1.0:
        # Shrinking averages thin strokes below the threshold: lower it until the
        # strokes are whole again (same components and holes, else same components).
        target = _glyph_topology(sample_index)
        chosen = connected = None
        for t in (t for t in _SMALL_THRESHOLDS if t <= threshold):
            topology = _topology(soft >= t)
            if topology == target:
                chosen = t
                break
            if connected is None and topology[0] == target[0]:
                connected = t
        chosen = chosen or connected or _SMALL_THRESHOLDS[-1]
        mask = soft >= chosen
    return _crop_to_ink(mask)


def _target_color(rng, reference):
    # Uniform in a cube with headroom for the texture; colour is independent of the class.
    best, best_distance = None, -1.0
    for _ in range(64):
        color = rng.uniform(30.0, 225.0, size=3)
        distance = float(np.linalg.norm(color - reference))
        if distance >= MIN_COLOR_DISTANCE:
            return color
        if distance > best_distance:
            best, best_distance = color, distance
    return best


# === Rules: how the images of a split are drawn ===


@dataclasses.dataclass(frozen=True)
class _Rules:
    photos: tuple  # backgrounds, and fill textures (always another photo than the background)
    fills: tuple  # each digit draws one: "texture", "flat" or "gradient"
    rendering: str  # "smooth", "varied" (stroke width, aspect ratio) or "slanted"
    placement: str  # "inside", "inside_or_cut" (cut by the border) or "touching"
    photometric: str  # "none", "jitter" (gain, contrast, brightness) or "blur_noise"


# "unseen" uses photographs, fills, a rendering, a placement and a photometric
# change that neither variety of train / val / test ever uses.
_RULES = {
    "standard": _Rules(PHOTOS, ("texture",), "smooth", "inside", "none"),
    "broad": _Rules(PHOTOS, ("texture", "flat"), "varied", "inside_or_cut", "jitter"),
    "unseen": _Rules(UNSEEN_PHOTOS, ("gradient",), "slanted", "touching", "blur_noise"),
}
_CUT_PROBABILITY = 0.3  # "inside_or_cut": share of digits cut by the border


def _rules(split, variety):
    if variety not in VARIETIES:
        raise ValueError(f"variety must be one of {VARIETIES}, got {variety!r}")
    if split == "unseen":
        if variety != "standard":
            raise ValueError(
                "the 'unseen' split has fixed rules of its own; `variety` applies to "
                f"train / val / test only, got variety={variety!r}"
            )
        return _RULES["unseen"]
    return _RULES[variety]


def _render(rng, rendering, sample_index, height, slant=0.0, max_width=None):
    """The digit's mask and its slant (shear); `slant` applies to "smooth" and
    "varied", while "slanted" draws its own from `rng`. A mask wider than
    `max_width` (a wide glyph widened or slanted) is drawn narrower until it fits."""
    width_factor, stroke = 1.0, 0
    if rendering == "varied":
        width_factor = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
        stroke = int(rng.integers(3))  # as drawn, 1 px bolder, or 1 px thinner
    elif rendering == "slanted":
        slant = float(rng.uniform(0.25, 0.5) * rng.choice((-1.0, 1.0)))
    mask = _stroked(_digit_mask(sample_index, height, width_factor, slant), stroke, height)
    for _ in range(8):
        if max_width is None or mask.shape[1] <= max_width:
            return mask, slant
        width_factor *= 0.95 * max_width / mask.shape[1]
        mask = _stroked(_digit_mask(sample_index, height, width_factor, slant), stroke, height)
    return _digit_mask(sample_index, height, 0.9 * width_factor * max_width / mask.shape[1]), 0.0


def _stroked(mask, stroke, height):
    """The mask as drawn (0), 1 px bolder (1) or 1 px thinner (2), where it is large enough."""
    if stroke == 1 and height >= 24:
        return _pad_dilate(mask)
    if stroke == 2 and height >= 48:
        from scipy.ndimage import binary_erosion

        thinner = binary_erosion(mask)
        return _crop_to_ink(thinner) if thinner.any() else mask
    return mask


def _pad_dilate(mask):
    from scipy.ndimage import binary_dilation

    return binary_dilation(np.pad(mask, 1))


def _crop_to_ink(mask):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _visible(top, left, h, w, image_size):
    """(image box, mask box) slices of the part of an h x w box inside the image."""
    t, b = max(top, 0), min(top + h, image_size)
    lft, r = max(left, 0), min(left + w, image_size)
    return (slice(t, b), slice(lft, r)), (slice(t - top, b - top), slice(lft - left, r - left))


def _least_occupied(rng, label, mask, image_size, candidates):
    """The candidate (top, left) whose visible ink covers the fewest labelled pixels."""
    h, w = mask.shape
    best = None
    for _ in range(_PLACEMENT_TRIES):
        top, left = candidates()
        image_box, mask_box = _visible(top, left, h, w, image_size)
        overlap = np.count_nonzero(label[image_box][mask[mask_box]])
        if best is None or overlap < best[0]:
            best = (overlap, top, left)
        if overlap == 0:
            break
    return best[1], best[2]


def _place(rng, placement, label, mask, image_size, placed):
    h, w = mask.shape

    def inside():
        return int(rng.integers(0, image_size - h + 1)), int(rng.integers(0, image_size - w + 1))

    if placement == "inside":
        return _least_occupied(rng, label, mask, image_size, inside)
    if placement == "inside_or_cut":
        if rng.random() >= _CUT_PROBABILITY:
            return _least_occupied(rng, label, mask, image_size, inside)

        def cut():  # 10-50 % of the box lies past one of the four borders
            top, left = inside()
            side = int(rng.integers(4))
            length = h if side < 2 else w
            outside = max(1, round(rng.uniform(0.1, 0.5) * length))
            if side == 0:
                return -outside, left
            if side == 1:
                return image_size - h + outside, left
            return top, (-outside if side == 2 else image_size - w + outside)

        return _least_occupied(rng, label, mask, image_size, cut)
    # "touching": next to a digit already placed (0-1 px apart), else anywhere inside.
    if not placed:
        return _least_occupied(rng, label, mask, image_size, inside)

    def touching():
        other = placed[int(rng.integers(len(placed)))]
        gap = int(rng.integers(2))
        side = int(rng.integers(4))
        if side < 2:  # left or right of it, anywhere along its height
            top = other["top"] + int(rng.integers(-h + 1, other["height"]))
            left = other["left"] - w - gap if side == 0 else other["left"] + other["width"] + gap
        else:  # above or below it
            left = other["left"] + int(rng.integers(-w + 1, other["width"]))
            top = other["top"] - h - gap if side == 2 else other["top"] + other["height"] + gap
        if 0 <= top <= image_size - h and 0 <= left <= image_size - w:
            return top, left
        return inside()

    return _least_occupied(rng, label, mask, image_size, touching)


def _fill(rng, rule, mask, reference, texture_photo):
    """RGB values for the digit's ink pixels, and their mean colour."""
    h, w = mask.shape
    if rule == "texture":
        # Texture from another photograph, re-coloured away from what lies under the digit.
        side = int(rng.uniform(0.15, 0.6) * min(texture_photo.size))
        texture = _random_crop(rng, texture_photo, (side, max(1, side * w // h)), w, h)
        texture = texture[mask].astype(np.float32)
        color = _target_color(rng, reference)
        contrast = rng.uniform(0.3, 0.6)
        return (texture - texture.mean(axis=0)) * contrast + color, color
    color = _target_color(rng, reference)
    count = int(mask.sum())
    if rule == "flat":
        return color + rng.normal(0.0, rng.uniform(2.0, 12.0), size=(count, 3)), color
    # "gradient": a linear ramp between two colours, both far from the background.
    other = _target_color(rng, reference)
    angle = rng.uniform(0.0, 2 * np.pi)
    rows, cols = np.nonzero(mask)
    ramp = rows / max(h - 1, 1) * np.sin(angle) + cols / max(w - 1, 1) * np.cos(angle)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    fill = color + ramp[:, None] * (other - color) + rng.normal(0.0, 3.0, size=(count, 3))
    return fill, (color + other) / 2


def _photometric(rng, rule, image):
    if rule == "none":
        return image
    if rule == "jitter":
        mean = image.mean()
        image = (image - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-20.0, 20.0)
        return image * rng.uniform(0.85, 1.15, size=3)
    # "blur_noise": a soft lens, sensor noise and another tone curve.
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(image, sigma=(rng.uniform(0.4, 0.9),) * 2 + (0,))
    image = image + rng.normal(0.0, rng.uniform(3.0, 8.0), size=image.shape)
    gamma = rng.uniform(0.7, 1.4)
    return 255.0 * (np.clip(image, 0.0, 255.0) / 255.0) ** gamma


def _paste_digit(rng, rules, canvas, height, samples, background_id, digits, slant=0.0):
    """Draws one digit `height` px tall (slanted by `slant` where the rendering
    takes it), pastes it into `canvas` (image, label, size map; a later digit
    overwrites earlier ones) and appends its record."""
    image, label, size_map = canvas
    image_size = label.shape[0]
    photos = rules.photos
    _, targets = _digits()
    sample_index = int(samples[rng.integers(len(samples))])
    mask, slant = _render(rng, rules.rendering, sample_index, height, slant, image_size)
    h, w = mask.shape
    # The least occupied of a few positions, so small digits are rarely hidden.
    top, left = _place(rng, rules.placement, label, mask, image_size, digits)
    box, mask_box = _visible(top, left, h, w, image_size)

    fills = rules.fills
    fill_rule = fills[int(rng.integers(len(fills)))] if len(fills) > 1 else fills[0]
    texture_photo = None
    if fill_rule == "texture":
        texture_id = int(rng.integers(len(photos) - 1))
        texture_photo = _photo(photos[texture_id + (texture_id >= background_id)])
    reference = image[box].reshape(-1, 3).mean(axis=0)
    fill, color = _fill(rng, fill_rule, mask, reference, texture_photo)

    visible = mask[mask_box]  # the ink inside the image (all of it unless cut)
    if visible.shape != mask.shape:  # cut by the border: the fill of the ink inside
        inside = np.zeros(mask.shape, bool)
        inside[mask_box] = True
        fill = fill[inside[mask]]
    image[box][visible] = fill
    digit = int(targets[sample_index])
    label[box][visible] = digit + 1
    bucket = size_bucket(h, image_size)
    size_map[box][visible] = bucket
    digits.append(
        {
            "sample_index": sample_index,
            "digit": digit,
            "height": h,
            "width": w,
            "bucket": bucket,
            "slant": slant,
            "top": top,
            "left": left,
            "fill": fill_rule,
            "color": tuple(float(c) for c in color),
            "background_color": tuple(float(c) for c in reference),
        }
    )


def _check_extra_small_digits(split, extra_small_digits):
    if (
        isinstance(extra_small_digits, bool)
        or not isinstance(extra_small_digits, (int, np.integer))
        or not 0 <= extra_small_digits <= MAX_EXTRA_SMALL_DIGITS
    ):
        raise ValueError(
            f"extra_small_digits must be an integer in [0, {MAX_EXTRA_SMALL_DIGITS}], "
            f"got {extra_small_digits!r}"
        )
    if extra_small_digits and split == "unseen":
        raise ValueError(
            "the 'unseen' split has fixed rules of its own; `extra_small_digits` applies "
            "to train / val / test only"
        )


def _check_max_slant(split, max_slant):
    if (
        isinstance(max_slant, bool)
        or not isinstance(max_slant, (int, float, np.integer, np.floating))
        or not 0 <= max_slant < 1
    ):
        raise ValueError(f"max_slant must be a number in [0, 1), got {max_slant!r}")
    if max_slant and split == "unseen":
        raise ValueError(
            "the 'unseen' split has fixed rules of its own; `max_slant` applies to "
            "train / val / test only"
        )


def generate(
    split,
    index,
    *,
    image_seed=0,
    image_size=DEFAULT_IMAGE_SIZE,
    variety="standard",
    extra_small_digits=0,
    max_slant=0.0,
):
    """One ScaleDigits example, as numpy arrays.

    Args:
        split: "train", "val", "test" or "unseen".
        index: non-negative image index within the split.
        image_seed: non-negative integer choosing which images the split holds;
            the same (image_seed, split, index, image_size, variety,
            extra_small_digits) gives byte-identical output.
        image_size: side of the square image in px.
        variety: "standard" (the module docstring's rules) or "broad" (more
            fills, renderings, placements and photometric jitter; see `_RULES`),
            for train / val / test. "unseen" has rules of its own.
        extra_small_digits: up to this many more small digits (0 to the number,
            uniformly) pasted after the others, for train / val / test. Small
            digits hold 0.4% of the standard images' pixels; this gives training
            more of them. The extra digits draw from a random stream of their
            own, so the rest of the image is what it is with 0, except where an
            extra digit covers it (and, in the broad variety, through the
            contrast jitter, which centres on the image's mean).
        max_slant: slants each digit by a shear (px of sideways shift per px of
            height) drawn uniformly from [-max_slant, max_slant], for train / val
            / test; default 0, upright. The unseen split slants by 0.25-0.5, so a
            value below 0.25 keeps its slants outside training. The slants draw
            from a stream of their own, so the background, the number of digits
            and their heights are those of 0; a slanted digit is wider, so the
            draws after it (its place, its fill, the next digit) can differ.

    Returns:
        ``(image, label, size_map, digits)``: uint8 (S, S, 3), int32 (S, S) with
        values 0..10, uint8 (S, S) with values 0..3, and one dict per pasted digit
        in paste order with keys ``sample_index``, ``digit``, ``height``,
        ``width``, ``bucket`` (1..3), ``slant``, ``top``, ``left`` (negative
        when cut by the border), ``fill``, ``color`` and ``background_color``
        (mean RGB of the image under its box before pasting).
    """
    _check_split(split)
    _check_args(image_seed, image_size)
    _check_extra_small_digits(split, extra_small_digits)
    _check_max_slant(split, max_slant)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    rules = _rules(split, variety)
    stream = [_STREAM, int(image_seed), _SPLIT_IDS[split], int(index)]
    rng = np.random.default_rng(stream)
    samples = _split_indices()[_sample_split(split)]

    background_id = int(rng.integers(len(rules.photos)))
    image = _background(rng, _photo(rules.photos[background_id]), image_size).astype(np.float32)
    label = np.zeros((image_size, image_size), np.int32)
    size_map = np.zeros((image_size, image_size), np.uint8)
    canvas = (image, label, size_map)

    slant_rng = np.random.default_rng([*stream, _SLANT_STREAM]) if max_slant else None

    def slant():
        return float(slant_rng.uniform(-max_slant, max_slant)) if max_slant else 0.0

    count = int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
    digits = []
    for height in _draw_heights(rng, count, image_size):
        _paste_digit(rng, rules, canvas, height, samples, background_id, digits, slant())
    if extra_small_digits:
        extra_rng = np.random.default_rng([*stream, _EXTRA_SMALL_STREAM])
        small = height_range(image_size)[0], size_thresholds(image_size)[0]
        for _ in range(int(extra_rng.integers(extra_small_digits + 1))):
            height = _log_uniform(extra_rng, *small)
            _paste_digit(extra_rng, rules, canvas, height, samples, background_id, digits, slant())
    image = _photometric(rng, rules.photometric, image)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, label, size_map, digits


# === tf.data ===


def load(
    split,
    data_dir=None,
    skip_bad=False,
    shuffle=False,
    seed=None,
    num_classes=None,
    *,
    image_seed=0,
    image_size=DEFAULT_IMAGE_SIZE,
    num_images=None,
    with_size_map=False,
    variety="standard",
    extra_small_digits=0,
    max_slant=0.0,
):
    """ScaleDigits `split` as an unbatched, lazily generated ``tf.data.Dataset``.

    Args:
        split: "train", "val", "test" or "unseen" (photographs and rules that
            train / val / test never use, to measure generalisation).
        data_dir, skip_bad, num_classes: the dataset interface's; unused (nothing
            is read from disk, so there are no files to skip).
        shuffle: a new order of the images on every pass (seeded by `seed`);
            default: index order.
        seed: the shuffle seed.
        image_seed: non-negative integer choosing which images the split holds;
            the same image_seed gives byte-identical images and labels.
        image_size: side of the square images in px (default 192). Train with a
            crop size no larger than this.
        num_images: images in the split; default `DEFAULT_NUM_IMAGES[split]`
            (train 100,000, val 200, test 500). Unshuffled, element ``i`` is image ``i``.
        with_size_map: also yield the uint8 size map (0 background, 1 small,
            2 medium, 3 large) for per-bucket evaluation.
        variety: "standard" or "broad" (`generate`); train / val / test only.
        extra_small_digits: up to this many more small digits per image
            (`generate`); train / val / test only. Default 0.
        max_slant: each digit slanted by a shear in [-max_slant, max_slant]
            (`generate`); train / val / test only. Default 0.

    Returns:
        A dataset of ``(image uint8 (S, S, 3), label int32 (S, S))``, or of
        ``(image, label, size_map uint8 (S, S))`` with `with_size_map`
        (parallel generation, deterministic order).
    """
    import tensorflow as tf

    del data_dir, skip_bad, num_classes
    _check_split(split)
    _check_args(image_seed, image_size)
    # Bad options fail here, not in a tf.data worker.
    _rules(split, variety)
    _check_extra_small_digits(split, extra_small_digits)
    _check_max_slant(split, max_slant)
    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES[split]
    if (
        isinstance(num_images, bool)
        or not isinstance(num_images, (int, np.integer))
        or num_images < 1
    ):
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    image_seed, image_size = int(image_seed), int(image_size)

    def make(index):
        image, label, size_map, _ = generate(
            split, int(index), image_seed=image_seed, image_size=image_size,
            variety=variety, extra_small_digits=extra_small_digits, max_slant=max_slant,
        )  # fmt: skip
        return (image, label, size_map) if with_size_map else (image, label)

    types = (tf.uint8, tf.int32, tf.uint8) if with_size_map else (tf.uint8, tf.int32)

    def to_example(index):
        outputs = tf.numpy_function(make, [index], types, stateful=False)
        outputs[0].set_shape((image_size, image_size, 3))
        for tensor in outputs[1:]:
            tensor.set_shape((image_size, image_size))
        return tuple(outputs)

    indices = tf.data.Dataset.range(int(num_images))
    if shuffle:
        # The indices only (8 bytes each): a full permutation, new on every pass.
        indices = indices.shuffle(int(num_images), seed=seed, reshuffle_each_iteration=True)
    return indices.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def check(split, data_dir=None, num_classes=None, progress=True, **options):
    """Checks every generated example of `split` (`keras_msattn.data.check.CheckResult`)."""
    dataset = load(split, **options)
    return check_generated(dataset, f"{NAME}/{split}", num_classes or NUM_CLASSES, progress)


class SizeBucketScores(ExtraScores):
    """mIoU over the small, medium and large digits (`miou_small`, ...)."""

    load_options = {"with_size_map": True}

    def __init__(self, num_classes=NUM_CLASSES, ignore_label=IGNORE_LABEL):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.confusion = np.zeros((len(SIZE_BUCKETS), num_classes, num_classes), np.int64)

    def update(self, label, prediction, extras):
        if not extras:
            raise ValueError(
                "ScaleDigits' size buckets need (image, label, size_map) examples, e.g. "
                "scale_digits.load(split, with_size_map=True)."
            )
        self.confusion += size_bucket_confusion(
            label,
            prediction,
            extras[0],
            num_classes=self.num_classes,
            image_size=label.shape[0],
            ignore_label=self.ignore_label,
        )

    def result(self):
        scores = {}
        for b, name in enumerate(SIZE_BUCKETS):
            miou = mean_iou(self.confusion[b], empty=float("nan"))
            scores[f"miou_{name}"] = None if np.isnan(miou) else miou
        return scores


def extra_scores():
    return SizeBucketScores()


# === Folder export ===


def _write_png(array, path):
    Image.fromarray(array).save(path, format="PNG")


def export_to_folder(
    out_dir, split, n, image_seed=0, image_size=DEFAULT_IMAGE_SIZE, overwrite=False
):
    """Writes `n` images of `split` as a folder dataset, atomically.

    Layout (the flat layout of `keras_msattn.data.folder`, read with split
    "all"): ``out_dir/images/{split}_{i:06d}.png`` (RGB),
    ``out_dir/masks/{split}_{i:06d}.png`` (8-bit grayscale, value = class index)
    and ``out_dir/classes.txt`` (one class name a line, class 0 first). Everything
    is written into a temporary sibling folder that is renamed into place at the
    end, so `out_dir` either is complete or does not appear.

    Returns:
        The `out_dir` Path.
    """
    _check_split(split)
    _check_args(image_seed, image_size)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"out_dir {str(out_dir)!r} already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with files.staged_directory(out_dir) as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        (tmp / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
        for i in range(int(n)):
            image, label, _, _ = generate(split, i, image_seed=image_seed, image_size=image_size)
            stem = f"{split}_{i:06d}"
            _write_png(image, tmp / "images" / f"{stem}.png")
            _write_png(label.astype(np.uint8), tmp / "masks" / f"{stem}.png")
        files.commit(str(tmp), str(out_dir))
    return out_dir


# === Per-bucket evaluation ===


def size_bucket_confusion(
    labels,
    predictions,
    size_maps,
    *,
    num_classes=NUM_CLASSES,
    image_size=DEFAULT_IMAGE_SIZE,
    ignore_label=IGNORE_LABEL,
):
    """Confusion matrices of the small / medium / large evaluation regions.

    Args:
        labels, predictions: int arrays (H, W) or (N, H, W) of class indices.
        size_maps: uint8 size maps of the same shape (0 background, 1..3 buckets).
        image_size: the size the images were generated at; sets the margins.

    Returns:
        int64 array (3, num_classes, num_classes): ``[b, true, predicted]`` pixel
        counts over bucket ``b + 1``'s region (see the module docstring).
    """
    from scipy.ndimage import maximum_filter

    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    size_maps = np.asarray(size_maps)
    if labels.shape != predictions.shape or labels.shape != size_maps.shape:
        raise ValueError(
            "labels, predictions and size_maps must have the same shape, got "
            f"{labels.shape}, {predictions.shape}, {size_maps.shape}"
        )
    if labels.ndim == 2:
        labels, predictions, size_maps = labels[None], predictions[None], size_maps[None]
    if labels.ndim != 3:
        raise ValueError(f"labels must be (H, W) or (N, H, W), got shape {labels.shape}")
    confusion = np.zeros((3, num_classes, num_classes), np.int64)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    predictions = np.clip(predictions, 0, num_classes - 1).astype(np.int64)
    for b, margin in enumerate(bucket_margins(image_size)):
        in_bucket = size_maps == b + 1
        near = maximum_filter(in_bucket, size=(1, 2 * margin + 1, 2 * margin + 1))
        region = valid & (in_bucket | (near & (labels == 0)))
        flat = labels[region].astype(np.int64) * num_classes + predictions[region]
        confusion[b] = np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)
    return confusion


def size_bucket_miou(labels, predictions, size_maps, **kwargs):
    """``{"small": mIoU, "medium": mIoU, "large": mIoU}``; kwargs as `size_bucket_confusion`.

    To evaluate a whole split, sum `size_bucket_confusion` over batches and apply
    `keras_msattn.inference.mean_iou` to each bucket instead.
    """
    confusion = size_bucket_confusion(labels, predictions, size_maps, **kwargs)
    return {name: mean_iou(confusion[b], empty=float("nan")) for b, name in enumerate(SIZE_BUCKETS)}
