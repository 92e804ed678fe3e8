"""sharekan.compress on efficient-kan-layout checkpoints: accuracy of the decoded model,
report contents, options, determinism, and that inputs are never modified."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import sharekan
from kan_fixtures import dense_forward, efficient_kan_state_dict


@pytest.fixture
def small_sd(rng):
    return efficient_kan_state_dict(rng, [6, 8, 3], grid_size=5, k=3)


def test_k_equal_edges_float_reconstructs_the_model(small_sd, rng):
    # K = E per layer, float storage: every edge gets its own codeword, so the decoded
    # model is the dense model up to float32 rounding of the stored tensors.
    cfg = sharekan.Config(
        int8=False,
        base="float",
        bias="edge",
        overrides={"layers.0": {"codebook_size": 48}, "layers.1": {"codebook_size": 24}},
    )
    model = sharekan.compress(small_sd, cfg)
    x = rng.uniform(-1.5, 1.5, size=(17, 6))
    want = dense_forward(small_sd, x)
    np.testing.assert_allclose(model.forward(x.astype(np.float32)), want, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(dense_forward(model.decompress(), x), want, rtol=2e-4, atol=2e-4)
    for layer in model.report.layers:
        assert layer.coeff_rel_err < 1e-5


def test_representable_model_is_recovered_with_int8(rng):
    sd = efficient_kan_state_dict(rng, [10, 12, 4], grid_size=6, k=3, n_shapes=4)
    model = sharekan.compress(sd, codebook_size=4, metric="coefficient", bias="edge")
    x = rng.uniform(-1, 1, size=(64, 10))
    want = dense_forward(sd, x)
    got = model.forward(x.astype(np.float32))
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err < 0.02  # only int8 rounding remains
    assert all(r.codebook_utilisation == 1.0 for r in model.report.layers)


def test_forward_equals_decompressed_dense_forward(small_sd, rng):
    model = sharekan.compress(small_sd, codebook_size=8)
    x = rng.uniform(-2.5, 2.5, size=(33, 6))  # includes inputs outside the grid range
    np.testing.assert_allclose(
        model.forward(x.astype(np.float32)),
        dense_forward(model.decompress(), x),
        rtol=1e-4,
        atol=1e-4,
    )


def test_report_accounts_every_tensor_and_byte(small_sd):
    small_sd["head.temperature"] = np.array([1.5], dtype=np.float32)
    model = sharekan.compress(small_sd, codebook_size=8)
    report = model.report
    statuses = {t.key: t.status for t in report.tensors}
    assert set(statuses) == set(small_sd)
    assert statuses["head.temperature"] == "passthrough"
    assert all(s == "compressed" for k, s in statuses.items() if k.startswith("layers."))
    assert report.bytes_compressed == model.nbytes
    assert sum(r.bytes_dense_fp32 for r in report.layers) == 4 * sum(
        v.size for k, v in small_sd.items() if k.startswith("layers.")
    )
    first = report.layers[0]
    assert (first.n_in, first.n_out, first.n_coeffs, first.codebook_size, first.bits) == (
        6,
        8,
        8,
        8,
        3,
    )
    assert first.tensor_bytes["codes"] == (48 * 3 + 7) // 8
    assert first.ratio > 1
    objective = first.objective
    assert all(b <= a * (1 + 1e-12) for a, b in zip(objective, objective[1:]))
    text = str(report)
    assert "layers.0" in text and "passthrough: head.temperature" in text
    data = __import__("json").loads(report.to_json())
    assert data["totals"]["bytes_compressed"] == model.nbytes


def test_int8_parts_and_bias_modes(small_sd):
    folded = sharekan.compress(small_sd, codebook_size=8, bias="fold")
    assert all(layer.out_bias is not None and layer.edge_bias is None for layer in folded)
    edge = sharekan.compress(small_sd, codebook_size=8, bias="edge")
    layer = edge.layers["layers.0"]
    assert layer.edge_bias.dtype == np.int8 and layer.gains.dtype == np.int8
    assert layer.codebook_q.dtype == np.int8 and layer.base_weight.dtype == np.int8
    assert folded.nbytes < edge.nbytes
    fp = sharekan.compress(small_sd, codebook_size=8, int8=False, base="float")
    assert fp.layers["layers.0"].gains.dtype == np.float32
    assert fp.nbytes > edge.nbytes


def test_bias_auto_folds_only_where_inputs_stay_inside(small_sd, rng):
    assert {r.bias for r in sharekan.compress(small_sd, codebook_size=8).report.layers} == {"edge"}
    declared = sharekan.compress(small_sd, codebook_size=8, input_range=(-1.0, 1.0))
    assert {r.bias for r in declared.report.layers} == {"fold"}
    # calibration inside layer 0's grid; layer 1's inputs are the hidden activations
    x = rng.uniform(-0.9, 0.9, size=(200, 6))
    model = sharekan.compress(small_sd, codebook_size=8, calibration=x)
    first, second = model.report.layers
    assert first.bias == "fold" and first.frac_inputs_outside_grid == 0.0
    assert second.frac_inputs_outside_grid is not None
    assert second.bias == ("fold" if second.frac_inputs_outside_grid == 0 else "edge")
    assert first.output_sqnr_db is not None and first.output_sqnr_db > 10


def test_metrics_trade_function_error(rng):
    sd = efficient_kan_state_dict(rng, [16, 16], grid_size=8, k=3)
    by_metric = {
        m: sharekan.compress(sd, codebook_size=8, metric=m, int8=False, bias="edge").report.layers[
            0
        ]
        for m in ("coefficient", "function")
    }
    # each metric wins on the error it minimises (small slack for k-means local optima)
    assert by_metric["function"].func_rel_err <= by_metric["coefficient"].func_rel_err * 1.05
    assert by_metric["coefficient"].coeff_rel_err <= by_metric["function"].coeff_rel_err * 1.05


def test_data_metric_needs_and_uses_calibration(small_sd, rng):
    with pytest.raises(sharekan.errors.InvalidInputError, match="calibration"):
        sharekan.compress(small_sd, codebook_size=8, metric="data")
    x = rng.uniform(-1, 1, size=(128, 6))
    model = sharekan.compress(small_sd, codebook_size=8, metric="data", calibration=x)
    assert model.report.layers[0].metric == "data"
    assert model.report.layers[0].output_sqnr_db is not None


def test_share_model_uses_one_codebook(rng):
    sd = efficient_kan_state_dict(rng, [8, 8, 8], grid_size=5, k=3)
    model = sharekan.compress(sd, codebook_size=16, share="model")
    groups = {layer.codebook_group for layer in model}
    assert len(groups) == 1
    names = [k for k in model.stored_tensors() if ".codebook" in k]
    assert len(names) == 2  # codebook_q + codebook_scale, once
    per_layer = sharekan.compress(sd, codebook_size=16)
    assert model.nbytes < per_layer.nbytes


def test_torch_tensors_are_accepted_and_untouched(small_sd):
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(v.copy()) for k, v in small_sd.items()}
    before = {k: v.clone() for k, v in tensors.items()}
    model = sharekan.compress(tensors, codebook_size=8)
    assert all(torch.equal(tensors[k], before[k]) for k in tensors)
    out = model.decompress()
    assert list(out) == list(small_sd)
    for key, value in small_sd.items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype


def test_inputs_are_never_modified(small_sd):
    before = copy.deepcopy(small_sd)
    sharekan.compress(small_sd, codebook_size=8, calibration=np.zeros((4, 6)))
    for key in small_sd:
        np.testing.assert_array_equal(small_sd[key], before[key])


def test_float64_and_non_contiguous_inputs(rng):
    sd = efficient_kan_state_dict(rng, [5, 4], grid_size=4, k=2, dtype=np.float64)
    sd["layers.0.spline_weight"] = np.asfortranarray(sd["layers.0.spline_weight"])
    model = sharekan.compress(sd, codebook_size=4)
    out = model.decompress()
    assert out["layers.0.spline_weight"].dtype == np.float64
    assert model.report.layers[0].spline_order == 2


_HASH_SCRIPT = """
import hashlib, sys, numpy as np, sharekan
sys.path.insert(0, {tests!r})
from kan_fixtures import efficient_kan_state_dict
sd = efficient_kan_state_dict(np.random.default_rng(7), [40, 32, 6], grid_size=6, k=3)
model = sharekan.compress(sd, codebook_size=32, seed=11)
model.save({path!r})
print(hashlib.sha256(open({path!r}, 'rb').read()).hexdigest())
"""


def test_same_seed_same_bytes_for_any_thread_count(tmp_path):
    digests = set()
    for threads in ("1", "2"):
        path = str(tmp_path / f"model{threads}.sharekan")
        env = dict(os.environ, RAYON_NUM_THREADS=threads)
        script = _HASH_SCRIPT.format(tests=os.path.dirname(__file__), path=path)
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_default_model_compresses_well():
    from sharekan.default_model import load_default

    sd, test_x, test_y = load_default()
    model = sharekan.compress(sd, codebook_size=64, calibration=test_x[:256])
    dense = dense_forward(sd, test_x)
    approx = model.forward(test_x)
    agreement = (dense.argmax(1) == approx.argmax(1)).mean()
    assert agreement > 0.97
    assert model.report.ratio > 4


def test_four_bit_gains_and_base_are_packed_and_round_trip(small_sd, rng, tmp_path):
    eight = sharekan.compress(small_sd, codebook_size=8, bias="fold")
    four = sharekan.compress(small_sd, codebook_size=8, bias="fold", gain_bits=4, base="int4")
    layer = four.layers["layers.0"]
    assert int(np.abs(layer.gains).max()) <= 7 and int(np.abs(layer.base_weight).max()) <= 7
    stored = layer.stored_tensors()
    assert "gains_q4" in stored and "base_weight_q4" in stored
    assert stored["gains_q4"].nbytes == (6 * 8 + 1) // 2
    assert four.nbytes < eight.nbytes
    path = tmp_path / "four.sharekan"
    four.save(path)
    again = sharekan.load(path)
    np.testing.assert_array_equal(again.layers["layers.0"].gains, layer.gains)
    x = rng.uniform(-1, 1, size=(9, 6)).astype(np.float32)
    np.testing.assert_array_equal(again.forward(x), four.forward(x))
    # coarser, but still a faithful model
    want = dense_forward(small_sd, x)
    err4 = np.linalg.norm(four.forward(x) - want) / np.linalg.norm(want)
    err8 = np.linalg.norm(eight.forward(x) - want) / np.linalg.norm(want)
    assert err4 < err8 + 0.1 and err4 < 0.5


def test_base_fold_moves_silu_into_the_splines(rng):
    sd = efficient_kan_state_dict(rng, [6, 8], grid_size=8, k=3)
    x = rng.uniform(-0.99, 0.99, size=(64, 6))
    exact = dict(int8=False, bias="edge", codebook_size=48)  # K = E: only the fold changes
    folded = sharekan.compress(sd, base="fold", input_range=(-1.0, 1.0), **exact)
    layer = folded.layers["layers.0"]
    assert layer.base_weight is None
    assert folded.report.layers[0].base.startswith("fold")
    want = dense_forward(sd, x)
    err = np.linalg.norm(folded.forward(x.astype(np.float32)) - want) / np.linalg.norm(want)
    assert err < 1e-3  # the cubic-spline fit of SiLU on the grid range
    decoded = folded.decompress()
    assert not decoded["layers.0.base_weight"].any()
    np.testing.assert_allclose(dense_forward(decoded, x), folded.forward(x.astype(np.float32)), rtol=1e-4, atol=1e-4)
    # nothing says the inputs stay inside the grid: the base branch is kept (int8)
    kept = sharekan.compress(sd, base="fold", **exact)
    assert kept.layers["layers.0"].base_weight is not None
    assert "refused" in kept.report.layers[0].base
    assert folded.nbytes < kept.nbytes


def test_shared_codebook_scale_saves_bytes_at_full_int8_resolution(small_sd, rng, tmp_path):
    x = rng.uniform(-1, 1, size=(64, 6))
    want = dense_forward(small_sd, x)
    per_word = sharekan.compress(small_sd, codebook_size=8)
    shared = sharekan.compress(small_sd, codebook_size=8, codebook_scale="shared")
    # one f32 scale per codebook instead of one per codeword: 4 (K - 1) bytes per layer
    assert per_word.nbytes - shared.nbytes == 2 * 4 * (8 - 1)
    for layer in shared.layers.values():
        assert layer.codebook_scale.shape == (1,)
        # every codeword uses the full int8 range (its scale lives in the gains)
        assert np.all(np.abs(layer.codebook_q).max(axis=1) == 127)
        np.testing.assert_array_equal(
            layer.codebook, layer.codebook_q.astype(np.float32) * layer.codebook_scale[0]
        )
    err = {}
    for name, model in (("codeword", per_word), ("shared", shared)):
        got = model.forward(x.astype(np.float32))
        err[name] = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err["shared"] < 1.2 * err["codeword"] + 1e-4
    path = str(tmp_path / "shared.sharekan")
    shared.save(path)
    loaded = sharekan.load(path)
    assert loaded.config.codebook_scale == "shared"
    np.testing.assert_array_equal(loaded.forward(x.astype(np.float32)), shared.forward(x.astype(np.float32)))
    with pytest.raises(sharekan.errors.InvalidInputError, match="codebook_scale"):
        sharekan.Config(codebook_scale="row")
