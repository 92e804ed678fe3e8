"""Hardening of the LUTHAM C++ kernel and the standalone runner.

Kernel: non-finite parameters, extreme knot grids and the spline-order cap give
InvalidArgument (0x12) with a message naming the argument, and the runtime stays usable;
non-finite parameters are rejected by the Rust evaluator too; a layer whose decoded tiles
would exceed the scratch cap runs by projection tables. Runner: malformed
input files (huge headers, too many dims, truncated or junk values, oversized files) and
bad --repeat values exit with status 1 and a message, never a signal, and without
allocating what the header asks for; the libFuzzer corpus (tests/fuzz_corpus_runner) is
replayed through the real runner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch.runtime")

import oracle  # noqa: E402
from conftest import grid_inputs, random_layer  # noqa: E402
from extreme_grids import ROW, VALID_ROWS, grid_layer, invalid_grids, rows  # noqa: E402
from test_lutham_kernel import (  # noqa: E402, F401 (runtime: the module's fixture)
    BUFFERS,
    _export,
    _parse_runner_output,
    _rust,
    _write_runner_input,
    runtime,
)

from sharekan import lutham  # noqa: E402
from sharekan.errors import LuthamBuildError  # noqa: E402
from sharekan.export import export_pte  # noqa: E402
from sharekan.torch import ops  # noqa: E402

LUTHAM_DIR = Path(__file__).resolve().parent.parent / "lutham"
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus_runner"
# ASan reserves terabytes of shadow memory: no data-size limit on sanitizer builds.
SANITIZED = os.environ.get("SHAREKAN_LUTHAM_SANITIZE", "") == "1"
N_IN, N_OUT = 3, 4  # the runner tests' program (the corpus' ok_* seeds have 3 columns)


@pytest.fixture(scope="module")
def runner():
    try:
        return lutham.build_runner()
    except LuthamBuildError as exc:
        pytest.skip(f"LUTHAM runner unavailable: {exc}")


def _run(runner, pte, inp, *args, data_limit_mib: int | None = None):
    """Runs lutham_runner; with data_limit_mib, under RLIMIT_DATA (ulimit -d) so that an
    allocation of what a malformed header asks for fails (and aborted the old runner)."""
    cmd = [str(runner), str(pte), str(inp), *map(str, args)]
    if data_limit_mib is not None and not SANITIZED:
        cmd = ["bash", "-c", f'ulimit -d {data_limit_mib * 1024} && exec "$0" "$@"', *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, errors="replace")
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-2000:]}"
    return res


class LuthamOnInputs(torch.nn.Module):
    """The operator with every tensor a program input (static shapes): one export serves
    every parameter variant of the same shapes, and the same loaded method must keep
    working after a variant fails."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = int(k)

    def forward(self, x, *tensors):
        return torch.ops.sharekan.lutham(x, *tensors, self.k)


def _tensors(layer: dict) -> list:
    return [ops.absent() if layer.get(n) is None
            else torch.from_numpy(np.ascontiguousarray(layer[n])) for n in BUFFERS]


def _inputs_program(runtime, layer: dict, batch: int, path):
    n_in = layer["codes"].shape[0]
    example = (torch.zeros(batch, n_in), *_tensors(layer))
    export_pte(LuthamOnInputs(layer["k"]).eval(), example, path, dynamic_batch=False)
    return runtime.load_program(str(path)).load_method("forward")


def _run_kernel(method, x, layer) -> np.ndarray:
    return method.execute([torch.from_numpy(x), *_tensors(layer)])[0].numpy()


def _expect_invalid(method, x, layer, capfd, message: str) -> None:
    """InvalidArgument (0x12), and the kernel's message (ET_LOG on stderr) contains
    `message`."""
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="0x12"):
        _run_kernel(method, x, layer)
    err = capfd.readouterr().err
    assert f"lutham: {message}" in err, err


@pytest.fixture(scope="module")
def good_program(runtime, tmp_path_factory):
    """A small valid layer (3 inputs, 4 outputs, every optional term, float weights and
    scales) exported with its tensors as constants (for the runner)."""
    rng = np.random.default_rng(71)
    layer = random_layer(rng, N_IN, N_OUT, 5, 3, 8, code_dtype=np.uint8, weight_kind="f32")
    for name in ("gain_scale", "edge_bias_scale", "base_scale"):
        layer[name] = rng.uniform(0.5, 2.0, size=N_OUT).astype(np.float32)
    path = _export(layer, tmp_path_factory.mktemp("good") / "good.pte", N_IN)
    method = runtime.load_program(str(path)).load_method("forward")
    return {"layer": layer, "path": path, "method": method}


# ---- kernel: non-finite parameters (same error-vs-error behaviour as Rust) -----------------


