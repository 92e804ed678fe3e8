"""Hostile inputs to `sharekan._core.lutham_forward` and the B-spline bindings.

Every bad input must raise a `sharekan.errors` exception (an InvalidInputError subclass),
never pyo3's PanicException, MemoryError, OverflowError or IndexError, and quickly: the
spline order is capped at 15 (the C++ kernel's kMaxSplineOrder) before anything is
allocated, knot grids whose float32 differences or reciprocals are not finite are refused
with the kernel's messages, and output / scratch sizes are checked. Valid layers at the
edges (k = 15, tiny and huge knot spacings, very wide layers) still match the references.
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import oracle
import pytest
from conftest import grid_inputs, random_layer
from extreme_grids import ROW, VALID_ROWS, grid_layer, invalid_grids, rows

core = pytest.importorskip("sharekan._core")
errors = pytest.importorskip("sharekan.errors")

N_IN, N_OUT = 3, 4


def _forward(x, layer):
    return core.lutham_forward(np.ascontiguousarray(x, dtype=np.float32), **layer)


def _raises_invalid(fn, match, exact=errors.InvalidInputError):
    """fn() raises `exact` (an InvalidInputError subclass, checked exactly) matching `match`."""
    with pytest.raises(errors.InvalidInputError, match=match) as info:
        fn()
    assert type(info.value) is exact, repr(info.value)
    return info.value


def _close_to_oracle(y, x, layer, rtol=2e-5):
    want = oracle.lutham_dense(np.asarray(x, dtype=np.float64), **layer)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, want, rtol=rtol, atol=rtol * (np.abs(want).max() + 1e-6))


# ---- spline order ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [16, 17, 16384, 2**40, 2**62])
def test_spline_order_above_15_is_refused(rng, k):
    layer = random_layer(rng, N_IN, N_OUT, 3, 2, 5)  # a k = 2 grid: too short for k
    layer["k"] = k
    x = np.zeros((13, N_IN), np.float32)
    _raises_invalid(lambda: _forward(x, layer), f"spline order k = {k} exceeds the maximum 15")


def test_consistent_order_16384_layer_is_refused_quickly(rng):
    """A ~200 KB artifact of order 16384 (grid (1, 2k + 2), codebook (1, k + 1)): before the
    cap a batch of 13 allocated and wrote ~8.6 GB of knot reciprocals."""
    k = 16384
    layer = {
        "grid": np.arange(2 * k + 2, dtype=np.float32)[None, :],
        "k": k,
        "codebook": np.ones((1, k + 1), np.float32),
        "codes": np.zeros((N_IN, N_OUT), np.uint8),
        "gains": np.ones((N_IN, N_OUT), np.float32),
    }
    t0 = time.perf_counter()
    for batch in (1, 13):
        _raises_invalid(lambda: _forward(np.zeros((batch, N_IN)), layer), "exceeds the maximum")
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**200])
def test_integer_arguments_beyond_int64(rng, value):
    """Python ints beyond int64 are InvalidInputError naming the argument (pyo3 would raise
    OverflowError)."""
    layer = random_layer(rng, N_IN, N_OUT, 3, 2, 5)
    x = np.zeros((2, N_IN), np.float32)
    for name in ("k", "basis", "base_act"):
        bad = {**layer, name: value}
        _raises_invalid(lambda: _forward(x, bad), f"{name}: expected an integer in the signed")
    _raises_invalid(lambda: _forward(x, {**layer, "k": -1}), "k: expected a non-negative")
    for fn in (lambda: core.bspline_basis(np.zeros((1, 1)), np.arange(8.0)[None], value),
               lambda: core.bspline_gram(np.arange(8.0)[None], value)):
        _raises_invalid(fn, "k: expected an integer in the signed")


def test_rbf_width_rule(rng):
    layer = random_layer(rng, N_IN, N_OUT, 3, 0, 5, with_base=False)
    layer["grid"] = np.linspace(-1, 1, 3, dtype=np.float32)[None, :]  # M = 3 centres
    layer["k"] = 0
    x = rng.uniform(-1, 1, size=(3, N_IN)).astype(np.float32)
    for h in (10**400, 1e39, float("inf"), float("nan"), 0.0, -1.0, 1e-40, 1e-50):
        _raises_invalid(lambda: _forward(x, {**layer, "basis": 1, "h": h}), "h")
    # 1e-30: finite reciprocal in float32 (narrow, but valid).
    y = _forward(x, {**layer, "basis": 1, "h": 1e-30})
    _close_to_oracle(y, x, {**layer, "basis": 1, "h": 1e-30})


@pytest.mark.parametrize("batch", [1, 13, 70])
@pytest.mark.parametrize("uniform", [True, False])
def test_order_15_matches_the_oracle(rng, batch, uniform):
    layer = random_layer(rng, N_IN, N_OUT, 2, 15, 8, code_dtype=np.uint8, weight_kind="int8",
                         uniform=uniform)
    x = grid_inputs(rng, layer["grid"], batch).astype(np.float32)
    _close_to_oracle(_forward(x, layer), x, layer)
    if uniform:  # the shared (1, NG) row gives the same bits as the repeated grid
        shared = {**layer, "grid": np.ascontiguousarray(layer["grid"][:1])}
        np.testing.assert_array_equal(_forward(x, shared), _forward(x, layer))


# ---- knot grids whose float32 differences break the recursion ----------------------------


@pytest.mark.parametrize("batch", [1, 13])
def test_extreme_knot_grids(rng, batch):
    """The C++ kernel's cases (tests/extreme_grids.py), with the same messages and the same
    first offending pair."""
    good = grid_layer(rng, ROW)
    x = np.zeros((batch, N_IN), np.float32)
    for case in invalid_grids():
        pair = rf"grid\[{case.row}\]\[{case.hi}\] - grid\[{case.row}\]\[{case.lo}\]"
        message = (rf"row {case.row}: knot spacing too small for float32: 1 / \({pair}\)"
                   if case.kind == "spacing" else
                   rf"row {case.row}: knot range too wide for float32: {pair}")
        bad = {**good, "grid": rows(case.grid)}
        _raises_invalid(lambda: _forward(x, bad), message)
        if np.ndim(case.grid) == 1:  # one shared row
            shared = {**good, "grid": rows(case.grid, 1)}
            _raises_invalid(lambda: _forward(x, shared), message)
    for grid in VALID_ROWS.values():
        layer = {**good, "grid": rows(grid)}
        g = layer["grid"].astype(np.float64)
        xs = rng.uniform(g[:, 0], g[:, -1], size=(batch, N_IN)).astype(np.float32)
        _close_to_oracle(_forward(xs, layer), xs, layer, rtol=1e-4)


def test_knot_rule_depends_on_the_order(rng):
    """Order 0 divides by no knot difference: subnormal spacings are fine there; order 1
    refuses them. A two-gap overflow is refused by order 2 only."""
    subnormal = np.arange(8) * 1e-39
    x = rng.uniform(0.0, 7e-39, size=(13, N_IN)).astype(np.float32)
    k0 = grid_layer(rng, subnormal, 0)
    _close_to_oracle(_forward(x, k0), x, k0)
    k1 = grid_layer(rng, subnormal, 1)
    _raises_invalid(lambda: _forward(x, k1), "knot spacing too small for float32")
    two_gap = [-3.4e38, -1.5e38, 1.5e38, 2e38, 2.5e38, 3e38, 3.3e38]
    k2 = grid_layer(rng, two_gap, 2)
    _raises_invalid(lambda: _forward(x, k2), "knot range too wide for float32")
    k1 = grid_layer(rng, two_gap, 1)
    assert np.isfinite(_forward(x, k1)).all()


# ---- B-spline bindings -------------------------------------------------------------------


@pytest.mark.parametrize("k", [16, 2**20, 2**62])
def test_bspline_bindings_refuse_large_orders(k):
    grid = np.arange(40.0)[None, :]
    x = np.full((2, 1), 5.0)
    _raises_invalid(lambda: core.bspline_basis(x, grid, k), "exceeds the maximum 15")
    _raises_invalid(lambda: core.bspline_gram(grid, k), "exceeds the maximum 15")


def test_bspline_bindings_at_order_15(rng):
    grid = oracle.uniform_grid(2, 3, 15)
    x = grid_inputs(rng, grid, 20)
    np.testing.assert_allclose(core.bspline_basis(x, grid, 15), oracle.bspline_basis(x, grid, 15),
                               rtol=0, atol=1e-10)
    want = oracle.bspline_gram(grid, 15)
    np.testing.assert_allclose(core.bspline_gram(grid, 15), want, rtol=1e-7,
                               atol=1e-9 * np.abs(want).max())


def test_bspline_bindings_extreme_grids():
    x = np.zeros((1, 1))
    tiny = np.array([[0.0, 1e-320, 1.0, 2.0, 3.0, 4.0]])
    wide = np.array([[-1.5e308, -1e308, 0.0, 1e308, 1.5e308, 1.7e308]])
    for fn in (lambda g, k: core.bspline_basis(x, g, k), core.bspline_gram):
        _raises_invalid(lambda: fn(tiny, 1), r"knot spacing too small: grid\[0\]\[1\]")
        _raises_invalid(lambda: fn(wide, 1), r"knot range too wide: grid\[0\]\[5\]")
    # Huge knots of one sign: the quadrature's midpoints must not overflow.
    big = (1e308 + np.arange(8) * 1e307)[None, :]
    r = core.bspline_gram(big, 2)
    assert np.isfinite(r).all() and abs(r.sum() - 1.0) < 1e-9
    np.testing.assert_array_equal(core.bspline_basis(np.array([[-1.7e308]]), big, 2), 0.0)


# ---- huge but consistent shapes ----------------------------------------------------------


def _physical_memory() -> int:
    names = ("SC_PHYS_PAGES", "SC_PAGE_SIZE")
    if not all(n in os.sysconf_names for n in names):
        return 0
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _refuses_impossible_allocations() -> bool:
    """Linux heuristic overcommit refuses one allocation far beyond RAM + swap."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() in ("0", "2") and _physical_memory() > 0
    except OSError:
        return False


