"""Effective receptive field of each scale's stream, from input gradients, against digit sizes.

For a trained model and each of its streams, the gradient of the stream's score
for its predicted class at the centre cell of its grid (`scale_{s}_logits_to_grid`,
or the classifier for a single-scale model) with respect to the input image,
absolute and summed over RGB, averaged over `--images` ScaleDigits test images
generated at `--image-size` px (large enough that the field is not cut by the
borders). Reported: the half-side in input pixels of the smallest centred
square that holds 50% and 90% of the gradient mass, i.e. how far from a pixel
the stream draws what it scores there (Luo et al. 2016's effective receptive
field). The 0.5x stream's gradient goes through the downscaling, so its radii
are in the same input pixels as the 1x stream's.

One JSON line per model in `--out`, skipped on a rerun (the model path is the key).

    python benchmarks/receptive_field.py MODEL.keras [MODEL.keras ...]
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DEFAULT_OUT = os.path.join("benchmarks", "results", "receptive_field.jsonl")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help=".keras models saved by keras_msattn")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in args.models:
        if not os.path.isfile(path):
            parser.error(f"model not found: {path}")
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    return args


def mass_radius(gradient, share):
    """Half-side of the smallest square centred on the image that holds `share` of the mass."""

    size = gradient.shape[0]
    centre = size // 2
    total = gradient.sum()
    for radius in range(size // 2 + 1):
        window = gradient[
            max(0, centre - radius) : centre + radius + 1,
            max(0, centre - radius) : centre + radius + 1,
        ]
        if window.sum() >= share * total:
            return radius
    return size // 2


def stream_gradients(model, images):
    """{scale: mean |d score / d input| summed over RGB}, (H, W) each."""
    import keras
    import numpy as np
    import tensorflow as tf

    names = {
        str(scale): (f"scale_{scale}_logits_to_grid" if len(model.scales) > 1 else "classifier")
        for scale in model.scales
    }
    probe = keras.Model(
        model.input, {scale: model.get_layer(name).output for scale, name in names.items()}
    )
    sums = {scale: np.zeros(images.shape[1:3]) for scale in names}
    for image in images:
        inputs = tf.Variable(image[None].astype("float32"))
        with tf.GradientTape(persistent=True) as tape:
            outputs = probe(inputs, training=False)
            scores = {}
            for scale, logits in outputs.items():
                row, col = logits.shape[1] // 2, logits.shape[2] // 2
                cell = logits[0, row, col]
                scores[scale] = cell[int(tf.argmax(cell))]
        for scale, score in scores.items():
            gradient = tape.gradient(score, inputs)[0].numpy()
            sums[scale] += np.abs(gradient).sum(axis=-1)
        del tape
    return {scale: total / len(images) for scale, total in sums.items()}


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from keras_msattn.data import scale_digits
    from keras_msattn.inference import load_segmenter

    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = {json.loads(line)["model"] for line in f if line.strip()}
    images = np.stack(
        [
            scale_digits.generate("test", i, image_size=args.image_size)[0]
            for i in range(args.images)
        ]
    )
    for path in args.models:
        key = os.path.relpath(path)
        if key in done:
            print(f"{key}: already in {args.out}")
            continue
        start = time.perf_counter()
        model = load_segmenter(path)
        gradients = stream_gradients(model, images)
        record = {
            "model": key,
            "output_stride": model.output_stride,
            "scales": list(model.scales),
            "images": args.images,
            "image_size": args.image_size,
            "radius_50": {s: mass_radius(g, 0.5) for s, g in gradients.items()},
            "radius_90": {s: mass_radius(g, 0.9) for s, g in gradients.items()},
            "seconds": round(time.perf_counter() - start, 1),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
