"""Portable LUTHAM: the `sharekan::lutham` operator in stock torch operations, any device.

`lutham_portable(<the op's arguments>)` computes exactly what the Rust evaluator computes
(ARCHITECTURE.md §4: B-splines on per-input or shared knots, RBF, Chebyshev; SiLU / GELU
base branch; folded or per-edge biases; int8 or float32 weights with per-output scales;
u8 / i16 / i32 codes; zero spline term outside the grid or for NaN), in float32 on the
device of `x`, without the sharekan extension. It is what `torch.ops.sharekan.lutham` runs
on devices without a dedicated kernel (see `ops.py`), and on CPU when the Rust extension
cannot be imported.

Validation (`validate`, re-exported from `validation.py`, shared with the Triton kernels)
follows the Rust evaluator: the same checks in the same order, raising the same
`sharekan.errors` classes (DTypeError, ShapeError, NonFiniteError, CodeRangeError,
InvalidInputError). Data-dependent checks (finite values, increasing knots, code range) are
reduced on the device and read back with one synchronisation per call.

Two strategies, both computing the dense basis `basis(x)` (B, n_in, M) per batch chunk:

- "gather": projection tables `P = basis(x) @ C^T` (B, n_in, K'), then `P[b, i, codes[i, o]]`
  gathered (B, n_in, n_out) and weighted by the gains; `K'` = the codewords the layer uses
  when K > n_out (else K). Temporaries ~ 4 B n_in (M + K' + n_out) bytes.
- "decode": the codes decoded once per call into dense spline weights
  `W[i*M + m, o] = gain_scale[o] gains[i,o] C[codes[i,o], m] + edge_bias_scale[o]
  edge_bias[i,o]` (n_in M, n_out), then `basis(x) @ W`. Temporaries ~ 8 n_in M n_out bytes
  (W and its construction copy) + 4 B n_in (M + 1) bytes.

`strategy="auto"` takes the one with fewer temporary bytes by these estimates (`choose_strategy`),
which is gather for small batches of layers with K' < n_out-ish and decode otherwise. Both
split the batch (and decode the output columns) into chunks so that the temporaries stay
around `TEMP_BUDGET_BYTES` (256 MiB) whatever the batch size. Nothing is cached between
calls (the op is stateless).
"""

from __future__ import annotations

import os

import torch

from ..errors import InvalidInputError
from .validation import MAX_SPLINE_ORDER, LuthamArgs, validate

__all__ = ["MAX_SPLINE_ORDER", "LuthamArgs", "TEMP_BUDGET_BYTES", "choose_strategy", "lutham_portable", "validate"]

#: Rough cap on the temporaries of one call (bytes); the batch and the decoded weights are
#: processed in chunks that fit it. SHAREKAN_LUTHAM_BUDGET_MB overrides it.
TEMP_BUDGET_BYTES = 256 * 2**20
STRATEGIES = ("auto", "gather", "decode")


def _budget() -> int:
    env = os.environ.get("SHAREKAN_LUTHAM_BUDGET_MB")
    if env:
        try:
            return max(1, int(float(env) * 2**20))
        except ValueError as exc:
            raise InvalidInputError(
                f"SHAREKAN_LUTHAM_BUDGET_MB: expected a number of MiB, got {env!r}") from exc
    return TEMP_BUDGET_BYTES


# ---- basis values ---------------------------------------------------------------------------


