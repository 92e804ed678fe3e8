"""Post-training compression methods applied to an efficient-kan-layout head, and the
fidelity measures every row of a benchmark reports.

Each method maps a float32 state_dict (`layers.{l}.spline_weight` (n_out, n_in, M),
`spline_scaler` (n_out, n_in), `base_weight` (n_out, n_in), `grid` (n_in, G+2k+1)) to a
`Compressed` result: an honest byte count of what would be stored and a function that
evaluates the compressed head. Baselines store the spline coefficients with the per-edge
scaler folded in (so the scaler costs nothing) and the grid once when every input shares it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sharekan.demo.heads import kan_forward
from sharekan.demo.metrics import dense_bytes
from sharekan.demo.metrics import fidelity as fidelity  # re-exported: the methods table scores with it
from sharekan.demo.metrics import sqnr_db as sqnr_db

StateDict = Mapping[str, np.ndarray]


@dataclass
class Compressed:
    """One compressed head: stored bytes and an evaluator (n, n_in) -> (n, n_out) float32."""

    method: str
    nbytes: int
    forward: Callable[[np.ndarray], np.ndarray]
    file_bytes: int | None = None  # size of a saved artifact (header included), if any
    details: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ fidelity


# ------------------------------------------------------------------------------ helpers


def layer_prefixes(sd: StateDict) -> list[str]:
    """`<prefix>` of every `<prefix>.spline_weight`, in natural order."""
    prefixes = [k[: -len(".spline_weight")] for k in sd if k.endswith(".spline_weight")]
    return sorted(prefixes, key=lambda p: [int(t) if t.isdigit() else t for t in p.split(".")])


def folded_coeffs(sd: StateDict, prefix: str) -> np.ndarray:
    """(n_out, n_in, M) float32 spline coefficients with the per-edge scaler folded in."""
    w = np.asarray(sd[f"{prefix}.spline_weight"], dtype=np.float32)
    scaler = sd.get(f"{prefix}.spline_scaler")
    return w * np.asarray(scaler, np.float32)[..., None] if scaler is not None else w.copy()


def grid_bytes(grid: np.ndarray) -> int:
    """Bytes of a float32 grid, one row when every input shares it (as sharekan stores it)."""
    grid = np.asarray(grid)
    shared = grid.shape[0] > 1 and bool((grid == grid[:1]).all())
    return 4 * (grid.shape[1] if shared else grid.size)


def quantize_symmetric(w: np.ndarray, bits: int, axis_keep: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel quantisation of w along its first axis (one scale per row).

    Returns (dequantised float32 array, scales float32 (rows,)).
    """
    qmax = 2 ** (bits - 1) - 1
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    scale = np.abs(rows).max(axis=1) / qmax
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.round(rows / safe[:, None]), -qmax, qmax)
    return (q * scale[:, None]).reshape(w.shape).astype(np.float32), scale.astype(np.float32)


def _with_layers(sd: StateDict, new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: np.asarray(v) for k, v in sd.items()}
    out.update(new)
    return out


# ------------------------------------------------------------------------------ methods


def dense(sd: StateDict) -> Compressed:
    return Compressed("dense FP32", dense_bytes(sd), lambda x: kan_forward(sd, x))


def magnitude_prune(sd: StateDict, sparsity: float) -> Compressed:
    """Zero the `sparsity` fraction of smallest-|w| folded spline coefficients of each layer.

    Storage: the surviving coefficients in FP32 plus a 1-bit occupancy mask per coefficient
    (the cheapest sparse format), base weights FP32, grid.
    """
    new: dict[str, np.ndarray] = {}
    nbytes = 0
    for p in layer_prefixes(sd):
        w = folded_coeffs(sd, p)
        n_drop = int(round(sparsity * w.size))
        if n_drop:
            flat = np.abs(w).reshape(-1)
            cut = np.argpartition(flat, n_drop - 1)[:n_drop]
            w = w.reshape(-1).copy()
            w[cut] = 0.0
            w = w.reshape(sd[f"{p}.spline_weight"].shape)
        new[f"{p}.spline_weight"] = w
        if f"{p}.spline_scaler" in sd:
            new[f"{p}.spline_scaler"] = np.ones_like(sd[f"{p}.spline_scaler"])
        nnz = int(np.count_nonzero(w))
        nbytes += 4 * nnz + (w.size + 7) // 8 + grid_bytes(sd[f"{p}.grid"])
        if f"{p}.base_weight" in sd:
            nbytes += 4 * sd[f"{p}.base_weight"].size
    out = _with_layers(sd, new)
    return Compressed(f"magnitude pruning {sparsity:.0%}", nbytes, lambda x: kan_forward(out, x),
                      details={"sparsity": sparsity})


