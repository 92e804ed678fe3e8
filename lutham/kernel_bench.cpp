// kernel_bench: LUTHAM .pte programs against the dense KAN baseline kernel, in one process.
//
// Usage:
//   kernel_bench --bench --input X.bin [--batches 1,4,16,64,256,1024] [--pte NAME=PATH]...
//                [--dense NAME=PATH]... [--threads 0|1] [--warmup N] [--min-rounds N]
//                [--max-rounds N] [--seconds S] [--inner N]
//   kernel_bench --check MODEL.bin X.bin [--threads 0|1]    baseline outputs (text, %.9g)
//   kernel_bench --meta A.pte [B.pte ...]                   planned / segment bytes per method
//   kernel_bench --machine [--threads 0|1]                  FMA peak, read bandwidth, lookups
//
// --bench times every variant at every batch size round-robin (per round, --inner calls of
// each variant back to back, after warm-up calls), so load from other processes hits all
// alike, and prints one JSON object per (batch, variant) to stdout: {"batch", "name",
// "kind", "median_us", "min_us" (the last call of each round's run: the variant's weights
// as warm as its own previous call left them, what a process running only this model
// sees), "cold_median_us" (the first call: after the other variants ran and evicted part of
// the caches), "rounds", "inner"}. Rounds: enough to fill --seconds per batch (bounded by
// --min-rounds and --max-rounds). Inputs: the first `batch` rows of X.bin.
//   --pte NAME=PATH    an ExecuTorch program, run through the Module API exactly as
//                      lutham/runner.cpp runs it (this binary links the same libraries:
//                      libsharekan_lutham, executorch_kernels_optimized, executorch,
//                      executorch_threadpool; XNNPACK programs also run: the XNNPACK backend
//                      library is linked when the wheel has it)
//   --dense NAME=PATH  a dense KAN model file (below) run by lutham/baseline/dense_kan.h
//   --threads 1        everything single-threaded: the programs under
//                      executorch::extension::threadpool::NoThreadPoolGuard (for the whole
//                      process: method load included, where XNNPACK takes its pool), the
//                      baseline with a one-thread Parallel. Default (0): all cores, the
//                      runtime's threadpool for both (executorch::extension::parallel_for).
//
// File formats (little-endian; every size checked against the file before it is read; any
// violation prints an error and exits 1):
//   X.bin      "SKXF32\0\0", int64 rows, int64 cols, float32 values (rows x cols)
//   MODEL.bin  "SKDKAN01", int64 n_layers (1..64), then per layer: int64 n_in, n_out, M, k,
//              grid_rows (1 or n_in), dtype (0 = float32, 1 = int8), has_bias (0/1);
//              float32 grid (grid_rows x (M + k + 1));
//              dtype 0: float32 spline (n_out x n_in x M, scaler folded), float32 base
//                       (n_out x n_in);
//              dtype 1: int8 spline (n_out x n_in x M), int8 base (n_out x n_in), float32
//                       scale (n_out) (weight = q * scale[o]);
//              if has_bias: float32 bias (n_out). Layer l's n_in must equal layer l-1's n_out.
//
// --check prints `y ROWS COLS` and one line per row. --meta prints per program and method
// {"program", "method", "file_bytes", "planned_bytes" (sum of memory_planned_buffer_size),
// "planned_buffers", "segment_bytes" (the extended header's segment data: constant tensors
// and delegate blobs)}. --machine prints {"fma_gflops", "read_gbs": {bytes: GB/s},
// "lookup_gps" (LUTHAM's gather-accumulate), "decode_gps" (LUTHAM's decode of weight rows)}
// for the thread setting given. Every mode ends with a line
// {"peak_rss_bytes": ...} (getrusage).
//
// Exit status: 0 ok, 1 usage or file error, 2 program load error, 3 execution error.

