"""Helpers shared by the checkpoint adapters (key names, checks, the tensor ledger)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import LayoutError, ShapeError
from ..validation import float_array
from .adapter import Extraction, LayerSource, TensorEntry

PASSTHROUGH_REASON = "not part of a KAN layer; stored unchanged"


def prefix_key(prefix: str, role: str) -> str:
    return f"{prefix}.{role}" if prefix else role


def natural_key(name: str) -> list[object]:
    """Sort key putting "layers.2" before "layers.10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def tensor(
    sd: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...] | None = None, what: str = ""
) -> np.ndarray:
    """A float64 copy of sd[key], checked: floating point, finite, of `shape` when given."""
    if key not in sd:
        raise LayoutError(f"tensor {key!r} is missing{f' ({what})' if what else ''}")
    raw = sd[key]
    if shape is not None and tuple(raw.shape) != tuple(shape):
        raise LayoutError(
            f"tensor {key!r}: expected shape {tuple(shape)}{f' ({what})' if what else ''}, "
            f"got {tuple(raw.shape)}"
        )
    if raw.size == 0:
        raise ShapeError(f"tensor {key!r}: empty array of shape {tuple(raw.shape)}")
    return float_array(raw, key, ndim=raw.ndim)


def check_knots(grid: np.ndarray, key: str) -> None:
    """Knot rows must increase strictly (B-spline spans)."""
    steps = np.diff(grid, axis=1)
    if (steps <= 0).any():
        row, col = (int(v) for v in np.argwhere(steps <= 0)[0])
        raise LayoutError(
            f"tensor {key!r}: knots must increase strictly; row {row} has "
            f"{grid[row, col]!r} then {grid[row, col + 1]!r}"
        )


def ledger(
    layout: str,
    layers: list[LayerSource],
    sd: Mapping[str, np.ndarray],
    special: Mapping[str, tuple[str, str]] | None = None,
) -> Extraction:
    """The Extraction: layer tensors "compressed", every other tensor "passthrough" (stored
    unchanged) or, via `special` {key: (status, reason)}, another status/reason."""
    special = dict(special or {})
    entries: list[TensorEntry] = []
    used: set[str] = set()
    for layer in layers:
        for role, info in layer.tensors.items():
            used.add(info.key)
            entries.append(
                TensorEntry(info.key, "compressed", f"{role} of KAN layer ({layer.basis.describe()})", layer.name)
            )
    passthrough = {k: v for k, v in sd.items() if k not in used}
    for key in passthrough:
        status, reason = special.get(key, ("passthrough", PASSTHROUGH_REASON))
        entries.append(TensorEntry(key, status, reason, _owner(key, layers)))
    return Extraction(layout, layers, passthrough, entries)


def _owner(key: str, layers: Iterable[LayerSource]) -> str | None:
    for layer in layers:
        if key.startswith(layer.name + "."):
            return layer.name
    return None


def restore(values: np.ndarray, info_dtype: str) -> np.ndarray:
    return np.ascontiguousarray(values).astype(info_dtype)
