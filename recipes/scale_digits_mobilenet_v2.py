"""ScaleDigits (the embedded dataset: digits 12-188 px high on photographs), MobileNetV2.

Needs no download and no --data-dir: images are generated on the fly from files
inside scikit-learn and scikit-image. Small enough to train on a CPU.

Settings:
- 192x192 images, trained whole (crop = image size). No random scaling (the
  dataset already spans a 15x range of digit sizes, and its training split is
  unlimited) and no flips (a mirrored digit is not a digit).
- MobileNetV2, width 0.5, output stride 8, from scratch (the ImageNet weights
  would need a download), so the decoder trains at the backbone's rate
  (`decoder_lr_multiplier=1`: the 10x rule is for a pretrained encoder).
- Adam, learning rate 1e-3, poly decay, no weight decay; batch 8, 3,000 steps,
  validation on the 200 val images every 500 steps.

Variants: single_scale (1x only), average_merge, full (the paper's model, default).

    msattn train recipes/scale_digits_mobilenet_v2.py --out runs/digits
"""

from keras_msattn.training import TrainConfig

CONFIG = TrainConfig(
    dataset="scale_digits",
    train_split="train",
    val_split="val",
    crop_size=192,
    scale_range=(1.0, 1.0),
    flip=False,
    val_images=None,
    val_size=192,
    model=dict(
        backbone="mobilenet_v2",
        backbone_weights=None,
        backbone_width=0.5,
        output_stride=8,
        scales=(1.0, 0.5),
    ),
    batch_size=8,
    steps=3_000,
    steps_per_epoch=500,
    optimizer="adam",
    learning_rate=1e-3,
    decoder_lr_multiplier=1.0,
    weight_decay=0.0,
    poly_power=0.9,
)

VARIANTS = {
    "single_scale": dict(model=dict(scales=(1.0,), fusion=None)),
    "average_merge": dict(model=dict(scales=(1.0, 0.5), fusion="average")),
    "full": dict(
        model=dict(
            scales=(1.0, 0.5),
            fusion="attention",
            hypercolumn=True,
            scale_dilations="auto",
            recalibration="multiply",
        )
    ),
}
DEFAULT_VARIANT = "full"

if __name__ == "__main__":
    import sys

    from keras_msattn.cli import main

    sys.exit(main(["train", __file__, *sys.argv[1:]]))
