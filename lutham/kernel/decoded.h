// LUTHAM kernel: the decoded-tile strategy (B-splines, batches of decode_min_batch rows or
// more, in tiles of kDecodeTile rows).
//
// Two phases per tile. Basis (parallel over inputs): the window start and the k+1 window
// coefficients plus the base activation of every (input, row) (panel::window_basis), stored
// input-major. Accumulate (parallel over column ranges, and row parts when there are fewer
// ranges than threads): per group of panel::kInputGroup inputs and block of 32 columns,
// decode the base row and the spline rows the tile's windows touch into an L1 panel
// (w[1+m][o] = gain_scale[o] gains[i,o] C[codes[i,o], m] + edge_bias_scale[o] edge_bias[i,o],
// w[0][o] = base_scale[o] base_weight[i,o]), then run the panel micro-kernel the dense
// baseline runs on its packed weights: (k+2) multiply-adds per edge and row, outputs in
// registers across the group. The edge bias rides in the decoded rows because the window
// coefficients sum to S_i (the sum of the valid basis values); each weight is decoded once
// per tile.

#pragma once

#include <algorithm>
#include <cstdint>

#include "basis.h"
#include "common.h"
#include "panel.h"
#include "simd.h"

namespace sharekan {
namespace lutham {

/// Basis-phase results for one tile, input-major: entry (i, b) at i * tile + b.
struct TileBasis {
  int32_t* first;  // (n_in, tile) window start in [0, M-k-1]
  float* coef;     // (n_in, tile, k+2) window coefficients, then the base activation
};

static TileBasis tile_basis_scratch(Scratch& mem, const Layer& L, int64_t tile) {
  TileBasis t;
  t.first = mem.get<int32_t>(L.n_in, tile);
  t.coef = mem.get<float>(L.n_in * tile, L.k + 2);  // validated: n_in * tile fits int64
  return t;
}

/// Basis phase for inputs [i0, i1) of a tile of nb rows of x (row stride n_in).
/// inv: scratch of k * (M + k + 1) floats for the knot reciprocals of this range.
static void tile_basis_inputs(const Layer& L, const float* x, int64_t nb, int64_t tile,
                              int64_t i0, int64_t i1, const TileBasis& tb, float* inv) {
  const int64_t n_knots = L.M + L.k + 1;
  float inv_h = 0.0f;
  const bool with_act = L.base_weight.data != nullptr;
  for (int64_t i = i0; i < i1; ++i) {
    const float* g = grid_row(L, i);
    if (i == i0 || !L.shared_grid) {
      knot_reciprocals(g, n_knots, L.k, inv);
      inv_h = uniform_inv_spacing(g, n_knots);
    }
    panel::window_basis(g, n_knots, L.M, L.k, inv, inv_h, x + i, L.n_in, nb, with_act,
                        [&](float v) { return base_act(L, v); }, tb.first + i * tile,
                        tb.coef + i * tile * (L.k + 2));
  }
}

/// Panel rows from codebook rows, eight columns at a time: for o < W (a multiple of 8) and m
/// in [m_lo, m_hi], w[m * W + o] = gg[o] * cbp[q[o] * Mp + m] + eb[o]. cbp: the codebook
/// with rows padded to Mp floats (a multiple of 8, zeros beyond M). Each group of 8 columns
/// loads 8 codebook rows (contiguous) and transposes them 8 x 8 in registers, instead of
/// one table read per decoded weight: about 3x faster than decode_rows when most rows of
/// the window range are needed.
LUTHAM_HOT static void decode_rows_transposed(const float* __restrict cbp, int64_t Mp,
                                              const int32_t* __restrict q,
                                              const float* __restrict gg,
                                              const float* __restrict eb, int64_t m_lo,
                                              int64_t m_hi, float* __restrict w, int64_t W) {
  typedef int32_t v8m __attribute__((vector_size(32)));
  for (int64_t o = 0; o < W; o += 8) {
    const panel::v8f g = *reinterpret_cast<const panel::v8f_u*>(gg + o);
    const panel::v8f e = *reinterpret_cast<const panel::v8f_u*>(eb + o);
    for (int64_t mb = m_lo - m_lo % 8; mb <= m_hi; mb += 8) {
      panel::v8f r[8];
      for (int j = 0; j < 8; ++j)
        r[j] = *reinterpret_cast<const panel::v8f_u*>(cbp + static_cast<int64_t>(q[o + j]) * Mp + mb);
      // 8 x 8 transpose: t[m][j] = r[j][m]
      const panel::v8f a0 = __builtin_shuffle(r[0], r[1], (v8m){0, 8, 1, 9, 4, 12, 5, 13});
      const panel::v8f a1 = __builtin_shuffle(r[0], r[1], (v8m){2, 10, 3, 11, 6, 14, 7, 15});
      const panel::v8f a2 = __builtin_shuffle(r[2], r[3], (v8m){0, 8, 1, 9, 4, 12, 5, 13});
      const panel::v8f a3 = __builtin_shuffle(r[2], r[3], (v8m){2, 10, 3, 11, 6, 14, 7, 15});
      const panel::v8f a4 = __builtin_shuffle(r[4], r[5], (v8m){0, 8, 1, 9, 4, 12, 5, 13});
      const panel::v8f a5 = __builtin_shuffle(r[4], r[5], (v8m){2, 10, 3, 11, 6, 14, 7, 15});
      const panel::v8f a6 = __builtin_shuffle(r[6], r[7], (v8m){0, 8, 1, 9, 4, 12, 5, 13});
      const panel::v8f a7 = __builtin_shuffle(r[6], r[7], (v8m){2, 10, 3, 11, 6, 14, 7, 15});
      const panel::v8f b0 = __builtin_shuffle(a0, a2, (v8m){0, 1, 8, 9, 4, 5, 12, 13});
      const panel::v8f b1 = __builtin_shuffle(a0, a2, (v8m){2, 3, 10, 11, 6, 7, 14, 15});
      const panel::v8f b2 = __builtin_shuffle(a1, a3, (v8m){0, 1, 8, 9, 4, 5, 12, 13});
      const panel::v8f b3 = __builtin_shuffle(a1, a3, (v8m){2, 3, 10, 11, 6, 7, 14, 15});
      const panel::v8f b4 = __builtin_shuffle(a4, a6, (v8m){0, 1, 8, 9, 4, 5, 12, 13});
      const panel::v8f b5 = __builtin_shuffle(a4, a6, (v8m){2, 3, 10, 11, 6, 7, 14, 15});
      const panel::v8f b6 = __builtin_shuffle(a5, a7, (v8m){0, 1, 8, 9, 4, 5, 12, 13});
      const panel::v8f b7 = __builtin_shuffle(a5, a7, (v8m){2, 3, 10, 11, 6, 7, 14, 15});
      panel::v8f t[8];
      t[0] = __builtin_shuffle(b0, b4, (v8m){0, 1, 2, 3, 8, 9, 10, 11});
      t[1] = __builtin_shuffle(b1, b5, (v8m){0, 1, 2, 3, 8, 9, 10, 11});
      t[2] = __builtin_shuffle(b2, b6, (v8m){0, 1, 2, 3, 8, 9, 10, 11});
      t[3] = __builtin_shuffle(b3, b7, (v8m){0, 1, 2, 3, 8, 9, 10, 11});
      t[4] = __builtin_shuffle(b0, b4, (v8m){4, 5, 6, 7, 12, 13, 14, 15});
      t[5] = __builtin_shuffle(b1, b5, (v8m){4, 5, 6, 7, 12, 13, 14, 15});
      t[6] = __builtin_shuffle(b2, b6, (v8m){4, 5, 6, 7, 12, 13, 14, 15});
      t[7] = __builtin_shuffle(b3, b7, (v8m){4, 5, 6, 7, 12, 13, 14, 15});
      const int64_t lo = std::max(mb, m_lo), hi = std::min(mb + 7, m_hi);
      for (int64_t m = lo; m <= hi; ++m)
        LUTHAM_PANEL_STORE8(w + m * W + o, g * t[m - mb] + e);
    }
  }
}

/// Scratch of one accumulate unit.
struct DecodedScratch {
  float* panel;  // (kInputGroup, M + 1, kBlockCols) decoded base and spline rows
  float* acc;    // (tile, width rounded up to 8) the unit's sums
  float* gg;     // (kBlockCols,) gain_scale * gains row
  float* eb;     // (kBlockCols,) edge_bias_scale * edge_bias row (zeros when absent)
  int32_t* q;    // (kBlockCols,) codes row
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

/// Scaled per-edge row: out[c] = scale[o0 + c] * e[i, o0 + c], zeros when e is absent.
static void load_scaled_row(const EdgeTensor& e, const float* scale, int64_t i, int64_t n_out,
                            const Columns& cols, float* out) {
  const int64_t off = i * n_out + cols.o0;
  if (e.data == nullptr) {
    for (int64_t c = 0; c < cols.n; ++c) out[c] = 0.0f;
  } else if (e.is_i8) {
    const int8_t* v = static_cast<const int8_t*>(e.data) + off;
    for (int64_t c = 0; c < cols.n; ++c) out[c] = scale_or_one(scale, cols.o0 + c) * v[c];
  } else {
    const float* v = static_cast<const float*>(e.data) + off;
    for (int64_t c = 0; c < cols.n; ++c) out[c] = scale_or_one(scale, cols.o0 + c) * v[c];
  }
}

/// Accumulate phase of one unit: columns `cols`, tile rows [r0, r1) of nb; y is the tile's
/// (nb, n_out) output, overwritten in the unit's block.
/// ct: the transposed codebook (table reads); cbp: the codebook with rows padded to Mp
/// floats for decode_rows_transposed, or nullptr (then table reads only).
static void accumulate_unit(const Layer& L, const float* ct, const float* cbp, int64_t Mp,
                            const TileBasis& tb, int64_t tile, int64_t r0, int64_t r1,
                            const Columns& cols, float* y, const DecodedScratch& d) {
  const int64_t n_out = L.n_out, M = L.M, k = L.k, rows = r1 - r0;
  const int64_t acc_stride = (cols.n + 7) / 8 * 8;
  for (int64_t e = 0; e < rows * acc_stride; ++e) d.acc[e] = 0.0f;
  for (int64_t g0 = 0; g0 < L.n_in; g0 += panel::kInputGroup) {
    const int64_t ng = std::min(panel::kInputGroup, L.n_in - g0);
    int64_t lo[panel::kInputGroup], hi[panel::kInputGroup];  // window starts of the rows
    for (int64_t ii = 0; ii < ng; ++ii) {
      const int32_t* f = tb.first + (g0 + ii) * tile;
      lo[ii] = f[r0];
      hi[ii] = f[r0];
      for (int64_t b = r0 + 1; b < r1; ++b) {
        lo[ii] = std::min<int64_t>(lo[ii], f[b]);
        hi[ii] = std::max<int64_t>(hi[ii], f[b]);
      }
    }
    for (int64_t c0 = 0; c0 < cols.n; c0 += panel::kBlockCols) {
      const Columns blk{cols.o0 + c0, std::min(panel::kBlockCols, cols.n - c0)};
      const int64_t W = (blk.n + 7) / 8 * 8;
      for (int64_t ii = 0; ii < ng; ++ii) {
        const int64_t i = g0 + ii;
        float* w = d.panel + ii * (M + 1) * W;
        load_scaled_row(L.base_weight, L.base_scale, i, n_out, blk, w);
        for (int64_t c = blk.n; c < W; ++c) w[c] = 0.0f;
        load_codes_gains_dispatch(L, i, blk, d.q, d.gg);
        load_scaled_row(L.edge_bias, L.edge_bias_scale, i, n_out, blk, d.eb);
        for (int64_t c = blk.n; c < W; ++c) {  // padding columns decode to zeros
          d.q[c] = 0;
          d.gg[c] = d.eb[c] = 0.0f;
        }
        if (cbp != nullptr && hi[ii] + k - lo[ii] + 1 >= kTransposedDecodeRows) {
          decode_rows_transposed(cbp, Mp, d.q, d.gg, d.eb, lo[ii], hi[ii] + k, w + W, W);
        } else {
          decode_rows(ct, L.K, d.q, d.gg, d.eb, lo[ii], hi[ii] + k, w + W, blk.n, W);
        }
      }
      panel::group_rows_dispatch<false, float>(
          W / 8, k, d.panel, W, (M + 1) * W, ng, ng, tb.first + g0 * tile + r0,
          tb.coef + (g0 * tile + r0) * (k + 2), tile, rows, d.acc + c0, acc_stride);
    }
  }
  for (int64_t b = 0; b < rows; ++b) {
    float* yb = y + (r0 + b) * n_out + cols.o0;
    const float* ab = d.acc + b * acc_stride;
    for (int64_t c = 0; c < cols.n; ++c)
      yb[c] = ab[c] + (L.out_bias ? L.out_bias[cols.o0 + c] : 0.0f);
  }
}

}  // namespace lutham
}  // namespace sharekan
