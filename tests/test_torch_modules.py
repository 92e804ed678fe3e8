"""`sharekan.torch`: the `sharekan::lutham` op (eager = Rust evaluator), `LuthamLinear`,
`compress_` and state_dict save / reload, against the Rust evaluator, the decompressed
dense PyTorch KAN and the NumPy oracle."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sharekan._core")

import oracle  # noqa: E402
from conftest import random_layer  # noqa: E402
from torch import nn  # noqa: E402

import sharekan  # noqa: E402
from sharekan.errors import InvalidInputError  # noqa: E402
from sharekan.torch import (  # noqa: E402
    KAN,
    KANLinear,
    LuthamLinear,
    compress_,
    load_compressed_,
    lutham,
    lutham_layers,
)
from sharekan.torch.kan import bspline_basis  # noqa: E402

WIDTHS = [12, 9, 5]


def _kan(seed: int, widths=WIDTHS, grid_size=5, k=3) -> KAN:
    torch.manual_seed(seed)
    model = KAN(list(widths), grid_size=grid_size, spline_order=k)
    with torch.no_grad():  # make the spline path matter as much as the base branch
        for layer in model.layers:
            layer.spline_weight.mul_(20.0)
    return model.eval()


def _inputs(seed: int, batch: int, n_in: int, lo=-1.6, hi=1.6) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(lo, hi, size=(batch, n_in)).astype(np.float32))


def _dense_from(compressed, widths=WIDTHS, grid_size=5, k=3) -> KAN:
    dense = KAN(list(widths), grid_size=grid_size, spline_order=k)
    dense.load_state_dict({key: torch.from_numpy(np.asarray(v, dtype=np.float32))
                           for key, v in compressed.decompress().items()})
    return dense.eval()


def _close(a, b, rel=2e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, atol=rel * (np.abs(b).max() + 1e-6), rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 2, 7, 33])
def test_compressed_module_matches_rust_dense_and_oracle(batch):
    model = _kan(0)
    originals = list(model.layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compressed_model = compress_(model, codebook_size=16, bias="edge")
    assert compressed_model is model
    assert set(lutham_layers(model)) == {"layers.0", "layers.1"}
    cm = model._sharekan_compressed
    x = _inputs(batch, batch, WIDTHS[0])  # about 40 % of inputs outside the grid [-1, 1]
    with torch.no_grad():
        y = model(x).numpy()
    _close(y, cm.forward(x.numpy()))  # Rust evaluator, layer by layer
    h = x.numpy()
    for layer in cm.layers.values():
        h = oracle.lutham_dense(h, **layer.lutham_inputs())
    _close(y, h)  # NumPy oracle (dense float64 on decoded coefficients)
    with torch.no_grad():
        _close(y, _dense_from(cm)(x).numpy())  # dense PyTorch KAN, decompressed weights
    # compress_ reads the weights, it does not modify the tensors it was given
    for i, layer in enumerate(originals):
        for key, value in layer.state_dict().items():
            assert torch.equal(value, before[f"layers.{i}.{key}"]), key


def test_folded_bias_layer_matches_rust_and_oracle():
    model = _kan(1)
    compress_(model, codebook_size=8, bias="fold")
    mods = lutham_layers(model)
    assert all(m.edge_bias.numel() == 0 and m.out_bias.numel() > 0 for m in mods.values())
    x = _inputs(2, 9, WIDTHS[0])
    with torch.no_grad():
        y = model(x).numpy()
    _close(y, model._sharekan_compressed.forward(x.numpy()))
    h = x.numpy()
    for layer in model._sharekan_compressed.layers.values():
        h = oracle.lutham_dense(h, **layer.lutham_inputs())
    _close(y, h)


def test_int8_buffers_and_leading_dims():
    model = _kan(2)
    compress_(model, codebook_size=32, bias="edge")
    first = model.layers[0]
    assert isinstance(first, LuthamLinear)
    assert first.codes.dtype == torch.uint8 and first.gains.dtype == torch.int8
    assert first.base_weight.dtype == torch.int8 and first.edge_bias.dtype == torch.int8
    assert first.spline_order == 3 and first.grid_size == 5 and first.codebook_size == 32
    assert first.grid.shape == (1, 5 + 2 * 3 + 1)  # efficient-kan's grid: one shared row
    x = _inputs(3, 6, WIDTHS[0]).reshape(2, 3, WIDTHS[0])
    with torch.no_grad():
        y = model(x)
        flat = model(x.reshape(6, WIDTHS[0]))
    assert y.shape == (2, 3, WIDTHS[-1])
    torch.testing.assert_close(y.reshape(6, -1), flat, rtol=0, atol=0)


@pytest.mark.parametrize("batch", [1, 12])
def test_shared_and_per_input_grid_buffers(batch):
    """A layer whose inputs share one knot row gets a (1, NG) grid buffer; one with
    per-input knots (as after efficient-kan's update_grid) keeps (n_in, NG). Both match
    the Rust evaluator on the full grid and the decompressed dense KAN."""
    model = _kan(5)
    with torch.no_grad():
        grid = model.layers[0].grid
        grid.add_(torch.linspace(0.0, 0.2, grid.shape[0], dtype=grid.dtype)[:, None])
    compress_(model, codebook_size=16, bias="edge")
    assert model.layers[0].grid.shape == (WIDTHS[0], 12)
    assert model.layers[1].grid.shape == (1, 12)
    cm = model._sharekan_compressed
    x = _inputs(6, batch, WIDTHS[0])
    with torch.no_grad():
        y = model(x).numpy()
        _close(y, _dense_from(cm)(x).numpy())
    h = x.numpy()
    for layer in cm.layers.values():
        full = {**layer.lutham_inputs(), "grid": layer.grid.astype(np.float32)}
        assert full["grid"].shape == (layer.n_in, 12)
        h = sharekan._core.lutham_forward(h, **full)
    np.testing.assert_array_equal(y, h)  # (1, NG) and (n_in, NG): the same bits


def test_state_dict_round_trip(tmp_path):
    model = _kan(3)
    compress_(model, codebook_size=16)
    x = _inputs(4, 5, WIDTHS[0])
    with torch.no_grad():
        y = model(x)
    path = tmp_path / "kan_compressed.pt"
    torch.save(model.state_dict(), path)
    state = torch.load(path)
    assert state["layers.0.codes"].dtype == torch.uint8
    fresh = KAN(WIDTHS, grid_size=5, spline_order=3)  # uncompressed architecture
    load_compressed_(fresh, state)
    assert set(lutham_layers(fresh)) == {"layers.0", "layers.1"}
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)
    for key, value in fresh.state_dict().items():
        assert value.dtype == state[key].dtype and torch.equal(value, state[key]), key
    # loading into an already compressed model of other sizes reshapes its buffers
    other = _kan(4, widths=[12, 9, 5])
    compress_(other, codebook_size=4, bias="fold")
    other.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(other(x), y, rtol=0, atol=0)


class DuckKANLinear(nn.Module):
    """efficient-kan layout by attributes only (not a KANLinear subclass)."""

    def __init__(self, n_in: int, n_out: int, grid_size: int = 4, k: int = 3) -> None:
        super().__init__()
        ref = KANLinear(n_in, n_out, grid_size, k)
        self.spline_order = k
        self.base_weight = nn.Parameter(ref.base_weight.detach().clone())
        self.spline_weight = nn.Parameter(ref.spline_weight.detach().clone() * 10)
        self.register_buffer("grid", ref.grid.clone())

    def forward(self, x):
        basis = bspline_basis(x, self.grid, self.spline_order)
        spline = basis.reshape(x.shape[0], -1) @ self.spline_weight.reshape(
            self.spline_weight.shape[0], -1).T
        return nn.functional.silu(x) @ self.base_weight.T + spline


def test_compress_duck_typed_layer_inside_other_modules():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), DuckKANLinear(10, 4)).eval()
    linear_before = model[0].weight.detach().clone()
    compress_(model, codebook_size=8, bias="edge")
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], LuthamLinear)
    assert torch.equal(model[0].weight, linear_before)
    cm = model._sharekan_compressed
    assert list(cm.layers) == ["2"]
    x = _inputs(6, 7, 6)
    with torch.no_grad():
        h = model[1](model[0](x)).numpy()
        y = model(x).numpy()
    _close(y, cm.forward(h))


def test_compress_root_layer_and_errors():
    torch.manual_seed(6)
    layer = KANLinear(8, 3, grid_size=4)
    new = compress_(layer, codebook_size=4)
    assert isinstance(new, LuthamLinear)
    with torch.no_grad():
        assert new(_inputs(7, 2, 8)).shape == (2, 3)
    with pytest.raises(InvalidInputError, match="no efficient-kan-layout KAN layer"):
        compress_(nn.Sequential(nn.Linear(3, 3)))


def test_op_eager_bad_inputs_raise_sharekan_errors():
    rng = np.random.default_rng(8)
    layer = random_layer(rng, 5, 4, 5, 3, 6, code_dtype=np.int16, weight_kind="int8")
    t = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in layer.items()}
    x = torch.zeros(3, 5)
    y = lutham(x, t["grid"], t["codebook"], t["codes"], t["gains"], t["gain_scale"],
               t["edge_bias"], t["edge_bias_scale"], t["out_bias"], t["base_weight"],
               t["base_scale"], k=3)
    _close(y.numpy(), oracle.lutham_dense(x.numpy(), **layer))
    bad_codes = t["codes"].clone()
    bad_codes[1, 2] = 6
    with pytest.raises(sharekan.errors.InvalidInputError):
        lutham(x, t["grid"], t["codebook"], bad_codes, t["gains"], t["gain_scale"], k=3)
    with pytest.raises(sharekan.errors.InvalidInputError):
        lutham(x, t["grid"], t["codebook"], t["codes"], t["gains"].to(torch.int16), k=3)
    with pytest.raises(sharekan.errors.InvalidInputError):
        lutham(torch.zeros(3, 4), t["grid"], t["codebook"], t["codes"], t["gains"], k=3)


def test_fake_impl_traces_with_dynamic_batch():
    model = _kan(9)
    compress_(model, codebook_size=8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (_inputs(10, 4, WIDTHS[0]),),
                             dynamic_shapes=({0: batch},))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("sharekan.lutham.default") == 2
    x = _inputs(11, 3, WIDTHS[0])
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))
