// Dense KAN baseline: one efficient-kan layer evaluated from its full (uncompressed)
// weights, engineered like the LUTHAM kernel so that LUTHAM's speed figures are measured
// against an equal opponent (issue 11). Runtime-neutral, header-only, no ExecuTorch types.
//
//   y[b,o] = sum_i sum_m spline_w[o,i,m] * scaler[o,i] * B_m(x[b,i])
//          + sum_i base_w[o,i] * silu(x[b,i])  (+ bias[o])
//
// B_m are efficient-kan's B-splines of order k on the layer's knots, computed with the same
// functions as LUTHAM (lutham/kernel/basis.h: basis_at_uniform on uniform knot rows, else
// basis_at with knot reciprocals; only the k+1 non-zero values of each input; all zero
// outside [grid[0], grid[-1]) or for NaN).
//
// Weight layout: input-major rows, the base row next to the spline rows,
//
//   w[i][r][o]   r = 0: base_w[o,i] (the SiLU branch); r = 1..M: spline_w[o,i,r-1] * scaler[o,i]
//
// (the scaler folded at pack time), each row ld = n_out rounded up to 8 floats (zeros in the
// padding). The spline window of an input starts at its span's first basis index clamped into
// [0, M-k-1] (the k+1 coefficients shifted into the window, zeros where efficient-kan's
// recursion has no basis function), so every (batch row, input) reads row 0 and the k+1
// contiguous rows 1+start..1+start+k of the input's block, never a row outside it: at batch 1
// that is k+2 contiguous-ish row runs per input, one sequential stream through the weights.
//
// Evaluation: batch tiles of kTileRows rows; per tile the basis values of every (row, input)
// are computed once (parallel over inputs). The output columns are cut into blocks of
// kBlockCols = 32 (the last one padded to a multiple of 8); threads take contiguous ranges of
// blocks. A thread walks the inputs in groups of kInputGroup and, per group, its blocks; for
// each (group, block) a register-blocked micro-kernel runs chunks of R batch rows:
// R x (width / 8) accumulators of 8 floats stay in registers across the group's inputs (the
// base row's loads shared by the chunk's rows), and are kept between groups in an L1/L2
// buffer (tile rows x the thread's columns). Small tiles (< kPackRows rows) read the weight
// rows in place, prefetching kPrefetchInputs inputs ahead (the rows a small batch touches are
// a sparse pattern the hardware prefetchers miss); larger tiles first copy the group's
// (kInputGroup x (M+1) x 32) block into a contiguous L1 buffer, as a GEMM packs its B panel
// (input-major rows of 32 columns at a stride of n_out floats would alias in L1), so every
// row of the tile reads it from L1.
//
// Two weight formats: float32, and int8 with one scale per output column (every weight of
// output o, spline and base, quantised with scale[o]); int8 weights are converted to float
// in registers (small tiles) or into the packed L1 buffer (larger tiles); the column scale
// multiplies the finished sum. Both give identical results (int8 -> float is exact).
//
// Threads: `const lutham::Parallel&` (lutham/kernel/common.h). Each output element is
// produced by one unit (a block of one tile), with the same operations in the same order
// whatever the split: base row, then the k+1 window rows, input by input in ascending order.
// Results are bit-identical for any thread count (and any batch size).
//
// The micro-kernel, the window basis and the vector loads are lutham/kernel/panel.h, the
// same code LUTHAM's decoded tiles run on their decoded panels: the two differ only in
// where the weights come from (memory here, codebook decoding there). SIMD: GCC vector
// extensions (8 floats), functions cloned for x86-64-v3 (AVX2/FMA) and the default target,
// picked at load time, as lutham/kernel/simd.h does (no -march=native).

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../kernel/basis.h"
#include "../kernel/common.h"
#include "../kernel/panel.h"

// The kernel's clone attribute (x86-64-v3 + default, picked at load time).
#define DENSE_KAN_HOT LUTHAM_HOT