def _bspline(x: torch.Tensor, grid: torch.Tensor, k: int, m: int) -> torch.Tensor:
    """(b, n_in, M) B-spline values from the k + 1 local ones per input (ARCHITECTURE §4).

    Span j by a sorted search (`grid[j] <= x < grid[j+1]`); the de Boor triangle on a knot
    window padded, like the Rust evaluator, by continuing the first and last knot gaps
    (padded knots only feed basis indices outside 0..M, which are dropped). Zero outside
    [grid[0], grid[-1]) and for NaN.
    """
    b, n_in = x.shape
    rows, ng = grid.shape
    if rows == 1:
        idx = torch.searchsorted(grid[0], x, right=True)
    else:
        idx = torch.searchsorted(grid, x.t().contiguous(), right=True).t()
    lo, hi = grid[:, 0], grid[:, -1]  # (rows,) broadcasts over n_in
    inside = (x >= lo) & (x < hi)
    j = torch.where(inside, idx - 1, torch.zeros_like(idx)).clamp_(0, ng - 2)
    xs = torch.where(inside, x, lo.expand(n_in))  # keeps inf/NaN out of the arithmetic
    if k == 0:
        vals = inside.to(torch.float32).unsqueeze(-1)
    else:
        width = ng + 2 * k
        ar = torch.arange(k, device=x.device, dtype=torch.float32)
        left = grid[:, :1] - (k - ar) * (grid[:, 1:2] - grid[:, :1])
        right = grid[:, -1:] + (ar + 1) * (grid[:, -1:] - grid[:, -2:-1])
        gp = torch.cat([left, grid, right], dim=1).reshape(-1)  # (rows * width,)
        start = j if rows == 1 else j + torch.arange(n_in, device=x.device) * width
        win = start.unsqueeze(-1) + torch.arange(2 * k + 2, device=x.device)
        gw = gp[win].unbind(-1)  # 2k + 2 tensors (b, n_in): padded knots j .. j + 2k + 1
        level = [torch.ones_like(xs)]
        for d in range(1, k + 1):
            nxt = []
            for t in range(d + 1):
                p = k - d + t  # basis j - d + t in window coordinates
                v = None
                if t >= 1:
                    v = (xs - gw[p]) / (gw[p + d] - gw[p]) * level[t - 1]
                if t < d:
                    r = (gw[p + d + 1] - xs) / (gw[p + d + 1] - gw[p + 1]) * level[t]
                    v = r if v is None else v + r
                assert v is not None  # d >= 1, so t >= 1 or t < d assigned it
                nxt.append(v)
            level = nxt
        vals = torch.stack(level, dim=-1)  # (b, n_in, k + 1): bases j - k .. j
        first = j.unsqueeze(-1) - k + torch.arange(k + 1, device=x.device)
        valid = (first >= 0) & (first < m) & inside.unsqueeze(-1)
        vals = torch.where(valid, vals, torch.zeros((), dtype=vals.dtype, device=x.device))
    # column j + t of the padded row is basis j - k + t; columns k .. k + M - 1 are the bases
    padded = torch.zeros(b, n_in, m + 2 * k, dtype=torch.float32, device=x.device)
    padded.scatter_(-1, j.unsqueeze(-1) + torch.arange(k + 1, device=x.device), vals)
    return padded[..., k:k + m]


def _basis(a: LuthamArgs, x: torch.Tensor) -> torch.Tensor:
    """(b, n_in, M) basis values of the rows x."""
    if a.basis == 0:
        return _bspline(x, a.grid, a.k, a.m)
    if a.basis == 1:
        d = (x.unsqueeze(-1) - a.grid) / a.h  # grid (1 or n_in, M) broadcasts
        return torch.exp(-(d * d))
    t = torch.tanh(x)
    vals = [torch.ones_like(t)]  # T_0 = 1 even for NaN, as the evaluators
    if a.m > 1:
        vals.append(t)
    for _ in range(2, a.m):
        vals.append(2.0 * t * vals[-1] - vals[-2])
    return torch.stack(vals, dim=-1)


def _base_act(a: LuthamArgs, x: torch.Tensor) -> torch.Tensor:
    if a.base_act == 1:
        return torch.nn.functional.gelu(x)  # exact (erf) GELU
    return torch.nn.functional.silu(x)


