"""Calibration-driven refinements of the fit: the output metric (`metric="output"`) and
sequential error compensation (`compensate=True`).

Both need calibration *model inputs* (an array), propagated through the dense layers in
forward order, and every layer evaluable in NumPy (`dense.dense_evaluable`).

- Output sensitivities: for layer l with outputs h_o, `s_o(x) = sum_j (d y_j / d h_o)^2`
  over the model outputs y_j, back-propagated through the dense layers (the diagonal of
  J^T J, per calibration row). The edge derivatives come from central differences of the
  basis values and of the base activation.
- Output metric: edge e = (i, o) is fitted under its own metric
  `R_e = mean_x s_o(x) B(x_i) B(x_i)^T` (+ a small ridge), so `(w_e - w^_e)^T R_e (...)` is
  the first-order squared error the edge causes in the model outputs. The codebook starts
  from the spherical k-means under the edges' mean metric (Rust) and is refined by Lloyd
  iterations in coefficient space under the per-edge metrics (`lloyd_refine`); gains and
  biases are then the per-edge 2x2 least squares under R_e (`edge_gain_bias`).
- Compensation: layer by layer in forward order, with codes and codebook fixed, the gains,
  base weights and biases of each output are refit by ridge least squares (towards the
  independent fit) so that the layer, fed the *compressed* model's activations, matches the
  dense layer on the dense activations (`compensate_output`); then quantised as usual.

The Lloyd refinement and the per-edge gain/bias solve run in Rust (`sharekan_core::refine`,
E x K x M^2 work per pass); the rest is small dense linear algebra per layer (one
least-squares system per output), vectorised with NumPy like the other calibration code of
the compiler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _core
from .dense import base_activation, dense_evaluable, dense_layer_forward
from .errors import CodeRangeError, DTypeError, InvalidInputError
from .layouts import LayerSource

#: Ridge of the per-edge output metric, relative to the layer's mean metric trace / M.
OUTPUT_METRIC_RIDGE = 1e-3
#: Lloyd iterations under the per-edge metrics after the spherical k-means (metric="output").
REFINE_ITERS = 8
#: Ridge of the compensation least squares towards the independent fit, relative to the
#: mean diagonal of the normal equations.
COMPENSATE_RIDGE = 1e-3
#: Relative central-difference step for the edge derivatives.
DERIVATIVE_STEP = 1e-6
#: Most per-edge metric entries (E * M * M float64 values) `edge_metrics` materialises.
MAX_METRIC_ENTRIES = 100_000_000
#: Rough number of float64 values per temporary block.
_BLOCK = 4_000_000


def check_chain(sources: Sequence[LayerSource], what: str) -> None:
    """Raise InvalidInputError unless every layer is a plain dense KAN layer (no conv, no
    post-sum operations, no input norm), as the output metric and compensation need."""
    for s in sources:
        lacking = dense_evaluable(s) or ("an input LayerNorm" if s.semantics.input_norm else None)
        if lacking is not None:
            raise InvalidInputError(
                f"{what} needs every layer to be a plain KAN layer evaluable in NumPy; "
                f"layer {s.name!r} has {lacking}"
            )


def edge_derivatives(source: LayerSource, x: np.ndarray) -> np.ndarray:
    """d h_o / d x_i of the dense layer at rows x (rows, n_in) -> (rows, n_in, n_out) float64
    (central differences of the basis values and of the base activation)."""
    step = DERIVATIVE_STEP * np.maximum(1.0, np.abs(x))
    d_basis = (source.basis.values(x + step) - source.basis.values(x - step)) / (2 * step)[..., None]
    out = np.einsum("rim,iom->rio", d_basis, source.coeffs)
    if source.base_weight is not None:
        act = source.semantics.base_activation
        d_act = (base_activation(act, x + step) - base_activation(act, x - step)) / (2 * step)
        out += d_act[:, :, None] * source.base_weight[None]
    return out


def output_sensitivities(sources: Sequence[LayerSource], x: np.ndarray) -> dict[str, np.ndarray]:
    """{layer name: (rows, n_out) float64} with s_o = sum_j (d y_j / d h_o)^2 over the model
    outputs y_j, for the chain of `sources` (forward order) on model inputs x (rows, n_in)."""
    check_chain(sources, "metric='output' / compensate")
    inputs = []
    h = np.asarray(x, dtype=np.float64)
    for s in sources:
        inputs.append(h)
        h = dense_layer_forward(s, h)
    rows, n_final = h.shape
    out: dict[str, np.ndarray] = {}
    chunk = max(1, _BLOCK // max(1, max(s.n_in * max(s.n_out, n_final) for s in sources)))
    for start in range(0, rows, chunk):
        sl = slice(start, start + chunk)
        grad = np.broadcast_to(np.eye(n_final), (len(inputs[0][sl]), n_final, n_final)).copy()
        for s, xin in zip(reversed(sources), reversed(inputs)):
            out.setdefault(s.name, np.empty((rows, s.n_out)))[sl] = np.einsum("rjo,rjo->ro", grad, grad)
            if s is not sources[0]:
                grad = np.einsum("rjo,rio->rji", grad, edge_derivatives(s, xin[sl]))
    return out


def edge_metrics(source: LayerSource, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n_in * n_out, M, M) float64: R_(i,o) = mean over rows of weights[:, o] B(x_i) B(x_i)^T,
    plus OUTPUT_METRIC_RIDGE * (mean trace / M) * I. Edge order is input-major (i * n_out + o)."""
    n_in, n_out, m = source.coeffs.shape
    if n_in * n_out * m * m > MAX_METRIC_ENTRIES:
        raise InvalidInputError(
            f"layer {source.name!r}: metric='output' keeps one {m}x{m} metric per edge "
            f"({n_in * n_out} edges, {n_in * n_out * m * m * 8 / 1e9:.1f} GB); use metric='data' "
            "for layers this large (e.g. overrides={'" + source.name + "': {'metric': 'data'}})"
        )
    basis = source.basis.values(source.basis_inputs(x))  # (rows, n_in, M)
    rows = basis.shape[0]
    out = np.empty((n_in, n_out, m, m))
    for i in range(n_in):
        outer = (basis[:, i, :, None] * basis[:, i, None, :]).reshape(rows, m * m)
        out[i] = (weights.T @ outer).reshape(n_out, m, m) / rows
    ridge = OUTPUT_METRIC_RIDGE * max(float(np.trace(out, axis1=2, axis2=3).mean()) / m, 1e-300)
    out += ridge * np.eye(m)
    return out.reshape(n_in * n_out, m, m)