@pytest.mark.skipif(not _refuses_impossible_allocations(),
                    reason="needs Linux with heuristic or strict overcommit")
def test_impossible_outputs_are_errors_not_aborts():
    """Outputs of many times the machine's memory from inputs of a few MB: an
    InvalidInputError "cannot allocate" (the process used to abort)."""
    huge = 64 * _physical_memory()
    n_out = 1 << 20
    batch = huge // (4 * n_out) + 1
    layer = {
        "grid": np.linspace(-1, 1, 8, dtype=np.float32)[None, :],
        "k": 3,
        "codebook": np.ones((2, 4), np.float32),
        "codes": np.zeros((1, n_out), np.uint8),
        "gains": np.ones((1, n_out), np.int8),
        "gain_scale": np.ones(n_out, np.float32),
    }
    x = np.zeros((batch, 1), np.float32)
    _raises_invalid(lambda: _forward(x, layer), "cannot allocate")
    m = int(np.sqrt(huge / 8)) + 1  # an (M, M) float64 Gram matrix
    grid = np.arange(m + 2, dtype=np.float64)[None, :]
    _raises_invalid(lambda: core.bspline_gram(grid, 1), "cannot allocate")


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@pytest.mark.parametrize("code_dtype", [np.uint8, np.int16])
def test_huge_codebook_width_with_many_outputs(code_dtype):
    """M = 10**6 basis functions and 10**6 outputs (~10 MB of inputs): the decoded block
    would be M * n_out floats (4 TB); such layers use projection tables at every batch
    size, and u8 codes do not pad the transposed codebook to 256 columns (1 GB)."""
    m, n_out, k = 10**6, 10**6, 1
    rng = np.random.default_rng(3)
    gains = rng.integers(-127, 128, size=(1, n_out)).astype(np.int8)
    layer = {
        "grid": np.arange(m + k + 1, dtype=np.float32)[None, :],
        "k": k,
        "codebook": np.ones((1, m), np.float32),  # partition of unity: P(x) = 1 inside
        "codes": np.zeros((1, n_out), code_dtype),
        "gains": gains,
        "gain_scale": np.full(n_out, 0.5, np.float32),
    }
    x = rng.uniform(k + 1, m - 1, size=(12, 1)).astype(np.float32)
    before = _max_rss()
    y = _forward(x, layer)
    assert _max_rss() - before < 400 << 20
    want = 0.5 * gains.astype(np.float64)
    np.testing.assert_allclose(y, np.broadcast_to(want, y.shape), rtol=1e-5, atol=1e-5)
    # Projection tables: each row equals its batch-of-one result bit for bit.
    np.testing.assert_array_equal(_forward(x[5:6], layer)[0], y[5])


def test_wide_layer_in_column_blocks_equals_its_columns(rng):
    """300000 outputs with M = 13: the decoded block (M + 2) x n_out exceeds the 8 MiB
    budget and is decoded in column blocks; each column equals the same column evaluated
    in a narrow layer bit for bit (decoded tiles compute every output element by the same
    operations), and the narrow layer matches the oracle."""
    n_in, n_out, g, k = 2, 300_000, 10, 3
    layer = random_layer(rng, n_in, n_out, g, k, 16, code_dtype=np.uint8, weight_kind="int8")
    x = grid_inputs(rng, layer["grid"], 64).astype(np.float32)
    y = _forward(x, layer)
    cols = np.array([0, 1, 139_807, 139_808, 279_616, n_out - 1])
    narrow = {
        key: (np.ascontiguousarray(v[..., cols]) if isinstance(v, np.ndarray)
              and v.shape[-1] == n_out else v)
        for key, v in layer.items()
    }
    y_cols = _forward(x, narrow)
    np.testing.assert_array_equal(y_cols, y[:, cols])
    _close_to_oracle(y_cols, x, narrow, rtol=1e-5)
