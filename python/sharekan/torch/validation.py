"""Validation of the `sharekan::lutham` inputs, shared by the torch implementations.

`validate(<the op's arguments>)` checks them as the Rust evaluator does (ARCHITECTURE.md §4):
the same checks in the same order, raising the same `sharekan.errors` classes (DTypeError,
ShapeError, NonFiniteError, CodeRangeError, InvalidInputError) with the same messages. It
returns a `LuthamArgs` bundle (absent optional tensors as None, k / M / K / h normalised)
that the portable path (`portable.py`) and the Triton kernels (`triton_lutham.py`) read.

Dtypes, dimensions, devices and shapes are checked on the host. The data-dependent checks
(finite codebook / scales / float32 weights, 0 <= code < K, grid rows finite and strictly
increasing with every knot difference of the recursion and its reciprocal finite in float32,
finite RBF centres) are torch reductions on the inputs' device, read back together with ONE
host synchronisation per call; the detailed message (first offending index or knot pair) is
computed only when a check fails.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import torch

from ..errors import (
    CodeRangeError,
    DTypeError,
    InvalidInputError,
    NonFiniteError,
    ShapeError,
)

__all__ = ["CODE_DTYPES", "MAX_SPLINE_ORDER", "WEIGHT_DTYPES", "LuthamArgs", "validate"]

#: Largest B-spline order (the Rust evaluator's and the C++ kernel's cap).
MAX_SPLINE_ORDER = 15
#: Code dtypes the op accepts (the Rust evaluator's; an implementation may accept fewer).
CODE_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.uint32)
WEIGHT_DTYPES = (torch.int8, torch.float32)

_OPTIONAL = ("gain_scale", "edge_bias", "edge_bias_scale", "out_bias", "base_weight",
             "base_scale")


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

    def contiguous(self) -> LuthamArgs:
        """The same bundle with every tensor detached and C-contiguous (copied only where
        it is not), for kernels that index raw pointers."""
        def c(t: torch.Tensor) -> torch.Tensor:
            return t.detach().contiguous()

        def c_opt(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else c(t)

        return dataclasses.replace(
            self, x=c(self.x), grid=c(self.grid), codebook=c(self.codebook), codes=c(self.codes),
            gains=c(self.gains), gain_scale=c_opt(self.gain_scale),
            edge_bias=c_opt(self.edge_bias), edge_bias_scale=c_opt(self.edge_bias_scale),
            out_bias=c_opt(self.out_bias), base_weight=c_opt(self.base_weight),
            base_scale=c_opt(self.base_scale))


# ---- host checks --------------------------------------------------------------------------


def _absent(t: object) -> bool:
    return t is None or (isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == 0)


def _shape(t: torch.Tensor) -> str:
    """A shape as the Rust evaluator prints it: (3, 4), (5,)."""
    return str(tuple(t.shape))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def _f32_array(t: object, name: str, ndim: int) -> None:
    # the bindings check the number of dimensions before the dtype
    t = _tensor(t, name)
    if t.dim() != ndim:
        raise ShapeError(f"{name}: expected a {ndim}-D array, got shape {list(t.shape)}")
    if t.dtype != torch.float32:
        raise DTypeError(f"{name}: expected dtype float32, got {t.dtype} {_shape(t)}")


def _weights(t: object, name: str) -> None:
    t = _tensor(t, name)
    if t.dtype not in WEIGHT_DTYPES:
        raise DTypeError(f"{name}: expected an int8 or float32 array, got {t.dtype}")
    if t.dim() != 2:
        raise ShapeError(f"{name}: expected a 2-D array, got shape {list(t.shape)}")


def _vec(t: object, name: str) -> None:
    _f32_array(t, name, 1)


def _codes(t: object, allowed: tuple[torch.dtype, ...]) -> None:
    t = _tensor(t, "codes")
    if t.dtype not in allowed:
        names = [_dtype_name(d) for d in allowed]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise DTypeError(f"codes: expected a {listed} array, got {t.dtype}")
    if t.dim() != 2:
        raise ShapeError(f"codes: expected a 2-D array, got shape {list(t.shape)}")


# ---- detailed errors (only on failure) -----------------------------------------------------


def _rust_f64(v: float) -> str:
    """A float as Rust's `{}` prints an f64: shortest round-trip digits, no exponent."""
    if not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return format(Decimal(repr(v)).normalize(), "f")


def _rust_e32(v: float) -> str:
    """A float32 value as Rust's `{:e}` prints an f32: 1e-45, -3.1e38, 0e0."""
    if not math.isfinite(v):
        return _rust_f64(v)
    mant, exp = np.format_float_scientific(np.float32(v), unique=True, trim="-").split("e")
    return f"{mant}e{int(exp)}"


