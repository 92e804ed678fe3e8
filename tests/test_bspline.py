"""`sharekan._core.bspline_basis` / `bspline_gram` against the NumPy oracle."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
from conftest import grid_inputs, random_grid
from hypothesis import given
from hypothesis import strategies as st

core = pytest.importorskip("sharekan._core")
errors = pytest.importorskip("sharekan.errors")


@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(0, 4),
    g=st.integers(1, 9),
    n_in=st.integers(1, 4),
    batch=st.sampled_from([1, 2, 7, 33]),
    uniform=st.booleans(),
)
def test_basis_matches_oracle(seed, k, g, n_in, batch, uniform):
    rng = np.random.default_rng(seed)
    grid = random_grid(rng, n_in, g, k, uniform=uniform)
    x = grid_inputs(rng, grid, batch)
    got = _call_unmodified(core.bspline_basis, x, grid, k=k)
    assert got.dtype == np.float64
    assert got.shape == (batch, n_in, g + k)
    np.testing.assert_allclose(got, oracle.bspline_basis(x, grid, k), rtol=0, atol=1e-12)


def test_basis_far_outside_is_zero(rng):
    grid = random_grid(rng, 2, 5, 3)
    x = np.array([[-1e30, 1e30], [grid[0, -1], grid[1, 0] - 1e-9]])
    np.testing.assert_array_equal(core.bspline_basis(x, grid, 3), 0.0)


@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(0, 4),
    g=st.integers(1, 9),
    n_in=st.integers(1, 4),
    uniform=st.booleans(),
)
def test_gram_matches_exact_integration(seed, k, g, n_in, uniform):
    rng = np.random.default_rng(seed)
    grid = random_grid(rng, n_in, g, k, uniform=uniform)
    got = core.bspline_gram(grid, k)
    want = oracle.bspline_gram(grid, k)
    assert got.shape == (g + k, g + k)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    np.testing.assert_array_equal(got, got.T)


def test_gram_uniform_cubic_closed_form():
    g = 10
    r = core.bspline_gram(oracle.uniform_grid(3, g, 3, -1.0, 1.0), 3)
    expected = np.array([151 / 315, 397 / 1680, 1 / 42, 1 / 5040]) / g
    np.testing.assert_allclose(r[5, 5:9], expected, rtol=1e-12)
    assert abs(r.sum() - 1.0) < 1e-12


# --- bad input -------------------------------------------------------------------------


def _call_unmodified(fn, *arrays, **kw):
    """Call fn; assert that every array argument is unchanged afterwards."""
    before = [a.copy() for a in arrays]
    try:
        return fn(*arrays, **kw)
    finally:
        for a, b in zip(arrays, before, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.fixture
def basis_args(rng):
    grid = random_grid(rng, 3, 5, 3)
    return grid_inputs(rng, grid, 4), grid


def test_basis_nonfinite_grid(basis_args):
    x, grid = basis_args
    for bad in (np.nan, np.inf):
        g = grid.copy()
        g[1, 4] = bad
        with pytest.raises(errors.NonFiniteError, match="grid"):
            _call_unmodified(core.bspline_basis, x, g, k=3)
        with pytest.raises(errors.NonFiniteError, match="grid"):
            _call_unmodified(core.bspline_gram, g, k=3)


def test_basis_nonfinite_x(basis_args):
    x, grid = basis_args
    x = x.copy()
    x[2, 1] = np.nan
    with pytest.raises(errors.NonFiniteError, match="x"):
        _call_unmodified(core.bspline_basis, x, grid, k=3)


def test_basis_grid_not_increasing(basis_args):
    x, grid = basis_args
    g = grid.copy()
    g[0, 5] = g[0, 4]
    with pytest.raises(errors.InvalidInputError, match="grid"):
        _call_unmodified(core.bspline_basis, x, g, k=3)
    with pytest.raises(errors.InvalidInputError, match="grid"):
        _call_unmodified(core.bspline_gram, g, k=3)


def test_basis_shape_mismatch(basis_args):
    x, grid = basis_args
    with pytest.raises(errors.ShapeError):
        _call_unmodified(core.bspline_basis, np.ascontiguousarray(x[:, :2]), grid, k=3)
    # too few knots for the order: NG = G + 2k + 1 = 12 needs k <= 5 (G >= 1)
    np.testing.assert_allclose(
        core.bspline_basis(x, grid, 5), oracle.bspline_basis(x, grid, 5), atol=1e-12
    )
    with pytest.raises(errors.ShapeError, match="grid"):
        _call_unmodified(core.bspline_basis, x, grid, k=6)
    with pytest.raises(errors.ShapeError, match="grid"):
        _call_unmodified(core.bspline_gram, grid, k=6)


def test_basis_empty():
    with pytest.raises(errors.ShapeError):
        core.bspline_gram(np.zeros((0, 12)), 3)
    with pytest.raises(errors.ShapeError):
        core.bspline_basis(np.zeros((4, 0)), np.zeros((0, 12)), 3)


def test_basis_wrong_dtype_and_layout(basis_args):
    x, grid = basis_args
    with pytest.raises(errors.DTypeError, match="x"):
        core.bspline_basis(x.astype(np.float32), grid, 3)
    with pytest.raises(errors.DTypeError, match="grid"):
        core.bspline_gram(grid.astype(np.float32), 3)
    with pytest.raises(errors.InvalidInputError, match="contiguous"):
        core.bspline_basis(np.asfortranarray(np.tile(x, (1, 1))), grid, 3)
    wide = np.zeros((grid.shape[0], 2 * grid.shape[1]))
    wide[:, ::2] = grid
    with pytest.raises(errors.InvalidInputError, match="contiguous"):
        core.bspline_gram(wide[:, ::2], 3)