// module.h touches its own deprecated member (a warning in every file that includes it)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <executorch/extension/module/module.h>
#pragma GCC diagnostic pop
#include <executorch/extension/tensor/tensor.h>
#include <executorch/extension/threadpool/threadpool_guard.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "baseline/dense_kan.h"

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;
using sharekan::lutham::Parallel;

namespace {

[[noreturn]] void fail(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void fail(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "error: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::exit(code);
}

/// The runtime's threadpool as a Parallel (the shape of lutham_executorch.cpp's adapter).
Parallel runtime_parallel() {
  Parallel p;
  p.threads = executorch::extension::get_thread_count();
  p.run = [](int64_t n, Parallel::Body body, void* ctx) {
    executorch::extension::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      body(ctx, begin, end);
    });
  };
  return p;
}

// ---- bounded binary reader ----------------------------------------------------------------

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail(1, "%s: cannot open", path.c_str());
    if (std::fseek(f, 0, SEEK_END) != 0) fail(1, "%s: cannot seek", path.c_str());
    const long n = std::ftell(f);
    if (n < 0 || static_cast<unsigned long>(n) > (uint64_t{4} << 30))
      fail(1, "%s: size unknown or above 4 GiB", path.c_str());
    std::rewind(f);
    data_.resize(static_cast<size_t>(n));
    if (n > 0 && std::fread(data_.data(), 1, data_.size(), f) != data_.size())
      fail(1, "%s: short read", path.c_str());
    std::fclose(f);
  }
  uint64_t left() const { return data_.size() - pos_; }
  void magic(const char* m) {
    need(8, "magic");
    if (std::memcmp(data_.data() + pos_, m, 8) != 0)
      fail(1, "%s: bad magic (expected %.8s)", path_.c_str(), m);
    pos_ += 8;
  }
  int64_t i64(const char* what, int64_t lo, int64_t hi) {
    need(8, what);
    int64_t v;
    std::memcpy(&v, data_.data() + pos_, 8);
    pos_ += 8;
    if (v < lo || v > hi)
      fail(1, "%s: %s = %lld outside [%lld, %lld]", path_.c_str(), what,
           static_cast<long long>(v), static_cast<long long>(lo), static_cast<long long>(hi));
    return v;
  }
  template <typename T>
  std::vector<T> array(uint64_t n, const char* what) {
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(sizeof(T)), &bytes)) need(~0ull, what);
    need(bytes, what);
    std::vector<T> v(static_cast<size_t>(n));
    if (bytes) std::memcpy(v.data(), data_.data() + pos_, static_cast<size_t>(bytes));
    pos_ += bytes;
    return v;
  }
  void end() {
    if (left() != 0)
      fail(1, "%s: %llu trailing bytes after the declared content", path_.c_str(),
           static_cast<unsigned long long>(left()));
  }

 private:
  void need(uint64_t bytes, const char* what) {
    if (bytes > left())
      fail(1, "%s: truncated: %s needs %llu bytes, %llu left", path_.c_str(), what,
           static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(left()));
  }
  std::string path_;
  std::vector<unsigned char> data_;
  uint64_t pos_ = 0;
};

struct Matrix {
  int64_t rows = 0, cols = 0;
  std::vector<float> v;
};

Matrix read_matrix(const std::string& path) {
  Reader r(path);
  r.magic("SKXF32\0\0");
  Matrix m;
  m.rows = r.i64("rows", 1, int64_t{1} << 24);
  m.cols = r.i64("cols", 1, int64_t{1} << 24);
  uint64_t n = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(m.rows), static_cast<uint64_t>(m.cols), &n))
    fail(1, "%s: rows x cols overflows", path.c_str());
  m.v = r.array<float>(n, "values");
  r.end();
  return m;
}

/// A dense KAN (layers in order) read from MODEL.bin.
struct DenseModel {
  std::vector<sharekan::dense_kan::DenseLayer> layers;
  std::vector<sharekan::dense_kan::Workspace> ws;
  std::vector<std::vector<float>> act;  // hidden activations

