"""What one training run depends on: `TrainConfig`, recipes and `--set` overrides.

A recipe (`recipes/*.py`) is a plain Python file defining `CONFIG = TrainConfig(...)`
and optionally `VARIANTS = {name: overrides}` and `DEFAULT_VARIANT`. The model is
one section of the config, `model`: the keyword arguments of
`MultiScaleSegmenter`, so the model's arguments are written down in one place
(the segmenter's signature). Arguments a recipe leaves out take the
segmenter's defaults; `num_classes` left out comes from the dataset.

Overrides, from a variant or from `msattn train --set`, replace top-level
fields; `model` overrides are merged into the recipe's model section:

    --set steps=100 batch_size=4 model.fusion=average model.scales=(1.0,)
"""

import ast
import dataclasses
import importlib.util
import inspect
import json
import os
import traceback
import types

from keras_msattn.data import dataset_info
from keras_msattn.data.datasets import dataset_options
from keras_msattn.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw")
# Set by training itself, never by a config.
TRAINING_OWNED_MODEL_ARGUMENTS = ("deep_supervision", "loss_stride", "input_shape")


def _paper_model():
    # The paper's VOC model; the remaining arguments take the segmenter's defaults.
    return {"backbone": "vgg16_largefov", "backbone_weights": "imagenet"}


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run depends on. Defaults: the paper's VOC setting."""

    # --- Data ---
    dataset: str = "voc2012"  # a `load_dataset` name
    data_dir: str | None = None
    train_split: str = "train_aug"
    val_split: str = "val"
    dataset_options: dict = dataclasses.field(default_factory=dict)  # to load_dataset
    skip_bad: bool = False  # skip unreadable files with a warning instead of failing
    crop_size: int = 321
    scale_range: tuple = (0.5, 2.0)  # random scaling before the crop (DeepLab)
    flip: bool = True  # random horizontal flips
    # Random rotation (degrees) and horizontal shear of each crop, uniform in
    # [-value, value]; 0 leaves them out.
    rotation_range: float = 0.0
    shear_range: float = 0.0
    # Augmented crops taken from each loaded training image (data echoing): above
    # 1 when making an image costs a good part of a step, as generating a
    # ScaleDigits image does; the copies are shuffled apart before they are cropped.
    crops_per_image: int = 1
    val_images: int | None = None  # validate on the first N images; None: all, 0: none
    # Validation images larger than this are shrunk to fit, then all are padded
    # to val_size x val_size: one fixed shape (one trace; PSP needs static shapes).
    val_size: int | None = 512

    # --- Model: `MultiScaleSegmenter` keyword arguments ---
    model: dict = dataclasses.field(default_factory=_paper_model)

    # --- Optimization ---
    batch_size: int = 10  # global, over all replicas
    steps: int = 20000  # optimizer steps in total
    steps_per_epoch: int = 1000  # checkpoint + validation interval
    optimizer: str = "sgd"  # "sgd", "adam" or "adamw"
    learning_rate: float = 1e-3  # the backbone's; poly-decayed to 0 over `steps`
    decoder_lr_multiplier: float = 10.0
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    loss_weights: dict | None = None  # {output name: weight}; None: 1 for each
    # The grid of the 1 + S losses, as a stride of the crop: 1 (full resolution)
    # or 2, 4, 8 (labels sampled onto it; `MultiScaleSegmenter`'s `loss_stride`).
    loss_stride: int = 1
    # Below 1, each image's loss averages only this fraction of its pixels, those
    # with the highest cross-entropy (`SegmentationCrossEntropy`); 1: every pixel.
    hard_pixel_fraction: float = 1.0
    sync_batchnorm: bool = True  # batch statistics over the global batch, not per replica
    mixed_precision: bool = False  # mixed_float16 on GPU, mixed_bfloat16 elsewhere
    # XLA stays off: the confusion-matrix metrics count with a data-sized bincount,
    # which XLA cannot compile (Keras's "auto" would pick XLA on one GPU and fail).
    jit_compile: str | bool = False
    seed: int = 0

    # --- After training ---
    # model.keras gets batch-norm statistics re-estimated on the first N training
    # images at val_size, not augmented: the moving averages of training crops do
    # not fit whole images (`keras_msattn.batch_norm`). 0: the moving averages.
    batch_norm_images: int = 0

    @property
    def scales(self):
        """The model's input scales (after `resolve_config`, always set)."""
        return tuple(self.model.get("scales", model_defaults()["scales"]))

    @property
    def num_classes(self):
        return self.model.get("num_classes")


