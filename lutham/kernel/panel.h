// LUTHAM kernel: the register-blocked panel micro-kernel, shared by the decoded-tile
// strategy (decoded.h) and the dense baseline (lutham/baseline/dense_kan.h), so that both
// multiply-add at the same speed and differ only in where their weights come from.
//
// A panel holds, per input of a group, M + 1 rows of W weights (W a multiple of 8 columns):
// row 0 the base-branch weights, rows 1..M the spline coefficients. Batch row r of input i
// reads row 0 and the k+1 consecutive spline rows of its window, starting at first[i][r],
// clamped into [0, M-k-1] (window_basis shifts the basis values into it, zeros where the
// grid has no basis function), so no read leaves the input's block:
//
//   acc[r][0..W) += coef[i][r][k+1] * panel[i][0] + sum_t coef[i][r][t] * panel[i][1+first+t]
//
// for every input of the group in ascending order, R rows at a time with R x W/8
// accumulators in registers (the base row's loads shared by the R rows). Every row sees the
// same operations in the same order whatever its chunk, thread or tile.
//
// SIMD: GCC vector extensions (8 floats: AVX2 in the x86-64-v3 clone, SSE or NEON
// elsewhere), functions cloned by LUTHAM_HOT (common.h).

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "basis.h"
#include "common.h"

