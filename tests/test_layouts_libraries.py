"""Checkpoint adapters against modules that reproduce each library's forward pass and
state_dict layout (tests/fixtures_kan_libraries.py; efficient-kan is sharekan.torch.KAN):
detection, exact round trips at K = E, compressed round trips loaded back with
strict=True, the evaluator's refusals, save/load, calibration hooks and the report."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sharekan  # noqa: E402
from fixtures_kan_libraries import (  # noqa: E402
    ChebyKAN,
    ConvNet,
    FastKAN,
    KAGNConv2DLayer,
    KANConv2DLayer,
    TorchKAN,
    load_case,
    run_case,
    train_cases,
)
from sharekan.compiler import dense_layer_forward  # noqa: E402
from sharekan.layouts import UnsupportedLayerError, detect_layout  # noqa: E402
from sharekan.torch import KAN, collect_calibration, compress_  # noqa: E402

CASES = {
    "efficient-kan": (lambda: KAN([4, 6, 3], grid_size=5), lambda g: torch.rand(64, 4, generator=g) * 2 - 1),
    "fastkan": (lambda: FastKAN([4, 6, 3]), lambda g: torch.randn(64, 4, generator=g)),
    "chebykan": (lambda: ChebyKAN([4, 6, 3], degree=4), lambda g: torch.randn(64, 4, generator=g)),
    "torchkan": (lambda: TorchKAN([4, 6, 3]), lambda g: torch.rand(64, 4, generator=g) * 2 - 1),
    "torch-conv-kan": (lambda: ConvNet(KANConv2DLayer, [2, 4, 3]), lambda g: torch.rand(4, 2, 6, 6, generator=g) * 2 - 1),
    "torch-conv-kagn": (lambda: ConvNet(KAGNConv2DLayer, [2, 4, 3], degree=3), lambda g: torch.randn(4, 2, 6, 6, generator=g)),
}


#: Libraries whose every layer sharekan's evaluator runs exactly (FastKAN: the op on
#: LayerNorm(x) + the base branch outside it; TorchKAN: the op then LayerNorm; conv layers
#: are refused with the reason).
LUTHAM_RUNS = {"efficient-kan", "chebykan", "fastkan", "torchkan"}


@pytest.fixture(scope="module")
def trained():
    """name -> (module, inputs, numpy state_dict), trained a few steps, seeded."""
    return train_cases(CASES, seed=1)


def _load(name, state_dict):
    return load_case(CASES[name][0], state_dict)


def _run(model, x):
    return run_case(model, x)


@pytest.mark.parametrize("name", list(CASES))
def test_layout_is_detected(name, trained):
    _, _, sd = trained[name]
    assert detect_layout(sd).name == name


@pytest.mark.parametrize("name", list(CASES))
def test_k_equal_edges_float_round_trip_is_exact(name, trained):
    # every edge its own codeword, float storage: the library's forward on the decompressed
    # state_dict equals the original (checks the edge layout, strides and folded scalers)
    model, x, sd = trained[name]
    edges = {s.name: {"codebook_size": s.n_in * s.n_out} for s in detect_layout(sd).extract(sd).layers}
    cfg = sharekan.Config(int8=False, base="float", bias="edge", overrides=edges)
    out = sharekan.compress(sd, cfg).decompress()
    assert list(out) == list(sd)
    for key, value in sd.items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype, key
    want = _run(model, x)
    got = _run(_load(name, out), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", list(CASES))
def test_compressed_round_trip_and_evaluator(name, trained, tmp_path):
    model, x, sd = trained[name]
    compressed = sharekan.compress(sd, codebook_size=8)
    decoded = compressed.decompress()
    lib = _load(name, decoded)  # strict=True
    y_lib = _run(lib, x)
    y_dense = _run(model, x)
    err = np.linalg.norm(y_lib - y_dense) / np.linalg.norm(y_dense)
    print(f"{name}: K=8 relative output error vs dense {err:.3g}")
    assert err < 0.5
    if name in LUTHAM_RUNS:
        got = compressed.forward(x.numpy())
        np.testing.assert_allclose(got, y_lib, rtol=1e-4, atol=1e-4 * np.abs(y_lib).max())
        assert all(r.evaluator == "lutham" for r in compressed.report.layers)
    else:
        with pytest.raises(UnsupportedLayerError, match="layers.0"):
            compressed.forward(x.numpy() if x.ndim == 2 else x.numpy().reshape(len(x), -1))
        assert all(r.evaluator != "lutham" for r in compressed.report.layers)
    # save / load keeps every tensor and the basis description
    path = str(tmp_path / "m.sharekan")
    compressed.save(path)
    again = sharekan.load(path)
    for key, value in again.decompress().items():
        np.testing.assert_array_equal(value, decoded[key])
    for a, b in zip(again.layers.values(), compressed.layers.values()):
        assert a.basis.describe() == b.basis.describe() and a.semantics == b.semantics


@pytest.mark.parametrize("name", ["fastkan", "chebykan"])
def test_non_partition_of_unity_bias_is_exact_in_coefficient_space(name, trained):
    # RBF / Chebyshev edges scale a coefficient-space bias by sum_m B_m(x): the decoded
    # coefficients (gain * codeword + bias * 1) evaluated densely must equal the library's
    # layer on the decompressed weights; bias="fold" is never used for these bases.
    model, x, sd = trained[name]
    compressed = sharekan.compress(sd, codebook_size=8, bias="fold")
    assert {r.bias for r in compressed.report.layers} == {"edge"}
    lib = _load(name, compressed.decompress())
    sources = {s.name: s for s in detect_layout(sd).extract(sd).layers}
    layer = compressed.layers["layers.0"]
    dense = dense_layer_forward(sources["layers.0"], x.double().numpy(), layer.decoded_coeffs(), layer.base_weights())
    with torch.no_grad():
        want = lib.layers[0](x).double().numpy()
    np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_report_lists_every_tensor(name, trained):
    _, _, sd = trained[name]
    report = sharekan.compress(sd, codebook_size=4).report
    statuses = {t.key: t.status for t in report.tensors}
    assert set(statuses) == set(sd)
    assert all(t.reason for t in report.tensors)
    assert "compressed" in statuses.values()
    text = str(report)
    for t in report.tensors:
        if t.status != "compressed":
            assert t.key in text


@pytest.mark.parametrize("name", list(CASES))
def test_calibration_hooks_and_data_metric(name, trained):
    model, x, sd = trained[name]
    calib = collect_calibration(model, x)
    layers = [s.name for s in detect_layout(sd).extract(sd).layers]
    assert sorted(calib) == sorted(layers)
    compressed = sharekan.compress(sd, codebook_size=8, metric="data", calibration=calib)
    for r in compressed.report.layers:
        assert r.metric == "data" and r.frac_inputs_outside_grid is not None
    if name in ("efficient-kan", "fastkan", "chebykan"):  # dense layers: output SQNR measured
        assert all(r.output_sqnr_db is not None and r.output_sqnr_db > 5 for r in compressed.report.layers)


def test_model_inputs_cannot_be_propagated_past_a_post_norm(trained):
    _, x, sd = trained["torchkan"]
    with pytest.raises(sharekan.errors.InvalidInputError, match="collect_calibration"):
        sharekan.compress(sd, codebook_size=4, calibration=x.numpy())


def test_model_inputs_propagate_through_dense_layers(trained):
    model, x, sd = trained["chebykan"]
    hooked = sharekan.compress(sd, codebook_size=8, calibration=collect_calibration(model, x))
    propagated = sharekan.compress(sd, codebook_size=8, calibration=x.numpy())
    for a, b in zip(hooked.report.layers, propagated.report.layers):
        assert a.output_sqnr_db == pytest.approx(b.output_sqnr_db, rel=1e-6)


def test_fastkan_width_override_and_conv_grid_options(trained):
    _, _, sd = trained["fastkan"]
    default = sharekan.compress(sd, codebook_size=4).report.layers[0].basis
    assert default == "rbf(M=8, h=0.5714)"
    wide = sharekan.compress(sd, codebook_size=4, layout_options={"denominator": 1.0})
    assert wide.report.layers[0].basis == "rbf(M=8, h=1)"
    _, _, conv = trained["torch-conv-kan"]
    report = sharekan.compress(conv, codebook_size=4, layout="torch-conv-kan",
                               layout_options={"grid_size": 5, "spline_order": 3, "grid_range": (-2, 2)}).report
    assert report.layers[0].basis == "bspline(G=5, k=3)"
    with pytest.raises(sharekan.errors.LayoutError, match="grid_size"):
        sharekan.compress(conv, codebook_size=4, layout_options={"grid_size": 6, "spline_order": 3})


def test_conv_layers_keep_edge_biases_and_count_edges(trained):
    _, _, sd = trained["torch-conv-kan"]
    report = sharekan.compress(sd, codebook_size=4, bias="fold").report
    first = report.layers[0]
    assert first.bias == "edge"
    assert (first.n_in, first.n_out) == (2 * 9, 4)  # (channels * taps) -> outputs


def test_compress_in_place_recognises_and_refuses_other_libraries(trained):
    model, _, _ = trained["torch-conv-kan"]
    with pytest.raises(UnsupportedLayerError, match="torch-conv-kan"):
        compress_(model, codebook_size=4)
    assert type(model.layers[0]).__name__ == "KANConv2DLayer"  # nothing swapped
    model, _, _ = trained["torchkan"]
    with pytest.raises(UnsupportedLayerError, match="torchkan"):
        compress_(model, codebook_size=4)


def test_chebykan_runs_through_lutham_numpy_torch_and_pte(trained, tmp_path):
    """ChebyKAN (Chebyshev basis of tanh x, no base branch): CompressedModel.forward (Rust
    evaluator), LuthamLinear modules (eager op) and an exported .pte (C++ kernel in the
    ExecuTorch runtime) agree with the library's forward on the decompressed state_dict,
    int8 and float storage, batch 1 and odd batches."""
    pytest.importorskip("executorch.runtime")
    from sharekan import lutham
    from sharekan.errors import LuthamBuildError
    from sharekan.export import export_pte
    from sharekan.torch import LuthamLinear

    try:
        lutham.load_library()
    except LuthamBuildError as exc:
        pytest.skip(f"LUTHAM kernel library unavailable: {exc}")
    from executorch.runtime import Runtime

    model, x, sd = trained["chebykan"]
    for cfg in (sharekan.Config(codebook_size=8), sharekan.Config(codebook_size=16, int8=False)):
        compressed = sharekan.compress(sd, cfg)
        lib = _load("chebykan", compressed.decompress())
        net = torch.nn.Sequential(*(LuthamLinear.from_compressed(layer)
                                    for layer in compressed.layers.values())).eval()
        assert all(m.basis == 2 for m in net)
        path = export_pte(net, (x[:2],), tmp_path / "cheby.pte")
        method = Runtime.get().load_program(str(path)).load_method("forward")
        for batch in (1, 3, 13, 64):
            xb = x[:batch].contiguous()
            want = _run(lib, xb)
            tol = dict(rtol=1e-4, atol=2e-5 * np.abs(want).max())
            np.testing.assert_allclose(compressed.forward(xb.numpy()), want, **tol)
            with torch.no_grad():
                np.testing.assert_allclose(net(xb).numpy(), want, **tol)
            got = method.execute([xb])[0].numpy()
            np.testing.assert_allclose(got, want, **tol)
        # the module's state_dict round-trips the basis parameters
        again = LuthamLinear.from_state_dict(net[0].state_dict())
        assert (again.basis, again.base_act) == (2, 0)
