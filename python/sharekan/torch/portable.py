"""Portable LUTHAM: the `sharekan::lutham` operator in stock torch operations, any device.

`lutham_portable(<the op's arguments>)` computes exactly what the Rust evaluator computes
(ARCHITECTURE.md §4: B-splines on per-input or shared knots, RBF, Chebyshev; SiLU / GELU
base branch; folded or per-edge biases; int8 or float32 weights with per-output scales;
u8 / i16 / i32 codes; zero spline term outside the grid or for NaN), in float32 on the
device of `x`, without the sharekan extension. It is what `torch.ops.sharekan.lutham` runs
on devices without a dedicated kernel (see `ops.py`), and on CPU when the Rust extension
cannot be imported.

Validation (`validate`) follows the Rust evaluator: the same checks in the same order,
raising the same `sharekan.errors` classes (DTypeError, ShapeError, NonFiniteError,
CodeRangeError, InvalidInputError). Data-dependent checks (finite values, increasing knots,
code range) are reduced on the device and read back with one synchronisation per call.

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

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import (
    CodeRangeError,
    DTypeError,
    InvalidInputError,
    NonFiniteError,
    ShapeError,
)

__all__ = ["LuthamArgs", "TEMP_BUDGET_BYTES", "choose_strategy", "lutham_portable", "validate"]

#: Largest B-spline order (the Rust evaluator's and the C++ kernel's cap).
MAX_SPLINE_ORDER = 15
#: Rough cap on the temporaries of one call (bytes); the batch and the decoded weights are
#: processed in chunks that fit it. SHAREKAN_LUTHAM_BUDGET_MB overrides it.
TEMP_BUDGET_BYTES = 256 * 2**20
STRATEGIES = ("auto", "gather", "decode")

_CODE_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.uint32)
_WEIGHT_DTYPES = (torch.int8, torch.float32)


def _budget() -> int:
    env = os.environ.get("SHAREKAN_LUTHAM_BUDGET_MB")
    if env:
        try:
            return max(1, int(float(env) * 2**20))
        except ValueError as exc:
            raise InvalidInputError(
                f"SHAREKAN_LUTHAM_BUDGET_MB: expected a number of MiB, got {env!r}") from exc
    return TEMP_BUDGET_BYTES


@dataclass
class LuthamArgs:
    """The validated inputs of one call; an absent optional tensor is None."""

    x: torch.Tensor
    grid: torch.Tensor
    codebook: torch.Tensor
    codes: torch.Tensor
    gains: torch.Tensor
    gain_scale: torch.Tensor | None
    edge_bias: torch.Tensor | None
    edge_bias_scale: torch.Tensor | None
    out_bias: torch.Tensor | None
    base_weight: torch.Tensor | None
    base_scale: torch.Tensor | None
    k: int  # 0 for the dense bases (not read)
    basis: int
    h: float  # rounded to float32, as the evaluators use it
    base_act: int
    n_in: int
    n_out: int
    m: int
    n_codes: int


# ---- validation ---------------------------------------------------------------------------


def _absent(t: torch.Tensor | None) -> bool:
    return t is None or (t.dim() == 1 and t.shape[0] == 0)


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _f32_2d(t: torch.Tensor, name: str) -> None:
    # the bindings check the number of dimensions before the dtype
    if t.dim() != 2:
        raise ShapeError(f"{name}: expected a 2-D array, got shape {list(t.shape)}")
    if t.dtype != torch.float32:
        raise DTypeError(f"{name}: expected dtype float32, got {t.dtype} {_shape(t)}")


def _weights(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _WEIGHT_DTYPES:
        raise DTypeError(f"{name}: expected an int8 or float32 array, got {t.dtype}")
    if t.dim() != 2:
        raise ShapeError(f"{name}: expected a 2-D array, got shape {list(t.shape)}")


def _vec(t: torch.Tensor, name: str) -> None:
    if t.dim() != 1:
        raise ShapeError(f"{name}: expected a 1-D array, got shape {list(t.shape)}")
    if t.dtype != torch.float32:
        raise DTypeError(f"{name}: expected dtype float32, got {t.dtype} {_shape(t)}")


def _first_nonfinite(name: str, t: torch.Tensor) -> NonFiniteError:
    bad = (~torch.isfinite(t.reshape(-1))).nonzero()
    index = int(bad[0, 0]) if bad.numel() else -1
    return NonFiniteError(f"non-finite value in `{name}` at flat (row-major) index {index}")


def _grid_error(grid: torch.Tensor, k: int) -> InvalidInputError:
    """The Rust evaluator's error for a grid whose fast check failed (row order)."""
    g = grid.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(g).all()):
        return _first_nonfinite("grid", g)
    for i, row in enumerate(g):
        for j in range(1, row.numel()):
            if not bool(row[j] > row[j - 1]):
                return InvalidInputError(
                    f"invalid value for `grid`: row {i} is not strictly increasing: "
                    f"grid[{i}][{j - 1}] = {float(row[j - 1])} >= grid[{i}][{j}] = {float(row[j])}")
    ng = g.shape[1]
    for i, row in enumerate(g):
        for d in range(1, k + 1):  # the C++ kernel's order: d ascending, then j
            for j in range(ng - d):
                diff = row[j + d] - row[j]  # float32 arithmetic, as the kernels divide
                if not bool(torch.isfinite(diff)):
                    return InvalidInputError(
                        f"invalid value for `grid`: row {i}: knot range too wide for float32: "
                        f"grid[{i}][{j + d}] - grid[{i}][{j}] = {float(row[j + d]):e} - "
                        f"{float(row[j]):e} overflows (k = {k})")
                if not bool(torch.isfinite(1.0 / diff)):
                    return InvalidInputError(
                        f"invalid value for `grid`: row {i}: knot spacing too small for float32: "
                        f"1 / (grid[{i}][{j + d}] - grid[{i}][{j}]) = 1 / ({float(row[j + d]):e} - "
                        f"{float(row[j]):e}) is not finite (k = {k})")
    return InvalidInputError("invalid value for `grid`: rows must be finite and strictly "
                             "increasing")


