// A shared library that links sharekan::lutham itself (like a delegate or a model library
// would); see registered_once.cpp. It also includes the runtime-neutral kernel headers
// through sharekan::lutham_kernel (an installed, ExecuTorch-free include path).
#include <executorch/runtime/kernel/operator_registry.h>

#include "kernel/lutham.h"

extern "C" int lutham_plugin_has_operator() {
  return executorch::runtime::registry_has_op_function("sharekan::lutham.out") ? 1 : 0;
}
