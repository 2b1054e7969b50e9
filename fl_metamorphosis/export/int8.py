"""int8 versions of an export's graphs, by ONNX Runtime's dynamic quantisation.

Dynamic quantisation stores the weights as int8 and quantises each activation at run time from its own
range, so it needs no calibration images (a device's images never leave it, and the exporter may not
hold representative ones). Its accuracy cost is measured on the run's test images by ``verify.py``, with
the same noise draws on the fp32 and the int8 features, so the difference is the quantisation's alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..edge.manifest import Manifest


def _int8_name(name: str) -> str:
    return name.removesuffix(".onnx") + ".int8.onnx"


def quantize_export(out: Path, manifest: Manifest) -> Manifest:
    """Write ``*.int8.onnx`` beside every graph of ``manifest``; the manifest names them."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    for name in [manifest.device_model, *(t.head for t in manifest.tasks)]:
        quantize_dynamic(out / name, out / _int8_name(name), weight_type=QuantType.QInt8)
    tasks = tuple(dataclasses.replace(t, head_int8=_int8_name(t.head)) for t in manifest.tasks)
    return dataclasses.replace(manifest, device_model_int8=_int8_name(manifest.device_model), tasks=tasks)
