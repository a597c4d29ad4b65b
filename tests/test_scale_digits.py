import hashlib
import socket
import time

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from keras_msattn.data import scale_digits as sd


@pytest.fixture(scope="module")
def val_examples():
    return [sd.generate("val", i, image_seed=0) for i in range(200)]


def _digits_of(examples):
    return [d for _, _, _, digits in examples for d in digits]


def test_photos_load_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    sd._load_photo_cached.cache_clear()
    assert not set(sd.PHOTOS) & set(sd.UNSEEN_PHOTOS)
    for name in sd.PHOTOS + sd.UNSEEN_PHOTOS:
        photo = sd.load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
        assert min(photo.shape[:2]) >= 256, name
        assert photo.std() > 10, name
    with pytest.raises(ValueError, match="photo"):
        sd.load_photo("lena")


def test_info():
    from keras_msattn.data.datasets import DatasetInfo, dataset_info

    info = sd.info()
    assert isinstance(info, DatasetInfo) and info.name == "scale_digits"
    assert dataset_info("scale_digits") == info
    assert info.num_classes == 11
    assert info.class_names == ("background",) + tuple(str(d) for d in range(10))
    assert info.ignore_label == 255
    assert info.splits == ("train", "val", "test", "unseen")
    assert info.image_size == 192
    assert info.num_images == {"train": 100_000, "val": 200, "test": 500, "unseen": 500}


def test_splits_are_disjoint_stratified_and_fixed():
    parts = {split: sd.split_sample_indices(split) for split in ("train", "val", "test")}
    # The generalisation split draws the test split's digits: none seen in training.
    np.testing.assert_array_equal(sd.split_sample_indices("unseen"), parts["test"])
    all_indices = np.concatenate(list(parts.values()))
    assert len(all_indices) == len(np.unique(all_indices)) == 1797
    assert {s: len(p) for s, p in parts.items()} == {"train": 1258, "val": 269, "test": 270}
    _, targets = sd._digits()
    for indices in parts.values():
        assert set(targets[indices]) == set(range(10))
    np.testing.assert_array_equal(parts["val"], sd.split_sample_indices("val"))


def test_images_use_only_their_split_samples():
    _, targets = sd._digits()
    for split in sd.SPLITS:
        allowed = set(sd.split_sample_indices(split).tolist())
        for i in range(25):
            _, _, _, digits = sd.generate(split, i, image_seed=4)
            for d in digits:
                assert d["sample_index"] in allowed
                assert d["digit"] == targets[d["sample_index"]]


def test_deterministic_by_seed():
    a = sd.generate("train", 7, image_seed=1)
    b = sd.generate("train", 7, image_seed=1)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[3] == b[3]
    other_seed = sd.generate("train", 7, image_seed=2)
    other_index = sd.generate("train", 8, image_seed=1)
    other_split = sd.generate("val", 7, image_seed=1)
    for other in (other_seed, other_index, other_split):
        assert not np.array_equal(a[0], other[0])


def test_tf_data_shapes_dtypes_and_determinism():
    import tensorflow as tf

    ds = sd.load("test", image_seed=3, num_images=4)
    assert ds.cardinality().numpy() == 4
    image_spec, label_spec = ds.element_spec
    assert image_spec.shape == (192, 192, 3) and image_spec.dtype == tf.uint8
    assert label_spec.shape == (192, 192) and label_spec.dtype == tf.int32
    first = [(image.numpy(), label.numpy()) for image, label in ds]
    second = [
        (image.numpy(), label.numpy())
        for image, label in sd.load("test", image_seed=3, num_images=4)
    ]
    for k, ((image, label), (image2, label2)) in enumerate(zip(first, second, strict=True)):
        expected = sd.generate("test", k, image_seed=3)
        np.testing.assert_array_equal(image, expected[0])
        np.testing.assert_array_equal(label, expected[1])
        assert image.tobytes() == image2.tobytes() and label.tobytes() == label2.tobytes()
    other = next(iter(sd.load("test", image_seed=4, num_images=1)))[0].numpy()
    assert not np.array_equal(other, first[0][0])

    with_map = sd.load("val", image_size=128, num_images=2, with_size_map=True)
    specs = with_map.element_spec
    assert [s.shape for s in specs] == [(128, 128, 3), (128, 128), (128, 128)]
    assert [s.dtype for s in specs] == [tf.uint8, tf.int32, tf.uint8]
    image, label, size_map = next(iter(with_map))
    np.testing.assert_array_equal(size_map.numpy(), sd.generate("val", 0, image_size=128)[2])
    assert sd.load("train").cardinality().numpy() == sd.DEFAULT_NUM_IMAGES["train"] == 100_000
    assert sd.load("val").cardinality().numpy() == 200


