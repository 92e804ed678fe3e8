"""Fast checks of the regression benchmark (tiny KANs, few steps) and of its report."""

from __future__ import annotations

import json

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
# the benchmark package lives in benches/ (not in the wheel)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

from sharekan_bench import report  # noqa: E402
from sharekan_bench.regression import FORMULAS, RegressionConfig, make_data, run_regression  # noqa: E402

TINY = RegressionConfig(hidden=(4,), grid_size=4, n_train=128, n_test=64, steps=60, ks=(2, 8),
                        metrics=("data",), n_calibration=64,
                        calibrated=(("output+comp", (4, 4), ()), ("output+comp", (2, 2), ())),
                        min_ratio=1.0)


def test_formulas_are_deterministic():
    for name, (d, _) in FORMULAS.items():
        a, b = make_data(name, TINY), make_data(name, TINY)
        assert a["x_train"].shape == (128, d)
        np.testing.assert_array_equal(a["y_test"], b["y_test"])
        assert np.all(np.abs(a["x_train"]) <= 1)


def test_run_regression_tiny(tmp_path):
    name = "x y"
    res = run_regression(tmp_path, TINY, log=lambda s: None, formulas=(name,))
    f = res["formulas"][name]
    dense = f["rows"][0]
    assert dense["method"] == "dense FP32" and dense["rmse_rel"] == pytest.approx(1.0)
    assert {r.get("K") for r in f["rows"]} >= {2, 8}
    # cached: a second run loads the trained model and gives the same numbers
    again = run_regression(tmp_path, TINY, log=lambda s: None, formulas=(name,))
    assert again["formulas"][name]["dense_rmse"] == f["dense_rmse"]
    calibrated = [r for r in f["rows"] if r.get("calibrated")]
    assert len(calibrated) == 2 and all(r["val_sqnr_db"] is not None for r in calibrated)
    assert f["chosen"] == max(calibrated, key=lambda r: r["val_sqnr_db"])["method"]
    md = report.regression_markdown(res)
    assert "Target" in md and name in md
    assert "chosen on validation" in md and "Target per formula" in md
    report.write_json(res, tmp_path / "r.json")
    json.loads((tmp_path / "r.json").read_text())
    assert report.plot_regression(res, tmp_path).exists()
