// LUTHAM: one compressed KAN layer, runtime-neutral (the public entry of lutham/kernel/).
//
// Evaluates one compressed KAN layer (ARCHITECTURE.md §4) by codebook lookup:
//
//   y[b,o] = gain_scale[o]      * sum_i gains[i,o]       * P_bi[codes[i,o]]
//          + edge_bias_scale[o] * sum_i edge_bias[i,o]   * S_bi
//          + base_scale[o]      * sum_i base_weight[i,o] * act(x[b,i])
//          + out_bias[o]
//
// Basis kinds (`basis`): 0 = B-splines of order k on the knots in `grid` (below);
// 1 = Gaussian RBFs B_m(x) = exp(-((x - c_m) / h)^2), `grid` = the centres c_m, shape
// (n_in or 1, M) (FastKAN); 2 = Chebyshev T_m(tanh x), m = 0..M-1, `grid` not read (any
// float32 2-D tensor; ChebyKAN). Dense bases (1, 2) use all M basis values of every input
// (projection tables at every batch size; k is not read). act (`base_act`): 0 = SiLU,
// 1 = exact GELU x/2 (1 + erf(x / sqrt 2)) (TorchKAN).
//
// with P_bi[q] = sum_t B_{j-k+t}(x[b,i]) * codebook[q, j-k+t] (j = knot span of x[b,i]) and
// S_bi = sum_t B_{j-k+t}(x[b,i]) over the valid basis indices. Outside the grid (or NaN) all
// basis values are zero.
//
// No runtime types: a runtime describes the call's tensors as TensorViews in an Args
// (common.h), calls validate() (validate.h: every check, InvalidArgument + message on the
// first failure), sizes the output (batch, n_out) and calls forward(). The ExecuTorch
// operator `sharekan::lutham.out` is lutham/lutham_executorch.cpp; its schema (defined in
// python/sharekan/torch/ops.py):
//   sharekan::lutham.out(Tensor x, Tensor grid, Tensor codebook, Tensor codes, Tensor gains,
//       Tensor gain_scale, Tensor edge_bias, Tensor edge_bias_scale, Tensor out_bias,
//       Tensor base_weight, Tensor base_scale, int k, int basis=0, float h=1.,
//       int base_act=0, *, Tensor(a!) out) -> Tensor(a!)
//
// Optional-tensor convention: an optional input is ABSENT when it is a 1-D tensor of shape
// (0,) (any dtype). Absent gain_scale / edge_bias_scale / base_scale mean "all ones";
// absent edge_bias / out_bias / base_weight mean "no such term". A scale given without its
// per-edge tensor is an error.
//
// Dtypes: x, grid, codebook, scales, out_bias, out: float32; codes: uint8, int16 or int32;
// gains, edge_bias, base_weight: int8 or float32. Every tensor must be contiguous.
//
// Grid: (n_in, M + k + 1) knots, or (1, M + k + 1): the same knots for every input
// (efficient-kan's default grid; stored once, reciprocals computed once per tile).
//
// Every check returns InvalidArgument (or MemoryAllocationFailed) with a message; no input
// can make the kernel read or write out of bounds (validate.h).
//
// Scratch memory: at most kMaxScratchBytes per call, whatever the batch size (tiles of
// kBatchTile rows). When the decoded tiles would exceed it, the projection strategy runs
// instead (it needs K + 3 n_out floats besides the transposed codebook); a layer whose
// projection scratch exceeds it too is rejected with InvalidArgument.
//
// Two strategies, one result: per-row projection tables (projection.h; batches below
// decode_min_batch rows, and dense bases) and decoded tiles (decoded.h). Basis functions:
// basis.h; the hot loops and their x86-64-v3 clones: simd.h.
//
// Files (the Rust evaluator's evaluator/ modules, file for file; common.h ~ its mod.rs types):
//   lutham.h      this entry: forward()      common.h      shared types, Status, Scratch
//   validate.h    validate(Args) -> Layer    basis.h       B-spline / RBF / Chebyshev, acts
//   projection.h  projection-table strategy  decoded.h     decoded-tile strategy
//   simd.h        hot loops, ifunc clones

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "basis.h"
#include "common.h"
#include "decoded.h"
#include "panel.h"
#include "projection.h"
#include "simd.h"
#include "validate.h"

