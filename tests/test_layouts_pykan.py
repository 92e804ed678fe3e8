"""pykan checkpoints with the real library (PyPI `pykan`): train a small MultKAN, save its
state_dict, compress, load the decompressed state_dict back with strict=True and compare
pykan's own forward pass with sharekan's evaluator and with the dense original."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
kan = pytest.importorskip("kan", reason="pykan is in the 'test' extra")

import sharekan  # noqa: E402
from sharekan.layouts import UnsupportedLayerError  # noqa: E402
from sharekan.torch import collect_calibration, compress_  # noqa: E402

WIDTH = [3, 8, 2]


def _make(dtype=torch.float32):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # pykan builds its tensors in the default dtype
    try:
        return kan.KAN(width=WIDTH, grid=5, k=3, seed=0, auto_save=False, device="cpu",
                       symbolic_enabled=False)
    finally:
        torch.set_default_dtype(previous)


def _target(x):
    return torch.stack([torch.sin(2 * x[:, 0]) + x[:, 1] ** 2, x[:, 1] * x[:, 2]], dim=1)


@pytest.fixture(scope="module")
def models():
    """Two trained MultKANs: float32, and float64 with update_grid_from_samples and a
    pruned edge (mask 0)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, dtype in (("f32", torch.float32), ("f64_grid", torch.float64)):
            torch.manual_seed(0)
            model = _make(dtype)
            x = (torch.rand(128, 3, dtype=dtype) * 2 - 1) * 1.2
            opt = torch.optim.Adam(model.parameters(), lr=2e-2)
            for step in range(12):
                if dtype == torch.float64 and step == 6:
                    model.update_grid_from_samples(x)  # per-input, non-uniform grids
                opt.zero_grad()
                ((model(x) - _target(x)) ** 2).mean().backward()
                opt.step()
            if dtype == torch.float64:
                with torch.no_grad():
                    model.act_fun[0].mask[1, 3] = 0.0  # what pykan's prune does
            out[name] = (model, x)
    finally:
        torch.set_num_threads(threads)
    return out


def _state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _reload(state_dict, dtype):
    model = _make(dtype)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    return model


def _forward(model, x):
    with torch.no_grad():
        return model(x).double().numpy()


@pytest.mark.parametrize("which", ["f32", "f64_grid"])
def test_round_trip_through_pykan(models, which):
    model, x = models[which]
    dtype = x.dtype
    sd = _state(model)
    compressed = sharekan.compress(sd, codebook_size=8)
    assert compressed.source_layout == "pykan"
    decoded = compressed.decompress()
    for key, value in sd.items():
        assert decoded[key].shape == value.shape and decoded[key].dtype == value.dtype, key
    lib = _reload(decoded, dtype)
    y_lib = _forward(lib, x)
    # sharekan's evaluator on the compressed model = pykan on the decompressed state_dict
    y_eval = compressed.forward(x.numpy())
    np.testing.assert_allclose(y_eval, y_lib, rtol=1e-4, atol=1e-5 * np.abs(y_lib).max() + 1e-6)
    y_dense = _forward(model, x)
    err = np.linalg.norm(y_lib - y_dense) / np.linalg.norm(y_dense)
    print(f"pykan {which}: K=8 relative output error vs dense {err:.3g}")
    assert err < 0.3
    if which == "f64_grid":  # the pruned edge stays pruned, scale_sp mask-consistent
        np.testing.assert_array_equal(decoded["act_fun.0.mask"], sd["act_fun.0.mask"])
        assert decoded["act_fun.0.scale_sp"][1, 3] == 0.0
        assert (decoded["act_fun.0.scale_sp"][sd["act_fun.0.mask"] == 1] == 1.0).all()
        assert "mask_bits" in compressed.layers["act_fun.0"].extras
        np.testing.assert_array_equal(decoded["act_fun.0.grid"], sd["act_fun.0.grid"])


def test_k_equal_edges_reconstructs_pykan_exactly(models):
    model, x = models["f64_grid"]
    sd = _state(model)
    cfg = sharekan.Config(int8=False, base="float", bias="edge",
                          overrides={"act_fun.0": {"codebook_size": 24}, "act_fun.1": {"codebook_size": 16}})
    lib = _reload(sharekan.compress(sd, cfg).decompress(), torch.float64)
    np.testing.assert_allclose(_forward(lib, x), _forward(model, x), rtol=1e-5, atol=1e-6)


def test_node_affines_and_symbolic_branches_are_refused_for_evaluation(models, tmp_path):
    model, x = models["f32"]
    sd = _state(model)
    sd["node_scale_0"] = sd["node_scale_0"] * 1.5
    sd["symbolic_fun.1.mask"] = sd["symbolic_fun.1.mask"].copy()
    sd["symbolic_fun.1.mask"][0, 0] = 1.0
    compressed = sharekan.compress(sd, codebook_size=8)
    status = {t.key: (t.status, t.reason) for t in compressed.report.tensors}
    assert status["symbolic_fun.1.mask"][0] == "refused"
    assert "config.yml" in status["symbolic_fun.1.mask"][1]
    assert status["node_scale_0"][0] == "passthrough"
    with pytest.raises(UnsupportedLayerError, match="act_fun.0.*node_affine"):
        compressed.forward(x.numpy())
    assert compressed.layers["act_fun.1"].unsupported_reason() == "post-sum operations symbolic branch"
    # still stored and decompressed unchanged
    path = str(tmp_path / "p.sharekan")
    compressed.save(path)
    decoded = sharekan.load(path).decompress()
    np.testing.assert_array_equal(decoded["node_scale_0"], sd["node_scale_0"])
    np.testing.assert_array_equal(decoded["symbolic_fun.1.mask"], sd["symbolic_fun.1.mask"])


def test_calibration_hooks_and_data_metric(models):
    model, x = models["f64_grid"]
    calib = collect_calibration(model, x)
    assert sorted(calib) == ["act_fun.0", "act_fun.1"]
    assert calib["act_fun.0"].shape == (128, 3) and calib["act_fun.1"].shape == (128, 8)
    compressed = sharekan.compress(_state(model), codebook_size=8, metric="data", calibration=calib)
    assert all(r.output_sqnr_db is not None and r.output_sqnr_db > 10 for r in compressed.report.layers)
    # model inputs propagate through pykan layers with identity affines
    propagated = sharekan.compress(_state(model), codebook_size=8, calibration=x.numpy())
    hooked = sharekan.compress(_state(model), codebook_size=8, calibration=calib)
    for a, b in zip(propagated.report.layers, hooked.report.layers):
        assert a.output_sqnr_db == pytest.approx(b.output_sqnr_db, rel=1e-6)


def test_compress_in_place_refuses_multkan(models):
    model, _ = models["f32"]
    with pytest.raises(UnsupportedLayerError, match="pykan"):
        compress_(model, codebook_size=4)
