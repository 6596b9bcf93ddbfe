// Argument checks and launch checks shared by the bind_*.h headers. Included ONLY by bindings.cpp
// (the one translation unit that includes torch headers).
#pragma once

#include <torch/extension.h>

#include "common.h"

namespace sg2_bind {


inline sg2::DType kernel_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return sg2::DType::kFloat32;
    case at::kHalf: return sg2::DType::kFloat16;
    case at::kBFloat16: return sg2::DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " has dtype ", t.scalar_type(),
                  "; the CUDA kernels support float32, float16 and bfloat16");
  }
  return sg2::DType::kFloat32;
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
}

// An elementwise operand: on ref's device, of ref's dtype, shape and strides.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  check_cuda(t, name);
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but the gradient is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), ", expected ",
              ref.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " has shape ", t.sizes(), ", expected ", ref.sizes());
  TORCH_CHECK(t.strides() == ref.strides(), name, " has strides ", t.strides(), ", expected ", ref.strides(),
              " (all operands must share one memory format)");
}

// The memory format an output of `t` gets: channels_last when t is laid out that way and not also
// plainly contiguous (a [N, C, 1, 1] or [N, 1, H, W] tensor is both), else contiguous. The same rule
// as stylegan2_ops/_layout.py's memory_format, so the Python layer and the kernels never disagree.
inline at::MemoryFormat output_layout(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed to launch: ", cudaGetErrorString(err));
}

}  // namespace sg2_bind
