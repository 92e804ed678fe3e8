"""Checkpoint adapters, one per KAN library, registered in one place.

`LAYOUTS` maps a layout name to its adapter class; detection tries them in the order
listed (most specific key patterns first). Adapters with options (grid parameters that a
library does not store, a base activation, an RBF width) take them as keyword arguments:
`sharekan.compress(sd, layout="torch-conv-kan", layout_options={"grid_size": 8})`, or pass
an adapter instance: `sharekan.compress(sd, layout=KanConvLayout(grid_size=8))`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError, LayoutError
from .adapter import (
    Extraction,
    LayerSource,
    Layout,
    Semantics,
    TensorEntry,
    TensorInfo,
    UnsupportedLayerError,
    evaluator_support,
)
from .basis import RBF, Basis, BSpline, Chebyshev, Gram, as_basis, basis_from_dict, uniform_knots
from .chebykan import ChebyKanLayout
from .convkan import KagnConvLayout, KanConvLayout
from .efficient_kan import EfficientKanLayout
from .fastkan import FastKanLayout
from .generic import GenericLayer, GenericLayout
from .pykan import PykanLayout
from .torchkan import TorchKanLayout

#: Adapters in detection order: the first whose `detect` says yes reads the state_dict.
#: "generic" never detects on its own (it needs the user's description).
LAYOUTS: dict[str, type] = {
    PykanLayout.name: PykanLayout,
    TorchKanLayout.name: TorchKanLayout,
    FastKanLayout.name: FastKanLayout,
    ChebyKanLayout.name: ChebyKanLayout,
    KagnConvLayout.name: KagnConvLayout,
    KanConvLayout.name: KanConvLayout,
    EfficientKanLayout.name: EfficientKanLayout,
    GenericLayout.name: GenericLayout,
}


def get_layout(name: str | Layout, options: Mapping[str, Any] | None = None) -> Layout:
    """The adapter called `name` built with `options`, or `name` itself if it is an adapter."""
    if not isinstance(name, str):
        if options:
            raise InvalidInputError("layout_options: pass them to the adapter you constructed")
        if not all(hasattr(name, a) for a in ("name", "detect", "extract", "rebuild")):
            raise InvalidInputError(f"layout: expected a layout name or adapter, got {name!r}")
        return name
    try:
        cls = LAYOUTS[name]
    except KeyError:
        raise LayoutError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)}") from None
    try:
        return cls(**dict(options or {}))
    except TypeError as exc:
        raise InvalidInputError(f"layout_options for {name!r}: {exc}") from None


def detect_layout(state_dict: Mapping[str, np.ndarray]) -> Layout:
    """The adapter that recognises `state_dict`, or LayoutError listing what was seen."""
    for cls in LAYOUTS.values():
        layout = cls()
        if layout.detect(state_dict):
            return layout
    keys = sorted(state_dict)
    shown = ", ".join(f"{k} {tuple(state_dict[k].shape)}" for k in keys[:8])
    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
    raise LayoutError(
        f"no KAN layout recognised (known: {sorted(LAYOUTS)}); keys: {shown}{more}. "
        "efficient-kan layers need '<prefix>.spline_weight' and '<prefix>.grid'; pykan "
        "'act_fun.<l>.coef'; FastKAN '<prefix>.spline_linear.weight' + 'rbf.grid'; ChebyKAN "
        "'cheby_coeffs'; TorchKAN 'spline_weights.<l>' + 'grid_<l>'; torch-conv-kan "
        "'spline_conv.<g>.weight' or 'poly_weights'. For anything else describe the layer: "
        "layout=sharekan.layouts.GenericLayout(key=..., edges=..., basis=...)."
    )


__all__ = [
    "LAYOUTS",
    "RBF",
    "BSpline",
    "Basis",
    "ChebyKanLayout",
    "Chebyshev",
    "EfficientKanLayout",
    "Extraction",
    "FastKanLayout",
    "GenericLayer",
    "GenericLayout",
    "Gram",
    "KagnConvLayout",
    "KanConvLayout",
    "LayerSource",
    "Layout",
    "PykanLayout",
    "Semantics",
    "TensorEntry",
    "TensorInfo",
    "TorchKanLayout",
    "UnsupportedLayerError",
    "as_basis",
    "basis_from_dict",
    "detect_layout",
    "evaluator_support",
    "get_layout",
    "uniform_knots",
]
