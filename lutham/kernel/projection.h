// LUTHAM kernel: the projection-table strategy (batches below decode_min_batch rows, and
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
static void gather_row(const Layer& L, int64_t i, const Columns& cols, const float* p,
                       float* acc) {
  const int64_t off = i * L.n_out + cols.o0;
  gather_accumulate(static_cast<const CodeT*>(L.codes) + off,
                    static_cast<const GainT*>(L.gains.data) + off, p, acc, cols.n);
}

static void gather_dispatch(const Layer& L, int64_t i, const Columns& cols, const float* p,
                            float* acc) {
  with_code_gain_types(L, [&](auto code, auto gain) {
    gather_row<typename decltype(code)::type, typename decltype(gain)::type>(L, i, cols, p,
                                                                             acc);
  });
}

/// Lookups and base branch of input i in one pass (base stored like the gains).
static void gather_base_dispatch(const Layer& L, int64_t i, const Columns& cols, const float* p,
                                 float act, float* acc, float* acc_w) {
  const int64_t off = i * L.n_out + cols.o0;
  with_code_gain_types(L, [&](auto code, auto gain) {
    using CodeT = typename decltype(code)::type;
    using GainT = typename decltype(gain)::type;
    gather_accumulate_base(static_cast<const CodeT*>(L.codes) + off,
                           static_cast<const GainT*>(L.gains.data) + off, p, acc,
                           static_cast<const GainT*>(L.base_weight.data) + off, act, acc_w,
                           cols.n);
  });
}

static void edge_axpy(const EdgeTensor& e, int64_t i, const Layer& L, const Columns& cols,
                      float a, float* acc) {
  const int64_t off = i * L.n_out + cols.o0;
  if (e.is_i8) {
    axpy_row(static_cast<const int8_t*>(e.data) + off, a, acc, cols.n);
  } else {
    axpy_row(static_cast<const float*>(e.data) + off, a, acc, cols.n);
  }
}

/// acc_b += s * edge_bias row, acc_w += act * base row, in one pass when both are stored alike.
static void edge_axpy2(const Layer& L, int64_t i, const Columns& cols, float s, float act,
                       float* acc_b, float* acc_w) {
  const int64_t off = i * L.n_out + cols.o0;
  if (L.edge_bias.is_i8) {
    axpy2_row(static_cast<const int8_t*>(L.edge_bias.data) + off, s,
              static_cast<const int8_t*>(L.base_weight.data) + off, act, acc_b, acc_w, cols.n);
  } else {
    axpy2_row(static_cast<const float*>(L.edge_bias.data) + off, s,
              static_cast<const float*>(L.base_weight.data) + off, act, acc_b, acc_w, cols.n);
  }
}

/// Scratch of one projection unit: a table and three accumulators of the unit's width.
struct ProjectionScratch {
  float* p;      // (K,) projection table
  float* acc_g;  // (width,) gain-weighted lookups
  float* acc_b;  // (width,) edge-bias terms
  float* acc_w;  // (width,) base-branch terms
  float* b;      // (M,) basis values of a dense basis
};

/// y[o0 + o] from the accumulators, o < cols.n.
static void finish_row(const Layer& L, const Columns& cols, const ProjectionScratch& sc,
                       float* y) {
  for (int64_t c = 0; c < cols.n; ++c) {
    const int64_t o = cols.o0 + c;
    y[o] = scale_or_one(L.gain_scale, o) * sc.acc_g[c] +
           scale_or_one(L.edge_bias_scale, o) * sc.acc_b[c] +
           scale_or_one(L.base_scale, o) * sc.acc_w[c] + (L.out_bias ? L.out_bias[o] : 0.0f);
  }
}

/// Columns `cols` of one batch row by the projection-table strategy (B-splines).
/// inv_h: uniform_inv_spacing of every grid row (one entry for a shared grid).
static void forward_row_projection(const Layer& L, const float* ct, const float* inv_h,
                                   const float* x, const Columns& cols, float* y,
                                   const ProjectionScratch& sc) {
  const int64_t n_knots = L.M + L.k + 1;
  for (int64_t c = 0; c < cols.n; ++c) sc.acc_g[c] = sc.acc_b[c] = sc.acc_w[c] = 0.0f;
  const bool fused = L.edge_bias.data && L.base_weight.data &&
                     L.base_weight.is_i8 == L.edge_bias.is_i8;
  // Base rows stored like the gains ride along with the lookups (one pass over the row).
  const bool base_with_lookups = L.base_weight.data && L.base_weight.is_i8 == L.gains.is_i8;
  float b[kMaxSplineOrder + 1];
  for (int64_t i = 0; i < L.n_in; ++i) {
    const float xi = x[i];
    int64_t first = 0;
    float s = 0.0f;
    bool base_done = false;
    if (basis_at_row(grid_row(L, i), n_knots, L.k, xi, inv_h[L.shared_grid ? 0 : i], &first,
                     b)) {
      s = build_projection(ct, L.K, L.M, L.k, first, b, sc.p);
      if (base_with_lookups) {
        gather_base_dispatch(L, i, cols, sc.p, base_act(L, xi), sc.acc_g, sc.acc_w);
        base_done = true;
      } else {
        gather_dispatch(L, i, cols, sc.p, sc.acc_g);
      }
    }
    const bool bias = L.edge_bias.data && s != 0.0f;
    if (base_done) {
      if (bias) edge_axpy(L.edge_bias, i, L, cols, s, sc.acc_b);
      continue;
    }
    if (bias && fused) {
      edge_axpy2(L, i, cols, s, base_act(L, xi), sc.acc_b, sc.acc_w);
      continue;
    }
    if (bias) edge_axpy(L.edge_bias, i, L, cols, s, sc.acc_b);
    if (L.base_weight.data) edge_axpy(L.base_weight, i, L, cols, base_act(L, xi), sc.acc_w);
  }
  finish_row(L, cols, sc, y);
}

/// Columns `cols` of one batch row for a dense basis (RBF, Chebyshev): per input, all M
/// basis values, P[q] = sum_m b[m] * Ct[m][q] (in order of m), S = sum_m b[m].
static void forward_row_dense(const Layer& L, const float* ct, const float* x,
                              const Columns& cols, float* y, const ProjectionScratch& sc) {
  float* p = sc.p;
  float* b = sc.b;
  for (int64_t c = 0; c < cols.n; ++c) sc.acc_g[c] = sc.acc_b[c] = sc.acc_w[c] = 0.0f;
  for (int64_t i = 0; i < L.n_in; ++i) {
    const float xi = x[i];
    dense_basis(L, i, xi, b);
    for (int64_t q = 0; q < L.K; ++q) p[q] = b[0] * ct[q];
    float s = b[0];
    for (int64_t m = 1; m < L.M; ++m) {
      axpy_plain(p, ct + m * L.K, b[m], L.K);
      s += b[m];
    }
    gather_dispatch(L, i, cols, p, sc.acc_g);
    if (L.edge_bias.data) edge_axpy(L.edge_bias, i, L, cols, s, sc.acc_b);
    if (L.base_weight.data) edge_axpy(L.base_weight, i, L, cols, base_act(L, xi), sc.acc_w);
  }
  finish_row(L, cols, sc, y);
}

}  // namespace lutham
}  // namespace sharekan
