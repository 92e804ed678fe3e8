// LUTHAM: the ExecuTorch kernel for `sharekan::lutham.out`.
//
// Evaluates one compressed KAN layer (ARCHITECTURE.md §4) by codebook lookup:
//
//   y[b,o] = gain_scale[o]      * sum_i gains[i,o]       * P_bi[codes[i,o]]
//          + edge_bias_scale[o] * sum_i edge_bias[i,o]   * S_bi
//          + base_scale[o]      * sum_i base_weight[i,o] * act(x[b,i])
//          + out_bias[o]
//
// Basis kinds (`basis`): 0 = B-splines of order k on the knots in `grid` (below);
// 1 = Gaussian RBFs B_m(x) = exp(-((x - c_m) / h)^2), `grid` = the centres c_m, shape
// (n_in or 1, M) (FastKAN); 2 = Chebyshev T_m(tanh x), m = 0..M-1, `grid` not read (any
// float32 2-D tensor; ChebyKAN). Dense bases (1, 2) use all M basis values of every input
// (projection tables at every batch size; k is not read). act (`base_act`): 0 = SiLU,
// 1 = exact GELU x/2 (1 + erf(x / sqrt 2)) (TorchKAN).
//
// with P_bi[q] = sum_t B_{j-k+t}(x[b,i]) * codebook[q, j-k+t] (j = knot span of x[b,i]) and
// S_bi = sum_t B_{j-k+t}(x[b,i]) over the valid basis indices. Outside the grid (or NaN) all
// basis values are zero.
//
// Operator schema (defined in python/sharekan/torch/ops.py):
//   sharekan::lutham.out(Tensor x, Tensor grid, Tensor codebook, Tensor codes, Tensor gains,
//       Tensor gain_scale, Tensor edge_bias, Tensor edge_bias_scale, Tensor out_bias,
//       Tensor base_weight, Tensor base_scale, int k, int basis=0, float h=1.,
//       int base_act=0, *, Tensor(a!) out) -> Tensor(a!)
//
// Optional-tensor convention: an optional input is ABSENT when it is a 1-D tensor of shape
// (0,) (any dtype). Absent gain_scale / edge_bias_scale / base_scale mean "all ones";
// absent edge_bias / out_bias / base_weight mean "no such term". A scale given without its
// per-edge tensor is an error.
//
// Dtypes: x, grid, codebook, scales, out_bias, out: float32; codes: uint8, int16 or int32;
// gains, edge_bias, base_weight: int8 or float32. Every tensor must be contiguous.
//
// Grid: (n_in, M + k + 1) knots, or (1, M + k + 1): the same knots for every input
// (efficient-kan's default grid; stored once, reciprocals computed once per tile).
//
// Every check fails through ET_KERNEL_CHECK_MSG: the kernel returns with an InvalidArgument
// (or MemoryAllocationFailed) status, the runtime reports it and stays usable. No input can
// make the kernel read or write out of bounds: shapes, code ranges and the spline order are
// validated before any data is touched, and every size computed from tensor dims uses
// overflow-checked arithmetic (a wrapped product on a 32-bit size_t would undersize a
// buffer). Float inputs other than x must be finite (as in the Rust evaluator). B-spline
// knots must keep every divisor of the recursion, t[a + r] - t[a] for 1 <= r <= k, and its
// reciprocal finite in float32 (the recursion runs in float32).
//
// Scratch memory: at most kMaxScratchBytes per call, whatever the batch size (tiles of
// kBatchTile rows). When the decoded tiles would exceed it, the projection strategy runs
// instead (it needs K + 3 n_out floats besides the transposed codebook); a layer whose
// projection scratch exceeds it too is rejected with InvalidArgument.
//
// Two strategies, one result:
// - per-row projection (batches below kDecodeMinBatch rows): per input i, build the
//   K-entry table P_i once (one pass over k+1 rows of the transposed codebook) and walk the
//   contiguous row i of codes / gains / biases / base weights (1 byte each in Int8);
// - decoded tiles (tiles of kBatchTile rows): per input i, decode the rows of the dense
//   weight block W_i (M x n_out, scales folded in) that the batch touches into a scratch
//   buffer that stays in cache, then add (k+1) spline rows plus the bias and base rows for
//   each batch row. This uses only the k+1 non-zero basis values per input, so it does
//   about (k+3)/(M+1) of a dense layer's multiply-adds.
// Hot loops are plain C++ written to auto-vectorise; on x86-64 with GCC they are cloned
// for x86-64-v3 (AVX2/FMA) and picked at load time (ifunc), so the build stays portable
// (no -march=native). Explicit AVX2 gathers were measured slower than the scalar lookups
// on the development CPU (AMD EPYC, Zen 4) and are not used.

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(LUTHAM_NO_MULTIVERSION) && \
    !defined(__clang__)
#define LUTHAM_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LUTHAM_HOT
#endif

