// LUTHAM kernel: the hot loops of the projection strategy and the decode.
//
// Plain C++ loops over `__restrict` pointers, written to auto-vectorise (AVX2 in the
// x86-64-v3 clone, SSE or NEON elsewhere); no intrinsics, so every target compiles the same
// source. LUTHAM_HOT (common.h) clones them for x86-64-v3 with GCC on x86-64. Hardware
// gathers (vgatherdps) and hand-built vectors of lookups were measured slower than the
// scalar lookups of these loops on the development CPU (AMD EPYC: 0.49-0.51 vs 0.36 ns per
// lookup) and are not used.
//
// Only primitives on arrays live here; the strategies that call them are projection.h and
// decoded.h, the finiteness scan is used by validate.h.

#pragma once

#include <cstdint>
#include <cstring>

#include "common.h"

namespace sharekan {
namespace lutham {

template <typename T>
static inline float as_float(T v) {
  return static_cast<float>(v);
}

// ---- projection strategy (projection.h) ----------------------------------------------

/// p[q] = sum_t c[t] * w[t][q] for N rows in one pass (N fixed: unrolled, p written once).
template <int N>
LUTHAM_HOT static void proj_terms(float* __restrict p, const float* const* w, const float* c,
                                  int64_t n) {
  const float* __restrict w0 = w[0];
  const float* __restrict w1 = w[N > 1 ? 1 : 0];
  const float* __restrict w2 = w[N > 2 ? 2 : 0];
  const float* __restrict w3 = w[N > 3 ? 3 : 0];
  const float c0 = c[0], c1 = c[N > 1 ? 1 : 0], c2 = c[N > 2 ? 2 : 0], c3 = c[N > 3 ? 3 : 0];
  for (int64_t q = 0; q < n; ++q) {
    float acc = c0 * w0[q];
    if (N > 1) acc += c1 * w1[q];
    if (N > 2) acc += c2 * w2[q];
    if (N > 3) acc += c3 * w3[q];
    p[q] = acc;
  }
}

LUTHAM_HOT static void axpy_plain(float* __restrict p, const float* __restrict w, float c,
                                  int64_t n) {
  for (int64_t q = 0; q < n; ++q) p[q] += c * w[q];
}

/// acc[o] += gains[o] * p[codes[o]]: the lookups of one input row. A plain loop: GCC's
/// vectorisation of it (scalar lookups, vector convert and multiply-add) measured faster
/// than hardware gathers and than hand-built vectors of lookups.
template <typename CodeT, typename GainT>
LUTHAM_HOT static void gather_accumulate(const CodeT* __restrict codes,
                                         const GainT* __restrict gains,
                                         const float* __restrict p, float* __restrict acc,
                                         int64_t n) {
  for (int64_t o = 0; o < n; ++o) {
    acc[o] += as_float(gains[o]) * p[static_cast<int32_t>(codes[o])];
  }
}

/// gather_accumulate plus the base branch of the same input row in the same pass:
/// acc_w[o] += base[o] * act (base stored like the gains).
template <typename CodeT, typename GainT>
LUTHAM_HOT static void gather_accumulate_base(const CodeT* __restrict codes,
                                              const GainT* __restrict gains,
                                              const float* __restrict p, float* __restrict acc,
                                              const GainT* __restrict base, float act,
                                              float* __restrict acc_w, int64_t n) {
  for (int64_t o = 0; o < n; ++o) {
    acc[o] += as_float(gains[o]) * p[static_cast<int32_t>(codes[o])];
    acc_w[o] += as_float(base[o]) * act;
  }
}

template <typename T>
LUTHAM_HOT static void axpy_row(const T* __restrict w, float a, float* __restrict acc,
                                int64_t n) {
  for (int64_t o = 0; o < n; ++o) acc[o] += as_float(w[o]) * a;
}

/// acc_a[o] += a[o] * sa; acc_b[o] += b[o] * sb (edge bias and base branch in one pass).
template <typename T>
LUTHAM_HOT static void axpy2_row(const T* __restrict a, float sa, const T* __restrict b,
                                 float sb, float* __restrict acc_a, float* __restrict acc_b,
                                 int64_t n) {
  for (int64_t o = 0; o < n; ++o) {
    acc_a[o] += as_float(a[o]) * sa;
    acc_b[o] += as_float(b[o]) * sb;
  }
}

// ---- decoded-tile strategy (decoded.h) ------------------------------------------------

/// w[m][o] = gg[o] * Ct[m][q[o]] + eb[o] for rows m in [m_lo, m_hi] and o < n (row stride
/// ld; columns n..ld-1 zeroed).
LUTHAM_HOT static void decode_rows(const float* __restrict ct, int64_t K, const int32_t* q,
                                   const float* gg, const float* eb, int64_t m_lo,
                                   int64_t m_hi, float* __restrict w, int64_t n, int64_t ld) {
  for (int64_t m = m_lo; m <= m_hi; ++m) {
    const float* __restrict crow = ct + m * K;
    float* __restrict wrow = w + m * ld;
    for (int64_t o = 0; o < n; ++o) wrow[o] = gg[o] * crow[q[o]] + eb[o];
    for (int64_t o = n; o < ld; ++o) wrow[o] = 0.0f;
  }
}

// ---- validation (validate.h) ----------------------------------------------------------

/// Whether any of v[0..n) is inf or NaN: exponent field all ones. Integer compares and ORs
/// vectorise (std::isfinite in a loop does not); it runs on every call over the float weights.
LUTHAM_HOT static bool any_non_finite(const float* __restrict v, int64_t n) {
  constexpr uint32_t kExp = 0x7f800000u;
  uint32_t bad = 0;
  for (int64_t e = 0; e < n; ++e) {
    uint32_t u;
    std::memcpy(&u, v + e, sizeof u);
    bad |= static_cast<uint32_t>((u & kExp) == kExp);
  }
  return bad != 0;
}

}  // namespace lutham
}  // namespace sharekan