def _first_index(bad: torch.Tensor) -> int:
    """Flat (row-major) index of the first True, -1 when none."""
    hits = bad.reshape(-1).nonzero()
    return int(hits[0, 0]) if hits.numel() else -1


def _first_nonfinite(name: str, t: torch.Tensor) -> NonFiniteError:
    index = _first_index(~torch.isfinite(t))
    return NonFiniteError(f"non-finite value in `{name}` at flat (row-major) index {index}")


def _grid_error(grid: torch.Tensor, k: int) -> InvalidInputError:
    """The Rust evaluator's error for a B-spline grid whose device check failed: non-finite
    knots (whole grid), then rows not strictly increasing (row order), then the first knot
    pair in (row, d, j) order whose float32 difference or its reciprocal is not finite."""
    g = grid.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(g).all()):
        return _first_nonfinite("grid", g)
    ng = g.shape[1]
    flat = _first_index(g[:, 1:] <= g[:, :-1])
    if flat >= 0:
        i, j = divmod(flat, ng - 1)
        j += 1
        return InvalidInputError(
            f"invalid value for `grid`: row {i} is not strictly increasing: "
            f"grid[{i}][{j - 1}] = {_rust_f64(float(g[i, j - 1]))} >= grid[{i}][{j}] = "
            f"{_rust_f64(float(g[i, j]))}")
    # diff[d - 1][i, j] = grid[i][j + d] - grid[i][j] in float32, as the kernels divide
    diffs = [g[:, d:] - g[:, :-d] for d in range(1, min(k, ng - 1) + 1)]
    bad = [~torch.isfinite(dv) | ~torch.isfinite(1.0 / dv) for dv in diffs]
    for i in range(g.shape[0]):
        for d, (dv, bd) in enumerate(zip(diffs, bad), start=1):
            j = _first_index(bd[i])
            if j < 0:
                continue
            hi, lo = _rust_e32(float(g[i, j + d])), _rust_e32(float(g[i, j]))
            if not bool(torch.isfinite(dv[i, j])):
                return InvalidInputError(
                    f"invalid value for `grid`: row {i}: knot range too wide for float32: "
                    f"grid[{i}][{j + d}] - grid[{i}][{j}] = {hi} - {lo} overflows (k = {k})")
            return InvalidInputError(
                f"invalid value for `grid`: row {i}: knot spacing too small for float32: "
                f"1 / (grid[{i}][{j + d}] - grid[{i}][{j}]) = 1 / ({hi} - {lo}) is not "
                f"finite (k = {k})")
    return InvalidInputError("invalid value for `grid`: rows must be finite and strictly "
                             "increasing")


def _code_error(codes: torch.Tensor, n_codes: int) -> CodeRangeError:
    flat = codes.reshape(-1).to(torch.int64)
    index = _first_index((flat < 0) | (flat >= n_codes))
    return CodeRangeError(f"code out of range in `codes` at flat (row-major) index {index}: "
                          f"code {int(flat[index])} is not in [0, {n_codes})")


# ---- device checks -------------------------------------------------------------------------


def _all_finite(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t).all()


def _grid_ok(grid: torch.Tensor, k: int) -> torch.Tensor:
    """0-d bool on the device: finite, strictly increasing rows and, for k >= 1, every knot
    difference of the recursion and its reciprocal finite in float32."""
    ok = _all_finite(grid) & (grid[:, 1:] > grid[:, :-1]).all()
    if k >= 1:  # differences grow with d (monotone rounding): spacing at d = 1, range at d = k
        ok = ok & _all_finite(1.0 / (grid[:, 1:] - grid[:, :-1]))
        ok = ok & _all_finite(grid[:, k:] - grid[:, :-k])
    return ok


def _codes_ok(codes: torch.Tensor, n_codes: int) -> bool | torch.Tensor:
    if codes.numel() == 0 or (codes.dtype == torch.uint8 and n_codes >= 256):
        return True  # every value is in range
    c = codes if codes.dtype != torch.uint32 else codes.to(torch.int64)
    return (c.min() >= 0) & (c.max() < n_codes)


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
        flags = torch.stack([p[0] for p in pending]).to("cpu").tolist()  # the one sync
        for flag, (_, err) in zip(flags, pending):
            if not flag:
                raise err()
    if host_error is not None:
        raise host_error()


# ---- entry point ---------------------------------------------------------------------------


