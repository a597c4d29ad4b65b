import json
import textwrap

import keras
import numpy as np
import pytest
from subprocess_script import run_script

from keras_msattn.inference import segmentation_scores
from keras_msattn.losses import SegmentationCrossEntropy
from keras_msattn.metrics import (
    ConfusionMatrix,
    MeanClassAccuracy,
    MeanIoU,
    PixelAccuracy,
)

NUM_CLASSES = 5


def numpy_confusion(labels, predictions, num_classes, ignore_label=255, weights=None):
    """Reference: count (label, prediction) pairs of the non-ignored pixels."""
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    weights = np.ones(labels.shape) if weights is None else np.asarray(weights).reshape(-1)
    keep = labels != ignore_label
    matrix = np.zeros((num_classes, num_classes))
    np.add.at(matrix, (labels[keep], predictions[keep]), weights[keep])
    return matrix


def numpy_scores(matrix):
    """Reference scores, written independently of `segmentation_scores`."""
    ious, accuracies = [], []
    for c in range(len(matrix)):
        tp = matrix[c, c]
        gt, pred = matrix[c].sum(), matrix[:, c].sum()
        if gt + pred - tp > 0:
            ious.append(tp / (gt + pred - tp))
        if gt > 0:
            accuracies.append(tp / gt)
    return np.mean(ious), np.trace(matrix) / matrix.sum(), np.mean(accuracies)


def random_batch(seed, shape=(2, 6, 7), num_classes=NUM_CLASSES):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(*shape, num_classes)).astype("float32")
    labels = rng.integers(0, num_classes, size=shape).astype("int32")
    labels[rng.uniform(size=shape) < 0.2] = 255
    return labels, logits


def test_matches_numpy_on_random_logits():
    labels, logits = random_batch(0)
    expected = numpy_confusion(labels, logits.argmax(-1), NUM_CLASSES)
    metric = ConfusionMatrix(NUM_CLASSES)
    metric.update_state(labels, logits)
    matrix = np.asarray(metric.result())
    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix, expected)
    miou, pixel_accuracy, class_accuracy = numpy_scores(expected)
    scores = segmentation_scores(matrix)
    assert scores["miou"] == pytest.approx(miou)
    assert scores["pixel_accuracy"] == pytest.approx(pixel_accuracy)
    assert scores["mean_class_accuracy"] == pytest.approx(class_accuracy)
    for cls, value in ((MeanIoU, miou), (PixelAccuracy, pixel_accuracy)):
        scalar = cls(NUM_CLASSES)
        scalar.update_state(labels, logits)
        assert float(scalar.result()) == pytest.approx(value, rel=1e-6)
    scalar = MeanClassAccuracy(NUM_CLASSES)
    scalar.update_state(labels, logits)
    assert float(scalar.result()) == pytest.approx(class_accuracy, rel=1e-6)


def test_mean_iou_agrees_with_keras_mean_iou():
    labels, logits = random_batch(1)
    ours = MeanIoU(NUM_CLASSES)
    theirs = keras.metrics.MeanIoU(NUM_CLASSES, ignore_class=255, sparse_y_pred=False)
    ours.update_state(labels, logits)
    theirs.update_state(labels, logits)
    assert float(ours.result()) == pytest.approx(float(theirs.result()), rel=1e-6)


def test_streaming_equals_one_shot_and_reset():
    batches = [random_batch(seed) for seed in range(3)]
    streaming = ConfusionMatrix(NUM_CLASSES)
    for labels, logits in batches:
        streaming.update_state(labels, logits)
    one_shot = ConfusionMatrix(NUM_CLASSES)
    one_shot.update_state(
        np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    )
    np.testing.assert_array_equal(streaming.result(), one_shot.result())
    assert np.asarray(streaming.result()).sum() > 0
    streaming.reset_state()
    np.testing.assert_array_equal(streaming.result(), np.zeros((NUM_CLASSES, NUM_CLASSES)))
    metric = MeanIoU(NUM_CLASSES)
    metric.update_state(*batches[0])
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_input_formats():
    labels, logits = random_batch(2)
    predictions = logits.argmax(-1)
    expected = numpy_confusion(labels, predictions, NUM_CLASSES)
    for y_true, y_pred in (
        (labels[..., None].astype("float32"), logits),
        (labels, predictions),
        (labels, predictions[..., None].astype("float32")),
        (labels.astype("uint8"), logits.astype("float16")),
    ):
        metric = ConfusionMatrix(NUM_CLASSES)
        metric.update_state(y_true, y_pred)
        np.testing.assert_array_equal(metric.result(), expected)