def scalar_quant(sd: StateDict, bits: int) -> Compressed:
    """Per-output-channel symmetric scalar quantisation of the folded spline coefficients.

    Storage: `bits` per coefficient (packed) + one FP32 scale per output, base weights int8
    per output channel (like sharekan's default `base="int8"`), grid.
    """
    new: dict[str, np.ndarray] = {}
    nbytes = 0
    for p in layer_prefixes(sd):
        w = folded_coeffs(sd, p)  # (n_out, n_in, M)
        wq, _ = quantize_symmetric(w, bits)
        new[f"{p}.spline_weight"] = wq
        if f"{p}.spline_scaler" in sd:
            new[f"{p}.spline_scaler"] = np.ones_like(sd[f"{p}.spline_scaler"])
        nbytes += (w.size * bits + 7) // 8 + 4 * w.shape[0] + grid_bytes(sd[f"{p}.grid"])
        if f"{p}.base_weight" in sd:
            base = np.asarray(sd[f"{p}.base_weight"], np.float32)
            new[f"{p}.base_weight"], _ = quantize_symmetric(base, 8)
            nbytes += base.size + 4 * base.shape[0]
    out = _with_layers(sd, new)
    return Compressed(f"scalar int{bits} per channel", nbytes, lambda x: kan_forward(out, x),
                      details={"bits": bits})


def sharekan_method(sd: StateDict, label: str, *, calibration: np.ndarray | None = None,
                    keep: bool = False, **config: Any) -> Compressed:
    """`sharekan.compress(sd, **config)`; evaluated by the Rust LUTHAM evaluator.

    `nbytes` is `model.nbytes` (tensor bytes); `file_bytes` the saved artifact's size.
    """
    import sharekan

    model = sharekan.compress(dict(sd), calibration=calibration, **capped(sd, config))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "head.sharekan")
        model.save(path)
        file_bytes = os.path.getsize(path)
    layers = [
        {"name": r.name, "K": r.codebook_size, "bias": r.bias, "metric": r.metric,
         "func_sqnr_db": _finite(r.func_sqnr_db), "output_sqnr_db": _finite(r.output_sqnr_db),
         "tensor_bytes": r.tensor_bytes, "seconds": round(r.seconds, 2)}
        for r in model.report.layers
    ]
    details: dict[str, Any] = {"config": {k: v for k, v in config.items()}, "layers": layers,
                               "compile_seconds": round(model.report.seconds, 2)}
    if keep:
        details["model"] = model
    return Compressed(label, int(model.nbytes), model.forward, file_bytes, details)


def capped(sd: StateDict, config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with per-layer overrides capping K at each layer's edge count (K <= E).

    A sweep to K = 4096 on a head whose last layer has 2,560 edges keeps that layer at
    K = E (exact up to rounding) instead of failing.
    """
    out = dict(config)
    k = int(out.get("codebook_size", 256))
    if out.get("share", "layer") != "layer":
        return out
    overrides = dict(out.get("overrides") or {})
    for p in layer_prefixes(sd):
        n_out, n_in = sd[f"{p}.spline_weight"].shape[:2]
        if k > n_in * n_out and p not in overrides:
            overrides[p] = {"codebook_size": int(n_in * n_out)}
    if overrides:
        out["overrides"] = overrides
    return out


def _finite(v: Any) -> Any:
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None
