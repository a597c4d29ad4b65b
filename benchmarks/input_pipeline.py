"""Input pipeline throughput: VOC-layout decode + DeepLab augmentation, images per second.

Generates a VOC-layout tree of 500x375 JPEG / palette-PNG pairs in a temporary folder,
runs `load_dataset("voc2012", "train") -> train_pipeline(crop 321, batch 10)`, skips a
warm-up, then times a few hundred images.

    python benchmarks/input_pipeline.py            # 300 pairs, 400 timed images
    python benchmarks/input_pipeline.py --threads 2 --images 600
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def make_tree(root, pairs, width=500, height=375, seed=0):
    """VOCdevkit/VOC2012 with `pairs` photo-like JPEGs and palette PNG masks."""
    from keras_msattn.data.images import VOC_COLORMAP

    rng = np.random.default_rng(seed)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    # Smooth random fields compress like photos (pure noise would be unrealistically slow).
    yy, xx = np.mgrid[0:height, 0:width] / 40.0
    ids = []
    for i in range(pairs):
        phase = rng.uniform(0, 6.3, (3, 2))
        image = np.stack(
            [127 + 100 * np.sin(xx + p[0]) * np.cos(yy * 0.7 + p[1]) for p in phase], axis=-1
        )
        image += rng.normal(0, 8, image.shape)
        image_id = f"2012_{i:06d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            os.path.join(voc, "JPEGImages", image_id + ".jpg"), quality=90
        )
        label = np.zeros((height, width), np.uint8)
        for _ in range(3):
            top, left = rng.integers(0, height - 60), rng.integers(0, width - 60)
            h, w = rng.integers(40, height // 2), rng.integers(40, width // 2)
            label[top : top + h, left : left + w] = rng.integers(1, 21)
            label[top : top + h, left : left + 2] = 255
        mask = Image.fromarray(label, mode="P")
        mask.putpalette(VOC_COLORMAP.flatten().tolist())
        mask.save(os.path.join(voc, "SegmentationClass", image_id + ".png"))
        ids.append(image_id)
    for split in ("train", "val"):
        with open(os.path.join(voc, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--images", type=int, default=400, help="timed images")
    parser.add_argument("--warmup", type=int, default=100, help="untimed images first")
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=None, help="tf.data private thread pool size"
    )
    args = parser.parse_args()

    import tensorflow as tf

    from keras_msattn.data import load_dataset, train_pipeline

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        make_tree(root, args.pairs)
        print(f"generated {args.pairs} pairs in {time.perf_counter() - start:.1f} s")
        ds = load_dataset("voc2012", "train", data_dir=root, shuffle=True, seed=0)
        ds = train_pipeline(ds, args.crop, args.batch, seed=0)
        if args.threads:
            options = tf.data.Options()
            options.threading.private_threadpool_size = args.threads
            ds = ds.with_options(options)
        iterator = iter(ds)
        for _ in range(max(1, args.warmup // args.batch)):
            next(iterator)
        batches = max(1, args.images // args.batch)
        start = time.perf_counter()
        for _ in range(batches):
            images, labels = next(iterator)
        elapsed = time.perf_counter() - start
        assert images.shape == (args.batch, args.crop, args.crop, 3), images.shape
        assert labels.dtype == tf.int32
        count = batches * args.batch
        print(
            f"{count} images in {elapsed:.2f} s: {count / elapsed:.1f} images/s "
            f"(crop {args.crop}, batch {args.batch}, {os.cpu_count()} CPUs)"
        )


if __name__ == "__main__":
    main()
