// LUTHAM kernel: the decoded-tile strategy (B-splines, batches of decode_min_batch rows or
// more, in tiles of kDecodeTile rows).
//
// Two phases per tile. Basis (parallel over inputs): the k+1 basis values, span, their sum
// and the base activation of every (input, row), stored input-major. Accumulate (parallel
// over column ranges, and row parts when there are fewer ranges than threads): per input,
// decode the spline rows the tile touches plus the bias and base rows of the unit's columns
// (scales folded in) into a buffer that stays in L1, then add the k+1 spline terms and the
// bias and base terms to each row's outputs. This uses only the k+1 non-zero basis values
// per input, so it does about (k+3)/(M+1) of a dense layer's multiply-adds, and decodes each
// weight once per tile.

#pragma once

#include <algorithm>
#include <cstdint>

#include "basis.h"
#include "common.h"
#include "simd.h"

namespace sharekan {
namespace lutham {

/// `first` of an (input, row) whose x is outside the grid (no spline term).
constexpr int32_t kNoSpan = INT32_MIN;

/// Phase-1 results for one tile of nb rows, input-major: entry (i, b) at i * nb + b.
struct TileBasis {
  int32_t* first;  // (n_in, nb) span - k, or kNoSpan
  float* coef;     // (n_in, nb, k+1) basis values, zero at indices outside [0, M)
  float* s_sum;    // (n_in, nb) sum of the valid basis values (edge-bias factor)
  float* s_act;    // (n_in, nb) base activation
  float* xt;       // (n_in, nb) x transposed
};

static TileBasis tile_basis_scratch(Scratch& mem, const Layer& L, int64_t tile) {
  TileBasis t;
  t.first = mem.get<int32_t>(L.n_in, tile);
  t.coef = mem.get<float>(L.n_in * tile, L.k + 1);  // validated: n_in * tile fits int64
  t.s_sum = mem.get<float>(L.n_in, tile);
  t.s_act = mem.get<float>(L.n_in, tile);
  t.xt = mem.get<float>(L.n_in, tile);
  return t;
}

/// Basis phase for inputs [i0, i1) of a tile (x: nb rows, already transposed into tb.xt).
/// inv: scratch of k * (M + k + 1) floats for the knot reciprocals of this call.
static void tile_basis_inputs(const Layer& L, int64_t nb, int64_t i0, int64_t i1,
                              const TileBasis& tb, float* inv) {
  const int64_t M = L.M, k = L.k, n_knots = M + k + 1;
  float inv_h = 0.0f;
  for (int64_t i = i0; i < i1; ++i) {
    const float* g = grid_row(L, i);
    if (i == i0 || !L.shared_grid) {
      knot_reciprocals(g, n_knots, k, inv);
      inv_h = uniform_inv_spacing(g, n_knots);
    }
    for (int64_t bi = 0; bi < nb; ++bi) {
      const int64_t e = i * nb + bi;
      float* cb = tb.coef + e * (k + 1);
      const float xi = tb.xt[e];
      int64_t first = 0;
      float s = 0.0f;
      if (basis_of(L, g, inv_h, xi, &first, cb, inv)) {
        for (int64_t t = 0; t <= k; ++t) {
          const int64_t m = first + t;
          if (m < 0 || m >= M) {
            cb[t] = 0.0f;
            continue;
          }
          s += cb[t];
        }
        tb.first[e] = static_cast<int32_t>(first);
      } else {
        tb.first[e] = kNoSpan;
      }
      tb.s_sum[e] = s;
      tb.s_act[e] = L.base_weight.data ? base_act(L, xi) : 0.0f;
    }
  }
}

/// Scratch of one accumulate unit (width = its number of columns).
struct DecodedScratch {
  float* w;       // (M + 2, width): decoded spline rows, then the bias and base rows
  float* gg;      // (width,) gain_scale * gains row
  int32_t* q;     // (width,) codes row
};

template <typename CodeT, typename GainT>
static void load_codes_gains(const Layer& L, int64_t i, const Columns& cols, int32_t* q,
                             float* gg) {
  const int64_t off = i * L.n_out + cols.o0;
  const CodeT* codes = static_cast<const CodeT*>(L.codes) + off;
  const GainT* gains = static_cast<const GainT*>(L.gains.data) + off;
  for (int64_t c = 0; c < cols.n; ++c) {
    q[c] = static_cast<int32_t>(codes[c]);
    gg[c] = as_float(gains[c]) * scale_or_one(L.gain_scale, cols.o0 + c);
  }
}

static void load_codes_gains_dispatch(const Layer& L, int64_t i, const Columns& cols,
                                      int32_t* q, float* gg) {
  with_code_gain_types(L, [&](auto code, auto gain) {
    load_codes_gains<typename decltype(code)::type, typename decltype(gain)::type>(L, i, cols, q,
                                                                                 gg);
  });
}

/// Scaled per-edge row: out[c] = scale[o0 + c] * e[i, o0 + c].
static void load_scaled_row(const EdgeTensor& e, const float* scale, int64_t i, int64_t n_out,
                            const Columns& cols, float* out) {
  const int64_t off = i * n_out + cols.o0;
  if (e.is_i8) {
    const int8_t* v = static_cast<const int8_t*>(e.data) + off;
    for (int64_t c = 0; c < cols.n; ++c) out[c] = scale_or_one(scale, cols.o0 + c) * v[c];
  } else {
    const float* v = static_cast<const float*>(e.data) + off;
    for (int64_t c = 0; c < cols.n; ++c) out[c] = scale_or_one(scale, cols.o0 + c) * v[c];
  }
}

/// Accumulate phase of one unit: columns `cols`, tile rows [r0, r1) of nb; y is the tile's
/// (nb, n_out) output, overwritten in the unit's block.
static void accumulate_unit(const Layer& L, const float* ct, const TileBasis& tb, int64_t nb,
                            int64_t r0, int64_t r1, const Columns& cols, float* y,
                            const DecodedScratch& d) {
  const int64_t n_out = L.n_out, M = L.M, k = L.k, width = cols.n;
  for (int64_t bi = r0; bi < r1; ++bi) {
    float* yb = y + bi * n_out + cols.o0;
    for (int64_t c = 0; c < width; ++c) yb[c] = L.out_bias ? L.out_bias[cols.o0 + c] : 0.0f;
  }
  float* w = d.w;
  const float* terms_w[kMaxSplineOrder + 3];
  float terms_c[kMaxSplineOrder + 3];
  for (int64_t i = 0; i < L.n_in; ++i) {
    int64_t m_lo = M, m_hi = -1;
    for (int64_t bi = r0; bi < r1; ++bi) {
      const int32_t f = tb.first[i * nb + bi];
      if (f == kNoSpan) continue;
      m_lo = std::min<int64_t>(m_lo, std::max<int64_t>(f, 0));
      m_hi = std::max<int64_t>(m_hi, std::min<int64_t>(f + k, M - 1));
    }
    if (m_hi >= m_lo) {
      load_codes_gains_dispatch(L, i, cols, d.q, d.gg);
      decode_rows(ct, L.K, d.q, d.gg, m_lo, m_hi, w, width);
    }
    if (L.edge_bias.data)
      load_scaled_row(L.edge_bias, L.edge_bias_scale, i, n_out, cols, w + M * width);
    if (L.base_weight.data)
      load_scaled_row(L.base_weight, L.base_scale, i, n_out, cols, w + (M + 1) * width);
    for (int64_t bi = r0; bi < r1; ++bi) {
      const int64_t e = i * nb + bi;
      const int32_t first = tb.first[e];
      int64_t n_terms = 0;
      if (first != kNoSpan) {
        const float* cb = tb.coef + e * (k + 1);
        for (int64_t t = 0; t <= k; ++t) {
          const int64_t m = first + t;
          if (m < 0 || m >= M || cb[t] == 0.0f) continue;
          terms_w[n_terms] = w + m * width;
          terms_c[n_terms++] = cb[t];
        }
      }
      if (L.edge_bias.data && tb.s_sum[e] != 0.0f) {
        terms_w[n_terms] = w + M * width;
        terms_c[n_terms++] = tb.s_sum[e];
      }
      if (L.base_weight.data) {
        terms_w[n_terms] = w + (M + 1) * width;
        terms_c[n_terms++] = tb.s_act[e];
      }
      accumulate_terms(y + bi * n_out + cols.o0, terms_w, terms_c, n_terms, width);
    }
  }
}

}  // namespace lutham
}  // namespace sharekan
