"""The Triton LUTHAM forward (python/sharekan/torch/triton_lutham.py) against the Rust
evaluator `sharekan._core.lutham_forward` and the float64 oracle (ARCHITECTURE §4).

Without a CUDA device the kernels run in Triton's interpreter. TRITON_INTERPRET=1 must be set
before triton itself is imported (triton.jit picks the interpreter at decoration time, for
triton's own tl.zeros / tl.sum too). When this module is the first to import triton it sets
the variable and runs in-process (nothing else in the suite needs compiled Triton on a
CPU-only machine); when another module imported triton first (torch.compile does), the
tests run in a subprocess with the variable set (test_interpreter_in_subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import oracle  # noqa: E402
from conftest import grid_inputs, random_layer  # noqa: E402
from test_lutham_kernel import dense_layer  # noqa: E402
from triton.language import standard as _tl_standard  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from sharekan import _core  # noqa: E402
from sharekan import errors  # noqa: E402
from sharekan.torch import ops  # noqa: E402
from sharekan.torch import triton_lutham as tri  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
#: triton was imported (compiled mode) before this module: run the tests in a subprocess.
SUBPROCESS = not CUDA and not isinstance(_tl_standard.zeros, InterpretedFunction)
if not SUBPROCESS and not tri.available():
    pytest.skip("triton cannot run here: no CUDA device, and TRITON_INTERPRET=1 was not set "
                "when triton_lutham was first imported", allow_module_level=True)


@pytest.fixture(autouse=True)
def _in_this_process(request):
    if SUBPROCESS and request.node.originalname != "test_interpreter_in_subprocess":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set; these run "
                    "in test_interpreter_in_subprocess")


def test_interpreter_in_subprocess():
    if not SUBPROCESS:
        pytest.skip("the tests run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
        cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


# The interpreter evaluates masked-out lanes too (e.g. SiLU(-inf) = -inf / inf, discarded).
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero):RuntimeWarning")

OPTIONAL = ("gain_scale", "edge_bias", "edge_bias_scale", "out_bias", "base_weight",
            "base_scale")


def op_args(layer: dict, x: np.ndarray, device=DEVICE) -> tuple:
    """Positional arguments of the op (absent -> (0,) tensors) on `device`."""
    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    opts = [t(layer[n]) if layer.get(n) is not None else ops.absent().to(device)
            for n in OPTIONAL]
    return (t(x), t(layer["grid"]), t(layer["codebook"]), t(layer["codes"]),
            t(layer["gains"]), *opts, int(layer.get("k", 0)), int(layer.get("basis", 0)),
            float(layer.get("h", 1.0)), int(layer.get("base_act", 0)))


def run_triton(layer: dict, x: np.ndarray, strategy: str = "auto") -> np.ndarray:
    y = tri.lutham_triton(*op_args(layer, x), strategy=strategy)
    assert y.dtype == torch.float32 and y.device.type == DEVICE
    assert tuple(y.shape) == (x.shape[0], layer["codes"].shape[1])
    return y.cpu().numpy()


def run_rust(layer: dict, x: np.ndarray) -> np.ndarray:
    xs, kwargs = ops.lutham_numpy_args(*op_args(layer, x, "cpu"))
    return _core.lutham_forward(xs, **kwargs)


def check(layer: dict, x: np.ndarray, strategy: str = "auto") -> float:
    """Triton vs Rust (rtol 1e-5, atol 1e-5 * max|y|) and vs the oracle; NaN where Rust
    has NaN. Returns the max error relative to max|y|."""
    got = run_triton(layer, x, strategy)
    want = run_rust(layer, x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want)
    scale = np.abs(want[fin]).max(initial=0.0) + 1e-30
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    ref = oracle.lutham_dense(x.astype(np.float64), **layer)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5 * scale)
    return float(np.abs(got[fin] - want[fin]).max(initial=0.0) / scale)


BATCHES = (1, 3, 13, 65, 130)

# (k, shared grid, code dtype, K, weight kind, edge bias, out bias, base, n_out)
BSPLINE_CASES = [
    (0, False, np.uint8, 7, "f32", True, True, True, 5),
    (1, True, np.int16, 300, "int8", True, True, True, 6),
    (3, False, np.uint8, 256, "int8", False, True, True, 70),  # folded bias, 2 output blocks
    (3, True, np.int32, 40000, "f32", True, False, True, 4),
    (3, False, np.int16, 2, "f32", False, False, False, 3),  # only the required parts
    (1, False, np.int32, 1, "int8", True, True, False, 5),
]


@pytest.mark.parametrize("case", BSPLINE_CASES, ids=[
    f"k{c[0]}-{'shared' if c[1] else 'rows'}-{c[2].__name__}-K{c[3]}-{c[4]}-n_out{c[8]}"
    for c in BSPLINE_CASES])
def test_bspline_matches_rust_and_oracle(case):
    k, shared, code_dtype, n_codes, kind, eb, ob, base, n_out = case
    rng = np.random.default_rng(1000 + 7 * k + n_codes)
    n_in = 5
    layer = random_layer(rng, n_in, n_out, 4, k, n_codes, code_dtype=code_dtype,
                         weight_kind=kind, with_edge_bias=eb, with_out_bias=ob, with_base=base,
                         uniform=shared)
    if shared:
        layer["grid"] = np.ascontiguousarray(layer["grid"][:1])
    layer["codes"].reshape(-1)[:2] = [n_codes - 1, 0]  # the extreme codes
    for batch in BATCHES:
        x = grid_inputs(rng, layer["grid"] if not shared else np.repeat(layer["grid"], n_in, 0),
                        batch).astype(np.float32)
        check(layer, x)
    # the strategy the batch size did not pick, on the same rows
    check(layer, x[:13], "dot")
    check(layer, x[:65], "gather")


# (basis, shared centres, code dtype, K, weight kind, edge bias, base, base_act, M)
DENSE_CASES = [
    (1, False, np.uint8, 37, "f32", True, True, 0, 8),
    (1, True, np.int16, 300, "int8", False, True, 1, 5),
    (2, True, np.uint8, 16, "f32", False, True, 1, 6),
    (2, True, np.int32, 40000, "int8", True, True, 0, 1),
    (2, True, np.uint8, 2, "f32", True, False, 0, 2),
]


@pytest.mark.parametrize("case", DENSE_CASES, ids=[
    f"{'rbf' if c[0] == 1 else 'cheb'}-{'shared' if c[1] else 'rows'}-{c[2].__name__}-"
    f"K{c[3]}-{c[4]}-act{c[7]}-M{c[8]}" for c in DENSE_CASES])
def test_dense_bases_match_rust_and_oracle(case):
    basis, shared, code_dtype, n_codes, kind, eb, base, act, m = case
    rng = np.random.default_rng(2000 + 13 * basis + n_codes + m)
    n_in, n_out = 6, 7
    layer = dense_layer(rng, n_in, n_out, m, n_codes, basis, shared=shared,
                        code_dtype=code_dtype, weight_kind=kind, with_edge_bias=eb,
                        with_base=base, base_act=act)
    for batch in (3, 13, 65):
        x = rng.normal(scale=1.5, size=(batch, n_in)).astype(np.float32)
        x[0, :3] = [np.inf, -np.inf, 40.0]
        x[1, 0] = 1e-9  # tanh near 0
        check(layer, x)
        check(layer, x, "gather" if batch >= tri.DOT_MIN_BATCH else "dot")


@pytest.mark.parametrize("strategy", ["gather", "dot"])
@pytest.mark.parametrize("act", [0, 1])
def test_outside_grid_knots_nan_and_inf(strategy, act):
    rng = np.random.default_rng(31 + act)
    layer = random_layer(rng, 4, 6, 5, 3, 9, code_dtype=np.uint8)
    layer["base_act"] = act
    g = layer["grid"]
    x = grid_inputs(rng, g, 16).astype(np.float32)
    x[0] = g[:, 0]  # first knot: inside
    x[1] = g[:, -1]  # last knot: outside (half-open)
    x[2] = g[:, 5]  # interior knots
    x[3] = g[:, 0] - 100.0
    x[4] = g[:, -1] + 1e30
    x[5, 1] = np.nan  # zero basis row; the base branch gives NaN
    x[6, 2] = np.inf
    x[7, 3] = -np.inf
    check(layer, x, strategy)
    # without the base branch a NaN / inf input only drops its spline term
    for name in ("base_weight", "base_scale"):
        layer.pop(name, None)
    y = run_triton(layer, x, strategy)
    assert np.isfinite(y).all()
    check(layer, x, strategy)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_shared_grid_row_equals_repeated_grid(k):
    rng = np.random.default_rng(40 + k)
    layer = random_layer(rng, 5, 4, 4, k, 11, code_dtype=np.int16, uniform=True)
    x = grid_inputs(rng, layer["grid"], 70).astype(np.float32)
    shared = {**layer, "grid": np.ascontiguousarray(layer["grid"][:1])}
    for strategy in ("gather", "dot"):
        np.testing.assert_array_equal(run_triton(shared, x, strategy),
                                      run_triton(layer, x, strategy))


def test_strategy_choice_and_wide_codebook():
    """M > DOT_MAX_M runs the gather kernel at every batch size ('dot' refuses it)."""
    rng = np.random.default_rng(50)
    layer = random_layer(rng, 3, 5, tri.DOT_MAX_M, 1, 6, code_dtype=np.uint8)
    x = grid_inputs(rng, layer["grid"], 66).astype(np.float32)
    check(layer, x)  # auto -> gather
    with pytest.raises(errors.InvalidInputError, match="strategy"):
        run_triton(layer, x, "dot")
    with pytest.raises(errors.InvalidInputError, match="strategy"):
        run_triton(layer, x, "fastest")


def test_high_order_and_empty_shapes():
    rng = np.random.default_rng(60)
    layer = random_layer(rng, 2, 3, 2, 15, 4, code_dtype=np.uint8)
    check(layer, grid_inputs(rng, layer["grid"], 5).astype(np.float32))
    y = tri.lutham_triton(*op_args(layer, np.zeros((0, 2), np.float32)))
    assert tuple(y.shape) == (0, 3)
    no_out = {**layer, "codes": np.zeros((2, 0), np.uint8), "gains": np.zeros((2, 0), np.float32),
              "edge_bias": np.zeros((2, 0), np.float32),
              "base_weight": np.zeros((2, 0), np.float32)}
    for n in ("gain_scale", "edge_bias_scale", "out_bias", "base_scale"):
        no_out.pop(n, None)
    assert tuple(tri.lutham_triton(*op_args(no_out, np.ones((3, 2), np.float32))).shape) == (3, 0)


# ---- bad inputs: the Rust evaluator's error class, naming the argument -----------------


def _bad_variants():
    rng = np.random.default_rng(70)
    good = random_layer(rng, 4, 3, 5, 3, 6, code_dtype=np.int32)
    for n in ("gain_scale", "edge_bias_scale", "base_scale"):
        good[n] = rng.uniform(0.5, 2.0, size=3).astype(np.float32)
    x = grid_inputs(rng, good["grid"], 5).astype(np.float32)
    rbf = dense_layer(rng, 4, 3, 6, 12, 1)

    def edit(base, name, fn):
        lay = {n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in base.items()}
        if name is None:
            fn(lay)
        else:
            lay[name] = fn(lay[name])
        return lay

    def setflat(i, v):
        def f(a):
            a = a.copy()
            a.reshape(-1)[i] = v
            return a
        return f

    tight = np.array([[0.0, 1e-45, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]] * 4,
                     np.float32)
    # g[3] - g[1] overflows float32 (d = 2 <= k); every single spacing is finite
    wide = np.array([[-3.3e38, -3.2e38, -3.1e38] + [1e38 + 1e37 * i for i in range(9)]] * 4,
                    np.float32)
    return [
        ("x-f64", x.astype(np.float64), good, errors.DTypeError, "x"),
        ("codes-i64", x, edit(good, "codes", lambda a: a.astype(np.int64)), errors.DTypeError,
         "codes"),
        ("gains-i16", x, edit(good, "gains", lambda a: a.astype(np.int16)), errors.DTypeError,
         "gains"),
        ("out_bias-f64", x, edit(good, "out_bias", lambda a: a.astype(np.float64)),
         errors.DTypeError, "out_bias"),
        ("x-shape", x[:, :3].copy(), good, errors.ShapeError, "x"),
        ("gains-shape", x, edit(good, "gains", lambda a: a[:, :2].copy()), errors.ShapeError,
         "gains"),
        ("scale-shape", x, edit(good, "base_scale", lambda a: a[:1].copy()), errors.ShapeError,
         "base_scale"),
        ("grid-rows", x, edit(good, "grid", lambda a: a[:2].copy()), errors.ShapeError, "grid"),
        ("codebook-width", x, edit(good, "codebook", lambda a: a[:, :5].copy()),
         errors.ShapeError, "codebook"),
        ("code-K", x, edit(good, "codes", setflat(5, 6)), errors.CodeRangeError, "codes"),
        ("code-neg", x, edit(good, "codes", setflat(0, -1)), errors.CodeRangeError, "codes"),
        ("code-u8", x, edit(good, "codes", lambda a: np.full(a.shape, 6, np.uint8)),
         errors.CodeRangeError, "codes"),
        ("codebook-nan", x, edit(good, "codebook", setflat(3, np.nan)), errors.NonFiniteError,
         "codebook"),
        ("gains-inf", x, edit(good, "gains", setflat(2, np.inf)), errors.NonFiniteError,
         "gains"),
        ("edge_bias-nan", x, edit(good, "edge_bias", setflat(1, np.nan)),
         errors.NonFiniteError, "edge_bias"),
        ("gain_scale-inf", x, edit(good, "gain_scale", setflat(0, -np.inf)),
         errors.NonFiniteError, "gain_scale"),
        ("out_bias-nan", x, edit(good, "out_bias", setflat(2, np.nan)), errors.NonFiniteError,
         "out_bias"),
        ("grid-flat", x, edit(good, "grid", setflat(15, float(good["grid"][1, 2]))),
         errors.InvalidInputError, "grid"),
        ("grid-nan", x, edit(good, "grid", setflat(4, np.nan)), errors.InvalidInputError,
         "grid"),
        ("grid-tight", x, edit(good, "grid", lambda a: tight), errors.InvalidInputError,
         "spacing too small"),
        ("grid-wide", x, edit(good, "grid", lambda a: wide), errors.InvalidInputError,
         "range too wide"),
        ("k-16", x, edit(good, "k", lambda a: 16), errors.InvalidInputError, "k"),
        ("basis-3", x, {**good, "basis": 3}, errors.InvalidInputError, "basis"),
        ("base_act-2", x, {**good, "base_act": 2}, errors.InvalidInputError, "base_act"),
        ("scale-without-weight", x, edit(good, None, lambda lay: lay.pop("base_weight")),
         errors.InvalidInputError, "base_scale"),
        ("rbf-h0", x, {**rbf, "h": 0.0}, errors.InvalidInputError, "h"),
        ("rbf-h-tiny", x, {**rbf, "h": 1e-39}, errors.InvalidInputError, "h"),
        ("rbf-centre-inf", x, edit(rbf, "grid", setflat(3, np.inf)), errors.NonFiniteError,
         "grid"),
        ("rbf-centres-shape", x, edit(rbf, "grid", lambda a: a[:, :5].copy()),
         errors.ShapeError, "grid"),
    ]


BAD = _bad_variants()


@pytest.mark.parametrize("x, layer, cls, needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inputs_raise_like_rust(x, layer, cls, needle):
    args = op_args(layer, x)
    with pytest.raises(cls, match=needle) as got:
        tri.lutham_triton(*args)
    # the Rust evaluator refuses the same input with the same class
    with pytest.raises(errors.ShareKanError) as rust:
        run_rust(layer, x)
    assert type(got.value) is type(rust.value), (got.value, rust.value)
    if cls is not errors.DTypeError:  # those name numpy arrays vs tensors
        assert str(got.value) == str(rust.value)  # the shared validation.validate


def test_inputs_are_not_modified():
    rng = np.random.default_rng(80)
    layer = random_layer(rng, 3, 4, 4, 3, 5, code_dtype=np.uint8, weight_kind="int8")
    x = grid_inputs(rng, layer["grid"], 65).astype(np.float32)
    args = op_args(layer, x)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    tri.lutham_triton(*args)
    for a, b in zip(args, before, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_wider_layer_both_strategies():
    """On a GPU: 3xTF32 tensor-core dot and the gather kernel at a realistic size."""
    rng = np.random.default_rng(90)
    layer = random_layer(rng, 64, 200, 5, 3, 256, code_dtype=np.uint8, weight_kind="int8")
    x = grid_inputs(rng, layer["grid"], 300).astype(np.float32)
    for strategy in ("gather", "dot"):
        check(layer, x, strategy)
