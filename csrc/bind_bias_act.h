// Bindings of the bias_act kernels. Included ONLY by bindings.cpp.
#pragma once

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

#include "bias_act.h"
#include "torch_checks.h"

namespace sg2_bind {

inline void check_bias(const std::optional<at::Tensor>& b, const at::Tensor& ref, int64_t dim) {
  if (!b.has_value()) return;
  check_cuda(*b, "b");
  TORCH_CHECK(b->device() == ref.device(), "b is on ", b->device(), " but x is on ", ref.device());
  TORCH_CHECK(b->scalar_type() == ref.scalar_type(), "b has dtype ", b->scalar_type(), ", expected ",
              ref.scalar_type());
  TORCH_CHECK(b->dim() == 1 && b->size(0) == ref.size(dim), "b must have shape [", ref.size(dim), "], got ",
              b->sizes());
  TORCH_CHECK(b->is_contiguous(), "b must be contiguous");
}

inline sg2::BiasActParams bias_act_params(const at::Tensor& ref, const std::optional<at::Tensor>& b, int64_t dim,
                                   int64_t act, double alpha, double gain, double clamp) {
  TORCH_CHECK(act >= 0 && act < sg2::kNumActivations, "unknown activation id ", act);
  TORCH_CHECK(ref.dim() >= 1, "x must have at least one dimension");
  TORCH_CHECK(dim >= 0 && dim < ref.dim(), "dim ", dim, " is out of range for ", ref.dim(), " dimensions");
  TORCH_CHECK(ref.is_non_overlapping_and_dense(),
              "x must be dense in memory (contiguous or channels_last), got strides ", ref.strides());
  sg2::BiasActParams p{};
  p.numel = ref.numel();
  p.channels = b.has_value() ? ref.size(dim) : 1;
  p.channel_stride = b.has_value() ? ref.stride(dim) : 1;
  // A size-1 bias dimension may report any stride (0, or past int32, which the 32-bit kernels
  // would truncate, possibly to a zero divisor); with one channel the stride does not matter.
  if (p.channel_stride < 1 || p.channels == 1) p.channel_stride = 1;
  p.b = b.has_value() ? b->data_ptr() : nullptr;
  p.act = static_cast<int>(act);
  p.alpha = static_cast<float>(alpha);
  p.gain = static_cast<float>(gain);
  p.clamp = static_cast<float>(clamp);
  return p;
}

// y = clamp(act(x + b) * gain)
inline at::Tensor bias_act_forward(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, int64_t act,
                            double alpha, double gain, double clamp) {
  check_cuda(x, "x");
  const sg2::DType dtype = kernel_dtype(x, "x");
  check_bias(b, x, dim);
  const c10::cuda::CUDAGuard guard(x.device());
  sg2::BiasActParams p = bias_act_params(x, b, dim, act, alpha, gain, clamp);
  at::Tensor y = at::empty_like(x);  // keeps x's dense strides
  TORCH_CHECK(y.strides() == x.strides(), "internal: output strides differ from x");
  p.x = x.data_ptr();
  p.out = y.data_ptr();
  check_launch(sg2::launch_bias_act_forward(p, dtype, c10::cuda::getCurrentCUDAStream().stream()), "bias_act forward");
  return y;
}

// order 1: g * gain * act'(x + b) * mask;  order 2: g * h * gain * act''(x + b) * mask
inline at::Tensor bias_act_grad(const at::Tensor& g, const std::optional<at::Tensor>& h, const std::optional<at::Tensor>& x,
                         const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& y, int64_t dim,
                         int64_t act, double alpha, double gain, double clamp, int64_t order) {
  check_cuda(g, "dy");
  const sg2::DType dtype = kernel_dtype(g, "dy");
  TORCH_CHECK(order == 1 || order == 2, "order must be 1 or 2, got ", order);
  TORCH_CHECK(x.has_value() || y.has_value(), "bias_act_grad needs the saved input x or output y");
  // swish's derivative comes from x only (grad_from_output in activations.cuh): without x the
  // kernel would read through a null pointer.
  TORCH_CHECK(x.has_value() || act != sg2::kSwish, "bias_act_grad: swish's derivative needs the saved input x");
  TORCH_CHECK(order == 1 || (x.has_value() && h.has_value()), "the second derivative needs x and dy");
  if (h.has_value()) check_like(*h, g, "dy (order 2)");
  if (x.has_value()) check_like(*x, g, "x");
  if (y.has_value()) check_like(*y, g, "y");
  check_bias(b, g, dim);
  const c10::cuda::CUDAGuard guard(g.device());
  sg2::BiasActParams p = bias_act_params(g, b, dim, act, alpha, gain, clamp);
  at::Tensor out = at::empty_like(g);
  TORCH_CHECK(out.strides() == g.strides(), "internal: output strides differ from dy");
  p.g = g.data_ptr();
  p.h = h.has_value() ? h->data_ptr() : nullptr;
  p.x = x.has_value() ? x->data_ptr() : nullptr;
  p.y = y.has_value() ? y->data_ptr() : nullptr;
  p.out = out.data_ptr();
  check_launch(sg2::launch_bias_act_grad(p, dtype, static_cast<int>(order), c10::cuda::getCurrentCUDAStream().stream()),
               "bias_act grad");
  return out;
}

inline void register_bias_act(pybind11::module& m) {
  m.def("bias_act_forward", &bias_act_forward, "y = clamp(act(x + b) * gain)", pybind11::arg("x"), pybind11::arg("b"),
        pybind11::arg("dim"), pybind11::arg("act"), pybind11::arg("alpha"), pybind11::arg("gain"),
        pybind11::arg("clamp"));
  m.def("bias_act_grad", &bias_act_grad, "first or second derivative of bias_act", pybind11::arg("g"),
        pybind11::arg("h"), pybind11::arg("x"), pybind11::arg("b"), pybind11::arg("y"), pybind11::arg("dim"),
        pybind11::arg("act"), pybind11::arg("alpha"), pybind11::arg("gain"), pybind11::arg("clamp"),
        pybind11::arg("order"));
}

}  // namespace sg2_bind
