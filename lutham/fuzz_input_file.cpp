// libFuzzer harness for lutham_runner's input-file parser (input_file.h).
//
//   make -C lutham fuzz FUZZ_SECONDS=60      # clang++ -fsanitize=fuzzer,address,undefined
//
// Besides ASan / UBSan reports, the parser's contract is checked on every input: on
// success every tensor has at most kMaxDims non-negative dims, exactly product(dims)
// values, and no more values than the input's size allows (2 bytes each); on failure an
// error message. A violation aborts (a libFuzzer crash).

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "input_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<lutham_input::Tensor> tensors;
  std::string err;
  const bool ok =
      lutham_input::parse(reinterpret_cast<const char*>(data), size, &tensors, &err);
  if (!ok) {
    if (err.empty()) std::abort();
    return 0;
  }
  uint64_t total = 0;
  for (const auto& t : tensors) {
    if (static_cast<long long>(t.sizes.size()) > lutham_input::kMaxDims) std::abort();
    uint64_t numel = 1;
    for (int32_t d : t.sizes) {
      if (d < 0) std::abort();
      numel *= static_cast<uint64_t>(d);  // bounded by the parser: cannot wrap
    }
    if (numel != t.values.size()) std::abort();
    total += numel;
  }
  if (total > size / 2) std::abort();
  return 0;
}
