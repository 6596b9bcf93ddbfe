// The emulated kernels' C entry points, for ctypes (kernels.py). Each fills the same parameter
// struct the torch bindings fill (csrc/bind_*.h) from plain arguments and calls the same
// sg2::launch_* function; kernels.py does what the bindings do around it (argument checks,
// output allocation) with CPU tensors. Returns the cudaError_t of the launch (0 = success).
#include <cstdint>

#include "bias_act.h"
#include "modulated_conv.h"
#include "upfirdn2d.h"

namespace {
sg2::DType dtype_of(int id) { return static_cast<sg2::DType>(id); }

// The geometry fields of Upfirdn2dParams from the flat arrays kernels.py passes.
sg2::Upfirdn2dParams upfirdn2d_geometry(const int64_t* x_stride, const int64_t* y_stride, const int64_t* sizes,
                                        const int* factors, const int* taps) {
  sg2::Upfirdn2dParams p{};
  for (int d = 0; d < 4; ++d) {
    p.x_stride[d] = x_stride[d];
    p.y_stride[d] = y_stride[d];
  }
  p.batch = sizes[0];
  p.channels = sizes[1];
  p.in_h = static_cast<int>(sizes[2]);
  p.in_w = static_cast<int>(sizes[3]);
  p.out_h = static_cast<int>(sizes[4]);
  p.out_w = static_cast<int>(sizes[5]);
  p.up_x = factors[0];
  p.up_y = factors[1];
  p.down_x = factors[2];
  p.down_y = factors[3];
  p.filter_w = taps[0];
  p.filter_h = taps[1];
  return p;
}
}  // namespace

extern "C" {

// order 0: forward; 1, 2: derivatives (csrc/bias_act.h).
int sg2emu_bias_act(int dtype, int order, const void* x, const void* b, const void* y, const void* g, const void* h,
                    void* out, int64_t numel, int64_t channels, int64_t channel_stride, int act, float alpha,
                    float gain, float clamp) {
  sg2::BiasActParams p{};
  p.x = x;
  p.b = b;
  p.y = y;
  p.g = g;
  p.h = h;
  p.out = out;
  p.numel = numel;
  p.channels = channels;
  p.channel_stride = channel_stride;
  p.act = act;
  p.alpha = alpha;
  p.gain = gain;
  p.clamp = clamp;
  if (order == 0) return sg2::launch_bias_act_forward(p, dtype_of(dtype), nullptr);
  return sg2::launch_bias_act_grad(p, dtype_of(dtype), order, nullptr);
}

// sizes: batch, channels, in_h, in_w, out_h, out_w; factors: up_x, up_y, down_x, down_y;
// pads: pad_x0, pad_y0; taps: filter_w, filter_h.
int sg2emu_upfirdn2d(int dtype, const void* x, const float* f, void* y, const int64_t* x_stride,
                     const int64_t* y_stride, const int64_t* sizes, const int* factors, const int* pads,
                     const int* taps, int separable, int flip, float gain, int path) {
  sg2::Upfirdn2dParams p = upfirdn2d_geometry(x_stride, y_stride, sizes, factors, taps);
  p.x = x;
  p.f = f;
  p.y = y;
  p.pad_x0 = pads[0];
  p.pad_y0 = pads[1];
  p.separable = separable != 0;
  p.flip = flip != 0;
  p.gain = gain;
  p.path = path;
  return sg2::launch_upfirdn2d(p, dtype_of(dtype), nullptr);
}

int sg2emu_upfirdn2d_tiled_covers(const int64_t* x_stride, const int64_t* y_stride, const int64_t* sizes,
                                  const int* factors, const int* taps) {
  return sg2::upfirdn2d_tiled_covers(upfirdn2d_geometry(x_stride, y_stride, sizes, factors, taps)) ? 1 : 0;
}

// backward 0: out, dcoefs from weight, styles; 1: grad_weight, grad_styles (uses q).
int sg2emu_modulate(int backward, int param_dtype, int out_dtype, const void* weight, const void* styles, void* out,
                    float* dcoefs, const void* grad, float* q, void* grad_weight, void* grad_styles, int batch_size,
                    int out_channels, int in_channels, int kernel_size, int demodulate, float eps) {
  sg2::ModulateParams p{};
  p.weight = weight;
  p.styles = styles;
  p.out = out;
  p.dcoefs = dcoefs;
  p.grad = grad;
  p.q = q;
  p.grad_weight = grad_weight;
  p.grad_styles = grad_styles;
  p.batch_size = batch_size;
  p.out_channels = out_channels;
  p.in_channels = in_channels;
  p.kernel_size = kernel_size;
  p.demodulate = demodulate != 0;
  p.eps = eps;
  if (backward) return sg2::launch_modulate_weights_grad(p, dtype_of(param_dtype), dtype_of(out_dtype), nullptr);
  return sg2::launch_modulate_weights(p, dtype_of(param_dtype), dtype_of(out_dtype), nullptr);
}

// backward 0: y from x; 1: dx and the reductions from dy (and x).
int sg2emu_epilogue(int backward, int dtype, const void* x, void* y, const void* dy, void* dx, const float* scale,
                    const void* noise, const void* bias, float* grad_scale, float* grad_bias, float* grad_noise,
                    int batch_size, int channels, int pixels, int noise_per_sample, int channels_last, int act,
                    float alpha, float gain, float clamp) {
  sg2::EpilogueParams p{};
  p.x = x;
  p.y = y;
  p.dy = dy;
  p.dx = dx;
  p.scale = scale;
  p.noise = noise;
  p.bias = bias;
  p.grad_scale = grad_scale;
  p.grad_bias = grad_bias;
  p.grad_noise = grad_noise;
  p.batch_size = batch_size;
  p.channels = channels;
  p.pixels = pixels;
  p.noise_per_sample = noise_per_sample != 0;
  p.channels_last = channels_last != 0;
  p.act = act;
  p.alpha = alpha;
  p.gain = gain;
  p.clamp = clamp;
  if (backward) return sg2::launch_epilogue_backward(p, dtype_of(dtype), nullptr);
  return sg2::launch_epilogue_forward(p, dtype_of(dtype), nullptr);
}

}  // extern "C"
