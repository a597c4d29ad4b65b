"""Export to a TensorFlow SavedModel laid out for TF Serving.

`out_dir/<model_name>/<version>/saved_model.pb` with two signatures, both on
uint8 images `(B, H, W, 3)` (any batch size; H and W fixed if the model is
built for one size or `input_size` is given, dynamic otherwise):

- "serving_default": {"labels": int32 (B, H, W), "probabilities": float32 (B, H, W, C)}
- "logits": {"logits": float32 (B, H, W, C)}

The artifact holds only TensorFlow functions and variables (written through
`keras.export.ExportArchive`), so `tf.saved_model.load` needs neither Keras
layers nor this package. The version folder appears in one rename when it is
complete (TF Serving watches for new numeric folders), with its verification
report inside, in `assets.extra/`.
"""

import os
import re

import keras
import tensorflow as tf

from keras_msattn import files
from keras_msattn.export import calibration, report
from keras_msattn.inference import check_input_size, final_output, model_input_size

REPORT_FOLDER = "assets.extra"


def serving_functions(model, input_size=None):
    """(serving_default, logits) callables on uint8 images, (H, W) = `input_size` if set."""

    def logits_of(images):
        if input_size is not None:
            # A signature's declared shape is not enforced when it is called;
            # without this check another size would run and return wrong-sized maps.
            tf.debugging.assert_equal(
                tf.shape(images)[1:3],
                tf.constant(input_size, tf.int32),
                message=f"`images` must be (batch, {input_size[0]}, {input_size[1]}, 3) uint8",
            )
        images = tf.cast(images, tf.float32)
        return tf.cast(final_output(model(images, training=False)), tf.float32)

    def serve(images):
        logits = logits_of(images)
        return {
            "labels": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }

    def logits(images):
        return {"logits": logits_of(images)}

    return serve, logits


def _model_name(model, model_name):
    name = model_name or model.name
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name or ""):
        raise ValueError(
            f"`model_name` {name!r} must be a folder name of letters, digits, '_', '.', '-'."
        )
    return name


def export_saved_model(
    model,
    out_dir,
    model_name=None,
    version=1,
    input_size=None,
    validation_data=None,
    num_validation=50,
    sample_images=None,
    overwrite=False,
    ignore_label=255,
    compare_size=None,
):
    """Writes `out_dir/<model_name>/<version>/` for TF Serving; returns its report.

    Args:
        model: a Keras segmentation model (raw RGB 0..255 in, logits out, or a
            deep-supervision dict whose "final" entry is served).
        out_dir: the TF Serving model base folder's parent.
        model_name: default `model.name`.
        version: positive integer version folder, default 1.
        input_size: fix (H, W); default the model's own (dynamic if it has none).
        validation_data: (image, label) examples for agreement and mIoU in the
            report, fitted to the size the report compares at.
        overwrite: replace an existing version folder.
        compare_size: (H, W) the report compares at when the signatures are
            dynamic (default the smallest size the model takes, at least 64);
            a fixed size is always compared at itself. The report names it.

    Returns:
        The verification report (a dict; "path" is the version folder).
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be a positive integer; got {version!r}.")
    name = _model_name(model, model_name)
    if input_size is not None:
        height, width = (int(v) for v in input_size)
        check_input_size(model, height, width)
        size = (height, width)
    else:
        size = model_input_size(model)
    final_dir = os.path.join(os.fspath(out_dir), name, str(version))
    if os.path.exists(final_dir) and not overwrite:
        raise ValueError(f"{final_dir!r} exists; choose another `version` or pass overwrite=True.")
    if size is not None:
        compare_size = size
    elif compare_size is not None:
        compare_size = tuple(int(v) for v in compare_size)
        check_input_size(model, *compare_size)
    else:
        compare_size = (max(64, getattr(model, "min_input_side", 64)),) * 2
    validation = None
    if validation_data is not None:
        validation = calibration.labelled(validation_data, compare_size, num_validation)
    images_source = "given images"
    if sample_images is not None:
        sample_images = calibration.images(sample_images, compare_size)
    elif validation is None:
        sample_images, images_source = report.synthetic_images(compare_size), "synthetic images"

    serve, logits = serving_functions(model, size)
    spec = tf.TensorSpec((None, *(size or (None, None)), 3), tf.uint8, name="images")
    with files.staged_directory(final_dir) as staged:
        # Untracked: the archive keeps only the variables the endpoints use, not
        # the Keras object graph (faster to write, nothing Keras-specific to load).
        archive = keras.export.ExportArchive()
        archive.add_endpoint("serving_default", serve, input_signature=[spec])
        archive.add_endpoint("logits", logits, input_signature=[spec])
        archive.write_out(staged, verbose=False)
        result = report.verify_saved_model(
            staged,
            model=model,
            images=sample_images if sample_images is not None else None,
            validation=validation,
            ignore_label=ignore_label,
            images_source=images_source,
            extra={
                "path": os.path.abspath(final_dir),
                "format": "saved_model",
                "input_size": list(size) if size else None,
                "compared_at": list(compare_size),
            },
        )
        if not result["labels_equal_argmax_logits"]:
            raise RuntimeError("SavedModel check failed: labels != argmax(logits).")
        report_dir = os.path.join(staged, REPORT_FOLDER)
        os.makedirs(report_dir, exist_ok=True)
        report.write_report(
            result,
            os.path.join(report_dir, "export_report.json"),
            os.path.join(report_dir, "export_report.md"),
            f"SavedModel export: {name}/{version}",
        )
        files.commit(staged, final_dir)
    return result
