// LUTHAM kernel: basis functions and the base-branch activation.
//
// B-splines of order k on a knot row (Cox-de Boor on the non-zero triangle, the recursion of
// efficient-kan's `b_splines`, in float32), the dense bases (Gaussian RBF on centres, width
// h; Chebyshev T_m(tanh x)), computed in double then rounded to float, and the activations
// SiLU and exact GELU. Everything here assumes a validated Layer (validate.h).

#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace sharekan {
namespace lutham {

/// Knots of input i (the single row of a shared grid).
static inline const float* grid_row(const Layer& L, int64_t i) {
  return L.grid + (L.shared_grid ? 0 : i) * (L.M + L.k + 1);
}

/// Span j of x: g[j] <= x < g[j+1], 0 <= j <= n_knots - 2 (x inside, checked by caller).
static inline int64_t find_span(const float* g, int64_t n_knots, float x) {
  // Branch-free: invariant g[j] <= x < g[j + n].
  int64_t j = 0;
  for (int64_t n = n_knots - 1; n > 1;) {
    const int64_t half = n / 2;
    j = g[j + half] <= x ? j + half : j;
    n -= half;
  }
  return j;
}

/// Cox-de Boor on the non-zero triangle, in place: after round r, b[t] = B_{j-r+t}^r.
/// Descending t reads b[t-1] and b[t] of round r-1 before they are overwritten. Basis
/// functions efficient-kan's recursion does not have (index < 0 or beyond the grid) are 0.
/// KO > 0: compile-time order (loops unroll, b stays in registers); KO = 0: runtime k.
template <int KO>
static inline void span_basis(const float* __restrict g, int64_t n_knots, int64_t k, int64_t j,
                              float x, float* __restrict b, const float* __restrict inv) {
  const int64_t kk = KO > 0 ? KO : k;
  b[0] = 1.0f;  // B_j^0
  for (int64_t r = 1; r <= kk; ++r) {
    for (int64_t t = r; t >= 0; --t) {
      const int64_t m = j - r + t;
      if (m < 0 || m > n_knots - 2 - r) {
        b[t] = 0.0f;
        continue;
      }
      float v = 0.0f;
      if (inv) {  // inv[(r - 1) * n_knots + m] = 1 / (g[m + r] - g[m])
        const float* ir = inv + (r - 1) * n_knots;
        if (t >= 1) v += (x - g[m]) * ir[m] * b[t - 1];
        if (t <= r - 1) v += (g[m + r + 1] - x) * ir[m + 1] * b[t];
      } else {
        if (t >= 1) v += (x - g[m]) / (g[m + r] - g[m]) * b[t - 1];
        if (t <= r - 1) v += (g[m + r + 1] - x) / (g[m + r + 1] - g[m + 1]) * b[t];
      }
      b[t] = v;
    }
  }
}

/// The k+1 basis values B_{first..first+k}(x) of one input (first = span - k, may be < 0).
/// Returns false (all zero) outside [grid[0], grid[NG-1]) or for NaN.
/// Same recursion as efficient-kan's `b_splines`, restricted to the non-zero triangle.
/// inv: optional knot reciprocals (see knot_reciprocals) replacing the divisions.
static inline bool basis_at(const float* g, int64_t n_knots, int64_t k, float x,
                            int64_t* first, float* b, const float* inv = nullptr) {
  if (!(x >= g[0] && x < g[n_knots - 1])) return false;
  const int64_t j = find_span(g, n_knots, x);
  switch (k) {
    case 1: span_basis<1>(g, n_knots, 1, j, x, b, inv); break;
    case 2: span_basis<2>(g, n_knots, 2, j, x, b, inv); break;
    case 3: span_basis<3>(g, n_knots, 3, j, x, b, inv); break;
    default: span_basis<0>(g, n_knots, k, j, x, b, inv); break;
  }
  *first = j - k;
  return true;
}

/// 1 / h when the knot row is uniform (every |g[t] - g[0] - t h| <= 1e-6 h, h the mean
/// spacing; efficient-kan's default grid), else 0. Checked once per row and call.
static inline float uniform_inv_spacing(const float* g, int64_t n_knots) {
  const double g0 = g[0];
  const double h = (static_cast<double>(g[n_knots - 1]) - g0) / static_cast<double>(n_knots - 1);
  for (int64_t t = 1; t < n_knots - 1; ++t) {
    if (std::fabs(static_cast<double>(g[t]) - (g0 + static_cast<double>(t) * h)) > 1e-6 * h)
      return 0.0f;
  }
  return static_cast<float>(1.0 / h);
}

/// basis_at for a uniform knot row (inv_h = uniform_inv_spacing(g, n_knots) > 0). The span
/// comes from one multiply, corrected against the knots themselves, so x on a knot lands in
/// the same half-open span as find_span; for k = 3 the values are the closed-form cubic
/// B-spline weights in u = (x - g[j]) / h (the recursion's values to float rounding, as the
/// knots are uniform to 1e-6 h), with the same zeros at indices outside the grid. Other
/// orders run the recursion of basis_at from that span.
static inline bool basis_at_uniform(const float* g, int64_t n_knots, int64_t k, float x,
                                    float inv_h, int64_t* first, float* b,
                                    const float* inv = nullptr) {
  if (!(x >= g[0] && x < g[n_knots - 1])) return false;
  int64_t j = static_cast<int64_t>((x - g[0]) * inv_h);
  j = j < 0 ? 0 : (j > n_knots - 2 ? n_knots - 2 : j);
  while (j > 0 && x < g[j]) --j;
  while (j < n_knots - 2 && x >= g[j + 1]) ++j;
  if (k == 3) {
    const float u = (x - g[j]) * inv_h, v = 1.0f - u;
    const float u2 = u * u, u3 = u2 * u;
    constexpr float s = 1.0f / 6.0f;
    b[0] = v * v * v * s;
    b[1] = (3.0f * u3 - 6.0f * u2 + 4.0f) * s;
    b[2] = (-3.0f * u3 + 3.0f * u2 + 3.0f * u + 1.0f) * s;
    b[3] = u3 * s;
    for (int64_t t = 0; t <= 3; ++t) {  // functions the grid does not have (as in the recursion)
      const int64_t m = j - 3 + t;
      if (m < 0 || m > n_knots - 5) b[t] = 0.0f;
    }
  } else {
    switch (k) {
      case 1: span_basis<1>(g, n_knots, 1, j, x, b, inv); break;
      case 2: span_basis<2>(g, n_knots, 2, j, x, b, inv); break;
      default: span_basis<0>(g, n_knots, k, j, x, b, inv); break;
    }
  }
  *first = j - k;
  return true;
}

/// The k+1 basis values of x on one knot row, by the row's path: basis_at_uniform when
/// inv_h = uniform_inv_spacing(g, n_knots) > 0, else basis_at. Used by every B-spline
/// evaluation of the kernel and the dense baseline.
static inline bool basis_at_row(const float* g, int64_t n_knots, int64_t k, float x,
                                float inv_h, int64_t* first, float* b,
                                const float* inv = nullptr) {
  return inv_h > 0.0f ? basis_at_uniform(g, n_knots, k, x, inv_h, first, b, inv)
                      : basis_at(g, n_knots, k, x, first, b, inv);
}

/// inv[(r - 1) * n_knots + m] = 1 / (g[m + r] - g[m]) for r = 1..k, m + r < n_knots.
static void knot_reciprocals(const float* g, int64_t n_knots, int64_t k, float* inv) {
  for (int64_t r = 1; r <= k; ++r) {
    float* ir = inv + (r - 1) * n_knots;
    for (int64_t m = 0; m < n_knots; ++m) ir[m] = m + r < n_knots ? 1.0f / (g[m + r] - g[m]) : 0.0f;
  }
}

static inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

/// Exact GELU, computed in double.
static inline float gelu(float x) {
  const double v = x;
  return static_cast<float>(0.5 * v * (1.0 + std::erf(v * 0.70710678118654752440)));
}

/// The base-branch activation of the layer.
static inline float base_act(const Layer& L, float x) {
  return L.base_act == kActGelu ? gelu(x) : silu(x);
}

/// Dense basis values b[m] = B_m(x), m = 0..M-1 (RBF or Chebyshev), in double then
/// rounded to float. NaN in, NaN out.
static void dense_basis(const Layer& L, int64_t i, float x, float* b) {
  const double xd = x;
  if (L.basis == kBasisRbf) {
    const float* c = L.grid + (L.shared_grid ? 0 : i) * L.M;
    for (int64_t m = 0; m < L.M; ++m) {
      const double d = (xd - static_cast<double>(c[m])) / L.h;
      b[m] = static_cast<float>(std::exp(-(d * d)));
    }
    return;
  }
  const double t = std::tanh(xd);
  double t0 = 1.0, t1 = t;
  for (int64_t m = 0; m < L.M; ++m) {
    if (m == 0) {
      b[m] = 1.0f;
    } else if (m == 1) {
      b[m] = static_cast<float>(t);
    } else {
      const double t2 = 2.0 * t * t1 - t0;
      t0 = t1;
      t1 = t2;
      b[m] = static_cast<float>(t2);
    }
  }
}

}  // namespace lutham
}  // namespace sharekan
