"""torch-conv-kan (github.com/IvanDrokin/torch-conv-kan) convolution layers.

KANConv (`KANConvNDLayer`, B-splines), per layer prefix p and group g:
`p.spline_conv.{g}.weight` (O, M*C, *kernel) with edge (c -> o, tap) at
`[o, c*M:(c+1)*M, tap]`, `p.base_conv.{g}.weight` (O, C, *kernel), `p.prelus.{g}.weight`
(C = in/groups, O = out/groups). Per group:
    y = PReLU(InstanceNorm(base_conv(GELU(x)) + spline_conv(B(x) as M*C channels, c-major)))
The grid is not stored: uniform on `grid_range` extended by k intervals (library defaults
grid_size=5, spline_order=3, grid_range=(-1, 1); pass the values the model used).

KAGNConv (`KAGNConvNDLayer`, Gram polynomials): `p.poly_weights` (groups, O, C*(d+1),
*kernel) with edge (c -> o, tap) at the *strided* vector `[g, o, d*C + c, tap]` for
d = 0..degree (degree-major), `p.beta_weights` (d+1,), `p.base_conv.{g}.weight`. Per group:
    y = SiLU(norm(base_conv(SiLU(x)) + conv(SiLU(P(tanh x)), poly_weights[g])))

A conv layer becomes one compressed layer with n_in = groups * C * taps edge inputs, rows
ordered (group, channel, tap), and n_out = O. Per-edge biases are always kept (zero padding
happens in basis space, so a folded bias would be wrong at the borders). sharekan's
evaluator does not run conv layers; compress, save, load and decompress work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError, LayoutError
from ._common import ledger, natural_key, prefix_key, tensor
from .adapter import BASE_ACTIVATIONS, Extraction, LayerSource, Semantics, TensorInfo
from .basis import BSpline, Gram, uniform_knots

KANCONV = "torch-conv-kan"
KAGNCONV = "torch-conv-kagn"
_SPLINE_CONV = re.compile(r"^(?:(?P<prefix>.*)\.)?spline_conv\.(?P<g>\d+)\.weight$")
_POLY = re.compile(r"^(?:(?P<prefix>.*)\.)?poly_weights$")


def _groups(sd: Mapping[str, np.ndarray], prefix: str, role: str) -> int:
    g = 0
    while prefix_key(prefix, f"{role}.{g}.weight") in sd:
        g += 1
    return g


def _to_edges(w: np.ndarray, out_g: int, chans: int, m: int, taps: int, degree_major: bool) -> np.ndarray:
    """(O, C*M or M*C, *kernel) of one group -> (C*taps, O, M) edge rows (c, tap)."""
    if degree_major:  # index d*C + c
        w = w.reshape(out_g, m, chans, taps).transpose(2, 3, 0, 1)
    else:  # index c*M + m
        w = w.reshape(out_g, chans, m, taps).transpose(1, 3, 0, 2)
    return w.reshape(chans * taps, out_g, m)  # (C*taps, O, M)


def _from_edges(e: np.ndarray, out_g: int, chans: int, m: int, taps: int, degree_major: bool) -> np.ndarray:
    """Inverse of `_to_edges`: (C*taps, O, M) -> (O, C*M, taps) in the library's order."""
    e = e.reshape(chans, taps, out_g, m)
    if degree_major:
        return e.transpose(2, 3, 0, 1).reshape(out_g, m * chans, taps)
    return e.transpose(2, 0, 3, 1).reshape(out_g, chans * m, taps)


def _base_edges(sd: Mapping[str, np.ndarray], prefix: str, groups: int, out_g: int, chans: int,
                kernel: tuple[int, ...]) -> tuple[np.ndarray, dict[str, TensorInfo]]:
    rows, tensors = [], {}
    taps = int(np.prod(kernel))
    for g in range(groups):
        key = prefix_key(prefix, f"base_conv.{g}.weight")
        w = tensor(sd, key, (out_g, chans, *kernel), "base conv [O, C, *kernel]")
        rows.append(w.reshape(out_g, chans, taps).transpose(1, 2, 0).reshape(chans * taps, out_g))
        tensors[f"base_conv.{g}"] = TensorInfo.of(key, sd[key])
    return np.ascontiguousarray(np.concatenate(rows)), tensors


