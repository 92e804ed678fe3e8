"""`sharekan.torch.bspline_basis`: the local path for shared uniform grids against
efficient-kan's full recursion and the float64 NumPy oracle, values and gradients,
including knots, grid ends, far-outside inputs and NaN."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oracle  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sharekan.torch.kan import _shared_uniform, bspline_basis, bspline_basis_recursion  # noqa: E402


def _grid(n_in: int, grid_size: int, k: int, lo: float = -1.0, hi: float = 1.0,
          dtype=torch.float32) -> torch.Tensor:
    step = (hi - lo) / grid_size
    knots = torch.arange(-k, grid_size + k + 1, dtype=torch.float64) * step + lo
    return knots.to(dtype).expand(n_in, -1).contiguous()


def _edge_inputs(grid: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    """Random inputs over and beyond the grid, then knots, both ends and far values."""
    g = grid[0]
    span = float(g[-1] - g[0])
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, grid.shape[0], generator=gen) * 1.4 * span + float(g[0]) - 0.2 * span
    special = torch.cat([g, torch.tensor([1e6, -1e6, float(g[-1]) - 1e-7])])
    for i in range(min(grid.shape[0], batch)):
        x[i % batch, i] = special[i % len(special)]
    return x


@pytest.mark.parametrize("grid_size,k", [(10, 3), (5, 3), (3, 1), (7, 2), (4, 5), (1, 3)])
def test_uniform_path_matches_recursion_and_oracle(grid_size, k):
    grid = _grid(19, grid_size, k, lo=-1.5, hi=0.7)
    assert _shared_uniform(grid)
    x = _edge_inputs(grid, 64, seed=grid_size * 10 + k)
    fast = bspline_basis(x, grid, k)
    slow = bspline_basis_recursion(x, grid, k)
    ref = oracle.bspline_basis(x.double().numpy(), grid.double().numpy(), k)
    assert fast.shape == slow.shape == ref.shape
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), atol=3e-6)
    np.testing.assert_allclose(fast.numpy(), ref, atol=3e-6)
    # partition of unity inside the grid's inner range, zero far outside
    inner = (x >= grid[0, k]) & (x < grid[0, -k - 1])
    np.testing.assert_allclose(fast.sum(-1)[inner].numpy(), 1.0, atol=1e-5)
    assert torch.all(fast[x.abs() > 1e5] == 0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_uniform_path_gradient_matches_recursion(k):
    grid = _grid(11, 6, k, dtype=torch.float64)
    gen = torch.Generator().manual_seed(k)
    x = (torch.rand(40, 11, generator=gen, dtype=torch.float64) * 2.4 - 1.2)
    w = torch.randn(40, 11, 6 + k, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (bspline_basis, bspline_basis_recursion):
        xr = x.clone().requires_grad_()
        (fn(xr, grid, k) * w).sum().backward()
        grads.append(xr.grad)
    np.testing.assert_allclose(grads[0].numpy(), grads[1].numpy(), atol=1e-9)


def test_nan_inputs_give_nan_rows_like_the_recursion():
    grid = _grid(3, 5, 3)
    x = torch.tensor([[0.1, float("nan"), -0.4]])
    fast, slow = bspline_basis(x, grid, 3), bspline_basis_recursion(x, grid, 3)
    assert torch.equal(torch.isnan(fast), torch.isnan(slow))
    assert torch.isnan(fast[0, 1]).all() and not torch.isnan(fast[0, [0, 2]]).any()


def test_non_uniform_or_per_input_grids_take_the_recursion():
    grid = _grid(4, 5, 3).clone()
    grid[2] = grid[2] * 1.5  # another (still uniform) knot vector for one input
    assert not _shared_uniform(grid)
    bent = _grid(4, 5, 3).clone()
    bent[:, 4] += 0.05  # non-uniform spacing
    assert not _shared_uniform(bent)
    x = _edge_inputs(grid, 16, seed=3)
    for g in (grid, bent):
        assert torch.equal(bspline_basis(x, g, 3), bspline_basis_recursion(x, g, 3))


@settings(max_examples=40, deadline=None)
@given(grid_size=st.integers(1, 12), k=st.integers(1, 4),
       lo=st.floats(-3, 0, allow_nan=False), width=st.floats(0.1, 5, allow_nan=False),
       seed=st.integers(0, 2**16))
def test_uniform_path_property(grid_size, k, lo, width, seed):
    grid = _grid(5, grid_size, k, lo=lo, hi=lo + width)
    x = _edge_inputs(grid, 8, seed)
    # float32 inputs carry an absolute error ~ eps * |x|, which a basis of slope ~ 1/h amplifies
    atol = 1e-6 * (1.0 + (abs(lo) + width) * grid_size / width)
    np.testing.assert_allclose(bspline_basis(x, grid, k).numpy(),
                               bspline_basis_recursion(x, grid, k).numpy(), atol=atol)


def test_dense_kan_still_exports():
    """torch.export traces the recursion (the local path's checks are data-dependent)."""
    from sharekan.torch import KAN

    torch.manual_seed(0)
    model = KAN([6, 4, 3], grid_size=5).eval()
    x = torch.rand(5, 6) * 2 - 1
    program = torch.export.export(model, (x,))
    np.testing.assert_allclose(program.module()(x).detach().numpy(), model(x).detach().numpy(),
                               atol=1e-5)
