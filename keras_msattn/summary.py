"""Parameters, FLOPs and output shapes of a model, part by part.

FLOPs come from TensorFlow's graph profiler on a frozen batch-1 graph (a
multiply-add counts as 2 FLOPs); the backbone is profiled once per scale on its
own, the heads are the rest of the model.
"""

from dataclasses import dataclass, field

import numpy as np

from keras_msattn.layers.resize import scaled_size


@dataclass
class PartCost:
    name: str
    params: int
    flops: int


@dataclass
class ModelSummary:
    input_size: tuple
    parts: list
    total_params: int
    total_flops: int
    output_shapes: dict = field(default_factory=dict)

    def format(self):
        lines = [f"input: 1 x {self.input_size[0]} x {self.input_size[1]} x 3"]
        lines.append(f"{'part':<40} {'params':>14} {'GFLOPs':>10} {'share':>7}")
        for part in self.parts:
            share = part.flops / self.total_flops if self.total_flops else 0.0
            lines.append(
                f"{part.name:<40} {part.params:>14,} {part.flops / 1e9:>10.3f} {share:>7.1%}"
            )
        lines.append(
            f"{'total':<40} {self.total_params:>14,} {self.total_flops / 1e9:>10.3f} {1:>7.0%}"
        )
        lines.append("outputs:")
        for name, shape in self.output_shapes.items():
            lines.append(f"  {name}: {shape}")
        return "\n".join(lines)


def count_flops(function, input_shape):
    """FLOPs of `function` on one float32 input of `input_shape`, from TF's profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    concrete = tf.function(function).get_concrete_function(tf.TensorSpec(input_shape, tf.float32))
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(
        graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
    )
    return int(profile.total_float_ops)


def _count_params(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def summarize(model, input_size):
    """Parameters and FLOPs of the backbone (per scale), the classifier (+ PSP) and the heads."""
    height, width = input_size
    model.check_input_size(height, width)
    backbone = model.backbone
    classifier = model.get_layer("classifier")
    psp = model.get_layer("pyramid_pooling") if model.pyramid_pooling else None

    def score_head(features):
        return classifier(psp(features) if psp is not None else features)

    backbone_params = _count_params(backbone.weights)
    score_params = _count_params(classifier.weights) + (_count_params(psp.weights) if psp else 0)
    parts = []
    backbone_flops = score_flops = 0
    for index, scale in enumerate(model.scales):
        size = (scaled_size(height, scale), scaled_size(width, scale))
        flops = count_flops(lambda x: backbone(x, training=False), (1, *size, 3))
        stage4 = backbone(np.zeros((1, *size, 3), "float32"), training=False)["stage4"]
        head_flops = count_flops(score_head, tuple(stage4.shape))
        backbone_flops += flops
        score_flops += head_flops
        shared = "shared weights" if index == 0 else "same weights"
        parts.append(
            PartCost(
                f"backbone @ {scale}x ({size[0]}x{size[1]}, {shared})",
                backbone_params if index == 0 else 0,
                flops,
            )
        )
    total_flops = count_flops(lambda x: model(x, training=False), (1, height, width, 3))
    total_params = _count_params(model.weights)
    parts.append(
        PartCost(
            "classifier + pyramid pooling (all scales)" if psp else "classifier (all scales)",
            score_params,
            score_flops,
        )
    )
    parts.append(
        PartCost(
            f"heads: fusion={model.fusion}",
            total_params - backbone_params - score_params,
            total_flops - backbone_flops - score_flops,
        )
    )
    images = np.zeros((1, height, width, 3), "float32")
    outputs = model(images, training=False)
    if isinstance(outputs, dict):
        output_shapes = {key: tuple(value.shape) for key, value in outputs.items()}
    else:
        output_shapes = {"logits": tuple(outputs.shape)}
    maps = model.attention_maps(images)
    for key in ("scale_weights", "recalibration"):
        if key in maps:
            output_shapes[f"attention_maps[{key!r}]"] = maps[key].shape
    return ModelSummary((height, width), parts, total_params, total_flops, output_shapes)


# Tensors that alias others or hold no activations: not counted.
_NOT_ACTIVATIONS = {
    "Const", "Identity", "NoOp", "Placeholder", "ReadVariableOp", "Reshape", "Shape",
    "StridedSlice", "VarHandleOp", "Pack", "Cast",
}  # fmt: skip


@dataclass
class MemoryEstimate:
    """Training memory: `fixed` bytes (weights, gradients, optimizer state) + `per_image`."""

    fixed: int
    per_image: int

    def total(self, batch_per_device):
        return self.fixed + batch_per_device * self.per_image

    def format(self, batch_per_device=None):
        text = (
            f"training memory (estimate): {_gib(self.per_image)} per image + "
            f"{_gib(self.fixed)} for weights, gradients and optimizer state"
        )
        if batch_per_device is not None:
            text += (
                f"; {_gib(self.total(batch_per_device))} per device at "
                f"{batch_per_device} image(s) per device"
            )
        return text


def _gib(count):
    return f"{count / 2**30:.2f} GiB"


def estimate_training_memory(model, input_size, optimizer_slots=2):
    """Device memory one training step needs, estimated from the forward graph.

    Per image: every float tensor the training-mode forward pass of one image
    computes (the activations backpropagation keeps), twice (their gradients
    are of the same size). Fixed: float32 weights, their gradients and
    `optimizer_slots` optimizer variables each (2 for Adam, 1 for SGD with
    momentum). An upper-bound style estimate: TensorFlow frees some tensors
    early, and cuDNN workspaces come on top.
    """
    import tensorflow as tf

    height, width = input_size
    forward = tf.function(lambda x: model(x, training=True))
    graph = forward.get_concrete_function(tf.TensorSpec((1, height, width, 3), tf.float32)).graph
    activation_bytes = 0
    for operation in graph.get_operations():
        if operation.type in _NOT_ACTIVATIONS:
            continue
        for tensor in operation.outputs:
            if not tensor.dtype.is_floating or not tensor.shape.is_fully_defined():
                continue
            activation_bytes += tensor.shape.num_elements() * tensor.dtype.size
    params = _count_params(model.trainable_weights)
    fixed = 4 * params * (2 + optimizer_slots) + 4 * _count_params(model.non_trainable_weights)
    return MemoryEstimate(fixed=int(fixed), per_image=int(2 * activation_bytes))


def summary_text(model, input_size):
    """`summarize(model, input_size)` as a printable table."""
    return summarize(model, input_size).format()
