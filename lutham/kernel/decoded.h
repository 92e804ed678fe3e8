// LUTHAM kernel: the decoded-tile strategy (B-splines, batches of kDecodeMinBatch rows or
// more, in tiles of kBatchTile rows).
//
// Per input i, decode the rows of the dense weight block W_i (M x n_out, scales folded in)
// that the tile touches into a scratch buffer that stays in cache, then add (k+1) spline
// rows plus the bias and base rows for each batch row. This uses only the k+1 non-zero basis
// values per input, so it does about (k+3)/(M+1) of a dense layer's multiply-adds.

#pragma once

#include <cstdint>

#include "basis.h"
#include "common.h"
#include "simd.h"

namespace sharekan {
namespace lutham {

static void axpy_many(float* y, const float* const* w, const float* c, int64_t n_terms,
                      int64_t n) {
  int64_t t = 0;
  for (; t + 6 <= n_terms; t += 6) axpy_terms<6>(y, w + t, c + t, n);
  switch (n_terms - t) {
    case 5: axpy_terms<5>(y, w + t, c + t, n); break;
    case 4: axpy_terms<4>(y, w + t, c + t, n); break;
    case 3: axpy_terms<3>(y, w + t, c + t, n); break;
    case 2: axpy_terms<2>(y, w + t, c + t, n); break;
    case 1: axpy_terms<1>(y, w + t, c + t, n); break;
    default: break;
  }
}

template <typename CodeT, typename GainT>
static void load_codes_gains(const Layer& L, int64_t i, int32_t* q, float* gg) {
  const CodeT* codes = static_cast<const CodeT*>(L.codes) + i * L.n_out;
  const GainT* gains = static_cast<const GainT*>(L.gains.data) + i * L.n_out;
  for (int64_t o = 0; o < L.n_out; ++o) {
    q[o] = static_cast<int32_t>(codes[o]);
    gg[o] = as_float(gains[o]) * scale_or_one(L.gain_scale, o);
  }
}

static void load_codes_gains_dispatch(const Layer& L, int64_t i, int32_t* q, float* gg) {
  with_code_gain_types(L, [&](auto code, auto gain) {
    load_codes_gains<typename decltype(code)::type, typename decltype(gain)::type>(L, i, q, gg);
  });
}

/// Scaled per-edge row: out[o] = scale[o] * e[i, o].
static void load_scaled_row(const EdgeTensor& e, const float* scale, int64_t i, int64_t n_out,
                            float* out) {
  const int64_t off = i * n_out;
  if (e.is_i8) {
    const int8_t* v = static_cast<const int8_t*>(e.data) + off;
    for (int64_t o = 0; o < n_out; ++o) out[o] = scale_or_one(scale, o) * v[o];
  } else {
    const float* v = static_cast<const float*>(e.data) + off;
    for (int64_t o = 0; o < n_out; ++o) out[o] = scale_or_one(scale, o) * v[o];
  }
}

struct DecodedScratch {
  float* w;          // (M, n_out) decoded spline rows of one input, gain scales folded in
  float* w_bias;     // (n_out,) edge_bias_scale * edge_bias row
  float* w_base;     // (n_out,) base_scale * base_weight row
  float* gg;         // (n_out,) gain_scale * gains row
  int32_t* q;        // (n_out,) codes row
  float* coef;       // (tile, k+1) basis values
  int32_t* first_of; // (tile,) span - k
  float* s_sum;      // (tile,) sum of valid basis values
  float* s_silu;     // (tile,) SiLU(x)
  float* inv;        // (k, n_knots) knot reciprocals
  float* xt;         // (n_in, tile) x transposed
};

static DecodedScratch decoded_scratch(Scratch& mem, const Layer& L, int64_t tile) {
  DecodedScratch d;
  d.w = mem.get<float>(L.M, L.n_out);
  d.w_bias = mem.get<float>(L.n_out);
  d.w_base = mem.get<float>(L.n_out);
  d.gg = mem.get<float>(L.n_out);
  d.q = mem.get<int32_t>(L.n_out);
  d.coef = mem.get<float>(tile, L.k + 1);
  d.first_of = mem.get<int32_t>(tile);
  d.s_sum = mem.get<float>(tile);
  d.s_silu = mem.get<float>(tile);
  d.inv = mem.get<float>(L.k, L.M + L.k + 1);  // validated: M + k + 1 does not overflow
  d.xt = mem.get<float>(L.n_in, tile);
  return d;
}

/// A tile of B rows by the decoded-tile strategy; y (B, n_out) is overwritten.
static void forward_decoded(const Layer& L, const float* ct, const float* x, int64_t B,
                            float* y, const DecodedScratch& d) {
  const int64_t n_out = L.n_out, M = L.M, k = L.k, n_knots = M + k + 1;
  float* w = d.w;
  float* w_bias = d.w_bias;
  float* w_base = d.w_base;
  float* gg = d.gg;
  int32_t* q = d.q;
  float* coef = d.coef;
  int32_t* first_of = d.first_of;
  float* s_sum = d.s_sum;
  float* s_silu = d.s_silu;
  float* inv = d.inv;
  float* xt = d.xt;
  // Column reads of x (stride n_in) would thrash a few L1 sets; transpose once.
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t i = 0; i < L.n_in; ++i) xt[i * B + bi] = x[bi * L.n_in + i];

