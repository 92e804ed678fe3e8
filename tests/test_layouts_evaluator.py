"""FastKAN and TorchKAN layers run through sharekan's evaluator: the LUTHAM op plus the
parts around it (FastKAN: the op on LayerNorm(x), act(x) @ base + base bias outside it;
TorchKAN: LayerNorm after the op), in NumPy (`CompressedModel.forward`), in torch
(`LuthamKANLayer`, `compress_`) and in an exported .pte, against the library's forward on
the decompressed state_dict; layers whose needed tensors are not stored are refused."""

from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sharekan  # noqa: E402
from fixtures_kan_libraries import (  # noqa: E402
    FastKAN,
    TorchKAN,
    load_case,
    run_case,
    train_cases,
)
from sharekan.layouts import UnsupportedLayerError  # noqa: E402
from sharekan.errors import LayoutError, ShapeError  # noqa: E402
from sharekan.torch import LuthamKANLayer, LuthamLinear, compress_, load_compressed_  # noqa: E402

CASES = {
    "fastkan": (lambda: FastKAN([4, 6, 3]), lambda g: torch.randn(64, 4, generator=g) * 1.5),
    "torchkan": (lambda: TorchKAN([4, 6, 3]), lambda g: torch.rand(64, 4, generator=g) * 2.4 - 1.2),
}
CONFIGS = (sharekan.Config(codebook_size=8), sharekan.Config(codebook_size=16, int8=False),
           sharekan.Config(codebook_size=8, base="int4", bias="edge"))


@pytest.fixture(scope="module")
def trained():
    return train_cases(CASES, seed=3)


def _load(name, state_dict):
    return load_case(CASES[name][0], state_dict)


def _run(model, x):
    return run_case(model, x)


def _tol(want):
    return dict(rtol=1e-4, atol=2e-5 * np.abs(want).max())


