"""A slow, obviously-correct NumPy (float64) oracle of sharekan's math.

Written from the specification (docs/SPEC.md §2-3, ARCHITECTURE.md §2-4), not from the Rust
code, and computed a different way where that is possible:

- basis: efficient-kan's `b_splines` recursion, vectorised over the whole grid;
- Gram matrix: exact integration of piecewise polynomials (each basis function is fitted
  as a degree-k polynomial on every knot interval, products integrated with a Hilbert
  matrix), where the core uses Gauss-Legendre quadrature;
- k-means update: the top eigenvector from `numpy.linalg.eigh`, where the core uses power
  iteration;
- gain/bias refit: `numpy.linalg.lstsq` on the whitened system, where the core solves the
  2x2 normal equations;
- evaluation: the dense efficient-kan forward pass on decoded coefficients, where the core
  uses per-input projection tables;
- Lloyd refinement under per-edge metrics (`refine_*`): the vectorised NumPy code that
  `sharekan.refine` ran before it moved to Rust (einsum sums, `numpy.linalg.solve`), where
  the core uses matrix products per edge block and its own LU solve.

Only tests import this module. Nothing here is fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------
# B-spline basis and metric
# ---------------------------------------------------------------------------------------


def bspline_basis(x: np.ndarray, grid: np.ndarray, k: int) -> np.ndarray:
    """efficient-kan's B-spline basis in float64.

    Args:
        x: (B, n_in) inputs.
        grid: (n_in, G + 2k + 1) knots, strictly increasing per row.
        k: spline order.

    Returns:
        (B, n_in, G + k) basis values. Half-open spans `grid[j] <= x < grid[j+1]`; rows of
        inputs outside `[grid[0], grid[-1])` and of non-finite inputs are all zero.
    """
    x = np.asarray(x, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    finite = np.isfinite(x)
    xs = np.where(finite, x, 0.0)[:, :, None]  # (B, n_in, 1)
    g = grid[None, :, :]  # (1, n_in, NG)
    bases = ((xs >= g[:, :, :-1]) & (xs < g[:, :, 1:])).astype(np.float64)
    for p in range(1, k + 1):
        left = (xs - g[:, :, : -(p + 1)]) / (g[:, :, p:-1] - g[:, :, : -(p + 1)])
        right = (g[:, :, p + 1 :] - xs) / (g[:, :, p + 1 :] - g[:, :, 1:-p])
        bases = left * bases[:, :, :-1] + right * bases[:, :, 1:]
    bases[~finite] = 0.0
    return bases


def _basis_one(xv: np.ndarray, grid_row: np.ndarray, k: int) -> np.ndarray:
    """(P, M) basis values of one input at the points `xv`."""
    return bspline_basis(xv[:, None], grid_row[None, :], k)[:, 0, :]


def gram_one(grid_row: np.ndarray, k: int) -> np.ndarray:
    """(1/(b-a)) * integral_a^b B(x) B(x)^T dx for one input, integrated exactly.

    `a = grid[k]`, `b = grid[G+k]`. On each knot interval every basis function is a
    polynomial of degree k; it is recovered exactly from k+1 samples (Vandermonde solve in
    the local coordinate t in [0, 1]) and the products are integrated with the Hilbert
    matrix H[p, q] = 1 / (p + q + 1) = integral_0^1 t^p t^q dt.
    """
    grid_row = np.asarray(grid_row, dtype=np.float64)
    n_knots = grid_row.shape[0]
    g_intervals = n_knots - 2 * k - 1
    m = g_intervals + k
    a, b = grid_row[k], grid_row[g_intervals + k]
    p = np.arange(k + 1)
    hilbert = 1.0 / (p[:, None] + p[None, :] + 1.0)
    # Chebyshev points of the first kind on (0, 1): strictly inside the interval.
    t = 0.5 - 0.5 * np.cos((2 * p + 1) * np.pi / (2 * (k + 1)))
    vander = t[:, None] ** p[None, :]  # (k+1, k+1)
    out = np.zeros((m, m))
    for j in range(k, g_intervals + k):
        lo, hi = grid_row[j], grid_row[j + 1]
        h = hi - lo
        values = _basis_one(lo + t * h, grid_row, k)  # (k+1, M)
        coef = np.linalg.solve(vander, values)  # (k+1, M): polynomial coefficients in t
        out += h * (coef.T @ hilbert @ coef)
    return out / (b - a)


def bspline_gram(grid: np.ndarray, k: int) -> np.ndarray:
    """(M, M) `function` metric: mean over inputs of the normalised Gram matrices."""
    grid = np.asarray(grid, dtype=np.float64)
    return np.mean([gram_one(row, k) for row in grid], axis=0)


def gram_midpoint(grid: np.ndarray, k: int, n_points: int = 20000) -> np.ndarray:
    """Same metric by the dense midpoint rule (a second, cruder way; test only)."""
    grid = np.asarray(grid, dtype=np.float64)
    n_knots = grid.shape[1]
    g_intervals = n_knots - 2 * k - 1
    mats = []
    for row in grid:
        a, b = row[k], row[g_intervals + k]
        xv = a + (np.arange(n_points) + 0.5) * (b - a) / n_points
        bx = _basis_one(xv, row, k)
        mats.append(bx.T @ bx / n_points)
    return np.mean(mats, axis=0)


def uniform_grid(n_in: int, grid_size: int, k: int, lo: float = -1.0, hi: float = 1.0):
    """(n_in, G + 2k + 1) efficient-kan grid: uniform on [lo, hi], k knots beyond each end."""
    h = (hi - lo) / grid_size
    row = np.arange(-k, grid_size + k + 1) * h + lo
    return np.tile(row, (n_in, 1))


# ---------------------------------------------------------------------------------------
# Whitening and gain-shape-bias decomposition
# ---------------------------------------------------------------------------------------


@dataclass
class Decomposition:
    """Whitened form of coefficient vectors (ARCHITECTURE §2)."""

    chol: np.ndarray  # (M, M) lower L, R = L L^T
    ones_white: np.ndarray  # (M,) L^T 1
    u: np.ndarray  # (M,) unit constant direction
    v: np.ndarray  # (E, M) whitened coefficients
    beta: np.ndarray  # (E,)
    residuals: np.ndarray  # (E, M)
    gamma: np.ndarray  # (E,)


def decompose(coeffs: np.ndarray, metric: np.ndarray) -> Decomposition:
    coeffs = np.asarray(coeffs, dtype=np.float64)
    chol = np.linalg.cholesky(np.asarray(metric, dtype=np.float64))
    m = coeffs.shape[1]
    ones_white = chol.T @ np.ones(m)
    u = ones_white / np.linalg.norm(ones_white)
    v = coeffs @ chol  # row e: (L^T w_e)^T
    beta = v @ u
    residuals = v - beta[:, None] * u[None, :]
    gamma = np.linalg.norm(residuals, axis=1)
    return Decomposition(chol, ones_white, u, v, beta, residuals, gamma)


def whiten_codebook(codebook: np.ndarray, metric: np.ndarray) -> np.ndarray:
    """(K, M) coefficient-space codebook -> whitened codewords c_q = L^T C[q]."""
    chol = np.linalg.cholesky(np.asarray(metric, dtype=np.float64))
    return np.asarray(codebook, dtype=np.float64) @ chol


def reconstruct(codebook: np.ndarray, codes, gains, biases) -> np.ndarray:
    """(E, M) decoded coefficients w^_e = g_e C[q_e] + b_e 1."""
    codebook = np.asarray(codebook, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.int64)
    return (
        np.asarray(gains, dtype=np.float64)[:, None] * codebook[codes]
        + np.asarray(biases, dtype=np.float64)[:, None]
    )


def metric_error(coeffs, recon, metric) -> np.ndarray:
    """(E,) err_e = (w_e - w^_e)^T R (w_e - w^_e)."""
    d = np.asarray(coeffs, dtype=np.float64) - np.asarray(recon, dtype=np.float64)
    return np.einsum("em,mn,en->e", d, np.asarray(metric, dtype=np.float64), d)


def refit_gain_bias(coeffs, metric, codebook, codes):
    """Joint least-squares (g_e, b_e) per edge for a fixed code, via `lstsq`.

    Minimises ||L^T (w_e - g C[q_e] - b 1)||^2, which is the R-weighted error.
    """
    coeffs = np.asarray(coeffs, dtype=np.float64)
    chol = np.linalg.cholesky(np.asarray(metric, dtype=np.float64))
    codebook = np.asarray(codebook, dtype=np.float64)
    ones_white = chol.T @ np.ones(coeffs.shape[1])
    gains = np.empty(coeffs.shape[0])
    biases = np.empty(coeffs.shape[0])
    for e, q in enumerate(np.asarray(codes, dtype=np.int64)):
        design = np.stack([chol.T @ codebook[q], ones_white], axis=1)  # (M, 2)
        sol, *_ = np.linalg.lstsq(design, chol.T @ coeffs[e], rcond=None)
        gains[e], biases[e] = sol
    return gains, biases


# ---------------------------------------------------------------------------------------
# Weighted sign-invariant spherical k-means (ARCHITECTURE §3)
# ---------------------------------------------------------------------------------------


def kmeans_objective(residuals: np.ndarray, centroids: np.ndarray, codes) -> float:
    """J = sum_e ||r_e||^2 - <r_e, c_{q_e}>^2 (each term clamped at 0 against rounding)."""
    residuals = np.asarray(residuals, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    return float(np.sum(np.maximum(edge_errors(residuals, centroids, codes), 0.0)))


def edge_errors(residuals, centroids, codes) -> np.ndarray:
    """(E,) ||r_e||^2 - <r_e, c_{q_e}>^2."""
    proj = np.einsum("em,em->e", residuals, centroids[np.asarray(codes, dtype=np.int64)])
    return np.einsum("em,em->e", residuals, residuals) - proj**2


def best_codes(residuals: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """argmax_q |<r_e, c_q>|, ties to the lowest q."""
    return np.argmax(np.abs(residuals @ centroids.T), axis=1).astype(np.int64)


def fix_sign(c: np.ndarray) -> np.ndarray:
    """Make the largest-|.| component positive (lowest index on ties)."""
    j = int(np.argmax(np.abs(c)))
    return -c if c[j] < 0 else c


def top_eigenvector(scatter: np.ndarray) -> np.ndarray:
    """Unit eigenvector of the largest eigenvalue of a symmetric PSD matrix."""
    w, vecs = np.linalg.eigh(scatter)
    return fix_sign(vecs[:, int(np.argmax(w))])


@dataclass
class KMeansTrace:
    centroids: np.ndarray  # (K, M)
    codes: np.ndarray  # (E,) int64
    objective: list  # after init, then after each iteration
    iterations: int
    converged: bool
    reseeds: int


def flat_edges(residuals: np.ndarray) -> np.ndarray:
    """(E,) bool: gamma_e == 0 or gamma_e <= 1e-12 * max gamma (weight 0 edges)."""
    gamma = np.linalg.norm(residuals, axis=1)
    return (gamma == 0) | (gamma <= 1e-12 * gamma.max(initial=0.0))


def kmeans_from_init(
    residuals: np.ndarray, centroids0: np.ndarray, n_iter: int, tol: float
) -> KMeansTrace:
    """Spherical k-means from given initial centroids, one plain step at a time.

    objective[0] is J of the best assignment to the initial centroids (argmax |<r, c>|,
    ties to the lowest q). Each iteration then:
      1. reseeds empty clusters in ascending q with the non-flat edges of largest current
         error (err > 0; ties to the lowest index; each edge once): c_q = r_e / ||r_e||,
         sign-fixed (the edge keeps its code until the next assignment);
      2. updates every non-empty cluster to the top eigenvector of its scatter matrix,
         kept only if its Rayleigh quotient is not below the old centroid's;
      3. assigns (the old code is kept unless the best one is strictly better) and
         records J.
    Stops after `n_iter` iterations or when (J_prev - J) / J_prev < tol (or J = 0);
    tol = -inf runs exactly `n_iter` iterations.
    """
    r = np.asarray(residuals, dtype=np.float64)
    c = np.array(centroids0, dtype=np.float64, copy=True)
    kk = c.shape[0]
    flat = flat_edges(r)
    codes = best_codes(r, c)
    err = np.maximum(edge_errors(r, c, codes), 0.0)
    objective = [float(err.sum())]
    reseeds = 0
    iterations = 0
    replay = tol == -np.inf  # run exactly n_iter iterations (replaying another trace)
    converged = objective[0] == 0.0 and not replay
    while not converged and iterations < n_iter:
        # 1. empty clusters
        counts = np.bincount(codes, minlength=kk)
        empty = [q for q in range(kk) if counts[q] == 0]
        cand = sorted(
            (e for e in range(len(r)) if not flat[e] and err[e] > 0), key=lambda e: (-err[e], e)
        )
        for q, e in zip(empty, cand, strict=False):  # fewer candidates: the rest stay
            c[q] = fix_sign(r[e] / np.linalg.norm(r[e]))
            reseeds += 1
        # 2. update
        for q in range(kk):
            members = r[codes == q]
            if members.shape[0] == 0:
                continue
            scatter = members.T @ members
            cand_c = top_eigenvector(scatter)
            if cand_c @ scatter @ cand_c >= c[q] @ scatter @ c[q]:
                c[q] = cand_c
        # 3. assign
        new = best_codes(r, c)
        score_new = np.einsum("em,em->e", r, c[new]) ** 2
        score_old = np.einsum("em,em->e", r, c[codes]) ** 2
        codes = np.where(score_new > score_old, new, codes)
        err = np.maximum(edge_errors(r, c, codes), 0.0)
        j_prev, j_now = objective[-1], float(err.sum())
        objective.append(j_now)
        iterations += 1
        if not replay and (j_now == 0.0 or (j_prev - j_now) / j_prev < tol):
            converged = True
    return KMeansTrace(c, codes, objective, iterations, converged, reseeds)


# ---------------------------------------------------------------------------------------
# Int8 quantisation and code packing
# ---------------------------------------------------------------------------------------


def quantize_i8(x: np.ndarray, axis: int):
    """Symmetric int8: axis=0 -> one scale per row, axis=1 -> one scale per column.

    scale = max|.| / 127 stored as float32 (0 for an all-zero slice; the smallest positive
    float32 where a non-zero slice would round to 0);
    q = round-half-away-from-zero(x / scale) clamped to [-127, 127].
    """
    x = np.asarray(x, dtype=np.float64)
    reduce_axis = 1 if axis == 0 else 0
    amax = np.max(np.abs(x), axis=reduce_axis) if x.size else np.zeros(x.shape[axis])
    scale = (amax / 127.0).astype(np.float32)
    tiny = np.nextafter(np.float32(0), np.float32(1))
    scale = np.where((amax > 0) & (scale == 0), tiny, scale).astype(np.float32)
    s64 = scale.astype(np.float64)
    s_b = s64[:, None] if axis == 0 else s64[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(s_b > 0, x / np.where(s_b > 0, s_b, 1.0), 0.0)
    q = np.sign(ratio) * np.floor(np.abs(ratio) + 0.5)
    q = np.clip(q, -127, 127).astype(np.int8)
    return q, scale


def bits_for(k: int) -> int:
    """ceil(log2 K), 0 for K = 1."""
    bits = 0
    while (1 << bits) < k:
        bits += 1
    return bits


def pack_codes(codes, bits: int) -> np.ndarray:
    """LSB-first bit stream: bit b of code e is stream bit e*bits + b; stream bit s is
    bit (s % 8) of byte s // 8."""
    codes = np.asarray(codes, dtype=np.uint64)
    n = codes.shape[0]
    n_bytes = (n * bits + 7) // 8
    if bits == 0 or n == 0:
        return np.zeros(n_bytes, dtype=np.uint8)
    stream = ((codes[:, None] >> np.arange(bits, dtype=np.uint64)[None, :]) & 1).astype(np.uint8)
    return np.packbits(stream.reshape(-1), bitorder="little")[:n_bytes]


