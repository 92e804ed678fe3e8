// LUTHAM: the ExecuTorch operator `sharekan::lutham.out` over the runtime-neutral kernel
// (kernel/lutham.h, which documents the math, the schema and every check).
//
// This file only adapts ExecuTorch tensors to the kernel's TensorViews (dtype, sizes,
// contiguity from strides and dim order), reports the kernel's Status through
// ET_KERNEL_CHECK_MSG (InvalidArgument 0x12 or MemoryAllocationFailed 0x21, with the
// kernel's message in the runtime's log; the runtime stays usable), resizes `out` and
// registers the operator with EXECUTORCH_LIBRARY.

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/extension/threadpool/threadpool_guard.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <cstdlib>

#include "kernel/lutham.h"

namespace sharekan {
namespace lutham {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

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

static DType dtype_of(ScalarType s) {
  switch (s) {
    case ScalarType::Byte: return DType::kUInt8;
    case ScalarType::Char: return DType::kInt8;
    case ScalarType::Short: return DType::kInt16;
    case ScalarType::Int: return DType::kInt32;
    case ScalarType::Long: return DType::kInt64;
    case ScalarType::Float: return DType::kFloat32;
    case ScalarType::Double: return DType::kFloat64;
    case ScalarType::Half: return DType::kFloat16;
    case ScalarType::BFloat16: return DType::kBFloat16;
    case ScalarType::Bool: return DType::kBool;
    default: return DType::kOther;
  }
}

static TensorView view_of(const Tensor& t) {
  TensorView v;
  v.data = t.const_data_ptr();
  v.dtype = dtype_of(t.scalar_type());
  v.dim = t.dim();
  for (ssize_t d = 0; d < t.dim() && d < 2; ++d) v.sizes[d] = t.size(d);
  v.numel = t.numel();
  v.contiguous = is_contiguous(t);
  return v;
}

/// Work units per call: $SHAREKAN_LUTHAM_THREADS when set to an integer in [1, kMaxUnits]
/// (read once; 1 = run on the calling thread; exact: small calls split too), else 1 when the caller disabled the pool
/// (NoThreadPoolGuard: every unit would run on the calling thread, and column units repeat
/// the projection tables), else the threadpool's thread count. Results do not depend on it
/// (every split computes each output with the same operations).
static int64_t unit_count(bool* exact) {
  static const int64_t from_env = [] {
    const char* v = std::getenv("SHAREKAN_LUTHAM_THREADS");
    if (v == nullptr || *v == '\0') return int64_t{0};
    char* end = nullptr;
    const long long n = std::strtoll(v, &end, 10);
    return *end == '\0' && n >= 1 && n <= kMaxUnits ? static_cast<int64_t>(n) : int64_t{0};
  }();
  *exact = from_env > 0;
  if (from_env > 0) return from_env;
  if (executorch::extension::threadpool::NoThreadPoolGuard::is_enabled()) return 1;
  return executorch::extension::get_thread_count();
}

/// The kernel's parallel loops on ExecuTorch's threadpool (parallel_for runs inline when the
/// caller disabled the pool with NoThreadPoolGuard or is itself inside a parallel region).
static Parallel runtime_parallel() {
  Parallel p;
  p.threads = unit_count(&p.exact);
  p.run = [](int64_t n, Parallel::Body body, void* ctx) {
    executorch::extension::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      body(ctx, begin, end);
    });
  };
  return p;
}

Tensor& lutham_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& grid,
                   const Tensor& codebook, const Tensor& codes, const Tensor& gains,
                   const Tensor& gain_scale, const Tensor& edge_bias,
                   const Tensor& edge_bias_scale, const Tensor& out_bias,
                   const Tensor& base_weight, const Tensor& base_scale, int64_t k,
                   int64_t basis, double h, int64_t base_act_kind, Tensor& out) {
  Args a;
  a.x = view_of(x);
  a.grid = view_of(grid);
  a.codebook = view_of(codebook);
  a.codes = view_of(codes);
  a.gains = view_of(gains);
  a.gain_scale = view_of(gain_scale);
  a.edge_bias = view_of(edge_bias);
  a.edge_bias_scale = view_of(edge_bias_scale);
  a.out_bias = view_of(out_bias);
  a.base_weight = view_of(base_weight);
  a.base_scale = view_of(base_scale);
  a.k = k;
  a.basis = basis;
  a.h = h;
  a.base_act = base_act_kind;
  a.out_dtype = dtype_of(out.scalar_type());
  Layer L;
  const Status valid = validate(a, &L);
  ET_KERNEL_CHECK_MSG(ctx, valid.ok(), InvalidArgument, out, "%s", valid.message);
  const int64_t B = x.size(0);
  executorch::aten::SizesType out_sizes[2] = {
      static_cast<executorch::aten::SizesType>(B),
      static_cast<executorch::aten::SizesType>(L.n_out)};
  ET_KERNEL_CHECK_MSG(ctx,
                      executorch::runtime::resize_tensor(out, {out_sizes, 2}) == Error::Ok,
                      InvalidArgument, out, "lutham: cannot resize out to (%lld, %lld)",
                      static_cast<long long>(B), static_cast<long long>(L.n_out));
  ET_KERNEL_CHECK_MSG(ctx, is_contiguous(out), InvalidArgument, out,
                      "lutham: out must be contiguous");
  const Status st =
      forward(L, x.const_data_ptr<float>(), B, out.mutable_data_ptr<float>(), runtime_parallel());
  ET_KERNEL_CHECK_MSG(ctx, st.code != StatusCode::kMemoryAllocationFailed,
                      MemoryAllocationFailed, out, "%s", st.message);
  ET_KERNEL_CHECK_MSG(ctx, st.ok(), InvalidArgument, out, "%s", st.message);
  return out;
}

}  // namespace lutham
}  // namespace sharekan

EXECUTORCH_LIBRARY(sharekan, "lutham.out", sharekan::lutham::lutham_out);
