// LUTHAM kernel: validation of one call's arguments (runtime-neutral).
//
// `validate(args, &layer)` runs every check on the inputs, in a fixed order, and on success
// fills the Layer the strategies read. The first failed check returns InvalidArgument with
// a message naming the argument (`lutham: gain_scale[3] = inf is not finite`). Nothing is
// read out of bounds: shapes, code ranges and the spline order are checked before any data
// is touched, and every size computed from tensor dims uses overflow-checked arithmetic (a
// wrapped product on a 32-bit size_t would undersize a buffer). Float inputs other than x
// must be finite (as in the Rust evaluator). B-spline knots must keep every divisor of the
// recursion, t[a + r] - t[a] for 1 <= r <= k, and its reciprocal finite in float32.

#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"
#include "simd.h"

namespace sharekan {
namespace lutham {

/// Returns InvalidArgument with the formatted message unless `cond` holds.
#define LUTHAM_CHECK(cond, ...)                                             \
  do {                                                                      \
    if (!(cond)) return status_error(StatusCode::kInvalidArgument, __VA_ARGS__); \
  } while (false)

/// Returns the Status of `expr` unless it is ok.
#define LUTHAM_TRY(expr)              \
  do {                                \
    Status lutham_st_ = (expr);       \
    if (!lutham_st_.ok()) return lutham_st_; \
  } while (false)

static inline bool is_absent(const TensorView& t) { return t.dim == 1 && t.size(0) == 0; }

static inline const char* dtype_name(DType s) {
  switch (s) {
    case DType::kUInt8: return "uint8";
    case DType::kInt8: return "int8";
    case DType::kInt16: return "int16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kBool: return "bool";
    default: return "unsupported";
  }
}

enum class KnotSpacing { kOk, kTooSmall, kTooWide };

/// The recursion divides by d = g[a + r] - g[a] for 1 <= r <= k (both strategies, in float;
/// knot_reciprocals stores 1 / d). Checks on strictly increasing finite knots that every such
/// d and 1 / d is finite in float32: otherwise basis values would be inf / NaN. On failure
/// *lo, *hi = a, a + r of the first offending pair (r ascending, then a).
static KnotSpacing check_knot_spacing(const float* g, int64_t n_knots, int64_t k, int64_t* lo,
                                      int64_t* hi) {
  for (int64_t r = 1; r <= k; ++r) {
    for (int64_t a = 0; a + r < n_knots; ++a) {
      const float d = g[a + r] - g[a];
      if (std::isfinite(d) && std::isfinite(1.0f / d)) continue;
      *lo = a;
      *hi = a + r;
      return std::isfinite(d) ? KnotSpacing::kTooSmall : KnotSpacing::kTooWide;
    }
  }
  return KnotSpacing::kOk;
}

/// Index of the first non-finite value of v[0..n), or -1.
static int64_t first_non_finite(const float* v, int64_t n) {
  if (!any_non_finite(v, n)) return -1;
  for (int64_t e = 0; e < n; ++e)
    if (!std::isfinite(v[e])) return e;
  return -1;
}

/// Checks a (n_out,) float32 scale-like tensor that may be absent, finite like in the Rust
/// evaluator. Sets *ptr (nullptr when absent).
static Status check_vector(const TensorView& t, const char* name, int64_t n_out,
                           const float** ptr) {
  *ptr = nullptr;
  if (is_absent(t)) return Status{};
  LUTHAM_CHECK(t.dtype == DType::kFloat32,
               "lutham: %s must be float32, got %s", name, dtype_name(t.dtype));
  LUTHAM_CHECK(t.dim == 1 && t.size(0) == n_out,
               "lutham: %s must have shape (n_out=%lld,) or (0,) when absent", name,
               static_cast<long long>(n_out));
  LUTHAM_CHECK(t.contiguous,
               "lutham: %s must be contiguous", name);
  const int64_t bad = first_non_finite(static_cast<const float*>(t.data), n_out);
  LUTHAM_CHECK(bad < 0,
               "lutham: %s[%lld] = %g is not finite", name, static_cast<long long>(bad),
               bad < 0 ? 0.0 : static_cast<double>(static_cast<const float*>(t.data)[bad]));
  *ptr = static_cast<const float*>(t.data);
  return Status{};
}

/// Checks an (n_in, n_out) int8/float32 per-edge tensor; absent allowed when `optional`.
static Status check_edge(const TensorView& t, const char* name, int64_t n_in, int64_t n_out,
                         bool optional, EdgeTensor* e) {
  *e = EdgeTensor{};
  if (optional && is_absent(t)) return Status{};
  const DType st = t.dtype;
  LUTHAM_CHECK(st == DType::kInt8 || st == DType::kFloat32,
               "lutham: %s must be int8 or float32, got %s", name, dtype_name(st));
  LUTHAM_CHECK(t.dim == 2 && t.size(0) == n_in && t.size(1) == n_out,
               "lutham: %s must have shape (n_in=%lld, n_out=%lld)%s", name,
               static_cast<long long>(n_in), static_cast<long long>(n_out),
               optional ? " or (0,) when absent" : "");
  LUTHAM_CHECK(t.contiguous,
               "lutham: %s must be contiguous", name);
  if (st == DType::kFloat32) {  // int8 weights are always finite
    // n_in * n_out is the numel of this tensor: no overflow
    const float* v = static_cast<const float*>(t.data);
    const int64_t bad = first_non_finite(v, n_in * n_out);
    LUTHAM_CHECK(bad < 0,
                 "lutham: %s[%lld, %lld] = %g is not finite", name,
                 static_cast<long long>(bad < 0 ? 0 : bad / n_out),
                 static_cast<long long>(bad < 0 ? 0 : bad % n_out),
                 bad < 0 ? 0.0 : static_cast<double>(v[bad]));
  }
  e->data = t.data;
  e->is_i8 = st == DType::kInt8;
  return Status{};
}

template <typename CodeT>
static bool codes_in_range(const CodeT* c, int64_t n, int64_t K, int64_t* bad_index,
                           int64_t* bad_value) {
  // Vectorisable min/max scan first; locate the offender only on failure.
  int64_t lo = 0, hi = 0;
  if (n > 0) {
    CodeT mn = c[0], mx = c[0];
    for (int64_t e = 1; e < n; ++e) {
      mn = c[e] < mn ? c[e] : mn;
      mx = c[e] > mx ? c[e] : mx;
    }
    lo = mn;
    hi = mx;
  }
  if (lo >= 0 && hi < K) return true;
  for (int64_t e = 0; e < n; ++e) {
    if (c[e] < 0 || static_cast<int64_t>(c[e]) >= K) {
      *bad_index = e;
      *bad_value = static_cast<int64_t>(c[e]);
      return false;
    }
  }
  return true;
}

/// Runs every check on the call's inputs (x, the layer's tensors, k, basis, h, base_act and
/// the output's dtype), in order; on success fills *layer (the first failed check returns
/// InvalidArgument and leaves *layer unspecified). The output's shape (x.size(0), n_out) and
/// contiguity are the caller's to check once it is sized.
static Status validate(const Args& a, Layer* layer) {
  const TensorView &x = a.x, &grid = a.grid, &codebook = a.codebook, &codes = a.codes;
  int64_t k = a.k;
  const int64_t basis = a.basis, base_act_kind = a.base_act;
  const double h = a.h;

  // --- x, codebook, k, grid
  LUTHAM_CHECK(x.dtype == DType::kFloat32,
               "lutham: x must be float32, got %s", dtype_name(x.dtype));
  LUTHAM_CHECK(x.dim == 2,
               "lutham: x must be 2-D (batch, n_in), got %lld dims",
               static_cast<long long>(x.dim));
  LUTHAM_CHECK(x.contiguous,
               "lutham: x must be contiguous");
  LUTHAM_CHECK(a.out_dtype == DType::kFloat32,
               "lutham: out must be float32, got %s", dtype_name(a.out_dtype));
  LUTHAM_CHECK(basis == kBasisBSpline || basis == kBasisRbf || basis == kBasisChebyshev,
               "lutham: basis=%lld must be 0 (B-spline), 1 (RBF) or 2 (Chebyshev)",
               static_cast<long long>(basis));
  LUTHAM_CHECK(base_act_kind == kActSilu || base_act_kind == kActGelu,
               "lutham: base_act=%lld must be 0 (SiLU) or 1 (GELU)",
               static_cast<long long>(base_act_kind));
  // h is used as float32 (the value the Rust evaluator sees); checked in range before the
  // conversion, and after it: a tiny h rounds to 0, or has no finite float32 reciprocal
  // (the rule the Rust evaluator applies).
  const bool h_in_range = h > 0.0 && h <= 3.4028234663852886e38;
  const float h32 = h_in_range ? static_cast<float>(h) : 0.0f;
  LUTHAM_CHECK(basis != kBasisRbf ||
                   (h32 > 0.0f && std::isfinite(1.0f / h32)),
               "lutham: RBF width h=%g must be finite and > 0 with a finite reciprocal "
               "as float32", h);
  if (basis != kBasisBSpline) k = 0;  // the spline order is read by B-splines only
  LUTHAM_CHECK(k >= 0 && k <= kMaxSplineOrder,
               "lutham: spline order k=%lld outside [0, %lld]",
               static_cast<long long>(k), static_cast<long long>(kMaxSplineOrder));
  LUTHAM_CHECK(codebook.dtype == DType::kFloat32,
               "lutham: codebook must be float32, got %s",
               dtype_name(codebook.dtype));
  LUTHAM_CHECK(codebook.dim == 2 && codebook.size(0) >= 1,
               "lutham: codebook must be 2-D (K >= 1, M)");
  LUTHAM_CHECK(codebook.contiguous,
               "lutham: codebook must be contiguous");
  Layer L;
  L.n_in = x.size(1);
  L.K = codebook.size(0);
  L.M = codebook.size(1);
  L.k = k;
  L.basis = basis;
  L.h = h_in_range ? static_cast<double>(static_cast<float>(h)) : 1.0;
  L.base_act = base_act_kind;
  const int64_t bad_cb = first_non_finite(static_cast<const float*>(codebook.data), codebook.numel);
  LUTHAM_CHECK(bad_cb < 0,
               "lutham: codebook[%lld, %lld] = %g is not finite",
               static_cast<long long>(bad_cb < 0 || L.M == 0 ? 0 : bad_cb / L.M),
               static_cast<long long>(bad_cb < 0 || L.M == 0 ? 0 : bad_cb % L.M),
               bad_cb < 0 ? 0.0
                          : static_cast<double>(static_cast<const float*>(codebook.data)[bad_cb]));
  LUTHAM_CHECK(L.M >= k + 1,
               "lutham: codebook width M=%lld must be G + k with G >= 1 (k=%lld), or "
               ">= 1 for RBF / Chebyshev",
               static_cast<long long>(L.M), static_cast<long long>(k));
  LUTHAM_CHECK(grid.dtype == DType::kFloat32,
               "lutham: grid must be float32, got %s", dtype_name(grid.dtype));
  LUTHAM_CHECK(grid.dim == 2,
               "lutham: grid must be 2-D, got %lld dims", static_cast<long long>(grid.dim));
  LUTHAM_CHECK(grid.contiguous,
               "lutham: grid must be contiguous");
  L.grid = static_cast<const float*>(grid.data);
  L.shared_grid = grid.size(0) == 1;
  L.codebook = static_cast<const float*>(codebook.data);
  if (basis == kBasisBSpline) {
    int64_t n_knots = 0;  // M + k + 1 (G + 2k + 1)
    LUTHAM_CHECK(checked_add(L.M, k + 1, &n_knots),
                 "lutham: M + k + 1 overflows (M=%lld, k=%lld)",
                 static_cast<long long>(L.M), static_cast<long long>(k));
    LUTHAM_CHECK((grid.size(0) == L.n_in || grid.size(0) == 1) &&
                     grid.size(1) == n_knots,
                 "lutham: grid must have shape (n_in=%lld or 1, M+k+1=%lld) for M=%lld, "
                 "k=%lld",
                 static_cast<long long>(L.n_in), static_cast<long long>(n_knots),
                 static_cast<long long>(L.M), static_cast<long long>(k));
    for (int64_t i = 0; i < grid.size(0); ++i) {
      const float* g = L.grid + i * n_knots;
      bool ok = std::isfinite(g[0]);
      for (int64_t t = 1; t < n_knots; ++t) ok = ok && std::isfinite(g[t]) && g[t] > g[t - 1];
      LUTHAM_CHECK(ok,
                   "lutham: grid row %lld must be finite and strictly increasing",
                   static_cast<long long>(i));
      int64_t lo = 0, hi = 0;
      const KnotSpacing sp = check_knot_spacing(g, n_knots, k, &lo, &hi);
      LUTHAM_CHECK(sp != KnotSpacing::kTooSmall,
                   "lutham: grid row %lld: knot spacing too small for float32: "
                   "1 / (t[%lld] - t[%lld]) = 1 / (%g - %g) is not finite",
                   static_cast<long long>(i), static_cast<long long>(hi),
                   static_cast<long long>(lo), static_cast<double>(g[hi]),
                   static_cast<double>(g[lo]));
      LUTHAM_CHECK(sp != KnotSpacing::kTooWide,
                   "lutham: grid row %lld: knot range too wide for float32: "
                   "t[%lld] - t[%lld] = %g - %g overflows",
                   static_cast<long long>(i), static_cast<long long>(hi),
                   static_cast<long long>(lo), static_cast<double>(g[hi]),
                   static_cast<double>(g[lo]));
    }
  } else if (basis == kBasisRbf) {
    LUTHAM_CHECK((grid.size(0) == L.n_in || grid.size(0) == 1) && grid.size(1) == L.M,
                 "lutham: RBF centres must have shape (n_in=%lld or 1, M=%lld)",
                 static_cast<long long>(L.n_in), static_cast<long long>(L.M));
    // grid.size(0) * M is the numel of grid: no overflow
    LUTHAM_CHECK(first_non_finite(L.grid, grid.size(0) * L.M) < 0,
                 "lutham: RBF centres must be finite");
  }
  // --- codes
  const DType ct = codes.dtype;
  LUTHAM_CHECK(ct == DType::kUInt8 || ct == DType::kInt16 || ct == DType::kInt32,
               "lutham: codes must be uint8, int16 or int32, got %s", dtype_name(ct));
  LUTHAM_CHECK(codes.dim == 2 && codes.size(0) == L.n_in,
               "lutham: codes must have shape (n_in=%lld, n_out)",
               static_cast<long long>(L.n_in));
  LUTHAM_CHECK(codes.contiguous,
               "lutham: codes must be contiguous");
  L.n_out = codes.size(1);
  L.codes = codes.data;
  int64_t bad_index = -1, bad_value = 0;
  bool codes_ok = true;
  int64_t n_edges = 0;
  LUTHAM_CHECK(checked_mul(L.n_in, L.n_out, &n_edges),
               "lutham: n_in * n_out overflows (n_in=%lld, n_out=%lld)",
               static_cast<long long>(L.n_in), static_cast<long long>(L.n_out));
  if (ct == DType::kUInt8) {
    L.code_type = CodeType::kU8;
    if (L.K < 256)
      codes_ok = codes_in_range(static_cast<const uint8_t*>(codes.data), n_edges, L.K, &bad_index,
                                &bad_value);
  } else if (ct == DType::kInt16) {
    L.code_type = CodeType::kI16;
    codes_ok = codes_in_range(static_cast<const int16_t*>(codes.data), n_edges, L.K, &bad_index,
                              &bad_value);
  } else {
    L.code_type = CodeType::kI32;
    codes_ok = codes_in_range(static_cast<const int32_t*>(codes.data), n_edges, L.K, &bad_index,
                              &bad_value);
  }
  LUTHAM_CHECK(codes_ok,
               "lutham: codes[%lld, %lld] = %lld outside [0, K=%lld)",
               static_cast<long long>(L.n_out ? bad_index / L.n_out : 0),
               static_cast<long long>(L.n_out ? bad_index % L.n_out : 0),
               static_cast<long long>(bad_value), static_cast<long long>(L.K));
  // --- per-edge tensors and their scales
  LUTHAM_TRY(check_edge(a.gains, "gains", L.n_in, L.n_out, false, &L.gains));
  LUTHAM_TRY(check_vector(a.gain_scale, "gain_scale", L.n_out, &L.gain_scale));
  LUTHAM_TRY(check_edge(a.edge_bias, "edge_bias", L.n_in, L.n_out, true, &L.edge_bias));
  LUTHAM_TRY(check_vector(a.edge_bias_scale, "edge_bias_scale", L.n_out, &L.edge_bias_scale));
  LUTHAM_CHECK(L.edge_bias.data || !L.edge_bias_scale || L.n_out == 0,
               "lutham: edge_bias_scale given without edge_bias");
  LUTHAM_TRY(check_vector(a.out_bias, "out_bias", L.n_out, &L.out_bias));
  LUTHAM_TRY(check_edge(a.base_weight, "base_weight", L.n_in, L.n_out, true, &L.base_weight));
  LUTHAM_TRY(check_vector(a.base_scale, "base_scale", L.n_out, &L.base_scale));
  LUTHAM_CHECK(L.base_weight.data || !L.base_scale || L.n_out == 0,
               "lutham: base_scale given without base_weight");
  *layer = L;
  return Status{};
}

}  // namespace lutham
}  // namespace sharekan
