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
// kDecodeMinBatch rows, and dense bases) and decoded tiles (decoded.h). Basis functions:
// basis.h; the hot loops and their x86-64-v3 clones: simd.h.
//
// Files (the Rust evaluator's evaluator/ modules, file for file; common.h ~ its mod.rs types):
//   lutham.h      this entry: forward()      common.h      shared types, Status, Scratch
//   validate.h    validate(Args) -> Layer    basis.h       B-spline / RBF / Chebyshev, acts
//   projection.h  projection-table strategy  decoded.h     decoded-tile strategy
//   simd.h        hot loops, ifunc clones

#pragma once

#include <algorithm>
#include <cstdint>

#include "basis.h"
#include "common.h"
#include "decoded.h"
#include "projection.h"
#include "simd.h"
#include "validate.h"

namespace sharekan {
namespace lutham {

/// Evaluates the layer for B rows of x (B, n_in) into y (B, n_out).
/// Returns kTooLarge when the scratch memory would exceed kMaxScratchBytes (nothing is
/// written), kNoMemory when it cannot be allocated.
static ScratchStatus forward_layer(const Layer& L, const float* x, int64_t B, float* y) {
  if (B == 0 || L.n_out == 0) return ScratchStatus::kOk;
  const bool dense = L.basis != kBasisBSpline;
  const int64_t tile = std::min(B, kBatchTile);
  bool decoded = !dense && B >= kDecodeMinBatch;
  if (decoded) {
    // The decoded block (M x n_out) can exceed the cap where the projection tables do not.
    Scratch probe(/*measure_only=*/true);
    probe.get<float>(L.K, L.M + 1);
    decoded_scratch(probe, L, tile);
    decoded = probe.ok();
  }
  Scratch mem;
  // codebook transposed to (M, K) plus a zero row: the rows the hot loops read
  float* ct = mem.get<float>(L.K, L.M + 1);
  ProjectionScratch ps{};
  DecodedScratch ds{};
  float* bd = dense ? mem.get<float>(L.M) : nullptr;
  if (decoded) {
    ds = decoded_scratch(mem, L, tile);
  } else {
    ps = {mem.get<float>(L.K), mem.get<float>(L.n_out), mem.get<float>(L.n_out),
          mem.get<float>(L.n_out)};
  }
  if (!mem.ok()) return mem.status();
  for (int64_t q = 0; q < L.K; ++q)
    for (int64_t m = 0; m < L.M; ++m) ct[m * L.K + q] = L.codebook[q * L.M + m];
  for (int64_t q = 0; q < L.K; ++q) ct[L.M * L.K + q] = 0.0f;
  if (decoded) {
    for (int64_t b0 = 0; b0 < B; b0 += kBatchTile) {
      const int64_t nb = std::min(kBatchTile, B - b0);
      forward_decoded(L, ct, x + b0 * L.n_in, nb, y + b0 * L.n_out, ds);
    }
  } else if (dense) {
    for (int64_t bi = 0; bi < B; ++bi)
      forward_row_dense(L, ct, x + bi * L.n_in, y + bi * L.n_out, ps, bd);
  } else {
    for (int64_t bi = 0; bi < B; ++bi)
      forward_row_projection(L, ct, x + bi * L.n_in, y + bi * L.n_out, ps);
  }
  return ScratchStatus::kOk;
}

/// Evaluates a validated layer (validate()) for B rows of x (B, n_in) into y (B, n_out),
/// both C-contiguous float32. Errors: InvalidArgument when the scratch memory would exceed
/// kMaxScratchBytes (nothing is written), MemoryAllocationFailed when it cannot be
/// allocated.
static Status forward(const Layer& L, const float* x, int64_t B, float* y) {
  const ScratchStatus st = forward_layer(L, x, B, y);
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
