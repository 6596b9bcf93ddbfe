// Bindings of the modulated_conv2d kernels (weight modulation, fused epilogue). Included ONLY by
// bindings.cpp. The convolutions themselves are cuDNN's, called from Python.
#pragma once

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>
#include <optional>
#include <tuple>

#include "bias_act.h"
#include "modulated_conv.h"
#include "torch_checks.h"

namespace sg2_bind {

// out_dtype arrives as sg2::DType's integer (0 float32, 1 float16, 2 bfloat16).
inline at::ScalarType scalar_type_of(int64_t id) {
  switch (id) {
    case static_cast<int64_t>(sg2::DType::kFloat32): return at::kFloat;
    case static_cast<int64_t>(sg2::DType::kFloat16): return at::kHalf;
    case static_cast<int64_t>(sg2::DType::kBFloat16): return at::kBFloat16;
    default: TORCH_CHECK(false, "out_dtype must be 0 (float32), 1 (float16) or 2 (bfloat16), got ", id);
  }
  return at::kFloat;
}

inline void check_on(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  check_cuda(t, name);
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device());
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous, got strides ", t.strides());
}

inline void check_fits_int(int64_t v, const char* what) {
  TORCH_CHECK(sg2::modconv_fits_int32(v), what, " (", v, ") exceeds the kernels' 32-bit index (2^31 - 1 - ",
              sg2::kModconvIndexHeadroom, ")");
}

// ---------------------------------------------------------------------------------------------
// Weight modulation.

struct ModulateShapes {
  int64_t n, o, i, k;
};

inline ModulateShapes check_modulate_inputs(const at::Tensor& weight, const at::Tensor& styles) {
  check_cuda(weight, "weight");
  kernel_dtype(weight, "weight");
  TORCH_CHECK(weight.dim() == 4, "weight must be [out_channels, in_channels, kh, kw], got ", weight.sizes());
  check_contiguous(weight, "weight");
  check_on(styles, weight, "styles", "weight");
  TORCH_CHECK(styles.scalar_type() == weight.scalar_type(), "styles has dtype ", styles.scalar_type(),
              ", expected weight's ", weight.scalar_type());
  TORCH_CHECK(styles.dim() == 2 && styles.size(1) == weight.size(1), "styles must be [batch_size, ", weight.size(1),
              "], got ", styles.sizes());
  check_contiguous(styles, "styles");
  const ModulateShapes s{styles.size(0), weight.size(0), weight.size(1), weight.size(2) * weight.size(3)};
  TORCH_CHECK(s.n <= 65535, "batch_size ", s.n, " exceeds 65535 (the kernels' grid limit)");
  check_fits_int(s.o * s.i * s.k, "weight.numel()");
  return s;
}

inline sg2::ModulateParams modulate_params(const ModulateShapes& s, const at::Tensor& weight, const at::Tensor& styles,
                                           bool demodulate, double eps) {
  sg2::ModulateParams p{};
  p.weight = weight.data_ptr();
  p.styles = styles.data_ptr();
  p.batch_size = static_cast<int>(s.n);
  p.out_channels = static_cast<int>(s.o);
  p.in_channels = static_cast<int>(s.i);
  p.kernel_size = static_cast<int>(s.k);
  p.demodulate = demodulate;
  p.eps = static_cast<float>(eps);
  return p;
}

