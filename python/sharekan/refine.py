"""Calibration-driven refinements of the fit: the output metric (`metric="output"`) and
sequential error compensation (`compensate=True`).

Both need calibration *model inputs* (an array), propagated through the dense layers in
forward order, and every layer evaluable in NumPy (`compiler.dense_evaluable`).

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

The loops here are small dense linear algebra per layer (M x M metrics, one least-squares
system per output), vectorised with NumPy like the other calibration code of the compiler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidInputError
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


def _act(name: str | None, x: np.ndarray) -> np.ndarray:
    from .compiler import _activation

    return _activation(name, x)


def check_chain(sources: Sequence[LayerSource], what: str) -> None:
    """Raise InvalidInputError unless every layer is a plain dense KAN layer (no conv, no
    post-sum operations, no input norm), as the output metric and compensation need."""
    from .compiler import dense_evaluable

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
        d_act = (_act(act, x + step) - _act(act, x - step)) / (2 * step)
        out += d_act[:, :, None] * source.base_weight[None]
    return out


def output_sensitivities(sources: Sequence[LayerSource], x: np.ndarray) -> dict[str, np.ndarray]:
    """{layer name: (rows, n_out) float64} with s_o = sum_j (d y_j / d h_o)^2 over the model
    outputs y_j, for the chain of `sources` (forward order) on model inputs x (rows, n_in)."""
    from .compiler import dense_layer_forward

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


def _normal_terms(metrics: np.ndarray, coeffs: np.ndarray, shapes: np.ndarray):
    """Per edge: a = C^T R C, c = C^T R 1, d = 1^T R 1, p = C^T R w, s = 1^T R w."""
    rc = np.einsum("eml,el->em", metrics, shapes)
    a = np.einsum("em,em->e", shapes, rc)
    c = rc.sum(axis=1)
    d = metrics.sum(axis=(1, 2))
    p = np.einsum("em,em->e", rc, coeffs)
    s = np.einsum("eml,el->e", metrics, coeffs)
    return a, c, d, p, s


def edge_gain_bias(
    metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per edge, (g, b) minimising (w - g C[q] - b 1)^T R_e (w - g C[q] - b 1): the 2x2 least
    squares of `gsb.refit_gain_bias` with one metric per edge. metrics (E, M, M), coeffs (E, M),
    codebook (K, M), codes (E,) -> gains (E,), biases (E,); degenerate systems give g = 0."""
    gains = np.empty(len(coeffs))
    biases = np.empty(len(coeffs))
    step = max(1, _BLOCK // max(1, coeffs.shape[1] ** 2))
    for start in range(0, len(coeffs), step):
        sl = slice(start, start + step)
        a, c, d, p, s = _normal_terms(metrics[sl], coeffs[sl], codebook[codes[sl]])
        det = a * d - c * c
        ok = (det > 1e-12 * a * d) & np.isfinite(det)
        safe = np.where(ok, det, 1.0)
        gains[sl] = np.where(ok, (d * p - c * s) / safe, 0.0)
        biases[sl] = np.where(ok, (a * s - c * p) / safe, s / d)
    return gains, biases


def _assign(metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray,
            codes: np.ndarray) -> np.ndarray:
    """Best code per edge under its own metric with free gain and bias; an edge keeps its
    code unless another is strictly better (ties to the lowest index)."""
    k, m = codebook.shape
    new = codes.copy()
    step = max(1, _BLOCK // max(1, k * m))
    for start in range(0, len(coeffs), step):
        sl = slice(start, start + step)
        r, w = metrics[sl], coeffs[sl]
        rc = np.einsum("eml,kl->ekm", r, codebook)  # (e, K, M)
        a = np.einsum("km,ekm->ek", codebook, rc)
        c = rc.sum(axis=2)
        d = r.sum(axis=(1, 2))[:, None]
        s = np.einsum("eml,el->e", r, w)[:, None]
        p = np.einsum("ekm,em->ek", rc, w)
        det = a * d - c * c
        ok = (det > 1e-12 * a * d) & np.isfinite(det)
        # explained part of w^T R w: what the best (g, b) removes for each code
        explained = np.where(ok, (d * p * p - 2 * c * p * s + a * s * s) / np.where(ok, det, 1.0),
                             s * s / d)
        best = explained.argmax(axis=1)
        rows = np.arange(len(best))
        better = explained[rows, best] > explained[rows, codes[sl]]
        new[sl] = np.where(better, best, codes[sl])
    return new


def _update(metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray, codes: np.ndarray,
            gains: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """Codewords minimising sum_e (w_e - g_e C_q - b_e 1)^T R_e (...) for fixed codes, gains
    and biases: (sum g^2 R_e) C_q = sum g R_e (w_e - b_e 1). Clusters without a usable system
    keep their codeword."""
    k, m = codebook.shape
    lhs = np.zeros((k, m, m))
    rhs = np.zeros((k, m))
    step = max(1, _BLOCK // max(1, m * m))
    for start in range(0, len(coeffs), step):
        sl = slice(start, start + step)
        g, r = gains[sl], metrics[sl]
        np.add.at(lhs, codes[sl], (g * g)[:, None, None] * r)
        target = coeffs[sl] - biases[sl, None]
        np.add.at(rhs, codes[sl], g[:, None] * np.einsum("eml,el->em", r, target))
    out = codebook.copy()
    for q in range(k):
        scale = np.trace(lhs[q])
        if not scale > 0 or not np.isfinite(scale):
            continue
        try:
            out[q] = np.linalg.solve(lhs[q] + 1e-12 * scale * np.eye(m), rhs[q])
        except np.linalg.LinAlgError:
            continue
    return out


def _objective(metrics, coeffs, codebook, codes, gains, biases) -> float:
    diff = coeffs - gains[:, None] * codebook[codes] - biases[:, None]
    return float(np.einsum("em,eml,el->", diff, metrics, diff))


def lloyd_refine(
    metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray, codes: np.ndarray,
    n_iter: int = REFINE_ITERS,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Lloyd iterations (gain/bias solve, codeword update, reassignment) under per-edge
    metrics. metrics (E, M, M), coeffs (E, M), codebook (K, M) coefficient space, codes (E,)
    -> (codebook, codes, objective after each iteration). A step is kept only if it does not
    increase the objective, so the result is never worse than the start."""
    codebook = np.array(codebook, dtype=np.float64, copy=True)
    codes = np.asarray(codes, dtype=np.int64).copy()
    gains, biases = edge_gain_bias(metrics, coeffs, codebook, codes)
    best = _objective(metrics, coeffs, codebook, codes, gains, biases)
    history = [best]
    for _ in range(n_iter):
        cand_book = _update(metrics, coeffs, codebook, codes, gains, biases)
        cand_codes = _assign(metrics, coeffs, cand_book, codes)
        g, b = edge_gain_bias(metrics, coeffs, cand_book, cand_codes)
        value = _objective(metrics, coeffs, cand_book, cand_codes, g, b)
        if not value <= best:
            break
        improved = best - value
        codebook, codes, gains, biases, best = cand_book, cand_codes, g, b, value
        history.append(best)
        if improved <= 1e-9 * max(best, 1e-300):
            break
    return codebook, codes.astype(np.uint32), history


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
    act = None if base is None else _act(source.semantics.base_activation, x_compressed)
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
