"""keras_msattn: multi-scale attention semantic segmentation for Keras 3.

Implements Yang & Peng, "Attention to Refine through Multi-Scales for Semantic
Segmentation" (2018), with its baselines and ablations, training through
`model.fit` and `tf.distribute`, and export to SavedModel and quantized LiteRT.
"""

__version__ = "0.1.0"

from keras_msattn import layers
from keras_msattn.segmenter import MultiScaleSegmenter, output_names

__all__ = ["MultiScaleSegmenter", "layers", "output_names", "__version__"]