def test_label_range_and_class_coverage(val_examples):
    labels = np.stack([label for _, label, _, _ in val_examples])
    assert labels.dtype == np.int32
    assert labels.min() == 0 and labels.max() <= 10
    counts = np.bincount(labels.ravel(), minlength=11)
    assert counts[0] / counts.sum() > 0.5
    assert (counts[1:] > 0).all()
    images_with = [sum((label == c).any() for _, label, _, _ in val_examples) for c in range(11)]
    assert min(images_with[1:]) >= 10, images_with


def test_size_distribution(val_examples):
    digits = _digits_of(val_examples)
    heights = np.array([d["height"] for d in digits])
    buckets = np.array([d["bucket"] for d in digits])
    assert len(digits) >= 300
    assert heights.max() / heights.min() >= 15
    low, high = sd.height_range(192)
    assert heights.min() >= low - 1 and heights.max() <= high
    shares = np.bincount(buckets, minlength=4)[1:] / len(buckets)
    assert (shares >= 0.15).all(), shares
    assert sd.size_thresholds(192) == (32, 96)
    assert [sd.size_bucket(h) for h in (12, 31, 32, 96, 97, 188)] == [1, 1, 2, 2, 3, 3]
    for d in digits:
        assert d["bucket"] == sd.size_bucket(d["height"])
    counts = [len(digits) for _, _, _, digits in val_examples]
    assert min(counts) == 1 and max(counts) == 5
    # Larger images scale the range with them.
    for _, _, _, digits in (sd.generate("val", i, image_size=256) for i in range(20)):
        assert all(16 - 1 <= d["height"] <= 0.98 * 256 for d in digits)


def test_size_map_agrees_with_label(val_examples):
    for _, label, size_map, digits in val_examples:
        assert size_map.dtype == np.uint8
        np.testing.assert_array_equal(size_map > 0, label > 0)
        assert size_map.max() <= 3
        # The last digit pasted is fully visible: its pixels carry its class and bucket.
        last = digits[-1]
        if any(d["digit"] == last["digit"] for d in digits[:-1]):
            continue
        box = label[
            last["top"] : last["top"] + last["height"], last["left"] : last["left"] + last["width"]
        ]
        mask = box == last["digit"] + 1
        assert mask.any(axis=1)[[0, -1]].all()  # spans the full height
        sizes = size_map[
            last["top"] : last["top"] + last["height"], last["left"] : last["left"] + last["width"]
        ]
        assert (sizes[mask] == last["bucket"]).all()


