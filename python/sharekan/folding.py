"""Folding: when per-edge biases may be folded into one bias per output (SPEC §2.6,
bias="auto") and base="fold" (w_base * SiLU written in the layer's own B-spline basis)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from . import _core
from .config import Config
from .layouts import LayerSource

#: Sample points per knot interval for the least-squares spline fit of SiLU (base="fold").
FOLD_POINTS_PER_INTERVAL = 64


def silu_spline_fit(source: LayerSource) -> tuple[np.ndarray, float]:
    """Coefficients s (n_in, M) with sum_m s[i, m] B_m(x) ~= SiLU(x) on each input's grid
    range (least squares on midpoints), and the largest |error| seen."""
    k, g = source.spline_order, source.grid_size
    lo, hi = source.grid[:, k], source.grid[:, g + k]
    n = g * FOLD_POINTS_PER_INTERVAL
    t = (np.arange(n) + 0.5) / n
    pts = lo[None, :] + t[:, None] * (hi - lo)[None, :]  # (P, n_in)
    basis = _core.bspline_basis(np.ascontiguousarray(pts), source.grid, k)  # (P, n_in, M)
    silu = pts / (1.0 + np.exp(-pts))
    gram = np.einsum("pim,pil->iml", basis, basis)  # per input normal equations
    rhs = np.einsum("pim,pi->im", basis, silu)
    coef = np.linalg.solve(gram, rhs[..., None])[..., 0]  # (n_in, M)
    err = float(np.abs(np.einsum("pim,im->pi", basis, coef) - silu).max())
    return coef, err


def fold_base_branches(
    sources: list[LayerSource], cfg: Config, calib: Mapping[str, np.ndarray]
) -> tuple[list[LayerSource], dict[str, str]]:
    """base="fold": write w_base * SiLU(x) in the layer's own B-spline basis and add it to
    the coefficients, dropping the base weights (one byte per edge less after int8). Exact
    up to the spline fit of SiLU, and only while inputs stay inside the grid, so it is
    applied where bias="auto" would fold; elsewhere the base branch stays (int8)."""
    out, outcome = [], {}
    for source in sources:
        lcfg = cfg.for_layer(source.name)
        if lcfg.base != "fold" or source.base_weight is None:
            out.append(source)
            continue
        kind = getattr(getattr(source, "basis", None), "kind", "bspline")
        activation = getattr(getattr(source, "semantics", None), "base_activation", "silu")
        if kind != "bspline" or activation != "silu":
            outcome[source.name] = "int8 (fold needs B-splines and a SiLU base)"
            out.append(source)
        elif not inputs_inside_grid(source, lcfg, calib):
            outcome[source.name] = "int8 (fold refused: inputs not known to stay in the grid)"
            out.append(source)
        else:
            coef, err = silu_spline_fit(source)
            coeffs = source.coeffs + source.base_weight[:, :, None] * coef[:, None, :]
            outcome[source.name] = f"fold (SiLU fit max err {err:.1e})"
            out.append(dataclasses.replace(source, coeffs=coeffs, base_weight=None))
    return out, outcome


def fraction_outside_grid(source: LayerSource, x: np.ndarray) -> float:
    """Fraction of calibration values outside each input's basis domain (B-splines:
    [t_k, t_{G+k}]; RBF: the centres' range; tanh-normalised bases: never outside)."""
    return float(source.basis.outside(source.basis_inputs(x)).mean())


def inputs_inside_grid(source: LayerSource, cfg: Config, calib: Mapping[str, np.ndarray]) -> bool:
    """Whether folding this layer's biases is known to be exact (SPEC §2.6, bias="auto")."""
    if not can_fold(source):
        return False
    if source.name in calib:
        return fraction_outside_grid(source, calib[source.name]) == 0.0
    if cfg.input_range is not None:
        return source.basis.inside_range(*cfg.input_range)
    return False


def can_fold(source: LayerSource) -> bool:
    """Per-edge biases may be folded only for partition-of-unity bases (B-splines) on dense
    layers: RBF/Chebyshev/Gram edges scale the bias by sum_m B_m(x), and conv layers pad
    in basis space (SPEC §2.6)."""
    return source.basis.partition_of_unity and source.semantics.conv is None