def _rebuild_base(source: Mapping[str, TensorInfo], base: np.ndarray, conv: Mapping[str, Any]) -> dict[str, np.ndarray]:
    groups, chans, out_g, taps = (int(conv[k]) for k in ("groups", "in_per_group", "out_per_group", "taps"))
    out = {}
    for g in range(groups):
        info = source[f"base_conv.{g}"]
        rows = base[g * chans * taps:(g + 1) * chans * taps].reshape(chans, taps, out_g)
        out[info.key] = rows.transpose(2, 0, 1).reshape(info.shape).astype(info.dtype)
    return out


class KanConvLayout:
    """Adapter for torch-conv-kan KANConv{1,2,3}DLayer state_dicts.

    Args:
        grid_size, spline_order, grid_range: the layer's B-spline grid (not stored). With
            neither size given, spline_order=3 (the library default) and G = M - 3.
        base_activation: "gelu" (the library default), "silu" or "identity".
    """

    name = KANCONV

    def __init__(self, grid_size: int | None = None, spline_order: int | None = None,
                 grid_range: tuple[float, float] = (-1.0, 1.0), base_activation: str = "gelu") -> None:
        if base_activation not in BASE_ACTIVATIONS:
            raise InvalidInputError(f"base_activation={base_activation!r}; expected one of {list(BASE_ACTIVATIONS)}")
        self.grid_size, self.spline_order = grid_size, spline_order
        self.grid_range = tuple(float(v) for v in grid_range)
        self.base_activation = base_activation

    def _prefixes(self, sd: Mapping[str, np.ndarray]) -> list[str]:
        found = {(m.group("prefix") or "") for m in map(_SPLINE_CONV.match, sd) if m}
        return sorted((p for p in found if prefix_key(p, "base_conv.0.weight") in sd), key=natural_key)

    def detect(self, state_dict: Mapping[str, np.ndarray]) -> bool:
        return bool(self._prefixes(state_dict))

    def extract(self, state_dict: Mapping[str, np.ndarray]) -> Extraction:
        layers = [self._layer(state_dict, p) for p in self._prefixes(state_dict)]
        special = {}
        for layer in layers:
            p = "" if layer.name == "layer" else layer.name
            for g in range(int(layer.info["groups"])):
                special[prefix_key(p, f"prelus.{g}.weight")] = ("passthrough", "PReLU after the conv; stored unchanged")
        return ledger(KANCONV, layers, state_dict, special)

    def _orders(self, m: int, key: str) -> tuple[int, int]:
        g, k = self.grid_size, self.spline_order
        if g is None and k is None:
            k = 3
        if g is None:
            g = m - int(k)  # type: ignore[arg-type]
        if k is None:
            k = m - g
        if g < 1 or k < 0 or g + k != m:
            raise LayoutError(
                f"tensor {key!r}: M = {m} coefficients per edge do not match grid_size={g}, "
                f"spline_order={k} (need grid_size + spline_order = M); pass layout_options"
            )
        return int(g), int(k)

    def _layer(self, sd: Mapping[str, np.ndarray], prefix: str) -> LayerSource:
        groups = _groups(sd, prefix, "spline_conv")
        base0 = sd[prefix_key(prefix, "base_conv.0.weight")]
        key0 = prefix_key(prefix, "spline_conv.0.weight")
        w0 = sd[key0]
        if base0.ndim < 3 or w0.ndim != base0.ndim or w0.shape[1] % base0.shape[1]:
            raise LayoutError(f"tensor {key0!r} {tuple(w0.shape)} does not fit base conv {tuple(base0.shape)}")
        out_g, chans = int(base0.shape[0]), int(base0.shape[1])
        kernel = tuple(int(d) for d in base0.shape[2:])
        taps, m = int(np.prod(kernel)), int(w0.shape[1]) // chans
        g_size, k = self._orders(m, key0)
        rows, tensors = [], {}
        for g in range(groups):
            key = prefix_key(prefix, f"spline_conv.{g}.weight")
            w = tensor(sd, key, (out_g, m * chans, *kernel), "spline conv [O, M*C, *kernel]")
            rows.append(_to_edges(w, out_g, chans, m, taps, degree_major=False))
            tensors[f"spline_conv.{g}"] = TensorInfo.of(key, sd[key])
        base, base_tensors = _base_edges(sd, prefix, groups, out_g, chans, kernel)
        tensors.update(base_tensors)
        conv = {"ndim": len(kernel), "kernel": list(kernel), "groups": groups, "in_per_group": chans,
                "out_per_group": out_g, "taps": taps}
        grid = uniform_knots(g_size, k, self.grid_range)[None, :]
        n_in = groups * chans * taps
        return LayerSource(
            prefix or "layer", np.concatenate(rows), np.repeat(grid, n_in, axis=0), k, base, tensors,
            basis=BSpline(grid, k),
            semantics=Semantics(base_activation=self.base_activation, post=("instance_norm", "prelu"), conv=conv),
            info=dict(conv, grid_range=list(self.grid_range)),
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
        conv = info or {}
        groups, chans, out_g, taps = (int(conv[k]) for k in ("groups", "in_per_group", "out_per_group", "taps"))
        m = coeffs.shape[2]
        out = {}
        for g in range(groups):
            t = source[f"spline_conv.{g}"]
            rows = coeffs[g * chans * taps:(g + 1) * chans * taps]
            out[t.key] = _from_edges(rows, out_g, chans, m, taps, False).reshape(t.shape).astype(t.dtype)
        if base_weight is not None:
            out.update(_rebuild_base(source, base_weight, conv))
        return out


class KagnConvLayout:
    """Adapter for torch-conv-kan KAGNConv{1,2,3}DLayer state_dicts (no options: the
    degree, groups and kernel come from the shapes, the Gram recurrence from beta_weights)."""

    name = KAGNCONV

    def _prefixes(self, sd: Mapping[str, np.ndarray]) -> list[str]:
        found = [(m.group("prefix") or "") for m in map(_POLY.match, sd) if m]
        return sorted((p for p in found if prefix_key(p, "beta_weights") in sd), key=natural_key)

    def detect(self, state_dict: Mapping[str, np.ndarray]) -> bool:
        return bool(self._prefixes(state_dict))

    def extract(self, state_dict: Mapping[str, np.ndarray]) -> Extraction:
        layers = [self._layer(state_dict, p) for p in self._prefixes(state_dict)]
        special = {
            prefix_key("" if s.name == "layer" else s.name, "beta_weights"):
            ("passthrough", "Gram recurrence weights (they define the basis); stored unchanged")
            for s in layers
        }
        return ledger(KAGNCONV, layers, state_dict, special)

    def _layer(self, sd: Mapping[str, np.ndarray], prefix: str) -> LayerSource:
        p_key, b_key = prefix_key(prefix, "poly_weights"), prefix_key(prefix, "beta_weights")
        raw = sd[p_key]
        beta = tensor(sd, b_key)
        if beta.ndim != 1:
            raise LayoutError(f"tensor {b_key!r}: expected (degree + 1,), got {beta.shape}")
        d1 = int(beta.shape[0])
        if raw.ndim < 4 or raw.shape[2] % d1:
            raise LayoutError(
                f"tensor {p_key!r}: expected (groups, O, C*(degree+1), *kernel) with degree + 1 = {d1}, got {raw.shape}"
            )
        groups, out_g, chans = int(raw.shape[0]), int(raw.shape[1]), int(raw.shape[2]) // d1
        kernel = tuple(int(d) for d in raw.shape[3:])
        taps = int(np.prod(kernel))
        w = tensor(sd, p_key)
        rows = [_to_edges(w[g], out_g, chans, d1, taps, degree_major=True) for g in range(groups)]
        tensors = {"poly_weights": TensorInfo.of(p_key, raw)}
        base = None
        if prefix_key(prefix, "base_conv.0.weight") in sd:
            base, base_tensors = _base_edges(sd, prefix, groups, out_g, chans, kernel)
            tensors.update(base_tensors)
        conv = {"ndim": len(kernel), "kernel": list(kernel), "groups": groups, "in_per_group": chans,
                "out_per_group": out_g, "taps": taps}
        return LayerSource.with_basis(
            prefix or "layer", np.concatenate(rows), Gram(d1 - 1, tuple(beta)), base, tensors,
            semantics=Semantics(base_activation="silu" if base is not None else None,
                                post=("norm", "silu"), conv=conv),
            info=dict(conv),
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
        conv = info or {}
        groups, chans, out_g, taps = (int(conv[k]) for k in ("groups", "in_per_group", "out_per_group", "taps"))
        m = coeffs.shape[2]
        t = source["poly_weights"]
        per_group = [
            _from_edges(coeffs[g * chans * taps:(g + 1) * chans * taps], out_g, chans, m, taps, True)
            for g in range(groups)
        ]
        out = {t.key: np.stack(per_group).reshape(t.shape).astype(t.dtype)}
        if base_weight is not None:
            out.update(_rebuild_base(source, base_weight, conv))
        return out