def _scaled(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """float32 (n_in, n_out) weights times the per-output scale."""
    w = w.to(torch.float32)
    return w if scale is None else w * scale


def _basis_row_bytes(a: LuthamArgs) -> int:
    """Rough temporary bytes of `_basis` per batch row (B-spline: indices, window, triangle)."""
    if a.basis == 0:
        return 4 * a.n_in * (a.m + 2 * a.k + 8 * (2 * a.k + 2) + 3 * (a.k + 1) + 8)
    return 4 * a.n_in * 3 * a.m


def _used_codes(a: LuthamArgs) -> int:
    return min(a.n_codes, a.n_in * a.n_out) if a.n_codes > a.n_out else a.n_codes


def choose_strategy(a: LuthamArgs) -> str:
    """"gather" when its temporaries (4 B n_in (M + K' + n_out) bytes, K' an upper bound of
    the codewords in use) are smaller than decode's (8 n_in M n_out + 4 B n_in (M + 1))."""
    b = a.x.shape[0]
    gather = b * a.n_in * (a.m + _used_codes(a) + a.n_out)
    decode = 2 * a.n_in * a.m * a.n_out + b * a.n_in * (a.m + 1)
    return "gather" if gather < decode else "decode"


def _chunks(total: int, step: int) -> list[tuple[int, int]]:
    step = max(1, step)
    return [(s, min(total, s + step)) for s in range(0, total, step)]


def _forward_gather(a: LuthamArgs, y: torch.Tensor, budget: int) -> None:
    codes = a.codes if a.codes.dtype != torch.uint32 else a.codes.to(torch.int64)
    codebook = a.codebook
    if a.n_codes > a.n_out:  # a codebook larger than a row: table only the codewords in use
        used, inverse = torch.unique(codes, return_inverse=True)
        codebook, index = codebook[used.long()], inverse
    else:
        index = codes.long()
    ku = codebook.shape[0]
    cbt = codebook.t()  # (M, K')
    gains = _scaled(a.gains, a.gain_scale)
    edge_bias = None if a.edge_bias is None else _scaled(a.edge_bias, a.edge_bias_scale)
    base = None if a.base_weight is None else _scaled(a.base_weight, a.base_scale)
    row = _basis_row_bytes(a) + 4 * a.n_in * (ku + 2 * a.n_out)
    for b0, b1 in _chunks(a.x.shape[0], budget // row):
        x = a.x[b0:b1]
        basis = _basis(a, x)  # (bc, n_in, M)
        # one (bc n_in, M) x (M, K') GEMM, not bc n_in tiny batched ones
        table = (basis.reshape(-1, a.m) @ cbt).reshape(b1 - b0, a.n_in, ku)
        picked = torch.gather(table, 2, index.unsqueeze(0).expand(b1 - b0, -1, -1))
        acc = picked.mul_(gains).sum(dim=1)  # (bc, n_out)
        if edge_bias is not None:
            acc.addmm_(basis.sum(dim=-1), edge_bias)
        if base is not None:
            acc.addmm_(_base_act(a, x), base)
        y[b0:b1] = acc


def _decoded(a: LuthamArgs, o0: int, o1: int) -> torch.Tensor:
    """(n_in * M, o1 - o0) dense spline weights of the output columns o0..o1."""
    codes = a.codes[:, o0:o1].to(torch.int64)
    w = a.codebook[codes]  # (n_in, ob, M)
    gains = a.gains[:, o0:o1].to(torch.float32)
    if a.gain_scale is not None:
        gains = gains * a.gain_scale[o0:o1]
    w.mul_(gains.unsqueeze(-1))
    if a.edge_bias is not None:
        eb = a.edge_bias[:, o0:o1].to(torch.float32)
        if a.edge_bias_scale is not None:
            eb = eb * a.edge_bias_scale[o0:o1]
        w.add_(eb.unsqueeze(-1))
    return w.transpose(1, 2).reshape(a.n_in * a.m, o1 - o0)


def _forward_decode(a: LuthamArgs, y: torch.Tensor, budget: int) -> None:
    col = 4 * a.n_in * a.m  # bytes of one decoded column
    blocks = _chunks(a.n_out, (budget // 4) // col)  # W and its construction copy <= budget / 2
    row = _basis_row_bytes(a) + 4 * a.n_in * (a.m + 1) + 4 * a.n_out
    w_bytes = 2 * col * min(a.n_out, max(1, (budget // 4) // col))
    batches = _chunks(a.x.shape[0], max(1, budget - w_bytes) // row)
    base = None if a.base_weight is None else _scaled(a.base_weight, a.base_scale)
    cached: torch.Tensor | None = None  # the basis, when one chunk holds the whole batch
    for o0, o1 in blocks:
        w = _decoded(a, o0, o1)
        for b0, b1 in batches:
            x = a.x[b0:b1]
            if cached is not None:
                basis = cached
            else:
                basis = _basis(a, x).reshape(b1 - b0, a.n_in * a.m)
                if len(batches) == 1 and len(blocks) > 1:
                    cached = basis
            acc = basis @ w
            if base is not None:
                acc.addmm_(_base_act(a, x), base[:, o0:o1])
            y[b0:b1, o0:o1] = acc


def lutham_portable(
    x: torch.Tensor, grid: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor,
    gains: torch.Tensor, gain_scale: torch.Tensor, edge_bias: torch.Tensor,
    edge_bias_scale: torch.Tensor, out_bias: torch.Tensor, base_weight: torch.Tensor,
    base_scale: torch.Tensor, k: int, basis: int = 0, h: float = 1.0, base_act: int = 0,
    *, strategy: str = "auto", budget_bytes: int | None = None,
) -> torch.Tensor:
    """`sharekan::lutham` in stock torch ops on x's device: (B, n_in) f32 -> (B, n_out) f32.

    Arguments as the op (an absent optional tensor is None or a (0,) tensor). `strategy`:
    "auto" (`choose_strategy`), "gather" or "decode"; `budget_bytes`: the temporary-memory
    budget of the chunking (default `TEMP_BUDGET_BYTES`, or SHAREKAN_LUTHAM_BUDGET_MB).

    Raises:
        The `sharekan.errors` classes of the Rust evaluator for the same bad inputs (see
        `validate`); InvalidInputError for an unknown strategy.
    """
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    a = validate(x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale,
                 out_bias, base_weight, base_scale, k, basis, h, base_act)
    with torch.no_grad():
        y = torch.zeros(x.shape[0], a.n_out, dtype=torch.float32, device=x.device)
        if x.shape[0] == 0 or a.n_out == 0:
            return y
        budget = _budget() if budget_bytes is None else max(1, int(budget_bytes))
        if strategy == "auto":
            strategy = choose_strategy(a)
        if strategy == "gather":
            _forward_gather(a, y, budget)
        else:
            _forward_decode(a, y, budget)
        if a.out_bias is not None:
            y += a.out_bias
    return y