  int64_t n_in() const { return layers.front().n_in; }
  int64_t n_out() const { return layers.back().n_out; }

  void forward(const float* x, int64_t B, float* y, const Parallel& par) {
    const float* in = x;
    for (size_t l = 0; l < layers.size(); ++l) {
      float* out = y;
      if (l + 1 < layers.size()) {
        const size_t need = static_cast<size_t>(B * layers[l].n_out);
        if (act[l].size() < need) act[l].resize(need);
        out = act[l].data();
      }
      sharekan::dense_kan::forward(layers[l], in, B, out, par, &ws[l]);
      in = out;
    }
  }
};

DenseModel read_model(const std::string& path) {
  Reader r(path);
  r.magic("SKDKAN01");
  const int64_t n_layers = r.i64("n_layers", 1, 64);
  DenseModel model;
  model.layers.resize(static_cast<size_t>(n_layers));
  model.ws.resize(static_cast<size_t>(n_layers));
  model.act.resize(static_cast<size_t>(n_layers));
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  for (int64_t l = 0; l < n_layers; ++l) {
    const int64_t n_in = r.i64("n_in", 1, kMaxDim);
    const int64_t n_out = r.i64("n_out", 1, kMaxDim);
    const int64_t M = r.i64("M", 1, 4096);
    const int64_t k = r.i64("k", 0, sharekan::dense_kan::kMaxSplineOrder);
    const int64_t grid_rows = r.i64("grid_rows", 1, kMaxDim);
    const int64_t dtype = r.i64("dtype", 0, 1);
    const int64_t has_bias = r.i64("has_bias", 0, 1);
    if (grid_rows != 1 && grid_rows != n_in)
      fail(1, "%s: layer %lld: grid_rows = %lld, expected 1 or n_in = %lld", path.c_str(),
           static_cast<long long>(l), static_cast<long long>(grid_rows),
           static_cast<long long>(n_in));
    if (l > 0 && n_in != model.layers[l - 1].n_out)
      fail(1, "%s: layer %lld: n_in = %lld but the previous layer has n_out = %lld",
           path.c_str(), static_cast<long long>(l), static_cast<long long>(n_in),
           static_cast<long long>(model.layers[l - 1].n_out));
    const uint64_t edges = static_cast<uint64_t>(n_in) * static_cast<uint64_t>(n_out);
    uint64_t n_spline = 0;
    if (__builtin_mul_overflow(edges, static_cast<uint64_t>(M), &n_spline))
      fail(1, "%s: layer %lld: n_out x n_in x M overflows", path.c_str(), static_cast<long long>(l));
    const auto grid = r.array<float>(static_cast<uint64_t>(grid_rows) * (M + k + 1), "grid");
    std::string err;
    if (dtype == 0) {
      const auto spline = r.array<float>(n_spline, "spline weights");
      const auto base = r.array<float>(edges, "base weights");
      std::vector<float> bias;
      if (has_bias) bias = r.array<float>(static_cast<uint64_t>(n_out), "bias");
      err = sharekan::dense_kan::pack_f32(&model.layers[l], n_in, n_out, M, k, grid.data(),
                                          grid_rows, spline.data(), nullptr, base.data(),
                                          has_bias ? bias.data() : nullptr);
    } else {
      const auto spline = r.array<int8_t>(n_spline, "int8 spline weights");
      const auto base = r.array<int8_t>(edges, "int8 base weights");
      const auto scale = r.array<float>(static_cast<uint64_t>(n_out), "column scales");
      std::vector<float> bias;
      if (has_bias) bias = r.array<float>(static_cast<uint64_t>(n_out), "bias");
      err = sharekan::dense_kan::pack_i8(&model.layers[l], n_in, n_out, M, k, grid.data(),
                                         grid_rows, spline.data(), base.data(), scale.data(),
                                         has_bias ? bias.data() : nullptr);
    }
    if (!err.empty())
      fail(1, "%s: layer %lld: %s", path.c_str(), static_cast<long long>(l), err.c_str());
  }
  r.end();
  return model;
}

