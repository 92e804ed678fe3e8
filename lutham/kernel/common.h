// LUTHAM kernel: the shared vocabulary of the runtime-neutral kernel (no ExecuTorch types).
//
// Constants, overflow-checked arithmetic, the validated layer (`Layer`), the error status
// every entry returns (`Status`) and the capped scratch allocator. Included by every other
// header of lutham/kernel/; users include lutham.h.

#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <new>
#include <type_traits>

// Hot loops (simd.h, panel.h) are cloned for x86-64-v3 (AVX2/FMA) and the default target
// with GCC on x86-64, the clone picked at load time (ifunc); elsewhere (clang, aarch64,
// -DLUTHAM_NO_MULTIVERSION for the sanitizer builds) they compile once for the target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(LUTHAM_NO_MULTIVERSION) && \
    !defined(__clang__)
#define LUTHAM_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LUTHAM_HOT
#endif

namespace sharekan {
namespace lutham {

/// Largest supported spline order k (basis values live in fixed-size stack arrays).
constexpr int64_t kMaxSplineOrder = 15;
/// Strategy choice (lutham.h decode_min_batch): per row, projection tables cost
/// n_in (K (k+1) a + n_out b) and decoded tiles n_in n_out e, plus n_in n_out M d per tile
/// to decode, with a = 0.04 ns per table term, d = 0.2 ns per decoded weight and
/// b - e = 0.1 ns per lookup (AMD EPYC, 1 thread; the crossovers it predicts, 10, 15 and 2
/// rows for 1280 x 256, 2048 x 512 and 256 x 10 layers at K = 256, measured 9-11, 12-13
/// and below 2).
constexpr int64_t kDecodeCostD = 20, kTableCostA = 4, kLookupCostBE = 10;  // x 0.01 ns
/// One lookup of the projection strategy (with its share of the row's streams), x 0.01 ns.
constexpr int64_t kLookupCostB = 40;
/// The decoded-tile strategy never runs below this many rows.
constexpr int64_t kDecodeMinBatch = 2;
/// The decoded-tile strategy processes the batch in tiles of this many rows: each weight is
/// decoded once per tile, and the tile's basis values (n_in x tile x (k+4) floats) are kept.
constexpr int64_t kDecodeTile = 512;
/// Decoded windows spanning at least this many spline rows are decoded from codebook rows
/// transposed in registers (decoded.h decode_rows_transposed); narrower ones by table reads.
constexpr int64_t kTransposedDecodeRows = 6;
/// Largest codebook copy (K x M rounded up to 8, floats) made for the transposed decode.
constexpr int64_t kMaxPaddedCodebookFloats = int64_t{4} << 20;
/// Every split of the columns between threads falls on a multiple of this many columns, so
/// each column is computed by the same vector lanes whatever the thread count.
constexpr int64_t kColumnAlign = 32;
/// Projection calls estimated below this many nanoseconds on one thread run as one unit:
/// waking the pool's threads costs more than they save (measured on the 2-core development
/// machine: 2 units made the demo head's 235 us batch-1 call 13-23 % slower).
constexpr double kMinParallelNs = 2.0e6;
/// Most work units one call is split into (bounds the per-unit scratch).
constexpr int64_t kMaxUnits = 64;
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

/// Error class of a failed check; a runtime maps it onto its own (ExecuTorch:
/// InvalidArgument 0x12, MemoryAllocationFailed 0x21).
enum class StatusCode { kOk, kInvalidArgument, kMemoryAllocationFailed };

/// Outcome of validation or evaluation: a code and, on failure, the message
/// (`lutham: <what>`, naming the argument).
struct Status {
  StatusCode code = StatusCode::kOk;
  char message[512] = {0};

