"""Export: SavedModel for TF Serving, LiteRT (`.tflite`) with quantization, reports.

```python
from keras_msattn.export import export_saved_model, export_tflite, verify_tflite

export_saved_model(model, "serving/")                    # serving/<name>/1/
export_tflite(model, "model_int8.tflite", quantization="int8",
              calibration_images=images, input_size=(321, 321))
```

Every artifact gets a verification report (JSON + markdown) and is written
all-or-nothing. `export/run_tflite.py` at the repository root runs a `.tflite`
file on a device with only ai-edge-litert, numpy and pillow.
"""

from keras_msattn.export.report import LiteRTModel, op_summary, verify_saved_model, verify_tflite
from keras_msattn.export.saved_model import export_saved_model
from keras_msattn.export.tflite import (
    OUTPUTS,
    QUANTIZATIONS,
    UnsupportedOpsError,
    convert,
    export_tflite,
    resolve_input_size,
)

__all__ = [
    "OUTPUTS",
    "QUANTIZATIONS",
    "LiteRTModel",
    "UnsupportedOpsError",
    "convert",
    "export_saved_model",
    "export_tflite",
    "op_summary",
    "resolve_input_size",
    "verify_saved_model",
    "verify_tflite",
]