namespace sharekan {
namespace lutham {
namespace panel {

/// Columns per block: the unit of a thread's column range (results do not depend on it).
constexpr int64_t kBlockCols = 32;
/// Inputs per group: 8 inputs x (M + 1) rows x 32 columns x 4 bytes = 57 KB at M = 13
/// (L1 + L2); the accumulators are spilled once per group.
constexpr int64_t kInputGroup = 8;
/// Inputs ahead that the in-place (unpacked) micro-kernel prefetches.
constexpr int64_t kPrefetchInputs = 16;

// 8-lane vectors. Loads and stores are expressions on unaligned, may_alias vector types (not
// helper functions: a function taking or returning a 32-byte vector has a target-dependent
// ABI, which GCC warns about in the default clone).
typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef int64_t v4q __attribute__((vector_size(32)));
typedef int8_t v32b __attribute__((vector_size(32)));

/// 8 elements of T at p, as floats (int8 converted exactly). int8: the 8 bytes broadcast,
/// each moved to the top byte of its int32 lane (in-lane byte shuffle), arithmetic shift right
/// by 24 (the sign extension), convert: 5 instructions on AVX2, where GCC 12 scalarises a
/// plain __builtin_convertvector from 8 int8 lanes.
#define LUTHAM_PANEL_LOAD8(T, p)                                                            \
  ({                                                                                        \
    ::sharekan::lutham::panel::v8f r_;                                                      \
    if constexpr (std::is_same<T, float>::value) {                                          \
      r_ = *reinterpret_cast<const ::sharekan::lutham::panel::v8f_u*>(p);                   \
    } else {                                                                                \
      int64_t q_;                                                                           \
      std::memcpy(&q_, (p), 8);                                                             \
      const ::sharekan::lutham::panel::v32b x_ =                                            \
          reinterpret_cast<::sharekan::lutham::panel::v32b>(                                \
              (::sharekan::lutham::panel::v4q){q_, q_, q_, q_});                            \
      const ::sharekan::lutham::panel::v32b m_ = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,         \
                                                  2, 0, 0, 0, 3, 0, 0, 0, 12, 0, 0,         \
                                                  0, 13, 0, 0, 0, 14, 0, 0, 0, 15};         \
      r_ = __builtin_convertvector(                                                         \
          reinterpret_cast<::sharekan::lutham::panel::v8i>(__builtin_shuffle(x_, m_)) >> 24, \
          ::sharekan::lutham::panel::v8f);                                                  \
    }                                                                                       \
    r_;                                                                                     \
  })
/// Stores 8 floats at p.
#define LUTHAM_PANEL_STORE8(p, v) \
  (*reinterpret_cast<::sharekan::lutham::panel::v8f_u*>(p) = (v))

/// The micro-kernel over one (input group, column block) for R rows: blk_i = panel +
/// i * in_stride holds M + 1 rows of 8 NV weights, `ld` elements apart; acc is (R, 8 NV)
/// floats, `acc_stride` apart. KP1 = k + 1 (0: runtime kp1). first/coef: per input `tile`
/// batch rows apart, coef rows of kp1 + 1 values. PF: prefetch the rows of input
/// i + kPrefetchInputs if it is below n_ahead (the inputs left from the group's start).
template <int NV, int R, int KP1, bool PF, typename T>
LUTHAM_HOT static void micro_kernel(const T* __restrict panel, int64_t ld, int64_t in_stride,
                                    int64_t n_group, int64_t n_ahead,
                                    const int32_t* __restrict first,
                                    const float* __restrict coef, int64_t tile, int64_t kp1_rt,
                                    float* __restrict acc, int64_t acc_stride) {
  constexpr int64_t W = 8 * NV;
  const int64_t kp1 = KP1 > 0 ? KP1 : kp1_rt;
  const int64_t cstride = kp1 + 1;
  v8f a[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      a[r][v] = *reinterpret_cast<const v8f_u*>(acc + r * acc_stride + 8 * v);
  for (int64_t i = 0; i < n_group; ++i) {
    const T* __restrict blk = panel + i * in_stride;
    if (PF && i + kPrefetchInputs < n_ahead) {
      // rows 0 and 1 + lo .. 1 + hi + k of input i + kPrefetchInputs: the union of the
      // chunk's windows (one contiguous run per row of 8 NV weights)
      const T* ahead = blk + kPrefetchInputs * in_stride;
      const int32_t* fa = first + (i + kPrefetchInputs) * tile;
      int32_t lo = fa[0], hi = fa[0];
      for (int r = 1; r < R; ++r) {
        lo = std::min(lo, fa[r]);
        hi = std::max(hi, fa[r]);
      }
      constexpr int64_t kLine = 64 / sizeof(T);
      for (int64_t e = 0; e < W; e += kLine) __builtin_prefetch(ahead + e);
      for (int64_t m = 1 + lo; m <= 1 + hi + kp1 - 1; ++m)
        for (int64_t e = 0; e < W; e += kLine) __builtin_prefetch(ahead + m * ld + e);
    }
    v8f base[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) base[v] = LUTHAM_PANEL_LOAD8(T, blk + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float* __restrict c = coef + (i * tile + r) * cstride;
      const T* __restrict w = blk + (1 + first[i * tile + r]) * ld;
      const float cb = c[kp1];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) a[r][v] += cb * base[v];
      if (KP1 > 0) {
#pragma GCC unroll 16
        for (int t = 0; t < KP1; ++t) {
          const float ct = c[t];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) a[r][v] += ct * LUTHAM_PANEL_LOAD8(T, w + t * ld + 8 * v);
        }
      } else {
        for (int64_t t = 0; t < kp1; ++t) {
          const float ct = c[t];
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) a[r][v] += ct * LUTHAM_PANEL_LOAD8(T, w + t * ld + 8 * v);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) LUTHAM_PANEL_STORE8(acc + r * acc_stride + 8 * v, a[r][v]);
}

/// Rows per register block for a block of NV vectors (R x NV accumulators + temporaries
/// within AVX2's 16 registers).
template <int NV>
constexpr int rows_per_block() {
  return NV >= 4 ? 3 : NV == 3 ? 4 : NV == 2 ? 6 : 8;
}

/// Rows [0, nb) of one (input group, column block) through the micro-kernel: R rows at a
/// time, then the remainder one by one (every row sees the same operations whatever its
/// chunk). PF: prefetch ahead (weights read in place rather than from a packed L1 panel).
template <int NV, int KP1, bool PF, typename T>
static void group_rows(const T* panel, int64_t ld, int64_t in_stride, int64_t n_group,
                       int64_t n_ahead, const int32_t* first, const float* coef, int64_t tile,
                       int64_t nb, int64_t kp1, float* acc, int64_t acc_stride) {
  constexpr int R = rows_per_block<NV>();
  const int64_t cstride = kp1 + 1;
  int64_t b = 0;
  for (; b + R <= nb; b += R) {
    micro_kernel<NV, R, KP1, PF, T>(panel, ld, in_stride, n_group, n_ahead, first + b,
                                    coef + b * cstride, tile, kp1, acc + b * acc_stride,
                                    acc_stride);
  }
  for (; b < nb; ++b) {
    micro_kernel<NV, 1, KP1, PF, T>(panel, ld, in_stride, n_group, n_ahead, first + b,
                                    coef + b * cstride, tile, kp1, acc + b * acc_stride,
                                    acc_stride);
  }
}

/// group_rows with the block width (nv vectors of 8, 1..4) and k + 1 as template arguments.
template <bool PF, typename T>
static void group_rows_dispatch(int64_t nv, int64_t k, const T* panel, int64_t ld,
                                int64_t in_stride, int64_t n_group, int64_t n_ahead,
                                const int32_t* first, const float* coef, int64_t tile,
                                int64_t nb, float* acc, int64_t acc_stride) {
  auto by_k = [&](auto nv_tag) {
    constexpr int NV = decltype(nv_tag)::value;
    switch (k) {
      case 1:
        return group_rows<NV, 2, PF, T>(panel, ld, in_stride, n_group, n_ahead, first, coef,
                                        tile, nb, 2, acc, acc_stride);
      case 2:
        return group_rows<NV, 3, PF, T>(panel, ld, in_stride, n_group, n_ahead, first, coef,
                                        tile, nb, 3, acc, acc_stride);
      case 3:
        return group_rows<NV, 4, PF, T>(panel, ld, in_stride, n_group, n_ahead, first, coef,
                                        tile, nb, 4, acc, acc_stride);
      default:
        return group_rows<NV, 0, PF, T>(panel, ld, in_stride, n_group, n_ahead, first, coef,
                                        tile, nb, k + 1, acc, acc_stride);
    }
  };
  switch (nv) {
    case 1: return by_k(std::integral_constant<int, 1>{});
    case 2: return by_k(std::integral_constant<int, 2>{});
    case 3: return by_k(std::integral_constant<int, 3>{});
    default: return by_k(std::integral_constant<int, 4>{});
  }
}

/// Window basis of one input for nb rows (x[b * x_stride]): first[b] = the window start
/// (the span's first basis index clamped into [0, M-k-1]) and coef[b][0..k] the window's
/// coefficients (zero where the grid has no basis function, all zero outside the grid or for
/// NaN), coef[b][k+1] = act(x) when `with_act` (else 0). Requires M >= k + 1.
/// g: the input's knots; inv: its knot reciprocals; inv_h: uniform_inv_spacing (0: not
/// uniform); act: the base-branch activation.
template <typename Act>
static void window_basis(const float* g, int64_t n_knots, int64_t M, int64_t k,
                         const float* inv, float inv_h, const float* x, int64_t x_stride,
                         int64_t nb, bool with_act, Act&& act, int32_t* first, float* coef) {
  const int64_t last_start = M - k - 1;
  for (int64_t b = 0; b < nb; ++b) {
    const float xv = x[b * x_stride];
    float bv[kMaxSplineOrder + 1];
    float* c = coef + b * (k + 2);
    int64_t f = 0;
    for (int64_t t = 0; t <= k; ++t) c[t] = 0.0f;
    if (basis_at_row(g, n_knots, k, xv, inv_h, &f, bv, inv)) {
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
    c[k + 1] = with_act ? act(xv) : 0.0f;
  }
}

}  // namespace panel
}  // namespace lutham
}  // namespace sharekan
