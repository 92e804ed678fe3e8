"""The portable `sharekan::lutham` path (python/sharekan/torch/portable.py) and the op's
per-device dispatch (ops.py): against the Rust evaluator and the float64 oracle, both
strategies, chunking, bad inputs (same error classes as Rust), forced implementations,
torch.compile, and a CUDA round trip that skips without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
core = pytest.importorskip("sharekan._core")

import oracle  # noqa: E402
from conftest import grid_inputs, random_layer  # noqa: E402

from sharekan import errors  # noqa: E402
from sharekan.torch import KAN, compress_, load_compressed_, ops, portable  # noqa: E402

try:  # the dense-basis layer factory lives with the C++ kernel tests (needs executorch)
    from test_lutham_kernel import dense_layer
except (ImportError, pytest.skip.Exception):
    dense_layer = None

NAMES = ("grid", "codebook", "codes", "gains", "gain_scale", "edge_bias", "edge_bias_scale",
         "out_bias", "base_weight", "base_scale")
CUDA = torch.cuda.is_available()


def op_args(x: np.ndarray, layer: dict, device: str = "cpu") -> list:
    """The op's positional arguments (absent optional -> (0,) tensor)."""
    t = [torch.from_numpy(np.ascontiguousarray(x))]
    for n in NAMES:
        v = layer.get(n)
        t.append(ops.absent() if v is None else torch.from_numpy(np.ascontiguousarray(v)))
    t = [v.to(device) for v in t]
    return [*t, int(layer.get("k", 0)), int(layer.get("basis", 0)), float(layer.get("h", 1.0)),
            int(layer.get("base_act", 0))]


def magnitude(x: np.ndarray, layer: dict) -> np.ndarray:
    """(B, n_out) sum of |terms| of each output: the scale of float32 rounding errors."""
    x64 = np.where(np.isfinite(x), x, 0.0).astype(np.float64)
    basis = layer.get("basis", 0)
    w = oracle.decode_layer(layer["codebook"], layer["codes"],
                            np.abs(layer["gains"].astype(np.float64)),
                            None if layer.get("gain_scale") is None else np.abs(layer["gain_scale"]),
                            None if layer.get("edge_bias") is None
                            else np.abs(layer["edge_bias"].astype(np.float64)),
                            layer.get("edge_bias_scale"))
    if basis == 0:
        b = oracle.bspline_basis(x64, layer["grid"], layer["k"])
    elif basis == 1:
        b = oracle.rbf_basis(x64, layer["grid"], np.float32(layer["h"]))
    else:
        b = oracle.chebyshev_basis(x64, w.shape[2])
    n_in, n_out, m = w.shape
    s = np.abs(b).reshape(len(x), -1) @ np.abs(w).transpose(0, 2, 1).reshape(n_in * m, n_out)
    if layer.get("base_weight") is not None:
        bs = oracle._per_out(layer.get("base_scale"), n_out)
        act = oracle.gelu(x64) if layer.get("base_act", 0) == 1 else oracle.silu(x64)
        s += np.abs(act) @ np.abs(layer["base_weight"].astype(np.float64) * bs)
    if layer.get("out_bias") is not None:
        s += np.abs(layer["out_bias"].astype(np.float64))
    return s


def assert_matches(y: np.ndarray, x: np.ndarray, layer: dict) -> None:
    """y (portable) against the Rust evaluator (NaN / inf pattern and values) and the oracle
    (finite rows), with a tolerance scaled by the magnitude of the summed terms."""
    y_rust = core.lutham_forward(x, **layer)
    assert y.shape == y_rust.shape and y.dtype == np.float32
    nonfinite = ~np.isfinite(y_rust)
    np.testing.assert_array_equal(~np.isfinite(y), nonfinite)
    np.testing.assert_array_equal(y[np.isinf(y_rust)], y_rust[np.isinf(y_rust)])
    tol = 3e-6 * magnitude(x, layer) + 1e-6
    fin = ~nonfinite
    err_rust = np.abs(y[fin].astype(np.float64) - y_rust[fin])
    assert np.all(err_rust <= tol[fin]), f"vs Rust: max err {err_rust.max()}"
    rows = np.isfinite(x).all(axis=1)
    want = oracle.lutham_dense(x[rows].astype(np.float64), **layer)
    err = np.abs(y[rows].astype(np.float64) - want)
    assert np.all(err <= tol[rows]), f"vs oracle: max err {err.max()}"


