"""The multi-scale attention segmentation model (Yang & Peng, 2018).

Read top to bottom, `MultiScaleSegmenter.__init__` follows the data:
image -> scales -> shared backbone -> hypercolumn -> per-scale dilated convs ->
location attention + recalibration -> merge -> logits at the input resolution.

Reference:
    S. Yang and G. Peng, "Attention to Refine through Multi-Scales for Semantic
    Segmentation", PCM 2018. Attention-to-scale: L.-C. Chen et al., CVPR 2016.
"""

import math
import weakref

import keras
from keras import layers

from keras_msattn.backbones import BACKBONE_NAMES, build_backbone, preprocessing_mode
from keras_msattn.layers import (
    BoundedLogits,
    ImageNormalization,
    PyramidPooling,
    ResizeByScale,
    ResizeToReference,
    ScaleFusion,
)

FUSIONS = ("attention", "attention_to_scale", "average", "max", None)
# Strides of the 1x input that fusion="attention" may run its heads on; 4 is the paper's.
HEAD_STRIDES = (4, 8, 16)
# Strides of the input that a deep-supervision model may put its outputs (the
# training losses) on; 1 is the input size.
LOSS_STRIDES = (1, 2, 4, 8)
RECALIBRATIONS = ("multiply", "add", None)
MAX_SCALE = 4.0
# The smallest image side any scale may produce: a stride-8 backbone then still
# yields a 2x2 score map.
MIN_SCALED_SIDE = 16
# Widths of the attention heads, scaled with the backbone: every head runs on the
# stride-4 grid, so heads as wide as the paper's 512 would outweigh the backbone.
DEFAULT_HEAD_CHANNELS = {
    "vgg16_largefov": 96,
    "resnet18_d8": 64,
    "resnet34_d8": 64,
    "resnet50_d8": 128,
    "resnet101_d8": 128,
    "mobilenet_v2": 32,
}
# Backbones whose attention heads are depthwise-separable by default
# (`separable_heads="auto"`): on the phone-sized model they cost 6x fewer FLOPs
# than the paper's full 3x3 convs. On the miniature they scored higher at 1,500
# steps and lower at 2,800 (docs/results.md); the paper's backbones keep the
# paper's heads.
SEPARABLE_HEADS_BACKBONES = ("mobilenet_v2",)
# Backbones whose attention heads merge on a coarser grid than the paper's
# stride 4 by default (`head_stride="auto"`): on the phone-sized model the
# stride-8 grid brings the second scale to 1.28x single scale's latency against
# 1.45x; on the miniature it scored 0.9 points lower at 2,800 steps (t -0.96,
# six paired seeds) and 3.2 lower at 1,500 (docs/results.md, "Separable heads
# at the quickstart's budget").
DEFAULT_HEAD_STRIDES = {"mobilenet_v2": 8}
HYPERCOLUMN_STAGES = ("stage1", "stage2", "stage3", "stage4")
# The paper's section 3: dilation 12 for the large (1x) scale, 2 for the small (0.5x).
PAPER_DILATIONS = (12, 2)


def output_names(scales):
    """Output keys of a deep-supervision model: `"final"`, then one per scale if several."""
    scales = tuple(float(s) for s in scales)
    if len(scales) == 1:
        return ["final"]
    return ["final"] + [f"scale_{s}" for s in scales]


def check_loss_stride(loss_stride):
    """Raises ValueError unless `loss_stride` is one of `LOSS_STRIDES`."""
    if loss_stride not in LOSS_STRIDES or isinstance(loss_stride, bool):
        raise ValueError(f"`loss_stride` must be one of {LOSS_STRIDES}, got {loss_stride!r}.")


def default_scale_dilations(scales):
    """12 for the largest scale, 2 for the smallest, geometric in between (the paper's 2 scales: 12, 2)."""
    if len(scales) == 1:
        return (PAPER_DILATIONS[0],)
    largest, smallest = max(scales), min(scales)
    dilations = []
    for scale in scales:
        # Position of this scale between the largest (0) and the smallest (1), in log space.
        t = math.log(largest / scale) / math.log(largest / smallest) if largest > smallest else 0.0
        dilations.append(
            int(round(PAPER_DILATIONS[0] * (PAPER_DILATIONS[1] / PAPER_DILATIONS[0]) ** t))
        )
    return tuple(dilations)


