"""`sharekan._core.lutham_forward` (ARCHITECTURE §4) against the dense NumPy oracle."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
from conftest import grid_inputs, random_layer
from hypothesis import given
from hypothesis import strategies as st

core = pytest.importorskip("sharekan._core")
errors = pytest.importorskip("sharekan.errors")

CODE_DTYPES = [np.uint8, np.int16, np.int32, np.uint32]


def check_forward(x32, layer):
    before = {key: v.copy() for key, v in layer.items() if isinstance(v, np.ndarray)}
    x_before = x32.copy()
    y = core.lutham_forward(x32, **layer)
    np.testing.assert_array_equal(x32, x_before)
    for key, v in before.items():
        np.testing.assert_array_equal(layer[key], v, err_msg=key)
    n_out = layer["codes"].shape[1]
    assert y.dtype == np.float32 and y.shape == (x32.shape[0], n_out)
    want = oracle.lutham_dense(x32.astype(np.float64), **layer)
    # the basis magnitude for |x| is not the basis of x: bound rounding with |terms|
    bx = oracle.bspline_basis(x32.astype(np.float64), layer["grid"], layer["k"])
    w = np.abs(
        oracle.decode_layer(
            layer["codebook"],
            layer["codes"],
            np.abs(layer["gains"].astype(np.float64)),
            None if layer.get("gain_scale") is None else np.abs(layer["gain_scale"]),
            None
            if layer.get("edge_bias") is None
            else np.abs(layer["edge_bias"].astype(np.float64)),
            layer.get("edge_bias_scale"),
        )
    )
    scale = np.abs(bx).reshape(len(x32), -1) @ np.abs(w).transpose(0, 2, 1).reshape(-1, n_out)
    if layer.get("base_weight") is not None:
        bs = 1.0 if layer.get("base_scale") is None else layer["base_scale"].astype(np.float64)
        scale += np.abs(oracle.silu(x32.astype(np.float64))) @ np.abs(
            layer["base_weight"].astype(np.float64) * bs
        )
    if layer.get("out_bias") is not None:
        scale += np.abs(layer["out_bias"].astype(np.float64))
    err = np.abs(y.astype(np.float64) - want)
    tol = 2e-6 * scale + 1e-6
    assert np.all(err <= tol), (
        f"max err {err.max()} at {np.unravel_index(np.argmax(err - tol), err.shape)}"
    )
    return y


@pytest.mark.parametrize("code_dtype", CODE_DTYPES)
@pytest.mark.parametrize("weight_kind", ["f32", "int8"])
@pytest.mark.parametrize("batch", [1, 7])
def test_forward_matches_oracle(rng, code_dtype, weight_kind, batch):
    layer = random_layer(rng, 6, 5, 5, 3, 11, code_dtype=code_dtype, weight_kind=weight_kind)
    x = grid_inputs(rng, layer["grid"], batch).astype(np.float32)
    check_forward(x, layer)


@given(
    seed=st.integers(0, 2**32 - 1),
    n_in=st.integers(1, 7),
    n_out=st.integers(1, 6),
    g=st.integers(1, 8),
    k=st.integers(0, 4),
    n_codes=st.integers(1, 40),
    batch=st.sampled_from([1, 2, 5, 31]),
    code_dtype=st.sampled_from(CODE_DTYPES),
    weight_kind=st.sampled_from(["f32", "int8"]),
    parts=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    uniform=st.booleans(),
)
def test_forward_matches_oracle_random(
    seed, n_in, n_out, g, k, n_codes, batch, code_dtype, weight_kind, parts, uniform
):
    rng = np.random.default_rng(seed)
    layer = random_layer(
        rng,
        n_in,
        n_out,
        g,
        k,
        n_codes,
        code_dtype=code_dtype,
        weight_kind=weight_kind,
        with_edge_bias=parts[0],
        with_out_bias=parts[1],
        with_base=parts[2],
        uniform=uniform,
    )
    x = grid_inputs(rng, layer["grid"], batch, outside=0.4).astype(np.float32)
    check_forward(x, layer)


def test_forward_only_required_parts(rng):
    layer = random_layer(
        rng, 4, 3, 5, 3, 6, with_edge_bias=False, with_out_bias=False, with_base=False
    )
    layer.pop("gain_scale", None)
    x = grid_inputs(rng, layer["grid"], 9).astype(np.float32)
    check_forward(x, layer)


def test_forward_far_outside_grid(rng):
    # outside every grid only the base branch and out_bias remain
    layer = random_layer(rng, 3, 4, 5, 3, 6)
    x = np.array([[1e6, -1e6, 50.0], [-50.0, 1e3, -1e3]], dtype=np.float32)
    y = check_forward(x, layer)
    no_spline = oracle.lutham_dense(
        x.astype(np.float64),
        **{
            **layer,
            "gains": np.zeros_like(layer["gains"]),
            "edge_bias": np.zeros_like(layer["edge_bias"]),
        },
    )
    np.testing.assert_allclose(y, no_spline, rtol=1e-5, atol=1e-4)


def test_forward_matches_kmeans_decoded_layer(rng):
    # end to end: fit a layer's coefficients, evaluate compressed == dense decoded layer
    n_in, n_out, g, k = 6, 5, 5, 3
    grid = oracle.uniform_grid(n_in, g, k)
    w = rng.normal(size=(n_in * n_out, g + k))
    fit = core.gsb_fit(w, core.bspline_gram(grid, k), 7, 10, 0.0, 1)
    layer = {
        "grid": grid.astype(np.float32),
        "k": k,
        "codebook": np.ascontiguousarray(fit["codebook"], dtype=np.float32),
        "codes": fit["codes"].reshape(n_in, n_out).astype(np.uint8),
        "gains": fit["gains"].reshape(n_in, n_out).astype(np.float32),
        "edge_bias": fit["biases"].reshape(n_in, n_out).astype(np.float32),
    }
    x = grid_inputs(rng, grid, 13).astype(np.float32)
    check_forward(x, layer)


@pytest.mark.parametrize("k", [0, 1, 3, 5])
@pytest.mark.parametrize("batch", [1, 5, 12, 70])  # projection tables / decoded tiles
@pytest.mark.parametrize("code_dtype", [np.uint8, np.int32])
def test_shared_grid_row_equals_repeated_grid(rng, k, batch, code_dtype):
    """grid (1, NG) = the same knots for every input: the same bits as the repeated grid,
    and the oracle agrees (inputs outside the grid, on knots and NaN included)."""
    layer = random_layer(rng, 9, 6, 5, k, 20, code_dtype=code_dtype, weight_kind="int8",
                         uniform=True)
    assert (layer["grid"] == layer["grid"][:1]).all()
    x = grid_inputs(rng, layer["grid"], batch, outside=0.3).astype(np.float32)
    shared = {**layer, "grid": np.ascontiguousarray(layer["grid"][:1])}
    y_row = check_forward(x, shared)
    np.testing.assert_array_equal(y_row, core.lutham_forward(x, **layer))
    x[0, 0] = np.nan
    np.testing.assert_array_equal(core.lutham_forward(x, **shared),
                                  core.lutham_forward(x, **layer))


@pytest.mark.parametrize("batch", [1, 3, 12, 130])
def test_results_do_not_depend_on_the_other_rows(rng, batch):
    """Each row's result is a function of that row (and of whether the batch has fewer
    than 12 rows, which picks the strategy): reversing the batch reverses the output."""
    layer = random_layer(rng, 40, 33, 6, 3, 64, code_dtype=np.uint8, weight_kind="int8")
    x = grid_inputs(rng, layer["grid"], batch, outside=0.3).astype(np.float32)
    y = check_forward(x, layer)
    np.testing.assert_array_equal(core.lutham_forward(x[::-1].copy(), **layer), y[::-1])


# --- bad input -------------------------------------------------------------------------


@pytest.fixture
def good(rng):
    layer = random_layer(rng, 4, 3, 5, 3, 6, code_dtype=np.int32)
    for name in ("gain_scale", "edge_bias_scale", "base_scale"):
        layer[name] = rng.uniform(0.5, 2.0, size=3).astype(np.float32)
    x = grid_inputs(rng, layer["grid"], 5).astype(np.float32)
    return x, layer


def call_unmodified(x, layer):
    snap = {key: v.copy() for key, v in layer.items() if isinstance(v, np.ndarray)}
    x0 = x.copy()
    try:
        return core.lutham_forward(x, **layer)
    finally:
        np.testing.assert_array_equal(x, x0)
        for key, v in snap.items():
            np.testing.assert_array_equal(layer[key], v, err_msg=key)


@pytest.mark.parametrize("code_dtype", CODE_DTYPES)
def test_code_out_of_range(rng, code_dtype):
    layer = random_layer(rng, 4, 3, 5, 3, 6, code_dtype=code_dtype)
    x = grid_inputs(rng, layer["grid"], 2).astype(np.float32)
    layer["codes"][2, 1] = 6
    with pytest.raises(errors.CodeRangeError, match="codes"):
        call_unmodified(x, layer)
    if np.issubdtype(code_dtype, np.signedinteger):
        layer["codes"][2, 1] = -1
        with pytest.raises(errors.CodeRangeError, match="codes"):
            call_unmodified(x, layer)


@pytest.mark.parametrize(
    "name",
    [
        "grid",
        "codebook",
        "gains",
        "gain_scale",
        "edge_bias",
        "edge_bias_scale",
        "out_bias",
        "base_weight",
        "base_scale",
    ],
)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite(good, name, bad):
    x, layer = good
    layer[name] = layer[name].copy()
    layer[name].reshape(-1)[-1] = bad
    with pytest.raises(errors.NonFiniteError, match=name):
        call_unmodified(x, layer)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_x(good, bad):
    """A non-finite input is either refused (NonFiniteError naming x) or, as ARCHITECTURE
    §4 defines it, contributes no spline term while the base branch sees SiLU(x)."""
    x, layer = good
    x = x.copy()
    x[1, 2] = bad
    try:
        y = call_unmodified(x, layer)
    except errors.NonFiniteError as exc:
        assert "x" in str(exc)
        return
    want = oracle.lutham_dense(x.astype(np.float64), **layer)
    ok = np.isclose(y, want, rtol=1e-4, atol=1e-4) | (np.isnan(y) & np.isnan(want))
    ok |= np.isinf(y) & (y == want)
    assert np.all(ok), (y, want)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("x", (5, 3)),
        ("grid", (3, 12)),
        ("grid", (4, 11)),
        ("grid", (2, 12)),  # neither n_in rows nor one shared row
        ("grid", (1, 11)),
        ("codebook", (6, 7)),
        ("codes", (4, 4)),
        ("codes", (3, 3)),
        ("gains", (4, 2)),
        ("gain_scale", (2,)),
        ("edge_bias", (3, 3)),
        ("edge_bias_scale", (4,)),
        ("out_bias", (2,)),
        ("base_weight", (4, 4)),
        ("base_scale", (1,)),
        ("x", (5, 4, 1)),
        ("gains", (12,)),
    ],
)
def test_shape_mismatch(good, name, shape):
    x, layer = good
    src = x if name == "x" else layer[name]
    arr = np.zeros(shape, dtype=src.dtype)
    if name == "grid":
        arr[...] = np.arange(shape[1], dtype=np.float32)
    if name == "x":
        x = arr
    else:
        layer[name] = arr
    # a mismatch between the arrays that fix n_in, n_out and M may be reported under
    # either name; the others must name themselves
    names = {
        "codes": "codes|gains|grid|x",
        "gains": "gains|codes",
        "grid": "grid|codebook|x",
        "codebook": "codebook|grid",
    }.get(name, name)
    with pytest.raises(errors.ShapeError, match=names):
        call_unmodified(x, layer)


def test_empty(good):
    x, layer = good
    # an empty batch is either refused or gives an empty output
    try:
        y = call_unmodified(np.zeros((0, 4), np.float32), layer)
        assert y.shape == (0, 3) and y.dtype == np.float32
    except errors.ShapeError:
        pass
    layer["codebook"] = np.zeros((0, 8), np.float32)
    with pytest.raises((errors.ShapeError, errors.InvalidInputError)):
        call_unmodified(x, layer)


def test_grid_not_increasing(good):
    x, layer = good
    layer["grid"] = layer["grid"].copy()
    layer["grid"][1, 3] = layer["grid"][1, 2]
    with pytest.raises(errors.InvalidInputError, match="grid"):
        call_unmodified(x, layer)


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("x", np.float64),
        ("grid", np.float64),
        ("codebook", np.float64),
        ("codes", np.int64),
        ("codes", np.float32),
        ("gains", np.float64),
        ("gains", np.int16),
        ("gain_scale", np.float64),
        ("edge_bias", np.int32),
        ("out_bias", np.float64),
        ("base_weight", np.float64),
    ],
)
def test_wrong_dtype(good, name, dtype):
    x, layer = good
    if name == "x":
        x = x.astype(dtype)
    else:
        layer[name] = layer[name].astype(dtype)
    with pytest.raises(errors.DTypeError, match=name):
        call_unmodified(x, layer)


@pytest.mark.parametrize(
    "name", ["x", "grid", "codebook", "codes", "gains", "edge_bias", "base_weight", "gain_scale"]
)
def test_non_contiguous(good, name):
    x, layer = good
    src = x if name == "x" else layer[name]
    if src.ndim == 2:
        wide = np.zeros((src.shape[0], 2 * src.shape[1]), dtype=src.dtype)
        wide[:, ::2] = src
        view = wide[:, ::2]
    else:
        wide = np.zeros(2 * src.shape[0], dtype=src.dtype)
        wide[::2] = src
        view = wide[::2]
    assert not view.flags.c_contiguous
    if name == "x":
        x = view
    else:
        layer[name] = view
    with pytest.raises(errors.InvalidInputError, match=f"{name}.*contiguous"):
        call_unmodified(x, layer)


def test_bad_k(good):
    x, layer = good
    for k in (2, 4, -1):
        layer["k"] = k
        with pytest.raises((errors.InvalidInputError, errors.ShapeError, OverflowError)):
            call_unmodified(x, layer)


@pytest.mark.parametrize(
    "code_dtype, n_codes", [(np.uint8, 256), (np.int16, 300), (np.int32, 1000), (np.uint32, 70000)]
)
def test_forward_largest_codes(rng, code_dtype, n_codes):
    layer = random_layer(rng, 3, 4, 4, 2, n_codes, code_dtype=code_dtype, weight_kind="int8")
    layer["codes"][0, :] = n_codes - 1
    layer["codes"][1, 0] = 0
    x = grid_inputs(rng, layer["grid"], 3).astype(np.float32)
    check_forward(x, layer)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_forward_single_edge(rng, k):
    layer = random_layer(rng, 1, 1, 3, k, 2)
    x = grid_inputs(rng, layer["grid"], 1).astype(np.float32)
    check_forward(x, layer)


def test_forward_equals_efficient_kan_layer(rng):
    """K = E compresses a torch KANLinear exactly; LUTHAM then reproduces its forward."""
    torch = pytest.importorskip("torch")
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "python/sharekan/torch/kan.py"
    spec = importlib.util.spec_from_file_location("_sharekan_ref_kan_eval", path)
    kan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kan)
    torch.manual_seed(0)
    n_in, n_out, g, k = 5, 3, 6, 3
    mod = kan.KANLinear(n_in, n_out, g, k)
    with torch.no_grad():
        mod.spline_weight.mul_(50.0)  # make the spline path matter next to the base path
    coeffs = mod.scaled_spline_weight.detach().double().numpy()  # (n_out, n_in, M)
    coeffs = np.ascontiguousarray(coeffs.transpose(1, 0, 2).reshape(n_in * n_out, g + k))
    grid = mod.grid.detach().double().numpy()
    fit = core.gsb_fit(coeffs, core.bspline_gram(grid, k), n_in * n_out, 10, 0.0, 0)
    layer = {
        "grid": grid.astype(np.float32),
        "k": k,
        "codebook": np.ascontiguousarray(fit["codebook"], dtype=np.float32),
        "codes": fit["codes"].reshape(n_in, n_out).astype(np.int16),
        "gains": fit["gains"].reshape(n_in, n_out).astype(np.float32),
        "edge_bias": fit["biases"].reshape(n_in, n_out).astype(np.float32),
        "base_weight": np.ascontiguousarray(mod.base_weight.detach().numpy().T),
    }
    x = grid_inputs(rng, grid, 17).astype(np.float32)
    y = core.lutham_forward(x, **layer)
    with torch.no_grad():
        ref = mod.double()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
