"""The C++ ExecuTorch kernel `sharekan::lutham.out` against the NumPy oracle and the Rust
evaluator, inside the ExecuTorch runtime and in the standalone runner; bad inputs give an
error status and leave the runtime usable; a program loaded without the kernel library
fails with OperatorMissing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch.runtime")

import oracle  # noqa: E402
from conftest import grid_inputs, random_layer  # noqa: E402

from sharekan import lutham  # noqa: E402
from sharekan.errors import LuthamBuildError  # noqa: E402
from sharekan.export import export_pte  # noqa: E402
from sharekan.torch import ops  # noqa: E402

BUFFERS = ("grid", "codebook", "codes", "gains", "gain_scale", "edge_bias",
           "edge_bias_scale", "out_bias", "base_weight", "base_scale")
BATCHES = (1, 2, 3, 7, 11, 12, 13, 64, 130)  # both strategies (decode_min_batch), several tiles


class RawLutham(torch.nn.Module):
    """The bare operator over fixed buffers (any dtype / shape, explicit k)."""

    def __init__(self, tensors: dict, k: int) -> None:
        super().__init__()
        self.k = int(k)
        # basis / h / base_act only when given (default B-spline + SiLU calls stay unchanged)
        self.extra = tuple(t(tensors[n]) for n, t in (("basis", int), ("h", float),
                                                          ("base_act", int)) if n in tensors)
        for name in BUFFERS:
            value = tensors.get(name)
            t = ops.absent() if value is None else torch.from_numpy(np.ascontiguousarray(value))
            self.register_buffer(name, t)

    def forward(self, x):
        return torch.ops.sharekan.lutham(x, *(getattr(self, n) for n in BUFFERS), self.k,
                                         *self.extra)


@pytest.fixture(scope="module")
def runtime():
    try:
        lutham.load_library()
    except LuthamBuildError as exc:  # no compiler / no executorch headers
        pytest.skip(f"LUTHAM kernel library unavailable: {exc}")
    from executorch.runtime import Runtime

    return Runtime.get()


def _export(layer: dict, path, n_in: int):
    kw = dict(layer)
    k = kw.pop("k")
    example = torch.zeros(2, n_in, dtype=torch.float32)
    return export_pte(RawLutham(kw, k).eval(), (example,), path)


def _rust(x: np.ndarray, layer: dict):
    core = pytest.importorskip("sharekan._core")
    return core.lutham_forward(np.ascontiguousarray(x, dtype=np.float32), **layer)


CASES = [
    # (code dtype, K, weight kind, edge bias, out bias, base, k, G, uniform grid)
    (np.uint8, 256, "int8", True, True, True, 3, 10, True),
    (np.uint8, 37, "f32", False, True, True, 3, 5, False),
    (np.int16, 300, "int8", True, False, True, 2, 4, False),
    (np.int32, 5, "f32", True, True, False, 1, 7, False),
    (np.int16, 64, "int8", False, False, False, 5, 3, True),  # generic-order path
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0].__name__}-K{c[1]}-{c[2]}-k{c[6]}"
                                             for c in CASES])
def test_kernel_matches_oracle_and_rust(runtime, tmp_path, case):
    code_dtype, n_codes, kind, eb, ob, base, k, g, uniform = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    n_in, n_out = 19, 11
    layer = random_layer(rng, n_in, n_out, g, k, n_codes, code_dtype=code_dtype,
                         weight_kind=kind, with_edge_bias=eb, with_out_bias=ob,
                         with_base=base, uniform=uniform)
    path = _export(layer, tmp_path / "layer.pte", n_in)
    method = runtime.load_program(str(path)).load_method("forward")
    for batch in BATCHES:
        x = grid_inputs(rng, layer["grid"], batch, outside=0.3).astype(np.float32)
        got = method.execute([torch.from_numpy(x)])[0].numpy()
        want = oracle.lutham_dense(x, **layer)
        scale = np.abs(want).max() + 1e-6
        assert got.shape == (batch, n_out)
        np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=1e-4)
        rust = _rust(x, layer)
        np.testing.assert_allclose(got, rust, atol=2e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("k", [0, 1, 3, 5])  # compile-time orders and the generic one
def test_kernel_shared_grid_row_equals_repeated_grid(runtime, tmp_path, k):
    """grid (1, NG): the same knots for every input. The kernel gives the same bits as with
    the repeated (n_in, NG) grid in both strategies, agrees with the Rust evaluator (which
    gives the same bits for both shapes too) and the oracle, the .pte is smaller, and the
    standalone runner agrees with the in-process runtime."""
    rng = np.random.default_rng(40 + k)
    n_in, n_out = 21, 13
    layer = random_layer(rng, n_in, n_out, 6, k, 50, code_dtype=np.uint8,
                         weight_kind="int8", uniform=True)
    shared = {**layer, "grid": np.ascontiguousarray(layer["grid"][:1])}
    full_path = _export(layer, tmp_path / "full.pte", n_in)
    row_path = _export(shared, tmp_path / "row.pte", n_in)
    saved = (n_in - 1) * layer["grid"].shape[1] * 4
    assert full_path.stat().st_size - row_path.stat().st_size >= saved - 64
    full = runtime.load_program(str(full_path)).load_method("forward")
    row = runtime.load_program(str(row_path)).load_method("forward")
    for batch in BATCHES:
        x = grid_inputs(rng, layer["grid"], batch, outside=0.3).astype(np.float32)
        x[-1, 0] = np.nan
        got = row.execute([torch.from_numpy(x)])[0].numpy()
        np.testing.assert_array_equal(got, full.execute([torch.from_numpy(x)])[0].numpy())
        rust = _rust(x, shared)
        np.testing.assert_array_equal(rust, _rust(x, layer))
        want = oracle.lutham_dense(x, **shared)  # the NaN row is NaN everywhere (SiLU)
        assert np.isnan(got[-1]).all() and np.isnan(want[-1]).all()
        scale = np.abs(want[:-1]).max(initial=0.0) + 1e-6
        np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=1e-4)
        np.testing.assert_allclose(got, rust, atol=2e-5 * scale, rtol=1e-4)
    runner = lutham.build_runner()
    for batch in (1, 16):
        x = grid_inputs(rng, layer["grid"], batch).astype(np.float32)
        _write_runner_input(tmp_path / "in.txt", x)
        res = subprocess.run([str(runner), str(row_path), str(tmp_path / "in.txt")],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        (from_runner,) = _parse_runner_output(res.stdout)
        np.testing.assert_array_equal(from_runner, row.execute([torch.from_numpy(x)])[0].numpy())


def test_kernel_far_outside_and_nan_inputs(runtime, tmp_path):
    rng = np.random.default_rng(5)
    layer = random_layer(rng, 9, 6, 5, 3, 16, code_dtype=np.uint8, weight_kind="int8",
                         with_base=False)
    path = _export(layer, tmp_path / "nan.pte", 9)
    method = runtime.load_program(str(path)).load_method("forward")
    for batch in (1, 13):
        x = rng.uniform(-1e6, 1e6, size=(batch, 9)).astype(np.float32)
        x[0, :3] = [np.nan, np.inf, -np.inf]
        got = method.execute([torch.from_numpy(x)])[0].numpy()
        want = oracle.lutham_dense(x, **layer)  # outside / non-finite: zero basis
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _write_runner_input(path, x: np.ndarray) -> None:
    with open(path, "w") as fh:
        fh.write("# lutham_runner input\n")
        fh.write(f"tensor f32 {x.ndim} {' '.join(map(str, x.shape))}\n")
        fh.write(" ".join(f"{v:.9g}" for v in x.reshape(-1)) + "\n")


def _parse_runner_output(text: str) -> list[np.ndarray]:
    outs, lines = [], text.strip().splitlines()
    i = 0
    while i < len(lines):
        head = lines[i].split()
        assert head[0] == "output" and head[2] == "f32", lines[i]
        ndim = int(head[3])
        shape = tuple(int(d) for d in head[4:4 + ndim])
        rows = int(np.prod(shape[:-1])) if ndim > 1 else 1
        vals = " ".join(lines[i + 1:i + 1 + rows]).split()
        outs.append(np.array([float(v) for v in vals], dtype=np.float32).reshape(shape))
        i += 1 + rows
    return outs


def test_standalone_runner_matches(runtime, tmp_path):
    runner = lutham.build_runner()
    rng = np.random.default_rng(11)
    layer = random_layer(rng, 23, 7, 6, 3, 40, code_dtype=np.uint8, weight_kind="int8")
    path = _export(layer, tmp_path / "runner.pte", 23)
    for batch in (1, 5, 16):
        x = grid_inputs(rng, layer["grid"], batch).astype(np.float32)
        _write_runner_input(tmp_path / "in.txt", x)
        res = subprocess.run([str(runner), str(path), str(tmp_path / "in.txt")],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        (got,) = _parse_runner_output(res.stdout)
        want = oracle.lutham_dense(x, **layer)
        np.testing.assert_allclose(got, want, atol=2e-5 * (np.abs(want).max() + 1e-6),
                                   rtol=1e-4)
        in_process = runtime.load_program(str(path)).load_method("forward").execute(
            [torch.from_numpy(x)])[0].numpy()
        np.testing.assert_array_equal(got, in_process)  # %.9g round-trips float32
    # a wrong input shape: the kernel check fails, the runner reports it (exit 3)
    _write_runner_input(tmp_path / "bad.txt", np.zeros((2, 22), dtype=np.float32))
    res = subprocess.run([str(runner), str(path), str(tmp_path / "bad.txt")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "0x12" in res.stderr, res.stderr


def test_missing_kernel_library_is_operator_missing(tmp_path):
    rng = np.random.default_rng(3)
    layer = random_layer(rng, 4, 3, 5, 3, 8, code_dtype=np.uint8)
    path = _export(layer, tmp_path / "missing.pte", 4)
    # A fresh interpreter that never loads the kernel library.
    code = textwrap.dedent(f"""
        import re, sys
        from executorch.runtime import Runtime
        program = Runtime.get().load_program({str(path)!r})
        try:
            program.load_method("forward")
        except RuntimeError as exc:
            msg = str(exc)
            # Error::OperatorMissing = 0x14 (printed as "0x14" or "0x:14")
            ok = bool(re.search(r"0x:?14|OperatorMissing|Missing operator", msg))
            print("ERROR", msg)
            sys.exit(0 if ok else 5)
        sys.exit(4)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stdout + res.stderr


