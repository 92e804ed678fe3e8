"""The demo's ExecuTorch step and table on a tiny KAN (skipped without executorch)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_demo_executorch_and_table(tmp_path):
    pytest.importorskip("executorch")
    import sharekan
    from sharekan.demo import run as demo
    from sharekan.torch import KAN, LuthamLinear

    torch.manual_seed(0)
    head = KAN([8, 6, 3], grid_size=4).eval()
    sd = {k: v.detach().numpy() for k, v in head.state_dict().items()}
    model = sharekan.compress(sd, codebook_size=8)
    comp = KAN([8, 6, 3], grid_size=4)
    comp.layers = torch.nn.ModuleList(LuthamLinear.from_compressed(layer) for layer in model.layers.values())
    x = np.tanh(np.random.default_rng(0).normal(size=(40, 8))).astype(np.float32)
    y = np.zeros(40, dtype=np.int64)
    with torch.no_grad():
        dense_logits = head(torch.from_numpy(x)).numpy()
        comp_logits = comp(torch.from_numpy(x)).numpy()
    info = demo._executorch(head, comp, x, dense_logits, y, tmp_path, 2, log=lambda s: None)
    if "skipped" in info:
        pytest.skip(info["skipped"])
    assert "error" not in info, info.get("error")
    dense_pte, comp_pte = info["rows"]
    np.testing.assert_allclose(dense_pte["logits"], dense_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(comp_pte["logits"], comp_logits, rtol=1e-4, atol=1e-4)
    rows = [{"model": r["model"], "bytes": r["nbytes"], "file_bytes": r["file_bytes"], "ratio": 1.0,
             "accuracy": 1.0, "delta_accuracy": 0.0, "agreement": 100.0, "sqnr_db": 1.0,
             "latency_b1_ms": r["latency_b1_ms"]} for r in info["rows"]]
    table = demo.format_table({"test_images": 40, "config": {}, "rows": rows})
    assert "ExecuTorch" in table