def _code_error(codes: torch.Tensor, n_codes: int) -> CodeRangeError:
    flat = codes.reshape(-1).to(torch.int64)
    bad = ((flat < 0) | (flat >= n_codes)).nonzero()
    index = int(bad[0, 0])
    return CodeRangeError(f"code out of range in `codes` at flat (row-major) index {index}: "
                          f"code {int(flat[index])} is not in [0, {n_codes})")


# A check is (condition, error): the condition a bool (decided on the host) or a 0-d bool
# tensor (decided on the device), the error built only when it fails.
_Check = tuple[Callable[[], "bool | torch.Tensor"], Callable[[], Exception]]


def _run_checks(checks: list[_Check]) -> None:
    """Raise the error of the first failing check, in list order, with one device sync.

    Host conditions are evaluated in order until the first that fails (later checks may
    need the shapes it guards); the device conditions before it are read back together.
    """
    pending: list[tuple[torch.Tensor, Callable[[], Exception]]] = []
    host_error: Callable[[], Exception] | None = None
    for cond, err in checks:
        ok = cond()
        if isinstance(ok, torch.Tensor):
            pending.append((ok.reshape(()), err))
        elif not ok:
            host_error = err
            break
    if pending:
        flags = torch.stack([p[0] for p in pending]).to("cpu").tolist()
        for flag, (_, err) in zip(flags, pending):
            if not flag:
                raise err()
    if host_error is not None:
        raise host_error()


def _all_finite(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t).all()


