"""Every path of the C++ kernel (projection rows, projection column ranges, decoded tiles
split over column ranges and row parts) against the Rust evaluator and the NumPy oracle,
and bit-identical for any split of the work between threads.

The kernel splits each call into `SHAREKAN_LUTHAM_THREADS` work units (default: the
ExecuTorch threadpool's thread count); the standalone runner runs a program in one process
per setting, and `--threads 1` disables the pool. Batches cover both strategies
(projection tables below the cost model's crossover, decoded tiles of 128 rows above) with
odd sizes and several tiles; inputs include points outside the grid and exactly on knots;
codebooks of 1, 2, 256 and 4096 words with every code dtype that holds them.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch.runtime")

import oracle  # noqa: E402
from conftest import grid_inputs, random_layer  # noqa: E402
from test_lutham_kernel import (  # noqa: E402
    RawLutham,
    _parse_runner_output,
    _write_runner_input,
)

from sharekan import lutham  # noqa: E402
from sharekan.errors import LuthamBuildError  # noqa: E402
from sharekan.export import export_pte  # noqa: E402

core = pytest.importorskip("sharekan._core")

BATCHES = (1, 2, 3, 11, 12, 13, 127, 129, 257, 1030)
UNITS = ("1", "2", "3", "7")  # work units per call (column ranges / row parts differ)

# (code dtype, K, gains, edge bias, base, n_in, n_out, k, G, uniform grid)
LAYERS = [
    (np.uint8, 1, "int8", True, True, 9, 70, 3, 5, True),
    (np.uint8, 2, "f32", False, True, 11, 65, 2, 4, False),
    (np.uint8, 256, "int8", True, True, 13, 100, 3, 10, True),
    (np.int16, 4096, "int8", False, True, 7, 40, 3, 6, False),
    (np.int32, 4096, "f32", True, False, 6, 33, 1, 8, True),
]


@pytest.fixture(scope="module")
def runner():
    try:
        return lutham.build_runner()
    except LuthamBuildError as exc:  # no compiler / no executorch headers
        pytest.skip(f"LUTHAM runner unavailable: {exc}")


def _run(runner, pte, inp, units: str | None, single_thread: bool = False) -> np.ndarray:
    env = dict(os.environ)
    env.pop("SHAREKAN_LUTHAM_THREADS", None)
    if units is not None:
        env["SHAREKAN_LUTHAM_THREADS"] = units
    cmd = [str(runner), str(pte), str(inp)] + (["--threads", "1"] if single_thread else [])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    (y,) = _parse_runner_output(res.stdout)
    return y


@pytest.mark.parametrize("case", LAYERS, ids=[f"{c[0].__name__}-K{c[1]}-{c[2]}-out{c[6]}"
                                              for c in LAYERS])
def test_kernel_paths_agree_and_every_split_is_bit_identical(runner, tmp_path, case):
    code_dtype, n_codes, kind, eb, base, n_in, n_out, k, g, uniform = case
    rng = np.random.default_rng(n_codes * 1000 + n_out)
    layer = random_layer(rng, n_in, n_out, g, k, n_codes, code_dtype=code_dtype,
                         weight_kind=kind, with_edge_bias=eb, with_out_bias=True,
                         with_base=base, uniform=uniform)
    kw = dict(layer)
    k_ = kw.pop("k")
    pte = export_pte(RawLutham(kw, k_).eval(), (torch.zeros(2, n_in),), tmp_path / "l.pte",
                     max_batch=max(BATCHES))
    for batch in BATCHES:
        x = grid_inputs(rng, layer["grid"], batch, outside=0.2).astype(np.float32)
        inp = tmp_path / f"x{batch}.txt"
        _write_runner_input(inp, x)
        ys = {u: _run(runner, pte, inp, u) for u in UNITS}
        ys["pool off"] = _run(runner, pte, inp, None, single_thread=True)
        ys["pool default"] = _run(runner, pte, inp, None)
        ref = ys["1"]
        for name, y in ys.items():
            assert y.tobytes() == ref.tobytes(), f"batch {batch}: {name} units differ from 1"
        want = oracle.lutham_dense(x, **layer)
        rust = core.lutham_forward(x, **layer)
        scale = np.abs(want).max() + 1e-6
        np.testing.assert_allclose(ref, want, atol=2e-5 * scale, rtol=1e-4)
        np.testing.assert_allclose(ref, rust, atol=2e-5 * scale, rtol=1e-4)


def test_unit_count_setting_is_validated(runner, tmp_path):
    """A malformed SHAREKAN_LUTHAM_THREADS is ignored (the pool's count is used), never a
    crash or a different result."""
    rng = np.random.default_rng(5)
    layer = random_layer(rng, 5, 40, 4, 3, 16, code_dtype=np.uint8, weight_kind="int8")
    kw = dict(layer)
    k_ = kw.pop("k")
    pte = export_pte(RawLutham(kw, k_).eval(), (torch.zeros(2, 5),), tmp_path / "l.pte")
    x = grid_inputs(rng, layer["grid"], 20).astype(np.float32)
    _write_runner_input(tmp_path / "x.txt", x)
    ref = _run(runner, pte, tmp_path / "x.txt", "1")
    for bad in ("0", "-3", "65", "2x", "", "99999999999999999999"):
        assert _run(runner, pte, tmp_path / "x.txt", bad).tobytes() == ref.tobytes(), bad