def test_digits_differ_in_colour_from_surroundings_but_colour_is_not_the_class(val_examples):
    distances, colours, classes = [], [], []
    for image, label, _, _ in val_examples:
        pixels = image.astype(np.float64)
        for c in np.unique(label[label > 0]):
            mask = label == c
            ring = binary_dilation(mask, iterations=3) & (label == 0)
            if ring.sum() < 20:
                continue
            colour = pixels[mask].mean(axis=0)
            distances.append(np.linalg.norm(colour - pixels[ring].mean(axis=0)))
            colours.append(colour)
            classes.append(c)
    distances, colours, classes = np.array(distances), np.array(colours), np.array(classes)
    assert len(distances) >= 300
    assert distances.mean() > 100, distances.mean()
    assert np.percentile(distances, 10) > 60
    # Class explains almost none of the digits' colour variance.
    class_means = np.stack([colours[classes == c].mean(axis=0) for c in range(1, 11)])
    between = sum(
        (classes == c).sum() * np.sum((class_means[c - 1] - colours.mean(axis=0)) ** 2)
        for c in range(1, 11)
    )
    total = np.sum((colours - colours.mean(axis=0)) ** 2)
    assert between / total < 0.05, between / total


def test_export_to_folder(tmp_path):
    out = sd.export_to_folder(tmp_path / "digits", "val", 3, image_seed=2, image_size=128)
    assert out == tmp_path / "digits"
    assert (out / "classes.txt").read_text().splitlines() == list(sd.CLASS_NAMES)
    images = sorted(p.stem for p in (out / "images").glob("*.png"))
    masks = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert images == masks == ["val_000000", "val_000001", "val_000002"]
    for i, stem in enumerate(images):
        image, label, _, _ = sd.generate("val", i, image_seed=2, image_size=128)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / f"{stem}.png")), image)
        mask = Image.open(out / "masks" / f"{stem}.png")
        assert mask.mode == "L"
        np.testing.assert_array_equal(np.asarray(mask), label)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]
    # The folder dataset reads it back unchanged.
    from keras_msattn.data.datasets import dataset_info, load_dataset

    assert dataset_info("folder", data_dir=str(out)).class_names == sd.CLASS_NAMES
    for i, (image, label) in enumerate(load_dataset("folder", "all", data_dir=str(out))):
        expected = sd.generate("val", i, image_seed=2, image_size=128)
        np.testing.assert_array_equal(image.numpy(), expected[0])
        np.testing.assert_array_equal(label.numpy(), expected[1])

    with pytest.raises(ValueError, match="out_dir"):
        sd.export_to_folder(out, "val", 1)
    sd.export_to_folder(out, "test", 1, image_size=128, overwrite=True)
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == ["test_000000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]
    with pytest.raises(ValueError, match="n must"):
        sd.export_to_folder(tmp_path / "other", "val", 0)


def test_export_to_folder_is_atomic(tmp_path, monkeypatch):
    written = []
    original = sd._write_png

    def fail_on_fourth(array, path):
        if len(written) == 3:
            raise RuntimeError("disk full")
        written.append(path)
        original(array, path)

    monkeypatch.setattr(sd, "_write_png", fail_on_fourth)
    with pytest.raises(RuntimeError, match="disk full"):
        sd.export_to_folder(tmp_path / "digits", "val", 5, image_size=96)
    assert len(written) == 3
    assert list(tmp_path.iterdir()) == []


def test_size_bucket_miou():
    _, label, size_map, _ = next(
        example
        for example in (sd.generate("val", i) for i in range(50))
        if set(np.unique(example[2])) == {0, 1, 2}
    )
    perfect = sd.size_bucket_miou(label, label, size_map)
    for bucket in sd.SIZE_BUCKETS:
        value = perfect[bucket]
        assert (
            np.isnan(value)
            if not (size_map == sd.SIZE_BUCKETS.index(bucket) + 1).any()
            else value == 1.0
        )

    # Erasing the small digits hurts only the small bucket.
    prediction = np.where(size_map == 1, 0, label)
    scores = sd.size_bucket_miou(label, prediction, size_map)
    assert scores["small"] < 0.6 and scores["medium"] == 1.0

    # A false digit next to a small digit counts against the small bucket; far away it does not.
    labels = np.zeros((2, 192, 192), np.int32)
    sizes = np.zeros((2, 192, 192), np.uint8)
    labels[:, 50:70, 50:60], sizes[:, 50:70, 50:60] = 4, 1
    prediction = labels.copy()
    prediction[0, 72:74, 50:60] = 7  # within the 5 px margin
    prediction[1, 150:160, 150:160] = 7  # far away
    near = sd.size_bucket_miou(labels[:1], prediction[:1], sizes[:1])
    far = sd.size_bucket_miou(labels[1:], prediction[1:], sizes[1:])
    # Region: the 20x10 digit dilated by 5 px = 30x20; 20 of its 400 background pixels
    # are predicted 7 -> IoUs background 380/400, digit 1, false class 0.
    assert near["small"] == pytest.approx((380 / 400 + 1 + 0) / 3) and far["small"] == 1.0
    assert np.isnan(far["large"])
    confusion = sd.size_bucket_confusion(labels, prediction, sizes)
    assert confusion.shape == (3, 11, 11)
    region = binary_dilation(sizes[0] == 1, np.ones((11, 11)))
    assert confusion[0].sum() == 2 * region.sum()
    # Ignore pixels are left out.
    ignored = labels.copy()
    ignored[0, 50:52, 50:60] = 255
    assert sd.size_bucket_confusion(ignored, prediction, sizes)[0].sum() == confusion[0].sum() - 20
    with pytest.raises(ValueError, match="same shape"):
        sd.size_bucket_miou(labels, prediction[0], sizes)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        sd.load("validation")
    with pytest.raises(ValueError, match="image_seed"):
        sd.generate("val", 0, image_seed=-1)
    with pytest.raises(ValueError, match="image_size"):
        sd.load("val", image_size=32)
    with pytest.raises(ValueError, match="num_images"):
        sd.load("val", num_images=0)
    with pytest.raises(ValueError, match="index"):
        sd.generate("val", -1)
    with pytest.raises(ValueError, match="variety must be one of"):
        sd.load("train", variety="wild")
    with pytest.raises(ValueError, match="'unseen' split has fixed rules"):
        sd.load("unseen", variety="broad")
    for bad in (-1, 1.5, True, sd.MAX_EXTRA_SMALL_DIGITS + 1):
        with pytest.raises(ValueError, match="extra_small_digits must be an integer"):
            sd.load("train", extra_small_digits=bad)
    with pytest.raises(ValueError, match="'unseen' split has fixed rules"):
        sd.generate("unseen", 0, extra_small_digits=2)


def test_generation_is_fast():
    sd.generate("train", 0)
    start = time.perf_counter()
    for i in range(50):
        sd.generate("train", i, image_seed=9)
    per_image = (time.perf_counter() - start) / 50
    assert per_image < 0.025, f"{per_image * 1000:.1f} ms per image"


def test_seed_shuffles_the_order_and_image_seed_chooses_the_images():
    def stems(**options):
        # The first row of each label identifies an image cheaply enough.
        return [
            label.numpy().tobytes()
            for _, label in sd.load("val", num_images=8, image_size=64, **options)
        ]

    plain = stems()
    shuffled = stems(shuffle=True, seed=5)
    assert sorted(shuffled) == sorted(plain) and shuffled != plain  # same images, new order
    assert stems(shuffle=True, seed=5) == shuffled  # seeded
    assert stems(image_seed=1) != plain and sorted(stems(image_seed=1)) != sorted(plain)


# === Varieties and the "unseen" generalisation split ===


def test_standard_images_are_those_the_published_results_used():
    # A digest of the standard rules' output before the other varieties existed:
    # adding rules must not change a single byte of the images results were measured on.
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        for i in range(3):
            image, label, size_map, _ = sd.generate(split, i, image_seed=1, image_size=96)
            digest.update(image.tobytes() + label.tobytes() + size_map.tobytes())
    assert digest.hexdigest() == (
        "6ea9f63df82198675560fcfe11cec5fce677520fa0c8746c4ad33b98cf8dfe2f"
    )


@pytest.mark.parametrize(("split", "variety"), [("train", "broad"), ("unseen", "standard")])
def test_other_rules_are_deterministic_and_new(split, variety):
    a = sd.generate(split, 5, image_seed=2, variety=variety)
    b = sd.generate(split, 5, image_seed=2, variety=variety)
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3], strict=True)) and a[3] == b[3]
    assert not np.array_equal(a[0], sd.generate(split, 6, image_seed=2, variety=variety)[0])
    if split == "train":
        assert not np.array_equal(a[0], sd.generate("train", 5, image_seed=2)[0])
    from_tf_data = next(iter(sd.load(split, image_seed=2, num_images=6, variety=variety).skip(5)))
    np.testing.assert_array_equal(from_tf_data[0].numpy(), a[0])
    np.testing.assert_array_equal(from_tf_data[1].numpy(), a[1])


