"""Residual stages in `sharekan.torch`: a `LuthamLinear` built from a multi-stage layer
(`sharekan.compress(..., stages=S)`, with and without a byte budget that drops edges and
thins the later stages) against the Rust evaluator and a float64 oracle on the decoded
coefficients; state_dict save / reload; the portable and Triton implementations; and the
exported programs (C++ kernel and portable) with one `sharekan::lutham` call per stage.
(`export_onnx` runs the same portable decomposition; it is left out for time.)"""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sharekan._core")

# Triton's interpreter must be chosen before triton is first imported (see
# tests/test_triton_lutham.py); on a CPU-only machine nothing else needs compiled Triton.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import oracle  # noqa: E402
from fixtures_kan_libraries import FastKAN  # noqa: E402
from torch import nn  # noqa: E402

from sharekan.errors import LayoutError, LuthamBuildError, ShapeError  # noqa: E402
from sharekan.torch import (  # noqa: E402
    KAN,
    LuthamKANLayer,
    LuthamLinear,
    compress_,
    load_compressed_,
    lutham_layers,
    ops,
)

WIDTHS = [6, 9, 4]
#: Config overrides per case: every edge in every stage, or a byte budget that drops
#: some edges and leaves the later stages sparse (K = 8 / 4 <= 36 edges per layer).
CASES = {
    "stages2": {"stages": 2},
    "stages3": {"stages": 3},
    "budget": {"stages": 3, "target_bytes_per_edge": 8.0, "drop_edges": True},
}
COMMON = {"codebook_size": 8, "stage_codebook_size": 4, "bias": "edge"}


def _kan() -> KAN:
    torch.manual_seed(0)
    model = KAN(WIDTHS, grid_size=5, spline_order=3)
    with torch.no_grad():  # make the spline path matter as much as the base branch
        for layer in model.layers:
            layer.spline_weight.mul_(20.0)
    return model.eval()


def _x(batch: int = 11, n_in: int = WIDTHS[0], seed: int = 1) -> torch.Tensor:
    # about a third of the inputs outside the grid [-1, 1]
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-1.6, 1.6, size=(batch, n_in)).astype(np.float32))


def _eager(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def _close(got, want, rel: float) -> None:
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0,
                               atol=rel * np.abs(want).max())


def _oracle(compressed, x: np.ndarray) -> np.ndarray:
    """Float64 dense forward on `decoded_coeffs()` (every stage summed in coefficient space)."""
    h = np.asarray(x, dtype=np.float64)
    for layer in compressed.layers.values():
        assert layer.out_bias is None  # bias="edge": the biases are in the coefficients
        basis = oracle.bspline_basis(h, layer.grid, layer.spline_order)
        y = np.einsum("bim,iom->bo", basis, layer.decoded_coeffs())
        h = y + oracle.silu(h) @ layer.base_weights()
    return h


@pytest.fixture(scope="module", params=list(CASES))
def staged(request):
    """(case name, compressed torch KAN)."""
    return request.param, compress_(_kan(), **COMMON, **CASES[request.param])


def test_matches_rust_and_oracle(staged):
    case, model = staged
    cm = model._sharekan_compressed
    layers = lutham_layers(model)  # a layer's stages are not layers of their own
    assert list(layers) == ["layers.0", "layers.1"]
    for name, mod in layers.items():
        stages = cm.layers[name].stages
        assert len(mod.stages) == len(stages) >= 1
        assert f"stages={1 + len(stages)}" in mod.extra_repr()
        assert mod.nbytes == sum(b.nbytes for b in mod.buffers())
        assert mod.nbytes > sum(getattr(mod, b).nbytes for b in ("codebook", "codes", "gains"))
        if case != "budget":
            assert len(stages) == CASES[case]["stages"] - 1
    if case == "budget":  # the budget really dropped edges and thinned stages
        assert any((layer.gains == 0).any() for layer in cm)
        assert any(not stage.active().all() for layer in cm for stage in layer.stages)
    x = _x()
    y = _eager(model, x)
    _close(y, cm.forward(x.numpy()), 1e-5)
    _close(y, _oracle(cm, x.numpy()), 1e-4)
    # the checks above see the stages: without them (their keys left out of a load, so the
    # layers lose them) the output is far outside the tolerances
    first_only = copy.deepcopy(model)
    first_only.load_state_dict({k: v for k, v in model.state_dict().items() if ".stages." not in k})
    assert not any(hasattr(mod, "stages") for mod in lutham_layers(first_only).values())
    assert np.abs(_eager(first_only, x) - y).max() > 1e-3 * np.abs(y).max()


