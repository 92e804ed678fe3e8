"""TorchKAN (github.com/1ssb/torchkan, `torchkan.KAN`) checkpoints.

Per layer `l`: `base_weights.{l}` (n_out, n_in), `spline_weights.{l}` (n_out, n_in, M),
`spline_scalers.{l}` (n_out, n_in), buffer `grid_{l}` (n_in, G+2k+1) and the LayerNorm
applied to every layer's output, `layer_norms.{l}.weight` / `.bias` (n_out). Forward:

    x <- LayerNorm_l(linear(act(x), base_weights[l]) + linear(B(x), spline_weights[l] * spline_scalers[l]))

with act = GELU by default (`base_activation=` option; not stored). The B-spline recursion
is efficient-kan's. The scalers are folded into the coefficients (they come back as ones);
the LayerNorm tensors are stored unchanged (float32 copies travel with the layer as extras
`norm_weight`, `norm_bias`). sharekan's evaluator runs the layer: the LUTHAM op (B-splines,
GELU or SiLU base branch) then the LayerNorm (`CompressedLayer.forward`,
`sharekan.torch.LuthamKANLayer`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError, LayoutError
from ._common import check_knots, ledger, natural_key, prefix_key, tensor
from .adapter import BASE_ACTIVATIONS, Extraction, LayerSource, Semantics, TensorInfo

NAME = "torchkan"
_SPLINE = re.compile(r"^(?:(?P<prefix>.*)\.)?spline_weights\.(?P<layer>\d+)$")


def _layers(sd: Mapping[str, np.ndarray]) -> list[tuple[str, str]]:
    out = []
    for key in sd:
        match = _SPLINE.match(key)
        if match:
            prefix, layer = match.group("prefix") or "", match.group("layer")
            if prefix_key(prefix, f"grid_{layer}") in sd:
                out.append((prefix, layer))
    return sorted(out, key=lambda pl: natural_key(f"{pl[0]}.{pl[1]}"))


class TorchKanLayout:
    """Adapter for TorchKAN `KAN` state_dicts.

    Args:
        base_activation: the model's `base_activation` ("gelu", TorchKAN's default,
            "silu" or "identity").
        layernorm_eps: epsilon of the LayerNorm after each layer (torch default 1e-5).
    """

    name = NAME

    def __init__(self, base_activation: str = "gelu", layernorm_eps: float = 1e-5) -> None:
        if base_activation not in BASE_ACTIVATIONS:
            raise InvalidInputError(
                f"torchkan base_activation={base_activation!r}; expected one of {list(BASE_ACTIVATIONS)}"
            )
        self.base_activation = base_activation
        self.layernorm_eps = float(layernorm_eps)

    def detect(self, state_dict: Mapping[str, np.ndarray]) -> bool:
        return bool(_layers(state_dict))

    def extract(self, state_dict: Mapping[str, np.ndarray]) -> Extraction:
        layers = [self._layer(state_dict, p, layer) for p, layer in _layers(state_dict)]
        special = {}
        for p, layer in _layers(state_dict):
            for part in ("weight", "bias"):
                key = prefix_key(p, f"layer_norms.{layer}.{part}")
                special[key] = ("passthrough", f"LayerNorm after KAN layer {layer}; stored unchanged")
        return ledger(NAME, layers, state_dict, special)

    def _layer(self, sd: Mapping[str, np.ndarray], prefix: str, index: str) -> LayerSource:
        key = lambda role: prefix_key(prefix, role)  # noqa: E731
        s_key = key(f"spline_weights.{index}")
        raw = sd[s_key]
        if raw.ndim != 3:
            raise LayoutError(f"tensor {s_key!r}: expected (n_out, n_in, M), got {raw.shape}")
        n_out, n_in, m = (int(d) for d in raw.shape)
        g_key = key(f"grid_{index}")
        grid_raw = sd[g_key]
        if grid_raw.ndim != 2 or grid_raw.shape[0] != n_in:
            raise LayoutError(f"tensor {g_key!r}: expected ({n_in}, G + 2k + 1), got {grid_raw.shape}")
        k = int(grid_raw.shape[1]) - m - 1
        if k < 0 or m - k < 1:
            raise LayoutError(f"tensor {g_key!r}: {grid_raw.shape[1]} knots do not fit M = {m}")
        grid = tensor(sd, g_key)
        check_knots(grid, g_key)
        spline = tensor(sd, s_key)
        tensors = {"spline_weight": TensorInfo.of(s_key, raw), "grid": TensorInfo.of(g_key, grid_raw)}
        sc_key = key(f"spline_scalers.{index}")
        if sc_key in sd:
            spline = spline * tensor(sd, sc_key, (n_out, n_in), "spline scaler [out, in]")[..., None]
            tensors["spline_scaler"] = TensorInfo.of(sc_key, sd[sc_key])
        base = None
        b_key = key(f"base_weights.{index}")
        if b_key in sd:
            base = np.ascontiguousarray(tensor(sd, b_key, (n_out, n_in), "base weight [out, in]").T)
            tensors["base_weight"] = TensorInfo.of(b_key, sd[b_key])
        post: tuple[str, ...] = ()
        extras = {}  # float32 copies of the LayerNorm stored with the layer (the evaluator's)
        if key(f"layer_norms.{index}.weight") in sd:
            post = ("layernorm",)
            for part in ("weight", "bias"):
                n_key = key(f"layer_norms.{index}.{part}")
                tensor(sd, n_key, (n_out,), f"LayerNorm {part}")
                extras[f"norm_{part}"] = np.ascontiguousarray(sd[n_key], dtype=np.float32).copy()
        return LayerSource(
            key(f"layers.{index}"), np.ascontiguousarray(spline.transpose(1, 0, 2)), grid, k,
            base, tensors, semantics=Semantics(base_activation=self.base_activation, post=post),
            extras=extras, info={"layernorm_eps": self.layernorm_eps} if post else {},
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
        out = {source["spline_weight"].key: coeffs.transpose(1, 0, 2).astype(source["spline_weight"].dtype)}
        if "spline_scaler" in source:
            s = source["spline_scaler"]
            out[s.key] = np.ones(s.shape, dtype=s.dtype)  # folded into the coefficients
        if "base_weight" in source and base_weight is not None:
            b = source["base_weight"]
            out[b.key] = np.ascontiguousarray(base_weight.T).astype(b.dtype)
        out[source["grid"].key] = grid.astype(source["grid"].dtype)
        return out