// ---- modes ------------------------------------------------------------------------------

long peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss * 1024L;
}

void print_peak_rss() { std::printf("{\"peak_rss_bytes\": %ld}\n", peak_rss_bytes()); }

int run_check(const std::string& model_path, const std::string& x_path, const Parallel& par) {
  DenseModel model = read_model(model_path);
  const Matrix x = read_matrix(x_path);
  if (x.cols != model.n_in())
    fail(1, "%s has %lld columns, the model takes %lld inputs", x_path.c_str(),
         static_cast<long long>(x.cols), static_cast<long long>(model.n_in()));
  std::vector<float> y(static_cast<size_t>(x.rows * model.n_out()));
  model.forward(x.v.data(), x.rows, y.data(), par);
  std::printf("y %lld %lld\n", static_cast<long long>(x.rows),
              static_cast<long long>(model.n_out()));
  for (int64_t b = 0; b < x.rows; ++b) {
    for (int64_t o = 0; o < model.n_out(); ++o)
      std::printf("%.9g%c", static_cast<double>(y[b * model.n_out() + o]),
                  o + 1 == model.n_out() ? '\n' : ' ');
  }
  return 0;
}

/// Segment data bytes from the .pte's extended header (at file offset 8: "eh00", u32 length,
/// u64 program_size, u64 segment_base_offset, u64 segment_data_size when length > 24).
long long segment_bytes(const std::string& path, long long* file_bytes) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(1, "%s: cannot open", path.c_str());
  unsigned char h[64] = {0};
  const size_t got = std::fread(h, 1, sizeof h, f);
  std::fseek(f, 0, SEEK_END);
  *file_bytes = std::ftell(f);
  std::fclose(f);
  if (got < 16 || std::memcmp(h + 8, "eh00", 4) != 0) return -1;
  uint32_t len = 0;
  std::memcpy(&len, h + 12, 4);
  if (len > 24 && got >= 40) {  // header: magic, length, program_size, segment_base_offset, segment_data_size
    uint64_t v = 0;
    std::memcpy(&v, h + 32, 8);
    return static_cast<long long>(v);
  }
  if (len >= 24) {  // older header without segment_data_size: segments run to the end
    uint64_t base = 0;
    std::memcpy(&base, h + 24, 8);
    return base > 0 && static_cast<long long>(base) <= *file_bytes ? *file_bytes - base : 0;
  }
  return -1;
}

int run_meta(const std::vector<std::string>& ptes) {
  for (const auto& path : ptes) {
    Module module(path, Module::LoadMode::MmapUseMlockIgnoreErrors);
    const auto names = module.method_names();
    if (!names.ok()) fail(2, "%s: cannot load program (0x%x)", path.c_str(),
                          static_cast<unsigned>(names.error()));
    long long file_bytes = 0;
    const long long seg = segment_bytes(path, &file_bytes);
    for (const auto& name : *names) {
      const auto meta = module.method_meta(name);
      if (!meta.ok()) fail(2, "%s: no meta for method %s", path.c_str(), name.c_str());
      long long planned = 0;
      const size_t nbuf = meta->num_memory_planned_buffers();
      for (size_t b = 0; b < nbuf; ++b) {
        const auto s = meta->memory_planned_buffer_size(b);
        if (s.ok()) planned += *s;
      }
      std::printf("{\"program\": \"%s\", \"method\": \"%s\", \"file_bytes\": %lld, "
                  "\"planned_bytes\": %lld, \"planned_buffers\": %zu, \"segment_bytes\": %lld}\n",
                  path.c_str(), name.c_str(), file_bytes, planned, nbuf, seg);
    }
  }
  return 0;
}

// ---- machine microbenchmarks -------------------------------------------------------------

typedef float v8f __attribute__((vector_size(32)));

