"""sharekan: post-training compression of Kolmogorov-Arnold Networks.

Gain-shape-bias vector quantization with a layer-shared codebook compresses the spline
coefficients of a trained KAN without retraining; LUTHAM evaluates the compressed layers
by codebook lookup.

>>> import sharekan
>>> model = sharekan.compress(state_dict, codebook_size=64)   # doctest: +SKIP
>>> print(model.report); model.save("kan.sharekan")            # doctest: +SKIP
>>> sharekan.load("kan.sharekan").forward(x)                   # doctest: +SKIP
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sharekan")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

from . import errors
from .artifact import load
from .compiler import compress
from .compressed import CompressedLayer, CompressedModel
from .config import Config
from .export import export_pte
from .report import LayerReport, Report

__all__ = [
    "CompressedLayer",
    "CompressedModel",
    "Config",
    "LayerReport",
    "Report",
    "__version__",
    "compress",
    "export_pte",
    "errors",
    "load",
]
