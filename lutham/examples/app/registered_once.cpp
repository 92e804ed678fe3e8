// lutham_registered_once [LIBRARY ...]: the application links sharekan::lutham directly and
// through lutham_plugin (a shared library that links it too), then dlopen()s each LIBRARY
// given; prints how many times sharekan::lutham.out is registered and exits 0 iff once.
// ExecuTorch 1.5 aborts the process on a second registration of an operator, so loading
// a second copy of the library (another file) ends here with SIGABRT; the same file, by
// any path, is one object and registers once.
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/runtime.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstring>

extern "C" int lutham_plugin_has_operator();

static int registrations() {
  int n = 0;
  for (const auto& kernel : executorch::runtime::get_registered_kernels()) {
    if (std::strcmp(kernel.name_, "sharekan::lutham.out") == 0) ++n;
  }
  return n;
}

int main(int argc, char** argv) {
  executorch::runtime::runtime_init();
  if (!lutham_plugin_has_operator()) {
    std::fprintf(stderr, "error: sharekan::lutham.out is not registered\n");
    return 1;
  }
  for (int a = 1; a < argc; ++a) {
    if (dlopen(argv[a], RTLD_NOW | RTLD_LOCAL) == nullptr) {
      std::fprintf(stderr, "error: dlopen %s: %s\n", argv[a], dlerror());
      return 1;
    }
  }
  const int n = registrations();
  std::printf("sharekan::lutham.out registered %d time(s)\n", n);
  return n == 1 ? 0 : 1;
}