def _bad_variants(rng):
    n_in, n_out, g, k = 6, 5, 5, 3
    base = random_layer(rng, n_in, n_out, g, k, 12, code_dtype=np.uint8, weight_kind="int8")
    out = {}

    def variant(name, **changes):
        v = dict(base)
        v.update(changes)
        out[name] = v

    codes = base["codes"].copy()
    codes[2, 3] = 12  # == K
    variant("code_eq_K_u8", codes=codes)
    variant("code_negative_i16", codes=np.where(base["codes"] == base["codes"][0, 0], -1,
                                                base["codes"]).astype(np.int16))
    variant("code_huge_i32", codes=np.full((n_in, n_out), 2**31 - 1, dtype=np.int32))
    variant("codes_int64", codes=base["codes"].astype(np.int64))
    variant("gains_float64", gains=base["gains"].astype(np.float64))
    variant("gains_int16", gains=base["gains"].astype(np.int16))
    variant("grid_float64", grid=base["grid"].astype(np.float64))
    variant("k_inconsistent", k=2)
    variant("k_negative", k=-1)
    variant("k_huge", k=40)
    variant("grid_not_increasing", grid=base["grid"][:, ::-1].copy())
    variant("grid_two_rows", grid=base["grid"][:2].copy())  # neither n_in rows nor one
    variant("grid_shared_not_increasing", grid=base["grid"][:1, ::-1].copy())
    variant("grid_nan", grid=np.where(np.arange(base["grid"].shape[1]) == 4, np.nan,
                                      base["grid"]).astype(np.float32))
    variant("gains_shape", gains=base["gains"][:, :-1].copy())
    variant("scale_shape", gain_scale=np.ones(n_out + 1, dtype=np.float32))
    variant("scale_without_bias", edge_bias=None)
    variant("codebook_1d", codebook=base["codebook"].reshape(-1).copy())
    variant("codebook_wrong_width", codebook=np.zeros((12, g + k + 1), dtype=np.float32))
    variant("x_like_codebook_int8", codebook=base["codebook"].astype(np.int8))
    return base, out