/// 12 independent FMA chains of 8 floats, `iters` times: 2 * 8 * 12 * iters flops.
DENSE_KAN_HOT __attribute__((noinline)) float fma_loop(int64_t iters, float a, float b) {
  v8f acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = (v8f){} + static_cast<float>(j) * 1e-3f;
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) acc[j] = acc[j] * a + b;
  }
  v8f s = {};
  for (int j = 0; j < 12; ++j) s += acc[j];
  float r = 0;
  for (int l = 0; l < 8; ++l) r += s[l];
  return r;
}

/// Sum of n floats (n a multiple of 64), 8 vector accumulators: a streaming read.
DENSE_KAN_HOT __attribute__((noinline)) float read_sum(const float* __restrict p, int64_t n) {
  v8f a[8] = {};
  for (int64_t e = 0; e < n; e += 64) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      v8f v;
      std::memcpy(&v, p + e + 8 * j, sizeof v);
      a[j] += v;
    }
  }
  v8f s = {};
  for (int j = 0; j < 8; ++j) s += a[j];
  float r = 0;
  for (int l = 0; l < 8; ++l) r += s[l];
  return r;
}

/// LUTHAM's gather-accumulate: acc[o] += gains[o] * table[codes[o]] (u8 codes, i8 gains).
DENSE_KAN_HOT __attribute__((noinline)) void lookup_loop(const uint8_t* __restrict codes,
                                                         const int8_t* __restrict gains,
                                                         const float* __restrict table,
                                                         float* __restrict acc, int64_t n) {
  for (int64_t o = 0; o < n; ++o) acc[o] += static_cast<float>(gains[o]) * table[codes[o]];
}

/// LUTHAM's decode: w[m][o] = gg[o] * ct[m][q[o]] for rows m < n_rows (int32 codes).
DENSE_KAN_HOT __attribute__((noinline)) void decode_loop(const int32_t* __restrict q,
                                                         const float* __restrict gg,
                                                         const float* __restrict ct, int64_t K,
                                                         int64_t n_rows, float* __restrict w,
                                                         int64_t n) {
  for (int64_t m = 0; m < n_rows; ++m) {
    const float* __restrict crow = ct + m * K;
    float* __restrict wrow = w + m * n;
    for (int64_t o = 0; o < n; ++o) wrow[o] = gg[o] * crow[q[o]];
  }
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Best rate over `reps` timings of f() doing `work` units each, on every thread of `par`.
template <typename F>
double best_rate(const Parallel& par, int reps, double work_per_thread, F&& f) {
  double best = 0;
  const int64_t nt = std::max<int64_t>(1, par.threads);
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    par.for_range(nt, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) f(t);
    });
    const double dt = now_s() - t0;
    best = std::max(best, work_per_thread * static_cast<double>(nt) / dt);
  }
  return best;
}

volatile float g_sink;