// (weight [O, I, kh, kw], styles [N, I]) -> (out [N, O, I, kh, kw] of out_dtype, dcoefs [N, O] float32)
inline std::tuple<at::Tensor, at::Tensor> modulate_weights(const at::Tensor& weight, const at::Tensor& styles,
                                                           int64_t out_dtype_id, bool demodulate, double eps) {
  const ModulateShapes s = check_modulate_inputs(weight, styles);
  const sg2::DType pdt = kernel_dtype(weight, "weight");
  const at::ScalarType out_dtype = scalar_type_of(out_dtype_id);
  const sg2::DType odt = static_cast<sg2::DType>(out_dtype_id);
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor out = at::empty({s.n, s.o, s.i, weight.size(2), weight.size(3)}, weight.options().dtype(out_dtype));
  at::Tensor dcoefs = at::empty({s.n, s.o}, weight.options().dtype(at::kFloat));
  sg2::ModulateParams p = modulate_params(s, weight, styles, demodulate, eps);
  p.out = out.data_ptr();
  p.dcoefs = dcoefs.data_ptr<float>();
  check_launch(sg2::launch_modulate_weights(p, pdt, odt, c10::cuda::getCurrentCUDAStream().stream()),
               "modulate_weights");
  return {out, dcoefs};
}

// (grad [N, O, I, kh, kw], weight, styles, dcoefs) -> (grad_weight [O, I, kh, kw], grad_styles [N, I])
inline std::tuple<at::Tensor, at::Tensor> modulate_weights_grad(const at::Tensor& grad, const at::Tensor& weight,
                                                                const at::Tensor& styles, const at::Tensor& dcoefs,
                                                                bool demodulate, double eps) {
  const ModulateShapes s = check_modulate_inputs(weight, styles);
  const sg2::DType pdt = kernel_dtype(weight, "weight");
  check_on(grad, weight, "grad", "weight");
  const sg2::DType odt = kernel_dtype(grad, "grad");
  TORCH_CHECK(grad.dim() == 5 && grad.size(0) == s.n && grad.size(1) == s.o && grad.size(2) == s.i &&
                  grad.size(3) == weight.size(2) && grad.size(4) == weight.size(3),
              "grad must be [", s.n, ", ", s.o, ", ", s.i, ", ", weight.size(2), ", ", weight.size(3), "], got ",
              grad.sizes());
  check_contiguous(grad, "grad");
  check_on(dcoefs, weight, "dcoefs", "weight");
  TORCH_CHECK(dcoefs.scalar_type() == at::kFloat, "dcoefs must be float32, got ", dcoefs.scalar_type());
  TORCH_CHECK(dcoefs.dim() == 2 && dcoefs.size(0) == s.n && dcoefs.size(1) == s.o, "dcoefs must be [", s.n, ", ",
              s.o, "], got ", dcoefs.sizes());
  check_contiguous(dcoefs, "dcoefs");
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor grad_weight = at::empty_like(weight);
  at::Tensor grad_styles = at::empty_like(styles);
  at::Tensor q = at::empty({s.n, s.o}, weight.options().dtype(at::kFloat));
  sg2::ModulateParams p = modulate_params(s, weight, styles, demodulate, eps);
  p.grad = grad.data_ptr();
  p.dcoefs = dcoefs.data_ptr<float>();
  p.q = q.data_ptr<float>();
  p.grad_weight = grad_weight.data_ptr();
  p.grad_styles = grad_styles.data_ptr();
  check_launch(sg2::launch_modulate_weights_grad(p, pdt, odt, c10::cuda::getCurrentCUDAStream().stream()),
               "modulate_weights_grad");
  return {grad_weight, grad_styles};
}

// ---------------------------------------------------------------------------------------------
// Epilogue.

// Whether a 4-D tensor is walked as NHWC (channels_last) or NCHW; anything else is refused.
inline bool epilogue_layout(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be [batch_size, channels, height, width], got ", t.sizes());
  if (t.is_contiguous()) return false;
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              " must be contiguous or channels_last, got strides ", t.strides());
  return true;
}