def _check_types(scales, hypercolumn, pyramid_pooling, deep_supervision, output_stride):
    # Values from a config file or `--set`: refuse what Python would coerce silently.
    if not isinstance(scales, (tuple, list)) or not all(
        isinstance(s, (int, float)) and not isinstance(s, bool) for s in scales
    ):
        raise ValueError(f"`scales` must be a tuple of numbers, e.g. (1.0, 0.5); got {scales!r}.")
    for name, value in (
        ("hypercolumn", hypercolumn),
        ("pyramid_pooling", pyramid_pooling),
        ("deep_supervision", deep_supervision),
    ):
        if not isinstance(value, bool) and not (name == "hypercolumn" and value is None):
            raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    if not isinstance(output_stride, int) or isinstance(output_stride, bool):
        raise ValueError(f"`output_stride` must be the integer 8 or 16, got {output_stride!r}.")


def _check_arguments(backbone, num_classes, scales, fusion, scale_dilations, recalibration):
    if backbone not in BACKBONE_NAMES:
        raise ValueError(f"`backbone` must be one of {BACKBONE_NAMES}, got {backbone!r}.")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}.")
    if len(scales) == 0:
        raise ValueError("`scales` must name at least one scale, e.g. (1.0, 0.5); got ().")
    for scale in scales:
        if not 0 < scale <= MAX_SCALE:
            raise ValueError(f"Every entry of `scales` must be in (0, {MAX_SCALE}], got {scale!r}.")
    if len(set(scales)) != len(scales):
        raise ValueError(f"`scales` must not repeat a scale, got {scales!r}.")
    if fusion not in FUSIONS:
        raise ValueError(f"`fusion` must be one of {FUSIONS}, got {fusion!r}.")
    if fusion in ("attention", "attention_to_scale") and len(scales) < 2:
        raise ValueError(
            f"fusion={fusion!r} weighs several scales and needs at least two `scales`, got "
            f"{scales!r}. For the single-scale baseline use fusion=None."
        )
    if fusion is None and len(scales) != 1:
        raise ValueError(
            f"fusion=None means a single-scale model; with `scales`={scales!r} choose one of "
            f"{FUSIONS[:-1]}."
        )
    if scale_dilations not in ("auto", None) and (
        len(scale_dilations) != len(scales) or any(int(d) < 1 for d in scale_dilations)
    ):
        raise ValueError(
            "`scale_dilations` must be 'auto', None, or one positive dilation per scale "
            f"({len(scales)} for scales={scales!r}); got {scale_dilations!r}."
        )
    if recalibration not in RECALIBRATIONS:
        raise ValueError(f"`recalibration` must be one of {RECALIBRATIONS}, got {recalibration!r}.")


def _check_unused_by_fusion(fusion, hypercolumn, scale_dilations, recalibration):
    # Only the paper's attention reads these; a value other than the default (or
    # None) for another fusion would be silently ignored, so it is refused.
    for name, value, default in (
        ("hypercolumn", hypercolumn, True),
        ("scale_dilations", scale_dilations, "auto"),
        ("recalibration", recalibration, "multiply"),
    ):
        if value is not None and value != default:
            raise ValueError(
                f"`{name}`={value!r} has no effect with fusion={fusion!r}: only "
                "fusion='attention' uses it. Leave it out (or None)."
            )


# Probe models for `attention_maps`, kept outside the model so they are not
# tracked as sublayers (which would change what `save()` writes).
_ATTENTION_PROBES = weakref.WeakKeyDictionary()