int run_machine(const Parallel& par) {
  const int64_t nt = std::max<int64_t>(1, par.threads);
  const int64_t iters = 20000000;
  const double fma = best_rate(par, 5, 2.0 * 8 * 12 * iters, [&](int64_t) {
    g_sink = fma_loop(iters, 0.999f, 1e-4f);
  });
  std::printf("{\"threads\": %lld, \"fma_gflops\": %.2f, \"read_gbs\": {", static_cast<long long>(nt),
              fma / 1e9);
  const int64_t sizes[] = {16 << 10, 256 << 10, 4 << 20, 16 << 20, 256 << 20};
  bool firstp = true;
  for (int64_t bytes : sizes) {
    const int64_t n = bytes / 4;
    std::vector<std::vector<float>> bufs(static_cast<size_t>(nt));
    for (auto& b : bufs) b.assign(static_cast<size_t>(n), 1.0f);
    const int64_t reps_inner = std::max<int64_t>(1, (int64_t{1} << 30) / bytes);
    const double rate = best_rate(par, 5, static_cast<double>(bytes) * reps_inner, [&](int64_t t) {
      float s = 0;
      for (int64_t r = 0; r < reps_inner; ++r) s += read_sum(bufs[t].data(), n);
      g_sink = s;
    });
    std::printf("%s\"%lld\": %.2f", firstp ? "" : ", ", static_cast<long long>(bytes), rate / 1e9);
    firstp = false;
  }
  // lookups: 4096 edges against a 256-entry table (all in L1), as LUTHAM's projection path
  const int64_t n = 4096, reps_inner = 20000;
  std::vector<std::vector<uint8_t>> codes(static_cast<size_t>(nt));
  std::vector<std::vector<int8_t>> gains(static_cast<size_t>(nt));
  std::vector<std::vector<float>> acc(static_cast<size_t>(nt)), table(static_cast<size_t>(nt));
  uint32_t s = 12345;
  for (int64_t t = 0; t < nt; ++t) {
    for (int64_t o = 0; o < n; ++o) {
      s = s * 1664525u + 1013904223u;
      codes[t].push_back(static_cast<uint8_t>(s >> 24));
      gains[t].push_back(static_cast<int8_t>((s >> 16) & 0x7f));
    }
    acc[t].assign(static_cast<size_t>(n), 0.0f);
    table[t].assign(256, 0.5f);
  }
  const double lookups = best_rate(par, 5, static_cast<double>(n) * reps_inner, [&](int64_t t) {
    for (int64_t r = 0; r < reps_inner; ++r)
      lookup_loop(codes[t].data(), gains[t].data(), table[t].data(), acc[t].data(), n);
    g_sink = acc[t][0];
  });
  // decode: 32 columns x 13 rows per call (one panel block), 256-entry rows of the table
  const int64_t dn = 32, drows = 13, dreps = 200000;
  std::vector<std::vector<int32_t>> dq(static_cast<size_t>(nt));
  std::vector<std::vector<float>> dg(static_cast<size_t>(nt)), dct(static_cast<size_t>(nt)),
      dw(static_cast<size_t>(nt));
  for (int64_t t = 0; t < nt; ++t) {
    for (int64_t o = 0; o < dn; ++o) {
      s = s * 1664525u + 1013904223u;
      dq[t].push_back(static_cast<int32_t>(s >> 24));
    }
    dg[t].assign(static_cast<size_t>(dn), 0.5f);
    dct[t].assign(static_cast<size_t>(256 * drows), 0.25f);
    dw[t].assign(static_cast<size_t>(dn * drows), 0.0f);
  }
  const double decodes = best_rate(par, 5, static_cast<double>(dn * drows) * dreps, [&](int64_t t) {
    for (int64_t r = 0; r < dreps; ++r)
      decode_loop(dq[t].data(), dg[t].data(), dct[t].data(), 256, drows, dw[t].data(), dn);
    g_sink = dw[t][0];
  });
  std::printf("}, \"lookup_gps\": %.3f, \"decode_gps\": %.3f}\n", lookups / 1e9, decodes / 1e9);
  return 0;
}

// ---- benchmark --------------------------------------------------------------------------

