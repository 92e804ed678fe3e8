"""sharekan: post-training compression of Kolmogorov-Arnold Networks.

Gain-shape-bias vector quantization with a layer-shared codebook compresses the spline
coefficients of a trained KAN without retraining; LUTHAM evaluates the compressed layers
by codebook lookup.

>>> import sharekan
>>> model = sharekan.compress(state_dict, codebook_size=64)   # doctest: +SKIP
>>> print(model.report); model.save("kan.sharekan")            # doctest: +SKIP
>>> sharekan.save(model, "kan.sharekan")                       # doctest: +SKIP
>>> sharekan.load("kan.sharekan").forward(x)                   # doctest: +SKIP
"""

from __future__ import annotations

from . import errors
from ._version import __version__
from .artifact import load, save
from .compiler import compress
from .compressed import CompressedLayer, CompressedModel
from .config import Config
from .export import export_onnx, export_pte
from .report import LayerReport, Report

__all__ = [
    "CompressedLayer",
    "CompressedModel",
    "Config",
    "LayerReport",
    "Report",
    "__version__",
    "compress",
    "export_onnx",
    "export_pte",
    "errors",
    "load",
    "save",
]
