"""Reference KAN modules with efficient-kan's state_dict layout.

`KANLinear` / `KAN` reproduce efficient-kan's forward pass and parameter names
(`base_weight`, `spline_weight`, `spline_scaler`, buffer `grid`), so a checkpoint trained
here is an efficient-kan checkpoint. sharekan uses them to train models for tests,
benchmarks and the demo; they are not needed to compress a checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def bspline_basis(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """B-spline basis values of efficient-kan's recursion.

    Args:
        x: (batch, n_in) inputs.
        grid: (n_in, G + 2k + 1) knots per input, strictly increasing.
        spline_order: k.

    Returns:
        (batch, n_in, G + k) basis values; all zero outside [grid[:, 0], grid[:, -1]).

    Uniform knot rows that are the same for every input (efficient-kan's grid until
    `update_grid`) take a local path: only the k + 1 non-zero values per input are
    computed, then scattered, which is several times cheaper in training than the full
    recursion. Both agree to float rounding (tests/test_torch_kan.py).
    """
    # under torch.export / torch.compile the data-dependent checks cannot run: the recursion
    # traces to plain tensor ops, which is also what a .pte of the dense model should hold
    if spline_order >= 1 and not torch.compiler.is_compiling() and _shared_uniform(grid):
        return _uniform_basis(x, grid, spline_order)
    return bspline_basis_recursion(x, grid, spline_order)


def bspline_basis_recursion(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """Cox-de Boor over every knot interval, as efficient-kan computes it (any knots)."""
    x = x.unsqueeze(-1)  # (batch, n_in, 1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for order in range(1, spline_order + 1):
        left = (x - grid[:, : -(order + 1)]) / (grid[:, order:-1] - grid[:, : -(order + 1)])
        right = (grid[:, order + 1 :] - x) / (grid[:, order + 1 :] - grid[:, 1:(-order)])
        bases = left * bases[:, :, :-1] + right * bases[:, :, 1:]
    return bases


def _shared_uniform(grid: torch.Tensor) -> bool:
    """True when every row of `grid` is the same uniformly spaced knot vector."""
    if grid.dim() != 2 or grid.shape[1] < 2:
        return False
    first = grid[0]
    steps = first[1:] - first[:-1]
    h = steps.mean()
    tol = 1e-5 * float(first.abs().max() + h.abs())
    return bool(h > 0 and (steps - h).abs().max() <= tol and (grid - first).abs().max() <= tol)


def _uniform_basis(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """The k + 1 non-zero cardinal B-spline values per input, scattered into (batch, n_in, M).

    With t = (x - g0) / h in knot units and cell i = floor(t), u = t - i, the local values
    b_m (basis j = i - k + m) follow the uniform Cox-de Boor recursion
    b^d_m = ((u + d - m) b^{d-1}_{m-1} + (m + 1 - u) b^{d-1}_m) / d.
    """
    n_knots = grid.shape[1]
    n_basis = n_knots - k - 1
    h = (grid[0, -1] - grid[0, 0]) / (n_knots - 1)
    t = (x - grid[0, 0]) / h
    cell = torch.floor(t)
    # outside [g0, g_last): every basis is zero (also for NaN inputs, as in the recursion)
    inside = (x >= grid[0, 0]) & (x < grid[0, -1])
    cell = torch.where(inside, cell, torch.zeros_like(cell)).clamp_(0, n_knots - 2)
    u = (t - cell).unsqueeze(-1)
    local = [torch.ones_like(u)]
    for d in range(1, k + 1):
        nxt: list[torch.Tensor] = []
        for m in range(d + 1):
            v: torch.Tensor | int = 0
            if m >= 1:
                v = (u + (d - m)) * local[m - 1]
            if m < d:
                v = v + ((m + 1) - u) * local[m]
            assert isinstance(v, torch.Tensor)  # d >= 1, so m >= 1 or m < d made it a tensor
            nxt.append(v / d)
        local = nxt
    values = torch.cat(local, dim=-1) * inside.unsqueeze(-1).to(x.dtype)  # (batch, n_in, k + 1)
    # padded column i + m holds basis j = i - k + m; columns k .. k + M - 1 are the bases
    index = cell.long().unsqueeze(-1) + torch.arange(k + 1, device=x.device)
    padded = torch.zeros(*x.shape, n_knots + k, dtype=x.dtype, device=x.device)
    padded.scatter_(-1, index, values)
    nan = torch.isnan(x)
    if bool(nan.any()):  # the recursion turns a NaN input into NaN basis values
        padded = torch.where(nan.unsqueeze(-1), float("nan"), padded)
    return padded[..., k : k + n_basis]


class KANLinear(nn.Module):
    """One KAN layer: y = SiLU(x) @ base_weight.T + B(x) @ (spline_weight * spline_scaler).T.

    Shapes: base_weight (n_out, n_in); spline_weight (n_out, n_in, G + k);
    spline_scaler (n_out, n_in); grid buffer (n_in, G + 2k + 1), uniform on
    `grid_range` extended by k intervals on each side.
    """

    grid: torch.Tensor  # registered buffer (declared for type checkers)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        enable_standalone_scale_spline: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.grid_size = grid_size
        self.spline_order = spline_order
        step = (grid_range[1] - grid_range[0]) / grid_size
        knots = torch.arange(-spline_order, grid_size + spline_order + 1) * step + grid_range[0]
        self.register_buffer("grid", knots.expand(in_features, -1).contiguous())
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(
            torch.empty(out_features, in_features, grid_size + spline_order)
        )
        self.enable_standalone_scale_spline = enable_standalone_scale_spline
        if enable_standalone_scale_spline:
            self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        with torch.no_grad():
            bound = 0.1 / self.grid_size
            nn.init.uniform_(self.spline_weight, -bound, bound)
            if self.enable_standalone_scale_spline:
                nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5))

    @property
    def scaled_spline_weight(self) -> torch.Tensor:
        """(n_out, n_in, G + k) coefficients with the per-edge scaler folded in."""
        if self.enable_standalone_scale_spline:
            return self.spline_weight * self.spline_scaler.unsqueeze(-1)
        return self.spline_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        base = F.linear(F.silu(x), self.base_weight)
        basis = bspline_basis(x, self.grid, self.spline_order)  # (batch, n_in, M)
        spline = F.linear(
            basis.reshape(x.shape[0], -1),
            self.scaled_spline_weight.reshape(self.out_features, -1),
        )
        return (base + spline).reshape(*lead, self.out_features)


class KAN(nn.Module):
    """A stack of `KANLinear` layers; `layers_hidden` lists the widths, e.g. [64, 32, 10]."""

    def __init__(
        self,
        layers_hidden: list[int],
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            KANLinear(n_in, n_out, grid_size, spline_order, grid_range)
            for n_in, n_out in zip(layers_hidden, layers_hidden[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