def config_keys():
    return [field.name for field in dataclasses.fields(TrainConfig)]


def model_defaults():
    """`MultiScaleSegmenter`'s keyword arguments and their defaults (the one list)."""
    from keras_msattn.segmenter import MultiScaleSegmenter

    parameters = inspect.signature(MultiScaleSegmenter.__init__).parameters
    return {
        name: parameter.default
        for name, parameter in parameters.items()
        if parameter.default is not inspect.Parameter.empty
        and name not in TRAINING_OWNED_MODEL_ARGUMENTS
    }


def _is_int(value, minimum):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# Fields whose annotation is narrower than what they take.
_ALSO_ACCEPTED = {
    "train_split": (type(None),),
    "val_split": (type(None),),
    "crop_size": (tuple, list),
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "True or False",
               dict: "a dict", tuple: "a tuple", list: "a list", type(None): "None"}  # fmt: skip


def _annotation_types(annotation):
    if isinstance(annotation, types.UnionType):
        return annotation.__args__
    return (annotation,)


def _has_type(value, kind):
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(value, kind)


def _check_field_types(config):
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        kinds = _annotation_types(field.type) + _ALSO_ACCEPTED.get(field.name, ())
        if not any(_has_type(value, kind) for kind in kinds):
            expected = " or ".join(dict.fromkeys(_TYPE_NAMES.get(k, k.__name__) for k in kinds))
            raise ValueError(f"`{field.name}` must be {expected}, got {value!r}.")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_loss_weights(config):
    from keras_msattn.segmenter import output_names

    if config.loss_weights is None:
        return
    try:
        names = output_names(config.scales)
    except (TypeError, ValueError):
        return  # bad scales: building the model names them
    for name, weight in config.loss_weights.items():
        if name not in names:
            raise ValueError(
                f"`loss_weights` has the key {name!r}, which is not an output of this model; "
                f"its outputs are {', '.join(names)}."
            )
        if not _is_number(weight) or weight < 0:
            raise ValueError(f"`loss_weights[{name!r}]` must be a number >= 0, got {weight!r}.")


def _check_dataset_options(config):
    allowed = (*dataset_options(config.dataset), "num_classes")
    for name in config.dataset_options:
        if name not in allowed:
            raise ValueError(
                f"`dataset_options` has the key {name!r}, which the {config.dataset!r} loader "
                f"does not take; it takes: {', '.join(allowed)}."
            )


def _check_batch_norm_images(config):
    count = config.batch_norm_images
    if not _is_int(count, 0):
        raise ValueError(f"`batch_norm_images` must be an integer >= 0, got {count!r}.")
    if count and (config.batch_size < 2 or count < config.batch_size):
        # Batch statistics need 2 or more images, and a batch of them.
        raise ValueError(
            f"`batch_norm_images` {count} needs `batch_size` >= 2 and at least one batch "
            f"of images (batch_size is {config.batch_size}); use 0 to keep the moving averages."
        )