namespace sharekan {
namespace lutham {

/// Codebook transposed to (M, K) plus a zero row: the rows the hot loops read.
static void transpose_codebook(const Layer& L, float* ct) {
  for (int64_t q = 0; q < L.K; ++q)
    for (int64_t m = 0; m < L.M; ++m) ct[m * L.K + q] = L.codebook[q * L.M + m];
  for (int64_t q = 0; q < L.K; ++q) ct[L.M * L.K + q] = 0.0f;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// Unit u of n splitting `count` items into near-equal ranges of multiples of `align`.
static void split_range(int64_t count, int64_t align, int64_t n, int64_t u, int64_t* lo,
                        int64_t* hi) {
  const int64_t per = ceil_div(ceil_div(count, align), n) * align;
  *lo = std::min(count, u * per);
  *hi = std::min(count, *lo + per);
}

/// Rows from which decoded tiles beat projection tables (cost model in common.h): wide
/// codebooks and narrow layers decode early, narrow codebooks and wide layers late.
static int64_t decode_min_batch(const Layer& L) {
  // validated: K <= 65536, k <= 15, M <= 4096, n_out <= 2^24: no overflow in double
  const double decode = static_cast<double>(kDecodeCostD) * L.n_out * L.M;
  const double per_row = static_cast<double>(kTableCostA) * L.K * (L.k + 1) +
                         static_cast<double>(kLookupCostBE) * L.n_out;
  const double rows = std::ceil(decode / per_row);
  return std::max<int64_t>(kDecodeMinBatch, rows > 1e9 ? int64_t{1000000000}
                                                          : static_cast<int64_t>(rows));
}

/// Projection tables (B-splines below decode_min_batch rows, and dense bases): one unit for
/// calls below kMinParallelNs, else rows split between threads when there are enough of
/// them, else columns (each unit then builds every table itself: tables cost K (k+1) per
/// input, lookups n_out).
static ScratchStatus forward_projection(const Layer& L, const float* x, int64_t B, float* y,
                                        const Parallel& par) {
  int64_t threads = std::max<int64_t>(1, std::min(par.threads, kMaxUnits));
  // cost model of common.h (table terms a, lookups b; x 0.01 ns)
  const double serial_ns =
      0.01 * static_cast<double>(B) * static_cast<double>(L.n_in) *
      (static_cast<double>(kTableCostA) * static_cast<double>(L.K) *
           static_cast<double>(L.basis == kBasisBSpline ? L.k + 1 : L.M) +
       static_cast<double>(kLookupCostB) * static_cast<double>(L.n_out));
  if (!par.exact && serial_ns < kMinParallelNs) threads = 1;
  const bool by_rows = B >= threads;
  const int64_t n_col_units =
      by_rows ? 1 : std::min(threads, ceil_div(L.n_out, kColumnAlign));
  const int64_t n_units = by_rows ? std::min(B, threads) : n_col_units;
  int64_t widest_lo = 0, width = L.n_out;  // unit 0 is the widest
  if (!by_rows) split_range(L.n_out, kColumnAlign, n_units, 0, &widest_lo, &width);
  Scratch mem;
  float* ct = mem.get<float>(L.K, L.M + 1);
  float* p = mem.get<float>(n_units, L.K);
  float* acc = mem.get<float>(n_units * 3, width);
  float* bd = mem.get<float>(n_units, L.M);
  const int64_t grid_rows = L.shared_grid ? 1 : L.n_in;
  float* inv_h = mem.get<float>(grid_rows);
  if (!mem.ok()) return mem.status();
  transpose_codebook(L, ct);
  if (L.basis == kBasisBSpline) {
    for (int64_t r = 0; r < grid_rows; ++r)
      inv_h[r] = uniform_inv_spacing(L.grid + r * (L.M + L.k + 1), L.M + L.k + 1);
  }
  const bool dense = L.basis != kBasisBSpline;
  auto unit = [&](int64_t u) {
    const ProjectionScratch sc{p + u * L.K, acc + 3 * u * width, acc + (3 * u + 1) * width,
                               acc + (3 * u + 2) * width, bd + u * L.M};
    int64_t r0 = 0, r1 = B;
    Columns cols{0, L.n_out};
    if (by_rows) {
      split_range(B, 1, n_units, u, &r0, &r1);
    } else {
      int64_t o1 = 0;
      split_range(L.n_out, kColumnAlign, n_units, u, &cols.o0, &o1);
      cols.n = o1 - cols.o0;
    }
    for (int64_t bi = r0; bi < r1; ++bi) {
      if (dense) {
        forward_row_dense(L, ct, x + bi * L.n_in, cols, y + bi * L.n_out, sc);
      } else {
        forward_row_projection(L, ct, inv_h, x + bi * L.n_in, cols, y + bi * L.n_out, sc);
      }
    }
  };
  par.for_range(n_units, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) unit(u);
  });
  return ScratchStatus::kOk;
}

/// Decoded tiles (B-splines, decode_min_batch rows or more). Per tile, the basis phase is
/// split over inputs, the accumulate phase over column blocks (and row parts when there
/// are fewer blocks than threads).
static ScratchStatus forward_decoded(const Layer& L, const float* x, int64_t B, float* y,
                                     const Parallel& par) {
  const int64_t threads = std::max<int64_t>(1, std::min(par.threads, kMaxUnits));
  const int64_t tile = std::min(B, kDecodeTile);
  const int64_t n_knots = L.M + L.k + 1;
  const int64_t n_basis_units = std::min(threads, L.n_in);
  const int64_t n_col_units = std::min(threads, ceil_div(L.n_out, kColumnAlign));
  const int64_t n_row_parts = std::max<int64_t>(1, std::min(threads / n_col_units, tile / 16));
  const int64_t n_units = n_col_units * n_row_parts;
  int64_t widest_lo = 0, width = 0;  // column unit 0 is the widest
  split_range(L.n_out, kColumnAlign, n_col_units, 0, &widest_lo, &width);
  const int64_t acc_width = (width + 7) / 8 * 8;
  const int64_t panel_floats = panel::kInputGroup * (L.M + 1) * panel::kBlockCols;
  Scratch mem;
  float* ct = mem.get<float>(L.K, L.M + 1);
  const TileBasis tb = tile_basis_scratch(mem, L, tile);
  float* inv = mem.get<float>(n_basis_units * L.k, n_knots);  // validated: fits int64
  float* panels = mem.get<float>(n_units, panel_floats);
  float* acc = mem.get<float>(n_units * tile, acc_width);
  float* rows = mem.get<float>(n_units * 2, panel::kBlockCols);  // gg and eb per unit
  int32_t* q = mem.get<int32_t>(n_units, panel::kBlockCols);
  const int64_t Mp = ceil_div(L.M, 8) * 8;
  const bool padded = L.K * Mp <= kMaxPaddedCodebookFloats;  // validated: K*Mp fits int64
  float* cbp = padded ? mem.get<float>(L.K, Mp) : nullptr;
  if (!mem.ok()) return mem.status();
  transpose_codebook(L, ct);
  if (padded) {
    for (int64_t c = 0; c < L.K; ++c)
      for (int64_t m = 0; m < Mp; ++m) cbp[c * Mp + m] = m < L.M ? L.codebook[c * L.M + m] : 0.0f;
  }
  for (int64_t t0 = 0; t0 < B; t0 += tile) {
    const int64_t nb = std::min(tile, B - t0);
    par.for_range(n_basis_units, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        int64_t i0 = 0, i1 = 0;
        split_range(L.n_in, 1, n_basis_units, u, &i0, &i1);
        if (i1 > i0)
          tile_basis_inputs(L, x + t0 * L.n_in, nb, tile, i0, i1, tb, inv + u * L.k * n_knots);
      }
    });
    par.for_range(n_units, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        Columns cols;
        int64_t o1 = 0, r0 = 0, r1 = 0;
        split_range(L.n_out, kColumnAlign, n_col_units, u % n_col_units, &cols.o0, &o1);
        cols.n = o1 - cols.o0;
        split_range(nb, 1, n_row_parts, u / n_col_units, &r0, &r1);
        if (r1 <= r0 || cols.n == 0) continue;
        const DecodedScratch d{panels + u * panel_floats, acc + u * tile * acc_width,
                               rows + 2 * u * panel::kBlockCols,
                               rows + (2 * u + 1) * panel::kBlockCols,
                               q + u * panel::kBlockCols};
        accumulate_unit(L, ct, cbp, Mp, tb, tile, r0, r1, cols, y + t0 * L.n_out, d);
      }
    });
  }
  return ScratchStatus::kOk;
}

