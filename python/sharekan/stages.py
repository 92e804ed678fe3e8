"""Residual gain-shape stages and the byte budget (`Config.stages`,
`Config.stage_codebook_size`, `Config.target_bytes_per_edge`).

After the compiler has fitted and stored a layer's first stage, each further stage s fits
its own codebook (spherical k-means of the Rust core, under the layer's metric) to what the
stages before it left, with one gain per edge (least squares under the metric, quantised
per output column like the first stage's gains) and no bias.

Without a budget every edge uses every stage. With `target_bytes_per_edge` the compiler
allocates bits where they buy the most error: for a Lagrange multiplier lam, an edge enters
stage s only when the weighted error it removes is at least lam times the bits the stage
costs it (code + gain, + bias for the first stage with per-edge biases). The first stage
codes every edge unless `Config.drop_edges`: then an edge left out of it is dropped (gain,
code and bias 0) and of later stages too. Dropping minimises the summed per-edge error the
metrics measure, but the dropped edges' errors add up coherently in the layer's outputs
(they are whole edge functions, not zero-mean quantisation noise): measured on the demo
head, output fidelity is far worse than the per-edge metric predicts, so it is off by
default. Each edge is priced in bits as an entropy-coded artifact stores it: the coded
edges' fields plus, per stage, the entropy of the map of which edges it codes (see `schema`
for the sparse stored form). lam is found by bisection on log lam so that the model's spline
tensors, zstd-coded as `save(path, entropy="zstd")` stores them (`sharekan.entropy.sizes`;
base-branch weights excluded, a shared codebook counted in every layer that uses it), meet
the budget; each layer's error is weighted by 1 / its total energy under its metric
(relative error), or by 1 when the metric is "output" (its units are then the model
outputs').

The first stage's k-means ran on every edge before the allocation, and its codebook is kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import _core
from .compressed import CompressedLayer, ResidualStage
from .config import Config
from .dense import dequant
from .entropy import sizes
from .errors import InvalidInputError
from .scalars import store_codebook, store_gains

__all__ = ["StageInput", "add_stages", "stored_spline_bits"]

#: Bisection steps on log lam (the budget is met to ~0.5 % of its bytes).
_BISECTION_STEPS = 18
#: k-means iterations of the stages during the search (the final pass uses Config.n_iter).
_SEARCH_ITERATIONS = 8


@dataclass(frozen=True)
class StageInput:
    """What the allocation needs of one compiled layer."""

    layer: CompressedLayer  # the compiled first stage (stages empty)
    coeffs: np.ndarray  # (E, M) float64 source coefficients
    metric: np.ndarray  # (M, M) the metric the first stage was fitted under
    cfg: Config  # the layer's config
    weight: float  # error weight of the layer (see the module docstring)


def _energy(x: np.ndarray, metric: np.ndarray) -> np.ndarray:
    """Per-row squared norm under the metric: x_e^T R x_e."""
    return np.einsum("em,mn,en->e", x, metric, x)


def _entropy_bits(p: float) -> float:
    """Bits per edge of a map in which a fraction p of edges is set (order-0 entropy)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _gain_bits(cfg: Config) -> int:
    return cfg.gain_bits if cfg.int8 else 32


def _codebook_bytes(k: int, m: int, cfg: Config) -> int:
    return k * m + 4 * k if cfg.int8 else 4 * k * m


def _first_stage_bits(layer: CompressedLayer, cfg: Config) -> int:
    """Bits the first stage costs an edge it codes: code, gain and per-edge bias."""
    bias = (8 if cfg.int8 else 32) if layer.edge_bias is not None else 0
    return layer.bits + _gain_bits(cfg) + bias


def _drop_first_stage(layer: CompressedLayer, keep: np.ndarray) -> CompressedLayer:
    """The layer with the edges not in `keep` (n_in, n_out) dropped from the first stage."""
    gains = np.where(keep, layer.gains, 0).astype(layer.gains.dtype)
    edge_bias = layer.edge_bias
    if edge_bias is not None:
        edge_bias = np.where(keep, edge_bias, 0).astype(edge_bias.dtype)
    # an edge whose stored gain is 0 needs no code: 0 lets the artifact skip it
    codes = np.where(gains != 0, layer.codes, 0).astype(layer.codes.dtype)
    return dataclasses.replace(layer, gains=gains, codes=codes, edge_bias=edge_bias)


def _first_stage_coeffs(layer: CompressedLayer) -> np.ndarray:
    return dataclasses.replace(layer, stages=()).decoded_coeffs()


