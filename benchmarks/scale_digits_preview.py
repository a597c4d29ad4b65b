"""Preview and speed check of the ScaleDigits dataset.

Saves a grid of examples (image, coloured label map, size map) to a PNG and
prints single-process generation speed.

    python benchmarks/scale_digits_preview.py preview.png --split val --count 8
"""

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from keras_msattn.data import scale_digits  # noqa: E402

LABEL_COLORS = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ]
)
SIZE_COLORS = np.array([[0, 0, 0], [255, 80, 80], [255, 200, 0], [80, 160, 255]])


def measure_speed(split, image_size, count):
    scale_digits.generate(split, 0, image_size=image_size)  # load sources once
    start = time.perf_counter()
    for index in range(count):
        scale_digits.generate(split, index, image_seed=1, image_size=image_size)
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("--split", default="val", choices=scale_digits.SPLITS)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=scale_digits.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--speed-images", type=int, default=300)
    args = parser.parse_args()

    columns = 2  # examples per row, three panels each
    rows = (args.count + columns - 1) // columns
    figure, axes = plt.subplots(rows, 3 * columns, figsize=(3 * 3 * columns, 3.1 * rows + 1.2))
    axes = np.atleast_2d(axes)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(args.count):
        image, label, size_map, digits = scale_digits.generate(
            args.split, i, image_seed=args.seed, image_size=args.image_size
        )
        row, col = divmod(i, columns)
        panels = axes[row, 3 * col : 3 * col + 3]
        panels[0].imshow(image)
        described = ", ".join(f"{d['digit']}:{d['height']}px" for d in digits)
        panels[0].set_title(f"#{i}  {described}", fontsize=8)
        panels[1].imshow(LABEL_COLORS[label].astype(np.uint8), interpolation="nearest")
        panels[1].set_title("label", fontsize=8)
        panels[2].imshow(SIZE_COLORS[size_map].astype(np.uint8), interpolation="nearest")
        panels[2].set_title("size bucket", fontsize=8)

    small_below, large_above = scale_digits.size_thresholds(args.image_size)
    class_key = [
        Patch(color=LABEL_COLORS[c] / 255, label=name)
        for c, name in enumerate(scale_digits.CLASS_NAMES)
    ]
    size_key = [
        Patch(color=SIZE_COLORS[1] / 255, label=f"small (<{small_below:.0f}px)"),
        Patch(color=SIZE_COLORS[2] / 255, label="medium"),
        Patch(color=SIZE_COLORS[3] / 255, label=f"large (>{large_above:.0f}px)"),
    ]
    figure.legend(handles=class_key + size_key, loc="lower center", ncol=14, fontsize=8)
    figure.suptitle(
        f"ScaleDigits {args.split} (seed {args.seed}, {args.image_size}px): "
        "image, label (class colours), size bucket",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0.04, 1, 0.97))
    tmp = f"{args.output}.tmp.png"
    figure.savefig(tmp, dpi=90)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")

    if args.speed_images > 0:
        speed = measure_speed(args.split, args.image_size, args.speed_images)
        print(f"generation: {speed:.0f} images/s ({1000 / speed:.2f} ms/image), single process")


if __name__ == "__main__":
    main()