  bool ok() const { return code == StatusCode::kOk; }
};

/// A failed Status with a printf-formatted message.
__attribute__((format(printf, 2, 3))) static inline Status status_error(StatusCode code,
                                                                      const char* fmt, ...) {
  Status st;
  st.code = code;
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(st.message, sizeof st.message, fmt, ap);
  va_end(ap);
  return st;
}

// ---------------------------------------------------------------------------------------
// The validated layer: plain pointers. Everything past validation assumes its invariants.

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

/// A type carried as a value, so a generic lambda can receive it.
template <typename T>
struct TypeTag {
  using type = T;
};

/// Calls f(TypeTag<CodeT>{}, TypeTag<GainT>{}) with the layer's code and gain element
/// types: the one place the (u8 | i16 | i32) x (i8 | f32) instantiations are chosen.
template <typename F>
static void with_code_gain_types(const Layer& L, F&& f) {
  const bool i8 = L.gains.is_i8;
  switch (L.code_type) {
    case CodeType::kU8:
      return i8 ? f(TypeTag<uint8_t>{}, TypeTag<int8_t>{}) : f(TypeTag<uint8_t>{}, TypeTag<float>{});
    case CodeType::kI16:
      return i8 ? f(TypeTag<int16_t>{}, TypeTag<int8_t>{}) : f(TypeTag<int16_t>{}, TypeTag<float>{});
    case CodeType::kI32:
      return i8 ? f(TypeTag<int32_t>{}, TypeTag<int8_t>{}) : f(TypeTag<int32_t>{}, TypeTag<float>{});
  }
}

// ---------------------------------------------------------------------------------------
// The call's inputs as a runtime describes them (validate.h turns them into a Layer).

/// Element type of a tensor (the runtime's dtype mapped onto these; kOther = anything else).
enum class DType { kUInt8, kInt8, kInt16, kInt32, kInt64, kFloat32, kFloat64, kFloat16,
                   kBFloat16, kBool, kOther };

/// One tensor argument: data pointer, dtype, rank, the first two sizes (the kernel reads no
/// others), element count, and whether it is C-contiguous (row-major, no gaps: the runtime's
/// judgement, e.g. strides and dim order).
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::kOther;
  int64_t dim = 0;
  int64_t sizes[2] = {0, 0};  // sizes[d] for d < min(dim, 2), else 0
  int64_t numel = 0;
  bool contiguous = false;

  int64_t size(int64_t d) const { return sizes[d]; }
};

/// Arguments of one `sharekan::lutham` call (schema in lutham.h). An optional tensor is
/// absent when it is 1-D of size 0 (any dtype). `out_dtype`: the output's element type
/// (checked with the inputs; the output's shape is the caller's, (batch, n_out)).
struct Args {
  TensorView x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale,
      out_bias, base_weight, base_scale;
  int64_t k = 0;
  int64_t basis = 0;
  double h = 1.0;
  int64_t base_act = 0;
  DType out_dtype = DType::kFloat32;
};

/// Columns [o0, o0 + n) of a layer: the share of one work unit.
struct Columns {
  int64_t o0 = 0, n = 0;
};

static inline float scale_or_one(const float* s, int64_t o) { return s ? s[o] : 1.0f; }

// ---------------------------------------------------------------------------------------
// Threads.

/// The runtime's parallel loop, passed in by the adapter (ExecuTorch: its threadpool's
/// parallel_for; a default Parallel runs everything on the calling thread). `threads` is how
/// many threads `run` may use; the kernel sizes its work units from it. Every parallel loop
/// of the kernel gives each output element to exactly one unit, computed with the same
/// operations in the same order whatever the split: results are bit-identical for any
/// thread count.
struct Parallel {
  /// Calls body(ctx, begin, end) on disjoint chunks covering [0, n); returns when all are done.
  using Body = void (*)(void* ctx, int64_t begin, int64_t end);
  using Runner = void (*)(int64_t n, Body body, void* ctx);
  Runner run = nullptr;
  int64_t threads = 1;
  /// Split into exactly `threads` units where the work allows (a setting for tests and
  /// experiments); otherwise calls too small to gain from threads run as one unit.
  bool exact = false;

  /// Runs f(begin, end) over chunks of [0, n) (on the calling thread when n <= 1 or no runner).
  template <typename F>
  void for_range(int64_t n, F&& f) const {
    if (n <= 0) return;
    if (run == nullptr || threads <= 1 || n == 1) {
      f(int64_t{0}, n);
      return;
    }
    using Fn = typename std::remove_reference<F>::type;
    run(n, [](void* ctx, int64_t b, int64_t e) { (*static_cast<Fn*>(ctx))(b, e); },
        const_cast<void*>(static_cast<const void*>(&f)));
  }
};

// ---------------------------------------------------------------------------------------
// Scratch memory.

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

}  // namespace lutham
}  // namespace sharekan