def unpack_codes(packed, bits: int, n: int) -> np.ndarray:
    packed = np.asarray(packed, dtype=np.uint8)
    if bits == 0:
        return np.zeros(n, dtype=np.uint32)
    stream = np.unpackbits(packed, bitorder="little")[: n * bits].reshape(n, bits)
    weights = (1 << np.arange(bits, dtype=np.uint64))[None, :]
    return (stream.astype(np.uint64) * weights).sum(axis=1).astype(np.uint32)


# ---------------------------------------------------------------------------------------
# LUTHAM layer, computed densely (ARCHITECTURE §4)
# ---------------------------------------------------------------------------------------


def silu(x: np.ndarray) -> np.ndarray:
    # x * sigmoid(x) written with tanh: no overflow for large |x|
    with np.errstate(invalid="ignore"):
        return 0.5 * x * (1.0 + np.tanh(0.5 * x))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU x/2 (1 + erf(x / sqrt 2)) in float64."""
    from math import erf  # noqa: PLC0415

    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float64])(x / np.sqrt(2.0)))


def rbf_basis(x: np.ndarray, centres: np.ndarray, h: float) -> np.ndarray:
    """(B, n_in, M) Gaussian RBFs exp(-((x - c_m)/h)^2); centres (n_in or 1, M)."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centres, dtype=np.float64)
    c = np.broadcast_to(c, (x.shape[1], c.shape[1]))
    return np.exp(-(((x[:, :, None] - c[None]) / float(h)) ** 2))