namespace sharekan {
namespace dense_kan {

using lutham::Parallel;

// basis.h's dense_basis (RBF / Chebyshev) is not used here; referenced so that including
// basis.h does not warn about an unused static function.
[[maybe_unused]] static void (*const kUnusedDenseBasis)(const lutham::Layer&, int64_t, float,
                                                        float*) = &lutham::dense_basis;

/// Columns per block: the unit of the thread split (results do not depend on it).
constexpr int64_t kBlockCols = lutham::panel::kBlockCols;
/// Rows per batch tile (bounds the basis scratch: kTileRows x n_in x (k + 3) words).
constexpr int64_t kTileRows = 64;
/// Inputs per group (the panel micro-kernel's; the accumulators are spilled once per group).
constexpr int64_t kInputGroup = lutham::panel::kInputGroup;
/// From this many rows in a tile, each (input group, block) is packed into a contiguous L1
/// buffer (int8: dequantised) before the micro-kernel; below, the weights are read in place,
/// prefetched panel::kPrefetchInputs inputs ahead.
constexpr int64_t kPackRows = 12;
/// Largest spline order (the basis values live in fixed-size arrays), as LUTHAM's.
constexpr int64_t kMaxSplineOrder = lutham::kMaxSplineOrder;

enum class WeightType { kF32, kI8 };

/// One packed layer (owns its arrays). Build with pack_f32 / pack_i8.
struct DenseLayer {
  int64_t n_in = 0, n_out = 0, M = 0, k = 0, n_knots = 0;
  WeightType wtype = WeightType::kF32;
  std::vector<float> grid;          // (grid_rows, n_knots)
  bool shared_grid = true;          // one knot row for every input
  std::vector<float> inv;           // (grid_rows, k, n_knots) knot reciprocals
  std::vector<float> inv_h;         // (grid_rows,) 1 / spacing of a uniform row, else 0
  std::vector<int64_t> block_col;   // first column of each block, n_blocks + 1 entries
  int64_t ld = 0;                   // row length of w: n_out rounded up to 8
  std::vector<float> w_f32;         // (n_in, M + 1, ld) (float32 layers)
  std::vector<int8_t> w_i8;         // (n_in, M + 1, ld) (int8 layers)
  std::vector<float> col_scale;     // (n_out,) int8 column scales (empty for float32)
  std::vector<float> bias;          // (n_out,) or empty

