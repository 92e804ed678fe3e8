"""Small torch modules reproducing the forward pass and state_dict layout of KAN libraries
that are not installable from PyPI (FastKAN, ChebyKAN, TorchKAN, torch-conv-kan KANConv and
KAGNConv), written from their documented formulas (REFERENCE.md §1 and each project's
public description), not copied. Parameter and buffer names and shapes match the
libraries', so their state_dicts are the libraries' checkpoints. efficient-kan's layout is
`sharekan.torch.KAN`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def bspline_basis(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """Cox-de Boor on knots grid (..., NG), x (...) -> (..., NG - k - 1), half-open spans."""
    x = x.unsqueeze(-1)
    bases = ((x >= grid[..., :-1]) & (x < grid[..., 1:])).to(x.dtype)
    for p in range(1, k + 1):
        left = (x - grid[..., : -(p + 1)]) / (grid[..., p:-1] - grid[..., : -(p + 1)])
        right = (grid[..., p + 1 :] - x) / (grid[..., p + 1 :] - grid[..., 1:-p])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


def uniform_grid(grid_size: int, k: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    h = (hi - lo) / grid_size
    return torch.linspace(lo - h * k, hi + h * k, grid_size + 2 * k + 1)


# ----------------------------------------------------------------------------- FastKAN
class _RBF(nn.Module):
    def __init__(self, lo: float, hi: float, num_grids: int) -> None:
        super().__init__()
        self.grid = nn.Parameter(torch.linspace(lo, hi, num_grids), requires_grad=False)
        self.denominator = (hi - lo) / (num_grids - 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(((u[..., None] - self.grid) / self.denominator) ** 2))


class FastKANLayer(nn.Module):
    """y = spline_linear(RBF(LayerNorm(x)).flatten) + base_linear(SiLU(x))."""

    def __init__(self, n_in: int, n_out: int, lo: float = -2.0, hi: float = 2.0, num_grids: int = 8) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(n_in)
        self.rbf = _RBF(lo, hi, num_grids)
        self.spline_linear = nn.Linear(n_in * num_grids, n_out, bias=False)
        nn.init.trunc_normal_(self.spline_linear.weight, std=0.1)
        self.base_linear = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        basis = self.rbf(self.layernorm(x))  # (B, n_in, M)
        return self.spline_linear(basis.reshape(*basis.shape[:-2], -1)) + self.base_linear(F.silu(x))


class FastKAN(nn.Module):
    def __init__(self, widths: list[int], num_grids: int = 8) -> None:
        super().__init__()
        self.layers = nn.ModuleList(FastKANLayer(a, b, num_grids=num_grids) for a, b in zip(widths, widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


# ----------------------------------------------------------------------------- ChebyKAN
class ChebyKANLayer(nn.Module):
    """y_o = sum_i sum_d cheby_coeffs[i, o, d] T_d(tanh x_i)."""

    def __init__(self, n_in: int, n_out: int, degree: int) -> None:
        super().__init__()
        self.degree = degree
        self.cheby_coeffs = nn.Parameter(torch.randn(n_in, n_out, degree + 1) / (n_in * (degree + 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(x)
        polys = [torch.ones_like(t), t]
        for _ in range(2, self.degree + 1):
            polys.append(2 * t * polys[-1] - polys[-2])
        cheby = torch.stack(polys[: self.degree + 1], dim=-1)  # (B, n_in, D+1)
        return torch.einsum("bid,iod->bo", cheby, self.cheby_coeffs)


class ChebyKAN(nn.Module):
    def __init__(self, widths: list[int], degree: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ChebyKANLayer(a, b, degree) for a, b in zip(widths, widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


# ----------------------------------------------------------------------------- TorchKAN
class TorchKAN(nn.Module):
    """TorchKAN's `KAN`: per layer x <- LayerNorm(GELU(x) @ base^T + B(x) @ (spline*scaler)^T)."""

    def __init__(self, widths: list[int], grid_size: int = 5, spline_order: int = 3) -> None:
        super().__init__()
        self.spline_order = spline_order
        self.base_weights = nn.ParameterList()
        self.spline_weights = nn.ParameterList()
        self.spline_scalers = nn.ParameterList()
        self.layer_norms = nn.ModuleList()
        self.n_layers = len(widths) - 1
        for index, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
            self.base_weights.append(nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5))
            self.spline_weights.append(nn.Parameter(torch.randn(n_out, n_in, grid_size + spline_order) * 0.1))
            self.spline_scalers.append(nn.Parameter(torch.rand(n_out, n_in) + 0.5))
            self.layer_norms.append(nn.LayerNorm(n_out))
            self.register_buffer(f"grid_{index}", uniform_grid(grid_size, spline_order).expand(n_in, -1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(self.n_layers):
            grid = getattr(self, f"grid_{index}")
            base = F.linear(F.gelu(x), self.base_weights[index])
            bases = bspline_basis(x, grid, self.spline_order)  # (B, n_in, M)
            w = self.spline_weights[index] * self.spline_scalers[index].unsqueeze(-1)
            spline = F.linear(bases.reshape(x.shape[0], -1), w.reshape(w.shape[0], -1))
            x = self.layer_norms[index](base + spline)
        return x


# ----------------------------------------------------------------------------- torch-conv-kan
class KANConv2DLayer(nn.Module):
    """Per group: PReLU(InstanceNorm(base_conv(GELU(x)) + spline_conv(B(x) as c-major M*C channels)))."""

    def __init__(self, n_in: int, n_out: int, kernel_size: int, spline_order: int = 3, groups: int = 1,
                 padding: int = 0, grid_size: int = 5, grid_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.groups, self.spline_order, self.padding = groups, spline_order, padding
        c, o, m = n_in // groups, n_out // groups, grid_size + spline_order
        self.base_conv = nn.ModuleList(nn.Conv2d(c, o, kernel_size, padding=padding, bias=False) for _ in range(groups))
        self.spline_conv = nn.ModuleList(nn.Conv2d(m * c, o, kernel_size, padding=padding, bias=False) for _ in range(groups))
        self.layer_norm = nn.ModuleList(nn.InstanceNorm2d(o) for _ in range(groups))
        self.prelus = nn.ModuleList(nn.PReLU() for _ in range(groups))
        self.grid = uniform_grid(grid_size, spline_order, *grid_range)  # not a buffer: not stored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for g, xg in enumerate(torch.split(x, x.shape[1] // self.groups, dim=1)):
            base = self.base_conv[g](F.gelu(xg))
            bases = bspline_basis(xg, self.grid, self.spline_order)  # (B, C, H, W, M)
            bases = bases.moveaxis(-1, 2).flatten(1, 2)  # (B, C*M, H, W), index c*M + m
            y = self.spline_conv[g](bases)
            outs.append(self.prelus[g](self.layer_norm[g](base + y)))
        return torch.cat(outs, dim=1)


class KAGNConv2DLayer(nn.Module):
    """Per group: SiLU(InstanceNorm(conv(SiLU(P(tanh x)), poly_weights[g]) + base_conv(SiLU(x)))),
    P_0 = 1, P_1 = t, P_i = t P_{i-1} - beta(i-1, i) P_{i-2}, basis channels degree-major."""

    def __init__(self, n_in: int, n_out: int, kernel_size: int, degree: int = 3, groups: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.groups, self.degree, self.padding = groups, degree, padding
        c, o = n_in // groups, n_out // groups
        self.base_conv = nn.ModuleList(nn.Conv2d(c, o, kernel_size, padding=padding, bias=False) for _ in range(groups))
        self.layer_norm = nn.ModuleList(nn.InstanceNorm2d(o) for _ in range(groups))
        self.poly_weights = nn.Parameter(torch.randn(groups, o, c * (degree + 1), kernel_size, kernel_size) * 0.1)
        self.beta_weights = nn.Parameter(torch.randn(degree + 1) * 0.1)

    def beta(self, n: int, m: int) -> torch.Tensor:
        return ((m + n) * (m - n) * n**2) / (m**2 / (4.0 * n**2 - 1.0)) * self.beta_weights[n]

    def gram(self, t: torch.Tensor) -> torch.Tensor:
        p0, out = torch.ones_like(t), [torch.ones_like(t)]
        if self.degree > 0:
            p1 = t
            out.append(p1)
            for i in range(2, self.degree + 1):
                p2 = t * p1 - self.beta(i - 1, i) * p0
                out.append(p2)
                p0, p1 = p1, p2
        return torch.cat(out, dim=1)  # (B, (D+1)*C, H, W), index d*C + c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for g, xg in enumerate(torch.split(x, x.shape[1] // self.groups, dim=1)):
            base = self.base_conv[g](F.silu(xg))
            basis = F.silu(self.gram(torch.tanh(xg)))
            y = F.conv2d(basis, self.poly_weights[g], padding=self.padding)
            outs.append(F.silu(self.layer_norm[g](y + base)))
        return torch.cat(outs, dim=1)


class ConvNet(nn.Module):
    def __init__(self, layer_cls: type, channels: list[int], **kw) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layer_cls(a, b, 3, padding=1, **kw) for a, b in zip(channels, channels[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def train_briefly(model: nn.Module, x: torch.Tensor, steps: int = 15, lr: float = 1e-2, seed: int = 0) -> nn.Module:
    """A few Adam steps towards a fixed random smooth target, so the weights are not at init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = model(x)
        target = torch.sin(out * 2.0 + torch.randn(out.shape, generator=gen) * 0.3)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
    return model


def train_cases(cases: dict, seed: int) -> dict:
    """name -> (module, inputs, numpy state_dict) for {name: (make, inputs)} cases, each
    built with torch seed `seed`, trained a few steps single-threaded, put in eval mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, (make, inputs) in cases.items():
            torch.manual_seed(seed)
            model = make()
            x = inputs(torch.Generator().manual_seed(0))
            train_briefly(model, x, steps=5)
            model.eval()
            out[name] = (model, x, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
    finally:
        torch.set_num_threads(threads)
    return out


def load_case(make, state_dict: dict) -> nn.Module:
    """A fresh module from `make()` (different init) loaded strictly from a numpy state_dict."""
    torch.manual_seed(7)  # different init: every value must come from the state_dict
    model = make()
    model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, strict=True
    )
    return model.eval()


def run_case(model: nn.Module, x: torch.Tensor):
    """The module's forward pass as float64 numpy."""
    with torch.no_grad():
        return model(x).double().numpy()