def _draw(monkeypatch, split, variety, count=40):
    """`count` images of split and variety, with the photos and slants they used."""
    photos, slants = set(), []
    load_photo, digit_mask = sd._photo, sd._digit_mask

    def recording_photo(name):
        photos.add(name)
        return load_photo(name)

    def recording_mask(sample_index, height, width_factor=1.0, slant=0.0):
        slants.append(slant)
        return digit_mask(sample_index, height, width_factor, slant)

    monkeypatch.setattr(sd, "_photo", recording_photo)
    monkeypatch.setattr(sd, "_digit_mask", recording_mask)
    examples = [sd.generate(split, i, image_seed=3, variety=variety) for i in range(count)]
    monkeypatch.undo()
    return examples, photos, np.array(slants)


def _touching_share(examples):
    """Share of digits after the first whose box is within 1 px of an earlier one's."""

    def near(a, b):
        rows = max(a["top"], b["top"]) - min(a["top"] + a["height"], b["top"] + b["height"])
        cols = max(a["left"], b["left"]) - min(a["left"] + a["width"], b["left"] + b["width"])
        return max(rows, cols) in (0, 1) and min(rows, cols) < 0

    later = [(d, digits[:k]) for *_, digits in examples for k, d in enumerate(digits) if k]
    return np.mean([any(near(d, e) for e in earlier) for d, earlier in later])