@keras.saving.register_keras_serializable(package="keras_msattn")
class MultiScaleSegmenter(keras.Model):
    """Semantic segmentation with a shared backbone over several input scales.

    The input image is resized to every scale in `scales`; one backbone (and one
    classifier) runs on each, giving score maps `P^s`. With `fusion="attention"`
    (this paper) each scale's hypercolumn (several backbone stages, projected and
    resized to the stride-4 grid of the 1x input) passes a scale-specific dilated
    3x3 conv; their concatenation feeds a location-attention branch (softmax
    over scales, per pixel) and a recalibrating branch (sigmoid per pixel and
    class). The output is `sum_s l^s * (P^s * wr)`, upsampled to the input size.

    Input: raw RGB `(B, H, W, 3)`, 0..255, uint8 or float; normalization is inside
    the model. Any `H, W` work as long as every scale's image keeps a side of at
    least 16 px (`H * min(scales) >= 16`); with `pyramid_pooling` the height and
    width must also be known when the graph runs (fixed for an export).
    Output: float32 logits `(B, H, W, num_classes)`, or with `deep_supervision` a
    dict `{"final": ..., "scale_1.0": ..., "scale_0.5": ...}` (see `output_names`),
    every entry logits at `(H, W)`, for a `1 + S` cross-entropy loss.

    Args:
        backbone: one of `"vgg16_largefov"`, `"resnet18_d8"`, `"resnet34_d8"`,
            `"resnet50_d8"`, `"resnet101_d8"`, `"mobilenet_v2"`.
        num_classes: number of classes, >= 2.
        scales: input scales, default `(1.0, 0.5)`; `(1.0,)` with `fusion=None` is
            the single-scale baseline (DeepLab-LargeFOV / ResNet-d8).
        fusion: `"attention"` (this paper), `"attention_to_scale"` (Chen et al.
            2016: softmax attention from the concatenated last-stage features on
            the score grid), `"average"`, `"max"`, or `None` (single scale).
        hypercolumn: attention input from all four backbone stages (the paper's
            "multi-stage"); `False` uses only the last stage.
        scale_dilations: one dilation per scale for the scale-specific 3x3 conv;
            `"auto"` gives 12 to the largest scale and 2 to the smallest (the
            paper's `(12, 2)` for `(1.0, 0.5)`); `None` uses plain 3x3 convs (the
            ablation without diverse dilations).
        recalibration: `"multiply"` (sigmoid, the paper), `"add"` (a predicted
            bias, the paper's weaker variant) or `None` (no extra branch).
        pyramid_pooling: a PSP module (bins 1, 2, 3, 6) before the classifier.
        deep_supervision: return the dict of `1 + S` logits instead of one tensor.
        loss_stride: with `deep_supervision`, the grid the `1 + S` logits are on,
            as a stride of the input: 1 (the input size) or 2, 4, 8. The losses
            then compare them with the labels sampled onto that grid
            (`keras_msattn.losses.labels_on_grid`), as DeepLab computes its loss on
            labels downsampled by 8. At 4 the losses and the logits' upsample
            cost 16x fewer pixels (docs/performance.md). Without deep supervision
            it must be 1: the inference model's logits are at the input size.
        backbone_weights: `None`, `"imagenet"` or a path to a backbone
            `.weights.h5` file. Loaded once at construction; not kept in the config,
            since a saved model carries its weights.
        output_stride: 8 (the paper) or 16 (ResNet and MobileNetV2 only).
        backbone_width: MobileNetV2 width multiplier (alpha).
        head_channels: width of the attention heads; `None` picks a width scaled
            with the backbone (`DEFAULT_HEAD_CHANNELS`).
        attention_bound: `None` (the paper: a plain softmax over scales) or a
            positive number `b`: the location attention is `softmax(b * tanh(z / b))`,
            so no scale's weight can fall to zero and a stream the attention
            ignores early in training keeps a gradient (docs/results.md).
        head_stride: the grid `fusion="attention"` merges on, as a stride of the
            1x input: 4 (the paper: "after two pooling operations"), 8 or 16. A
            coarser grid costs the heads 4x or 16x fewer pixels (docs/performance.md).
            `"auto"` (default): 8 for `mobilenet_v2` (`DEFAULT_HEAD_STRIDES`), 4
            otherwise.
        score_refinement: beyond the paper, for `fusion="attention"`: each scale's
            score map on the head grid adds a 1x1 conv (shared by the scales) of
            that scale's dilated hypercolumn features. The paper's `P^s` come from
            the last stage alone, so no output is finer than `output_stride`; small
            objects a few strides wide are then lost whatever the attention does
            (docs/results.md, "How fine the output can be").
        separable_heads: for the attention fusions, every 3x3 conv of the heads
            (the scale-specific dilated convs, the location-attention and the
            recalibration branch) as a depthwise 3x3 conv (same dilation) and a
            1x1 conv, as DeepLabV3+ builds its mobile heads: about 6x fewer head
            FLOPs at the same widths and grid (docs/performance.md). `"auto"`
            (default): separable for `mobilenet_v2` with an attention fusion,
            the paper's full convs otherwise.
        input_shape: `(H, W, 3)`; `H` and `W` may be `None`.

    Only `fusion="attention"` reads `hypercolumn`, `scale_dilations` and
    `recalibration`, and only the two attention fusions `head_channels`. Other
    fusions store them as None in their config, and refuse a value that is
    neither the default nor None (it would have no effect).

    Example:
    >>> model = MultiScaleSegmenter(backbone="vgg16_largefov", num_classes=21)
    >>> model(np.zeros((2, 321, 321, 3), "uint8")).shape
    (2, 321, 321, 21)
    """

    def __init__(
        self,
        backbone="vgg16_largefov",
        num_classes=21,
        scales=(1.0, 0.5),
        fusion="attention",
        hypercolumn=True,
        scale_dilations="auto",
        recalibration="multiply",
        pyramid_pooling=False,
        deep_supervision=False,
        backbone_weights=None,
        output_stride=8,
        backbone_width=1.0,
        head_channels=None,
        attention_bound=None,
        head_stride="auto",
        score_refinement=False,
        loss_stride=1,
        separable_heads="auto",
        input_shape=(None, None, 3),
        **kwargs,
    ):
        _check_types(scales, hypercolumn, pyramid_pooling, deep_supervision, output_stride)
        if not isinstance(score_refinement, bool):
            raise ValueError(f"`score_refinement` must be True or False, got {score_refinement!r}.")
        if isinstance(separable_heads, str) and separable_heads == "auto":
            separable_heads = (
                fusion in ("attention", "attention_to_scale")
                and backbone in SEPARABLE_HEADS_BACKBONES
            )
        if not isinstance(separable_heads, bool):
            raise ValueError(
                f"`separable_heads` must be True, False or 'auto', got {separable_heads!r}."
            )
        if separable_heads and fusion not in ("attention", "attention_to_scale"):
            raise ValueError(
                f"`separable_heads`=True has no effect with fusion={fusion!r}: only the "
                "attention fusions have heads. Leave it out."
            )
        check_loss_stride(loss_stride)
        if loss_stride != 1 and not deep_supervision:
            raise ValueError(
                f"`loss_stride`={loss_stride!r} needs deep_supervision=True: a model with one "
                "output returns logits at the input size."
            )
        scales = tuple(float(s) for s in scales)
        if scale_dilations not in ("auto", None):
            scale_dilations = tuple(int(d) for d in scale_dilations)
        _check_arguments(backbone, num_classes, scales, fusion, scale_dilations, recalibration)
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or input_shape[2] != 3:
            raise ValueError(f"`input_shape` must be (H, W, 3), got {input_shape!r}.")
        if fusion not in ("attention", "attention_to_scale") and attention_bound is not None:
            raise ValueError(
                f"`attention_bound`={attention_bound!r} has no effect with fusion={fusion!r}: "
                "only the attention fusions have a location attention. Leave it out (or None)."
            )
        if attention_bound is not None and (
            isinstance(attention_bound, bool)
            or not isinstance(attention_bound, (int, float))
            or attention_bound <= 0
        ):
            raise ValueError(
                f"`attention_bound` must be None or a positive number, got {attention_bound!r}."
            )
        if isinstance(head_stride, str) and head_stride == "auto":
            head_stride = DEFAULT_HEAD_STRIDES.get(backbone, 4) if fusion == "attention" else None
        if head_stride is not None and (
            head_stride not in HEAD_STRIDES or isinstance(head_stride, bool)
        ):
            raise ValueError(
                f"`head_stride` must be one of {HEAD_STRIDES} or 'auto', got {head_stride!r}."
            )
        if fusion != "attention":
            _check_unused_by_fusion(fusion, hypercolumn, scale_dilations, recalibration)
            if head_stride not in (None, 4):
                raise ValueError(
                    f"`head_stride`={head_stride!r} has no effect with fusion={fusion!r}: only "
                    "fusion='attention' runs its heads on a grid of its own. Leave it out."
                )
            if score_refinement:
                raise ValueError(
                    f"`score_refinement`=True has no effect with fusion={fusion!r}: only "
                    "fusion='attention' has the per-scale hypercolumn features it reads."
                )
            # Stored as None: the saved config says only what the model computes.
            hypercolumn, scale_dilations, recalibration, head_stride = None, None, None, None
        elif head_stride is None:
            head_stride = 4
        if fusion in ("attention", "attention_to_scale"):
            if head_channels is None:
                head_channels = DEFAULT_HEAD_CHANNELS[backbone]
        else:
            head_channels = None  # no attention heads
        if scale_dilations == "auto":
            dilations = default_scale_dilations(scales)
        elif scale_dilations is None:
            dilations = (1,) * len(scales)
        else:
            dilations = scale_dilations
        self._min_input_side = math.ceil(MIN_SCALED_SIDE / min(scales))
        _check_image_side(input_shape[0], input_shape[1], self._min_input_side, "input_shape")

        # === Layers ===
        try:
            shared_backbone = build_backbone(
                backbone,
                weights=backbone_weights,
                output_stride=output_stride,
                width=backbone_width,
            )
        except ValueError as error:
            if "`width`" not in str(error):
                raise
            raise ValueError(f"{error} (the segmenter's `backbone_width`)") from None
        normalization = ImageNormalization(preprocessing_mode(backbone), name="image_normalization")
        psp = PyramidPooling(name="pyramid_pooling") if pyramid_pooling else None
        classifier = layers.Conv2D(num_classes, 1, name="classifier")

        # === Functional Model ===
        images = keras.Input(shape=input_shape, name="images")
        normalized = normalization(images)
        scale_features, scale_scores = [], []
        for scale in scales:
            scaled = (
                normalized
                if scale == 1.0
                else ResizeByScale(scale, name=f"scale_{scale}_resize")(normalized)
            )
            features = shared_backbone(scaled)
            last = psp(features["stage4"]) if psp is not None else features["stage4"]
            scale_features.append(features)
            scale_scores.append(classifier(last))

        if fusion is None:
            final_on_grid = scale_scores[0]
        elif fusion == "attention":
            # The common grid: stride 4 of the 1x input ("after two pooling operations"),
            # or a coarser one (`head_stride`) for an edge model.
            grid = ResizeByScale(1.0 / head_stride, name="grid_reference")(images)
            stages = HYPERCOLUMN_STAGES if hypercolumn else HYPERCOLUMN_STAGES[-1:]
            # 1x1 conv + BN + ReLU per tapped stage, shared by all scales like the
            # backbone; keeps the concatenated hypercolumn a few hundred channels wide.
            stage_projections = {
                stage: (
                    layers.Conv2D(
                        head_channels // 2, 1, use_bias=False, name=f"hypercolumn_{stage}_conv"
                    ),
                    layers.BatchNormalization(name=f"hypercolumn_{stage}_bn"),
                    layers.ReLU(name=f"hypercolumn_{stage}_relu"),
                )
                for stage in stages
            }
            dilated = []
            for scale, features, dilation in zip(scales, scale_features, dilations, strict=True):
                taps = []
                for stage, (conv, bn, relu) in stage_projections.items():
                    projected = relu(bn(conv(features[stage])))
                    taps.append(
                        ResizeToReference(name=f"scale_{scale}_{stage}_to_grid")([projected, grid])
                    )
                hypercolumn_features = (
                    layers.Concatenate(name=f"scale_{scale}_hypercolumn")(taps)
                    if len(taps) > 1
                    else taps[0]
                )
                dilated.append(
                    _head_conv(
                        head_channels,
                        dilation,
                        separable_heads,
                        name=f"scale_{scale}_dilated_conv",
                    )(hypercolumn_features)
                )
            attention_features = layers.Concatenate(name="attention_features")(dilated)
            scale_weights = _scale_weights(
                _attention_branch(
                    attention_features,
                    head_channels,
                    len(scales),
                    "location_attention",
                    separable_heads,
                ),
                attention_bound,
            )
            recalibration_map = None
            if recalibration is not None:
                recalibration_map = _attention_branch(
                    attention_features, head_channels, num_classes, "recalibration", separable_heads
                )
                recalibration_map = layers.Activation(
                    "sigmoid" if recalibration == "multiply" else "linear",
                    name="recalibration",
                    dtype="float32",
                )(recalibration_map)
            scores_on_grid = [
                ResizeToReference(name=f"scale_{scale}_logits_to_grid")([scores, grid])
                for scale, scores in zip(scales, scale_scores, strict=True)
            ]
            if score_refinement:
                refinement = layers.Conv2D(num_classes, 1, name="score_refinement")
                scores_on_grid = [
                    layers.Add(name=f"scale_{scale}_refined_logits")([scores, refinement(features)])
                    for scale, scores, features in zip(scales, scores_on_grid, dilated, strict=True)
                ]
                # Each stream's own loss (deep supervision) then trains its refined scores.
                scale_scores = scores_on_grid
            final_on_grid = ScaleFusion(
                "weighted_sum", recalibration=recalibration, name="scale_fusion", dtype="float32"
            )(scores_on_grid, scale_weights=scale_weights, recalibration=recalibration_map)
        else:
            # Attention-to-scale, average and max merge on the score grid of the 1x input.
            grid = ResizeByScale(1.0 / output_stride, name="grid_reference")(images)
            scores_on_grid = [
                ResizeToReference(name=f"scale_{scale}_logits_to_grid")([scores, grid])
                for scale, scores in zip(scales, scale_scores, strict=True)
            ]
            scale_weights = None
            if fusion == "attention_to_scale":
                last_stage = [
                    ResizeToReference(name=f"scale_{scale}_stage4_to_grid")(
                        [features["stage4"], grid]
                    )
                    for scale, features in zip(scales, scale_features, strict=True)
                ]
                attention_features = layers.Concatenate(name="attention_features")(last_stage)
                scale_weights = _scale_weights(
                    _attention_branch(
                        attention_features,
                        head_channels,
                        len(scales),
                        "location_attention",
                        separable_heads,
                    ),
                    attention_bound,
                )
            final_on_grid = ScaleFusion(
                "weighted_sum" if fusion == "attention_to_scale" else fusion,
                name="scale_fusion",
                dtype="float32",
            )(scores_on_grid, scale_weights=scale_weights)

        final = ResizeToReference(name="final_upsample", dtype="float32")([final_on_grid, images])
        outputs = final
        if deep_supervision:
            # The 1 + S logits for the losses, on the input or on a coarser grid.
            loss_grid = (
                images
                if loss_stride == 1
                else ResizeByScale(1.0 / loss_stride, name="loss_grid_reference")(images)
            )
            outputs = {
                "final": final
                if loss_stride == 1
                else ResizeToReference(name="final_to_loss_grid", dtype="float32")(
                    [final_on_grid, loss_grid]
                )
            }
            if len(scales) > 1:
                for scale, scores in zip(scales, scale_scores, strict=True):
                    name = (
                        f"scale_{scale}_upsample"
                        if loss_stride == 1
                        else f"scale_{scale}_to_loss_grid"
                    )
                    outputs[f"scale_{scale}"] = ResizeToReference(name=name, dtype="float32")(
                        [scores, loss_grid]
                    )
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = shared_backbone
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.scales = scales
        self.fusion = fusion
        self.hypercolumn = hypercolumn
        self.scale_dilations = scale_dilations
        self.recalibration = recalibration
        self.pyramid_pooling = pyramid_pooling
        self.deep_supervision = deep_supervision
        self.output_stride = output_stride
        self.backbone_width = backbone_width
        self.head_channels = head_channels
        self.attention_bound = None if attention_bound is None else float(attention_bound)
        self.head_stride = head_stride
        self.score_refinement = score_refinement
        self.loss_stride = loss_stride
        self.separable_heads = separable_heads
        self.image_shape = input_shape

    def __call__(self, inputs, *args, **kwargs):
        shape = getattr(inputs, "shape", None)
        if shape is not None and len(shape) == 4:
            _check_image_side(shape[1], shape[2], self._min_input_side, "images")
        return super().__call__(inputs, *args, **kwargs)

    @property
    def min_input_side(self):
        """The smallest image height or width this model accepts."""
        return self._min_input_side

    def check_input_size(self, height, width):
        """Raises `ValueError` if this model cannot take `(height, width)` images."""
        _check_image_side(height, width, self._min_input_side, "input size")
        fixed_h, fixed_w = self.image_shape[:2]
        if (fixed_h is not None and height != fixed_h) or (
            fixed_w is not None and width != fixed_w
        ):
            raise ValueError(
                f"This model was built for {fixed_h}x{fixed_w} inputs, got {height}x{width}."
            )

    def attention_maps(self, images, training=False):
        """What the fusion saw, on its grid, as numpy arrays.

        Returns a dict with `"scale_logits"` (`{scale: (B, h, w, C)}`), and for
        the attention fusions `"scale_weights"` (`(B, h, w, S)`, summing to 1 over
        the scales, in the order of `scales`) and, with recalibration,
        `"recalibration"` (`(B, h, w, C)`; in (0, 1) for `"multiply"`). The grid is
        the `head_stride` grid of the input for `fusion="attention"` and the score grid
        (stride `output_stride`) otherwise; a single-scale model returns its score map.
        `training=True` normalises every backbone pass with its own batch's
        statistics (and, as in any Keras call, updates the moving ones): a
        diagnostic of the shared statistics (benchmarks/bn_statistics.py).
        """
        probe = _ATTENTION_PROBES.get(self)
        if probe is None:
            outputs = {"scale_logits": {}}
            for scale in self.scales:
                name = f"scale_{scale}_logits_to_grid" if len(self.scales) > 1 else "classifier"
                if self.score_refinement:
                    name = f"scale_{scale}_refined_logits"
                outputs["scale_logits"][str(scale)] = self.get_layer(name).output
            layer_names = {layer.name for layer in self.layers}
            for key in ("scale_weights", "recalibration"):
                if key in layer_names:
                    outputs[key] = self.get_layer(key).output
            probe = keras.Model(self.input, outputs, name=f"{self.name}_attention_probe")
            _ATTENTION_PROBES[self] = probe
        maps = probe(images, training=training)
        maps["scale_logits"] = {
            float(scale): keras.ops.convert_to_numpy(value).astype("float32")
            for scale, value in maps["scale_logits"].items()
        }
        for key in ("scale_weights", "recalibration"):
            if key in maps:
                maps[key] = keras.ops.convert_to_numpy(maps[key]).astype("float32")
        return maps

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": self.backbone_name,
                "num_classes": self.num_classes,
                "scales": self.scales,
                "fusion": self.fusion,
                "hypercolumn": self.hypercolumn,
                "scale_dilations": self.scale_dilations,
                "recalibration": self.recalibration,
                "pyramid_pooling": self.pyramid_pooling,
                "deep_supervision": self.deep_supervision,
                # The saved model carries the weights; re-reading them on load would
                # need the file (or the network) again.
                "backbone_weights": None,
                "output_stride": self.output_stride,
                "backbone_width": self.backbone_width,
                "head_channels": self.head_channels,
                "attention_bound": self.attention_bound,
                "head_stride": self.head_stride,
                "score_refinement": self.score_refinement,
                "loss_stride": self.loss_stride,
                "separable_heads": self.separable_heads,
                "input_shape": self.image_shape,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # A model saved before `separable_heads` or `head_stride` existed has the
        # paper's full convs on the paper's grid.
        return cls(**{"separable_heads": False, "head_stride": 4, **config})


