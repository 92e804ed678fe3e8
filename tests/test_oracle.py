"""Self-tests of the NumPy oracle against closed forms and an independent reference
(the efficient-kan-layout torch modules), so that the core tests rest on something true."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import oracle
import pytest
from conftest import grid_inputs, random_coeffs, random_grid, random_layer
from hypothesis import given
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _torch_kan():
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location(
        "_sharekan_ref_kan", ROOT / "python" / "sharekan" / "torch" / "kan.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return torch, mod


# --- basis -----------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(0, 4), g=st.integers(1, 8))
def test_basis_partition_of_unity_and_support(seed, k, g):
    rng = np.random.default_rng(seed)
    grid = random_grid(rng, 3, g, k)
    x = grid_inputs(rng, grid, 64)
    bx = oracle.bspline_basis(x, grid, k)
    assert bx.shape == (64, 3, g + k)
    assert np.all(bx >= -1e-12)
    a, b = grid[:, k], grid[:, g + k]
    inner = (x >= a) & (x < b)
    np.testing.assert_allclose(bx.sum(-1)[inner], 1.0, atol=1e-12)
    outer = (x < grid[:, 0]) | (x >= grid[:, -1])
    assert np.all(bx[outer] == 0.0)
    # at most k+1 non-zero values per input
    assert np.all((bx > 0).sum(-1) <= k + 1)


def test_basis_nonfinite_rows_are_zero(rng):
    grid = random_grid(rng, 3, 5, 3)
    x = np.array([[np.nan, np.inf, -np.inf]])
    assert np.all(oracle.bspline_basis(x, grid, 3) == 0.0)


def test_basis_matches_torch_reference(rng):
    torch, kan = _torch_kan()
    grid = random_grid(rng, 4, 6, 3)
    x = grid_inputs(rng, grid, 50)
    ref = kan.bspline_basis(torch.from_numpy(x), torch.from_numpy(grid), 3).numpy()
    np.testing.assert_allclose(oracle.bspline_basis(x, grid, 3), ref, rtol=1e-12, atol=1e-12)


# --- Gram matrix -----------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**32 - 1), k=st.integers(0, 4), g=st.integers(1, 7), uniform=st.booleans()
)
def test_gram_symmetric_pd_and_normalised(seed, k, g, uniform):
    rng = np.random.default_rng(seed)
    grid = random_grid(rng, 2, g, k, uniform=uniform)
    r = oracle.bspline_gram(grid, k)
    assert r.shape == (g + k, g + k)
    np.testing.assert_allclose(r, r.T, atol=1e-14)
    assert np.linalg.eigvalsh(r).min() > 0
    # partition of unity on [a, b]: 1^T R 1 = (1/(b-a)) * integral 1 dx = 1
    assert abs(r.sum() - 1.0) < 1e-12


def test_gram_matches_midpoint_quadrature(rng):
    for k, g in [(1, 3), (3, 5), (2, 4)]:
        grid = random_grid(rng, 3, g, k)
        np.testing.assert_allclose(
            oracle.bspline_gram(grid, k),
            oracle.gram_midpoint(grid, k, 40000),
            rtol=0,
            atol=1e-8,
        )


def test_gram_uniform_cubic_closed_form():
    # Uniform cubic B-splines, unit spacing: integral B_i B_{i+d} = 151/315, 397/1680,
    # 1/42, 1/5040 for d = 0..3; the metric divides by (b - a) = G * h.
    g = 12
    r = oracle.bspline_gram(oracle.uniform_grid(1, g, 3), 3)
    c = g // 2
    expected = np.array([151 / 315, 397 / 1680, 1 / 42, 1 / 5040]) / g
    np.testing.assert_allclose(r[c, c : c + 4], expected, rtol=1e-12)


# --- decomposition, refit --------------------------------------------------------------


def test_decompose_identity_metric(rng):
    w = rng.normal(size=(20, 7))
    d = oracle.decompose(w, np.eye(7))
    np.testing.assert_allclose(d.u, np.full(7, 1 / np.sqrt(7)))
    np.testing.assert_allclose(d.beta, w.mean(1) * np.sqrt(7))
    np.testing.assert_allclose(d.residuals, w - w.mean(1, keepdims=True), atol=1e-12)


def test_decompose_function_metric(rng):
    grid = random_grid(rng, 3, 5, 3)
    r = oracle.bspline_gram(grid, 3)
    w = rng.normal(size=(30, 8))
    d = oracle.decompose(w, r)
    np.testing.assert_allclose(d.chol @ d.chol.T, r, atol=1e-14)
    np.testing.assert_allclose(d.residuals @ d.u, 0.0, atol=1e-12)
    np.testing.assert_allclose(d.v, d.beta[:, None] * d.u + d.residuals, atol=1e-12)
    # back to coefficient space: L^{-T} u is a multiple of the ones vector
    back = np.linalg.solve(d.chol.T, d.u)
    np.testing.assert_allclose(back, back[0], rtol=1e-10)


def test_refit_recovers_exact_gain_bias(rng):
    grid = random_grid(rng, 2, 4, 3)
    r = oracle.bspline_gram(grid, 3)
    codebook = rng.normal(size=(3, 7))
    codes = rng.integers(0, 3, size=12)
    g, b = rng.normal(size=12), rng.normal(size=12)
    w = oracle.reconstruct(codebook, codes, g, b)
    g2, b2 = oracle.refit_gain_bias(w, r, codebook, codes)
    np.testing.assert_allclose(g2, g, atol=1e-10)
    np.testing.assert_allclose(b2, b, atol=1e-10)


def test_refit_is_r_weighted_least_squares(rng):
    grid = random_grid(rng, 2, 4, 2)
    r = oracle.bspline_gram(grid, 2)
    w, codebook = rng.normal(size=(9, 6)), rng.normal(size=(2, 6))
    codes = rng.integers(0, 2, size=9)
    g, b = oracle.refit_gain_bias(w, r, codebook, codes)
    base = oracle.metric_error(w, oracle.reconstruct(codebook, codes, g, b), r)
    for dg, db in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)]:
        pert = oracle.metric_error(w, oracle.reconstruct(codebook, codes, g + dg, b + db), r)
        assert np.all(pert >= base)


# --- k-means ---------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), kk=st.integers(1, 6))
def test_oracle_kmeans_objective_monotone(seed, kk):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(40, 6))
    res = oracle.decompose(w, np.eye(6)).residuals
    init = rng.normal(size=(kk, 6))
    init -= init.mean(1, keepdims=True)
    init /= np.linalg.norm(init, axis=1, keepdims=True)
    tr = oracle.kmeans_from_init(res, init, 30, 0.0)
    obj = np.array(tr.objective)
    assert np.all(np.diff(obj) <= 1e-12 * obj[0])
    np.testing.assert_allclose(np.linalg.norm(tr.centroids, axis=1), 1.0)
    np.testing.assert_allclose(tr.centroids @ (np.ones(6) / np.sqrt(6)), 0.0, atol=1e-12)
    assert abs(obj[-1] - oracle.kmeans_objective(res, tr.centroids, tr.codes)) < 1e-12


def test_oracle_kmeans_k_equals_e_is_exact(rng):
    res = oracle.decompose(rng.normal(size=(8, 5)), np.eye(5)).residuals
    init = res / np.linalg.norm(res, axis=1, keepdims=True)
    tr = oracle.kmeans_from_init(res, init[::-1].copy(), 5, 0.0)
    assert tr.objective[-1] < 1e-12 * np.sum(res**2)


def test_oracle_kmeans_recovers_separated_clusters(rng):
    w = random_coeffs(rng, 60, 8, n_shapes=3, noise=1e-3)
    res = oracle.decompose(w, np.eye(8)).residuals
    init = res[:3] / np.linalg.norm(res[:3], axis=1, keepdims=True)
    tr = oracle.kmeans_from_init(res, init, 20, 1e-12)
    assert tr.objective[-1] / tr.objective[0] <= 1.0
    assert tr.objective[-1] < 1e-3 * np.sum(res**2)


def test_oracle_kmeans_reseeds_empty_cluster(rng):
    res = oracle.decompose(rng.normal(size=(10, 4)), np.eye(4)).residuals
    c0 = res[0] / np.linalg.norm(res[0])
    tr = oracle.kmeans_from_init(res, np.stack([c0, c0]), 1, 0.0)
    assert tr.reseeds == 1
    assert np.bincount(tr.codes, minlength=2).min() >= 1


# --- quantisation and packing ----------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), axis=st.sampled_from([0, 1]))
def test_oracle_quant_error_bound(seed, axis):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 7)) * rng.uniform(0, 10, size=(5, 1))
    x[rng.uniform(size=x.shape) < 0.1] = 0.0
    q, s = oracle.quantize_i8(x, axis)
    sb = s.astype(np.float64)[:, None] if axis == 0 else s.astype(np.float64)[None, :]
    assert np.all(np.abs(x - q * sb) <= sb / 2 + 1e-12 * np.abs(x))
    assert np.all(np.abs(q.astype(int)) <= 127)


def test_oracle_pack_known_bytes():
    np.testing.assert_array_equal(oracle.pack_codes([1, 2, 3], 2), [57])
    np.testing.assert_array_equal(oracle.pack_codes([5, 3], 3), [5 | (3 << 3)])
    np.testing.assert_array_equal(oracle.pack_codes([0x1FF], 9), [0xFF, 0x01])
    assert [oracle.bits_for(k) for k in (1, 2, 3, 4, 5, 256, 257)] == [0, 1, 2, 2, 3, 8, 9]


@given(seed=st.integers(0, 2**32 - 1), bits=st.integers(1, 16), n=st.integers(0, 50))
def test_oracle_pack_round_trip(seed, bits, n):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << bits, size=n)
    packed = oracle.pack_codes(codes, bits)
    assert packed.shape == ((n * bits + 7) // 8,)
    np.testing.assert_array_equal(oracle.unpack_codes(packed, bits, n), codes)


# --- dense layer -----------------------------------------------------------------------


@pytest.mark.parametrize("weight_kind", ["f32", "int8"])
def test_lutham_dense_matches_torch_kanlinear(rng, weight_kind):
    torch, kan = _torch_kan()
    n_in, n_out, g, k = 5, 4, 6, 3
    layer = random_layer(rng, n_in, n_out, g, k, 7, weight_kind=weight_kind)
    x = grid_inputs(rng, layer["grid"], 33)
    y = oracle.lutham_dense(x, **layer)

    w = oracle.decode_layer(
        layer["codebook"],
        layer["codes"],
        layer["gains"],
        layer.get("gain_scale"),
        layer["edge_bias"],
        layer.get("edge_bias_scale"),
    )  # (n_in, n_out, M)
    bw = layer["base_weight"].astype(np.float64) * (
        1.0 if layer.get("base_scale") is None else layer["base_scale"].astype(np.float64)
    )
    mod = kan.KANLinear(n_in, n_out, g, k).double()
    with torch.no_grad():
        mod.grid.copy_(torch.from_numpy(layer["grid"].astype(np.float64)))
        mod.base_weight.copy_(torch.from_numpy(bw.T))
        mod.spline_weight.copy_(torch.from_numpy(w.transpose(1, 0, 2)))
        mod.spline_scaler.fill_(1.0)
        ref = mod(torch.from_numpy(x)).numpy() + layer["out_bias"].astype(np.float64)
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


def test_lutham_dense_edge_bias_is_constant_outside_spline(rng):
    # Inside [grid[k], grid[G+k]) the per-edge bias contributes exactly sum_i b[i, o].
    layer = random_layer(rng, 3, 2, 5, 3, 4, with_base=False, with_out_bias=False)
    g = layer["grid"].astype(np.float64)
    a, b = g[:, 3], g[:, 8]
    x = a + rng.uniform(0.01, 0.99, size=(10, 3)) * (b - a)
    with_bias = oracle.lutham_dense(x, **layer)
    no_bias = oracle.lutham_dense(
        x, **{kk: v for kk, v in layer.items() if kk not in ("edge_bias", "edge_bias_scale")}
    )
    eb = layer["edge_bias"].astype(np.float64) * layer.get("edge_bias_scale", 1.0)
    np.testing.assert_allclose(with_bias - no_bias, np.broadcast_to(eb.sum(0), (10, 2)), atol=1e-10)