namespace sharekan {
namespace lutham {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

/// Largest supported spline order k (basis values live in fixed-size stack arrays).
constexpr int64_t kMaxSplineOrder = 15;
/// Batches at least this large use the decoded-tile strategy.
constexpr int64_t kDecodeMinBatch = 12;
/// The decoded-tile strategy processes the batch in tiles of this many rows (bounds the
/// scratch memory and keeps a tile's outputs in L2).
constexpr int64_t kBatchTile = 64;
/// Cap on the scratch memory of one call, all blocks together (1 GiB: fits a 32-bit
/// size_t; a compressed layer needs a few MiB).
constexpr uint64_t kMaxScratchBytes = uint64_t{1} << 30;

/// *out = a * b; false on overflow (then *out is unspecified).
template <typename T>
static inline bool checked_mul(T a, T b, T* out) {
  return !__builtin_mul_overflow(a, b, out);
}

/// *out = a + b; false on overflow (then *out is unspecified).
template <typename T>
static inline bool checked_add(T a, T b, T* out) {
  return !__builtin_add_overflow(a, b, out);
}

// ---------------------------------------------------------------------------------------
// Math core: plain pointers, no ExecuTorch types. Everything here assumes validated input.

enum class CodeType { kU8, kI16, kI32 };

constexpr int64_t kBasisBSpline = 0, kBasisRbf = 1, kBasisChebyshev = 2;
constexpr int64_t kActSilu = 0, kActGelu = 1;

/// A per-edge (n_in, n_out) tensor stored as int8 or float32; data == nullptr when absent.
struct EdgeTensor {
  const void* data = nullptr;
  bool is_i8 = false;
};

/// One validated layer. All arrays are C-contiguous.
struct Layer {
  int64_t n_in = 0, n_out = 0, K = 0, M = 0, k = 0;
  const float* grid = nullptr;      // (n_in or 1, M + k + 1), strictly increasing rows
  bool shared_grid = false;         // grid has one row, the knots of every input
  const float* codebook = nullptr;  // (K, M)
  const void* codes = nullptr;      // (n_in, n_out), all in [0, K)
  CodeType code_type = CodeType::kU8;
  EdgeTensor gains;                 // (n_in, n_out), present
  const float* gain_scale = nullptr;       // (n_out,) or nullptr (= ones)
  EdgeTensor edge_bias;                    // (n_in, n_out) or absent
  const float* edge_bias_scale = nullptr;  // (n_out,) or nullptr (= ones)
  const float* out_bias = nullptr;         // (n_out,) or nullptr
  EdgeTensor base_weight;                  // (n_in, n_out) or absent
  const float* base_scale = nullptr;       // (n_out,) or nullptr (= ones)
  int64_t basis = kBasisBSpline;           // kBasis*
  double h = 1.0;                          // RBF width (basis == kBasisRbf), finite > 0
  int64_t base_act = kActSilu;             // kAct*
};

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

template <typename T>
static inline float as_float(T v) {
  return static_cast<float>(v);
}

// ---- projection strategy -------------------------------------------------------------

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
LUTHAM_HOT static void gather_accumulate(const CodeT* __restrict codes,
                                         const GainT* __restrict gains,
                                         const float* __restrict p, float* __restrict acc,
                                         int64_t n) {
  for (int64_t o = 0; o < n; ++o) {
    acc[o] += as_float(gains[o]) * p[static_cast<int32_t>(codes[o])];
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

template <typename CodeT, typename GainT>
static void gather_row(const Layer& L, int64_t i, const float* p, float* acc) {
  const int64_t off = i * L.n_out;
  gather_accumulate(static_cast<const CodeT*>(L.codes) + off,
                    static_cast<const GainT*>(L.gains.data) + off, p, acc, L.n_out);
}

static void gather_dispatch(const Layer& L, int64_t i, const float* p, float* acc) {
  switch (L.code_type) {
    case CodeType::kU8:
      return L.gains.is_i8 ? gather_row<uint8_t, int8_t>(L, i, p, acc)
                           : gather_row<uint8_t, float>(L, i, p, acc);
    case CodeType::kI16:
      return L.gains.is_i8 ? gather_row<int16_t, int8_t>(L, i, p, acc)
                           : gather_row<int16_t, float>(L, i, p, acc);
    case CodeType::kI32:
      return L.gains.is_i8 ? gather_row<int32_t, int8_t>(L, i, p, acc)
                           : gather_row<int32_t, float>(L, i, p, acc);
  }
}

static void edge_axpy(const EdgeTensor& e, int64_t i, int64_t n_out, float a, float* acc) {
  const int64_t off = i * n_out;
  if (e.is_i8) {
    axpy_row(static_cast<const int8_t*>(e.data) + off, a, acc, n_out);
  } else {
    axpy_row(static_cast<const float*>(e.data) + off, a, acc, n_out);
  }
}

static inline float scale_or_one(const float* s, int64_t o) { return s ? s[o] : 1.0f; }

/// Outcome of planning or allocating the scratch memory.
enum class ScratchStatus { kOk, kTooLarge, kNoMemory };

/// Scratch arrays, one heap block each (so AddressSanitizer sees every array's bounds),
/// freed together. Sizes are computed with overflow checks and their sum is capped at
/// kMaxScratchBytes; allocation failure is reported, never thrown. A measuring Scratch
/// only adds up the sizes (returns nullptr), to choose a strategy before allocating.
class Scratch {
 public:
  explicit Scratch(bool measure_only = false) : measure_only_(measure_only) {}

  /// An array of a * b elements of T, or nullptr (measuring, or status() != kOk).
  template <typename T>
  T* get(int64_t a, int64_t b = 1) {
    if (status_ != ScratchStatus::kOk) return nullptr;
    uint64_t n = 0, bytes = 0;
    if (a < 0 || b < 0 ||
        !checked_mul(static_cast<uint64_t>(a), static_cast<uint64_t>(b), &n) ||
        !checked_mul(n, static_cast<uint64_t>(sizeof(T)), &bytes) ||
        !checked_add(total_, bytes, &total_) || total_ > kMaxScratchBytes ||
        used_ == kMaxBlocks) {
      status_ = ScratchStatus::kTooLarge;
      return nullptr;
    }
    if (measure_only_) {
      ++used_;
      return nullptr;
    }
    // bytes <= kMaxScratchBytes: fits size_t on every target.
    auto& block = blocks_[used_++];
    block.reset(new (std::nothrow) unsigned char[bytes ? static_cast<size_t>(bytes) : 1]);
    if (!block) status_ = ScratchStatus::kNoMemory;
    return reinterpret_cast<T*>(block.get());
  }
  ScratchStatus status() const { return status_; }
  bool ok() const { return status_ == ScratchStatus::kOk; }

 private:
  static constexpr int kMaxBlocks = 16;
  std::unique_ptr<unsigned char[]> blocks_[kMaxBlocks];
  int used_ = 0;
  uint64_t total_ = 0;
  bool measure_only_;
  ScratchStatus status_ = ScratchStatus::kOk;
};

struct ProjectionScratch {
  float* p;      // (K,) projection table
  float* acc_g;  // (n_out,) gain-weighted lookups
  float* acc_b;  // (n_out,) edge-bias terms
  float* acc_w;  // (n_out,) base-branch terms
};

/// One batch row by the projection-table strategy.
static void forward_row_projection(const Layer& L, const float* ct, const float* x,
                                   float* y, const ProjectionScratch& sc) {
  const int64_t n_knots = L.M + L.k + 1;
  float* p = sc.p;
  float* acc_g = sc.acc_g;
  float* acc_b = sc.acc_b;
  float* acc_w = sc.acc_w;
  for (int64_t o = 0; o < L.n_out; ++o) acc_g[o] = acc_b[o] = acc_w[o] = 0.0f;
  float b[kMaxSplineOrder + 1];
  for (int64_t i = 0; i < L.n_in; ++i) {
    const float xi = x[i];
    int64_t first = 0;
    if (basis_at(grid_row(L, i), n_knots, L.k, xi, &first, b)) {
      const float s = build_projection(ct, L.K, L.M, L.k, first, b, p);
      gather_dispatch(L, i, p, acc_g);
      if (L.edge_bias.data && s != 0.0f) {
        if (L.base_weight.data && L.base_weight.is_i8 == L.edge_bias.is_i8) {
          const int64_t off = i * L.n_out;
          if (L.edge_bias.is_i8) {
            axpy2_row(static_cast<const int8_t*>(L.edge_bias.data) + off, s,
                      static_cast<const int8_t*>(L.base_weight.data) + off, base_act(L, xi), acc_b,
                      acc_w, L.n_out);
          } else {
            axpy2_row(static_cast<const float*>(L.edge_bias.data) + off, s,
                      static_cast<const float*>(L.base_weight.data) + off, base_act(L, xi), acc_b,
                      acc_w, L.n_out);
          }
          continue;
        }
        edge_axpy(L.edge_bias, i, L.n_out, s, acc_b);
      }
    }
    if (L.base_weight.data) edge_axpy(L.base_weight, i, L.n_out, base_act(L, xi), acc_w);
  }
  for (int64_t o = 0; o < L.n_out; ++o) {
    y[o] = scale_or_one(L.gain_scale, o) * acc_g[o] +
           scale_or_one(L.edge_bias_scale, o) * acc_b[o] +
           scale_or_one(L.base_scale, o) * acc_w[o] + (L.out_bias ? L.out_bias[o] : 0.0f);
  }
}

/// One batch row for a dense basis (RBF, Chebyshev): per input, all M basis values,
/// P[q] = sum_m b[m] * Ct[m][q] (in order of m), S = sum_m b[m].
static void forward_row_dense(const Layer& L, const float* ct, const float* x, float* y,
                              const ProjectionScratch& sc, float* b) {
  float* p = sc.p;
  float* acc_g = sc.acc_g;
  float* acc_b = sc.acc_b;
  float* acc_w = sc.acc_w;
  for (int64_t o = 0; o < L.n_out; ++o) acc_g[o] = acc_b[o] = acc_w[o] = 0.0f;
  for (int64_t i = 0; i < L.n_in; ++i) {
    const float xi = x[i];
    dense_basis(L, i, xi, b);
    for (int64_t q = 0; q < L.K; ++q) p[q] = b[0] * ct[q];
    float s = b[0];
    for (int64_t m = 1; m < L.M; ++m) {
      axpy_plain(p, ct + m * L.K, b[m], L.K);
      s += b[m];
    }
    gather_dispatch(L, i, p, acc_g);
    if (L.edge_bias.data) edge_axpy(L.edge_bias, i, L.n_out, s, acc_b);
    if (L.base_weight.data) edge_axpy(L.base_weight, i, L.n_out, base_act(L, xi), acc_w);
  }
  for (int64_t o = 0; o < L.n_out; ++o) {
    y[o] = scale_or_one(L.gain_scale, o) * acc_g[o] +
           scale_or_one(L.edge_bias_scale, o) * acc_b[o] +
           scale_or_one(L.base_scale, o) * acc_w[o] + (L.out_bias ? L.out_bias[o] : 0.0f);
  }
}

// ---- decoded-tile strategy -------------------------------------------------------------

/// w[m][o] = gg[o] * Ct[m][q[o]] for rows m in [m_lo, m_hi].
LUTHAM_HOT static void decode_rows(const float* __restrict ct, int64_t K, const int32_t* q,
                                   const float* gg, int64_t m_lo, int64_t m_hi,
                                   float* __restrict w, int64_t n_out) {
  for (int64_t m = m_lo; m <= m_hi; ++m) {
    const float* __restrict crow = ct + m * K;
    float* __restrict wrow = w + m * n_out;
    for (int64_t o = 0; o < n_out; ++o) wrow[o] = gg[o] * crow[q[o]];
  }
}

/// y[o] += sum_t c[t] * w[t][o] for N terms (N fixed: y[o] stays in a register).
template <int N>
LUTHAM_HOT static void axpy_terms(float* __restrict y, const float* const* w, const float* c,
                                  int64_t n) {
  const float* __restrict w0 = w[0];
  const float* __restrict w1 = w[N > 1 ? 1 : 0];
  const float* __restrict w2 = w[N > 2 ? 2 : 0];
  const float* __restrict w3 = w[N > 3 ? 3 : 0];
  const float* __restrict w4 = w[N > 4 ? 4 : 0];
  const float* __restrict w5 = w[N > 5 ? 5 : 0];
  const float c0 = c[0], c1 = c[N > 1 ? 1 : 0], c2 = c[N > 2 ? 2 : 0], c3 = c[N > 3 ? 3 : 0],
              c4 = c[N > 4 ? 4 : 0], c5 = c[N > 5 ? 5 : 0];
  for (int64_t o = 0; o < n; ++o) {
    float acc = y[o] + c0 * w0[o];
    if (N > 1) acc += c1 * w1[o];
    if (N > 2) acc += c2 * w2[o];
    if (N > 3) acc += c3 * w3[o];
    if (N > 4) acc += c4 * w4[o];
    if (N > 5) acc += c5 * w5[o];
    y[o] = acc;
  }
}

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
  switch (L.code_type) {
    case CodeType::kU8:
      return L.gains.is_i8 ? load_codes_gains<uint8_t, int8_t>(L, i, q, gg)
                           : load_codes_gains<uint8_t, float>(L, i, q, gg);
    case CodeType::kI16:
      return L.gains.is_i8 ? load_codes_gains<int16_t, int8_t>(L, i, q, gg)
                           : load_codes_gains<int16_t, float>(L, i, q, gg);
    case CodeType::kI32:
      return L.gains.is_i8 ? load_codes_gains<int32_t, int8_t>(L, i, q, gg)
                           : load_codes_gains<int32_t, float>(L, i, q, gg);
  }
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

/// Evaluates the layer for B rows of x (B, n_in) into y (B, n_out).
/// Returns kTooLarge when the scratch memory would exceed kMaxScratchBytes (nothing is
/// written), kNoMemory when it cannot be allocated.
static ScratchStatus forward(const Layer& L, const float* x, int64_t B, float* y) {
  if (B == 0 || L.n_out == 0) return ScratchStatus::kOk;
  const bool dense = L.basis != kBasisBSpline;
  const int64_t tile = std::min(B, kBatchTile);
  bool decoded = !dense && B >= kDecodeMinBatch;
  if (decoded) {
    // The decoded block (M x n_out) can exceed the cap where the projection tables do not.
    Scratch probe(/*measure_only=*/true);
    probe.get<float>(L.K, L.M + 1);
    decoded_scratch(probe, L, tile);
    decoded = probe.ok();
  }
  Scratch mem;
  // codebook transposed to (M, K) plus a zero row: the rows the hot loops read
  float* ct = mem.get<float>(L.K, L.M + 1);
  ProjectionScratch ps{};
  DecodedScratch ds{};
  float* bd = dense ? mem.get<float>(L.M) : nullptr;
  if (decoded) {
    ds = decoded_scratch(mem, L, tile);
  } else {
    ps = {mem.get<float>(L.K), mem.get<float>(L.n_out), mem.get<float>(L.n_out),
          mem.get<float>(L.n_out)};
  }
  if (!mem.ok()) return mem.status();
  for (int64_t q = 0; q < L.K; ++q)
    for (int64_t m = 0; m < L.M; ++m) ct[m * L.K + q] = L.codebook[q * L.M + m];
  for (int64_t q = 0; q < L.K; ++q) ct[L.M * L.K + q] = 0.0f;
  if (decoded) {
    for (int64_t b0 = 0; b0 < B; b0 += kBatchTile) {
      const int64_t nb = std::min(kBatchTile, B - b0);
      forward_decoded(L, ct, x + b0 * L.n_in, nb, y + b0 * L.n_out, ds);
    }
  } else if (dense) {
    for (int64_t bi = 0; bi < B; ++bi)
      forward_row_dense(L, ct, x + bi * L.n_in, y + bi * L.n_out, ps, bd);
  } else {
    for (int64_t bi = 0; bi < B; ++bi)
      forward_row_projection(L, ct, x + bi * L.n_in, y + bi * L.n_out, ps);
  }
  return ScratchStatus::kOk;
}

// ---------------------------------------------------------------------------------------
// Validation + the ExecuTorch entry point.

static bool is_absent(const Tensor& t) { return t.dim() == 1 && t.size(0) == 0; }

static bool is_contiguous(const Tensor& t) {
  const auto strides = t.strides();
  const auto sizes = t.sizes();
  int64_t expected = 1;
  bool overflow = false;  // an empty tensor's other dims can make the product overflow
  for (ssize_t d = t.dim() - 1; d >= 0; --d) {
    if (sizes[d] != 1 && (overflow || strides[d] != expected)) return false;
    overflow = overflow || !checked_mul(expected, static_cast<int64_t>(sizes[d]), &expected);
  }
  for (ssize_t d = 0; d < t.dim(); ++d) {
    if (t.dim_order()[d] != static_cast<uint8_t>(d)) return false;
  }
  return true;
}

static const char* dtype_name(ScalarType s) {
  switch (s) {
    case ScalarType::Byte: return "uint8";
    case ScalarType::Char: return "int8";
    case ScalarType::Short: return "int16";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Bool: return "bool";
    default: return "unsupported";
  }
}

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

/// Index of the first non-finite value of v[0..n), or -1.
static int64_t first_non_finite(const float* v, int64_t n) {
  if (!any_non_finite(v, n)) return -1;
  for (int64_t e = 0; e < n; ++e)
    if (!std::isfinite(v[e])) return e;
  return -1;
}

/// Checks a (n_out,) float32 scale-like tensor that may be absent, finite like in the Rust
/// evaluator. Sets *ptr (nullptr when absent).
static bool check_vector(KernelRuntimeContext& ctx, const Tensor& t, const char* name,
                         int64_t n_out, const float** ptr) {
  *ptr = nullptr;
  if (is_absent(t)) return true;
  ET_KERNEL_CHECK_MSG(ctx, t.scalar_type() == ScalarType::Float, InvalidArgument, false,
                      "lutham: %s must be float32, got %s", name, dtype_name(t.scalar_type()));
  ET_KERNEL_CHECK_MSG(ctx, t.dim() == 1 && t.size(0) == n_out, InvalidArgument, false,
                      "lutham: %s must have shape (n_out=%lld,) or (0,) when absent", name,
                      static_cast<long long>(n_out));
  ET_KERNEL_CHECK_MSG(ctx, is_contiguous(t), InvalidArgument, false,
                      "lutham: %s must be contiguous", name);
  const int64_t bad = first_non_finite(t.const_data_ptr<float>(), n_out);
  ET_KERNEL_CHECK_MSG(ctx, bad < 0, InvalidArgument, false,
                      "lutham: %s[%lld] = %g is not finite", name, static_cast<long long>(bad),
                      bad < 0 ? 0.0 : static_cast<double>(t.const_data_ptr<float>()[bad]));
  *ptr = t.const_data_ptr<float>();
  return true;
}

/// Checks an (n_in, n_out) int8/float32 per-edge tensor; absent allowed when `optional`.
static bool check_edge(KernelRuntimeContext& ctx, const Tensor& t, const char* name,
                       int64_t n_in, int64_t n_out, bool optional, EdgeTensor* e) {
  *e = EdgeTensor{};
  if (optional && is_absent(t)) return true;
  const ScalarType st = t.scalar_type();
  ET_KERNEL_CHECK_MSG(ctx, st == ScalarType::Char || st == ScalarType::Float, InvalidArgument,
                      false, "lutham: %s must be int8 or float32, got %s", name,
                      dtype_name(st));
  ET_KERNEL_CHECK_MSG(ctx, t.dim() == 2 && t.size(0) == n_in && t.size(1) == n_out,
                      InvalidArgument, false,
                      "lutham: %s must have shape (n_in=%lld, n_out=%lld)%s", name,
                      static_cast<long long>(n_in), static_cast<long long>(n_out),
                      optional ? " or (0,) when absent" : "");
  ET_KERNEL_CHECK_MSG(ctx, is_contiguous(t), InvalidArgument, false,
                      "lutham: %s must be contiguous", name);
  if (st == ScalarType::Float) {  // int8 weights are always finite
    // n_in * n_out is the numel of this tensor: no overflow
    const float* v = t.const_data_ptr<float>();
    const int64_t bad = first_non_finite(v, n_in * n_out);
    ET_KERNEL_CHECK_MSG(ctx, bad < 0, InvalidArgument, false,
                        "lutham: %s[%lld, %lld] = %g is not finite", name,
                        static_cast<long long>(bad < 0 ? 0 : bad / n_out),
                        static_cast<long long>(bad < 0 ? 0 : bad % n_out),
                        bad < 0 ? 0.0 : static_cast<double>(v[bad]));
  }
  e->data = t.const_data_ptr();
  e->is_i8 = st == ScalarType::Char;
  return true;
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

Tensor& lutham_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& grid,
                   const Tensor& codebook, const Tensor& codes, const Tensor& gains,
                   const Tensor& gain_scale, const Tensor& edge_bias,
                   const Tensor& edge_bias_scale, const Tensor& out_bias,
                   const Tensor& base_weight, const Tensor& base_scale, int64_t k,
                   int64_t basis, double h, int64_t base_act_kind, Tensor& out) {
  // --- x, codebook, k, grid
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "lutham: x must be float32, got %s", dtype_name(x.scalar_type()));
  ET_KERNEL_CHECK_MSG(ctx, x.dim() == 2, InvalidArgument, out,
                      "lutham: x must be 2-D (batch, n_in), got %zd dims", x.dim());
  ET_KERNEL_CHECK_MSG(ctx, is_contiguous(x), InvalidArgument, out,
                      "lutham: x must be contiguous");
  ET_KERNEL_CHECK_MSG(ctx, out.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "lutham: out must be float32, got %s", dtype_name(out.scalar_type()));
  ET_KERNEL_CHECK_MSG(ctx, basis == kBasisBSpline || basis == kBasisRbf ||
                               basis == kBasisChebyshev,
                      InvalidArgument, out,
                      "lutham: basis=%lld must be 0 (B-spline), 1 (RBF) or 2 (Chebyshev)",
                      static_cast<long long>(basis));
  ET_KERNEL_CHECK_MSG(ctx, base_act_kind == kActSilu || base_act_kind == kActGelu,
                      InvalidArgument, out, "lutham: base_act=%lld must be 0 (SiLU) or 1 (GELU)",
                      static_cast<long long>(base_act_kind));
  // h is used as float32 (the value the Rust evaluator sees); checked in range before the
  // conversion, and after it: a tiny h rounds to 0, or has no finite float32 reciprocal
  // (the rule the Rust evaluator applies).
  const bool h_in_range = h > 0.0 && h <= 3.4028234663852886e38;
  const float h32 = h_in_range ? static_cast<float>(h) : 0.0f;
  ET_KERNEL_CHECK_MSG(ctx,
                      basis != kBasisRbf ||
                          (h32 > 0.0f && std::isfinite(1.0f / h32)),
                      InvalidArgument, out,
                      "lutham: RBF width h=%g must be finite and > 0 with a finite reciprocal "
                      "as float32", h);
  if (basis != kBasisBSpline) k = 0;  // the spline order is read by B-splines only
  ET_KERNEL_CHECK_MSG(ctx, k >= 0 && k <= kMaxSplineOrder, InvalidArgument, out,
                      "lutham: spline order k=%lld outside [0, %lld]",
                      static_cast<long long>(k), static_cast<long long>(kMaxSplineOrder));
  ET_KERNEL_CHECK_MSG(ctx, codebook.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "lutham: codebook must be float32, got %s",
                      dtype_name(codebook.scalar_type()));
  ET_KERNEL_CHECK_MSG(ctx, codebook.dim() == 2 && codebook.size(0) >= 1, InvalidArgument, out,
                      "lutham: codebook must be 2-D (K >= 1, M)");
  ET_KERNEL_CHECK_MSG(ctx, is_contiguous(codebook), InvalidArgument, out,
                      "lutham: codebook must be contiguous");
  Layer L;
  const int64_t B = x.size(0);
  L.n_in = x.size(1);
  L.K = codebook.size(0);
  L.M = codebook.size(1);
  L.k = k;
  L.basis = basis;
  L.h = h_in_range ? static_cast<double>(static_cast<float>(h)) : 1.0;
  L.base_act = base_act_kind;
  const int64_t bad_cb = first_non_finite(codebook.const_data_ptr<float>(), codebook.numel());
  ET_KERNEL_CHECK_MSG(ctx, bad_cb < 0, InvalidArgument, out,
                      "lutham: codebook[%lld, %lld] = %g is not finite",
                      static_cast<long long>(bad_cb < 0 || L.M == 0 ? 0 : bad_cb / L.M),
                      static_cast<long long>(bad_cb < 0 || L.M == 0 ? 0 : bad_cb % L.M),
                      bad_cb < 0 ? 0.0
                                 : static_cast<double>(codebook.const_data_ptr<float>()[bad_cb]));
  ET_KERNEL_CHECK_MSG(ctx, L.M >= k + 1, InvalidArgument, out,
                      "lutham: codebook width M=%lld must be G + k with G >= 1 (k=%lld), or "
                      ">= 1 for RBF / Chebyshev",
                      static_cast<long long>(L.M), static_cast<long long>(k));
  ET_KERNEL_CHECK_MSG(ctx, grid.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "lutham: grid must be float32, got %s", dtype_name(grid.scalar_type()));
  ET_KERNEL_CHECK_MSG(ctx, grid.dim() == 2, InvalidArgument, out,
                      "lutham: grid must be 2-D, got %zd dims", grid.dim());
  ET_KERNEL_CHECK_MSG(ctx, is_contiguous(grid), InvalidArgument, out,
                      "lutham: grid must be contiguous");
  L.grid = grid.const_data_ptr<float>();
  L.shared_grid = grid.size(0) == 1;
  L.codebook = codebook.const_data_ptr<float>();
  if (basis == kBasisBSpline) {
    int64_t n_knots = 0;  // M + k + 1 (G + 2k + 1)
    ET_KERNEL_CHECK_MSG(ctx, checked_add(L.M, k + 1, &n_knots), InvalidArgument, out,
                        "lutham: M + k + 1 overflows (M=%lld, k=%lld)",
                        static_cast<long long>(L.M), static_cast<long long>(k));
    ET_KERNEL_CHECK_MSG(ctx,
                        (grid.size(0) == L.n_in || grid.size(0) == 1) &&
                            grid.size(1) == n_knots,
                        InvalidArgument, out,
                        "lutham: grid must have shape (n_in=%lld or 1, M+k+1=%lld) for M=%lld, "
                        "k=%lld",
                        static_cast<long long>(L.n_in), static_cast<long long>(n_knots),
                        static_cast<long long>(L.M), static_cast<long long>(k));
    for (int64_t i = 0; i < grid.size(0); ++i) {
      const float* g = L.grid + i * n_knots;
      bool ok = std::isfinite(g[0]);
      for (int64_t t = 1; t < n_knots; ++t) ok = ok && std::isfinite(g[t]) && g[t] > g[t - 1];
      ET_KERNEL_CHECK_MSG(ctx, ok, InvalidArgument, out,
                          "lutham: grid row %lld must be finite and strictly increasing",
                          static_cast<long long>(i));
      int64_t lo = 0, hi = 0;
      const KnotSpacing sp = check_knot_spacing(g, n_knots, k, &lo, &hi);
      ET_KERNEL_CHECK_MSG(ctx, sp != KnotSpacing::kTooSmall, InvalidArgument, out,
                          "lutham: grid row %lld: knot spacing too small for float32: "
                          "1 / (t[%lld] - t[%lld]) = 1 / (%g - %g) is not finite",
                          static_cast<long long>(i), static_cast<long long>(hi),
                          static_cast<long long>(lo), static_cast<double>(g[hi]),
                          static_cast<double>(g[lo]));
      ET_KERNEL_CHECK_MSG(ctx, sp != KnotSpacing::kTooWide, InvalidArgument, out,
                          "lutham: grid row %lld: knot range too wide for float32: "
                          "t[%lld] - t[%lld] = %g - %g overflows",
                          static_cast<long long>(i), static_cast<long long>(hi),
                          static_cast<long long>(lo), static_cast<double>(g[hi]),
                          static_cast<double>(g[lo]));
    }
  } else if (basis == kBasisRbf) {
    ET_KERNEL_CHECK_MSG(ctx,
                        (grid.size(0) == L.n_in || grid.size(0) == 1) && grid.size(1) == L.M,
                        InvalidArgument, out,
                        "lutham: RBF centres must have shape (n_in=%lld or 1, M=%lld)",
                        static_cast<long long>(L.n_in), static_cast<long long>(L.M));
    // grid.size(0) * M is the numel of grid: no overflow
    ET_KERNEL_CHECK_MSG(ctx, first_non_finite(L.grid, grid.size(0) * L.M) < 0,
                        InvalidArgument, out, "lutham: RBF centres must be finite");
  }
  // --- codes
  const ScalarType ct = codes.scalar_type();
  ET_KERNEL_CHECK_MSG(ctx, ct == ScalarType::Byte || ct == ScalarType::Short ||
                               ct == ScalarType::Int,
                      InvalidArgument, out, "lutham: codes must be uint8, int16 or int32, got %s",
                      dtype_name(ct));
  ET_KERNEL_CHECK_MSG(ctx, codes.dim() == 2 && codes.size(0) == L.n_in, InvalidArgument, out,
                      "lutham: codes must have shape (n_in=%lld, n_out)",
                      static_cast<long long>(L.n_in));
  ET_KERNEL_CHECK_MSG(ctx, is_contiguous(codes), InvalidArgument, out,
                      "lutham: codes must be contiguous");
  L.n_out = codes.size(1);
  L.codes = codes.const_data_ptr();
  int64_t bad_index = -1, bad_value = 0;
  bool codes_ok = true;
  int64_t n_edges = 0;
  ET_KERNEL_CHECK_MSG(ctx, checked_mul(L.n_in, L.n_out, &n_edges), InvalidArgument, out,
                      "lutham: n_in * n_out overflows (n_in=%lld, n_out=%lld)",
                      static_cast<long long>(L.n_in), static_cast<long long>(L.n_out));
  if (ct == ScalarType::Byte) {
    L.code_type = CodeType::kU8;
    if (L.K < 256)
      codes_ok = codes_in_range(codes.const_data_ptr<uint8_t>(), n_edges, L.K, &bad_index,
                                &bad_value);
  } else if (ct == ScalarType::Short) {
    L.code_type = CodeType::kI16;
    codes_ok = codes_in_range(codes.const_data_ptr<int16_t>(), n_edges, L.K, &bad_index,
                              &bad_value);
  } else {
    L.code_type = CodeType::kI32;
    codes_ok = codes_in_range(codes.const_data_ptr<int32_t>(), n_edges, L.K, &bad_index,
                              &bad_value);
  }
  ET_KERNEL_CHECK_MSG(ctx, codes_ok, InvalidArgument, out,
                      "lutham: codes[%lld, %lld] = %lld outside [0, K=%lld)",
                      static_cast<long long>(L.n_out ? bad_index / L.n_out : 0),
                      static_cast<long long>(L.n_out ? bad_index % L.n_out : 0),
                      static_cast<long long>(bad_value), static_cast<long long>(L.K));
  // --- per-edge tensors and their scales
  if (!check_edge(ctx, gains, "gains", L.n_in, L.n_out, false, &L.gains)) return out;
  if (!check_vector(ctx, gain_scale, "gain_scale", L.n_out, &L.gain_scale)) return out;
  if (!check_edge(ctx, edge_bias, "edge_bias", L.n_in, L.n_out, true, &L.edge_bias)) return out;
  if (!check_vector(ctx, edge_bias_scale, "edge_bias_scale", L.n_out, &L.edge_bias_scale))
    return out;
  ET_KERNEL_CHECK_MSG(ctx, L.edge_bias.data || !L.edge_bias_scale || L.n_out == 0,
                      InvalidArgument, out, "lutham: edge_bias_scale given without edge_bias");
  if (!check_vector(ctx, out_bias, "out_bias", L.n_out, &L.out_bias)) return out;
  if (!check_edge(ctx, base_weight, "base_weight", L.n_in, L.n_out, true, &L.base_weight))
    return out;
  if (!check_vector(ctx, base_scale, "base_scale", L.n_out, &L.base_scale)) return out;
  ET_KERNEL_CHECK_MSG(ctx, L.base_weight.data || !L.base_scale || L.n_out == 0,
                      InvalidArgument, out, "lutham: base_scale given without base_weight");
  // --- out
  executorch::aten::SizesType out_sizes[2] = {
      static_cast<executorch::aten::SizesType>(B),
      static_cast<executorch::aten::SizesType>(L.n_out)};
  ET_KERNEL_CHECK_MSG(ctx,
                      executorch::runtime::resize_tensor(out, {out_sizes, 2}) == Error::Ok,
                      InvalidArgument, out, "lutham: cannot resize out to (%lld, %lld)",
                      static_cast<long long>(B), static_cast<long long>(L.n_out));
  ET_KERNEL_CHECK_MSG(ctx, is_contiguous(out), InvalidArgument, out,
                      "lutham: out must be contiguous");
  const ScratchStatus st =
      forward(L, x.const_data_ptr<float>(), B, out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, st != ScratchStatus::kTooLarge, InvalidArgument, out,
                      "lutham: scratch memory for K=%lld, M=%lld, n_in=%lld, n_out=%lld exceeds "
                      "the kernel's cap of %llu bytes",
                      static_cast<long long>(L.K), static_cast<long long>(L.M),
                      static_cast<long long>(L.n_in), static_cast<long long>(L.n_out),
                      static_cast<unsigned long long>(kMaxScratchBytes));
  ET_KERNEL_CHECK_MSG(ctx, st == ScratchStatus::kOk, MemoryAllocationFailed, out,
                      "lutham: cannot allocate scratch memory");
  return out;
}

}  // namespace lutham
}  // namespace sharekan

EXECUTORCH_LIBRARY(sharekan, "lutham.out", sharekan::lutham::lutham_out);