struct Variant {
  std::string name, kind;  // kind: "pte" or "dense"
  std::unique_ptr<Module> module;
  DenseModel dense;
  std::vector<double> us;       // the last call of each round's run (warm)
  std::vector<double> cold_us;  // the first call of each round's run (after the others ran)
};

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  size_t p = 0;
  while (p < s.size()) {
    size_t q = s.find(',', p);
    if (q == std::string::npos) q = s.size();
    const std::string tok = s.substr(p, q - p);
    char* end = nullptr;
    const long long v = std::strtoll(tok.c_str(), &end, 10);
    if (tok.empty() || *end != '\0' || v < 1 || v > (1 << 24)) fail(1, "bad batch size '%s'", tok.c_str());
    out.push_back(v);
    p = q + 1;
  }
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int run_bench(const Matrix& x, const std::vector<int64_t>& batches, std::vector<Variant>& vs,
              const Parallel& par, int warmup, int min_rounds, int max_rounds, double seconds,
              int inner) {
  for (auto& v : vs) {
    if (v.kind == "pte") {
      const auto err = v.module->load_method("forward");
      if (err != executorch::runtime::Error::Ok)
        fail(2, "%s: cannot load method forward (0x%x)", v.name.c_str(), static_cast<unsigned>(err));
    } else if (v.dense.n_in() != x.cols) {
      fail(1, "%s takes %lld inputs, X has %lld columns", v.name.c_str(),
           static_cast<long long>(v.dense.n_in()), static_cast<long long>(x.cols));
    }
  }
  std::vector<float> y;
  for (int64_t B : batches) {
    if (B > x.rows) fail(1, "batch %lld exceeds the %lld rows of the input file",
                         static_cast<long long>(B), static_cast<long long>(x.rows));
    std::vector<float> xb(x.v.begin(), x.v.begin() + B * x.cols);
    auto input = from_blob(xb.data(), {static_cast<int>(B), static_cast<int>(x.cols)},
                           ScalarType::Float);
    std::vector<EValue> inputs{EValue(*input)};
    auto call = [&](Variant& v) {
      if (v.kind == "pte") {
        auto res = v.module->execute("forward", inputs);
        if (!res.ok()) fail(3, "%s: execute at batch %lld failed (0x%x)", v.name.c_str(),
                            static_cast<long long>(B), static_cast<unsigned>(res.error()));
      } else {
        const size_t need = static_cast<size_t>(B * v.dense.n_out());
        if (y.size() < need) y.resize(need);
        v.dense.forward(xb.data(), B, y.data(), par);
      }
    };
    double round_s = 0;
    for (auto& v : vs) {
      v.us.clear();
      v.cold_us.clear();
      for (int w = 0; w < warmup; ++w) call(v);
      const double t0 = now_s();
      call(v);
      round_s += (now_s() - t0) * inner;
    }
    const int rounds = static_cast<int>(std::min<double>(
        max_rounds, std::max<double>(min_rounds, seconds / std::max(round_s, 1e-9))));
    for (int r = 0; r < rounds; ++r) {
      for (auto& v : vs) {
        for (int j = 0; j < inner; ++j) {
          const double t0 = now_s();
          call(v);
          const double us = (now_s() - t0) * 1e6;
          if (j == 0) v.cold_us.push_back(us);
          if (j == inner - 1) v.us.push_back(us);
        }
      }
    }
    for (auto& v : vs) {
      std::printf("{\"batch\": %lld, \"name\": \"%s\", \"kind\": \"%s\", \"median_us\": %.3f, "
                  "\"min_us\": %.3f, \"cold_median_us\": %.3f, "
                  "\"rounds\": %d, \"inner\": %d}\n",
                  static_cast<long long>(B), v.name.c_str(), v.kind.c_str(), median(v.us),
                  *std::min_element(v.us.begin(), v.us.end()), median(v.cold_us), rounds, inner);
    }
    std::fflush(stdout);
  }
  return 0;
}

void usage() {
  std::fprintf(stderr,
               "usage: kernel_bench --bench --input X.bin [--batches LIST] [--pte NAME=PATH]... "
               "[--dense NAME=PATH]... [--threads 0|1] [--warmup N] [--min-rounds N] "
               "[--max-rounds N] [--seconds S] [--inner N]\n"
               "       kernel_bench --check MODEL.bin X.bin [--threads 0|1]\n"
               "       kernel_bench --meta A.pte [B.pte ...]\n"
               "       kernel_bench --machine [--threads 0|1]\n");
}

