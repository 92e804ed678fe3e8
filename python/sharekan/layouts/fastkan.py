"""FastKAN (github.com/ZiyaoLi/fast-kan, `FastKANLayer`) checkpoints.

Per layer prefix p: `p.layernorm.weight` / `.bias` (n_in), `p.rbf.grid` (M,) RBF centres
shared by every input, `p.spline_linear.weight` (n_out, n_in * M) with edge (i -> o) at
`[o, i*M:(i+1)*M]`, optional `p.base_linear.weight` (n_out, n_in) and `.bias` (n_out).
Forward:

    y = spline_linear(RBF(LayerNorm(x))) + base_linear(SiLU(x)),
    RBF_m(u) = exp(-((u - grid[m]) / h)^2),  h = (grid[-1] - grid[0]) / (M - 1)

The width h ("denominator") is not stored: it is re-derived from the centres as FastKAN
does by default, or given with `denominator=`. LayerNorm and the base bias are stored
unchanged (the evaluator's float32 copies of them are stored with the layer as
extras `norm_weight`, `norm_bias`, `base_bias`). sharekan's evaluator runs the layer as a
split: the LUTHAM op (`basis=1`, no base branch) on u = LayerNorm(x), plus
act(x) @ base + base bias computed outside the op on the raw x
(`CompressedLayer.forward`, `sharekan.torch.LuthamKANLayer`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError, LayoutError
from ._common import ledger, natural_key, prefix_key, tensor
from .adapter import BASE_ACTIVATIONS, Extraction, LayerSource, Semantics, TensorInfo
from .basis import RBF

NAME = "fastkan"
_SPLINE = re.compile(r"^(?:(?P<prefix>.*)\.)?spline_linear\.weight$")


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).copy()


def layer_prefixes(sd: Mapping[str, np.ndarray]) -> list[str]:
    out = []
    for key in sd:
        match = _SPLINE.match(key)
        if match and prefix_key(match.group("prefix") or "", "rbf.grid") in sd:
            out.append(match.group("prefix") or "")
    return sorted(out, key=natural_key)


class FastKanLayout:
    """Adapter for FastKAN state_dicts.

    Args:
        denominator: RBF width h (FastKAN's `denominator`) when the model set one;
            default: re-derived from the stored centres, (max - min) / (M - 1).
        base_activation: the base branch's activation ("silu", FastKAN's default).
        layernorm_eps: epsilon of the input LayerNorm (torch default 1e-5).
    """

    name = NAME

    def __init__(self, denominator: float | None = None, base_activation: str = "silu",
                 layernorm_eps: float = 1e-5) -> None:
        if denominator is not None and not float(denominator) > 0:
            raise InvalidInputError(f"fastkan denominator={denominator!r}; expected a number > 0")
        if base_activation not in BASE_ACTIVATIONS:
            raise InvalidInputError(
                f"fastkan base_activation={base_activation!r}; expected one of {list(BASE_ACTIVATIONS)}"
            )
        self.denominator = None if denominator is None else float(denominator)
        self.base_activation = base_activation
        self.layernorm_eps = float(layernorm_eps)

    def detect(self, state_dict: Mapping[str, np.ndarray]) -> bool:
        return bool(layer_prefixes(state_dict))

    def extract(self, state_dict: Mapping[str, np.ndarray]) -> Extraction:
        layers = [self._layer(state_dict, p) for p in layer_prefixes(state_dict)]
        special = {}
        for layer in layers:
            p = "" if layer.name == "layer" else layer.name
            for role, why in (("layernorm.weight", "LayerNorm on the spline input"),
                              ("layernorm.bias", "LayerNorm on the spline input"),
                              ("base_linear.bias", "bias of the base branch")):
                special[prefix_key(p, role)] = ("passthrough", f"{why}; stored unchanged")
        return ledger(NAME, layers, state_dict, special)

    def _layer(self, sd: Mapping[str, np.ndarray], prefix: str) -> LayerSource:
        key = lambda role: prefix_key(prefix, role)  # noqa: E731
        centers = tensor(sd, key("rbf.grid"))
        if centers.ndim != 1 or centers.shape[0] < 2:
            raise LayoutError(f"tensor {key('rbf.grid')!r}: expected (M,) with M >= 2, got {centers.shape}")
        if (np.diff(centers) <= 0).any():
            raise LayoutError(f"tensor {key('rbf.grid')!r}: centres must increase strictly")
        m = int(centers.shape[0])
        raw = sd[key("spline_linear.weight")]
        if raw.ndim != 2 or raw.shape[1] % m:
            raise LayoutError(
                f"tensor {key('spline_linear.weight')!r}: expected (n_out, n_in * {m}), got {raw.shape}"
            )
        n_out, n_in = int(raw.shape[0]), int(raw.shape[1]) // m
        spline = tensor(sd, key("spline_linear.weight")).reshape(n_out, n_in, m)  # (n_out, n_in, M)
        h = self.denominator or float((centers[-1] - centers[0]) / (m - 1))
        tensors = {
            "spline_weight": TensorInfo.of(key("spline_linear.weight"), raw),
            "grid": TensorInfo.of(key("rbf.grid"), sd[key("rbf.grid")]),
        }
        base = None
        if key("base_linear.weight") in sd:
            base = np.ascontiguousarray(
                tensor(sd, key("base_linear.weight"), (n_out, n_in), "base weight [out, in]").T
            )
            tensors["base_weight"] = TensorInfo.of(key("base_linear.weight"), sd[key("base_linear.weight")])
        aux = {}
        extras = {}  # float32 copies stored with the layer: the evaluator needs them
        if key("layernorm.weight") in sd:
            aux["ln_weight"] = tensor(sd, key("layernorm.weight"), (n_in,), "LayerNorm weight")
            aux["ln_bias"] = tensor(sd, key("layernorm.bias"), (n_in,), "LayerNorm bias")
            extras["norm_weight"] = _f32(sd[key("layernorm.weight")])
            extras["norm_bias"] = _f32(sd[key("layernorm.bias")])
        if key("base_linear.bias") in sd:
            aux["base_bias"] = tensor(sd, key("base_linear.bias"), (n_out,), "base bias")
            extras["base_bias"] = _f32(sd[key("base_linear.bias")])
        semantics = Semantics(
            base_activation=self.base_activation if base is not None else None,
            input_norm="layernorm", base_bias="base_bias" in aux,
        )
        return LayerSource.with_basis(
            prefix or "layer", np.ascontiguousarray(spline.transpose(1, 0, 2)), RBF(centers, h),
            base, tensors, semantics=semantics, aux=aux, extras=extras,
            info={"layernorm_eps": self.layernorm_eps, "norm_affine": "ln_weight" in aux},
        )

    def rebuild(
        self,
        source: Mapping[str, TensorInfo],
        coeffs: np.ndarray,
        base_weight: np.ndarray | None,
        grid: np.ndarray,
        info: Mapping[str, Any] | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        n_in, n_out, m = coeffs.shape
        s = source["spline_weight"]
        out = {s.key: coeffs.transpose(1, 0, 2).reshape(n_out, n_in * m).astype(s.dtype)}
        out[source["grid"].key] = np.ascontiguousarray(grid[0]).astype(source["grid"].dtype)
        if "base_weight" in source and base_weight is not None:
            b = source["base_weight"]
            out[b.key] = np.ascontiguousarray(base_weight.T).astype(b.dtype)
        return out