  for (int64_t bi = 0; bi < B; ++bi) {
    float* yb = y + bi * n_out;
    for (int64_t o = 0; o < n_out; ++o) yb[o] = L.out_bias ? L.out_bias[o] : 0.0f;
  }
  const float* terms_w[kMaxSplineOrder + 3];
  float terms_c[kMaxSplineOrder + 3];
  for (int64_t i = 0; i < L.n_in; ++i) {
    const float* g = grid_row(L, i);
    int64_t m_lo = M, m_hi = -1;
    if (i == 0 || !L.shared_grid) knot_reciprocals(g, n_knots, k, inv);
    for (int64_t bi = 0; bi < B; ++bi) {
      float* cb = coef + bi * (k + 1);
      const float xi = xt[i * B + bi];
      int64_t first = 0;
      float s = 0.0f;
      if (basis_at(g, n_knots, k, xi, &first, cb, inv)) {
        for (int64_t t = 0; t <= k; ++t) {
          const int64_t m = first + t;
          if (m < 0 || m >= M) {
            cb[t] = 0.0f;
            continue;
          }
          s += cb[t];
          if (m < m_lo) m_lo = m;
          if (m > m_hi) m_hi = m;
        }
      } else {
        for (int64_t t = 0; t <= k; ++t) cb[t] = 0.0f;
        first = -(k + 1);  // marks "no spline term"
      }
      first_of[bi] = static_cast<int32_t>(first);
      s_sum[bi] = s;
      s_silu[bi] = L.base_weight.data ? base_act(L, xi) : 0.0f;
    }
    if (m_hi >= m_lo) {
      load_codes_gains_dispatch(L, i, q, gg);
      decode_rows(ct, L.K, q, gg, m_lo, m_hi, w, n_out);
    }
    if (L.edge_bias.data) load_scaled_row(L.edge_bias, L.edge_bias_scale, i, n_out, w_bias);
    if (L.base_weight.data) load_scaled_row(L.base_weight, L.base_scale, i, n_out, w_base);
    for (int64_t bi = 0; bi < B; ++bi) {
      const float* cb = coef + bi * (k + 1);
      const int64_t first = first_of[bi];
      int64_t n_terms = 0;
      for (int64_t t = 0; t <= k; ++t) {
        const int64_t m = first + t;
        if (m < 0 || m >= M || cb[t] == 0.0f) continue;
        terms_w[n_terms] = w + m * n_out;
        terms_c[n_terms++] = cb[t];
      }
      if (L.edge_bias.data && s_sum[bi] != 0.0f) {
        terms_w[n_terms] = w_bias;
        terms_c[n_terms++] = s_sum[bi];
      }
      if (L.base_weight.data) {
        terms_w[n_terms] = w_base;
        terms_c[n_terms++] = s_silu[bi];
      }
      axpy_many(y + bi * n_out, terms_w, terms_c, n_terms, n_out);
    }
  }
}

}  // namespace lutham
}  // namespace sharekan