def _cut_share(examples, image_size=192):
    digits = [d for *_, ds in examples for d in ds]
    return np.mean(
        [
            d["top"] < 0
            or d["left"] < 0
            or d["top"] + d["height"] > image_size
            or d["left"] + d["width"] > image_size
            for d in digits
        ]
    )


def test_the_unseen_split_uses_photos_and_rules_training_never_uses(monkeypatch):
    drawn = {
        (split, variety): _draw(monkeypatch, split, variety)
        for split, variety in (("train", "standard"), ("train", "broad"), ("unseen", "standard"))
    }
    fills = {key: {d["fill"] for *_, ds in ex for d in ds} for key, (ex, _, _) in drawn.items()}

    for key in (("train", "standard"), ("train", "broad")):
        examples, photos, slants = drawn[key]
        assert photos <= set(sd.PHOTOS), key
        assert (slants == 0).all(), key
        assert _touching_share(examples) < 0.25, key
    unseen, unseen_photos, unseen_slants = drawn["unseen", "standard"]
    assert unseen_photos <= set(sd.UNSEEN_PHOTOS) and len(unseen_photos) >= 3
    assert fills["train", "standard"] == {"texture"}
    assert fills["train", "broad"] == {"texture", "flat"}
    assert fills["unseen", "standard"] == {"gradient"}
    assert ((np.abs(unseen_slants) >= 0.25) & (np.abs(unseen_slants) <= 0.5)).all()
    assert (unseen_slants > 0).any() and (unseen_slants < 0).any()
    assert _touching_share(unseen) > 0.6
    # Only the broad variety cuts digits by the border.
    assert _cut_share(drawn["train", "standard"][0]) == 0 and _cut_share(unseen) == 0
    assert 0.2 < _cut_share(drawn["train", "broad"][0]) < 0.4
    for examples, _, _ in drawn.values():
        for _, label, size_map, _ in examples:
            np.testing.assert_array_equal(size_map > 0, label > 0)