def test_bad_inputs_give_error_status_and_runtime_stays_usable(runtime, tmp_path):
    rng = np.random.default_rng(17)
    base, variants = _bad_variants(rng)
    good_path = _export(base, tmp_path / "good.pte", 6)
    good = runtime.load_program(str(good_path)).load_method("forward")
    x = grid_inputs(rng, base["grid"], 3).astype(np.float32)
    want = oracle.lutham_dense(x, **base)
    for name, layer in variants.items():
        path = _export(layer, tmp_path / f"{name}.pte", 6)
        method = runtime.load_program(str(path)).load_method("forward")
        for batch in (1, 13):  # both strategies
            xb = np.resize(x, (batch, 6)).astype(np.float32)
            with pytest.raises(RuntimeError, match="0x12"):
                method.execute([torch.from_numpy(xb)])
        got = good.execute([torch.from_numpy(x)])[0].numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=name)
    # wrong x width at run time (the program's batch is dynamic, n_in is not checked by
    # the runtime): the kernel rejects it
    with pytest.raises(RuntimeError, match="0x12"):
        good.execute([torch.zeros(2, 5)])
    np.testing.assert_allclose(good.execute([torch.from_numpy(x)])[0].numpy(), want,
                               atol=1e-4, rtol=1e-4)


def test_load_library_is_idempotent_and_refuses_a_second_library(runtime, tmp_path):
    first = lutham.load_library()
    assert lutham.load_library() == first == lutham.loaded_library()
    other = tmp_path / "libother.so"
    other.write_bytes(first.read_bytes())
    with pytest.raises(LuthamBuildError, match="already loaded"):
        lutham.load_library(other)