NON_FINITE = [  # (argument, flat index, value)
    ("codebook", 9, np.nan),
    ("codebook", 0, np.inf),
    ("gains", 5, np.nan),
    ("edge_bias", 11, -np.inf),
    ("base_weight", 0, np.nan),
    ("gain_scale", 3, np.inf),
    ("edge_bias_scale", 1, np.nan),
    ("base_scale", 2, -np.inf),
    ("out_bias", 0, np.nan),
]


def test_non_finite_parameters_rejected_like_rust(runtime, good_program, tmp_path, capfd):
    from sharekan.errors import NonFiniteError

    base = good_program["layer"]
    rng = np.random.default_rng(72)
    x = grid_inputs(rng, base["grid"], 13).astype(np.float32)
    method = _inputs_program(runtime, base, 13, tmp_path / "inputs.pte")
    want = _run_kernel(method, x, base)
    # the finite layer agrees with the Rust evaluator, so the variants differ only there
    np.testing.assert_allclose(want, _rust(x, base), rtol=1e-4, atol=1e-4)
    for arg, index, value in NON_FINITE:
        bad = base[arg].copy()
        bad.reshape(-1)[index] = value
        layer = {**base, arg: bad}
        with pytest.raises(NonFiniteError, match=arg):
            _rust(x, layer)
        where = (f"[{index}]" if bad.ndim == 1
                 else f"[{index // bad.shape[1]}, {index % bad.shape[1]}]")
        _expect_invalid(method, x, layer, capfd, f"{arg}{where} = {value} is not finite")
        np.testing.assert_array_equal(_run_kernel(method, x, base), want)  # still usable


# ---- kernel: knot grids whose spacings break float32 --------------------------------------