def _scale_weights(logits, bound):
    """Softmax over scales; with a `bound`, of the logits squashed into (-bound, bound)."""
    if bound is not None:
        logits = BoundedLogits(bound, name="location_attention_bound")(logits)
    return layers.Softmax(axis=-1, name="scale_weights", dtype="float32")(logits)


def _head_conv(channels, dilation, separable, name):
    """A head's 3x3 conv + ReLU: a full conv, or depthwise 3x3 then 1x1 (`separable_heads`)."""
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    return conv(channels, 3, padding="same", dilation_rate=dilation, activation="relu", name=name)


def _attention_branch(features, channels, outputs, name, separable):
    """Attention-to-scale's head: 3x3 conv + ReLU, then a 1x1 conv to `outputs` maps."""
    hidden = _head_conv(channels, 1, separable, name=f"{name}_conv")(features)
    return layers.Conv2D(outputs, 1, name=f"{name}_logits")(hidden)


def _check_image_side(height, width, min_side, argument):
    for side in (height, width):
        if side is not None and side < min_side:
            raise ValueError(
                f"`{argument}`: images must be at least {min_side}x{min_side} so that every "
                f"scale keeps a side of {MIN_SCALED_SIDE} px or more; got {height}x{width}."
            )


def inference_copy(model):
    """A float32, single-output copy of a (deep-supervision) segmenter, same weights.

    What training saves: mixed-precision or deep-supervision training models
    become a plain logits model that loads anywhere.
    """
    config = model.get_config()
    config.update(deep_supervision=False, loss_stride=1, dtype="float32")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clone = MultiScaleSegmenter.from_config(config)
    finally:
        keras.config.set_dtype_policy(previous)
    copy_weights(model, clone)
    return clone


def copy_weights(source, target):
    """Copies weights layer by layer (by name); deep supervision adds no weights."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