def validate(
    x: torch.Tensor, grid: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor,
    gains: torch.Tensor, gain_scale: torch.Tensor | None, edge_bias: torch.Tensor | None,
    edge_bias_scale: torch.Tensor | None, out_bias: torch.Tensor | None,
    base_weight: torch.Tensor | None, base_scale: torch.Tensor | None, k: int,
    basis: int = 0, h: float = 1.0, base_act: int = 0,
) -> LuthamArgs:
    """Check the op's inputs as the Rust evaluator does; absent (None or (0,)) -> None.

    Raises:
        InvalidInputError: bad k / basis / base_act / h, a grid that is not strictly
            increasing or whose knot differences overflow float32, a scale without its
            weights, tensors on different devices. ShapeError, DTypeError, NonFiniteError,
            CodeRangeError: as their names say (same classes as `sharekan._core.lutham_forward`).
    """
    k, basis, base_act = int(k), int(basis), int(base_act)
    if k < 0:
        raise InvalidInputError(f"k: expected a non-negative integer, got {k}")
    if basis not in (0, 1, 2):
        raise InvalidInputError(f"basis: expected 0 (B-spline), 1 (RBF) or 2 (Chebyshev), got {basis}")
    if base_act not in (0, 1):
        raise InvalidInputError(f"base_act: expected 0 (SiLU) or 1 (GELU), got {base_act}")
    h32 = float(torch.tensor(float(h), dtype=torch.float32))  # the evaluators read h as f32
    _f32_2d(x, "x")
    _f32_2d(grid, "grid")
    _f32_2d(codebook, "codebook")
    _weights(gains, "gains")
    opt: dict[str, torch.Tensor | None] = {}
    for name, t, check in (("gain_scale", gain_scale, _vec), ("edge_bias", edge_bias, _weights),
                           ("edge_bias_scale", edge_bias_scale, _vec),
                           ("out_bias", out_bias, _vec), ("base_weight", base_weight, _weights),
                           ("base_scale", base_scale, _vec)):
        opt[name] = None if _absent(t) else t
        if opt[name] is not None:
            check(t, name)
    if codes.dtype not in _CODE_DTYPES:
        raise DTypeError(f"codes: expected a uint8, int16, int32 or uint32 array, got {codes.dtype}")
    if codes.dim() != 2:
        raise ShapeError(f"codes: expected a 2-D array, got shape {list(codes.shape)}")
    dev = x.device
    named = {"grid": grid, "codebook": codebook, "codes": codes, "gains": gains, **opt}
    for name, t in named.items():
        if t is not None and t.device != dev:
            raise InvalidInputError(f"{name}: on device {t.device}, but x is on {dev}; move the "
                                    f"layer and its input to the same device")

    n_in, n_out = codes.shape
    b, xn = x.shape
    grid_rows, ng = grid.shape
    n_codes, cm = codebook.shape
    checks: list[_Check] = []
    if basis == 0:
        if k > MAX_SPLINE_ORDER:
            raise InvalidInputError(f"invalid value for `k`: spline order {k} exceeds the "
                                    f"maximum {MAX_SPLINE_ORDER}")
        m = ng - k - 1
        checks.append((lambda: not (n_in == 0 or grid_rows not in (n_in, 1) or ng < 2 * k + 2),
                       lambda: ShapeError(
                           f"wrong shape for `grid`: expected (n_in, G + 2k + 1) or (1, G + 2k + 1) "
                           f"with n_in = {n_in} >= 1 (rows of codes), G >= 1 and k = {k}, i.e. at "
                           f"least {2 * k + 2} knots per row, got {_shape(grid)}")))

        def grid_ok() -> torch.Tensor:
            ok = _all_finite(grid) & (grid[:, 1:] > grid[:, :-1]).all()
            if k >= 1:  # differences grow with d (monotone rounding): two checks cover all d
                ok = ok & _all_finite(1.0 / (grid[:, 1:] - grid[:, :-1]))
                ok = ok & _all_finite(grid[:, k:] - grid[:, :-k])
            return ok

        checks.append((grid_ok, lambda: _grid_error(grid, k)))
    elif basis == 1:
        k, m = 0, cm
        # 1/h in float32, as the C++ kernel divides: it overflows for h below ~2.9e-39
        inv = float(torch.tensor(1.0 / h32, dtype=torch.float32)) if h32 > 0 else math.inf
        if not (math.isfinite(h32) and h32 > 0 and math.isfinite(inv)):
            raise InvalidInputError(f"invalid value for `h`: RBF width must be finite and > 0 "
                                    f"with a finite float32 reciprocal, got {h:e}")
        checks.append((lambda: not (n_in == 0 or grid_rows not in (n_in, 1) or ng != m or m == 0),
                       lambda: ShapeError(
                           f"wrong shape for `grid`: expected RBF centres (n_in, M) or (1, M) with "
                           f"n_in = {n_in} >= 1 (rows of codes) and M = {m} >= 1 (codebook "
                           f"width), got {_shape(grid)}")))
        checks.append((lambda: _all_finite(grid), lambda: _first_nonfinite("grid", grid)))
    else:
        k, m = 0, cm
        checks.append((lambda: not (n_in == 0 or m == 0),
                       lambda: ShapeError(
                           f"wrong shape for `codebook`: expected (K, M) with M = degree + 1 >= 1 "
                           f"and n_in = {n_in} >= 1, got {_shape(codebook)}")))
    checks.append((lambda: xn == n_in, lambda: ShapeError(
        f"wrong shape for `x`: expected (B, n_in) with n_in = {n_in} (rows of codes), got "
        f"{_shape(x)}")))
    checks.append((lambda: n_codes > 0 and cm == m, lambda: ShapeError(
        f"wrong shape for `codebook`: expected (K, M) with K >= 1 and M = {m} (G + k for "
        f"B-splines, the number of RBF centres), got {_shape(codebook)}")))
    checks.append((lambda: _all_finite(codebook), lambda: _first_nonfinite("codebook", codebook)))

    def codes_ok() -> bool | torch.Tensor:
        if codes.numel() == 0 or (codes.dtype == torch.uint8 and n_codes >= 256):
            return True
        c = codes if codes.dtype != torch.uint32 else codes.to(torch.int64)
        return (c.min() >= 0) & (c.max() < n_codes)

    checks.append((codes_ok, lambda: _code_error(codes, n_codes)))

    def edge(name: str, t: torch.Tensor) -> None:
        checks.append((lambda: tuple(t.shape) == (n_in, n_out), lambda: ShapeError(
            f"wrong shape for `{name}`: expected (n_in, n_out) = ({n_in}, {n_out}), got {_shape(t)}")))
        if t.dtype == torch.float32:
            checks.append((lambda: _all_finite(t), lambda: _first_nonfinite(name, t)))

    edge("gains", gains)
    for wname, sname in (("edge_bias", "edge_bias_scale"), ("base_weight", "base_scale")):
        w = opt[wname]
        if w is not None:
            edge(wname, w)
        elif opt[sname] is not None:
            checks.append((lambda: False, lambda s=sname, w=wname: InvalidInputError(
                f"invalid value for `{s}`: given without {w}")))
    for name in ("gain_scale", "edge_bias_scale", "out_bias", "base_scale"):
        v = opt[name]
        if v is None:
            continue
        checks.append((lambda v=v: v.shape[0] == n_out, lambda v=v, name=name: ShapeError(
            f"wrong shape for `{name}`: expected (n_out,) = ({n_out},), got {_shape(v)}")))
        checks.append((lambda v=v: _all_finite(v), lambda v=v, name=name: _first_nonfinite(name, v)))
    _run_checks(checks)
    return LuthamArgs(x, grid, codebook, codes, gains, opt["gain_scale"], opt["edge_bias"],
                      opt["edge_bias_scale"], opt["out_bias"], opt["base_weight"],
                      opt["base_scale"], k, basis, h32, base_act, n_in, n_out, m, n_codes)


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