def _saved(model):
    """`model.state_dict()` through torch.save / torch.load (in memory)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer)


def _lutham_net(compressed):
    return torch.nn.Sequential(*(LuthamKANLayer.from_compressed(layer)
                                 for layer in compressed.layers.values())).eval()


@pytest.mark.parametrize("name", list(CASES))
def test_numpy_and_torch_match_the_library_on_the_decompressed_state_dict(name, trained, tmp_path):
    model, x, sd = trained[name]
    for cfg in CONFIGS:
        compressed = sharekan.compress(sd, cfg)
        assert all(r.evaluator == "lutham" for r in compressed.report.layers)
        lib = _load(name, compressed.decompress())
        net = torch.nn.Sequential(*(LuthamKANLayer.from_compressed(layer)
                                    for layer in compressed.layers.values())).eval()
        assert all(isinstance(m, LuthamKANLayer) for m in net)
        for batch in (1, 3, 64):
            xb = x[:batch].contiguous()
            want = _run(lib, xb)
            np.testing.assert_allclose(compressed.forward(xb.numpy()), want, **_tol(want))
            np.testing.assert_allclose(_run(net, xb), want, **_tol(want))
        # inputs far outside the fixture's range (RBF tails, B-spline outside the grid)
        xf = x[:8] * 4
        want = _run(lib, xf)
        np.testing.assert_allclose(compressed.forward(xf.numpy()), want, **_tol(want))
        # the saved artifact keeps the extras: the reloaded model runs the same
        path = str(tmp_path / f"{name}.sharekan")
        compressed.save(path)
        again = sharekan.load(path)
        np.testing.assert_array_equal(again.forward(x.numpy()), compressed.forward(x.numpy()))


def test_fastkan_layer_without_base_branch_or_bias(trained):
    _, x, sd = trained["fastkan"]
    sd = {k: v for k, v in sd.items() if "base_linear" not in k}
    compressed = sharekan.compress(sd, codebook_size=8)
    assert all(r.evaluator == "lutham" for r in compressed.report.layers)
    model = FastKAN([4, 6, 3])
    for layer in model.layers:
        layer.base_linear = None
        layer.forward = (lambda lyr: lambda v: lyr.spline_linear(  # noqa: E731
            lyr.rbf(lyr.layernorm(v)).reshape(len(v), -1)))(layer)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in compressed.decompress().items()})
    want = _run(model.eval(), x)
    np.testing.assert_allclose(compressed.forward(x.numpy()), want, **_tol(want))


def test_compress_in_place_swaps_fastkan_layers(trained):
    model, x, sd = trained["fastkan"]
    model = copy.deepcopy(model)
    compress_(model, codebook_size=8)
    assert all(isinstance(m, LuthamKANLayer) for m in model.layers)
    compressed = model._sharekan_compressed
    want = _run(_load("fastkan", compressed.decompress()), x)
    np.testing.assert_allclose(_run(model, x), want, **_tol(want))


@pytest.mark.parametrize("name", list(CASES))
def test_saved_state_dict_reloads_into_a_fresh_model_bit_exactly(name, trained):
    """compress -> state_dict -> torch.save -> fresh model -> load_compressed_ runs the same
    buffers through the same op: FastKAN via compress_ into a fresh uncompressed FastKAN;
    TorchKAN (compress_ refuses it: one module holds every layer) as LuthamKANLayers built
    per layer, reloaded into ones of another codebook size and storage."""
    model, x, sd = trained[name]
    if name == "fastkan":
        compressed = compress_(copy.deepcopy(model), codebook_size=8, base="int4", bias="edge")
        torch.manual_seed(11)
        fresh = FastKAN([4, 6, 3])
    else:
        compressed = _lutham_net(sharekan.compress(sd, codebook_size=8))
        fresh = _lutham_net(sharekan.compress(sd, codebook_size=4, int8=False))
    want = _run(compressed, x)
    state = _saved(compressed)
    assert load_compressed_(fresh, state) is fresh
    layers = list(getattr(fresh, "layers", fresh))
    assert all(isinstance(m, LuthamKANLayer) for m in layers)
    np.testing.assert_array_equal(_run(fresh, x), want)
    for key, value in fresh.state_dict().items():
        assert value.dtype == state[key].dtype and torch.equal(value, state[key]), key
    for new, old in zip(layers, getattr(compressed, "layers", compressed)):
        assert (new.split, new.post_norm, new.eps, new.activation) == \
            (old.split, old.post_norm, old.eps, old.activation)
    if name == "torchkan":  # plain load_state_dict into compressed layers of other sizes
        other = _lutham_net(sharekan.compress(sd, codebook_size=4, int8=False))
        other.load_state_dict(state)
        np.testing.assert_array_equal(_run(other, x), want)


def test_load_compressed_bad_state_dicts_raise_sharekan_errors(trained):
    model, _, _ = trained["fastkan"]
    state = _saved(compress_(copy.deepcopy(model), codebook_size=8))
    for key in ("layers.1.kan_params", "layers.1.base_scale", "layers.1.lutham.codes"):
        bad = {k: v for k, v in state.items() if k != key}
        with pytest.raises(LayoutError, match=key.replace(".", r"\.")):
            load_compressed_(FastKAN([4, 6, 3]), bad)
    for key, value in (("layers.0.norm_weight", torch.ones(5)),
                       ("layers.0.base_weight", torch.zeros(6, 4, dtype=torch.int8)),
                       ("layers.0.kan_params", torch.zeros(3, dtype=torch.float64))):
        with pytest.raises(ShapeError, match=key.rpartition(".")[2]):
            load_compressed_(FastKAN([4, 6, 3]), {**state, key: value})
    with pytest.raises(LayoutError, match="activation index 7"):
        load_compressed_(FastKAN([4, 6, 3]),
                         {**state, "layers.0.kan_params": torch.tensor([1.0, 0.0, 1e-5, 7.0],
                                                                       dtype=torch.float64)})


@pytest.mark.parametrize("name", list(CASES))
def test_exported_pte_matches(name, trained, tmp_path):
    pytest.importorskip("executorch.runtime")
    from sharekan import lutham
    from sharekan.errors import LuthamBuildError
    from sharekan.export import export_pte

    try:
        lutham.load_library()
    except LuthamBuildError as exc:
        pytest.skip(f"LUTHAM kernel library unavailable: {exc}")
    from executorch.runtime import Runtime

    _, x, sd = trained[name]
    compressed = sharekan.compress(sd, codebook_size=8)
    lib = _load(name, compressed.decompress())
    # exported after a state_dict round trip (rebuilt by load_compressed_)
    net = load_compressed_(_lutham_net(sharekan.compress(sd, codebook_size=4)),
                           _saved(_lutham_net(compressed))).eval()
    path = export_pte(net, (x[:2],), tmp_path / f"{name}.pte")
    method = Runtime.get().load_program(str(path)).load_method("forward")
    for batch in (1, 2, 13):
        xb = x[:batch].contiguous()
        want = _run(lib, xb)
        np.testing.assert_allclose(method.execute([xb])[0].numpy(), want, **_tol(want))


@pytest.mark.parametrize(("name", "drop", "match"), [
    ("fastkan", ("norm_weight",), "layernorm on the spline input, but its norm_weight"),
    ("fastkan", ("norm_weight", "norm_bias"), "norm_weight and norm_bias are not stored"),
    ("fastkan", ("base_bias",), "base-branch bias not stored with the layer"),
    ("torchkan", ("norm_bias",), "post-sum layernorm, but its norm_bias"),
])
def test_layers_without_their_tensors_are_refused(name, drop, match, trained):
    _, x, sd = trained[name]
    compressed = sharekan.compress(sd, codebook_size=8)
    layer = compressed.layers["layers.0"]
    stripped = dataclasses.replace(layer, extras={k: v for k, v in layer.extras.items()
                                                  if k not in drop})
    assert match in stripped.unsupported_reason()
    with pytest.raises(UnsupportedLayerError, match="layers.0"):
        stripped.forward(x.numpy())
    with pytest.raises(UnsupportedLayerError, match=match):
        LuthamKANLayer.from_compressed(stripped)
    compressed.layers["layers.0"] = stripped
    with pytest.raises(UnsupportedLayerError, match="layers.0"):
        compressed.forward(x.numpy())


def test_a_plain_layer_builds_a_plain_luthamlinear(trained):
    _, _, sd = trained["torchkan"]
    compressed = sharekan.compress(sd, codebook_size=8)
    layer = compressed.layers["layers.0"]
    plain = dataclasses.replace(layer, semantics=dataclasses.replace(layer.semantics, post=()))
    assert isinstance(LuthamKANLayer.from_compressed(plain), LuthamLinear)