def check_config(config):
    """Raises ValueError naming the first field with an unusable value."""
    from keras_msattn.losses import check_hard_pixel_fraction
    from keras_msattn.segmenter import check_loss_stride

    _check_field_types(config)
    check_loss_stride(config.loss_stride)  # before the model is built: no --out yet
    for name, minimum in (
        ("steps", 1),
        ("steps_per_epoch", 1),
        ("batch_size", 1),
        ("seed", 0),
        ("crops_per_image", 1),
    ):
        if not _is_int(getattr(config, name), minimum):
            raise ValueError(
                f"`{name}` must be an integer >= {minimum}, got {getattr(config, name)!r}."
            )
    _check_batch_norm_images(config)
    check_hard_pixel_fraction(config.hard_pixel_fraction)
    if not 0 <= config.rotation_range <= 180:
        raise ValueError(
            f"`rotation_range` must be in [0, 180] degrees, got {config.rotation_range!r}."
        )
    if not 0 <= config.shear_range < 1:
        raise ValueError(f"`shear_range` must be in [0, 1), got {config.shear_range!r}.")
    for name in ("val_images", "val_size"):
        value = getattr(config, name)
        if value is not None and not _is_int(value, 0 if name == "val_images" else 1):
            raise ValueError(f"`{name}` must be None or a positive integer, got {value!r}.")
    crop = config.crop_size
    if not (_is_int(crop, 1) or (isinstance(crop, (tuple, list)) and len(crop) == 2)):
        raise ValueError(f"`crop_size` must be an int or (height, width), got {crop!r}.")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {config.optimizer!r}.")
    for name in ("learning_rate", "poly_power", "weight_decay", "momentum"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
    for name in ("dataset_options", "model"):
        if not isinstance(getattr(config, name), dict):
            raise ValueError(f"`{name}` must be a dict, got {getattr(config, name)!r}.")
    scale_range = config.scale_range
    if (
        len(scale_range) != 2
        or not all(_is_number(v) for v in scale_range)
        or not 0 < scale_range[0] <= scale_range[1]
    ):
        raise ValueError(
            f"`scale_range` must be (min, max), 0 < min <= max, got {config.scale_range!r}."
        )
    if isinstance(crop, (tuple, list)) and not all(_is_int(side, 1) for side in crop):
        raise ValueError(f"`crop_size` must be an int or (height, width), got {crop!r}.")
    _check_model_keys(config.model)
    _check_loss_weights(config)
    _check_dataset_options(config)
    num_classes = config.model.get("num_classes")
    if num_classes is not None and not _is_int(num_classes, 2):
        raise ValueError(
            f"`model.num_classes` must be None or an integer >= 2, got {num_classes!r}."
        )


def _check_model_keys(model):
    allowed = model_defaults()
    for key in model:
        if key in TRAINING_OWNED_MODEL_ARGUMENTS:
            raise ValueError(f"`model.{key}` is set by training itself; remove it from the config.")
        if key not in allowed:
            raise ValueError(
                f"unknown model argument `model.{key}`; the model takes: {', '.join(allowed)}."
            )


def resolve_config(config):
    """Checks the config and writes out its whole model section.

    Every `MultiScaleSegmenter` argument is filled in (its default where the
    config leaves it out; `num_classes` from the dataset), so `config.json`
    records the model completely.
    """
    check_config(config)
    model = {**model_defaults(), **config.model}
    explicit = config.model.get("num_classes")
    # A folder dataset without classes.txt takes the model's count, or
    # `dataset_options.num_classes`.
    fallback = explicit if explicit is not None else config.dataset_options.get("num_classes")
    info = dataset_info(config.dataset, config.data_dir, fallback)
    if explicit is not None and explicit != info.num_classes:
        raise ValueError(
            f"`model.num_classes`={explicit}, but {info.classes_source or config.dataset} "
            f"lists {info.num_classes} classes. Leave num_classes out to take the dataset's "
            "count, or fix the class list."
        )
    model["num_classes"] = info.num_classes
    scales = model["scales"]
    if not isinstance(scales, (tuple, list)) or not all(_is_number(v) for v in scales):
        raise ValueError(
            f"`model.scales` must be a tuple of numbers, e.g. (1.0, 0.5); got {scales!r}."
        )
    model["scales"] = tuple(float(v) for v in scales)
    return dataclasses.replace(config, model=model)


def config_to_json(config):
    # Through JSON and back, so tuples and lists compare equal with a stored config.
    return json.loads(json.dumps(dataclasses.asdict(config)))


def differing_keys(stored, current, ignore=("data_dir",)):
    """Names (`model.x` inside the model section) whose values differ between two configs."""
    differing = []
    for key in sorted(set(stored) | set(current)):
        if key in ignore:
            continue
        old, new = stored.get(key), current.get(key)
        if key == "model" and isinstance(old, dict) and isinstance(new, dict):
            differing += [f"model.{name}" for name in differing_keys(old, new, ignore=())]
        elif old != new:
            differing.append(key)
    return differing


# === Recipes and overrides ===


class RecipeError(UserError):
    """A recipe file that cannot be used: not Python, a syntax error, or it raised."""


def _recipe_line(error, path):
    # The innermost line of the recipe file in the traceback, if any.
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if os.path.abspath(frame.filename) == os.path.abspath(path)
    ]
    return f", line {lines[-1]}" if lines else ""


