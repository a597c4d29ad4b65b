"""ADE20K (SceneParsing 2016, 150 classes), ResNet34-d8 backbone: the paper's Table 3.

Data: ADEChallengeData2016 (20,210 training, 2,000 validation images) under
`--data-dir` (docs/recipes.md).

Settings: two scales 1x and 0.5x, poly learning rate (power 0.9) and the decoder
at 10x the backbone's rate (the paper). The paper gives no crop, batch, step
count or optimizer for ADE20K; these follow PSPNet's ADE20K setup (Zhao et al.,
CVPR 2017, section 5.1), which the paper compares against: SGD, momentum 0.9,
weight decay 1e-4, base learning rate 1e-2, batch 16, 473x473 crops, random
scale 0.5-2.0, flips, and 150k iterations at batch 16 (PSPNet's count). Change
any with --set, e.g. --set steps=80000 batch_size=8.

Hardware: these defaults assume 4 GPUs of at least 16 GB (the global batch of
16 splits into 4 images per device). `msattn summary --set backbone=resnet34_d8
num_classes=150 --input-size 473 473` estimates 3.55 GiB of training memory per
image + 0.32 GiB: about 14.5 GiB per device at 4 images, 57 GiB at all 16 on
one device (which a 24 GB machine cannot hold: the kernel kills the run with
no message). On one 24 GB GPU use --set batch_size=4; `msattn train` prints
the estimate for the chosen batch per device at start-up.

Backbone weights: keras.applications has no ResNet34, so this recipe starts
from scratch (backbone_weights=None). The paper used an ImageNet ResNet34: pass
a `.weights.h5` file saved from `build_backbone("resnet34_d8")` with
--set backbone_weights='"/path/resnet34_d8.weights.h5"' to match it.

Validation during training uses the first 500 val images, shrunk to fit 512x512
(for choosing best.keras); `msattn evaluate` gives the full-resolution numbers.

Variants:
    baseline            Table 3 "ResNet34-dilated8 (Baseline)": 1x only
    attention_to_scale  Table 3 "Baseline + attention-to-scale"
    psp                 Table 3 "Baseline + PSP" (1x only, pyramid pooling)
    full                Table 3 "Baseline + our attention model" (default)
    full_psp            Table 3 "Baseline + our attention model + PSP"

    msattn train recipes/ade20k_resnet34_d8.py --variant full_psp \
        --data-dir ~/data --out runs/ade_full_psp
"""

from keras_msattn.training import TrainConfig

CONFIG = TrainConfig(
    dataset="ade20k",
    train_split="train",
    val_split="val",
    crop_size=473,
    scale_range=(0.5, 2.0),
    flip=True,
    val_images=500,
    val_size=512,
    model=dict(
        backbone="resnet34_d8",
        backbone_weights=None,
        output_stride=8,
        scales=(1.0, 0.5),
    ),
    batch_size=16,
    steps=150_000,
    steps_per_epoch=5_000,
    optimizer="sgd",
    learning_rate=1e-2,
    decoder_lr_multiplier=10.0,
    momentum=0.9,
    weight_decay=1e-4,
    poly_power=0.9,
)

# Variants replace these entries of CONFIG.model.
_OURS = dict(
    scales=(1.0, 0.5),
    fusion="attention",
    hypercolumn=True,
    scale_dilations="auto",
    recalibration="multiply",
)
VARIANTS = {
    "baseline": dict(model=dict(scales=(1.0,), fusion=None, pyramid_pooling=False)),
    "attention_to_scale": dict(
        model=dict(scales=(1.0, 0.5), fusion="attention_to_scale", pyramid_pooling=False)
    ),
    "psp": dict(model=dict(scales=(1.0,), fusion=None, pyramid_pooling=True)),
    "full": dict(model=dict(**_OURS, pyramid_pooling=False)),
    "full_psp": dict(model=dict(**_OURS, pyramid_pooling=True)),
}
DEFAULT_VARIANT = "full"

if __name__ == "__main__":
    import sys

    from keras_msattn.cli import main

    sys.exit(main(["train", __file__, *sys.argv[1:]]))
