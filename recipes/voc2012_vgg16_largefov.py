"""PASCAL VOC 2012, VGG16 DeepLab-LargeFOV backbone: the paper's Tables 1 and 2.

Data: VOC 2012 + SBD ("train_aug", 10,582 images) for training, VOC 2012 val
(1,449 images) for validation; `--data-dir` holds VOCdevkit/VOC2012 and
benchmark_RELEASE/dataset (docs/recipes.md).

Settings. From the paper (section 3): two scales, 1x and 0.5x; dilations 12
(1x) and 2 (0.5x) for "diverse dilations"; poly learning rate with power 0.9;
the decoder (everything outside the backbone) at 10x the backbone's rate; the
1 + S cross-entropy loss; ImageNet-pretrained VGG16. The paper states no crop,
batch, learning rate or step count; it follows attention-to-scale (Chen et al.,
CVPR 2016), which trains DeepLab-LargeFOV. We take DeepLab-LargeFOV's published
"poly" setting (DeepLab v2, Chen et al., TPAMI 2018, VOC experiments): 321x321
crops, batch 10, base learning rate 1e-3, SGD with momentum 0.9 and weight
decay 5e-4, 20k iterations (about 19 passes over train_aug); plus DeepLab's
random scale 0.5-2.0 and flips. Change any of them with --set, e.g.
--set steps=6000 batch_size=20.

ImageNet weights come from keras.applications' VGG16 (fc6/fc7 start from
scratch: the dilated 1024-channel fc6 has no ImageNet counterpart).

Variants (each sets every fusion argument of MultiScaleSegmenter):
    single_scale        Table 1, "Baseline (DeepLab-LargeFOV)": 1x only, no fusion
    max_merge           Table 1, "Merged with MaxPooling"
    average_merge       Table 1, "Merged with AvgPooling"
    attention_to_scale  Table 1 "Attention-to-Scale" = Table 2 "Base model"
    multi_stage         Table 2 "Base model+": hypercolumn attention input
    diverse_dilations   Table 2 "Base model++": + per-scale dilated convs
    full                Table 1/2 "Our method": + recalibrating branch (default)

    msattn train recipes/voc2012_vgg16_largefov.py --variant full \
        --data-dir ~/data --out runs/voc_full
"""

from keras_msattn.training import TrainConfig

CONFIG = TrainConfig(
    dataset="voc2012",
    train_split="train_aug",
    val_split="val",
    crop_size=321,
    scale_range=(0.5, 2.0),
    flip=True,
    val_size=512,  # VOC images are at most 500 px: validation at full resolution
    model=dict(
        backbone="vgg16_largefov",
        backbone_weights="imagenet",
        scales=(1.0, 0.5),
    ),
    batch_size=10,
    steps=20_000,
    steps_per_epoch=1_000,
    optimizer="sgd",
    learning_rate=1e-3,
    decoder_lr_multiplier=10.0,
    momentum=0.9,
    weight_decay=5e-4,
    poly_power=0.9,
)

# Variants replace these entries of CONFIG.model.
_ATTENTION = dict(scales=(1.0, 0.5), fusion="attention")
_MODELS = {
    "single_scale": dict(scales=(1.0,), fusion=None),
    "max_merge": dict(scales=(1.0, 0.5), fusion="max"),
    "average_merge": dict(scales=(1.0, 0.5), fusion="average"),
    "attention_to_scale": dict(scales=(1.0, 0.5), fusion="attention_to_scale"),
    "multi_stage": dict(**_ATTENTION, hypercolumn=True, scale_dilations=None, recalibration=None),
    "diverse_dilations": dict(
        **_ATTENTION, hypercolumn=True, scale_dilations="auto", recalibration=None
    ),
    "full": dict(**_ATTENTION, hypercolumn=True, scale_dilations="auto", recalibration="multiply"),
}
VARIANTS = {name: dict(model=model) for name, model in _MODELS.items()}
DEFAULT_VARIANT = "full"

if __name__ == "__main__":
    import sys

    from keras_msattn.cli import main

    sys.exit(main(["train", __file__, *sys.argv[1:]]))
