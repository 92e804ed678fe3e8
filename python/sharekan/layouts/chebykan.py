"""ChebyKAN (github.com/SynodicMonth/ChebyKAN, `ChebyKANLayer`) checkpoints.

Per layer prefix p: `p.cheby_coeffs` (n_in, n_out, degree + 1), edge (i -> o) at `[i, o, :]`
(older versions also keep a buffer `p.arange`, stored unchanged). Forward:

    t = tanh(x);  y_o = sum_i sum_d cheby_coeffs[i, o, d] * T_d(t_i)

with T_0 = 1, T_1 = t, T_d = 2 t T_{d-1} - T_{d-2}. No base branch, no grid. sharekan's
LUTHAM evaluator runs these layers exactly (`basis=2`, ARCHITECTURE.md §4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import LayoutError
from ._common import ledger, natural_key, prefix_key, tensor
from .adapter import Extraction, LayerSource, Semantics, TensorInfo
from .basis import Chebyshev

NAME = "chebykan"
_COEFFS = re.compile(r"^(?:(?P<prefix>.*)\.)?cheby_coeffs$")


def layer_prefixes(sd: Mapping[str, np.ndarray]) -> list[str]:
    out = [(m.group("prefix") or "") for m in map(_COEFFS.match, sd) if m]
    return sorted(out, key=natural_key)


class ChebyKanLayout:
    """Adapter for ChebyKAN state_dicts (no options: the degree comes from the shape)."""

    name = NAME

    def detect(self, state_dict: Mapping[str, np.ndarray]) -> bool:
        return bool(layer_prefixes(state_dict))

    def extract(self, state_dict: Mapping[str, np.ndarray]) -> Extraction:
        layers = []
        special = {}
        for prefix in layer_prefixes(state_dict):
            key = prefix_key(prefix, "cheby_coeffs")
            raw = state_dict[key]
            if raw.ndim != 3:
                raise LayoutError(f"tensor {key!r}: expected (n_in, n_out, degree + 1), got {raw.shape}")
            coeffs = tensor(state_dict, key)
            layers.append(LayerSource.with_basis(
                prefix or "layer", coeffs, Chebyshev(int(raw.shape[2]) - 1), None,
                {"spline_weight": TensorInfo.of(key, raw)}, semantics=Semantics(base_activation=None),
            ))
            special[prefix_key(prefix, "arange")] = ("passthrough", "degree index buffer; stored unchanged")
        return ledger(NAME, layers, state_dict, special)

    def rebuild(
        self,
        source: Mapping[str, TensorInfo],
        coeffs: np.ndarray,
        base_weight: np.ndarray | None,
        grid: np.ndarray,
        info: Mapping[str, Any] | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        s = source["spline_weight"]
        return {s.key: np.ascontiguousarray(coeffs).astype(s.dtype)}