/// Evaluates the layer for B rows of x (B, n_in) into y (B, n_out).
/// Returns kTooLarge when the scratch memory would exceed kMaxScratchBytes (then the
/// decoded strategy falls back to projection tables; if those exceed it too, nothing is
/// written), kNoMemory when it cannot be allocated.
static ScratchStatus forward_layer(const Layer& L, const float* x, int64_t B, float* y,
                                   const Parallel& par) {
  if (B == 0 || L.n_out == 0) return ScratchStatus::kOk;
  // decoded windows need k+1 spline rows (M >= k+1; G = 0 grids use projection tables)
  if (L.basis == kBasisBSpline && L.M > L.k && B >= decode_min_batch(L)) {
    const ScratchStatus st = forward_decoded(L, x, B, y, par);
    if (st != ScratchStatus::kTooLarge) return st;
  }
  return forward_projection(L, x, B, y, par);
}

/// Evaluates a validated layer (validate()) for B rows of x (B, n_in) into y (B, n_out),
/// both C-contiguous float32. Errors: InvalidArgument when the scratch memory would exceed
/// kMaxScratchBytes (nothing is written), MemoryAllocationFailed when it cannot be
/// allocated.
static Status forward(const Layer& L, const float* x, int64_t B, float* y,
                      const Parallel& par = Parallel{}) {
  const ScratchStatus st = forward_layer(L, x, B, y, par);
  if (st == ScratchStatus::kTooLarge) {
    return status_error(StatusCode::kInvalidArgument,
                        "lutham: scratch memory for K=%lld, M=%lld, n_in=%lld, n_out=%lld "
                        "exceeds the kernel's cap of %llu bytes",
                        static_cast<long long>(L.K), static_cast<long long>(L.M),
                        static_cast<long long>(L.n_in), static_cast<long long>(L.n_out),
                        static_cast<unsigned long long>(kMaxScratchBytes));
  }
  if (st == ScratchStatus::kNoMemory) {
    return status_error(StatusCode::kMemoryAllocationFailed,
                        "lutham: cannot allocate scratch memory");
  }
  return Status{};
}

}  // namespace lutham
}  // namespace sharekan
