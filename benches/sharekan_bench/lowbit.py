"""Beyond the paper: shrink the per-edge gains and base-branch weights below 8 bits.

At small K the stored size of a compressed head is set by its per-edge bytes (code +
int8 gain + int8 base weight = 2.5 bytes per edge at K = 16), not by the codebook. These
variants start from `sharekan.compress` (Int8, bias="auto") and re-quantise the gains and
the base weights of every layer to fewer bits with one scale per output, choosing each
output's clipping scale by least squares (MSE-optimal clipping, searched over a fixed set
of fractions of max|w|). The compressed layers are then evaluated by the same Rust LUTHAM
evaluator with the dequantised values, and the bytes are counted as if packed at the
given bit widths (scales FP32). The compiler options this measures are described in the
benchmark README ("lower-bit gains and base weights").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

import sharekan
from sharekan import _core
from sharekan.layouts import detect_layout

try:  # the compiler's SiLU fit for base="fold" (moving from sharekan.compiler to sharekan.folding)
    from sharekan.folding import silu_spline_fit
except ImportError:  # pragma: no cover - older tree
    from sharekan.compiler import silu_spline_fit

from .methods import Compressed, capped, sharekan_method
from .methods import dense as dense_method

#: Fractions of max|w| tried as the clipping point of each output's scale.
CLIP_FRACTIONS = tuple(np.linspace(0.2, 1.0, 33))


def quantize_mse(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric `bits`-bit quantisation with one scale per column, clipping chosen by MSE.

    Args:
        w: (n_in, n_out) float weights (columns = outputs).

    Returns:
        (dequantised float32 (n_in, n_out), scales float32 (n_out,)).
    """
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, dtype=np.float64)
    top = np.abs(w).max(axis=0)  # (n_out,)
    best = np.full(w.shape[1], np.inf)
    best_scale = np.where(top > 0, top / qmax, 1.0)
    for frac in CLIP_FRACTIONS:
        scale = np.where(top > 0, frac * top / qmax, 1.0)
        deq = np.clip(np.round(w / scale), -qmax, qmax) * scale
        err = ((deq - w) ** 2).sum(axis=0)
        better = err < best
        best = np.where(better, err, best)
        best_scale = np.where(better, scale, best_scale)
    deq = np.clip(np.round(w / best_scale), -qmax, qmax) * best_scale
    return deq.astype(np.float32), best_scale.astype(np.float32)


def lowbit_forward(model: Any, gain_bits: int, base_bits: int
                   ) -> tuple[Callable[[np.ndarray], np.ndarray], int, dict[str, Any]]:
    """Re-quantise a CompressedModel's gains / base weights; returns (forward, nbytes, details)."""
    layers = []
    nbytes = 0
    for layer in model.layers.values():
        inputs = layer.lutham_inputs()
        e = layer.n_in * layer.n_out
        gains, _ = quantize_mse(layer.edge_gains(), gain_bits)
        inputs["gains"] = gains
        inputs["gain_scale"] = np.ones(layer.n_out, dtype=np.float32)
        stored = layer.stored_tensors()
        nbytes += (e * gain_bits + 7) // 8 + 4 * layer.n_out  # gains + scales
        nbytes += int(stored["codes"].nbytes) + int(stored["grid"].nbytes)
        for name in ("edge_bias_q", "edge_bias_scale", "edge_bias", "out_bias"):
            if name in stored:
                nbytes += int(stored[name].nbytes)
        if layer.base_weight is not None:
            base = layer.base_weights()
            assert base is not None
            if base_bits >= 32:
                inputs["base_weight"] = base.astype(np.float32)
                nbytes += 4 * e
            else:
                inputs["base_weight"], _ = quantize_mse(base, base_bits)
                nbytes += (e * base_bits + 7) // 8 + 4 * layer.n_out
            inputs["base_scale"] = None
        layers.append((layer.n_in, inputs))
    groups = {layer.codebook_group: layer for layer in model.layers.values()}
    for layer in groups.values():
        nbytes += sum(int(a.nbytes) for a in layer.stored_codebook().values())

    def forward(x: np.ndarray) -> np.ndarray:
        h = np.ascontiguousarray(x, dtype=np.float32)
        for _, inputs in layers:
            h = _core.lutham_forward(h, **inputs)
        return h

    return forward, nbytes, {"gain_bits": gain_bits, "base_bits": base_bits}