  int64_t n_blocks() const { return static_cast<int64_t>(block_col.size()) - 1; }
  /// Padded width of block cb (multiple of 8, at most kBlockCols).
  int64_t width(int64_t cb) const {
    const int64_t n = block_col[cb + 1] - block_col[cb];
    return (n + 7) / 8 * 8;
  }
  /// Bytes of the packed weights (padding included) and scales / bias.
  int64_t weight_bytes() const {
    return static_cast<int64_t>(w_f32.size() * 4 + w_i8.size() + col_scale.size() * 4 +
                                bias.size() * 4);
  }
};

/// Error text of a pack_* call, empty when it succeeded.
using PackError = std::string;

namespace detail {

inline PackError check_shape(int64_t n_in, int64_t n_out, int64_t M, int64_t k,
                             int64_t grid_rows) {
  char buf[256];
  if (n_in < 1 || n_out < 1 || n_in > (int64_t{1} << 24) || n_out > (int64_t{1} << 24)) {
    std::snprintf(buf, sizeof buf, "n_in = %lld, n_out = %lld: each must be in [1, 2^24]",
                  static_cast<long long>(n_in), static_cast<long long>(n_out));
    return buf;
  }
  if (k < 0 || k > kMaxSplineOrder || M < k + 1 || M > 4096) {
    std::snprintf(buf, sizeof buf, "k = %lld, M = %lld: need 0 <= k <= 15 and k + 1 <= M <= 4096",
                  static_cast<long long>(k), static_cast<long long>(M));
    return buf;
  }
  if (grid_rows != 1 && grid_rows != n_in) {
    std::snprintf(buf, sizeof buf, "grid has %lld rows, expected 1 or n_in = %lld",
                  static_cast<long long>(grid_rows), static_cast<long long>(n_in));
    return buf;
  }
  return {};
}

/// Layout and grid of a layer (everything but the weight values).
inline PackError layout(DenseLayer* L, int64_t n_in, int64_t n_out, int64_t M, int64_t k,
                        const float* grid, int64_t grid_rows) {
  PackError err = check_shape(n_in, n_out, M, k, grid_rows);
  if (!err.empty()) return err;
  L->n_in = n_in;
  L->n_out = n_out;
  L->M = M;
  L->k = k;
  L->n_knots = M + k + 1;
  L->shared_grid = grid_rows == 1;
  L->grid.assign(grid, grid + grid_rows * L->n_knots);
  for (int64_t r = 0; r < grid_rows; ++r) {
    const float* g = grid + r * L->n_knots;
    for (int64_t a = 0; a + 1 < L->n_knots; ++a) {
      if (!(g[a] < g[a + 1])) return "grid rows must be finite and strictly increasing";
    }
  }
  L->inv.assign(static_cast<size_t>(grid_rows * std::max<int64_t>(k, 1) * L->n_knots), 0.0f);
  L->inv_h.assign(static_cast<size_t>(grid_rows), 0.0f);
  for (int64_t r = 0; r < grid_rows; ++r) {
    lutham::knot_reciprocals(L->grid.data() + r * L->n_knots, L->n_knots, k,
                             L->inv.data() + r * std::max<int64_t>(k, 1) * L->n_knots);
    L->inv_h[r] = lutham::uniform_inv_spacing(L->grid.data() + r * L->n_knots, L->n_knots);
  }
  L->block_col.clear();
  for (int64_t c = 0; c < n_out; c += kBlockCols) L->block_col.push_back(c);
  L->block_col.push_back(n_out);
  L->ld = (n_out + 7) / 8 * 8;
  return {};
}

/// Writes the per-edge weights into w[i][r][o]: value(o, i, r) for r in 0..M (0 = base).
template <typename T, typename F>
inline void fill_rows(const DenseLayer& L, std::vector<T>* w, F&& value) {
  w->assign(static_cast<size_t>(L.n_in * (L.M + 1) * L.ld), T(0));
  for (int64_t i = 0; i < L.n_in; ++i) {
    for (int64_t r = 0; r <= L.M; ++r) {
      T* row = w->data() + (i * (L.M + 1) + r) * L.ld;
      for (int64_t o = 0; o < L.n_out; ++o) row[o] = value(o, i, r);
    }
  }
}

}  // namespace detail

/// Packs a float32 layer. spline_w (n_out, n_in, M), scaler (n_out, n_in) or nullptr (ones),
/// base_w (n_out, n_in), bias (n_out,) or nullptr, grid (grid_rows = 1 or n_in, M + k + 1).
/// Returns an error text (empty on success).
inline PackError pack_f32(DenseLayer* L, int64_t n_in, int64_t n_out, int64_t M, int64_t k,
                          const float* grid, int64_t grid_rows, const float* spline_w,
                          const float* scaler, const float* base_w, const float* bias) {
  PackError err = detail::layout(L, n_in, n_out, M, k, grid, grid_rows);
  if (!err.empty()) return err;
  L->wtype = WeightType::kF32;
  L->w_i8.clear();
  L->col_scale.clear();
  detail::fill_rows(*L, &L->w_f32, [&](int64_t o, int64_t i, int64_t r) -> float {
    if (r == 0) return base_w[o * n_in + i];
    const float s = scaler ? scaler[o * n_in + i] : 1.0f;
    return spline_w[(o * n_in + i) * M + (r - 1)] * s;
  });
  if (bias) L->bias.assign(bias, bias + n_out); else L->bias.clear();
  return {};
}

/// Packs an int8 layer: spline_q (n_out, n_in, M) and base_q (n_out, n_in) int8 with one
/// float scale per output column (weight = q * scale[o]), bias (n_out,) or nullptr.
inline PackError pack_i8(DenseLayer* L, int64_t n_in, int64_t n_out, int64_t M, int64_t k,
                         const float* grid, int64_t grid_rows, const int8_t* spline_q,
                         const int8_t* base_q, const float* scale, const float* bias) {
  PackError err = detail::layout(L, n_in, n_out, M, k, grid, grid_rows);
  if (!err.empty()) return err;
  L->wtype = WeightType::kI8;
  L->w_f32.clear();
  detail::fill_rows(*L, &L->w_i8, [&](int64_t o, int64_t i, int64_t r) -> int8_t {
    return r == 0 ? base_q[o * n_in + i] : spline_q[(o * n_in + i) * M + (r - 1)];
  });
  L->col_scale.assign(scale, scale + n_out);
  if (bias) L->bias.assign(bias, bias + n_out); else L->bias.clear();
  return {};
}

// ---------------------------------------------------------------------------------------
// Hot loops.

namespace detail {

/// dst[j][0..W) = float(src[j * ld .. + W)) for n_rows rows (W a multiple of 8): one
/// (input group, block) of weights packed contiguously (int8 converted exactly). The same
/// rows of the next group (`next`, or nullptr) are prefetched: rows n_out values apart are
/// a pattern the hardware prefetchers follow poorly, and the copy would wait on L3 / DRAM.
template <typename T>
DENSE_KAN_HOT __attribute__((optimize("no-tree-loop-distribute-patterns"))) static void
pack_block(const T* __restrict src, const T* next, int64_t ld,
                                     int64_t n_rows, int64_t W, float* __restrict dst) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t j = 0; j < n_rows; ++j) {
    if (next) {
      for (int64_t e = 0; e < W; e += kLine) __builtin_prefetch(next + j * ld + e);
    }
    for (int64_t e = 0; e < W; e += 8)
      LUTHAM_PANEL_STORE8(dst + j * W + e, LUTHAM_PANEL_LOAD8(T, src + j * ld + e));
  }
}

/// Basis of one input for `nb` rows: first[b] (window start, clamped to [0, M-k-1]) and
/// coef[b][0..k] (the window's spline coefficients) + coef[b][k+1] = silu(x), by the panel's
/// window_basis (LUTHAM's decoded tiles use the same).
static void input_basis(const DenseLayer& L, int64_t i, const float* x, int64_t x_stride,
                        int64_t nb, int32_t* first, float* coef) {
  const int64_t row = L.shared_grid ? 0 : i;
  lutham::panel::window_basis(L.grid.data() + row * L.n_knots, L.n_knots, L.M, L.k,
                              L.k > 0 ? L.inv.data() + row * L.k * L.n_knots : nullptr,
                              L.inv_h[row], x + i, x_stride, nb, true,
                              [](float v) { return lutham::silu(v); }, first, coef);
}

}  // namespace detail

