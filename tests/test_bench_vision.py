"""Fast checks of the vision benchmark's methods and bookkeeping on tiny synthetic heads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# the benchmark package lives in benches/ (not in the wheel)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

from sharekan.demo.heads import HeadRecipe, build_head, head_state_dict, kan_forward, train_head  # noqa: E402
from sharekan_bench import methods as M  # noqa: E402
from sharekan_bench.lowbit import quantize_mse  # noqa: E402
from sharekan_bench.vision import VisionConfig, run_methods  # noqa: E402


def _data(n: int = 256, d: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.tanh(rng.normal(size=(n, d))).astype(np.float32)
    y = (np.sin(3 * x[:, 0]) + x[:, 1] ** 2 > 0.3).astype(np.int64) + (x[:, 2] > 0.5)
    return {"x_train": x[: n // 2], "y_train": y[: n // 2], "x_test": x[n // 2 :], "y_test": y[n // 2 :]}


@pytest.fixture(scope="module")
def head() -> tuple[HeadRecipe, dict[str, np.ndarray], dict[str, np.ndarray]]:
    torch.set_num_threads(1)
    data = _data()
    recipe = HeadRecipe(kind="kan", widths=(8, 6, 3), grid_size=5, epochs=3, batch_size=32)
    model = train_head(recipe, data["x_train"], data["y_train"], log=lambda s: None)
    return recipe, head_state_dict(model, recipe), data


def test_kan_forward_matches_module(head):
    recipe, sd, data = head
    model = build_head(recipe)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    with torch.no_grad():
        ref = model(torch.from_numpy(data["x_test"])).numpy()
    np.testing.assert_allclose(kan_forward(sd, data["x_test"], batch=7), ref, rtol=1e-5, atol=1e-5)


def test_spline_first_head_has_no_layer0_base():
    recipe = HeadRecipe(kind="kan_spline_first", widths=(4, 3, 2), grid_size=3, epochs=1)
    sd = head_state_dict(build_head(recipe), recipe)
    assert "layers.0.base_weight" not in sd and "layers.1.base_weight" in sd


def test_sqnr_and_fidelity():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert M.sqnr_db(ref, ref) == float("inf")
    assert M.sqnr_db(ref, ref * 0.9) == pytest.approx(20.0)
    fid = M.fidelity(ref, ref[:, ::-1], np.array([0, 1]))
    assert fid["accuracy"] == 0.0 and fid["agreement"] == 0.0


def test_pruning_sparsity_and_bytes(head):
    _, sd, _ = head
    comp = M.magnitude_prune(sd, 0.5)
    n = sum(sd[f"layers.{i}.spline_weight"].size for i in range(2))
    # half the coefficients survive (4 bytes each) + a 1-bit mask
    assert comp.nbytes < M.dense_bytes(sd)
    assert comp.nbytes >= 4 * (n // 2)
    assert M.magnitude_prune(sd, 0.0).forward(np.zeros((2, 8), np.float32)).shape == (2, 3)


def test_scalar_quant_error_bound():
    w = np.random.default_rng(1).normal(size=(5, 4, 3)).astype(np.float32)
    deq, scale = M.quantize_symmetric(w, 4)
    assert np.all(np.abs(deq - w) <= scale[:, None, None] / 2 + 1e-6)


def test_quantize_mse_not_worse_than_max_scaling():
    w = np.random.default_rng(2).standard_t(3, size=(200, 6))
    deq, _ = quantize_mse(w, 4)
    qmax = 7
    scale = np.abs(w).max(axis=0) / qmax
    plain = np.clip(np.round(w / scale), -qmax, qmax) * scale
    assert ((deq - w) ** 2).sum() <= ((plain - w) ** 2).sum() + 1e-9


def test_run_methods_rows(head):
    _, sd, data = head
    cfg = VisionConfig(codebook_size=8, sweep_ks=(4, 48), sweep_metrics=("function", "data"),
                       sweep_heads=("tiny",), prune=(0.1,), scalar_bits=(8,), calib_rows=64)
    res = run_methods("tiny", sd, data, cfg, log=lambda s: None)
    dense = res["rows"][0]
    assert dense["method"] == "dense FP32" and dense["ratio"] == 1.0
    assert dense["agreement"] == 100.0 and dense["sqnr_db"] == float("inf")
    methods = [r["method"] for r in res["rows"]]
    assert any("bias=fold" in m for m in methods) and any("int4" in m for m in methods)
    for r in res["rows"] + res["sweep"]:
        assert r["bytes"] > 0 and 0 <= r["agreement"] <= 100
    # K = E (48 edges in layer 1) is exact up to int8 rounding: high fidelity
    full = [r for r in res["sweep"] if r["K"] == 48]
    assert full and all(r["sqnr_db"] > 25 for r in full)
    assert "codebooks" not in res or all(len(v) > 0 for v in res["codebooks"].values())


def test_multihead_tiny(tmp_path):
    from sharekan_bench.multihead import MultiHeadConfig, run_multihead, tasks

    assert len(tasks()) == 50 and len({t[0] for t in tasks()}) == 50
    rng = np.random.default_rng(3)
    x = np.tanh(rng.normal(size=(400, 6))).astype(np.float32)
    y = rng.integers(0, 10, size=400)
    data = {"x_train": x[:300], "y_train": y[:300], "x_test": x[300:], "y_test": y[300:]}
    cfg = MultiHeadConfig(ns=(1, 3), hidden=2, epochs=1, codebook_sizes=(4,), sample_heads=2)
    res = run_multihead(tmp_path, data, cfg, log=lambda s: None)
    rows = res["rows"]
    assert len(rows) == 2 * 3 * 2  # N x variant (int8, fold, fold+gain4) x share
    three = {(r["share"], r["variant"]): r for r in rows if r["heads"] == 3}
    # one shared codebook is smaller than one per layer per head
    assert three[("model", "int8")]["file_bytes"] < three[("layer", "int8")]["file_bytes"]
    # the compiler's base fold and 4-bit gains shrink the artifact further
    assert three[("model", "fold+gain4")]["file_bytes"] < three[("model", "fold")]["file_bytes"] \
        < three[("model", "int8")]["file_bytes"]
    assert all(r["file_bytes"] > 0 and 0 <= r["agreement"] <= 100 for r in rows)


def test_classification_report_and_plots(head, tmp_path):
    from sharekan_bench import report

    _, sd, data = head
    cfg = VisionConfig(codebook_size=4, sweep_ks=(4,), sweep_metrics=("function",),
                       sweep_heads=("kan",), prune=(0.1,), scalar_bits=(4,), lowbit=False,
                       calib_rows=64)
    h = run_methods("kan", sd, data, cfg, log=lambda s: None)
    h.update(recipe="tiny", train_seconds=0.0)
    res = {"dataset": "synthetic", "backbone": "none", "input_px": 0,
           "mlp": {"bytes": 100, "accuracy": 50.0}, "heads": {"kan": h}}
    md = report.classification_markdown(res)
    assert "dense FP32" in md and "Target" in md and "Pruning at 10 %" in md
    paths = report.plot_classification(res, tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
