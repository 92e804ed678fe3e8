// Dense KAN baseline: one efficient-kan layer evaluated from its full (uncompressed)
// weights, engineered like the LUTHAM kernel so that LUTHAM's speed figures are measured
// against an equal opponent (issue 11). Runtime-neutral, header-only, no ExecuTorch types.
//
//   y[b,o] = sum_i sum_m spline_w[o,i,m] * scaler[o,i] * B_m(x[b,i])
//          + sum_i base_w[o,i] * silu(x[b,i])  (+ bias[o])
//
// B_m are efficient-kan's B-splines of order k on the layer's knots, computed with the same
// functions as LUTHAM (lutham/kernel/basis.h: basis_at with knot reciprocals; only the
// k+1 non-zero values of each input; all zero outside [grid[0], grid[-1]) or for NaN).
//
// Weight layout ("panels"): the output columns are cut into blocks of kBlockCols = 32
// columns (the last block padded to a multiple of 8); block cb stores, for each input i,
// M + 1 rows of its columns: row 0 = base_w (the SiLU branch), rows 1..M = spline_w *
// scaler (the scaler folded at pack time):
//
//   panel[cb][i][r][c]   (r in 0..M, c in 0..width(cb)), contiguous per block
//
// so a block's weights stream sequentially and an input's (M+1) x 32 block (1.8 KB for
// M = 13) stays in L1 while a batch tile uses it. The spline window of an input starts at
// its span's first basis index clamped into [0, M-k-1] (the k+1 coefficients shifted into
// the window, zeros where efficient-kan's recursion has no basis function), so every
// (row, input) reads the base row 0 and the k+1 contiguous rows 1+start..1+start+k of the
// input's block, never a row outside it.
//
// Evaluation: batch tiles of kTileRows rows; per tile the basis values of every (row, input)
// are computed once (parallel over inputs), then the column blocks are split over threads.
// Within a block, inputs are walked in groups of kInputGroup (their weight blocks fit L1)
// and rows in register-blocked chunks of R rows: R x (width / 8) accumulators of 8 floats
// stay in registers across the group, each weight row loaded once per row of the chunk.
//
// Two weight formats: float32, and int8 with one scale per output column (every weight of
// output o, spline and base, quantised with scale[o]); int8 weights are converted to float
// in registers (small batches) or, per input group, into an L1 buffer reused by every row
// of the tile (from kDequantRows rows); the column scale multiplies the finished sum. Both
// give identical results (the int8 -> float conversion is exact).
//
// Threads: `const lutham::Parallel&` (lutham/kernel/common.h). Each output element is
// produced by one unit (a column block of one tile), with the same operations in the same
// order whatever the split: results are bit-identical for any thread count (and any batch
// size).
//
// SIMD: GCC vector extensions (8 floats), functions cloned for x86-64-v3 (AVX2/FMA) and the
// default target, picked at load time, as lutham/kernel/simd.h does (no -march=native).

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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(LUTHAM_NO_MULTIVERSION) && \
    !defined(__clang__)
#define DENSE_KAN_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DENSE_KAN_HOT
#endif

