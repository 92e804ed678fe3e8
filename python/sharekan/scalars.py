"""A compressed layer's stored scalars: the gains, biases and base weights quantised (or
kept float32) as `CompressedLayer` fields, per the layer's `Config` (int8, gain_bits, base).
Used by the compiler after the independent refit and again after compensation."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from .config import Config


def store_gains(cfg: Config, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stored gains (n_in, n_out), per-output scales): int8 / int4 per `cfg.gain_bits`, or
    float32 with unit scales."""
    if cfg.int8:
        return _core.quantize_sym(np.ascontiguousarray(gains), 1, cfg.gain_bits)
    return gains.astype(np.float32), np.ones(gains.shape[1], dtype=np.float32)


def store_codebook(book: np.ndarray, int8: bool, shared_scale: bool = False
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(evaluated float32 codebook, int8 codebook, scales) of a (K, M) codebook: int8-rounded
    with one scale per codeword ((K,)), or one for all (`shared_scale`: (1,), the largest,
    for codewords already normalised to max |.| = 1), or float32 (None, None)."""
    if not int8:
        return book.astype(np.float32), None, None
    book_q, scale = _core.quantize_i8(np.ascontiguousarray(book), 0)
    if shared_scale:
        scale = np.array([scale.max()], dtype=np.float32)  # (1,): all equal
    return (book_q.astype(np.float32) * scale[:, None]).astype(np.float32), book_q, scale


def store_scalars(
    cfg: Config,
    gains: np.ndarray,
    bias: np.ndarray,
    folded: bool,
    base_weight: np.ndarray | None,
) -> dict[str, Any]:
    """The stored (quantised) gains (n_in, n_out), biases ((n_out,) folded or (n_in, n_out))
    and base weights (n_in, n_out) or None, as CompressedLayer fields."""
    gains_stored, gain_scale = store_gains(cfg, gains)
    edge_bias = edge_bias_scale = out_bias = None
    if folded:
        out_bias = bias.astype(np.float32)
    elif cfg.int8:
        edge_bias, edge_bias_scale = _core.quantize_i8(np.ascontiguousarray(bias), 1)
    else:
        edge_bias = bias.astype(np.float32)
    base = base_scale = None
    if base_weight is not None:
        if cfg.base in ("int8", "int4", "fold"):  # "fold" lands here only where it was refused
            bits = 4 if cfg.base == "int4" else 8
            base, base_scale = _core.quantize_sym(np.ascontiguousarray(base_weight), 1, bits)
        else:
            base = base_weight.astype(np.float32)
    return {
        "gains": gains_stored,
        "gain_scale": gain_scale,
        "edge_bias": edge_bias,
        "edge_bias_scale": edge_bias_scale,
        "out_bias": out_bias,
        "base_weight": base,
        "base_scale": base_scale,
    }
