import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from fake_datasets import make_fake_ade20k

from keras_msattn import MultiScaleSegmenter, evaluation, inference
from keras_msattn.cli import main
from keras_msattn.data import dataset_info, load_dataset, scale_digits

ADE_CLASSES = 150


def tiny(num_classes=ADE_CLASSES, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return MultiScaleSegmenter(
        backbone="resnet18_d8", num_classes=num_classes, head_channels=8, **kwargs
    )


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return make_fake_ade20k(tmp_path_factory.mktemp("ade"), n_train=1, n_val=2)


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def pairs(ade):
    """The fake ADE20K val split as decoded by the loader, read once (tf.data reads are slow)."""
    return list(load_dataset("ade20k", "val", ade["data_dir"]).as_numpy_iterator())


def softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_scores(model, pairs, num_classes):
    """Scores of the argmax of the model's logits, computed independently with numpy."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for image, label in pairs:
        logits = model(image[None].astype("float32"), training=False)
        if isinstance(logits, dict):
            logits = logits["final"]
        prediction = np.argmax(np.asarray(logits)[0], axis=-1)
        keep = label != 255
        np.add.at(matrix, (label[keep], prediction[keep]), 1)
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    present = union > 0
    in_truth = matrix.sum(1) > 0
    return matrix, {
        "miou": np.mean(tp[present] / union[present]),
        "pixel_accuracy": tp.sum() / matrix.sum(),
        "mean_class_accuracy": np.mean(tp[in_truth] / matrix.sum(1)[in_truth]),
        "iou": np.where(present, tp / np.maximum(union, 1), np.nan),
    }


def test_scores_equal_a_numpy_confusion_matrix_of_the_argmax(model, pairs):
    names = dataset_info("ade20k").class_names
    results = evaluation.evaluate(
        model, pairs, ADE_CLASSES,
        tta_scales=(1.0,), flip=False, class_names=names, verbose=0,
    )  # fmt: skip
    matrix, expected = reference_scores(model, pairs, ADE_CLASSES)
    np.testing.assert_array_equal(np.array(results["confusion_matrix"]), matrix)
    assert results["num_images"] == 2
    assert results["num_pixels"] == sum(int((label != 255).sum()) for _, label in pairs)
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
        assert results[key] == pytest.approx(expected[key], abs=1e-12)
    assert list(results["per_class_iou"]) == list(names)
    for c, name in enumerate(names):
        iou = results["per_class_iou"][name]
        assert (iou is None) == np.isnan(expected["iou"][c])
        if iou is not None:
            assert iou == pytest.approx(expected["iou"][c])
    # So does a batched tf.data dataset.
    batched = tf.data.Dataset.from_tensor_slices(
        tuple(np.stack(p) for p in zip(*pairs, strict=True))
    ).batch(2)
    again = evaluation.evaluate(model, batched, ADE_CLASSES, verbose=0)
    assert again["confusion_matrix"] == results["confusion_matrix"]


def test_same_size_images_share_model_calls_and_score_as_one_at_a_time(model, monkeypatch):
    rng = np.random.default_rng(3)
    sizes = [(48, 64), (48, 64), (48, 64), (40, 56), (48, 64)]
    examples = [
        (rng.uniform(0, 255, (*size, 3)).astype("float32"), rng.integers(0, 5, size))
        for size in sizes
    ]
    calls = []
    predict = model.predict_on_batch

    def counting(images):
        calls.append(len(images))
        return predict(images)

    monkeypatch.setattr(model, "predict_on_batch", counting)
    results = evaluation.evaluate(model, examples, ADE_CLASSES, batch_size=3, verbose=0)
    # Three of one size, then the odd size alone, then the last one.
    assert calls == [3, 1, 1]
    matrix, _ = reference_scores(model, examples, ADE_CLASSES)
    np.testing.assert_array_equal(np.array(results["confusion_matrix"]), matrix)
    # With test-time views, same-size images still share a call per view, and each
    # scores as `predict_probabilities` of it alone.
    calls.clear()
    options = dict(tta_scales=(1.0, 1.5), tta_weights=(2, 1), flip=True)
    viewed = evaluation.evaluate(model, examples, ADE_CLASSES, batch_size=3, verbose=0, **options)
    assert calls == [3] * 4 + [1] * 4 + [1] * 4, "one call per scale and mirror"
    expected = np.zeros((ADE_CLASSES, ADE_CLASSES), np.int64)
    for image, label in examples:
        prediction = inference.predict_probabilities(model, image, **options).argmax(-1)
        expected += inference.confusion_matrix(label, prediction, ADE_CLASSES)
    np.testing.assert_array_equal(np.array(viewed["confusion_matrix"]), expected)
    assert viewed["tta_weights"] == pytest.approx([2 / 3, 1 / 3])


def test_multi_scale_testing_averages_softmax_probabilities(model):
    image = np.random.default_rng(1).uniform(0, 255, (64, 48, 3)).astype("float32")
    got = inference.predict_probabilities(model, image, tta_scales=(0.75, 1.0))
    small = tf.image.resize(image[None], (48, 36), method="bilinear")
    small_logits = tf.image.resize(model(small, training=False), (64, 48), method="bilinear")
    expected = (
        softmax(np.asarray(small_logits)[0]) + softmax(np.asarray(model(image[None]))[0])
    ) / 2
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_tta_weights_weigh_each_scale_s_probabilities(model):
    image = np.random.default_rng(2).uniform(0, 255, (48, 40, 3)).astype("float32")
    one = inference.predict_probabilities(model, image)
    zoomed = inference.predict_probabilities(model, image, tta_scales=(2.0,))
    got = inference.predict_probabilities(model, image, tta_scales=(1.0, 2.0), tta_weights=(3, 1))
    np.testing.assert_allclose(got, 0.75 * one + 0.25 * zoomed, atol=1e-5)
    assert np.abs(zoomed - one).max() > 0.01, "the two views must differ for the test to bite"
    # A zero weight leaves its scale out; the batch path agrees with one image at a time.
    only = inference.predict_probabilities(model, image, tta_scales=(1.0, 2.0), tta_weights=(0, 1))
    np.testing.assert_allclose(only, zoomed, atol=1e-6)
    batch = inference.batch_probabilities(
        model, np.stack([image, image[::-1]]), tta_scales=(1.0, 2.0), tta_weights=(3, 1)
    )
    np.testing.assert_allclose(batch[0], got, atol=1e-5)


@pytest.mark.parametrize(
    "weights, message",
    [((1.0,), "one weight per scale"), ((1.0, -1.0), "non-negative"), ((0, 0), "positive sum"),
     (("a", 1), "numbers")],
)  # fmt: skip
def test_bad_tta_weights_are_named(model, weights, message):
    image = np.zeros((32, 32, 3), "float32")
    with pytest.raises(ValueError, match=message):
        inference.predict_probabilities(model, image, tta_scales=(1.0, 2.0), tta_weights=weights)


def test_flip_averages_the_image_and_its_mirror(model):
    half = np.random.default_rng(2).uniform(0, 255, (48, 24, 3)).astype("float32")
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    plain = softmax(np.asarray(model(symmetric[None]))[0])
    assert np.abs(plain - plain[:, ::-1]).max() > 1e-3  # the model itself is not symmetric
    flipped = inference.predict_probabilities(model, symmetric, flip=True)
    np.testing.assert_allclose(flipped, (plain + plain[:, ::-1]) / 2, atol=1e-5)
    np.testing.assert_allclose(flipped, flipped[:, ::-1], atol=1e-5)


def pointwise_model(height, width, num_classes=4):
    """A 1x1 conv: its logits at a pixel depend on that pixel only, so tiling cannot change them."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((height, width, 3))
    return keras.Model(inputs, keras.layers.Conv2D(num_classes, 1)(inputs / 255.0))


@pytest.mark.parametrize("size", [(45, 60), (10, 12), (16, 40)])
def test_sliding_window_covers_every_pixel_and_averages_overlaps(size):
    model = pointwise_model(16, 16)
    image = np.random.default_rng(4).uniform(0, 255, (*size, 3)).astype("float32")
    direct = np.asarray(model.layers[-1](image[None] / 255.0))[0]
    logits = inference.sliding_window_logits(model, image, 16, batch_size=3)
    np.testing.assert_allclose(logits, direct, atol=1e-5)
    # The fixed-size model gets windows automatically.
    probabilities = inference.predict_probabilities(model, image, flip=True)
    np.testing.assert_allclose(probabilities, softmax(direct), atol=1e-5)


def test_fixed_size_model_is_tiled_like_an_explicit_sliding_window(model, ade, pairs):
    fixed = tiny(input_shape=(32, 32, 3))
    fixed.set_weights(model.get_weights())
    with pytest.raises(ValueError, match="built for 32x32"):
        fixed.check_input_size(45, 60)
    auto = evaluation.evaluate(fixed, pairs, 150, batch_size=6, verbose=0)
    explicit = evaluation.evaluate(model, pairs, 150, sliding_window=32, batch_size=6, verbose=0)
    assert auto["confusion_matrix"] == explicit["confusion_matrix"]
    assert auto["num_pixels"] == sum(int((lab != 255).sum()) for lab in ade["labels"]["val"])
    with pytest.raises(ValueError, match="cannot take 40x40 windows"):
        inference.predict_probabilities(fixed, np.zeros((45, 60, 3)), sliding_window=40)


def test_sliding_window_that_covers_the_image_equals_plain_evaluation(model, pairs):
    plain = evaluation.evaluate(model, pairs, 150, verbose=0)
    window = evaluation.evaluate(model, pairs, 150, sliding_window=(45, 60), verbose=0)
    assert window["confusion_matrix"] == plain["confusion_matrix"]
    assert window["sliding_window"] == [45, 60] and plain["sliding_window"] is None


def test_images_below_the_minimum_side_are_padded(model):
    image = np.random.default_rng(5).uniform(0, 255, (20, 50, 3)).astype("float32")
    assert not inference.accepts_input_size(model, 20, 50)
    probabilities = inference.predict_probabilities(model, image)
    assert probabilities.shape == (20, 50, ADE_CLASSES)
    padded = np.empty((32, 50, 3), "float32")
    padded[:] = inference.PAD_COLOR
    padded[:20] = image
    expected = softmax(np.asarray(model(padded[None]))[0, :20])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_deep_supervision_models_are_scored_on_final(pairs):
    model = tiny(deep_supervision=True)
    results = evaluation.evaluate(model, pairs, ADE_CLASSES, verbose=0)
    matrix, _ = reference_scores(model, pairs, ADE_CLASSES)
    np.testing.assert_array_equal(np.array(results["confusion_matrix"]), matrix)


def test_json_report_is_written_atomically_with_a_progress_bar(model, pairs, tmp_path, capsys):
    path = tmp_path / "reports" / "val.json"
    results = evaluation.evaluate_to_json(
        path, model, pairs, ADE_CLASSES,
        metadata={"dataset": "ade20k"}, class_names=dataset_info("ade20k").class_names,
        max_images=1, verbose=1,
    )  # fmt: skip
    progress = capsys.readouterr().out
    assert "1/1" in progress and "miou" in progress
    with open(path) as f:
        written = json.load(f)
    assert written == results
    assert written["dataset"] == "ade20k" and written["num_images"] == 1
    assert set(written) >= {"miou", "pixel_accuracy", "mean_class_accuracy", "per_class_iou"}
    assert written["per_class_iou"]["wall"] is None or 0 <= written["per_class_iou"]["wall"] <= 1
    assert os.listdir(path.parent) == ["val.json"]


def test_off_a_terminal_the_progress_is_one_line_not_one_per_image(model, pairs, capsys):
    # pytest captures stdout into a file, as a log would: no bar redrawn per image.
    evaluation.evaluate(model, pairs, ADE_CLASSES, verbose=1)
    progress = capsys.readouterr().out
    assert len(pairs) == 2 and progress.count("miou") == 1 and "2/2" in progress
    assert "\r" not in progress and "1/2" not in progress


def test_size_bucket_miou_on_scale_digits():
    model = tiny(num_classes=11)
    ds = scale_digits.load("test", image_size=64, num_images=3, with_size_map=True)
    results = evaluation.evaluate(
        model, ds, 11, extra_scores=scale_digits.SizeBucketScores(), verbose=0
    )
    images, labels, size_maps = (
        np.stack(parts) for parts in zip(*ds.as_numpy_iterator(), strict=True)
    )
    predictions = np.argmax(np.asarray(model(images.astype("float32"))), axis=-1)
    expected = scale_digits.size_bucket_miou(labels, predictions, size_maps, image_size=64)
    for bucket, miou in expected.items():
        got = results[f"miou_{bucket}"]
        assert (got is None and np.isnan(miou)) or got == pytest.approx(miou)
    assert any(results[f"miou_{b}"] is not None for b in ("small", "medium", "large"))
    with pytest.raises(ValueError, match="size_map"):
        evaluation.evaluate(model, scale_digits.load("test", image_size=64, num_images=1), 11,
                            extra_scores=scale_digits.SizeBucketScores(), verbose=0)  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"tta_scales": ()}, "tta_scales"),
        ({"tta_scales": (1.0, -0.5)}, "tta_scales"),
        ({"sliding_window": 0}, "sliding_window"),
        ({"class_names": ["a", "b"]}, "class_names"),
        ({"num_classes": 3}, "predicts 150 classes"),
    ],
)
def test_bad_arguments_are_named(model, kwargs, message):
    pairs = [(np.zeros((32, 32, 3), "uint8"), np.zeros((32, 32), "int32"))]
    options = {"num_classes": ADE_CLASSES, "verbose": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluation.evaluate(model, pairs, **options)


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "tiny.keras"
    model.save(path)
    return path


def test_cli_evaluate_prints_a_table_and_writes_json(saved_model, ade, pairs, model, capsys):
    assert (
        main(["evaluate", str(saved_model), "--dataset", "ade20k", "--data-dir", ade["data_dir"]])
        == 0
    )
    out = capsys.readouterr().out
    path = saved_model.parent / "tiny_eval_ade20k_val.json"
    with open(path) as f:
        report = json.load(f)
    expected = evaluation.evaluate(model, pairs, 150, verbose=0)
    assert report["confusion_matrix"] == expected["confusion_matrix"]
    assert report["split"] == "val" and report["dataset"] == "ade20k" and report["num_images"] == 2
    assert f"{100 * report['miou']:6.2f}" in out
    for text in ("mIoU", "pixel accuracy", "mean class accuracy", "wall", str(path)):
        assert text in out


def test_cli_evaluate_options(saved_model, ade, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["evaluate", str(saved_model), "--dataset", "ade20k", "--data-dir", ade["data_dir"],
            "--tta-scales", "0.75", "1.0", "--tta-weights", "1", "3", "--flip",
            "--sliding-window", "40x48", "--max-images", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["num_images"] == 1
    assert report["tta_scales"] == [0.75, 1.0] and report["flip"] is True
    assert report["tta_weights"] == [0.25, 0.75]
    assert report["sliding_window"] == [40, 48]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "missing.keras", "--dataset", "ade20k"], "missing.keras: no such model file"),
        (["evaluate", "{model}", "--dataset", "scale_digits"], "predicts 150 classes"),
        (["evaluate", "{model}", "--dataset", "ade20k", "--sliding-window"], "fixed input size"),
        (
            [
                "evaluate",
                "{model}",
                "--dataset",
                "ade20k",
                "--tta-scales",
                "1",
                "2",
                "--tta-weights",
                "1",
            ],
            "one weight per scale",
        ),
    ],
)
def test_cli_evaluate_errors_name_the_problem(saved_model, argv, message, capsys):
    argv = [a.replace("{model}", str(saved_model)) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_evaluate_takes_the_class_count_of_a_folder_without_classes_txt_from_the_model(
    tmp_path, capsys
):
    # An 11-class model on a ScaleDigits folder export whose classes.txt is gone.
    data = scale_digits.export_to_folder(tmp_path / "digits", "val", 2, image_size=64)
    (data / "classes.txt").unlink()
    model = MultiScaleSegmenter(
        backbone="mobilenet_v2", backbone_width=0.35, num_classes=11, scales=(1.0,), fusion=None
    )
    model_path = tmp_path / "digits.keras"
    model.save(model_path)
    out = tmp_path / "report.json"
    argv = ["evaluate", str(model_path), "--dataset", "folder", "--data-dir", str(data),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["split"] == "all" and report["num_images"] == 2
    assert list(report["per_class_iou"]) == [f"class_{i}" for i in range(11)]
    assert np.asarray(report["confusion_matrix"]).sum() == 2 * 64 * 64