def test_state_dict_round_trip(staged, tmp_path):
    _, model = staged
    x = _x()
    y = _eager(model, x)
    torch.save(model.state_dict(), tmp_path / "staged.pt")
    saved = torch.load(tmp_path / "staged.pt")
    assert any(".stages.0." in key for key in saved)
    # into the uncompressed architecture
    fresh = load_compressed_(_kan(), saved)
    np.testing.assert_array_equal(_eager(fresh, x), y)
    assert fresh.state_dict().keys() == saved.keys()
    # into a compressed single-stage model (stages grow), and back (stages go away)
    single = compress_(_kan(), **COMMON)
    single_state = {k: v.clone() for k, v in single.state_dict().items()}  # loads copy in place
    assert not any(".stages." in key for key in single_state)
    single.load_state_dict(saved)
    np.testing.assert_array_equal(_eager(single, x), y)
    fresh.load_state_dict(single_state)
    assert fresh.state_dict().keys() == single_state.keys()
    np.testing.assert_array_equal(_eager(fresh, x), _eager(compress_(_kan(), **COMMON), x))
    # one layer from its buffers
    layer = LuthamLinear.from_state_dict(saved, "layers.0.")
    np.testing.assert_array_equal(_eager(layer, x), _eager(model.layers[0], x))


def test_portable_and_triton_impls(staged):
    _, model = staged
    x = _x()
    y = _eager(model, x)
    with ops.use_impl("portable"):
        _close(_eager(model, x), y, 1e-5)
    if not ops.triton_available():
        pytest.skip("triton cannot run here (no CUDA device, and triton was imported "
                    "before TRITON_INTERPRET=1 could be set)")
    with ops.use_impl("triton"):
        _close(_eager(model, x), y, 1e-5)


def test_bad_stages_are_refused():
    state = compress_(_kan(), **COMMON, stages=2).state_dict()
    missing = {k: v for k, v in state.items() if k != "layers.0.stages.0.codes"}
    with pytest.raises(LayoutError, match="layers.0.stages.0.codes"):
        load_compressed_(_kan(), missing)
    wrong = dict(state, **{"layers.0.stages.0.codes": state["layers.0.stages.0.codes"][:, :3]})
    with pytest.raises(ShapeError, match="stages.0"):
        load_compressed_(_kan(), wrong)


def _fastkan_staged() -> nn.Module:
    torch.manual_seed(2)
    return compress_(FastKAN([WIDTHS[-1], 3]), codebook_size=4, stages=2, bias="edge").eval()


def test_fastkan_layer_with_stages():
    model = _fastkan_staged()
    layer = model.layers[0]
    assert isinstance(layer, LuthamKANLayer) and len(layer.lutham.stages) == 1
    x = _x(n_in=WIDTHS[-1])
    y = _eager(model, x)
    _close(y, model._sharekan_compressed.forward(x.numpy()), 1e-5)
    torch.manual_seed(2)
    fresh = load_compressed_(FastKAN([WIDTHS[-1], 3]), model.state_dict())
    np.testing.assert_array_equal(_eager(fresh, x), y)


# ---- export ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed():
    """The byte-budget KAN's last layer (two sparse stages) and a staged FastKAN layer
    (LuthamKANLayer); small, as the portable export takes seconds per op call."""
    kan = compress_(_kan(), **COMMON, **CASES["budget"])
    return nn.Sequential(kan.layers[1], _fastkan_staged()).eval()


def test_export_has_one_op_call_per_stage(mixed):
    program = torch.export.export(mixed, (_x(n_in=WIDTHS[1]),))
    calls = [n for n in program.graph.nodes if n.target is torch.ops.sharekan.lutham.default]
    layers = lutham_layers(mixed).values()
    want = sum(1 + len(mod.stages) for mod in layers)
    assert len(calls) == want > len(layers)


@pytest.mark.parametrize("kernel", ["lutham", "portable"])
def test_pte_matches_eager(mixed, kernel, tmp_path):
    pytest.importorskip("executorch.runtime")
    from executorch.runtime import Runtime

    from sharekan import export_pte, lutham

    if kernel == "lutham":
        try:
            lutham.load_library()
        except LuthamBuildError as exc:
            pytest.skip(f"LUTHAM kernel library unavailable: {exc}")
    x = _x(n_in=WIDTHS[1])
    path = export_pte(mixed, (x[:1],), tmp_path / "staged.pte", kernel=kernel, max_batch=16)
    method = Runtime.get().load_program(str(path)).load_method("forward")
    for batch in (1, 11):
        got = method.execute([x[:batch]])[0].numpy()
        _close(got, _eager(mixed, x[:batch]), 1e-5)