inline sg2::EpilogueParams epilogue_params(const at::Tensor& ref, const char* ref_name,
                                           const std::optional<at::Tensor>& scale,
                                           const std::optional<at::Tensor>& noise,
                                           const std::optional<at::Tensor>& bias, int64_t act, double alpha,
                                           double gain, double clamp) {
  TORCH_CHECK(act >= 0 && act < sg2::kNumActivations, "unknown activation id ", act);
  sg2::EpilogueParams p{};
  p.channels_last = epilogue_layout(ref, ref_name);
  const int64_t n = ref.size(0), c = ref.size(1), pix = ref.size(2) * ref.size(3);
  TORCH_CHECK(n <= 65535, ref_name, " has batch size ", n, "; the kernels' grid allows 65535");
  check_fits_int(c, "channels");
  check_fits_int(pix, "height * width");
  const sg2::EpilogueTiling t = sg2::epilogue_tiling(static_cast<int>(c), static_cast<int>(pix), p.channels_last);
  TORCH_CHECK(t.grid_a * t.grid_b <= std::numeric_limits<int>::max(), ref_name, " is too large for the grid");
  if (scale.has_value()) {
    check_on(*scale, ref, "scale", ref_name);
    TORCH_CHECK(scale->scalar_type() == at::kFloat, "scale must be float32, got ", scale->scalar_type());
    TORCH_CHECK(scale->dim() == 2 && scale->size(0) == n && scale->size(1) == c, "scale must be [", n, ", ", c,
                "], got ", scale->sizes());
    check_contiguous(*scale, "scale");
    p.scale = scale->data_ptr<float>();
  }
  if (noise.has_value()) {
    check_on(*noise, ref, "noise", ref_name);
    TORCH_CHECK(noise->scalar_type() == ref.scalar_type(), "noise has dtype ", noise->scalar_type(), ", expected ",
                ref.scalar_type());
    TORCH_CHECK(noise->dim() == 4 && (noise->size(0) == 1 || noise->size(0) == n) && noise->size(1) == 1 &&
                    noise->size(2) == ref.size(2) && noise->size(3) == ref.size(3),
                "noise must be [1 or ", n, ", 1, ", ref.size(2), ", ", ref.size(3), "], got ", noise->sizes());
    check_contiguous(*noise, "noise");
    p.noise = noise->data_ptr();
    p.noise_per_sample = noise->size(0) == n && n > 1;
  }
  if (bias.has_value()) {
    check_on(*bias, ref, "bias", ref_name);
    TORCH_CHECK(bias->scalar_type() == ref.scalar_type(), "bias has dtype ", bias->scalar_type(), ", expected ",
                ref.scalar_type());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == c, "bias must be [", c, "], got ", bias->sizes());
    check_contiguous(*bias, "bias");
    p.bias = bias->data_ptr();
  }
  p.batch_size = static_cast<int>(n);
  p.channels = static_cast<int>(c);
  p.pixels = static_cast<int>(pix);
  p.act = static_cast<int>(act);
  p.alpha = static_cast<float>(alpha);
  p.gain = static_cast<float>(gain);
  p.clamp = static_cast<float>(clamp);
  return p;
}

// y = clamp(act(x * scale[n, c] + noise[n, 0, h, w] + bias[c]) * gain), in x's memory format.
inline at::Tensor modconv_epilogue(const at::Tensor& x, const std::optional<at::Tensor>& scale,
                                   const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& bias,
                                   int64_t act, double alpha, double gain, double clamp) {
  check_cuda(x, "x");
  const sg2::DType dtype = kernel_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  sg2::EpilogueParams p = epilogue_params(x, "x", scale, noise, bias, act, alpha, gain, clamp);
  at::Tensor y = at::empty_like(x);
  TORCH_CHECK(y.strides() == x.strides(), "internal: output strides differ from x");
  p.x = x.data_ptr();
  p.y = y.data_ptr();
  check_launch(sg2::launch_epilogue_forward(p, dtype, c10::cuda::getCurrentCUDAStream().stream()),
               "modconv_epilogue");
  return y;
}