def test_build_errors_are_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "definitely-not-a-compiler-xyz")
    monkeypatch.setenv("SHAREKAN_CACHE_DIR", str(tmp_path))
    with pytest.raises(LuthamBuildError, match="compiler"):
        lutham.build_library()
    monkeypatch.delenv("CXX")
    with monkeypatch.context() as m:  # executorch not importable
        m.setitem(sys.modules, "executorch", None)
        with pytest.raises(LuthamBuildError, match="executorch is not installed"):
            lutham.build_library()
    monkeypatch.setenv("SHAREKAN_LUTHAM_SOURCE", str(tmp_path / "nowhere"))
    monkeypatch.setattr(lutham, "__file__", str(tmp_path / "pkg" / "lutham.py"))
    with pytest.raises(LuthamBuildError, match="not found"):
        lutham.kernel_source()


@pytest.mark.parametrize("seed", range(6))
def test_kernel_random_small_layers(runtime, tmp_path, seed):
    """Odd sizes: n_in or n_out of 1, K = 1, order 0..4, every optional term on or off."""
    rng = np.random.default_rng(1000 + seed)
    n_in, n_out = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    k = int(rng.integers(0, 5))
    g = int(rng.integers(1, 7))
    n_codes = int(rng.choice([1, 2, 7, 256, 1000]))
    code_dtype = np.uint8 if n_codes <= 256 else rng.choice([np.int16, np.int32])
    layer = random_layer(rng, n_in, n_out, g, k, n_codes, code_dtype=code_dtype,
                         weight_kind=str(rng.choice(["int8", "f32"])),
                         with_edge_bias=bool(rng.integers(2)),
                         with_out_bias=bool(rng.integers(2)), with_base=bool(rng.integers(2)),
                         uniform=bool(rng.integers(2)))
    method = runtime.load_program(str(_export(layer, tmp_path / "s.pte", n_in))).load_method(
        "forward")
    for batch in (1, 5, 12, 67):
        x = grid_inputs(rng, layer["grid"], batch, outside=0.4).astype(np.float32)
        got = method.execute([torch.from_numpy(x)])[0].numpy()
        want = oracle.lutham_dense(x, **layer)
        np.testing.assert_allclose(got, want, atol=3e-5 * (np.abs(want).max() + 1e-6),
                                   rtol=1e-4)


# ---- dense bases: RBF (FastKAN) and Chebyshev (ChebyKAN); GELU base (TorchKAN) ----------


def dense_layer(rng, n_in, n_out, m, n_codes, basis, *, shared=False, code_dtype=np.uint8,
                weight_kind="f32", with_edge_bias=True, with_out_bias=True, with_base=True,
                base_act=0, h=0.57):
    """A random_layer with an RBF (basis 1: centres (n_in or 1, M), width h) or Chebyshev
    (basis 2: grid (1, 2) zeros, not read) basis of M functions."""
    layer = random_layer(rng, n_in, n_out, max(m - 3, 1), 3, n_codes, code_dtype=code_dtype,
                         weight_kind=weight_kind, with_edge_bias=with_edge_bias,
                         with_out_bias=with_out_bias, with_base=with_base)
    layer["codebook"] = rng.normal(size=(n_codes, m)).astype(np.float32)
    if basis == 1:
        rows = 1 if shared else n_in
        c = np.sort(rng.uniform(-2, 2, size=(rows, m)), axis=1)
        layer["grid"] = np.ascontiguousarray(c, dtype=np.float32)
    else:
        layer["grid"] = np.zeros((1, 2), dtype=np.float32)
    layer.update(k=0, basis=basis, h=float(np.float32(h)), base_act=base_act)
    return layer


DENSE_CASES = [
    # (basis, shared centres, code dtype, K, weight kind, edge bias, base, base_act, M)
    (1, False, np.uint8, 37, "f32", True, True, 0, 8),
    (1, True, np.uint8, 256, "int8", True, True, 0, 5),
    (1, False, np.int16, 300, "int8", False, False, 0, 1),
    (2, True, np.uint8, 16, "f32", False, True, 1, 6),
    (2, True, np.int32, 5, "int8", True, True, 0, 1),
    (2, True, np.uint8, 200, "int8", True, False, 0, 9),
]


