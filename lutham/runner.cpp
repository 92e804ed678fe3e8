// lutham_runner: run an ExecuTorch .pte on inputs read from a text file; no Python.
//
// Usage:
//   lutham_runner MODEL.pte INPUT.txt [--method NAME] [--repeat N]
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
// With --repeat N the method runs N extra times and the median / min wall time per call
// (microseconds) is printed to stderr as `timing median_us=... min_us=... n=N`.
//
// Exit status: 0 ok, 1 usage or input-file error, 2 load error, 3 execution error (the
// ExecuTorch error code is printed, e.g. 0x12 InvalidArgument from a failed kernel check).

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;

namespace {

struct InputTensor {
  std::vector<executorch::aten::SizesType> sizes;
  std::vector<float> values;
};

bool next_token(std::istream& in, std::string* tok) {
  while (in >> *tok) {
    if ((*tok)[0] == '#') {
      std::string rest;
      std::getline(in, rest);
      continue;
    }
    return true;
  }
  return false;
}

bool parse_int(const std::string& s, long long* v) {
  char* end = nullptr;
  errno = 0;
  *v = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && end && *end == '\0' && !s.empty();
}

bool read_inputs(const char* path, std::vector<InputTensor>* out, std::string* err) {
  std::ifstream in(path);
  if (!in) {
    *err = std::string("cannot open input file ") + path;
    return false;
  }
  std::string tok;
  while (next_token(in, &tok)) {
    if (tok != "tensor") {
      *err = "expected 'tensor', got '" + tok + "'";
      return false;
    }
    std::string dtype;
    if (!next_token(in, &dtype) || dtype != "f32") {
      *err = "only f32 tensors are supported, got '" + dtype + "'";
      return false;
    }
    long long ndim = 0;
    if (!next_token(in, &tok) || !parse_int(tok, &ndim) || ndim < 0 || ndim > 8) {
      *err = "bad ndim '" + tok + "'";
      return false;
    }
    InputTensor t;
    long long numel = 1;
    for (long long d = 0; d < ndim; ++d) {
      long long v = 0;
      if (!next_token(in, &tok) || !parse_int(tok, &v) || v < 0 || v > (1LL << 30)) {
        *err = "bad dimension '" + tok + "'";
        return false;
      }
      numel *= v;
      if (numel > (1LL << 30)) {
        *err = "tensor too large";
        return false;
      }
      t.sizes.push_back(static_cast<executorch::aten::SizesType>(v));
    }
    t.values.resize(static_cast<size_t>(numel));
    for (long long e = 0; e < numel; ++e) {
      if (!next_token(in, &tok)) {
        *err = "file ends after " + std::to_string(e) + " of " + std::to_string(numel) +
               " values";
        return false;
      }
      char* end = nullptr;
      const float v = std::strtof(tok.c_str(), &end);
      if (!end || *end != '\0') {
        *err = "bad float '" + tok + "'";
        return false;
      }
      t.values[static_cast<size_t>(e)] = v;
    }
    out->push_back(std::move(t));
  }
  return true;
}

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
    std::fprintf(stderr, "usage: %s MODEL.pte INPUT.txt [--method NAME] [--repeat N]\n",
                 argv[0]);
    return 1;
  }
  std::string method = "forward";
  long long repeat = 0;
  for (int a = 3; a < argc; ++a) {
    if (std::strcmp(argv[a], "--method") == 0 && a + 1 < argc) {
      method = argv[++a];
    } else if (std::strcmp(argv[a], "--repeat") == 0 && a + 1 < argc) {
      if (!parse_int(argv[++a], &repeat) || repeat < 0) {
        std::fprintf(stderr, "error: bad --repeat value\n");
        return 1;
      }
    } else {
      std::fprintf(stderr, "error: unknown argument %s\n", argv[a]);
      return 1;
    }
  }
  std::vector<InputTensor> inputs;
  std::string err;
  if (!read_inputs(argv[2], &inputs, &err)) {
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
