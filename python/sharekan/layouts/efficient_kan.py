"""efficient-kan checkpoints: `{prefix}.spline_weight` (n_out, n_in, M), `{prefix}.grid`
(n_in, G+2k+1), `{prefix}.base_weight` (n_out, n_in), optional `{prefix}.spline_scaler`
(n_out, n_in). The same layout is written by `sharekan.torch.kan.KANLinear`."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from ..errors import LayoutError, ShapeError
from ..validation import float_array
from .adapter import Extraction, LayerSource, TensorEntry, TensorInfo

NAME = "efficient-kan"
_SPLINE = re.compile(r"^(?P<prefix>.*)\.spline_weight$|^spline_weight$")


def _prefix_key(prefix: str, role: str) -> str:
    return f"{prefix}.{role}" if prefix else role


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def layer_prefixes(state_dict: Mapping[str, np.ndarray]) -> list[str]:
    """Layer prefixes in natural order ("layers.2" before "layers.10")."""
    prefixes = []
    for key in state_dict:
        match = _SPLINE.match(key)
        if match and _prefix_key(match.group("prefix") or "", "grid") in state_dict:
            prefixes.append(match.group("prefix") or "")
    return sorted(prefixes, key=_natural_key)


class EfficientKanLayout:
    """Adapter for Blealtan/efficient-kan `KAN` / `KANLinear` state_dicts."""

    name = NAME

    def detect(self, state_dict: Mapping[str, np.ndarray]) -> bool:
        return bool(layer_prefixes(state_dict))

    def extract(self, state_dict: Mapping[str, np.ndarray]) -> Extraction:
        layers: list[LayerSource] = []
        entries: list[TensorEntry] = []
        used: set[str] = set()
        for prefix in layer_prefixes(state_dict):
            layer = self._layer(state_dict, prefix)
            layers.append(layer)
            for role, info in layer.tensors.items():
                used.add(info.key)
                entries.append(TensorEntry(info.key, "compressed", f"{role} of KAN layer", prefix))
        passthrough = {k: v for k, v in state_dict.items() if k not in used}
        for key in passthrough:
            entries.append(
                TensorEntry(key, "passthrough", "not part of a KAN layer; stored unchanged")
            )
        return Extraction(NAME, layers, passthrough, entries)

    def _layer(self, sd: Mapping[str, np.ndarray], prefix: str) -> LayerSource:
        name = prefix or "layer"
        key = lambda role: _prefix_key(prefix, role)  # noqa: E731
        spline = sd[key("spline_weight")]
        if spline.ndim != 3:
            raise LayoutError(
                f"tensor {key('spline_weight')!r}: expected (n_out, n_in, M), got shape {spline.shape}"
            )
        if spline.size == 0:
            raise ShapeError(
                f"tensor {key('spline_weight')!r}: empty array of shape {spline.shape}"
            )
        n_out, n_in, m = (int(d) for d in spline.shape)
        grid_raw = sd[key("grid")]
        if grid_raw.ndim != 2 or grid_raw.shape[0] != n_in:
            raise LayoutError(
                f"tensor {key('grid')!r}: expected shape ({n_in}, G + 2k + 1) to match "
                f"{key('spline_weight')!r} {tuple(spline.shape)}, got {grid_raw.shape}"
            )
        k = int(grid_raw.shape[1]) - m - 1
        if k < 0 or m - k < 1:
            raise LayoutError(
                f"tensor {key('grid')!r}: {grid_raw.shape[1]} knots do not fit M = {m} "
                f"coefficients (need G + 2k + 1 knots with M = G + k, G >= 1, k >= 0)"
            )
        tensors = {
            "spline_weight": TensorInfo.of(key("spline_weight"), spline),
            "grid": TensorInfo.of(key("grid"), grid_raw),
        }
        coeffs = float_array(spline, key("spline_weight"), ndim=3)
        if key("spline_scaler") in sd:
            scaler_raw = sd[key("spline_scaler")]
            if tuple(scaler_raw.shape) != (n_out, n_in):
                raise LayoutError(
                    f"tensor {key('spline_scaler')!r}: expected shape {(n_out, n_in)}, "
                    f"got {scaler_raw.shape}"
                )
            tensors["spline_scaler"] = TensorInfo.of(key("spline_scaler"), scaler_raw)
            coeffs = coeffs * float_array(scaler_raw, key("spline_scaler"), ndim=2)[..., None]
        base = None
        if key("base_weight") in sd:
            base_raw = sd[key("base_weight")]
            if tuple(base_raw.shape) != (n_out, n_in):
                raise LayoutError(
                    f"tensor {key('base_weight')!r}: expected shape {(n_out, n_in)}, "
                    f"got {base_raw.shape}"
                )
            tensors["base_weight"] = TensorInfo.of(key("base_weight"), base_raw)
            base = np.ascontiguousarray(float_array(base_raw, key("base_weight"), ndim=2).T)
        grid = float_array(grid_raw, key("grid"), ndim=2)
        steps = np.diff(grid, axis=1)
        if (steps <= 0).any():
            row, col = (int(v) for v in np.argwhere(steps <= 0)[0])
            raise LayoutError(
                f"tensor {key('grid')!r}: knots must increase strictly; row {row} has "
                f"{grid[row, col]!r} then {grid[row, col + 1]!r}"
            )
        coeffs = np.ascontiguousarray(coeffs.transpose(1, 0, 2))  # (n_in, n_out, M)
        return LayerSource(name if prefix else name, coeffs, grid, k, base, tensors)

    def rebuild(
        self,
        source: Mapping[str, TensorInfo],
        coeffs: np.ndarray,
        base_weight: np.ndarray | None,
        grid: np.ndarray,
        info: Mapping[str, object] | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        spline = source["spline_weight"]
        out[spline.key] = coeffs.transpose(1, 0, 2).astype(spline.dtype)  # (n_out, n_in, M)
        if "spline_scaler" in source:
            scaler = source["spline_scaler"]
            out[scaler.key] = np.ones(scaler.shape, dtype=scaler.dtype)  # folded into the weights
        if "base_weight" in source:
            base_info = source["base_weight"]
            if base_weight is None:  # base="fold": the branch now lives in the coefficients
                out[base_info.key] = np.zeros(base_info.shape, dtype=base_info.dtype)
            else:
                out[base_info.key] = np.ascontiguousarray(base_weight.T).astype(base_info.dtype)
        out[source["grid"].key] = grid.astype(source["grid"].dtype)
        return out
