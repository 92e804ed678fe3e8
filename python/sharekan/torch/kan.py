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
    """B-spline basis values, efficient-kan's recursion.

    Args:
        x: (batch, n_in) inputs.
        grid: (n_in, G + 2k + 1) knots per input, strictly increasing.
        spline_order: k.

    Returns:
        (batch, n_in, G + k) basis values; all zero outside [grid[:, 0], grid[:, -1]).
    """
    x = x.unsqueeze(-1)  # (batch, n_in, 1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for order in range(1, spline_order + 1):
        left = (x - grid[:, : -(order + 1)]) / (grid[:, order:-1] - grid[:, : -(order + 1)])
        right = (grid[:, order + 1 :] - x) / (grid[:, order + 1 :] - grid[:, 1:(-order)])
        bases = left * bases[:, :, :-1] + right * bases[:, :, 1:]
    return bases


class KANLinear(nn.Module):
    """One KAN layer: y = SiLU(x) @ base_weight.T + B(x) @ (spline_weight * spline_scaler).T.

    Shapes: base_weight (n_out, n_in); spline_weight (n_out, n_in, G + k);
    spline_scaler (n_out, n_in); grid buffer (n_in, G + 2k + 1), uniform on
    `grid_range` extended by k intervals on each side.
    """

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