// -> (dx, grad_scale [N, C] f32, grad_bias [N, C] f32 (per sample), grad_noise [N, H*W] f32);
// each reduction is an empty tensor unless asked for. x may be omitted only when nothing needs it
// (linear activation, no clamp, no grad_scale).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> modconv_epilogue_grad(
    const at::Tensor& dy, const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& bias, int64_t act, double alpha,
    double gain, double clamp, bool want_scale, bool want_bias, bool want_noise) {
  check_cuda(dy, "dy");
  const sg2::DType dtype = kernel_dtype(dy, "dy");
  const c10::cuda::CUDAGuard guard(dy.device());
  sg2::EpilogueParams p = epilogue_params(dy, "dy", scale, noise, bias, act, alpha, gain, clamp);
  if (x.has_value()) {
    check_like(*x, dy, "x");
  } else {
    TORCH_CHECK(act == sg2::kLinear && clamp < 0 && !want_scale,
                "modconv_epilogue_grad needs x for a nonlinear activation, a clamp or grad_scale");
  }
  TORCH_CHECK(!want_scale || scale.has_value(), "grad_scale asked for without scale");
  TORCH_CHECK(!want_noise || noise.has_value(), "grad_noise asked for without noise");
  const int64_t n = dy.size(0), c = dy.size(1), pix = dy.size(2) * dy.size(3);
  const auto f32 = dy.options().dtype(at::kFloat);
  at::Tensor dx = at::empty_like(dy);
  TORCH_CHECK(dx.strides() == dy.strides(), "internal: dx strides differ from dy");
  at::Tensor gs = want_scale ? at::zeros({n, c}, f32) : at::empty({0}, f32);
  at::Tensor gb = want_bias ? at::zeros({n, c}, f32) : at::empty({0}, f32);
  at::Tensor gn = want_noise ? at::zeros({n, pix}, f32) : at::empty({0}, f32);
  p.x = x.has_value() ? x->data_ptr() : nullptr;
  p.dy = dy.data_ptr();
  p.dx = dx.data_ptr();
  p.grad_scale = want_scale ? gs.data_ptr<float>() : nullptr;
  p.grad_bias = want_bias ? gb.data_ptr<float>() : nullptr;
  p.grad_noise = want_noise ? gn.data_ptr<float>() : nullptr;
  check_launch(sg2::launch_epilogue_backward(p, dtype, c10::cuda::getCurrentCUDAStream().stream()),
               "modconv_epilogue_grad");
  return {dx, gs, gb, gn};
}

inline void register_modulated_conv(pybind11::module& m) {
  m.def("modulate_weights", &modulate_weights,
        "per-sample modulated (and demodulated) weights [N, O, I, kh, kw] and demodulation coefficients [N, O]",
        pybind11::arg("weight"), pybind11::arg("styles"), pybind11::arg("out_dtype"), pybind11::arg("demodulate"),
        pybind11::arg("eps"));
  m.def("modulate_weights_grad", &modulate_weights_grad, "gradients of modulate_weights for weight and styles",
        pybind11::arg("grad"), pybind11::arg("weight"), pybind11::arg("styles"), pybind11::arg("dcoefs"),
        pybind11::arg("demodulate"), pybind11::arg("eps"));
  m.def("modconv_epilogue", &modconv_epilogue, "y = clamp(act(x * scale + noise + bias) * gain)", pybind11::arg("x"),
        pybind11::arg("scale"), pybind11::arg("noise"), pybind11::arg("bias"), pybind11::arg("act"),
        pybind11::arg("alpha"), pybind11::arg("gain"), pybind11::arg("clamp"));
  m.def("modconv_epilogue_grad", &modconv_epilogue_grad, "one-pass backward of modconv_epilogue", pybind11::arg("dy"),
        pybind11::arg("x"), pybind11::arg("scale"), pybind11::arg("noise"), pybind11::arg("bias"),
        pybind11::arg("act"), pybind11::arg("alpha"), pybind11::arg("gain"), pybind11::arg("clamp"),
        pybind11::arg("want_scale"), pybind11::arg("want_bias"), pybind11::arg("want_noise"));
}

}  // namespace sg2_bind
