"""Dense-math helpers in float64 shared by the compiler, the refinements and the compressed
model: dequantisation, the base-branch activation, the code dtype LUTHAM takes, and the
dense (uncompressed) KAN layer forward pass used for calibration and reports."""

from __future__ import annotations

from math import erf, sqrt

import numpy as np

from .layouts import LayerSource


def dequant(values: np.ndarray | None, scale: np.ndarray | None) -> np.ndarray | None:
    """float64 values of an (n_in, n_out) tensor, int8 with per-output scales or float."""
    if values is None:
        return None
    out = values.astype(np.float64)
    if values.dtype == np.int8:
        assert scale is not None
        out *= scale.astype(np.float64)[None, :]
    return out


def base_activation(name: str | None, x: np.ndarray) -> np.ndarray:
    """Base-branch activation in float64: SiLU, exact (erf) GELU or identity."""
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    if name == "gelu":
        return 0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float64])(x / sqrt(2.0)))
    return x


def code_dtype(codebook_size: int) -> np.dtype:
    """Narrowest dtype LUTHAM accepts for codes of a K-word codebook (u8, i16 or i32)."""
    if codebook_size <= 256:
        return np.dtype(np.uint8)
    if codebook_size <= 32768:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def dense_evaluable(source: LayerSource) -> str | None:
    """None when `dense_layer_forward` computes the whole layer, else what it lacks."""
    if source.semantics.conv is not None:
        return "a convolution layer"
    if source.semantics.post:
        return "post-sum operations " + ", ".join(source.semantics.post)
    return None


def spline_forward(source: LayerSource, x: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """The spline branch alone: sum_i coeffs[i, o] . B(x_i) on x (batch, n_in) float64 ->
    (batch, n_out) float64, coefficients (n_in, n_out, M)."""
    basis = source.basis.values(source.basis_inputs(x))  # (batch, n_in, M)
    n_in, n_out, m = coeffs.shape
    # (batch, n_in*M) @ (n_in*M, n_out)
    return basis.reshape(len(x), n_in * m) @ coeffs.transpose(0, 2, 1).reshape(n_in * m, n_out)


def dense_layer_forward(
    source: LayerSource,
    x: np.ndarray,
    coeffs: np.ndarray | None = None,
    base_weight: np.ndarray | None = None,
) -> np.ndarray:
    """Dense KAN layer (any basis, base branch, input LayerNorm) on x (batch, n_in) float64
    -> (batch, n_out) float64, with the source's or the given coefficients (n_in, n_out, M)
    and base weights (n_in, n_out). Post-sum operations and conv layers are not evaluated
    (see `dense_evaluable`)."""
    coeffs = source.coeffs if coeffs is None else coeffs
    base_weight = source.base_weight if base_weight is None else base_weight
    out = spline_forward(source, x, coeffs)
    if base_weight is not None:
        out += base_activation(source.semantics.base_activation, x) @ base_weight
    if "base_bias" in source.aux:
        out += source.aux["base_bias"]
    return out