@pytest.mark.parametrize("case", DENSE_CASES, ids=[
    f"{'rbf' if c[0] == 1 else 'cheb'}-{'shared' if c[1] else 'rows'}-{c[2].__name__}-"
    f"K{c[3]}-{c[4]}-act{c[7]}-M{c[8]}" for c in DENSE_CASES])
def test_kernel_dense_bases_match_oracle_and_rust(runtime, tmp_path, case):
    basis, shared, code_dtype, n_codes, kind, eb, base, act, m = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    n_in, n_out = 13, 7
    layer = dense_layer(rng, n_in, n_out, m, n_codes, basis, shared=shared,
                        code_dtype=code_dtype, weight_kind=kind, with_edge_bias=eb,
                        with_base=base, base_act=act)
    method = runtime.load_program(str(_export(layer, tmp_path / "d.pte", n_in))).load_method(
        "forward")
    for batch in BATCHES:
        x = rng.normal(scale=1.5, size=(batch, n_in)).astype(np.float32)
        if batch > 2:
            x[1, :3] = [np.inf, -np.inf, 40.0]
        got = method.execute([torch.from_numpy(x)])[0].numpy()
        want = oracle.lutham_dense(x, **layer)
        scale = np.abs(want[np.isfinite(want)]).max(initial=0.0) + 1e-6
        assert got.shape == (batch, n_out)
        np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=1e-4)
        np.testing.assert_allclose(got, _rust(x, layer), atol=2e-5 * scale, rtol=1e-4)
        # the eager torch op (Rust) agrees too
        eager = RawLutham({n: v for n, v in layer.items() if n != "k"}, 0)(torch.from_numpy(x))
        np.testing.assert_allclose(eager.numpy(), got, atol=2e-5 * scale, rtol=1e-4)
        # a NaN input gives NaN rows in all three
        if batch == 3:
            xn = x.copy()
            xn[2, 0] = np.nan
            gn = method.execute([torch.from_numpy(xn)])[0].numpy()
            assert np.isnan(gn[2]).all() and np.isnan(_rust(xn, layer)[2]).all()
            np.testing.assert_allclose(gn[:2], got[:2], atol=2e-5 * scale, rtol=1e-4)


def test_kernel_dense_bad_arguments(runtime, tmp_path):
    rng = np.random.default_rng(23)
    good = dense_layer(rng, 5, 4, 6, 12, 1)
    cheb = dense_layer(rng, 5, 4, 6, 12, 2)
    bad = {
        "basis_3": {**good, "basis": 3},
        "basis_negative": {**good, "basis": -1},
        "base_act_2": {**good, "base_act": 2},
        "h_zero": {**good, "h": 0.0},
        "h_negative": {**good, "h": -1.0},
        "h_nan": {**good, "h": float("nan")},
        "h_inf": {**good, "h": float("inf")},
        "h_huge": {**good, "h": 1e300},
        "h_tiny": {**good, "h": 1e-300},
        # a float32 subnormal: non-zero, but its reciprocal overflows float32 (both paths refuse)
        "h_subnormal": {**good, "h": 1e-39},
        "centres_wrong_width": {**good, "grid": good["grid"][:, :-1].copy()},
        "centres_two_rows": {**good, "grid": good["grid"][:2].copy()},
        "centres_nan": {**good, "grid": np.where(good["grid"] > 0, np.nan,
                                                 good["grid"]).astype(np.float32)},
        "cheb_grid_float64": {**cheb, "grid": cheb["grid"].astype(np.float64)},
    }
    x = rng.normal(size=(3, 5)).astype(np.float32)
    good_m = runtime.load_program(str(_export(good, tmp_path / "g.pte", 5))).load_method(
        "forward")
    want = good_m.execute([torch.from_numpy(x)])[0].numpy()
    core = pytest.importorskip("sharekan._core")
    from sharekan.errors import InvalidInputError
    for name, layer in bad.items():
        method = runtime.load_program(str(_export(layer, tmp_path / f"{name}.pte", 5))
                                      ).load_method("forward")
        for batch in (1, 13):
            with pytest.raises(RuntimeError, match="0x12"):
                method.execute([torch.from_numpy(np.resize(x, (batch, 5)))])
        if name != "cheb_grid_float64":
            with pytest.raises((InvalidInputError, TypeError, ValueError)):
                core.lutham_forward(x, **layer)
        np.testing.assert_array_equal(good_m.execute([torch.from_numpy(x)])[0].numpy(), want)