def special_inputs(rng, grid: np.ndarray, batch: int, n_in: int) -> np.ndarray:
    """grid_inputs (inside, outside, on knots) with NaN, +-inf and far-outside values in
    some rows (those rows kept out of batch 1 so its row stays finite)."""
    rows = grid if grid.shape[0] == n_in else np.repeat(grid, n_in, axis=0)
    x = grid_inputs(rng, rows, batch).astype(np.float32)
    if batch >= 3:
        x[1, 0] = np.nan
        x[2, -1] = 1e6
        x[-1, n_in // 2] = -1e6
    if batch >= 13:
        x[5, 1] = np.inf
        x[7, 0] = -np.inf
        x[9, :] = rows[:, -1]  # exactly on the last knot: outside (half-open spans)
        x[10, :] = rows[:, 0]  # exactly on the first knot: inside
    return x


BSPLINE_CASES = [
    # (k, shared grid, code dtype, K, weight kind, edge bias, out bias, base)
    (0, False, np.uint8, 1, "f32", True, True, True),
    (1, True, np.uint8, 2, "int8", True, False, True),
    (3, False, np.uint8, 256, "int8", True, True, True),
    (3, True, np.int16, 300, "f32", False, True, True),
    (3, False, np.int32, 40000, "f32", True, False, False),
    (2, False, np.int16, 300, "int8", False, False, False),
]


@pytest.mark.parametrize("strategy", ["gather", "decode", "auto"])
@pytest.mark.parametrize("case", BSPLINE_CASES, ids=[
    f"k{c[0]}-{'shared' if c[1] else 'rows'}-{c[2].__name__}-K{c[3]}-{c[4]}"
    f"{'-eb' if c[5] else ''}{'-ob' if c[6] else ''}{'-base' if c[7] else ''}"
    for c in BSPLINE_CASES])
def test_bspline_matches_rust_and_oracle(rng, case, strategy):
    k, shared, code_dtype, n_codes, kind, eb, ob, base = case
    n_in, n_out = (3, 5) if n_codes > 1000 else (6, 7)
    layer = random_layer(rng, n_in, n_out, 5, k, n_codes, code_dtype=code_dtype,
                         weight_kind=kind, with_edge_bias=eb, with_out_bias=ob, with_base=base,
                         uniform=shared)
    if shared:
        layer["grid"] = np.ascontiguousarray(layer["grid"][:1])
    for batch in (1, 3, 13, 130):
        x = special_inputs(rng, layer["grid"], batch, n_in)
        y = portable.lutham_portable(*op_args(x, layer), strategy=strategy).numpy()
        assert_matches(y, x, layer)


@pytest.mark.skipif(dense_layer is None, reason="tests/test_lutham_kernel.py needs executorch")
@pytest.mark.parametrize("strategy", ["gather", "decode"])
@pytest.mark.parametrize("case", [
    # (basis, shared centres, code dtype, K, weight kind, base_act, M)
    (1, False, np.uint8, 37, "f32", 0, 8),
    (1, True, np.int16, 300, "int8", 1, 5),
    (2, True, np.uint8, 16, "f32", 1, 6),
    (2, True, np.int32, 5, "int8", 0, 1),
], ids=["rbf-rows-silu", "rbf-shared-gelu", "cheb-gelu", "cheb-M1"])
def test_dense_bases_match_rust_and_oracle(rng, case, strategy):
    basis, shared, code_dtype, n_codes, kind, act, m = case
    layer = dense_layer(rng, 5, 6, m, n_codes, basis, shared=shared, code_dtype=code_dtype,
                        weight_kind=kind, base_act=act)
    for batch in (1, 13, 130):
        x = rng.uniform(-2.5, 2.5, size=(batch, 5)).astype(np.float32)
        if batch > 1:
            x[3, 2] = np.nan  # NaN in, NaN out for the dense bases
            x[4, 0] = 40.0
        y = portable.lutham_portable(*op_args(x, layer), strategy=strategy).numpy()
        assert_matches(y, x, layer)


@pytest.mark.parametrize("strategy", ["gather", "decode"])
def test_chunked_batches_and_column_blocks_change_nothing(rng, monkeypatch, strategy):
    layer = random_layer(rng, 9, 40, 6, 3, 300, code_dtype=np.int16, weight_kind="int8")
    x = special_inputs(rng, layer["grid"], 130, 9)
    args = op_args(x, layer)
    whole = portable.lutham_portable(*args, strategy=strategy).numpy()
    calls = []
    real = portable._basis
    monkeypatch.setattr(portable, "_basis", lambda a, xs: calls.append(len(xs)) or real(a, xs))
    blocks = []
    decoded = portable._decoded
    monkeypatch.setattr(portable, "_decoded", lambda a, o0, o1: blocks.append(o1 - o0) or decoded(a, o0, o1))
    small = portable.lutham_portable(*args, strategy=strategy, budget_bytes=40_000).numpy()
    assert len(calls) > 2 and max(calls) < 130  # it did split the batch
    if strategy == "decode":  # and the decoded weights into column blocks
        assert len(blocks) > 1 and sum(blocks) == 40
    # the same operations per element, summed in BLAS blocks of other sizes
    np.testing.assert_array_equal(np.isnan(small), np.isnan(whole))
    fin = np.isfinite(whole)
    tol = 1e-6 * magnitude(x, layer)[fin] + 1e-6
    assert np.all(np.abs(small[fin] - whole[fin]) <= tol)
    assert_matches(small, x, layer)
    # the same budget from the environment, through the op
    calls.clear()
    monkeypatch.setenv("SHAREKAN_LUTHAM_BUDGET_MB", str(40_000 / 2**20))
    with ops.use_impl("portable"):
        via_op = torch.ops.sharekan.lutham(*args).numpy()
    assert len(calls) > 2
    np.testing.assert_allclose(via_op, whole, rtol=1e-5, atol=1e-5)


def test_auto_strategy_follows_the_memory_estimate(rng):
    # a wide layer with a small codebook: tables for one row, decoded weights for many
    layer = random_layer(rng, 16, 64, 5, 3, 4, code_dtype=np.uint8)
    small = portable.validate(*op_args(np.zeros((1, 16), np.float32), layer))
    large = portable.validate(*op_args(np.zeros((500, 16), np.float32), layer))
    assert portable.choose_strategy(small) == "gather"
    assert portable.choose_strategy(large) == "decode"
    # a narrow head with K >> n_out decodes even at batch 1
    head = random_layer(rng, 16, 2, 5, 3, 256, code_dtype=np.uint8)
    assert portable.choose_strategy(portable.validate(
        *op_args(np.zeros((1, 16), np.float32), head))) == "decode"
    with pytest.raises(errors.InvalidInputError, match="strategy"):
        portable.lutham_portable(*op_args(np.zeros((1, 16), np.float32), layer), strategy="x")


def test_empty_batch_and_no_outputs(rng):
    layer = random_layer(rng, 4, 3, 5, 3, 6)
    y = portable.lutham_portable(*op_args(np.zeros((0, 4), np.float32), layer))
    assert y.shape == (0, 3) and y.dtype == torch.float32


# ---- bad inputs: the Rust evaluator's error classes -------------------------------------


def _bad_variants():
    """(id, function(x, layer) -> (x, layer)) that each break one rule of ARCHITECTURE §4."""
    def setv(name, value):
        def f(x, layer):
            layer[name] = value(layer[name]) if callable(value) else value
            return x, layer
        return f

    def poke(name, bad):
        def f(x, layer):
            arr = layer[name].copy()
            arr.reshape(-1)[-1] = bad
            layer[name] = arr
            return x, layer
        return f

    v = [(f"nonfinite-{n}-{b}", poke(n, b)) for n in
         ("grid", "codebook", "gains", "gain_scale", "edge_bias", "edge_bias_scale", "out_bias",
          "base_weight", "base_scale") for b in (np.nan, np.inf)]
    shapes = [("x", (5, 3)), ("grid", (3, 12)), ("grid", (4, 11)), ("grid", (2, 12)),
              ("grid", (1, 7)), ("codebook", (6, 7)), ("codebook", (0, 8)), ("codes", (4, 4)),
              ("gains", (4, 2)), ("gain_scale", (2,)), ("edge_bias", (3, 3)),
              ("edge_bias_scale", (4,)), ("out_bias", (2,)), ("base_weight", (4, 4)),
              ("base_scale", (1,)), ("x", (5, 4, 1)), ("gains", (12,)), ("codes", (12,))]
    for name, shape in shapes:
        def f(x, layer, name=name, shape=shape):
            src = x if name == "x" else layer[name]
            arr = np.zeros(shape, dtype=src.dtype)
            if name == "grid":
                arr[...] = np.arange(shape[1], dtype=np.float32)
            if name == "x":
                return arr, layer
            layer[name] = arr
            return x, layer
        v.append((f"shape-{name}-{shape}", f))
    for name, dtype in (("x", np.float64), ("grid", np.float64), ("codebook", np.float64),
                        ("codes", np.int64), ("codes", np.float32), ("gains", np.float64),
                        ("gains", np.int16), ("gain_scale", np.float64), ("edge_bias", np.int32),
                        ("out_bias", np.float64), ("base_weight", np.float64)):
        def f(x, layer, name=name, dtype=dtype):
            if name == "x":
                return x.astype(dtype), layer
            layer[name] = layer[name].astype(dtype)
            return x, layer
        v.append((f"dtype-{name}-{np.dtype(dtype).name}", f))

    def codes(value, dtype):
        def f(x, layer):
            c = layer["codes"].astype(dtype)
            c[2, 1] = value
            layer["codes"] = c
            return x, layer
        return f

    def knots(fn):
        def f(x, layer):
            g = layer["grid"].copy()
            fn(g)
            layer["grid"] = g
            return x, layer
        return f

    def drop(name):
        def f(x, layer):
            layer.pop(name)
            return x, layer
        return f

    def set_(**kw):
        def f(x, layer):
            layer.update(kw)
            return x, layer
        return f

    v += [
        ("code-6-int32", codes(6, np.int32)), ("code-neg-int16", codes(-1, np.int16)),
        ("code-6-uint8", codes(6, np.uint8)),
        ("grid-flat", knots(lambda g: g.__setitem__((1, 3), g[1, 2]))),
        ("grid-decreasing", knots(lambda g: g.__setitem__((0, 4), g[0, 1]))),
        ("grid-spacing-tiny", knots(lambda g: g.__setitem__(
            2, np.arange(g.shape[1], dtype=np.float32) * np.float32(1e-44)))),
        ("grid-range-wide", knots(lambda g: g.__setitem__(slice(1, 2), np.concatenate([  # a jump of 4e38 between knots k apart overflows float32
            np.linspace(-3e38, -2e38, g.shape[1] // 2), np.linspace(2e38, 3e38, g.shape[1] - g.shape[1] // 2)]).astype(np.float32)))),
        ("k-16", set_(k=16)), ("k-4", set_(k=4)), ("k-neg", set_(k=-1)),
        ("basis-3", set_(basis=3)), ("base-act-2", set_(base_act=2)),
        ("edge-bias-scale-alone", drop("edge_bias")), ("base-scale-alone", drop("base_weight")),
    ]
    return v


def _rbf_variants():
    return [("rbf-h0", {"h": 0.0}), ("rbf-hnan", {"h": float("nan")}),
            ("rbf-htiny", {"h": 1e-39}), ("rbf-hinf", {"h": float("inf")})]


def _good(rng):
    layer = random_layer(rng, 4, 3, 5, 3, 6, code_dtype=np.int32)
    for name in ("gain_scale", "edge_bias_scale", "base_scale"):
        layer[name] = rng.uniform(0.5, 2.0, size=3).astype(np.float32)
    return grid_inputs(rng, layer["grid"], 5).astype(np.float32), layer


def _error_of(fn):
    try:
        fn()
    except errors.ShareKanError as exc:
        return exc
    return None


def _both(x, layer):
    """The exceptions raised by the op forced to Rust and forced to the portable path."""
    def run(impl):
        with ops.use_impl(impl):
            return torch.ops.sharekan.lutham(*op_args(x, layer))
    return _error_of(lambda: run("rust")), _error_of(lambda: run("portable"))


@pytest.mark.parametrize("variant", _bad_variants(), ids=lambda v: v[0])
def test_bad_inputs_raise_the_rust_error_class(rng, variant):
    x, layer = variant[1](*_good(rng))
    err_rust, err_port = _both(x, layer)
    assert err_rust is not None, "the variant must be an error for the Rust evaluator"
    assert err_port is not None, f"portable path accepted it (Rust: {err_rust!r})"
    assert type(err_port) is type(err_rust), (err_rust, err_port)
    if not isinstance(err_rust, errors.DTypeError):  # those name numpy arrays vs tensors
        assert str(err_port) == str(err_rust)


@pytest.mark.parametrize("variant", _rbf_variants(), ids=lambda v: v[0])
def test_bad_rbf_width_raises_the_rust_error_class(rng, variant):
    layer = random_layer(rng, 4, 3, 5, 3, 6)
    layer.update(k=0, basis=1, grid=np.sort(rng.uniform(-1, 1, (4, 8)), 1).astype(np.float32))
    x = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
    assert _both(x, layer) == (None, None)  # the good layer runs on both
    layer.update(variant[1])
    err_rust, err_port = _both(x, layer)
    assert err_rust is not None and type(err_port) is type(err_rust), (err_rust, err_port)
    assert str(err_port) == str(err_rust)


# ---- dispatch --------------------------------------------------------------------------


def test_resolve_impl_per_device_and_overrides(monkeypatch):
    monkeypatch.delenv("SHAREKAN_LUTHAM_IMPL", raising=False)
    assert ops.resolve_impl("cpu") == "rust"
    assert ops.resolve_impl("mps") == "portable"
    assert ops.resolve_impl("xpu") == "portable"
    assert ops.resolve_impl("cuda") == ("triton" if ops.triton_available() else "portable")
    with ops.use_impl("portable"):
        assert ops.resolve_impl("cpu") == "portable"
        with ops.use_impl("rust"):
            assert ops.resolve_impl("cpu") == "rust"
        assert ops.resolve_impl("cpu") == "portable"
    monkeypatch.setenv("SHAREKAN_LUTHAM_IMPL", "portable")
    assert ops.resolve_impl("cpu") == "portable"
    with ops.use_impl("auto"):  # the context manager wins over the environment
        assert ops.resolve_impl("cpu") == "rust"
    monkeypatch.setenv("SHAREKAN_LUTHAM_IMPL", "fast")
    with pytest.raises(errors.InvalidInputError, match="SHAREKAN_LUTHAM_IMPL"):
        ops.resolve_impl("cpu")
    with pytest.raises(errors.InvalidInputError, match="use_impl"), ops.use_impl("numpy"):
        pass
    # without the Rust extension, CPU falls back to the portable path
    monkeypatch.delenv("SHAREKAN_LUTHAM_IMPL")
    monkeypatch.setattr(ops, "rust_available", lambda: False)
    assert ops.resolve_impl("cpu") == "portable"


def test_kernels_are_registered_for_cuda_and_every_other_backend():
    for name in ("sharekan::lutham", "sharekan::lutham.out"):
        for key in ("CPU", "CUDA", "CompositeExplicitAutograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), (name, key)
    # Meta (shape propagation, FakeTensor) keeps the fake kernel, not the portable path
    x = torch.empty(7, 4, device="meta")
    args = [x] + [torch.empty(s, device="meta") for s in ((4, 12), (6, 8))]
    args += [torch.empty(4, 3, dtype=torch.int32, device="meta"), torch.empty(4, 3, device="meta")]
    args += [torch.empty(0, device="meta")] * 6 + [3]
    assert torch.ops.sharekan.lutham(*args).shape == (7, 3)


def test_forced_portable_runs_through_the_op_and_out_variant(rng, monkeypatch):
    layer = random_layer(rng, 6, 5, 5, 3, 40, code_dtype=np.uint8, weight_kind="int8")
    x = special_inputs(rng, layer["grid"], 13, 6)
    args = op_args(x, layer)
    calls = []
    real = portable.lutham_portable
    monkeypatch.setattr(portable, "lutham_portable", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    y_rust = torch.ops.sharekan.lutham(*args)
    assert not calls  # auto on CPU: the Rust evaluator
    with ops.use_impl("portable"):
        y = torch.ops.sharekan.lutham(*args)
        out = torch.empty(0)
        ret = torch.ops.sharekan.lutham.out(*args, out=out)
    assert len(calls) == 2 and ret is out
    np.testing.assert_array_equal(out.numpy(), y.numpy())
    assert_matches(y.numpy(), x, layer)
    np.testing.assert_array_equal(np.isnan(y.numpy()), np.isnan(y_rust.numpy()))
    # the environment variable does the same
    monkeypatch.setenv("SHAREKAN_LUTHAM_IMPL", "portable")
    torch.ops.sharekan.lutham(*args)
    assert len(calls) == 3
    # and without the extension the CPU kernel falls back to it
    monkeypatch.delenv("SHAREKAN_LUTHAM_IMPL")
    monkeypatch.setattr(ops, "rust_available", lambda: False)
    torch.ops.sharekan.lutham(*args)
    assert len(calls) == 4


def test_forced_triton_without_triton_is_a_clear_error(rng):
    if ops.triton_available():
        pytest.skip("triton_lutham is available here (CUDA or TRITON_INTERPRET=1)")
    layer = random_layer(rng, 4, 3, 5, 3, 6)
    with ops.use_impl("triton"), pytest.raises(errors.InvalidInputError, match="triton"):
        torch.ops.sharekan.lutham(*op_args(np.zeros((2, 4), np.float32), layer))


def _compressed_kan(seed=0, widths=(10, 7, 4)):
    torch.manual_seed(seed)
    model = KAN(list(widths), grid_size=5, spline_order=3)
    with torch.no_grad():
        for layer in model.layers:
            layer.spline_weight.mul_(20.0)
    return compress_(model.eval(), codebook_size=8)


def test_compressed_model_forced_portable_equals_rust():
    model = _compressed_kan()
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1.6, 1.6, (33, 10)).astype(np.float32))
    with torch.no_grad():
        y_rust = model(x)
        with ops.use_impl("portable"):
            y_port = model(x)
            y_lead = model(x.reshape(3, 11, 10))  # leading dims through LuthamLinear
    scale = float(y_rust.abs().max())
    np.testing.assert_allclose(y_port.numpy(), y_rust.numpy(), atol=1e-5 * scale, rtol=1e-5)
    np.testing.assert_allclose(y_lead.reshape(33, 4).numpy(), y_port.numpy(), atol=1e-6 * scale)


def test_torch_compile_fullgraph_on_cpu():
    model = _compressed_kan(seed=2)
    x = torch.from_numpy(np.random.default_rng(2).uniform(-1.6, 1.6, (9, 10)).astype(np.float32))
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        want = model(x)
        got = compiled(x)
        with ops.use_impl("portable"):  # decided when the graph runs: the op is opaque
            got_port = compiled(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_port.numpy(), want.numpy(), rtol=1e-5,
                               atol=1e-5 * float(want.abs().max()))


def test_lutham_functional_absent_markers_follow_x():
    layer = random_layer(np.random.default_rng(3), 4, 3, 5, 3, 6, with_edge_bias=False,
                         with_out_bias=False, with_base=False)
    x = torch.zeros(2, 4)
    t = {n: torch.from_numpy(v) for n, v in layer.items() if isinstance(v, np.ndarray)}
    y = ops.lutham(x, t["grid"], t["codebook"], t["codes"], t["gains"], k=3)
    with ops.use_impl("portable"):
        y2 = ops.lutham(x, t["grid"], t["codebook"], t["codes"], t["gains"], k=3)
    np.testing.assert_allclose(y.numpy(), y2.numpy(), rtol=1e-5, atol=1e-6)


# ---- CUDA (skipped without a GPU) ------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_compress_then_to_device_matches_cpu(tmp_path):
    model = _compressed_kan(seed=4)
    x = torch.from_numpy(np.random.default_rng(4).uniform(-1.6, 1.6, (65, 10)).astype(np.float32))
    with torch.no_grad():
        want = model(x)
        model.to("cuda")
        assert all(b.device.type == "cuda" for b in model.buffers())
        got = model(x.cuda())
        assert got.device.type == "cuda"
        with ops.use_impl("portable"):
            got_port = model(x.cuda())
    scale = float(want.abs().max())
    for y in (got, got_port):
        np.testing.assert_allclose(y.cpu().numpy(), want.numpy(), atol=2e-5 * scale, rtol=1e-4)
    # a model compressed on the GPU keeps its layers there; a reload lands on the module's device
    torch.manual_seed(4)
    dense = KAN([10, 7, 4], grid_size=5, spline_order=3).cuda()
    compress_(dense, codebook_size=8)
    assert all(b.device.type == "cuda" for b in dense.buffers())
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = KAN([10, 7, 4], grid_size=5, spline_order=3).cuda()
    load_compressed_(fresh, torch.load(tmp_path / "m.pt"))
    assert all(b.device.type == "cuda" for b in fresh.buffers())
    with torch.no_grad():
        np.testing.assert_allclose(fresh(x.cuda()).cpu().numpy(), want.numpy(),
                                   atol=2e-5 * scale, rtol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["gather", "decode"])
def test_cuda_portable_matches_rust(rng, strategy):
    layer = random_layer(rng, 7, 9, 5, 3, 300, code_dtype=np.int16, weight_kind="int8")
    x = special_inputs(rng, layer["grid"], 130, 7)
    y = portable.lutham_portable(*op_args(x, layer, "cuda"), strategy=strategy)
    assert y.device.type == "cuda"
    assert_matches(y.cpu().numpy(), x, layer)

