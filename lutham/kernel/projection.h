// LUTHAM kernel: the projection-table strategy (batches below kDecodeMinBatch rows, and
// every batch of a dense basis).
//
// Per input i, build the K-entry table P_i[q] = sum_t B_t(x_i) * codebook[q, t] once (one
// pass over k+1 rows of the transposed codebook, or all M rows for RBF / Chebyshev) and walk
// the contiguous row i of codes / gains / biases / base weights (1 byte each in int8).

#pragma once

#include <cstdint>

#include "basis.h"
#include "common.h"
#include "simd.h"

namespace sharekan {
namespace lutham {

/// P[q] = sum over valid t of b[t] * Ct[(first + t) * K + q]; returns S = sum of those b[t].
/// ct has M + 1 rows of K floats; row M is all zeros (stands in for invalid indices).
static float build_projection(const float* ct, int64_t K, int64_t M, int64_t k,
                              int64_t first, const float* b, float* p) {
  const float* rows[kMaxSplineOrder + 1];
  float c[kMaxSplineOrder + 1];
  float s = 0.0f;
  for (int64_t t = 0; t <= k; ++t) {
    const int64_t m = first + t;
    const bool valid = m >= 0 && m < M;
    rows[t] = ct + (valid ? m : M) * K;
    c[t] = valid ? b[t] : 0.0f;
    s += c[t];
  }
  switch (k) {
    case 0: proj_terms<1>(p, rows, c, K); break;
    case 1: proj_terms<2>(p, rows, c, K); break;
    case 2: proj_terms<3>(p, rows, c, K); break;
    case 3: proj_terms<4>(p, rows, c, K); break;
    default:
      proj_terms<4>(p, rows, c, K);
      for (int64_t t = 4; t <= k; ++t) axpy_plain(p, rows[t], c[t], K);
      break;
  }
  return s;
}

template <typename CodeT, typename GainT>
static void gather_row(const Layer& L, int64_t i, const float* p, float* acc) {
  const int64_t off = i * L.n_out;
  gather_accumulate(static_cast<const CodeT*>(L.codes) + off,
                    static_cast<const GainT*>(L.gains.data) + off, p, acc, L.n_out);
}

static void gather_dispatch(const Layer& L, int64_t i, const float* p, float* acc) {
  with_code_gain_types(L, [&](auto code, auto gain) {
    gather_row<typename decltype(code)::type, typename decltype(gain)::type>(L, i, p, acc);
  });
}

static void edge_axpy(const EdgeTensor& e, int64_t i, int64_t n_out, float a, float* acc) {
  const int64_t off = i * n_out;
  if (e.is_i8) {
    axpy_row(static_cast<const int8_t*>(e.data) + off, a, acc, n_out);
  } else {
    axpy_row(static_cast<const float*>(e.data) + off, a, acc, n_out);
  }
}

struct ProjectionScratch {
  float* p;      // (K,) projection table
  float* acc_g;  // (n_out,) gain-weighted lookups
  float* acc_b;  // (n_out,) edge-bias terms
  float* acc_w;  // (n_out,) base-branch terms
};

/// One batch row by the projection-table strategy.
static void forward_row_projection(const Layer& L, const float* ct, const float* x,
                                   float* y, const ProjectionScratch& sc) {
  const int64_t n_knots = L.M + L.k + 1;
  float* p = sc.p;
  float* acc_g = sc.acc_g;
  float* acc_b = sc.acc_b;
  float* acc_w = sc.acc_w;
  for (int64_t o = 0; o < L.n_out; ++o) acc_g[o] = acc_b[o] = acc_w[o] = 0.0f;
  float b[kMaxSplineOrder + 1];
  for (int64_t i = 0; i < L.n_in; ++i) {
    const float xi = x[i];
    int64_t first = 0;
    if (basis_at(grid_row(L, i), n_knots, L.k, xi, &first, b)) {
      const float s = build_projection(ct, L.K, L.M, L.k, first, b, p);
      gather_dispatch(L, i, p, acc_g);
      if (L.edge_bias.data && s != 0.0f) {
        if (L.base_weight.data && L.base_weight.is_i8 == L.edge_bias.is_i8) {
          const int64_t off = i * L.n_out;
          if (L.edge_bias.is_i8) {
            axpy2_row(static_cast<const int8_t*>(L.edge_bias.data) + off, s,
                      static_cast<const int8_t*>(L.base_weight.data) + off, base_act(L, xi), acc_b,
                      acc_w, L.n_out);
          } else {
            axpy2_row(static_cast<const float*>(L.edge_bias.data) + off, s,
                      static_cast<const float*>(L.base_weight.data) + off, base_act(L, xi), acc_b,
                      acc_w, L.n_out);
          }
          continue;
        }
        edge_axpy(L.edge_bias, i, L.n_out, s, acc_b);
      }
    }
    if (L.base_weight.data) edge_axpy(L.base_weight, i, L.n_out, base_act(L, xi), acc_w);
  }
  for (int64_t o = 0; o < L.n_out; ++o) {
    y[o] = scale_or_one(L.gain_scale, o) * acc_g[o] +
           scale_or_one(L.edge_bias_scale, o) * acc_b[o] +
           scale_or_one(L.base_scale, o) * acc_w[o] + (L.out_bias ? L.out_bias[o] : 0.0f);
  }
}

/// One batch row for a dense basis (RBF, Chebyshev): per input, all M basis values,
/// P[q] = sum_m b[m] * Ct[m][q] (in order of m), S = sum_m b[m].
static void forward_row_dense(const Layer& L, const float* ct, const float* x, float* y,
                              const ProjectionScratch& sc, float* b) {
  float* p = sc.p;
  float* acc_g = sc.acc_g;
  float* acc_b = sc.acc_b;
  float* acc_w = sc.acc_w;
  for (int64_t o = 0; o < L.n_out; ++o) acc_g[o] = acc_b[o] = acc_w[o] = 0.0f;
  for (int64_t i = 0; i < L.n_in; ++i) {
    const float xi = x[i];
    dense_basis(L, i, xi, b);
    for (int64_t q = 0; q < L.K; ++q) p[q] = b[0] * ct[q];
    float s = b[0];
    for (int64_t m = 1; m < L.M; ++m) {
      axpy_plain(p, ct + m * L.K, b[m], L.K);
      s += b[m];
    }
    gather_dispatch(L, i, p, acc_g);
    if (L.edge_bias.data) edge_axpy(L.edge_bias, i, L.n_out, s, acc_b);
    if (L.base_weight.data) edge_axpy(L.base_weight, i, L.n_out, base_act(L, xi), acc_w);
  }
  for (int64_t o = 0; o < L.n_out; ++o) {
    y[o] = scale_or_one(L.gain_scale, o) * acc_g[o] +
           scale_or_one(L.edge_bias_scale, o) * acc_b[o] +
           scale_or_one(L.base_scale, o) * acc_w[o] + (L.out_bias ? L.out_bias[o] : 0.0f);
  }
}

}  // namespace lutham
}  // namespace sharekan