def test_the_unseen_split_keeps_the_sizes_and_digits_of_the_test_split():
    test_samples = set(sd.split_sample_indices("test").tolist())

    def buckets(split):
        digits = [d for i in range(150) for d in sd.generate(split, i, image_seed=1)[3]]
        assert {d["sample_index"] for d in digits} <= test_samples
        for d in digits:
            assert d["bucket"] == sd.size_bucket(d["height"])
        return np.bincount([d["bucket"] for d in digits], minlength=4)[1:] / len(digits)

    unseen, test = buckets("unseen"), buckets("test")
    np.testing.assert_allclose(unseen, test, atol=0.06)
    assert (unseen > 0.15).all(), unseen


@pytest.mark.parametrize("variety", ["standard", "broad"])
def test_extra_small_digits_only_add_small_digits(variety):
    extra_counts = []
    for index in range(12):
        image, label, size_map, digits = sd.generate("train", index, variety=variety)
        more = sd.generate("train", index, variety=variety, extra_small_digits=6)
        again = sd.generate("train", index, variety=variety, extra_small_digits=6)
        for a, b in zip(more, again, strict=True):  # deterministic
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
        # The image's own digits come first, unchanged; the extra ones are small.
        assert more[3][: len(digits)] == digits
        extra = more[3][len(digits) :]
        # Drawn under 32 px; the broad variety's bolder strokes add up to 2 px.
        small_below = sd.size_thresholds()[0]
        assert len(extra) <= 6 and all(d["height"] < small_below + 2 for d in extra)
        if variety == "standard":
            assert all(d["bucket"] == 1 for d in extra)
        extra_counts.append(len(extra))
        # Every pixel the extra digits change is now an extra digit's (the broad
        # variety's contrast jitter centres on the image's mean, which they move).
        changed = (more[1] != label) | (more[2] != size_map)
        if variety == "standard":
            changed |= (more[0] != image).any(axis=-1)
        else:  # the same jitter draws (their own stream): a shift of a level or two
            difference = np.abs(more[0].astype(int) - image.astype(int))[~changed]
            assert difference.max() <= 3, difference.max()
        assert changed.any() == bool(extra)
        assert np.isin(more[2][changed], [d["bucket"] for d in extra]).all()
        assert np.array_equal(more[1] > 0, more[2] > 0)
    # 0 to 6 extra digits, uniformly: some images get none, most get some.
    assert 0 in extra_counts and max(extra_counts) >= 4


def test_extra_small_digits_raise_the_small_digits_share_of_pixels():
    def shares(extra):
        maps = np.stack([sd.generate("train", i, extra_small_digits=extra)[2] for i in range(60)])
        return np.bincount(maps.ravel(), minlength=4) / maps.size

    standard, more = shares(0), shares(8)
    assert more[1] > 3 * standard[1]  # small: 0.4% -> about 1.6% of the pixels
    assert more[3] == pytest.approx(standard[3], rel=0.05)  # large digits stay as they were


def test_load_passes_extra_small_digits_on():
    dataset = sd.load("train", num_images=3, with_size_map=True, extra_small_digits=5)
    for index, (image, label, size_map) in enumerate(dataset.as_numpy_iterator()):
        expected = sd.generate("train", index, extra_small_digits=5)
        assert np.array_equal(image, expected[0]) and np.array_equal(label, expected[1])
        assert np.array_equal(size_map, expected[2])


