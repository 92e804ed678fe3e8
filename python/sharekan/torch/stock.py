"""`sharekan::lutham` written in stock ATen operations, for programs that carry no custom op.

`sharekan.export_pte(..., kernel="portable")` and `sharekan.export_onnx` trace the model with
torch.export and then replace every call of the custom operator by `lutham_stock` (through
`decomposition_table`), so the program holds only core ATen operations (mm, bmm,
index_select / embedding, elementwise arithmetic, comparisons, silu / gelu): an unmodified
ExecuTorch runtime runs it, its XNNPACK delegate takes the matrix products and most of the
arithmetic, and ONNX Runtime runs the same graph.

The layer's tensors stay as the op receives them (uint8 / int16 / int32 codes, int8 or float32
gains, biases and base weights with their float32 per-output scales, the float32 codebook and
grid), so the program is about as large as the custom-kernel one; the weights are decoded in
the graph on every call. Math as ARCHITECTURE.md §4 (the Rust evaluator), in float32:

- basis values in the layout (M, n_in, B) (the batch innermost, so selecting rows of the
  projection table copies B contiguous floats): B-splines by the Cox-de Boor recursion over
  the whole knot vector (per-input or shared knots; zero outside [grid[0], grid[-1]) and
  for NaN / Inf), RBF `exp(-((x - c_m) / h)^2)`, Chebyshev `T_m(tanh x)`;
- strategy "gather": projection tables `P = C @ basis` (K, n_in B) (one GEMM), the rows
  `P[codes[i, o], i]` picked by `index_select` into (n_out, n_in, B) and summed with the
  scaled gains by one batched product (n_out, 1, n_in) @ (n_out, n_in, B); temporaries
  ~ 4 B n_in (K + n_out + M) bytes;
- strategy "decode": the weights `W[o, i, m] = gain C[code, m] + edge_bias` decoded by
  `embedding` into (n_out, n_in, M), then one GEMM with the basis; temporaries
  ~ 8 n_in n_out M bytes (W and its scaled copy) + 4 B n_in M bytes;
- per-edge biases: "gather" appends a codeword of ones to the codebook, whose table rows
  are `sum_m basis` (n_in, B), and adds `edge_bias^T @ sums` (one GEMM; a separate `sum`
  node would split the XNNPACK partition into an invalid one); "decode" adds them to W;
- the base branch `act(x) @ base_weight * base_scale`, then `out_bias`.

Both strategies give the same result up to float32 rounding (the summation order differs
from the Rust evaluator's, by ~1e-7 relative on the demo head). ExecuTorch plans the memory
of every intermediate tensor for the largest batch the program accepts, so
`choose_strategy` compares the two estimates at that batch.

>>> import torch, sharekan.torch.stock as stock
>>> ep = torch.export.export(model, (x,))                                    # doctest: +SKIP
>>> ep = ep.run_decompositions(stock.decomposition_table(max_batch=64))     # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from . import ops  # noqa: F401 - registers sharekan::lutham, whose calls the table replaces

__all__ = ["STRATEGIES", "choose_strategy", "decomposition_table", "lutham_stock"]

#: Values of the `strategy` option: "auto" picks per layer with `choose_strategy`.
STRATEGIES = ("auto", "gather", "decode")

_F32 = torch.float32


def _absent(t: torch.Tensor) -> bool:
    return t.dim() == 1 and t.shape[0] == 0


def choose_strategy(n_in: int, n_out: int, m: int, n_codes: int, batch: int) -> str:
    """"gather" when its temporaries at `batch` rows (4 batch n_in (K + n_out + M) bytes) are
    at most decode's (8 n_in n_out M + 4 batch n_in M bytes), else "decode".

    `batch` is the largest batch the program runs (`max_batch` of a dynamic export): the
    ExecuTorch memory planner reserves every intermediate tensor at that size.
    """
    gather = batch * n_in * (n_codes + n_out + m)
    decode = 2 * n_in * n_out * m + batch * n_in * m
    return "gather" if gather <= decode else "decode"


def _basis(xt: torch.Tensor, grid: torch.Tensor, k: int, m: int, basis: int, h: float
           ) -> torch.Tensor:
    """(M, n_in, B) basis values of xt (n_in, B); grid (1 or n_in, W)."""
    if basis == 1:
        centres = grid.t().unsqueeze(-1)  # (M, 1 or n_in, 1)
        z = (xt - centres) / float(np.float32(h))  # h used as float32, as the evaluators
        return torch.exp(-(z * z))
    if basis == 2:
        t = torch.tanh(xt)
        vals = [torch.ones_like(t)]  # T_0 = 1, also for NaN (as the evaluators)
        if m > 1:
            vals.append(t)
        for _ in range(2, m):
            vals.append(2.0 * t * vals[-1] - vals[-2])
        return torch.stack(vals, 0)
    g = grid.t().unsqueeze(-1)  # (NG, 1 or n_in, 1)
    lo, hi = g[0], g[-1]
    inside = (xt >= lo) & (xt < hi)  # (n_in, B); False for NaN
    xs = torch.where(inside, xt, lo)  # keeps inf / NaN out of the arithmetic
    # order-0 indicators of the half-open spans, zero for every x outside the grid
    b = ((xs >= g[:-1]) & (xs < g[1:]) & inside).to(_F32)  # (NG - 1, n_in, B)
    for d in range(1, k + 1):
        left = 1.0 / (g[d:-1] - g[:-(d + 1)])  # knot-difference reciprocals, (NG-1-d, ., 1)
        right = 1.0 / (g[d + 1:] - g[1:-d])
        b = (xs - g[:-(d + 1)]) * left * b[:-1] + (g[d + 1:] - xs) * right * b[1:]
    return b  # (M, n_in, B), M = NG - 1 - k


def _scaled(w: torch.Tensor, scale: torch.Tensor, column: bool) -> torch.Tensor:
    """float32 weights times the per-output scale: w (n_in, n_out) -> (n_in, n_out), or its
    transpose (n_out, n_in) when `column` (the scale then runs down the rows)."""
    if column:
        w = w.t()  # a stored constant once export_pte folds constant layouts
        return w.to(_F32) if _absent(scale) else w * scale.unsqueeze(1)
    return w.to(_F32) if _absent(scale) else w * scale


def lutham_stock(
    x: torch.Tensor, grid: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor,
    gains: torch.Tensor, gain_scale: torch.Tensor, edge_bias: torch.Tensor,
    edge_bias_scale: torch.Tensor, out_bias: torch.Tensor, base_weight: torch.Tensor,
    base_scale: torch.Tensor, k: int, basis: int = 0, h: float = 1.0, base_act: int = 0,
    *, strategy: str = "gather",
) -> torch.Tensor:
    """`sharekan::lutham` in stock torch operations that torch.export traces into core ATen.

    Arguments as the op (ARCHITECTURE.md §4; an absent optional tensor is a (0,) tensor):
    x f32 (B, n_in), grid f32 (n_in or 1, W), codebook f32 (K, M), codes u8/i16/i32
    (n_in, n_out), gains / edge_bias / base_weight i8 or f32 (n_in, n_out), scales and
    out_bias f32 (n_out,). `strategy`: "gather" or "decode" (see the module docstring).
    Returns (B, n_out) float32.

    Nothing is validated here (the values are not known while tracing): `export_pte` runs
    the model once through the validating portable path before it traces.

    Raises:
        InvalidInputError: an unknown strategy.
    """
    if strategy not in ("gather", "decode"):
        raise InvalidInputError(
            f"lutham_stock: strategy must be 'gather' or 'decode', got {strategy!r}")
    n_in, n_out = int(codes.shape[0]), int(codes.shape[1])
    n_codes, m = int(codebook.shape[0]), int(codebook.shape[1])
    batch = x.shape[0]
    bv = _basis(x.t(), grid, int(k), m, int(basis), float(h))  # (M, n_in, B)
    gains_t = _scaled(gains, gain_scale, column=True)  # (n_out, n_in)
    codes_t = codes.t().to(torch.int64)  # (n_out, n_in)
    if strategy == "gather":
        has_eb = not _absent(edge_bias)
        if has_eb:  # one more "codeword" of ones: its table rows are sum_m basis, (n_in, B)
            codebook = torch.cat([codebook, torch.ones(1, m, dtype=_F32)], 0)
        table = torch.mm(codebook, bv.reshape(m, n_in * batch))  # (K (+1), n_in B): P[q, i, b]
        rows = codes_t * n_in + torch.arange(n_in, dtype=torch.int64)  # row q n_in + i
        picked = torch.index_select(table.reshape(-1, batch), 0, rows.reshape(-1))
        acc = torch.bmm(gains_t.unsqueeze(1), picked.reshape(n_out, n_in, batch))
        acc = acc.reshape(n_out, batch)
        if has_eb:
            sums = table.reshape(-1, batch)[n_codes * n_in:]  # (n_in, B)
            acc = acc + torch.mm(_scaled(edge_bias, edge_bias_scale, column=True), sums)
        y = acc.t()  # (B, n_out)
    else:
        w = torch.nn.functional.embedding(codes_t, codebook) * gains_t.unsqueeze(-1)
        if not _absent(edge_bias):
            w = w + _scaled(edge_bias, edge_bias_scale, column=True).unsqueeze(-1)
        flat = bv.permute(1, 0, 2).reshape(n_in * m, batch)  # (n_in M, B)
        y = torch.mm(w.reshape(n_out, n_in * m), flat).t()  # w: (n_out, n_in, M)
    if not _absent(base_weight):
        act = (torch.nn.functional.gelu(x) if int(base_act) == 1
               else torch.nn.functional.silu(x))
        w_base = base_weight.to(_F32)
        y = y + (torch.mm(act, w_base) if _absent(base_scale)
                 else torch.mm(act, w_base) * base_scale)
    if not _absent(out_bias):
        y = y + out_bias
    return y


def _decompose(strategy: str, max_batch: int, x: torch.Tensor, grid: torch.Tensor,
               codebook: torch.Tensor, codes: torch.Tensor, *rest: Any) -> torch.Tensor:
    if strategy == "auto":
        strategy = choose_strategy(int(codes.shape[0]), int(codes.shape[1]),
                                   int(codebook.shape[1]), int(codebook.shape[0]), max_batch)
    return lutham_stock(x, grid, codebook, codes, *rest, strategy=strategy)


def decomposition_table(strategy: str = "auto", max_batch: int = 1024
                        ) -> dict[Any, Callable[..., torch.Tensor]]:
    """torch.export's default decompositions plus `sharekan::lutham` -> `lutham_stock`.

    Pass it to `ExportedProgram.run_decompositions`. `strategy` "auto" chooses per layer by
    `choose_strategy(..., batch=max_batch)`.

    Raises:
        InvalidInputError: an unknown strategy or max_batch < 1.
    """
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if max_batch < 1:
        raise InvalidInputError(f"max_batch must be >= 1, got {max_batch}")
    table: dict[Any, Callable[..., torch.Tensor]] = dict(torch.export.default_decompositions())
    table[torch.ops.sharekan.lutham.default] = functools.partial(_decompose, strategy, max_batch)
    return table
