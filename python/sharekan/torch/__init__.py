"""PyTorch integration: reference KAN modules, the `sharekan::lutham` operator, compressed
modules and in-place compression.

>>> import sharekan.torch as skt
>>> model = skt.KAN([64, 32, 10], grid_size=10)     # doctest: +SKIP
>>> skt.compress_(model, codebook_size=64)         # doctest: +SKIP

Importing this package registers the operator `torch.ops.sharekan.lutham` (+ `.out`).
"""

from __future__ import annotations

from .kan import KAN, KANLinear, bspline_basis
from .modules import (
    LuthamKANLayer,
    LuthamLinear,
    collect_calibration,
    compress_,
    is_kan_linear,
    kan_layer_kind,
    load_compressed_,
    lutham_layers,
)
from .ops import lutham

__all__ = [
    "KAN", "KANLinear", "LuthamKANLayer", "LuthamLinear", "bspline_basis", "collect_calibration", "compress_",
    "is_kan_linear", "kan_layer_kind",
    "load_compressed_", "lutham", "lutham_layers",
]
