"""The `sharekan::lutham` PyTorch operator (functional + `.out`), one compressed KAN layer.

Schema (the C++ ExecuTorch kernel in lutham/lutham_kernel.cpp implements `.out`)::

    sharekan::lutham(Tensor x, Tensor grid, Tensor codebook, Tensor codes, Tensor gains,
                     Tensor gain_scale, Tensor edge_bias, Tensor edge_bias_scale,
                     Tensor out_bias, Tensor base_weight, Tensor base_scale, int k,
                     int basis=0, float h=1., int base_act=0) -> Tensor
    sharekan::lutham.out(..., int k, int basis=0, float h=1., int base_act=0, *,
                         Tensor(a!) out) -> Tensor(a!)

Inputs follow ARCHITECTURE.md §4: x f32 (B, n_in); grid f32 (n_in, G+2k+1), or
(1, G+2k+1) for the same knots on every input; codebook f32 (K, M); codes u8/i16/i32
(n_in, n_out); gains i8/f32 (n_in, n_out); gain_scale, edge_bias_scale, base_scale,
out_bias f32 (n_out,); edge_bias, base_weight i8/f32 (n_in, n_out). Result f32 (B, n_out).
`basis`: 0 = B-spline (order k, knots in grid), 1 = RBF exp(-((x - c_m)/h)^2) (grid = the
centres, (n_in or 1, M)), 2 = Chebyshev T_m(tanh x) (grid not read; pass e.g. zeros (1, 2)).
`base_act`: 0 = SiLU, 1 = exact GELU.

Optional tensors are passed as ABSENT = a 1-D tensor of shape (0,) (see `absent()`); an
absent scale means all ones, an absent edge_bias / out_bias / base_weight means no term.
(A real optional `Tensor?` would do too, but a (0,) constant keeps every argument a plain
tensor through torch.export and ExecuTorch's emitter.)

The eager CPU implementation calls the Rust evaluator `sharekan._core.lutham_forward`
(zero-copy NumPy views in, the result wrapped without a copy); `register_fake` gives the
shape for torch.export.

>>> import torch, sharekan.torch.ops as ops
>>> y = ops.lutham(x, grid, codebook, codes, gains, k=3)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["absent", "is_absent", "lutham", "lutham_numpy_args", "OP_NAME"]

OP_NAME = "sharekan::lutham"

_SIG = (
    "Tensor x, Tensor grid, Tensor codebook, Tensor codes, Tensor gains, Tensor gain_scale, "
    "Tensor edge_bias, Tensor edge_bias_scale, Tensor out_bias, Tensor base_weight, "
    "Tensor base_scale, int k, int basis=0, float h=1., int base_act=0"
)
_OPTIONAL = ("gain_scale", "edge_bias", "edge_bias_scale", "out_bias", "base_weight",
             "base_scale")

_lib = torch.library.Library("sharekan", "DEF")  # noqa: TOR901 - defines the namespace once
_lib.define(f"lutham({_SIG}) -> Tensor")
_lib.define(f"lutham.out({_SIG}, *, Tensor(a!) out) -> Tensor(a!)")


def absent() -> torch.Tensor:
    """The ABSENT marker for an optional input: an empty float32 tensor of shape (0,)."""
    return torch.empty(0, dtype=torch.float32)


def is_absent(t: torch.Tensor | None) -> bool:
    """True for None or a 1-D tensor of shape (0,)."""
    return t is None or (t.dim() == 1 and t.shape[0] == 0)


def _np(t: torch.Tensor) -> np.ndarray:
    # Zero-copy on CPU; a copy only when the tensor is not contiguous.
    return t.detach().contiguous().numpy()


def lutham_numpy_args(
    x: torch.Tensor, grid: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor,
    gains: torch.Tensor, gain_scale: torch.Tensor, edge_bias: torch.Tensor,
    edge_bias_scale: torch.Tensor, out_bias: torch.Tensor, base_weight: torch.Tensor,
    base_scale: torch.Tensor, k: int, basis: int = 0, h: float = 1.0, base_act: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """x and the keyword arguments of `sharekan._core.lutham_forward` (absent -> None)."""
    kwargs: dict[str, Any] = {
        "grid": _np(grid), "k": int(k), "codebook": _np(codebook), "codes": _np(codes),
        "gains": _np(gains), "basis": int(basis), "h": float(h), "base_act": int(base_act),
    }
    opts = dict(zip(_OPTIONAL, (gain_scale, edge_bias, edge_bias_scale, out_bias,
                                base_weight, base_scale)))
    for name, t in opts.items():
        kwargs[name] = None if is_absent(t) else _np(t)
    return _np(x), kwargs


def _forward_cpu(*args: Any) -> torch.Tensor:
    from .. import _core  # noqa: PLC0415 - the extension is needed only when the op runs

    xs, kwargs = lutham_numpy_args(*args)
    return torch.from_numpy(_core.lutham_forward(xs, **kwargs))


@torch.library.impl(_lib, "lutham", "CPU")
def _lutham_cpu(x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale,
                out_bias, base_weight, base_scale, k, basis=0, h=1.0, base_act=0):
    return _forward_cpu(x, grid, codebook, codes, gains, gain_scale, edge_bias,
                        edge_bias_scale, out_bias, base_weight, base_scale, k, basis, h,
                        base_act)


@torch.library.impl(_lib, "lutham.out", "CPU")
def _lutham_out_cpu(x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale,
                    out_bias, base_weight, base_scale, k, basis=0, h=1.0, base_act=0, *,
                    out):
    y = _forward_cpu(x, grid, codebook, codes, gains, gain_scale, edge_bias,
                     edge_bias_scale, out_bias, base_weight, base_scale, k, basis, h,
                     base_act)
    out.resize_(y.shape)
    out.copy_(y)
    return out


@torch.library.register_fake("sharekan::lutham")
def _lutham_fake(x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale,
                 out_bias, base_weight, base_scale, k, basis=0, h=1.0, base_act=0):
    torch._check(x.dim() == 2, lambda: f"lutham: x must be 2-D, got {x.dim()} dims")
    torch._check(codes.dim() == 2, lambda: f"lutham: codes must be 2-D, got {codes.dim()} dims")
    return x.new_empty((x.shape[0], codes.shape[1]), dtype=torch.float32)


def lutham(
    x: torch.Tensor, grid: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor,
    gains: torch.Tensor, gain_scale: torch.Tensor | None = None,
    edge_bias: torch.Tensor | None = None, edge_bias_scale: torch.Tensor | None = None,
    out_bias: torch.Tensor | None = None, base_weight: torch.Tensor | None = None,
    base_scale: torch.Tensor | None = None, *, k: int, basis: int = 0, h: float = 1.0,
    base_act: int = 0,
) -> torch.Tensor:
    """Evaluate one compressed KAN layer with `torch.ops.sharekan.lutham` (None -> absent).

    Args: as the module docstring; x (B, n_in) float32.

    Returns:
        (B, n_out) float32.

    Raises:
        sharekan.errors.InvalidInputError (and subclasses) from the Rust evaluator on bad
        dtypes, shapes or codes out of range.
    """
    opts = [absent() if t is None else t
            for t in (gain_scale, edge_bias, edge_bias_scale, out_bias, base_weight, base_scale)]
    return torch.ops.sharekan.lutham(x, grid, codebook, codes, gains, *opts, int(k),
                                     int(basis), float(h), int(base_act))
