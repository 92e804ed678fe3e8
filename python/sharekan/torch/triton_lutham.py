"""Triton implementation of the LUTHAM forward (one compressed KAN layer, ARCHITECTURE §4).

`lutham_triton(...)` takes the arguments of the `sharekan::lutham` op (torch tensors on one
CUDA device, or on the CPU under ``TRITON_INTERPRET=1``; optional inputs ABSENT = a 1-D
tensor of shape (0,)) and returns ``(B, n_out)`` float32 on x's device.

Two kernels, both keeping memory independent of ``B * n_in * M`` and ``B * n_in * n_out``
(nothing but the output is allocated):

- gather (``B < DOT_MIN_BATCH``, or ``M > DOT_MAX_M``): one program per (batch block,
  output block); for every input i it computes the basis values of its rows in registers
  (B-spline: span by binary search, Cox-de Boor on the k+1 non-zero values; RBF /
  Chebyshev: every m) and gathers ``codebook[codes[i, o], m]`` for just those m
  (``P_i[code]`` restricted to the codes the block needs), accumulating
  ``gains * P``, ``edge_bias * S_i`` and ``base_weight * act(x_i)``; per-output scales
  and ``out_bias`` are applied once at the end, as in the Rust evaluator.
- decoded tile (``B >= DOT_MIN_BATCH`` and ``M <= DOT_MAX_M``): for every input the program
  decodes ``W[m, o] = gains*gain_scale*C[code, m] + edge_bias*edge_bias_scale`` for its
  output block (``w^`` of ARCHITECTURE §2, never stored in memory) and multiplies the
  dense basis tile ``A[b, m]`` built in registers with ``tl.dot`` (tensor cores; 3xTF32
  on sm80+ for float32 accuracy). The base branch stays a rank-1 update outside the dot
  so that an infinite activation is not split into TF32 halves (inf - inf = NaN).

Basis values and activations are computed in float64 and rounded to float32, as the Rust
evaluator and the C++ kernel do; sums are float32. The codebook is read through the cache
by gathers (K * M floats, shared by every program).

Validation is `validation.validate`, shared with the portable path (the Rust evaluator's
rules and error classes from `sharekan.errors`): dtypes and shapes on the host, the value
checks (finite codebook / scales / float weights, codes in [0, K), grid rows strictly
increasing with the float32 knot-spacing rule) as torch reductions on the device, read back
with one host synchronisation; the detailed message (first offending index) is computed
only when a check fails. Non-contiguous tensors are copied (as the eager CPU op does).
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from .validation import MAX_SPLINE_ORDER, validate

try:  # Triton is optional: `available()` says whether this module can run.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton installed
    triton = None
    tl = None

__all__ = ["DOT_MAX_M", "DOT_MIN_BATCH", "MAX_SPLINE_ORDER", "available", "lutham_triton"]

#: Batches with at least this many rows use the decoded-tile (`tl.dot`) kernel: below it a
#: 16-row tile would be mostly padding and the gather kernel does less work per row.
DOT_MIN_BATCH = 64
#: The decoded-tile kernel holds a (64, next_pow2(M)) basis tile and an (next_pow2(M), 64)
#: weight tile in registers; wider codebooks use the gather kernel at every batch size.
DOT_MAX_M = 64
#: Code dtypes the kernels read (the op's, less uint32).
_CODE_DTYPES = (torch.uint8, torch.int16, torch.int32)


def _kernels_interpreted() -> bool:
    # triton.jit picks the interpreter when the module is imported, not when it runs.
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415

    return isinstance(_lutham_gather_kernel, InterpretedFunction)


def available() -> bool:
    """True when triton imports and a CUDA device is present, or the kernels run in
    Triton's interpreter (TRITON_INTERPRET=1 was set when this module was imported)."""
    return triton is not None and (_kernels_interpreted() or torch.cuda.is_available())


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _tanh_f64(x):
        # libdevice.tanh is not in the interpreter; exp-based form with a series near 0,
        # where 1 - exp(-2|x|) would cancel (relative error < 1e-19 below |x| = 1e-3).
        ax = tl.abs(x)
        e = tl.exp(-2.0 * ax)
        big = (1.0 - e) / (1.0 + e)
        x2 = ax * ax
        small = ax * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
        r = tl.where(ax < 1e-3, small, big)
        return tl.where(x < 0, -r, r)

    @triton.jit
    def _act(x, ACT: tl.constexpr):
        # Base-branch activation in f64, rounded to f32 (0 = SiLU, 1 = exact GELU).
        xd = x.to(tl.float64)
        if ACT == 0:
            r = xd / (1.0 + tl.exp(-xd))
        else:
            r = 0.5 * xd * (1.0 + tl.math.erf(xd * 0.7071067811865476))
        return r.to(tl.float32)

    @triton.jit
    def _finish(y, acc_w, bs_ptr, ob_ptr, y_ptr, rows64, rmask, cols, omask, N_OUT,
                HAS_BW: tl.constexpr, HAS_BS: tl.constexpr, HAS_OB: tl.constexpr):
        # Shared by both kernels: add the (scaled) base branch and the output bias, store.
        if HAS_BW:
            if HAS_BS:
                y += acc_w * tl.load(bs_ptr + cols, mask=omask, other=0.0)[None, :]
            else:
                y += acc_w
        if HAS_OB:
            y += tl.load(ob_ptr + cols, mask=omask, other=0.0)[None, :]
        tl.store(y_ptr + rows64[:, None] * N_OUT + cols[None, :], y,
                 mask=rmask[:, None] & omask[None, :])

    @triton.jit
    def _bspline_local(x, g_row, NG, M, NSTEPS, K: tl.constexpr, KP: tl.constexpr):
        """Span and the k+1 non-zero B-spline values of x (one per row) on the knots at
        g_row: returns (vals (rows, KP) f32, zero at invalid indices / t > K / outside the
        grid / NaN; first = span - K, the basis index of column 0)."""
        tcol = tl.arange(0, KP)
        g0 = tl.load(g_row)
        glast = tl.load(g_row + NG - 1)
        inside = (x >= g0) & (x < glast)  # False for NaN
        # Branch-free binary search, invariant g[j] <= x < g[j + n] (the Rust evaluator's).
        j = tl.zeros(x.shape, dtype=tl.int32)
        n = NG - 1
        for _ in range(NSTEPS):
            half = n // 2
            gv = tl.load(g_row + j + half, mask=inside, other=0.0)
            j = tl.where(inside & (gv <= x), j + half, j)
            n -= half
        xd = x.to(tl.float64)
        # Cox-de Boor on the triangle of span j: b[t] = B_{j-d+t} at level d.
        b = tl.where(tcol[None, :] == 0, 1.0, 0.0).to(tl.float64) + tl.zeros(
            (x.shape[0], KP), dtype=tl.float64)
        shift_idx = tl.broadcast_to(tl.maximum(tcol - 1, 0)[None, :], (x.shape[0], KP))
        for d in tl.static_range(1, K + 1):
            mi = j[:, None] - d + tcol[None, :]
            valid = (mi >= 0) & (mi <= NG - 2 - d) & (tcol[None, :] <= d) & inside[:, None]
            gm = tl.load(g_row + mi, mask=valid, other=0.0).to(tl.float64)
            gm1 = tl.load(g_row + mi + 1, mask=valid, other=0.0).to(tl.float64)
            gmd = tl.load(g_row + mi + d, mask=valid, other=1.0).to(tl.float64)
            gmd1 = tl.load(g_row + mi + d + 1, mask=valid, other=1.0).to(tl.float64)
            lower = tl.where(tcol[None, :] >= 1, tl.gather(b, shift_idx, 1), 0.0)
            val = (xd[:, None] - gm) / (gmd - gm) * lower + (gmd1 - xd[:, None]) / (
                gmd1 - gm1) * b
            b = tl.where(valid, val, 0.0)
        first = j - K
        m_idx = first[:, None] + tcol[None, :]
        ok = (m_idx >= 0) & (m_idx < M) & (tcol[None, :] <= K) & inside[:, None]
        vals = tl.where(ok, b, 0.0).to(tl.float32)
        return vals, first

    @triton.jit
    def _lutham_gather_kernel(
        x_ptr, grid_ptr, cb_ptr, codes_ptr, gains_ptr, gs_ptr, eb_ptr, ebs_ptr, ob_ptr,
        bw_ptr, bs_ptr, y_ptr,
        B, N_IN, N_OUT, M, NG, GRID_ROW_STRIDE, NSTEPS, h,
        K: tl.constexpr, KP: tl.constexpr, BASIS: tl.constexpr, ACT: tl.constexpr,
        HAS_GS: tl.constexpr, HAS_EB: tl.constexpr, HAS_EBS: tl.constexpr,
        HAS_OB: tl.constexpr, HAS_BW: tl.constexpr, HAS_BS: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        pid_o = tl.program_id(1)
        rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        rmask = rows < B
        omask = cols < N_OUT
        rows64 = rows.to(tl.int64)
        tcol = tl.arange(0, KP)
        acc_g = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
        acc_w = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
        hd = tl.cast(h, tl.float64)
        for i in range(N_IN):
            x = tl.load(x_ptr + rows64 * N_IN + i, mask=rmask, other=0.0)
            e_off = tl.cast(i, tl.int64) * N_OUT + cols
            code = tl.load(codes_ptr + e_off, mask=omask, other=0).to(tl.int64)
            c_row = cb_ptr + code * M  # (BLOCK_O,) codeword of every edge of the block
            g_row = grid_ptr + tl.cast(i, tl.int64) * GRID_ROW_STRIDE
            proj = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
            s_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
            if BASIS == 0:
                vals, first = _bspline_local(x, g_row, NG, M, NSTEPS, K, KP)
                vals = tl.where(rmask[:, None], vals, 0.0)
                for t in tl.static_range(K + 1):
                    v = tl.sum(tl.where(tcol[None, :] == t, vals, 0.0), axis=1)
                    m_t = first + t
                    ok = (m_t >= 0) & (m_t < M) & rmask
                    cv = tl.load(c_row[None, :] + m_t[:, None], mask=ok[:, None] & omask[None, :],
                                 other=0.0)
                    proj += v[:, None] * cv
                    s_sum += v
            else:
                xd = x.to(tl.float64)
                th = _tanh_f64(xd)
                t_prev = tl.full((BLOCK_B,), 1.0, tl.float64)
                t_cur = th
                for m in range(M):
                    if BASIS == 1:
                        c = tl.load(g_row + m).to(tl.float64)
                        dd = (xd - c) / hd
                        v = tl.exp(-(dd * dd)).to(tl.float32)
                    else:
                        # T_0 = 1, T_1 = t, T_m = 2 t T_{m-1} - T_{m-2}
                        t_next = 2.0 * th * t_cur - t_prev
                        v64 = tl.where(m == 0, 1.0, tl.where(m == 1, th, t_next))
                        step = m >= 2
                        t_prev = tl.where(step, t_cur, t_prev)
                        t_cur = tl.where(step, t_next, t_cur)
                        v = v64.to(tl.float32)
                    cv = tl.load(c_row + m, mask=omask, other=0.0)
                    proj += v[:, None] * cv[None, :]
                    s_sum += v
            gain = tl.load(gains_ptr + e_off, mask=omask, other=0).to(tl.float32)
            acc_g += gain[None, :] * proj
            if HAS_EB:
                eb = tl.load(eb_ptr + e_off, mask=omask, other=0).to(tl.float32)
                acc_b += eb[None, :] * s_sum[:, None]
            if HAS_BW:
                bw = tl.load(bw_ptr + e_off, mask=omask, other=0).to(tl.float32)
                acc_w += bw[None, :] * _act(x, ACT)[:, None]
        y = acc_g
        if HAS_GS:
            y = y * tl.load(gs_ptr + cols, mask=omask, other=0.0)[None, :]
        if HAS_EB:
            if HAS_EBS:
                y += acc_b * tl.load(ebs_ptr + cols, mask=omask, other=0.0)[None, :]
            else:
                y += acc_b
        _finish(y, acc_w, bs_ptr, ob_ptr, y_ptr, rows64, rmask, cols, omask, N_OUT,
                HAS_BW, HAS_BS, HAS_OB)

    @triton.jit
    def _lutham_dot_kernel(
        x_ptr, grid_ptr, cb_ptr, codes_ptr, gains_ptr, gs_ptr, eb_ptr, ebs_ptr, ob_ptr,
        bw_ptr, bs_ptr, y_ptr,
        B, N_IN, N_OUT, NG, GRID_ROW_STRIDE, NSTEPS, h,
        M: tl.constexpr, MD: tl.constexpr,
        K: tl.constexpr, KP: tl.constexpr, BASIS: tl.constexpr, ACT: tl.constexpr,
        HAS_GS: tl.constexpr, HAS_EB: tl.constexpr, HAS_EBS: tl.constexpr,
        HAS_OB: tl.constexpr, HAS_BW: tl.constexpr, HAS_BS: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        pid_o = tl.program_id(1)
        rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        rmask = rows < B
        omask = cols < N_OUT
        rows64 = rows.to(tl.int64)
        tcol = tl.arange(0, KP)
        mcol = tl.arange(0, MD)
        acc = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
        acc_w = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
        gs = tl.full((BLOCK_O,), 1.0, tl.float32)
        if HAS_GS:
            gs = tl.load(gs_ptr + cols, mask=omask, other=0.0)
        ebs = tl.full((BLOCK_O,), 1.0, tl.float32)
        if HAS_EBS:
            ebs = tl.load(ebs_ptr + cols, mask=omask, other=0.0)
        hd = tl.cast(h, tl.float64)
        wmask = (mcol[:, None] < M) & omask[None, :]
        for i in range(N_IN):
            x = tl.load(x_ptr + rows64 * N_IN + i, mask=rmask, other=0.0)
            g_row = grid_ptr + tl.cast(i, tl.int64) * GRID_ROW_STRIDE
            # Dense basis tile A (BLOCK_B, MD), zero in the padding columns m >= M.
            if BASIS == 0:
                vals, first = _bspline_local(x, g_row, NG, M, NSTEPS, K, KP)
                a = tl.zeros((BLOCK_B, MD), dtype=tl.float32)
                for t in tl.static_range(K + 1):
                    v = tl.sum(tl.where(tcol[None, :] == t, vals, 0.0), axis=1)
                    a = tl.where(mcol[None, :] == (first + t)[:, None], v[:, None], a)
            elif BASIS == 1:
                c = tl.load(g_row + mcol, mask=mcol < M, other=0.0).to(tl.float64)
                dd = (x.to(tl.float64)[:, None] - c[None, :]) / hd
                a = tl.where(mcol[None, :] < M, tl.exp(-(dd * dd)).to(tl.float32), 0.0)
            else:
                th = _tanh_f64(x.to(tl.float64))
                a = tl.where(mcol[None, :] == 0, 1.0, 0.0) + tl.zeros((BLOCK_B, MD), tl.float32)
                t_prev = tl.full((BLOCK_B,), 1.0, tl.float64)
                t_cur = th
                for m in tl.static_range(1, M):
                    if m >= 2:
                        t_next = 2.0 * th * t_cur - t_prev
                        t_prev = t_cur
                        t_cur = t_next
                    a = tl.where(mcol[None, :] == m, t_cur.to(tl.float32)[:, None], a)
            a = tl.where(rmask[:, None], a, 0.0)
            # Decoded weights W (MD, BLOCK_O) = gain*scale*C[code] + bias*scale, rows < M.
            e_off = tl.cast(i, tl.int64) * N_OUT + cols
            code = tl.load(codes_ptr + e_off, mask=omask, other=0).to(tl.int64)
            cw = tl.load(cb_ptr + code[None, :] * M + mcol[:, None], mask=wmask, other=0.0)
            gain = tl.load(gains_ptr + e_off, mask=omask, other=0).to(tl.float32) * gs
            w = gain[None, :] * cw
            if HAS_EB:
                eb = tl.load(eb_ptr + e_off, mask=omask, other=0).to(tl.float32) * ebs
                w = tl.where(wmask, w + eb[None, :], 0.0)
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
            if HAS_BW:
                bw = tl.load(bw_ptr + e_off, mask=omask, other=0).to(tl.float32)
                acc_w += bw[None, :] * _act(x, ACT)[:, None]
        y = acc
        _finish(y, acc_w, bs_ptr, ob_ptr, y_ptr, rows64, rmask, cols, omask, N_OUT,
                HAS_BW, HAS_BS, HAS_OB)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _dot_precision(device: torch.device) -> str:
    # 3xTF32 keeps float32 accuracy on tensor cores (sm80+); older GPUs and the
    # interpreter use plain float32 FMAs.
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "tf32x3"
    return "ieee"


def lutham_triton(x: torch.Tensor, grid: torch.Tensor, codebook: torch.Tensor,
                  codes: torch.Tensor, gains: torch.Tensor, gain_scale: torch.Tensor,
                  edge_bias: torch.Tensor, edge_bias_scale: torch.Tensor,
                  out_bias: torch.Tensor, base_weight: torch.Tensor, base_scale: torch.Tensor,
                  k: int, basis: int = 0, h: float = 1.0, base_act: int = 0, *,
                  strategy: str = "auto") -> torch.Tensor:
    """One compressed KAN layer (ARCHITECTURE §4) with Triton kernels.

    Args: those of `sharekan::lutham` (see `sharekan.torch.ops`), all on x's device;
    ABSENT optional inputs are 1-D tensors of shape (0,). `strategy`: "auto" (decoded
    tile with `tl.dot` when B >= DOT_MIN_BATCH and M <= DOT_MAX_M, else gather),
    "gather" or "dot" (forced; "dot" still needs M <= DOT_MAX_M).

    Returns:
        (B, n_out) float32 on x's device.

    Raises:
        sharekan.errors.DTypeError / ShapeError / NonFiniteError / CodeRangeError /
        InvalidInputError on bad inputs (the Rust evaluator's rules); RuntimeError when
        Triton cannot run here (see `available()`).
    """
    if not available():
        raise RuntimeError("lutham_triton needs triton and a CUDA device (or TRITON_INTERPRET=1)")
    if x.device.type != "cuda" and not _kernels_interpreted():
        raise RuntimeError(
            "lutham_triton: tensors on the CPU need TRITON_INTERPRET=1 set before "
            "sharekan.torch.triton_lutham is first imported (its kernels were compiled for GPU)")
    if strategy not in ("auto", "gather", "dot"):
        raise InvalidInputError(
            f"invalid value for `strategy`: expected 'auto', 'gather' or 'dot', got {strategy!r}")
    a = validate(x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale,
                 out_bias, base_weight, base_scale, k, basis, h, base_act,
                 code_dtypes=_CODE_DTYPES)
    k, m = a.k, a.m
    b, n_out = x.shape[0], a.n_out
    y = torch.empty((b, n_out), dtype=torch.float32, device=x.device)
    if b == 0 or n_out == 0:
        return y
    a = a.contiguous()

    def arg(t):
        # absent -> any valid pointer; the HAS_* flag keeps the kernel from reading it
        return a.x if t is None else t

    tensors = [a.x, a.grid, a.codebook, a.codes, a.gains, arg(a.gain_scale), arg(a.edge_bias),
               arg(a.edge_bias_scale), arg(a.out_bias), arg(a.base_weight), arg(a.base_scale),
               y]
    flags = dict(HAS_GS=a.gain_scale is not None, HAS_EB=a.edge_bias is not None,
                 HAS_EBS=a.edge_bias_scale is not None, HAS_OB=a.out_bias is not None,
                 HAS_BW=a.base_weight is not None, HAS_BS=a.base_scale is not None)
    ng = grid.shape[1]
    row_stride = 0 if grid.shape[0] == 1 else ng
    nsteps = max(0, (ng - 2).bit_length())  # ceil(log2(ng - 1)) halvings of the span search
    kp = _next_pow2(k + 1)
    use_dot = strategy == "dot" or (strategy == "auto" and b >= DOT_MIN_BATCH)
    if use_dot and m > DOT_MAX_M:
        if strategy == "dot":
            raise InvalidInputError(
                f"invalid value for `strategy`: 'dot' needs M <= {DOT_MAX_M}, got M = {m}")
        use_dot = False
    if use_dot:
        block_b, block_o = 64, 64
        grid_shape = (triton.cdiv(b, block_b), triton.cdiv(n_out, block_o))
        _lutham_dot_kernel[grid_shape](
            *tensors, b, a.n_in, n_out, ng, row_stride, nsteps, a.h,
            M=m, MD=max(16, _next_pow2(m)), K=k, KP=kp, BASIS=a.basis, ACT=a.base_act, **flags,
            BLOCK_B=block_b, BLOCK_O=block_o, PRECISION=_dot_precision(x.device))
    else:
        block_b = min(16, _next_pow2(b))
        block_o = min(64 if kp <= 4 else 32, max(16, _next_pow2(n_out)))
        grid_shape = (triton.cdiv(b, block_b), triton.cdiv(n_out, block_o))
        _lutham_gather_kernel[grid_shape](
            *tensors, b, a.n_in, n_out, m, ng, row_stride, nsteps, a.h,
            K=k, KP=kp, BASIS=a.basis, ACT=a.base_act, **flags, BLOCK_B=block_b, BLOCK_O=block_o)
    return y
