// lutham_runner: run an ExecuTorch .pte on inputs read from a text file; no Python.
//
// Usage:
//   lutham_runner MODEL.pte INPUT.txt [--method NAME] [--repeat N] [--threads 1]
//
// It links ExecuTorch's optimized CPU kernels and the LUTHAM kernel library
// (libsharekan_lutham.so), so dense and LUTHAM programs both run.
//
// Input file format (text, whitespace separated, '#' starts a comment to end of line):
//   tensor f32 NDIM D0 ... D{NDIM-1}
//   V0 V1 ... V{D0*...*D{NDIM-1}-1}        (row-major float32 values; nan/inf allowed,
//                                           %.9g round-trips float32 exactly)
// One `tensor` block per method input, in order.
//
// Output (stdout), one block per method output:
//   output I f32 NDIM D0 ... D{NDIM-1}
//   one line per last-dimension row, values printed with %.9g
// Limits (exit 1 with a message otherwise): NDIM <= 8, each dim in [0, 2^31-1], the
// product of the dims at most 2^31-1, no more values declared than the rest of the file
// can hold (2 bytes each), a file of at most 256 MiB (lutham/input_file.h).
// Threads: kernels that use ExecuTorch's threadpool (the LUTHAM kernel, the optimized
// kernels) run on all of its threads (one per performant core); --threads 1 disables the
// pool (NoThreadPoolGuard), so every kernel runs on the calling thread.
// With --repeat N (0 <= N <= 1000000) the method runs N extra times and the median / min
// wall time per call (microseconds) is printed to stderr as
// `timing median_us=... min_us=... n=N`.
//
// Exit status: 0 ok, 1 usage or input-file error, 2 load error, 3 execution error (the
// ExecuTorch error code is printed, e.g. 0x12 InvalidArgument from a failed kernel check).

#include <executorch/extension/module/module.h>
#include <executorch/extension/threadpool/threadpool_guard.h>
#include <executorch/extension/tensor/tensor.h>

#include "input_file.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;

namespace {

/// Upper bound of --repeat (timing runs; the per-run times are kept for the median).
constexpr long long kMaxRepeat = 1000000;

void print_tensor(size_t index, const executorch::aten::Tensor& t) {
  std::printf("output %zu ", index);
  if (t.scalar_type() != ScalarType::Float) {
    std::printf("dtype=%d (not printed)\n", static_cast<int>(t.scalar_type()));
    return;
  }
  std::printf("f32 %zd", t.dim());
  for (ssize_t d = 0; d < t.dim(); ++d) std::printf(" %zd", static_cast<ssize_t>(t.size(d)));
  std::printf("\n");
  const float* v = t.const_data_ptr<float>();
  const ssize_t n = t.numel();
  const ssize_t row = t.dim() > 0 && t.size(t.dim() - 1) > 0 ? t.size(t.dim() - 1) : 1;
  for (ssize_t e = 0; e < n; ++e) {
    std::printf("%.9g%c", static_cast<double>(v[e]), (e + 1) % row == 0 ? '\n' : ' ');
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: %s MODEL.pte INPUT.txt [--method NAME] [--repeat N] [--threads 1]\n",
                 argv[0]);
    return 1;
  }
  std::string method = "forward";
  long long repeat = 0;
  long long threads = 0;  // 0: the threadpool's default
  for (int a = 3; a < argc; ++a) {
    const bool has_value = a + 1 < argc;
    if (std::strcmp(argv[a], "--method") == 0 && has_value) {
      method = argv[++a];
    } else if (std::strcmp(argv[a], "--repeat") == 0 && has_value) {
      const std::string v = argv[++a];
      if (!lutham_input::parse_int(v, &repeat) || repeat < 0 || repeat > kMaxRepeat) {
        std::fprintf(stderr, "error: --repeat must be an integer in [0, %lld], got %s\n",
                     kMaxRepeat, lutham_input::quote(v).c_str());
        return 1;
      }
    } else if (std::strcmp(argv[a], "--threads") == 0 && has_value) {
      const std::string v = argv[++a];
      if (!lutham_input::parse_int(v, &threads) || threads != 1) {
        std::fprintf(stderr, "error: --threads takes 1 (omit it to use every core), got %s\n",
                     lutham_input::quote(v).c_str());
        return 1;
      }
    } else if (std::strcmp(argv[a], "--method") == 0 || std::strcmp(argv[a], "--repeat") == 0 ||
               std::strcmp(argv[a], "--threads") == 0) {
      std::fprintf(stderr, "error: %s needs a value\n", argv[a]);
      return 1;
    } else {
      std::fprintf(stderr, "error: unknown argument %s\n", argv[a]);
      return 1;
    }
  }
  // Thread-local: every execute below runs on this thread.
  if (threads == 1) executorch::extension::threadpool::NoThreadPoolGuard::set_enabled(true);
  std::vector<lutham_input::Tensor> inputs;
  std::string err;
  if (!lutham_input::read_inputs(argv[2], &inputs, &err)) {
    std::fprintf(stderr, "error: %s: %s\n", argv[2], err.c_str());
    return 1;
  }
  Module module(argv[1], Module::LoadMode::MmapUseMlockIgnoreErrors);
  const auto load_err = module.load_method(method);
  if (load_err != executorch::runtime::Error::Ok) {
    std::fprintf(stderr, "error: cannot load method '%s' of %s: 0x%x %s\n", method.c_str(),
                 argv[1], static_cast<unsigned>(load_err), executorch::runtime::to_string(load_err));
    return 2;
  }
  std::vector<TensorPtr> holders;
  std::vector<EValue> evalues;
  for (auto& t : inputs) {
    if (t.values.empty()) t.values.reserve(1);  // an empty tensor still gets a valid pointer
    holders.push_back(from_blob(t.values.data(), t.sizes, ScalarType::Float));
    evalues.emplace_back(*holders.back());
  }
  auto result = module.execute(method, evalues);
  if (!result.ok()) {
    std::fprintf(stderr, "error: executing '%s' failed: 0x%x %s\n", method.c_str(),
                 static_cast<unsigned>(result.error()), executorch::runtime::to_string(result.error()));
    return 3;
  }
  for (size_t i = 0; i < result->size(); ++i) {
    const EValue& v = (*result)[i];
    if (v.isTensor()) {
      print_tensor(i, v.toTensor());
    } else {
      std::printf("output %zu (not a tensor)\n", i);
    }
  }
  if (repeat > 0) {
    std::vector<double> us;
    us.reserve(static_cast<size_t>(repeat));
    for (long long r = 0; r < repeat; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      auto res = module.execute(method, evalues);
      const auto t1 = std::chrono::steady_clock::now();
      if (!res.ok()) {
        std::fprintf(stderr, "error: repeat %lld failed: 0x%x\n", r,
                     static_cast<unsigned>(res.error()));
        return 3;
      }
      us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    std::sort(us.begin(), us.end());
    std::fprintf(stderr, "timing median_us=%.2f min_us=%.2f n=%lld\n", us[us.size() / 2],
                 us.front(), repeat);
  }
  return 0;
}