def _check_against_references(got, x, layer, name):
    assert np.isfinite(got).all(), name
    want = oracle.lutham_dense(x, **layer)
    scale = np.abs(want).max() + 1e-6
    np.testing.assert_allclose(got, want, atol=3e-5 * scale, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(got, _rust(x, layer), atol=3e-5 * scale, rtol=1e-4,
                               err_msg=name)


def test_extreme_knot_grids(runtime, tmp_path, capfd):
    """k = 3, 12 knots per input (tests/extreme_grids.py, the Rust evaluator's cases too),
    both strategies (batch 1: divisions, batch 13: knot reciprocals). Rejected: a subnormal
    spacing (1 / 1e-39 overflows float32), in every row or in one; a 3-gap span of 5.6e38.
    Accepted just inside the rule, finite and equal to the oracle and Rust (f64 basis):
    spacings of 1e-30 (reciprocal 1e30), knots +-1e38 (widest 3-gap span 5.5e37)."""
    rng = np.random.default_rng(8)
    good = grid_layer(rng, ROW)
    for batch in (1, 13):
        method = _inputs_program(runtime, good, batch, tmp_path / f"grid{batch}.pte")
        for case in invalid_grids():
            pair = f"t[{case.hi}] - t[{case.lo}]"
            message = (f"grid row {case.row}: knot spacing too small for float32: 1 / ({pair})"
                       if case.kind == "spacing" else
                       f"grid row {case.row}: knot range too wide for float32: {pair}")
            _expect_invalid(method, np.zeros((batch, N_IN), np.float32),
                            {**good, "grid": rows(case.grid)}, capfd, message)
        for name, grid in VALID_ROWS.items():
            layer = {**good, "grid": rows(grid)}
            g = layer["grid"].astype(np.float64)
            x = rng.uniform(g[:, 0], g[:, -1], size=(batch, N_IN)).astype(np.float32)
            _check_against_references(_run_kernel(method, x, layer), x, layer, name)


def test_knot_spacing_rule_depends_on_the_order(runtime, tmp_path, capfd):
    """The rule covers the divisors the recursion uses: order 1 rejects subnormal
    spacings too; order 0 divides by nothing and accepts them (finite, as the references)."""
    rng = np.random.default_rng(10)
    subnormal = np.arange(8) * 1e-39
    k1 = grid_layer(rng, subnormal, 1)
    method = _inputs_program(runtime, k1, 13, tmp_path / "k1.pte")
    _expect_invalid(method, np.zeros((13, N_IN), np.float32), k1, capfd,
                    "grid row 0: knot spacing too small")
    k0 = grid_layer(rng, subnormal, 0)
    method = runtime.load_program(str(_export(k0, tmp_path / "k0.pte", N_IN))).load_method(
        "forward")
    for batch in (1, 13):
        x = rng.uniform(0.0, 7e-39, size=(batch, N_IN)).astype(np.float32)
        got = method.execute([torch.from_numpy(x)])[0].numpy()
        _check_against_references(got, x, k0, "order 0")


# ---- kernel: spline-order cap and scratch cap -------------------------------------------


def test_spline_order_cap(runtime, tmp_path, capfd):
    """k = 15 (kMaxSplineOrder; G = 2: M = 17, 2k + G + 1 = 33 knots) runs and matches the
    oracle and Rust in both strategies; k = 16 is rejected."""
    rng = np.random.default_rng(15)
    layer = random_layer(rng, N_IN, N_OUT, 2, 15, 8, code_dtype=np.uint8, weight_kind="int8",
                         uniform=True)
    method = runtime.load_program(str(_export(layer, tmp_path / "k15.pte", N_IN))).load_method(
        "forward")
    for batch in (1, 13):
        x = grid_inputs(rng, layer["grid"], batch).astype(np.float32)
        got = method.execute([torch.from_numpy(x)])[0].numpy()
        _check_against_references(got, x, layer, "k=15")
    k16 = random_layer(rng, N_IN, N_OUT, 1, 16, 8, code_dtype=np.uint8, weight_kind="int8")
    method = _inputs_program(runtime, k16, 13, tmp_path / "k16.pte")
    _expect_invalid(method, np.zeros((13, N_IN), np.float32), k16, capfd,
                    "spline order k=16 outside [0, 15]")


def test_decoded_block_over_scratch_cap_uses_projection(runtime, runner, tmp_path):
    """M = n_out = 2^14: the decoded tile strategy (batch >= 12) would need an M x n_out
    float block of 1 GiB, over the kernel's scratch cap; the kernel runs the projection
    strategy instead (K + 3 n_out floats). Same bits as row by row, and exact here (order 0:
    one basis value 1.0, no bias terms): y[b, o] = gains[o] * codebook[codes[o], span(x_b)].
    Through the runner under a 512 MiB data limit (an attempt to allocate the block fails)."""
    rng = np.random.default_rng(14)
    m = n_out = 1 << 14
    layer = {
        "grid": np.linspace(-1.0, 1.0, m + 1, dtype=np.float32).reshape(1, m + 1),
        "k": 0,
        "codebook": rng.normal(size=(2, m)).astype(np.float32),
        "codes": rng.integers(0, 2, size=(1, n_out)).astype(np.uint8),
        "gains": rng.normal(size=(1, n_out)).astype(np.float32),
    }
    path = _export(layer, tmp_path / "wide.pte", 1)
    method = runtime.load_program(str(path)).load_method("forward")
    x = rng.uniform(-1.0, 1.0, size=(13, 1)).astype(np.float32)
    got = method.execute([torch.from_numpy(x)])[0].numpy()
    span = np.searchsorted(layer["grid"][0], x[:, 0], side="right") - 1
    want = layer["gains"][0][None, :] * layer["codebook"][layer["codes"][0][None, :],
                                                         span[:, None]]
    np.testing.assert_array_equal(got, want)
    for b in (0, 12):
        row = method.execute([torch.from_numpy(x[b:b + 1])])[0].numpy()
        np.testing.assert_array_equal(row[0], got[b])
    _write_runner_input(tmp_path / "x.txt", x)
    res = _run(runner, path, tmp_path / "x.txt", data_limit_mib=512)
    assert res.returncode == 0, res.stderr[-2000:]
    np.testing.assert_array_equal(_parse_runner_output(res.stdout)[0], want)


# ---- runner: input-file limits, --repeat ------------------------------------------------


RUNNER_INPUT_ERRORS = {  # seed file -> expected message part
    "bad_header_asks_4gib.txt": "declares 1073741824 values but the 5 bytes left in the "
                                "file hold at most 2",
    "bad_header_asks_6gb.txt": "declares 1600000000 values",
    "bad_dims_product_overflow.txt": "product of the dimensions exceeds 2147483647",
    "bad_empty_with_huge_extent.txt": "product of the dimensions exceeds 2147483647",
    "bad_ndim_9.txt": "NDIM must be an integer in [0, 8], got '9'",
    "bad_negative_dim.txt": "dimension 0 must be an integer in [0, 2147483647], got '-1'",
    "bad_dim_over_int32.txt": "dimension 1 must be an integer in [0, 2147483647]",
    "bad_dim_not_int64.txt": "dimension 1 must be an integer",
    "bad_truncated.txt": "file ends after 5 of 6 values",
    "bad_float_suffix.txt": "value 1 is not a float: '2.5x'",
    "bad_nul_in_value.txt": "value 1 is not a float: '2?3'",
    "bad_dtype.txt": "only f32 tensors are supported, got 'f64'",
    "bad_tensor_only.txt": "file ends before the dtype",
    "bad_keyword.txt": "expected 'tensor', got 'tensors'",
}


def test_runner_rejects_malformed_input_files(runner, good_program, tmp_path):
    """Each malformed file: exit 1, `error: FILE: <message>`, no signal, and (outside
    sanitizer builds) under a 256 MiB data limit: nothing sized from the header."""
    seeds = CORPUS / "seeds"
    assert set(RUNNER_INPUT_ERRORS) == {p.name for p in seeds.glob("bad_*")}
    for name, message in RUNNER_INPUT_ERRORS.items():
        res = _run(runner, good_program["path"], seeds / name, data_limit_mib=256)
        assert res.returncode == 1, (name, res.stderr)
        assert f"error: {seeds / name}: " in res.stderr and message in res.stderr, (
            name, res.stderr)
    # the file itself: too large (sparse, read nothing), a directory, missing
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        fh.truncate((256 << 20) + 1)
    for path, message in ((big, "input file larger than 256 MiB"),
                          (tmp_path, "is a directory"),
                          (tmp_path / "missing.txt", "cannot open input file")):
        res = _run(runner, good_program["path"], path, data_limit_mib=256)
        assert res.returncode == 1 and message in res.stderr, res.stderr


def test_runner_reads_valid_inputs(runner, good_program, tmp_path):
    """Comments, CRLF, tabs, nan / inf, hex floats, no final newline and an empty batch
    parse as documented and run (same bits as the in-process runtime)."""
    seeds = CORPUS / "seeds"
    method = good_program["method"]
    expected = {
        "ok_basic.txt": [[0.1, 0.2, 0.3], [-0.5, 0.0, 1.0]],
        "ok_comments_crlf_nonfinite.txt": [[np.nan, np.inf, -np.inf], [0.25, -1.5e-3, 2.0],
                                           [1e-45, 3.4028235e38, -0.0]],
        "ok_no_final_newline.txt": [[1.0, 2.0, 3.0]],
        "ok_empty_batch.txt": np.zeros((0, N_IN)),
    }
    assert set(expected) == {p.name for p in seeds.glob("ok_*")}
    for name, rows in expected.items():
        x = np.asarray(rows, dtype=np.float32).reshape(-1, N_IN)
        res = _run(runner, good_program["path"], seeds / name)
        assert res.returncode == 0, (name, res.stderr)
        if len(x) == 0:
            assert res.stdout.split() == ["output", "0", "f32", "2", "0", str(N_OUT)]
            continue
        (got,) = _parse_runner_output(res.stdout)
        np.testing.assert_array_equal(got, method.execute([torch.from_numpy(x)])[0].numpy(),
                                      err_msg=name)


def test_runner_repeat_bounds(runner, good_program, tmp_path):
    inp = CORPUS / "seeds" / "ok_basic.txt"
    pte = good_program["path"]
    for value in ("1000001", "-1", "1e6", "abc", "99999999999999999999", ""):
        res = _run(runner, pte, inp, "--repeat", value, data_limit_mib=256)
        assert res.returncode == 1, (value, res.stderr)
        assert "error: --repeat must be an integer in [0, 1000000]" in res.stderr, res.stderr
    res = _run(runner, pte, inp, "--repeat")
    assert res.returncode == 1 and "error: --repeat needs a value" in res.stderr
    res = _run(runner, pte, inp, "--repeat", "3")
    assert res.returncode == 0 and "timing median_us=" in res.stderr and "n=3" in res.stderr


# ---- fuzzing corpus ----------------------------------------------------------------------


def test_fuzz_crash_inputs_fail_cleanly_in_the_runner(runner, good_program):
    """Every crash input the fuzzer found (tests/fuzz_corpus_runner/crashes): exit 1 with a
    message, never a signal, under a 256 MiB data limit."""
    crashes = sorted((CORPUS / "crashes").iterdir())
    assert crashes, "the corpus keeps at least the old parser's out-of-memory input"
    for path in crashes:
        res = _run(runner, good_program["path"], path, data_limit_mib=256)
        assert res.returncode == 1 and res.stderr.startswith("error: "), (path.name,
                                                                          res.stderr)


def test_fuzz_harness_replays_corpus(tmp_path):
    """The libFuzzer harness (lutham/fuzz_input_file.cpp) builds and passes its contract
    checks on the seed corpus and the crash inputs (`make -C lutham fuzz-regress`)."""
    if shutil.which("clang++") is None or shutil.which("make") is None:
        pytest.skip("clang++ / make not installed (libFuzzer harness)")
    # a preloaded GCC libasan (sanitizer runs of this suite) clashes with libFuzzer's own
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    res = subprocess.run(["make", "-C", str(LUTHAM_DIR), "fuzz-regress",
                          f"FUZZ_DIR={tmp_path}"], capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    n_files = len(list((CORPUS / "seeds").iterdir())) + len(list((CORPUS / "crashes").iterdir()))
    assert res.stderr.count("Executed ") == n_files, res.stderr[-2000:]