long long int_arg(const char* s, long long lo, long long hi, const char* what) {
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < lo || v > hi)
    fail(1, "%s must be an integer in [%lld, %lld], got '%s'", what, lo, hi, s);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage();
    return 1;
  }
  std::string mode = argv[1];
  int threads = 0, warmup = 3, min_rounds = 5, max_rounds = 2000, inner = 2;
  double seconds = 2.0;
  std::string input;
  std::vector<int64_t> batches{1, 4, 16, 64, 256, 1024};
  std::vector<std::pair<std::string, std::string>> ptes, denses;
  std::vector<std::string> positional;
  for (int a = 2; a < argc; ++a) {
    const std::string arg = argv[a];
    const bool has = a + 1 < argc;
    auto named = [&](std::vector<std::pair<std::string, std::string>>& into) {
      const std::string v = argv[++a];
      const size_t eq = v.find('=');
      if (eq == std::string::npos || eq == 0) fail(1, "%s needs NAME=PATH, got '%s'", arg.c_str(), v.c_str());
      into.emplace_back(v.substr(0, eq), v.substr(eq + 1));
    };
    if (arg == "--threads" && has) {
      threads = static_cast<int>(int_arg(argv[++a], 0, 1, "--threads"));
    } else if (arg == "--input" && has) {
      input = argv[++a];
    } else if (arg == "--batches" && has) {
      batches = parse_list(argv[++a]);
    } else if (arg == "--pte" && has) {
      named(ptes);
    } else if (arg == "--dense" && has) {
      named(denses);
    } else if (arg == "--warmup" && has) {
      warmup = static_cast<int>(int_arg(argv[++a], 0, 1000, "--warmup"));
    } else if (arg == "--inner" && has) {
      inner = static_cast<int>(int_arg(argv[++a], 1, 100, "--inner"));
    } else if (arg == "--min-rounds" && has) {
      min_rounds = static_cast<int>(int_arg(argv[++a], 1, 1000000, "--min-rounds"));
    } else if (arg == "--max-rounds" && has) {
      max_rounds = static_cast<int>(int_arg(argv[++a], 1, 1000000, "--max-rounds"));
    } else if (arg == "--seconds" && has) {
      seconds = std::atof(argv[++a]);
      if (!(seconds >= 0 && seconds <= 3600)) fail(1, "--seconds must be in [0, 3600]");
    } else if (arg.rfind("--", 0) == 0) {
      fail(1, "unknown or incomplete option %s", arg.c_str());
    } else {
      positional.push_back(arg);
    }
  }
  // --threads 1: the runtime's pool is off for this thread (ET kernels, LUTHAM, XNNPACK's
  // pthreadpool) for the whole run, load included; the baseline gets a serial Parallel.
  std::unique_ptr<executorch::extension::threadpool::NoThreadPoolGuard> guard;
  Parallel par;
  if (threads == 1) {
    guard.reset(new executorch::extension::threadpool::NoThreadPoolGuard());
  } else {
    par = runtime_parallel();
  }
  int rc = 0;
  if (mode == "--check") {
    if (positional.size() != 2) {
      usage();
      return 1;
    }
    rc = run_check(positional[0], positional[1], par);
  } else if (mode == "--meta") {
    if (positional.empty()) {
      usage();
      return 1;
    }
    rc = run_meta(positional);
  } else if (mode == "--machine") {
    rc = run_machine(par);
  } else if (mode == "--bench") {
    if (input.empty() || (ptes.empty() && denses.empty())) {
      usage();
      return 1;
    }
    const Matrix x = read_matrix(input);
    std::vector<Variant> vs;
    for (auto& p : ptes) {
      Variant v;
      v.name = p.first;
      v.kind = "pte";
      v.module.reset(new Module(p.second, Module::LoadMode::MmapUseMlockIgnoreErrors));
      vs.push_back(std::move(v));
    }
    for (auto& d : denses) {
      Variant v;
      v.name = d.first;
      v.kind = "dense";
      v.dense = read_model(d.second);
      vs.push_back(std::move(v));
    }
    std::printf("{\"threads\": %lld}\n", static_cast<long long>(threads == 1 ? 1 : par.threads));
    rc = run_bench(x, batches, vs, par, warmup, min_rounds, max_rounds, seconds, inner);
  } else {
    usage();
    return 1;
  }
  print_peak_rss();
  return rc;
}