/// Reusable scratch of forward() (the basis of one tile), so repeated calls allocate nothing.
struct Workspace {
  std::vector<int32_t> first;
  std::vector<float> coef;
};

/// y (B, n_out) = the layer applied to x (B, n_in); both C-contiguous float32.
inline void forward(const DenseLayer& L, const float* x, int64_t B, float* y, const Parallel& par,
                    Workspace* ws = nullptr) {
  if (B <= 0) return;
  Workspace local;
  Workspace& w = ws ? *ws : local;
  const int64_t tile = std::min(B, kTileRows);
  const int64_t cstride = L.k + 2;
  const size_t n_first = static_cast<size_t>(L.n_in * tile);
  if (w.first.size() < n_first) w.first.resize(n_first);
  if (w.coef.size() < n_first * cstride) w.coef.resize(n_first * cstride);
  int32_t* first = w.first.data();
  float* coef = w.coef.data();
  const int64_t in_rows = L.M + 1;
  const int64_t in_stride = in_rows * L.ld;
  for (int64_t b0 = 0; b0 < B; b0 += tile) {
    const int64_t nb = std::min(tile, B - b0);
    const float* xt = x + b0 * L.n_in;
    // basis of every (input, row) of the tile: first[i * tile + b], coef[(i * tile + b) * (k+2) + t]
    par.for_range(L.n_in, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        detail::input_basis(L, i, xt, L.n_in, nb, first + i * tile, coef + i * tile * cstride);
      }
    });
    par.for_range(L.n_blocks(), [&](int64_t c0, int64_t c1) {
      const int64_t col0 = L.block_col[c0];
      const int64_t acc_stride = (L.block_col[c1] - col0 + 7) / 8 * 8;  // the range, padded
      std::vector<float> acc(static_cast<size_t>(nb * acc_stride), 0.0f);
      std::vector<float> packed;  // one (input group, block) of weights, contiguous
      if (nb >= kPackRows) packed.resize(static_cast<size_t>(kInputGroup * in_rows * kBlockCols));
      for (int64_t g0 = 0; g0 < L.n_in; g0 += kInputGroup) {
        const int64_t ng = std::min(kInputGroup, L.n_in - g0);
        const int32_t* fg = first + g0 * tile;
        const float* cg = coef + g0 * tile * cstride;
        for (int64_t cb = c0; cb < c1; ++cb) {
          const int64_t wd = L.width(cb);
          const int64_t col = L.block_col[cb];
          float* acc_b = acc.data() + (col - col0);
          const int64_t off = g0 * in_stride + col;
          if (nb >= kPackRows) {
            if (L.wtype == WeightType::kF32) {
              const float* w = L.w_f32.data();
              detail::pack_block(w + off, g0 + ng < L.n_in ? w + off + ng * in_stride : nullptr,
                                 L.ld, ng * in_rows, wd, packed.data());
            } else {
              const int8_t* w = L.w_i8.data();
              detail::pack_block(w + off, g0 + ng < L.n_in ? w + off + ng * in_stride : nullptr,
                                 L.ld, ng * in_rows, wd, packed.data());
            }
            lutham::panel::group_rows_dispatch<false, float>(wd / 8, L.k, packed.data(), wd, in_rows * wd, ng,
                                               ng, fg, cg, tile, nb, acc_b, acc_stride);
          } else if (L.wtype == WeightType::kF32) {
            lutham::panel::group_rows_dispatch<true, float>(wd / 8, L.k, L.w_f32.data() + off, L.ld, in_stride,
                                               ng, L.n_in - g0, fg, cg, tile, nb, acc_b,
                                               acc_stride);
          } else {
            lutham::panel::group_rows_dispatch<true, int8_t>(wd / 8, L.k, L.w_i8.data() + off, L.ld,
                                                in_stride, ng, L.n_in - g0, fg, cg, tile, nb,
                                                acc_b, acc_stride);
          }
        }
      }
      const bool has_bias = !L.bias.empty();
      const int64_t col1 = L.block_col[c1];
      for (int64_t b = 0; b < nb; ++b) {
        float* yr = y + (b0 + b) * L.n_out;
        const float* ar = acc.data() + b * acc_stride - col0;
        if (L.wtype == WeightType::kI8) {
          for (int64_t o = col0; o < col1; ++o)
            yr[o] = ar[o] * L.col_scale[o] + (has_bias ? L.bias[o] : 0.0f);
        } else {
          for (int64_t o = col0; o < col1; ++o) yr[o] = ar[o] + (has_bias ? L.bias[o] : 0.0f);
        }
      }
    });
  }
}

}  // namespace dense_kan
}  // namespace sharekan
