"""The best mIoU a model can reach on ScaleDigits when its logits live on a coarser grid.

An oracle that knows every label: the one-hot labels are averaged over each
stride x stride cell (the best logits a head on that grid can hold), resized
back to full resolution bilinearly (as the model's ResizeToReference does) and
arg-maxed. What it loses is what the grid alone costs, by digit size.

    python benchmarks/grid_oracle.py --images 300 --out benchmarks/results/grid_oracle.jsonl
"""

import argparse
import json
import os

import numpy as np


def oracle_predictions(labels, stride, num_classes):
    import tensorflow as tf

    if stride == 1:
        return labels
    one_hot = tf.one_hot(labels, num_classes)
    size = labels.shape[1]
    coarse = tf.nn.avg_pool2d(one_hot, stride, stride, "VALID")
    fine = tf.image.resize(coarse, (size, size), method="bilinear")
    return tf.argmax(fine, axis=-1, output_type=tf.int32).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--out", default="benchmarks/results/grid_oracle.jsonl")
    args = parser.parse_args()

    from keras_msattn.data import scale_digits
    from keras_msattn.inference import mean_iou

    data = scale_digits.load(
        "test", num_images=args.images, image_size=args.image_size, with_size_map=True
    )
    _, labels, size_maps = (np.stack(a) for a in zip(*data.as_numpy_iterator(), strict=True))
    num_classes = scale_digits.NUM_CLASSES
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for stride in args.strides:
        predictions = oracle_predictions(labels, stride, num_classes)
        confusion = np.zeros((num_classes, num_classes), np.int64)
        np.add.at(confusion, (labels.ravel(), predictions.ravel()), 1)
        by_size = scale_digits.size_bucket_miou(
            labels, predictions, size_maps, image_size=args.image_size
        )
        digit_pixels = {
            name: float(np.mean(predictions[size_maps == b + 1] == labels[size_maps == b + 1]))
            for b, name in enumerate(scale_digits.SIZE_BUCKETS)
        }
        record = {
            "stride": stride,
            "images": args.images,
            "image_size": args.image_size,
            "miou": mean_iou(confusion),
            **{f"miou_{k}": v for k, v in by_size.items()},
            **{f"pixel_accuracy_{k}": v for k, v in digit_pixels.items()},
        }
        print(json.dumps(record))
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