def test_ignored_and_out_of_range_pixels_do_not_count():
    labels = np.array([[[0, 255, 1, 7, 255]]])
    predictions = np.array([[[0, 1, 1, 1, 2]]])
    metric = ConfusionMatrix(3)
    metric.update_state(labels, predictions)
    expected = np.zeros((3, 3))
    expected[0, 0] = expected[1, 1] = 1
    np.testing.assert_array_equal(metric.result(), expected)
    custom = ConfusionMatrix(3, ignore_label=0)
    custom.update_state(labels, predictions)
    expected = np.zeros((3, 3))
    expected[1, 1] = 1
    np.testing.assert_array_equal(custom.result(), expected)


def test_sample_weight():
    labels, logits = random_batch(3)
    per_image = np.array([2.0, 0.5])
    metric = ConfusionMatrix(NUM_CLASSES)
    metric.update_state(labels, logits, sample_weight=per_image)
    weights = np.broadcast_to(per_image[:, None, None], labels.shape)
    expected = numpy_confusion(labels, logits.argmax(-1), NUM_CLASSES, weights=weights)
    np.testing.assert_allclose(metric.result(), expected, rtol=1e-6)


def test_absent_classes_are_left_out_of_the_means():
    # Class 0: 3 right, 1 predicted as 1. Class 1: only predicted (IoU 0).
    # Class 2: absent from both, no IoU. Class 3: 2 right.
    matrix = np.zeros((4, 4))
    matrix[0, 0], matrix[0, 1], matrix[3, 3] = 3, 1, 2
    scores = segmentation_scores(matrix, class_names=["a", "b", "c", "d"])
    assert scores["per_class_iou"] == [0.75, 0.0, None, 1.0]
    assert scores["miou"] == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    assert scores["per_class_accuracy"] == [0.75, None, None, 1.0]
    assert scores["mean_class_accuracy"] == pytest.approx((0.75 + 1.0) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 6)
    assert scores["class_names"] == ["a", "b", "c", "d"] and scores["num_pixels"] == 6
    json.dumps(scores, allow_nan=False)
    # The keras.ops scores used by compile() metrics agree.
    labels = np.array([[[0, 0, 0, 0, 3, 3]]])
    predictions = np.array([[[0, 0, 0, 1, 3, 3]]])
    for cls, key in (
        (MeanIoU, "miou"),
        (PixelAccuracy, "pixel_accuracy"),
        (MeanClassAccuracy, "mean_class_accuracy"),
    ):
        metric = cls(4)
        metric.update_state(labels, predictions)
        assert float(metric.result()) == pytest.approx(scores[key], rel=1e-6)


def test_empty_matrix_scores_are_zero_not_nan():
    scores = segmentation_scores(np.zeros((3, 3)))
    assert scores["miou"] == scores["pixel_accuracy"] == scores["mean_class_accuracy"] == 0.0
    metric = MeanIoU(3)
    metric.update_state(np.full((1, 2, 2), 255), np.zeros((1, 2, 2, 3)))
    assert float(metric.result()) == 0.0


def test_counts_stay_exact_beyond_float32_integer_range():
    side = 4096  # 2**24 pixels in one cell
    metric = ConfusionMatrix(2)
    zeros = np.zeros((1, side, side), dtype="uint8")
    metric.update_state(zeros, zeros)
    metric.update_state(np.zeros((1, 1, 1), "uint8"), np.zeros((1, 1, 1), "uint8"))
    # float32 would round 2**24 + 1 back to 2**24.
    assert np.asarray(metric.result())[0, 0] == 2**24 + 1