namespace sharekan {
namespace dense_kan {

using lutham::Parallel;

/// Columns per block: the unit of the thread split (results do not depend on it).
constexpr int64_t kBlockCols = 32;
/// Rows per batch tile (bounds the basis scratch: kTileRows x n_in x (k + 3) words).
constexpr int64_t kTileRows = 64;
/// Inputs per group: 8 inputs x (M + 1) rows x 32 columns x 4 bytes = 57 KB at M = 13
/// (L1 + L2); the accumulators are spilled once per group.
constexpr int64_t kInputGroup = 8;
/// From this many rows in a tile, int8 weights are dequantised into an L1 buffer per input
/// group instead of in registers per row.
constexpr int64_t kDequantRows = 4;
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
  std::vector<int64_t> block_col;   // first column of each block, n_blocks + 1 entries
  std::vector<int64_t> block_off;   // element offset of each block's panel
  std::vector<float> w_f32;         // panels (float32 layers)
  std::vector<int8_t> w_i8;         // panels (int8 layers)
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
  for (int64_t r = 0; r < grid_rows; ++r) {
    lutham::knot_reciprocals(L->grid.data() + r * L->n_knots, L->n_knots, k,
                             L->inv.data() + r * std::max<int64_t>(k, 1) * L->n_knots);
  }
  L->block_col.clear();
  L->block_off.clear();
  int64_t off = 0;
  for (int64_t c = 0; c < n_out; c += kBlockCols) {
    L->block_col.push_back(c);
    L->block_off.push_back(off);
    const int64_t w = (std::min(kBlockCols, n_out - c) + 7) / 8 * 8;
    off += n_in * (M + 1) * w;
  }
  L->block_col.push_back(n_out);
  L->block_off.push_back(off);
  return {};
}

/// Scatters per-edge weights into the panels: value(o, i, r) for r in 0..M (0 = base).
template <typename T, typename F>
inline void fill_panels(const DenseLayer& L, std::vector<T>* panels, F&& value) {
  panels->assign(static_cast<size_t>(L.block_off.back()), T(0));
  for (int64_t cb = 0; cb < L.n_blocks(); ++cb) {
    const int64_t w = L.width(cb);
    T* p = panels->data() + L.block_off[cb];
    for (int64_t i = 0; i < L.n_in; ++i) {
      for (int64_t r = 0; r <= L.M; ++r) {
        for (int64_t o = L.block_col[cb]; o < L.block_col[cb + 1]; ++o) {
          p[(i * (L.M + 1) + r) * w + (o - L.block_col[cb])] = value(o, i, r);
        }
      }
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
  detail::fill_panels(*L, &L->w_f32, [&](int64_t o, int64_t i, int64_t r) -> float {
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
  detail::fill_panels(*L, &L->w_i8, [&](int64_t o, int64_t i, int64_t r) -> int8_t {
    return r == 0 ? base_q[o * n_in + i] : spline_q[(o * n_in + i) * M + (r - 1)];
  });
  L->col_scale.assign(scale, scale + n_out);
  if (bias) L->bias.assign(bias, bias + n_out); else L->bias.clear();
  return {};
}

// ---------------------------------------------------------------------------------------
// Hot loops.

namespace detail {

// The helpers below take and return 32-byte vectors; they are always inlined into the
// cloned functions, so the default target's ABI note does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v8f __attribute__((vector_size(32)));
typedef int8_t v8b __attribute__((vector_size(8)));

static inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
static inline v8f load8(const int8_t* p) {
  v8b q;
  std::memcpy(&q, p, sizeof q);
  return __builtin_convertvector(q, v8f);
}
static inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

#pragma GCC diagnostic pop

/// acc[r][0..8NV) += sum_t coef[r][t] * panel[i][first_r + 1 + t] + coef[r][KP1] * panel[i][0]
/// for rows r < R and inputs i of one group; acc is (R, 8 NV) floats (row stride
/// `acc_stride`). KP1 = k + 1 (0: runtime kp1). first/coef: per input `tile` rows apart.
template <int NV, int R, int KP1, typename T>
DENSE_KAN_HOT static void micro_kernel(const T* __restrict panel, int64_t in_stride,
                                       int64_t n_group, const int32_t* __restrict first,
                                       const float* __restrict coef, int64_t tile,
                                       int64_t kp1_rt, float* __restrict acc,
                                       int64_t acc_stride) {
  constexpr int64_t W = 8 * NV;
  const int64_t kp1 = KP1 > 0 ? KP1 : kp1_rt;
  const int64_t cstride = kp1 + 1;
  v8f a[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) a[r][v] = load8(acc + r * acc_stride + 8 * v);
  for (int64_t i = 0; i < n_group; ++i) {
    const T* __restrict blk = panel + i * in_stride;
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const float* __restrict c = coef + (i * tile + r) * cstride;
      const T* __restrict w = blk + (1 + first[i * tile + r]) * W;
      const float cb = c[kp1];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) a[r][v] += cb * load8(blk + 8 * v);
      if (KP1 > 0) {
#pragma GCC unroll 16
        for (int t = 0; t < KP1; ++t) {
          const float ct = c[t];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) a[r][v] += ct * load8(w + t * W + 8 * v);
        }
      } else {
        for (int64_t t = 0; t < kp1; ++t) {
          const float ct = c[t];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) a[r][v] += ct * load8(w + t * W + 8 * v);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store8(acc + r * acc_stride + 8 * v, a[r][v]);
}

/// dst[e] = float(src[e]) for e < n (n a multiple of 8): an int8 input group into L1.
DENSE_KAN_HOT static void dequant_group(const int8_t* __restrict src, float* __restrict dst,
                                        int64_t n) {
  for (int64_t e = 0; e < n; e += 8) store8(dst + e, load8(src + e));
}

/// Rows per register block for a block of NV vectors (R x NV accumulators + temporaries
/// within AVX2's 16 registers).
template <int NV>
constexpr int rows_per_block() {
  return NV >= 4 ? 3 : NV == 3 ? 4 : NV == 2 ? 6 : 8;
}

/// Runs the micro-kernel over `nb` rows (R at a time, then the remainder one by one; every
/// row sees the same operations whatever its chunk).
template <int NV, int KP1, typename T>
static void group_rows(const T* panel, int64_t in_stride, int64_t n_group, const int32_t* first,
                       const float* coef, int64_t tile, int64_t nb, int64_t kp1, float* acc) {
  constexpr int R = rows_per_block<NV>();
  constexpr int64_t W = 8 * NV;
  const int64_t cstride = kp1 + 1;
  int64_t b = 0;
  for (; b + R <= nb; b += R) {
    micro_kernel<NV, R, KP1, T>(panel, in_stride, n_group, first + b, coef + b * cstride, tile,
                                kp1, acc + b * W, W);
  }
  for (; b < nb; ++b) {
    micro_kernel<NV, 1, KP1, T>(panel, in_stride, n_group, first + b, coef + b * cstride, tile,
                                kp1, acc + b * W, W);
  }
}

template <int NV, typename T>
static void group_rows_k(int64_t k, const T* panel, int64_t in_stride, int64_t n_group,
                         const int32_t* first, const float* coef, int64_t tile, int64_t nb,
                         float* acc) {
  switch (k) {
    case 1: return group_rows<NV, 2, T>(panel, in_stride, n_group, first, coef, tile, nb, 2, acc);
    case 2: return group_rows<NV, 3, T>(panel, in_stride, n_group, first, coef, tile, nb, 3, acc);
    case 3: return group_rows<NV, 4, T>(panel, in_stride, n_group, first, coef, tile, nb, 4, acc);
    default:
      return group_rows<NV, 0, T>(panel, in_stride, n_group, first, coef, tile, nb, k + 1, acc);
  }
}

/// Basis of one input for `nb` rows: first[b] (window start, clamped to [0, M-k-1]) and
/// coef[b][0..k] (the window's spline coefficients) + coef[b][k+1] = silu(x).
static void input_basis(const DenseLayer& L, int64_t i, const float* x, int64_t x_stride,
                        int64_t nb, int32_t* first, float* coef) {
  const int64_t k = L.k, M = L.M;
  const int64_t row = L.shared_grid ? 0 : i;
  const float* g = L.grid.data() + row * L.n_knots;
  const float* inv = k > 0 ? L.inv.data() + row * k * L.n_knots : nullptr;
  const int64_t last_start = M - k - 1;
  for (int64_t b = 0; b < nb; ++b) {
    const float xv = x[b * x_stride + i];
    float bv[kMaxSplineOrder + 1];
    float* c = coef + b * (k + 2);
    int64_t f = 0;
    for (int64_t t = 0; t <= k; ++t) c[t] = 0.0f;
    if (lutham::basis_at(g, L.n_knots, k, xv, &f, bv, inv)) {
      // f in [-k, M - 1]: shift the k+1 values into the window [start, start + k]
      const int64_t start = std::min(std::max<int64_t>(f, 0), last_start);
      for (int64_t t = 0; t <= k; ++t) {
        const int64_t m = f + t;
        if (m >= 0 && m < M) c[m - start] = bv[t];
      }
      f = start;
    } else {
      f = 0;
    }
    first[b] = static_cast<int32_t>(f);
    c[k + 1] = lutham::silu(xv);
  }
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
  const int64_t nblk = L.n_blocks();
  for (int64_t b0 = 0; b0 < B; b0 += tile) {
    const int64_t nb = std::min(tile, B - b0);
    const float* xt = x + b0 * L.n_in;
    // basis of every (input, row) of the tile: first[i * tile + b], coef[(i * tile + b) * (k+2) + t]
    par.for_range(L.n_in, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        detail::input_basis(L, i, xt, L.n_in, nb, first + i * tile, coef + i * tile * cstride);
      }
    });
    par.for_range(nblk, [&](int64_t c0, int64_t c1) {
      alignas(64) float acc[kTileRows * kBlockCols];
      std::vector<float> deq_buf;  // an int8 input group as float (kDequantRows rows and more)
      for (int64_t cb = c0; cb < c1; ++cb) {
        const int64_t wd = L.width(cb);
        const int64_t nv = wd / 8;
        const int64_t in_stride = (L.M + 1) * wd;
        std::fill(acc, acc + nb * wd, 0.0f);
        for (int64_t g0 = 0; g0 < L.n_in; g0 += kInputGroup) {
          const int64_t ng = std::min(kInputGroup, L.n_in - g0);
          const int32_t* fg = first + g0 * tile;
          const float* cg = coef + g0 * tile * cstride;
          auto run = [&](const auto* panel) {
            using T = typename std::remove_const<
                typename std::remove_pointer<decltype(panel)>::type>::type;
            switch (nv) {
              case 1: return detail::group_rows_k<1, T>(L.k, panel, in_stride, ng, fg, cg, tile, nb, acc);
              case 2: return detail::group_rows_k<2, T>(L.k, panel, in_stride, ng, fg, cg, tile, nb, acc);
              case 3: return detail::group_rows_k<3, T>(L.k, panel, in_stride, ng, fg, cg, tile, nb, acc);
              default: return detail::group_rows_k<4, T>(L.k, panel, in_stride, ng, fg, cg, tile, nb, acc);
            }
          };
          const int64_t off = L.block_off[cb] + g0 * in_stride;
          if (L.wtype == WeightType::kF32) {
            run(L.w_f32.data() + off);
          } else if (nb >= kDequantRows) {
            const size_t n = static_cast<size_t>(ng * in_stride);
            if (deq_buf.size() < n) deq_buf.resize(n);
            detail::dequant_group(L.w_i8.data() + off, deq_buf.data(), static_cast<int64_t>(n));
            run(static_cast<const float*>(deq_buf.data()));
          } else {
            run(L.w_i8.data() + off);
          }
        }
        const int64_t o0 = L.block_col[cb], no = L.block_col[cb + 1] - o0;
        const bool has_bias = !L.bias.empty();
        for (int64_t b = 0; b < nb; ++b) {
          float* yr = y + (b0 + b) * L.n_out + o0;
          const float* ar = acc + b * wd;
          if (L.wtype == WeightType::kI8) {
            for (int64_t c = 0; c < no; ++c)
              yr[c] = ar[c] * L.col_scale[o0 + c] + (has_bias ? L.bias[o0 + c] : 0.0f);
          } else {
            for (int64_t c = 0; c < no; ++c) yr[c] = ar[c] + (has_bias ? L.bias[o0 + c] : 0.0f);
          }
        }
      }
    });
  }
}

}  // namespace dense_kan
}  // namespace sharekan
