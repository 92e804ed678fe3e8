"""The dense KAN baseline kernel (lutham/baseline/dense_kan.h, run by lutham/kernel_bench
--check) against the dense efficient-kan module `sharekan.torch.KAN` evaluated in float64:
float32 and int8 (per-column scales, against the dequantised weights) weights, uniform and
per-input non-uniform knots, k = 1, 2, 3, 5, batch sizes across the kernel's paths (in place
below 12 rows, packed blocks from 12, tiles of 64), inputs outside the grid and on knots,
1 vs all threads bit-identical; and kernel_bench's refusal of malformed files (exit 1).

Agreement is to float32 rounding (the kernel sums in float32 with FMA; no test depends on
exact rounding). The first run builds kernel_bench (cached; tens of seconds on 2 cores).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

from sharekan.torch import KAN  # noqa: E402
from sharekan_bench import kernel_bench as kb  # noqa: E402


@pytest.fixture(scope="module")
def exe() -> Path:
    return kb.build()


def _model(widths, grid_size, k, seed, nonuniform=False):
    torch.manual_seed(seed)
    m = KAN(widths, grid_size=grid_size, spline_order=k).double().eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for layer in m.layers:
            # larger, smoother-than-init coefficients so every term matters
            layer.spline_weight.normal_(0.0, 0.3)
            if nonuniform:
                n_in, n_knots = layer.grid.shape
                gaps = rng.uniform(0.3, 2.0, size=(n_in, n_knots - 1)) * 2.4 / (n_knots - 1)
                start = rng.uniform(-1.6, -1.0, size=(n_in, 1))
                grid = np.concatenate([start, start + np.cumsum(gaps, axis=1)], axis=1)
                layer.grid.copy_(torch.from_numpy(grid))
    return m


def _inputs(rng, m, batch):
    """Inside the grid, outside it on both sides, and exactly on knots (float32 values)."""
    grid0 = m.layers[0].grid.numpy().astype(np.float32)
    n_in = grid0.shape[0]
    x = rng.uniform(-1.2, 1.2, size=(batch, n_in)).astype(np.float32)
    flat = x.reshape(-1)
    pick = rng.choice(flat.size, size=max(1, flat.size // 5), replace=False)
    for e in pick:
        i = e % n_in
        flat[e] = grid0[i, rng.integers(0, grid0.shape[1])]  # on a knot (first and last too)
    far = rng.choice(flat.size, size=max(1, flat.size // 10), replace=False)
    flat[far] = rng.choice([-1.0, 1.0], size=far.size) * rng.uniform(2.5, 9.0, size=far.size)
    return x


def _reference(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x.astype(np.float64))).numpy()


def _dequantised(m, layers):
    ref = _model([m.layers[0].in_features] + [layer.out_features for layer in m.layers],
                 m.layers[0].grid_size, m.layers[0].spline_order, 0)
    sd = {key: torch.from_numpy(v.astype(np.float64))
          for key, v in kb.dequantized_state_dict(layers).items()}
    for li, layer in enumerate(m.layers):
        sd[f"layers.{li}.grid"] = layer.grid.clone()
    ref.load_state_dict(sd)
    return ref


def _check(exe, tmp_path, model_layers, x, threads):
    model = kb.write_dense_model(tmp_path / "model.bin", model_layers)
    xf = kb.write_matrix(tmp_path / "x.bin", x)
    return kb.check(exe, model, xf, threads)


def _assert_close(y, ref):
    scale = np.abs(ref).max() + 1e-3
    err = np.abs(y.astype(np.float64) - ref).max()
    assert err <= 2e-5 * scale, f"max error {err:.3g} vs scale {scale:.3g}"


CASES = [
    # widths, G, k, nonuniform grid, batches
    ([37, 45, 3], 5, 3, False, [1, 3, 11, 12, 13, 67]),
    ([20, 70, 8], 10, 3, True, [1, 5, 64, 130]),
    ([16, 33], 4, 1, False, [2, 17]),
    ([24, 9], 6, 2, True, [1, 14]),
    ([12, 40], 3, 5, False, [1, 7, 19]),
]


@pytest.mark.parametrize("widths,grid_size,k,nonuniform,batches", CASES)
@pytest.mark.parametrize("int8", [False, True])
def test_baseline_matches_dense_kan(exe, tmp_path, widths, grid_size, k, nonuniform, batches,
                                    int8):
    m = _model(widths, grid_size, k, seed=len(widths) * 100 + k, nonuniform=nonuniform)
    layers = kb.dense_layers(m.state_dict(), int8=int8)
    ref_model = _dequantised(m, layers) if int8 else m
    rng = np.random.default_rng(k)
    for batch in batches:
        x = _inputs(rng, m, batch)
        ref = _reference(ref_model, x)
        y1 = _check(exe, tmp_path, layers, x, threads=1)
        assert y1.shape == (batch, widths[-1])
        _assert_close(y1, ref)
        yn = _check(exe, tmp_path, layers, x, threads=0)
        # bit-identical for 1 and all threads (%.9g round-trips float32)
        np.testing.assert_array_equal(y1, yn)


def test_int8_quantisation_is_per_column_and_bounded():
    rng = np.random.default_rng(0)
    spline = rng.normal(size=(5, 7, 4)) * rng.uniform(0.01, 3.0, size=(5, 1, 1))
    base = rng.normal(size=(5, 7))
    sq, bq, scale = kb.quantize_columns(spline, base)
    assert sq.dtype == np.int8 and bq.dtype == np.int8 and scale.shape == (5,)
    assert np.all(np.abs(sq.astype(np.float64) * scale[:, None, None] - spline)
                  <= scale[:, None, None] / 2 + 1e-7)
    assert np.all(np.abs(bq.astype(np.float64) * scale[:, None] - base) <= scale[:, None] / 2 + 1e-7)


def _valid_model_bytes(tmp_path) -> bytes:
    m = _model([6, 5, 2], 4, 3, seed=1)
    return kb.write_dense_model(tmp_path / "ok.bin", kb.dense_layers(m.state_dict())).read_bytes()


def _patched(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + int(value).to_bytes(8, "little", signed=True) + data[offset + 8:]


def test_kernel_bench_rejects_malformed_files(exe, tmp_path):
    good = _valid_model_bytes(tmp_path)
    x = kb.write_matrix(tmp_path / "x.bin", np.zeros((2, 6), np.float32))
    first = 16  # the first layer's header: n_in, n_out, M, k, grid_rows, dtype, has_bias
    bad = {
        "magic": b"XXXXXXXX" + good[8:],
        "truncated": good[:-3],
        "trailing": good + b"\0",
        "n_layers": _patched(good, 8, 0),
        "n_in huge": _patched(good, first, 1 << 30),
        "n_out x n_in x M beyond the file": _patched(_patched(good, first, 1 << 24), first + 8,
                                                     1 << 24),
        "k": _patched(good, first + 24, 16),
        "grid_rows": _patched(good, first + 32, 3),
        "dtype": _patched(good, first + 40, 2),
        "empty": b"",
    }
    for name, data in bad.items():
        path = tmp_path / "bad.bin"
        path.write_bytes(data)
        res = subprocess.run([str(exe), "--check", str(path), str(x)], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 1, (name, res.returncode, res.stderr)
        assert "error:" in res.stderr, (name, res.stderr)
    # layer 1's n_in must be layer 0's n_out
    m2 = _model([6, 5, 2], 4, 3, seed=1)
    layers = kb.dense_layers(m2.state_dict())
    layers[1] = dict(layers[1], n_in=4, spline=layers[1]["spline"][:, :4],
                     base=layers[1]["base"][:, :4], grid=layers[1]["grid"])
    chained = kb.write_dense_model(tmp_path / "chain.bin", layers)
    res = subprocess.run([str(exe), "--check", str(chained), str(x)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and "previous layer" in res.stderr, res.stderr
    # an input file of the wrong width, a truncated one
    ok = tmp_path / "ok.bin"
    ok.write_bytes(good)
    wide = kb.write_matrix(tmp_path / "wide.bin", np.zeros((2, 7), np.float32))
    short = tmp_path / "short.bin"
    short.write_bytes(x.read_bytes()[:-1])
    for xin in (wide, short):
        res = subprocess.run([str(exe), "--check", str(ok), str(xin)], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 1 and "error:" in res.stderr, res.stderr
