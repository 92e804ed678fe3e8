"""`sharekan._core.gsb_fit` / `refit_gain_bias` against the NumPy oracle (ARCHITECTURE §2)."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
from conftest import random_coeffs, random_grid
from hypothesis import given
from hypothesis import strategies as st

core = pytest.importorskip("sharekan._core")
errors = pytest.importorskip("sharekan.errors")


def metric_for(rng, kind: str, g: int, k: int) -> np.ndarray:
    if kind == "coefficient":
        return np.eye(g + k)
    if kind == "function":
        return oracle.bspline_gram(random_grid(rng, 3, g, k), k)
    # "data": mean of B B^T over random inputs plus a ridge, SPD
    grid = random_grid(rng, 1, g, k)
    x = rng.uniform(grid[0, k], grid[0, g + k], size=(200, 1))
    b = oracle.bspline_basis(x, grid, k)[:, 0, :]
    return b.T @ b / 200 + 1e-3 * np.eye(g + k)


@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["coefficient", "function", "data"]),
    k_codes=st.integers(1, 8),
    n_shapes=st.sampled_from([None, 2, 5]),
)
def test_fit_consistent_with_oracle_decomposition(seed, kind, k_codes, n_shapes):
    rng = np.random.default_rng(seed)
    g, k = int(rng.integers(2, 7)), int(rng.integers(1, 4))
    metric = metric_for(rng, kind, g, k)
    e = int(rng.integers(k_codes, 60))
    w = random_coeffs(rng, e, g + k, n_shapes, noise=0.05)
    w_before, metric_before = w.copy(), metric.copy()
    fit = core.gsb_fit(w, metric, k_codes, 8, 0.0, seed % 1000)
    np.testing.assert_array_equal(w, w_before)
    np.testing.assert_array_equal(metric, metric_before)
    assert fit["codebook"].shape == (k_codes, g + k)
    assert fit["codes"].dtype == np.uint32 and fit["codes"].shape == (e,)
    d = oracle.decompose(w, metric)
    cw = oracle.whiten_codebook(fit["codebook"], metric)  # (K, M) c_q = L^T C[q]
    norms = np.linalg.norm(cw, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-9) | (norms < 1e-12))
    np.testing.assert_allclose(cw @ d.u, 0.0, atol=1e-9)
    codes = fit["codes"].astype(np.int64)
    np.testing.assert_allclose(
        fit["gains"],
        np.einsum("em,em->e", d.residuals, cw[codes]),
        rtol=1e-9,
        atol=1e-10 * (1 + d.gamma.max()),
    )
    np.testing.assert_allclose(
        fit["biases"],
        d.beta / np.linalg.norm(d.ones_white),
        rtol=1e-9,
        atol=1e-10 * (1 + np.abs(d.beta).max()),
    )
    # the reported objective is the R-weighted reconstruction error of the fit
    recon = oracle.reconstruct(fit["codebook"], codes, fit["gains"], fit["biases"])
    err = oracle.metric_error(w, recon, metric).sum()
    np.testing.assert_allclose(
        fit["objective"][-1], err, rtol=1e-7, atol=1e-10 * np.sum(d.gamma**2)
    )
    assert np.all(np.diff(fit["objective"]) <= 1e-12 * fit["objective"][0])


@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["coefficient", "function"]))
def test_k_equals_e_reconstructs_exactly(seed, kind):
    rng = np.random.default_rng(seed)
    g, k = 5, 3
    metric = metric_for(rng, kind, g, k)
    w = rng.normal(size=(int(rng.integers(1, 20)), g + k))
    fit = core.gsb_fit(w, metric, w.shape[0], 10, 0.0, seed % 1000)
    recon = oracle.reconstruct(fit["codebook"], fit["codes"], fit["gains"], fit["biases"])
    np.testing.assert_allclose(recon, w, rtol=0, atol=1e-9 * (1 + np.abs(w).max()))


def test_fit_equals_kmeans_on_oracle_residuals(rng):
    metric = metric_for(rng, "function", 6, 3)
    w = random_coeffs(rng, 48, 9, n_shapes=4, noise=1e-3)
    fit = core.gsb_fit(w, metric, 4, 10, 1e-9, 21)
    res = np.ascontiguousarray(oracle.decompose(w, metric).residuals)
    km = core.spherical_kmeans(res, 4, 10, 1e-9, 21)
    fit_white = oracle.whiten_codebook(fit["codebook"], metric)
    np.testing.assert_allclose(fit_white, km["centroids"], atol=1e-8)
    # The core whitens with its own Cholesky factor, the oracle with NumPy's (LAPACK/BLAS,
    # whose last bits depend on the CPU's kernels): the two residual sets differ by rounding,
    # so the codes may differ only where an edge's two candidate codewords are tied.
    codes_fit = fit["codes"].astype(np.int64)
    codes_km = km["codes"].astype(np.int64)
    diff = np.flatnonzero(codes_fit != codes_km)
    if diff.size:
        r = res[diff]
        shift = float(np.linalg.norm(fit_white - km["centroids"], axis=1).max())
        c = km["centroids"]
        gap = np.abs(
            np.einsum("em,em->e", r, c[codes_fit[diff]]) ** 2
            - np.einsum("em,em->e", r, c[codes_km[diff]]) ** 2
        )
        tied = gap <= (1e-9 + 4.0 * shift) * np.einsum("em,em->e", r, r)
        assert tied.all(), f"codes differ at untied edges {diff[~tied].tolist()}"


def test_flat_edges_get_zero_gain(rng):
    w = rng.normal(size=(20, 7))
    w[[2, 9]] = np.array([[0.7], [-1.5]])  # constant coefficient vectors
    metric = metric_for(rng, "function", 4, 3)
    fit = core.gsb_fit(w, metric, 3, 5, 0.0, 0)
    assert np.all(np.abs(fit["gains"][[2, 9]]) < 1e-12)
    np.testing.assert_allclose(fit["biases"][[2, 9]], [0.7, -1.5], rtol=1e-12)


@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["coefficient", "function", "data"]))
def test_refit_matches_oracle_lstsq(seed, kind):
    rng = np.random.default_rng(seed)
    g, k, kk = 4, 3, 5
    metric = metric_for(rng, kind, g, k)
    w = rng.normal(size=(30, g + k))
    codebook = rng.normal(size=(kk, g + k))
    codes = rng.integers(0, kk, size=30).astype(np.uint32)
    before = [a.copy() for a in (w, metric, codebook, codes)]
    gains, biases = core.refit_gain_bias(w, metric, codebook, codes)
    for a, b in zip((w, metric, codebook, codes), before, strict=True):
        np.testing.assert_array_equal(a, b)
    g_o, b_o = oracle.refit_gain_bias(w, metric, codebook, codes)
    np.testing.assert_allclose(gains, g_o, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(biases, b_o, rtol=1e-8, atol=1e-9)


def test_refit_after_int8_codebook_never_worse_than_plain_gains(rng):
    metric = metric_for(rng, "function", 6, 3)
    w = random_coeffs(rng, 64, 9, n_shapes=6, noise=0.05)
    fit = core.gsb_fit(w, metric, 8, 10, 0.0, 4)
    q, s = core.quantize_i8(fit["codebook"], 0)
    deq = q.astype(np.float64) * s.astype(np.float64)[:, None]
    g, b = core.refit_gain_bias(w, metric, deq, fit["codes"])
    refit_err = oracle.metric_error(w, oracle.reconstruct(deq, fit["codes"], g, b), metric)
    plain = oracle.metric_error(
        w, oracle.reconstruct(deq, fit["codes"], fit["gains"], fit["biases"]), metric
    )
    assert np.all(refit_err <= plain * (1 + 1e-9) + 1e-15)


def test_refit_degenerate_zero_codeword(rng):
    # a zero codeword: the 2x2 system is singular; the gain must come back finite
    w = rng.normal(size=(4, 6))
    codebook = np.zeros((1, 6))
    g, b = core.refit_gain_bias(w, np.eye(6), codebook, np.zeros(4, dtype=np.uint32))
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(b))
    np.testing.assert_allclose(b, w.mean(1), rtol=1e-10)


# --- bad input -------------------------------------------------------------------------


@pytest.fixture
def fit_args(rng):
    w = rng.normal(size=(12, 7))
    return w, metric_for(rng, "function", 4, 3)


def _unmodified(fn, *args):
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    try:
        return fn(*args)
    finally:
        for a, b in zip(arrays, before, strict=True):
            np.testing.assert_array_equal(a, b)


def test_fit_bad_k(fit_args):
    w, metric = fit_args
    for kk in (0, 13):
        with pytest.raises(errors.InvalidInputError):
            _unmodified(core.gsb_fit, w, metric, kk, 5, 0.0, 0)


def test_fit_nonfinite(fit_args):
    w, metric = fit_args
    for bad in (np.nan, np.inf):
        w2 = w.copy()
        w2[3, 3] = bad
        with pytest.raises(errors.NonFiniteError, match="coeffs"):
            _unmodified(core.gsb_fit, w2, metric, 2, 5, 0.0, 0)
        m2 = metric.copy()
        m2[1, 1] = bad
        with pytest.raises(errors.NonFiniteError, match="metric"):
            _unmodified(core.gsb_fit, w, m2, 2, 5, 0.0, 0)


def test_fit_bad_metric(fit_args):
    w, metric = fit_args
    with pytest.raises(errors.ShapeError):
        _unmodified(core.gsb_fit, w, np.eye(6), 2, 5, 0.0, 0)
    not_pd = -np.eye(7)
    with pytest.raises(errors.InvalidInputError, match="metric"):
        _unmodified(core.gsb_fit, w, not_pd, 2, 5, 0.0, 0)
    asym = metric.copy()
    asym[0, 1] += 0.5
    with pytest.raises(errors.InvalidInputError, match="metric"):
        _unmodified(core.gsb_fit, w, asym, 2, 5, 0.0, 0)


def test_fit_empty_and_layout(fit_args):
    w, metric = fit_args
    with pytest.raises(errors.InvalidInputError):
        core.gsb_fit(np.zeros((0, 7)), metric, 1, 5, 0.0, 0)
    with pytest.raises(errors.DTypeError, match="coeffs"):
        core.gsb_fit(w.astype(np.float32), metric, 2, 5, 0.0, 0)
    with pytest.raises(errors.InvalidInputError, match="contiguous"):
        core.gsb_fit(np.asfortranarray(w), metric, 2, 5, 0.0, 0)
    with pytest.raises(errors.InvalidInputError, match="contiguous"):
        core.gsb_fit(w[:, ::-1], metric, 2, 5, 0.0, 0)


def test_refit_bad_input(fit_args, rng):
    w, metric = fit_args
    codebook = rng.normal(size=(3, 7))
    codes = rng.integers(0, 3, size=12).astype(np.uint32)
    bad_codes = codes.copy()
    bad_codes[5] = 3
    with pytest.raises(errors.CodeRangeError, match="codes"):
        _unmodified(core.refit_gain_bias, w, metric, codebook, bad_codes)
    with pytest.raises(errors.ShapeError):
        _unmodified(core.refit_gain_bias, w, metric, codebook, codes[:11].copy())
    with pytest.raises(errors.ShapeError):
        _unmodified(core.refit_gain_bias, w, metric, codebook[:, :6].copy(), codes)
    cb = codebook.copy()
    cb[0, 0] = np.nan
    with pytest.raises(errors.NonFiniteError, match="codebook"):
        _unmodified(core.refit_gain_bias, w, metric, cb, codes)
    with pytest.raises(errors.DTypeError, match="codes"):
        core.refit_gain_bias(w, metric, codebook, codes.astype(np.int64))
