"""Merging the score maps of several input scales into one (the paper's eq. 1-4)."""

import keras
from keras import ops

FUSIONS = ("weighted_sum", "average", "max")
RECALIBRATIONS = ("multiply", "add")
# The name "weighted_sum" had before; models saved with it still load.
_FORMER_NAMES = {"attention": "weighted_sum"}


@keras.saving.register_keras_serializable(package="keras_msattn")
class ScaleFusion(keras.layers.Layer):
    """Merges per-scale logits that lie on one grid.

    - `"weighted_sum"`: `final = sum_s l^s * (P^s (*) wr)` where `l` are per-pixel scale
      weights (softmax over scales, shared by all classes) and `wr` the per-pixel,
      per-class recalibration, shared by all scales (Yang & Peng 2018, eq. 3-4).
      With `recalibration="add"`, `P^s + wr` replaces `P^s * wr`; with
      `recalibration=None` it is attention-to-scale's `sum_s l^s * P^s`.
    - `"average"` / `"max"`: the mean / elementwise maximum over scales.

    Every step is a 4-D elementwise op (no 5-D stacking), which keeps the merge on
    TFLite's builtin, quantizable kernels.

    Call arguments:
        scale_logits: list of `S` tensors `(B, h, w, C)`.
        scale_weights: `(B, h, w, S)`, only for `"weighted_sum"`.
        recalibration: `(B, h, w, C)`, only when `recalibration` is set.

    Args:
        fusion: one of `"weighted_sum"` (both attention models), `"average"`, `"max"`.
        recalibration: `"multiply"`, `"add"` or `None` (weighted sum only).
    """

    def __init__(self, fusion="weighted_sum", recalibration=None, **kwargs):
        super().__init__(**kwargs)
        fusion = _FORMER_NAMES.get(fusion, fusion)
        if fusion not in FUSIONS:
            raise ValueError(f"`fusion` must be one of {FUSIONS}, got {fusion!r}.")
        if recalibration is not None and recalibration not in RECALIBRATIONS:
            raise ValueError(
                f"`recalibration` must be one of {RECALIBRATIONS} or None, got {recalibration!r}."
            )
        if recalibration is not None and fusion != "weighted_sum":
            raise ValueError("`recalibration` only applies to fusion='weighted_sum'.")
        self.fusion = fusion
        self.recalibration = recalibration

    def call(self, scale_logits, scale_weights=None, recalibration=None):
        if self.fusion == "average":
            merged = scale_logits[0]
            for logits in scale_logits[1:]:
                merged = merged + logits
            return merged / float(len(scale_logits))
        if self.fusion == "max":
            merged = scale_logits[0]
            for logits in scale_logits[1:]:
                merged = ops.maximum(merged, logits)
            return merged
        if scale_weights is None:
            raise ValueError("fusion='weighted_sum' needs `scale_weights`.")
        if (recalibration is None) != (self.recalibration is None):
            raise ValueError(
                f"This layer was built with recalibration={self.recalibration!r}; pass "
                "`recalibration` exactly when it is set."
            )
        merged = None
        for index, logits in enumerate(scale_logits):
            weighted = scale_weights[..., index : index + 1] * logits
            merged = weighted if merged is None else merged + weighted
        # wr is shared by the scales and the weights sum to 1, so recalibrating the
        # sum once is eq. 3-4 exactly: sum_s l^s (P^s * wr) = (sum_s l^s P^s) * wr,
        # and sum_s l^s (P^s + wr) = sum_s l^s P^s + wr. One op instead of S.
        if self.recalibration == "multiply":
            merged = merged * recalibration
        elif self.recalibration == "add":
            merged = merged + recalibration
        return merged

    def compute_output_shape(
        self, scale_logits_shape, scale_weights_shape=None, recalibration_shape=None
    ):
        return scale_logits_shape[0]

    def get_config(self):
        return {
            **super().get_config(),
            "fusion": self.fusion,
            "recalibration": self.recalibration,
        }


@keras.saving.register_keras_serializable(package="keras_msattn")
class BoundedLogits(keras.layers.Layer):
    """`bound * tanh(z / bound)`: logits squashed into (-bound, bound).

    Before a softmax over `S` scales it keeps every scale's weight above
    `1 / (1 + (S - 1) * exp(2 * bound))` (about 0.0003 for two scales and a bound
    of 4), so the softmax cannot saturate and a stream the attention ignores
    keeps a gradient. Near zero it is the identity.

    Args:
        bound: a positive number.
    """

    def __init__(self, bound, **kwargs):
        super().__init__(**kwargs)
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound <= 0:
            raise ValueError(f"`bound` must be a positive number, got {bound!r}.")
        self.bound = float(bound)

    def call(self, logits):
        return self.bound * ops.tanh(logits / self.bound)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bound": self.bound}