def validate(
    x: torch.Tensor, grid: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor,
    gains: torch.Tensor, gain_scale: torch.Tensor | None, edge_bias: torch.Tensor | None,
    edge_bias_scale: torch.Tensor | None, out_bias: torch.Tensor | None,
    base_weight: torch.Tensor | None, base_scale: torch.Tensor | None, k: int,
    basis: int = 0, h: float = 1.0, base_act: int = 0, *,
    code_dtypes: tuple[torch.dtype, ...] = CODE_DTYPES,
) -> LuthamArgs:
    """Check the op's inputs as the Rust evaluator does; absent (None or (0,)) -> None.

    `code_dtypes`: the code dtypes the caller's implementation accepts (default: all of
    the Rust evaluator's). The returned tensors are the caller's (no copies); see
    `LuthamArgs.contiguous`.

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
    h = float(h)
    h32 = float(torch.tensor(h, dtype=torch.float32))  # the evaluators read h as f32
    _f32_array(x, "x", 2)
    _f32_array(grid, "grid", 2)
    _f32_array(codebook, "codebook", 2)
    _weights(gains, "gains")
    given = dict(zip(_OPTIONAL, (gain_scale, edge_bias, edge_bias_scale, out_bias,
                                 base_weight, base_scale)))
    opt: dict[str, torch.Tensor | None] = {}
    for name, t in given.items():
        opt[name] = None if _absent(t) else t
        if opt[name] is not None:
            (_weights if name in ("edge_bias", "base_weight") else _vec)(t, name)
    _codes(codes, code_dtypes)
    dev = x.device
    named = {"grid": grid, "codebook": codebook, "codes": codes, "gains": gains, **opt}
    for name, t in named.items():
        if t is not None and t.device != dev:
            raise InvalidInputError(f"{name}: on device {t.device}, but x is on {dev}; move the "
                                    f"layer and its input to the same device")

    n_in, n_out = codes.shape
    xn = x.shape[1]
    grid_rows, ng = grid.shape
    n_codes, cm = codebook.shape
    checks: list[_Check] = []
    if basis == 0:
        if k > MAX_SPLINE_ORDER:
            raise InvalidInputError(f"invalid value for `k`: spline order k = {k} exceeds the "
                                    f"maximum {MAX_SPLINE_ORDER}")
        m = ng - k - 1
        checks.append((lambda: not (n_in == 0 or grid_rows not in (n_in, 1) or ng < 2 * k + 2),
                       lambda: ShapeError(
                           f"wrong shape for `grid`: expected (n_in, G + 2k + 1) or (1, G + 2k + 1) "
                           f"with n_in = {n_in} >= 1 (rows of codes), G >= 1 and k = {k}, i.e. at "
                           f"least {2 * k + 2} knots per row, got {_shape(grid)}")))
        checks.append((lambda: _grid_ok(grid, k), lambda: _grid_error(grid, k)))
    elif basis == 1:
        k, m = 0, cm
        # 1/h in float32, as the C++ kernel divides: it overflows for h below ~2.9e-39
        inv = float(torch.tensor(1.0 / h32, dtype=torch.float32)) if h32 > 0 else math.inf
        if not (math.isfinite(h32) and h32 > 0 and math.isfinite(inv)):
            raise InvalidInputError(f"invalid value for `h`: RBF width must be finite and > 0 "
                                    f"with a finite float32 reciprocal, got {_rust_e32(h32)}")
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
    checks.append((lambda: _codes_ok(codes, n_codes), lambda: _code_error(codes, n_codes)))

    def edge(name: str, t: torch.Tensor) -> None:
        checks.append((lambda: tuple(t.shape) == (n_in, n_out), lambda: ShapeError(
            f"wrong shape for `{name}`: expected (n_in, n_out) = ({n_in}, {n_out}), got {_shape(t)}")))
        if t.dtype == torch.float32:
            checks.append((lambda: _all_finite(t), lambda: _first_nonfinite(name, t)))

    def scale_without_weights(sname: str, wname: str) -> None:
        checks.append((lambda: False, lambda: InvalidInputError(
            f"invalid value for `{sname}`: given without {wname}")))

    def vector(name: str, v: torch.Tensor) -> None:
        checks.append((lambda: v.shape[0] == n_out, lambda: ShapeError(
            f"wrong shape for `{name}`: expected (n_out,) = ({n_out},), got {_shape(v)}")))
        checks.append((lambda: _all_finite(v), lambda: _first_nonfinite(name, v)))

    edge("gains", gains)
    for wname, sname in (("edge_bias", "edge_bias_scale"), ("base_weight", "base_scale")):
        w = opt[wname]
        if w is not None:
            edge(wname, w)
        elif opt[sname] is not None:
            scale_without_weights(sname, wname)
    for name in ("gain_scale", "edge_bias_scale", "out_bias", "base_scale"):
        v = opt[name]
        if v is None:
            continue
        vector(name, v)
    _run_checks(checks)
    return LuthamArgs(x, grid, codebook, codes, gains, opt["gain_scale"], opt["edge_bias"],
                      opt["edge_bias_scale"], opt["out_bias"], opt["base_weight"],
                      opt["base_scale"], k, basis, h32, base_act, n_in, n_out, m, n_codes)