def load_recipe(path):
    """Imports a recipe file; it must define `CONFIG` (a TrainConfig) and may define
    `VARIANTS` ({name: overrides}) and `DEFAULT_VARIANT`.

    Raises:
        RecipeError: naming the file, the line where Python gives one, and what
            was wrong.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe not found: {path}")
    if not path.endswith(".py"):
        raise RecipeError(
            f"{path}: a recipe is a Python file ending in .py (see recipes/ for examples)."
        )
    name = "msattn_recipe_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise RecipeError(f"{path}, line {error.lineno}: syntax error: {error.msg}.") from None
    except Exception as error:  # anything the recipe's own code raises
        raise RecipeError(
            f"{path}{_recipe_line(error, path)}: the recipe raised {type(error).__name__}: {error}"
        ) from None
    if not isinstance(getattr(module, "CONFIG", None), TrainConfig):
        raise RecipeError(f"recipe {path} must define CONFIG = TrainConfig(...)")
    variants = getattr(module, "VARIANTS", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise RecipeError(f"recipe {path}: VARIANTS must be a dict of {{name: dict of overrides}}.")
    return module


def parse_overrides(pairs):
    """`["key=value", "model.key=value", ...]` -> overrides for `apply_overrides`.

    Values are Python literals where they parse, else strings. `model.key`
    entries (or a bare model argument name, e.g. `backbone=...`) are collected
    into one `"model"` dict.
    """
    keys = config_keys()
    overrides = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        key = key.strip()
        if not separator:
            raise ValueError(f"--set expects key=value, got {pair!r}.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        section, dot, name = key.partition(".")
        if key in keys and key != "model":
            overrides[key] = value
        elif (dot and section == "model") or (not dot and key in model_defaults()):
            # `model.backbone=...`, or `backbone=...` for short (no field shares a name).
            name = name if dot else key
            _check_model_keys({name: None})
            overrides.setdefault("model", {})[name] = value
        else:
            raise ValueError(
                f"unknown key {key!r} in --set; allowed keys: "
                f"{', '.join(k for k in keys if k != 'model')}, and model.NAME for the "
                f"model's arguments ({', '.join(model_defaults())})."
            )
    return overrides


def apply_overrides(config, overrides, where="overrides"):
    """`config` with top-level fields replaced and the `model` section merged.

    `where` names the overrides' source in the error for an unknown key.
    """
    overrides = dict(overrides)
    unknown = sorted(set(overrides) - set(config_keys()))
    if unknown:
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(config_keys())}."
        )
    if "model" in overrides:
        if not isinstance(overrides["model"], dict):
            raise ValueError(f"{where}: `model` must be a dict, got {overrides['model']!r}.")
        try:
            _check_model_keys(overrides["model"])
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    if "model" in overrides:
        overrides["model"] = {**config.model, **overrides["model"]}
    return dataclasses.replace(config, **overrides)


def recipe_config(recipe, variant=None, overrides=None):
    """The config of a loaded recipe, with a variant and `--set` overrides applied."""
    variants = getattr(recipe, "VARIANTS", {})
    variant = variant or getattr(recipe, "DEFAULT_VARIANT", None)
    config = recipe.CONFIG
    if variant is not None:
        if variant not in variants:
            allowed = ", ".join(variants) or "none (this recipe has no variants)"
            raise ValueError(f"unknown variant {variant!r}; allowed variants: {allowed}.")
        where = f"{getattr(recipe, '__file__', 'the recipe')}, VARIANTS[{variant!r}]"
        config = apply_overrides(config, variants[variant], where=where)
    return apply_overrides(config, overrides or {}, where="--set")