def _edge_arrays(
    metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float64 / uint32 C-contiguous copies-if-needed for the core (which re-checks shapes,
    finiteness and code ranges); negative codes are refused here, before the uint32 cast."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise DTypeError(f"codes: expected an integer array, got dtype {codes.dtype}")
    if codes.size and codes.min() < 0:
        index = int(np.argmax(codes < 0))
        raise CodeRangeError(f"codes: code {int(codes.flat[index])} at index {index} is negative")
    return (
        np.ascontiguousarray(metrics, dtype=np.float64),
        np.ascontiguousarray(coeffs, dtype=np.float64),
        np.ascontiguousarray(codebook, dtype=np.float64),
        np.ascontiguousarray(codes, dtype=np.uint32),
    )


def edge_gain_bias(
    metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per edge, (g, b) minimising (w - g C[q] - b 1)^T R_e (w - g C[q] - b 1): the 2x2 least
    squares of `gsb.refit_gain_bias` with one metric per edge (Rust).

    Args:
        metrics: (E, M, M) float per-edge metrics R_e.
        coeffs: (E, M) float coefficients w_e.
        codebook: (K, M) float codewords C (coefficient space).
        codes: (E,) integer codes in [0, K).

    Returns:
        gains (E,) float64, biases (E,) float64; degenerate systems give g = 0, b = s / d.

    Raises:
        ShapeError, NonFiniteError, DTypeError, CodeRangeError on bad input.

    Example:
        >>> g, b = edge_gain_bias(np.eye(3)[None], np.ones((1, 3)), np.eye(3)[:1], [0])
    """
    r, w, book, q = _edge_arrays(metrics, coeffs, codebook, codes)
    return _core.edge_gain_bias(r, w, book, q)


def lloyd_refine(
    metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray, codes: np.ndarray,
    n_iter: int = REFINE_ITERS,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Lloyd iterations (gain/bias solve, codeword update, reassignment) under per-edge
    metrics, in Rust (`sharekan_core::refine`; bit-identical for any thread count).

    Per iteration: codewords `(sum g^2 R_e) C_q = sum g R_e (w_e - b_e 1)` over each
    cluster (clusters without a usable system keep theirs), reassignment (an edge keeps its
    code unless another explains strictly more of w^T R w; ties to the lowest index), then
    the per-edge (g, b). A step is kept only if it does not increase the objective, so the
    result is never worse than the start; the loop stops after `n_iter` iterations or when
    the decrease is at most 1e-9 of the objective.

    Args:
        metrics: (E, M, M) float per-edge metrics R_e.
        coeffs: (E, M) float coefficients w_e.
        codebook: (K, M) float start codebook (coefficient space).
        codes: (E,) integer start codes in [0, K).
        n_iter: most iterations (>= 0).

    Returns:
        (codebook (K, M) float64, codes (E,) uint32, objective after the start and after
        each kept iteration).

    Raises:
        ShapeError, NonFiniteError, DTypeError, CodeRangeError, InvalidInputError (n_iter < 0).

    Example:
        >>> book, codes, history = lloyd_refine(metrics, coeffs, book0, codes0)  # doctest: +SKIP
    """
    r, w, book, q = _edge_arrays(metrics, coeffs, codebook, codes)
    out = _core.lloyd_refine(r, w, book, q, int(n_iter))
    return out["codebook"], out["codes"], [float(v) for v in out["objective"]]


def compensate_output(
    source: LayerSource,
    x_compressed: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray | None,
    shapes: np.ndarray,
    gains: np.ndarray,
    base: np.ndarray | None,
    bias: np.ndarray,
    folded: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Ridge least squares, per output o, of the layer's scalars on compressed activations.

    Model of output o on rows x: sum_i g_io P_io(x) + sum_i a_io act(x_i) + bias terms, with
    P_io = B(x_i) . shapes[i, o] and the bias terms b_o (folded) or sum_i b_io S_i(x)
    (S_i = sum_m B_m(x_i)). Minimises sum_x weights[x, o] (target[x, o] - model)^2
    + lambda ||theta - theta_0||^2 (lambda = COMPENSATE_RIDGE * mean diagonal).

    Args:
        source: the dense layer (basis, base activation, base bias).
        x_compressed: (rows, n_in) the compressed model's inputs to this layer.
        target: (rows, n_out) the dense layer's outputs on the dense inputs.
        weights: (rows, n_out) per-row weights (output sensitivities) or None for uniform.
        shapes: (n_in, n_out, M) the stored codewords of the edges, C[q_io].
        gains: (n_in, n_out) start values theta_0; base: (n_in, n_out) or None (not refit);
        bias: (n_out,) when folded, else (n_in, n_out).

    Returns:
        (gains, base or None, bias), float64, same shapes as the inputs.
    """
    n_in, n_out, _ = shapes.shape
    u = source.basis.values(source.basis_inputs(x_compressed))  # (rows, n_in, M)
    rows = u.shape[0]
    y = np.asarray(target, dtype=np.float64)
    if "base_bias" in source.aux:
        y = y - source.aux["base_bias"]
    act = None if base is None else base_activation(source.semantics.base_activation, x_compressed)
    sums = None if folded else u.sum(axis=2)
    gains_out = np.empty_like(gains, dtype=np.float64)
    base_out = None if base is None else np.empty_like(base, dtype=np.float64)
    bias_out = np.empty_like(bias, dtype=np.float64)
    for o in range(n_out):
        cols = [np.einsum("rim,im->ri", u, shapes[:, o])]
        start = [gains[:, o]]
        if act is not None:
            cols.append(act)
            start.append(base[:, o])  # type: ignore[index]
        if folded:
            cols.append(np.ones((rows, 1)))
            start.append(bias[o : o + 1])
        else:
            cols.append(sums)  # type: ignore[arg-type]
            start.append(bias[:, o])
        a = np.concatenate(cols, axis=1)
        theta0 = np.concatenate(start).astype(np.float64)
        aw = a if weights is None else a * weights[:, o : o + 1]
        lhs = aw.T @ a
        rhs = aw.T @ y[:, o]
        ridge = COMPENSATE_RIDGE * max(float(np.trace(lhs)) / len(theta0), 1e-300)
        try:
            theta = np.linalg.solve(lhs + ridge * np.eye(len(theta0)), rhs + ridge * theta0)
        except np.linalg.LinAlgError:
            theta = theta0
        if not np.all(np.isfinite(theta)):
            theta = theta0
        gains_out[:, o] = theta[:n_in]
        j = n_in
        if base_out is not None:
            base_out[:, o] = theta[j : j + n_in]
            j += n_in
        if folded:
            bias_out[o] = theta[j]
        else:
            bias_out[:, o] = theta[j : j + n_in]
    return gains_out, base_out, bias_out