def chebyshev_basis(x: np.ndarray, m: int) -> np.ndarray:
    """(B, n_in, M) Chebyshev T_m(tanh x), m = 0..M-1, by the recurrence."""
    t = np.tanh(np.asarray(x, dtype=np.float64))
    out = [np.ones_like(t), t][:m]
    while len(out) < m:
        out.append(2.0 * t * out[-1] - out[-2])
    return np.stack(out, axis=-1)


def _per_out(scale, n_out):
    return np.ones(n_out) if scale is None else np.asarray(scale, dtype=np.float64)


def decode_layer(
    codebook,
    codes,
    gains,
    gain_scale=None,
    edge_bias=None,
    edge_bias_scale=None,
):
    """(n_in, n_out, M) decoded coefficients w^ = g*C[q] + b*1, scales applied."""
    codes = np.asarray(codes).astype(np.int64)
    n_out = codes.shape[1]
    codebook = np.asarray(codebook, dtype=np.float64)
    g = np.asarray(gains, dtype=np.float64) * _per_out(gain_scale, n_out)[None, :]
    w = g[:, :, None] * codebook[codes]  # (n_in, n_out, M)
    if edge_bias is not None:
        b = np.asarray(edge_bias, dtype=np.float64) * _per_out(edge_bias_scale, n_out)[None, :]
        w = w + b[:, :, None]
    return w