def lowbit_variants(sd: Mapping[str, np.ndarray], calib: np.ndarray, *, seed: int = 0,
                    ks: tuple[int, ...] = (16, 256),
                    bits: tuple[tuple[int, int], ...] = ((4, 8), (8, 4), (4, 4), (3, 4)),
                    ) -> Iterator[tuple[str, Callable[[], Compressed]]]:
    """(label, make) pairs: K x (gain bits, base bits) variants of SHARe-KAN Int8 bias=auto."""
    models: dict[int, Any] = {}

    def model_for(k: int) -> Any:
        if k not in models:
            cfg = capped(sd, {"codebook_size": k, "seed": seed})
            models[k] = sharekan.compress(dict(sd), calibration=calib, **cfg)
        return models[k]

    for k in ks:
        for gb, bb in bits:
            label = f"SHARe-KAN K={k} gains int{gb} base int{bb}"
            if gb in (4, 8) and bb in (4, 8):  # the compiler's options: gain_bits=4, base="int4"
                opts = {"gain_bits": gb, "base": f"int{bb}"}

                def make(k: int = k, label: str = label, opts: dict = opts) -> Compressed:
                    return sharekan_method(sd, label, calibration=calib, codebook_size=k, seed=seed, **opts)
            else:  # 3-bit gains: bench-side re-quantisation of the Int8 model (no compiler option)
                def make(k: int = k, gb: int = gb, bb: int = bb, label: str = label) -> Compressed:
                    forward, nbytes, details = lowbit_forward(model_for(k), gb, bb)
                    return Compressed(label, nbytes, forward, None, {**details, "K": k})

            yield label, make


# ------------------------------------------------------------------ base folded into splines


def fold_base(sd: Mapping[str, np.ndarray], prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The state_dict with the base branch of the given layers folded into their splines,
    as the compiler's `base="fold"` does before clustering (same SiLU fit,
    `sharekan.compiler.silu_spline_fit`), kept dense FP32: the reference row for the fold.

    Inside the grid range, w_base * SiLU(x) = sum_m w_base * s_m B_m(x), so
    `spline_weight' = spline_weight * spline_scaler + base_weight * s` and the base weight
    disappears. Exact up to the spline fit of SiLU while the layer's inputs stay inside the
    grid (the first layer of these heads: tanh-squashed features).
    """
    out = {k: np.asarray(v) for k, v in sd.items()}
    sources = {src.name: src for src in detect_layout(sd).extract(sd).layers}
    for p in prefixes:
        src = sources[p]
        coef, _ = silu_spline_fit(src)  # (n_in, M)
        w = src.coeffs + src.base_weight[:, :, None] * coef[:, None, :]  # (n_in, n_out, M)
        out[f"{p}.spline_weight"] = np.ascontiguousarray(w.transpose(1, 0, 2), dtype=np.float32)
        out.pop(f"{p}.spline_scaler", None)
        out.pop(f"{p}.base_weight", None)
    return out


def base_fold_variants(sd: Mapping[str, np.ndarray], calib: np.ndarray, *, seed: int = 0,
                       ks: tuple[int, ...] = (16, 64, 256),
                       ) -> Iterator[tuple[str, Callable[[], Compressed]]]:
    """Variants with the first layer's base branch folded into its splines (inputs in grid)."""
    first = "layers.0"
    if f"{first}.base_weight" not in sd:
        return
    folded = fold_base(sd, (first,))

    def dense_folded() -> Compressed:
        comp = dense_method(folded)
        comp.method = "dense FP32, layer-0 base folded into splines"
        return comp

    yield "dense base-folded", dense_folded
    # the compressed rows are the compiler's own options (base="fold", gain_bits=4), which
    # replaced the bench-side fold + re-quantisation measured here first
    for k in ks:
        label = f"SHARe-KAN Int8 K={k}, layer-0 base folded"
        yield label, lambda k=k, label=label: sharekan_method(
            sd, label, calibration=calib, codebook_size=k, seed=seed, base="fold")
        label4 = f"SHARe-KAN K={k}, layer-0 base folded, gains int4"
        yield label4, lambda k=k, label4=label4: sharekan_method(
            sd, label4, calibration=calib, codebook_size=k, seed=seed, base="fold", gain_bits=4)
