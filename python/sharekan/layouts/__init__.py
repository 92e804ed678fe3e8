"""Checkpoint adapters, one per KAN library, registered in one place."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import LayoutError
from .base import Extraction, LayerSource, Layout, TensorEntry, TensorInfo
from .efficient_kan import EfficientKanLayout

#: Adapters in detection order: the first whose `detect` says yes reads the state_dict.
LAYOUTS: dict[str, Layout] = {EfficientKanLayout.name: EfficientKanLayout()}


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise LayoutError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)}") from None


def detect_layout(state_dict: Mapping[str, np.ndarray]) -> Layout:
    """The adapter that recognises `state_dict`, or LayoutError listing what was seen."""
    for layout in LAYOUTS.values():
        if layout.detect(state_dict):
            return layout
    keys = sorted(state_dict)
    shown = ", ".join(f"{k} {tuple(state_dict[k].shape)}" for k in keys[:8])
    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
    raise LayoutError(
        f"no KAN layout recognised (known: {sorted(LAYOUTS)}); keys: {shown}{more}. "
        "efficient-kan layers need '<prefix>.spline_weight' and '<prefix>.grid'."
    )


__all__ = [
    "LAYOUTS",
    "Extraction",
    "LayerSource",
    "Layout",
    "TensorEntry",
    "TensorInfo",
    "detect_layout",
    "get_layout",
]