def test_config_round_trip_and_serialization():
    for metric in (
        ConfusionMatrix(7, ignore_label=0, name="cm"),
        MeanIoU(7),
        PixelAccuracy(7),
        MeanClassAccuracy(7),
    ):
        restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
        assert type(restored) is type(metric)
        assert restored.get_config() == metric.get_config()
    assert MeanIoU(7).get_config()["num_classes"] == 7


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ConfusionMatrix(0), "num_classes"),
        (lambda: MeanIoU(2.5), "num_classes"),
        (lambda: ConfusionMatrix(3, ignore_label=None), "ignore_label"),
        (lambda: segmentation_scores(np.zeros((2, 3))), "square"),
        (lambda: segmentation_scores(np.zeros((2, 2)), class_names=["a"]), "class_names"),
        (lambda: segmentation_scores(-np.ones((2, 2))), ">= 0"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_channel_count_raises():
    metric = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="channels"):
        metric.update_state(np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 4)))


def test_compile_metrics_in_evaluate_stream_over_batches():
    labels, logits = random_batch(4, shape=(6, 5, 5))
    inputs = keras.Input(logits.shape[1:])
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(
        loss=SegmentationCrossEntropy(),
        metrics=[MeanIoU(NUM_CLASSES), PixelAccuracy(NUM_CLASSES), MeanClassAccuracy(NUM_CLASSES)],
    )
    logs = model.evaluate(logits, labels, batch_size=2, verbose=0, return_dict=True)
    miou, pixel_accuracy, class_accuracy = numpy_scores(
        numpy_confusion(labels, logits.argmax(-1), NUM_CLASSES)
    )
    assert logs["mean_iou"] == pytest.approx(miou, rel=1e-6)
    assert logs["pixel_accuracy"] == pytest.approx(pixel_accuracy, rel=1e-6)
    assert logs["mean_class_accuracy"] == pytest.approx(class_accuracy, rel=1e-6)


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras_msattn.losses import SegmentationCrossEntropy
    from keras_msattn.metrics import ConfusionMatrix, MeanIoU

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 5, 5, 4)).astype("float32")
    labels = rng.integers(0, 4, size=(8, 5, 5)).astype("int32")
    labels[rng.uniform(size=labels.shape) < 0.2] = 255
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((5, 5, 4))
        model = keras.Model(inputs, keras.layers.Identity()(inputs))
        matrix = ConfusionMatrix(4)
        model.compile(loss=SegmentationCrossEntropy(), metrics=[MeanIoU(4)])
    logs = model.evaluate(logits, labels, batch_size=4, verbose=0, return_dict=True)

    @tf.function
    def update(labels, logits):
        strategy.run(matrix.update_state, args=(labels, logits))

    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((labels, logits)).batch(4)
    )
    for batch in dataset:
        update(*batch)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "miou": logs["mean_iou"],
        "matrix": np.asarray(matrix.result()).tolist(),
    }))
    """
)


def test_metrics_sum_over_replicas_under_mirrored_strategy():
    out = run_script(DISTRIBUTED_SCRIPT)
    assert out["replicas"] == 2
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 5, 5, 4)).astype("float32")
    labels = rng.integers(0, 4, size=(8, 5, 5)).astype("int32")
    labels[rng.uniform(size=labels.shape) < 0.2] = 255
    expected = numpy_confusion(labels, logits.argmax(-1), 4)
    np.testing.assert_array_equal(out["matrix"], expected)
    assert out["miou"] == pytest.approx(numpy_scores(expected)[0], rel=1e-6)


def test_logits_on_a_coarser_grid_are_scored_against_the_sampled_labels():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, NUM_CLASSES, (2, 24, 16))
    labels[0, :4] = 255
    logits = rng.normal(size=(2, 6, 4, NUM_CLASSES)).astype("float32")
    weights = rng.uniform(size=labels.shape)
    metric = ConfusionMatrix(NUM_CLASSES)
    metric.update_state(labels, logits, sample_weight=weights)
    expected = numpy_confusion(
        labels[:, 2::4, 2::4],
        logits.argmax(-1),
        NUM_CLASSES,
        weights=weights[:, 2::4, 2::4],
    )
    np.testing.assert_allclose(np.asarray(metric.result()), expected)