def lutham_dense(
    x,
    grid,
    k,
    codebook,
    codes,
    gains,
    gain_scale=None,
    edge_bias=None,
    edge_bias_scale=None,
    out_bias=None,
    base_weight=None,
    base_scale=None,
    basis=0,
    h=1.0,
    base_act=0,
) -> np.ndarray:
    """(B, n_out) efficient-kan forward of the decoded layer, in float64.

    basis 0 = B-spline, 1 = RBF (grid = centres, width h), 2 = Chebyshev of tanh x;
    base_act 0 = SiLU, 1 = exact GELU (ARCHITECTURE §4).

    y = SiLU(x) @ (base_weight * base_scale) + basis(x).reshape(B, n_in*M) @ w^ + out_bias.
    """
    x = np.asarray(x, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    w = decode_layer(codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale)
    n_in, n_out, m = w.shape
    if basis == 0:
        values = bspline_basis(x, grid, k)  # (B, n_in, M)
    elif basis == 1:
        values = rbf_basis(x, grid, np.float32(h))
    else:
        values = chebyshev_basis(x, m)
    y = values.reshape(x.shape[0], n_in * m) @ w.transpose(0, 2, 1).reshape(n_in * m, n_out)
    if base_weight is not None:
        bw = np.asarray(base_weight, dtype=np.float64) * _per_out(base_scale, n_out)[None, :]
        with np.errstate(invalid="ignore"):  # SiLU(-inf) = NaN, as in float arithmetic
            y = y + (gelu(x) if base_act == 1 else silu(x)) @ bw
    if out_bias is not None:
        y = y + np.asarray(out_bias, dtype=np.float64)[None, :]
    return y


# ---------------------------------------------------------------------------------------
# Lloyd refinement under per-edge metrics (metric="output"): the vectorised NumPy version
# python/sharekan/refine.py ran before the loops moved to Rust (sharekan-core refine.rs).
# Same math, summed in NumPy's (einsum / BLAS) order, solved by numpy.linalg.solve.
# ---------------------------------------------------------------------------------------

#: Rough number of float64 values per temporary block.
_REFINE_BLOCK = 4_000_000


def refine_normal_terms(metrics: np.ndarray, coeffs: np.ndarray, shapes: np.ndarray):
    """Per edge: a = C^T R C, c = C^T R 1, d = 1^T R 1, p = C^T R w, s = 1^T R w."""
    rc = np.einsum("eml,el->em", metrics, shapes)
    a = np.einsum("em,em->e", shapes, rc)
    c = rc.sum(axis=1)
    d = metrics.sum(axis=(1, 2))
    p = np.einsum("em,em->e", rc, coeffs)
    s = np.einsum("eml,el->e", metrics, coeffs)
    return a, c, d, p, s


def refine_edge_gain_bias(
    metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per edge, (g, b) minimising (w - g C[q] - b 1)^T R_e (w - g C[q] - b 1): the 2x2 least
    squares of `gsb.refit_gain_bias` with one metric per edge. metrics (E, M, M), coeffs (E, M),
    codebook (K, M), codes (E,) -> gains (E,), biases (E,); degenerate systems give g = 0."""
    gains = np.empty(len(coeffs))
    biases = np.empty(len(coeffs))
    step = max(1, _REFINE_BLOCK // max(1, coeffs.shape[1] ** 2))
    for start in range(0, len(coeffs), step):
        sl = slice(start, start + step)
        a, c, d, p, s = refine_normal_terms(metrics[sl], coeffs[sl], codebook[codes[sl]])
        det = a * d - c * c
        ok = (det > 1e-12 * a * d) & np.isfinite(det)
        safe = np.where(ok, det, 1.0)
        gains[sl] = np.where(ok, (d * p - c * s) / safe, 0.0)
        biases[sl] = np.where(ok, (a * s - c * p) / safe, s / d)
    return gains, biases


def refine_assign(metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray,
            codes: np.ndarray) -> np.ndarray:
    """Best code per edge under its own metric with free gain and bias; an edge keeps its
    code unless another is strictly better (ties to the lowest index)."""
    k, m = codebook.shape
    new = codes.copy()
    step = max(1, _REFINE_BLOCK // max(1, k * m))
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


def refine_update(metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray, codes: np.ndarray,
            gains: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """Codewords minimising sum_e (w_e - g_e C_q - b_e 1)^T R_e (...) for fixed codes, gains
    and biases: (sum g^2 R_e) C_q = sum g R_e (w_e - b_e 1). Clusters without a usable system
    keep their codeword."""
    k, m = codebook.shape
    lhs = np.zeros((k, m, m))
    rhs = np.zeros((k, m))
    step = max(1, _REFINE_BLOCK // max(1, m * m))
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


def refine_objective(metrics, coeffs, codebook, codes, gains, biases) -> float:
    diff = coeffs - gains[:, None] * codebook[codes] - biases[:, None]
    return float(np.einsum("em,eml,el->", diff, metrics, diff))


def refine_lloyd(
    metrics: np.ndarray, coeffs: np.ndarray, codebook: np.ndarray, codes: np.ndarray,
    n_iter: int = 8,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Lloyd iterations (gain/bias solve, codeword update, reassignment) under per-edge
    metrics. metrics (E, M, M), coeffs (E, M), codebook (K, M) coefficient space, codes (E,)
    -> (codebook, codes, objective after each iteration). A step is kept only if it does not
    increase the objective, so the result is never worse than the start."""
    codebook = np.array(codebook, dtype=np.float64, copy=True)
    codes = np.asarray(codes, dtype=np.int64).copy()
    gains, biases = refine_edge_gain_bias(metrics, coeffs, codebook, codes)
    best = refine_objective(metrics, coeffs, codebook, codes, gains, biases)
    history = [best]
    for _ in range(n_iter):
        cand_book = refine_update(metrics, coeffs, codebook, codes, gains, biases)
        cand_codes = refine_assign(metrics, coeffs, cand_book, codes)
        g, b = refine_edge_gain_bias(metrics, coeffs, cand_book, cand_codes)
        value = refine_objective(metrics, coeffs, cand_book, cand_codes, g, b)
        if not value <= best:
            break
        improved = best - value
        codebook, codes, gains, biases, best = cand_book, cand_codes, g, b, value
        history.append(best)
        if improved <= 1e-9 * max(best, 1e-300):
            break
    return codebook, codes.astype(np.uint32), history