def _ink_slope(label, digit):
    """Least-squares slope of column over row of a pasted digit's visible ink."""
    top, left = max(digit["top"], 0), max(digit["left"], 0)
    box = label[top : digit["top"] + digit["height"], left : digit["left"] + digit["width"]]
    rows, cols = np.nonzero(box == digit["digit"] + 1)
    return np.polyfit(rows, cols, 1)[0]


def test_max_slant_slants_each_digit_within_its_range_and_leaves_the_draws_alone():
    slants, checked = [], 0
    for index in range(12):
        upright = sd.generate("train", index)
        slanted = sd.generate("train", index, max_slant=0.2)
        again = sd.generate("train", index, max_slant=0.2)
        for a, b in zip(slanted, again, strict=True):  # deterministic
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
        assert all(d["slant"] == 0.0 for d in upright[3])
        # Its own stream: as many digits at the same heights; which digit follows a
        # slanted (wider) one can differ, as placement and texture draws depend on width.
        assert slanted[3][0]["sample_index"] == upright[3][0]["sample_index"]
        for before, after in zip(upright[3], slanted[3], strict=True):
            assert abs(before["height"] - after["height"]) <= 1
            slants.append(after["slant"])
            # A shear s moves each row of ink by -s px per px down (italic for s > 0):
            # the slope of the ink's columns over its rows changes by -s.
            if after["height"] >= 24 and after["sample_index"] == before["sample_index"]:
                change = _ink_slope(slanted[1], after) - _ink_slope(upright[1], before)
                assert change == pytest.approx(-after["slant"], abs=0.02), (before, after)
                checked += 1
        assert np.array_equal(slanted[1] > 0, slanted[2] > 0)
    slants = np.array(slants)
    assert (np.abs(slants) <= 0.2).all() and (slants > 0.05).any() and (slants < -0.05).any()
    assert checked >= 10


def test_max_slant_stays_off_the_unseen_split_whose_slants_are_its_own():
    slants = [d["slant"] for i in range(8) for d in sd.generate("unseen", i)[3]]
    assert all(0.25 <= abs(s) <= 0.5 for s in slants), slants
    for bad in (-0.1, 1.0, True, "0.2", None):
        with pytest.raises(ValueError, match=r"max_slant must be a number in \[0, 1\)"):
            sd.load("train", max_slant=bad)
    with pytest.raises(ValueError, match="'unseen' split has fixed rules"):
        sd.generate("unseen", 0, max_slant=0.1)


def test_load_passes_max_slant_on():
    dataset = sd.load("val", num_images=3, with_size_map=True, max_slant=0.2, variety="broad")
    for index, (image, label, size_map) in enumerate(dataset.as_numpy_iterator()):
        expected = sd.generate("val", index, max_slant=0.2, variety="broad")
        assert np.array_equal(image, expected[0]) and np.array_equal(label, expected[1])
        assert np.array_equal(size_map, expected[2])
        assert any(d["slant"] != 0.0 for d in expected[3])


@pytest.mark.parametrize("rendering, slant", [("smooth", 0.45), ("varied", 0.2)])
def test_a_digit_too_wide_for_the_image_is_drawn_narrower_and_keeps_its_slant(rendering, slant):
    # The widest training glyphs at the tallest height, slanted (and, "varied",
    # up to 1.33x wider): some would not fit a 192-px image, and could not be placed.
    height, size = int(sd.MAX_HEIGHT_FRACTION * 192), 192
    too_wide = 0
    for sample_index in sd.split_sample_indices("train"):
        rng, again = np.random.default_rng(sample_index), np.random.default_rng(sample_index)
        free, _ = sd._render(rng, rendering, int(sample_index), height, slant)
        mask, kept = sd._render(again, rendering, int(sample_index), height, slant, size)
        assert kept == slant and mask.shape[1] <= size
        if free.shape[1] > size:
            too_wide += 1
            assert mask.shape[0] >= height - 2  # as tall, only narrower
        else:
            assert np.array_equal(mask, free)  # a digit that fits is drawn as before
    assert too_wide >= 3