def _stage_layer(item: StageInput, lam: float | None, n_iter: int) -> tuple[CompressedLayer, float]:
    """The layer with its residual stages for multiplier lam (None: every edge in every
    stage), and its estimated stored bits (spline part, entropy-coded)."""
    layer, cfg, metric, coeffs = item.layer, item.cfg, item.metric, item.coeffs
    n_in, n_out, m = layer.n_in, layer.n_out, coeffs.shape[1]
    edges = n_in * n_out
    cost0 = _first_stage_bits(layer, cfg)
    if lam is not None and cfg.drop_edges:
        approx = _first_stage_coeffs(layer).reshape(edges, m)
        removed = _energy(coeffs, metric) - _energy(coeffs - approx, metric)
        layer = _drop_first_stage(layer, (item.weight * removed >= lam * cost0).reshape(n_in, n_out))
    approx = _first_stage_coeffs(layer).reshape(edges, m)
    active = layer.gains.reshape(-1) != 0
    bits = float(active.sum()) * cost0 + edges * _entropy_bits(float(active.mean()))
    bits += 8.0 * (_codebook_bytes(layer.codebook_size, m, cfg) + 4 * n_out)
    k_stage = cfg.stage_codebook_size or cfg.codebook_size
    stage_bits = _core.bits_for(k_stage)
    cost = stage_bits + _gain_bits(cfg)
    stages: list[ResidualStage] = []
    for index in range(1, cfg.stages):
        residual = coeffs - approx
        left = _energy(residual, metric)
        eligible = active & (left > 0)
        if lam is not None:
            eligible &= item.weight * left >= lam * cost
        rows = np.flatnonzero(eligible)
        if rows.size < max(k_stage, 2):
            break  # too few edges left for a stage of K codewords
        fit = _core.gsb_fit(np.ascontiguousarray(residual[rows]), metric, k_stage, n_iter,
                            cfg.tol, (cfg.seed + index) % 2**64)
        book, book_q, book_scale = store_codebook(fit["codebook"], cfg.int8)
        codes_rows = np.asarray(fit["codes"], dtype=np.int64)
        shapes = book.astype(np.float64)[codes_rows]
        # the gain of each edge: least squares under the metric against the stored codeword
        num = np.einsum("em,mn,en->e", residual[rows], metric, shapes)
        den = _energy(shapes, metric)
        dense = np.zeros(edges)
        dense[rows] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        gains, scale = store_gains(cfg, dense.reshape(n_in, n_out))
        dequantized = dequant(gains, scale)
        assert dequantized is not None
        added = dequantized.reshape(-1)[rows, None] * shapes
        removed = left[rows] - _energy(residual[rows] - added, metric)
        keep = removed > 0
        if lam is not None:
            keep &= item.weight * removed >= lam * cost
        flat_gains = gains.reshape(-1).copy()
        flat_gains[rows[~keep]] = 0
        codes = np.zeros(edges, dtype=np.int64)
        codes[rows] = codes_rows
        codes[flat_gains == 0] = 0
        active = flat_gains != 0
        approx[rows[keep]] += added[keep]
        stages.append(ResidualStage(
            codebook_size=k_stage, bits=stage_bits, codebook=book, codebook_q=book_q,
            codebook_scale=book_scale, codes=codes.reshape(n_in, n_out),
            gains=flat_gains.reshape(n_in, n_out), gain_scale=scale.astype(np.float32),
        ))
        bits += float(active.sum()) * cost + edges * _entropy_bits(float(active.mean()))
        bits += 8.0 * (_codebook_bytes(k_stage, m, cfg) + 4 * n_out)
        if not active.any():
            break
    return dataclasses.replace(layer, stages=tuple(stages)), bits


def stored_spline_bits(layer: CompressedLayer) -> int:
    """Bits of the layer's spline tensors (everything but the base branch, its codebook
    included) as the entropy-coded artifact stores them."""
    tensors = {**layer.stored_tensors(), **layer.stored_codebook()}
    return 8 * int(sizes({n: a for n, a in tensors.items() if not n.startswith("base_")})["stored"])


def add_stages(items: Mapping[str, StageInput], budget: float | None
               ) -> tuple[dict[str, CompressedLayer], dict[str, float]]:
    """Every layer with its residual stages (and, with a budget in bytes per edge, its
    allocation); returns (layers, stored bits per layer: estimated without a budget, the
    entropy-coded spline tensors' with one)."""
    if budget is None:
        out = {name: _stage_layer(item, None, item.cfg.n_iter) for name, item in items.items()}
        return {n: v[0] for n, v in out.items()}, {n: v[1] for n, v in out.items()}
    edges = sum(item.layer.n_in * item.layer.n_out for item in items.values())
    target = 8.0 * budget * edges

    def total(lam: float, n_iter: int) -> tuple[dict[str, CompressedLayer], dict[str, float], float]:
        # the allocation prices edges by their estimated bits; the budget is met on the
        # bytes the entropy-coded artifact really stores
        layers = {name: _stage_layer(item, lam, n_iter)[0] for name, item in items.items()}
        bits = {name: float(stored_spline_bits(layer)) for name, layer in layers.items()}
        return layers, bits, sum(bits.values())

    # lam in units of the mean weighted energy per edge per bit: 1e-9 codes ~everything,
    # 1e3 drops every edge
    scale = sum(item.weight * float(_energy(item.coeffs, item.metric).sum())
                for item in items.values()) / edges
    lo, hi = math.log(1e-9 * scale), math.log(1e3 * scale)
    floor = total(math.exp(hi), _SEARCH_ITERATIONS)[2]
    drop = any(item.cfg.drop_edges for item in items.values())
    if floor > target:
        raise InvalidInputError(
            f"Config.target_bytes_per_edge={budget}: below this model's floor of "
            f"{floor / 8 / edges:.4f} bytes per edge (codebooks and scales, "
            f"{'every edge dropped' if drop else 'the first stage of every edge'}); raise the "
            "budget or lower codebook_size" + ("" if drop else " or allow drop_edges=True"))
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if total(math.exp(mid), _SEARCH_ITERATIONS)[2] > target:
            lo = mid
        else:
            hi = mid
    n_iter = max(item.cfg.n_iter for item in items.values())
    for _ in range(8):  # the final pass's longer k-means may move the estimate: step lam up
        layers, bits, spent = total(math.exp(hi), n_iter)
        if spent <= target:
            break
        hi += 0.1
    return layers, bits
