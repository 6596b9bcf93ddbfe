// bias_act: y = clamp(act(x + b) * gain), its first derivative and its second derivative.
// Plain C++ (no torch headers): included by bias_act.cu and by the bindings.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common.h"

namespace sg2 {

// Activation ids: must match the cuda_id column of ACTIVATIONS in stylegan2_ops/_bias_act.py.
enum Activation : int {
  kLinear = 0,
  kRelu = 1,
  kLrelu = 2,
  kTanh = 3,
  kSigmoid = 4,
  kElu = 5,
  kSelu = 6,
  kSoftplus = 7,
  kSwish = 8,
  kNumActivations = 9,
};

// Every element tensor below has `numel` elements laid out in ONE dense memory order (the same
// strides), so the kernels walk memory linearly and find the bias channel of element i as
// (i / channel_stride) % channels, which holds for contiguous and channels_last alike.
struct BiasActParams {
  const void* x;    // [numel] input (forward) or saved input (gradients); nullptr if absent
  const void* b;    // [channels] bias; nullptr = no bias
  const void* y;    // [numel] saved output (gradients only); nullptr if absent
  const void* g;    // [numel] incoming gradient: dy for order 1, d(dx) for order 2
  const void* h;    // [numel] the original dy (order 2 only)
  void* out;        // [numel] result
  int64_t numel;          // elements in each tensor above
  int64_t channels;       // length of the bias dimension (1 without a bias)
  int64_t channel_stride; // memory stride of the bias dimension, in elements
  int act;                // Activation
  float alpha;            // activation parameter (lrelu slope, elu scale)
  float gain;             // multiplies the activation's output
  float clamp;            // |y| <= clamp; negative = no clamping
};

// The kernels index with int32 up to this many elements. A grid-stride loop counter runs up to
// one whole grid (at most kBiasActMaxGridThreads threads) past numel before the loop test stops
// it, so numel + that grid must stay below 2^31 (a 4096-element margin overflowed, and the
// wrapped, negative index passed the `< numel` test).
constexpr int64_t kBiasActMaxGridThreads = int64_t{65536} * 256;
inline bool bias_act_fits_int32(int64_t numel) {
  return numel <= (int64_t{1} << 31) - 1 - kBiasActMaxGridThreads;
}

// y = clamp(act(x + b) * gain). Needs x, b (optional), out.
cudaError_t launch_bias_act_forward(const BiasActParams& p, DType dtype, cudaStream_t stream);

// order 1: out = g * gain * act'(x + b) * [unclamped]      (reads y or x, per activation)
// order 2: out = g * h * gain * act''(x + b) * [unclamped] (reads x)
cudaError_t launch_bias_act_grad(const BiasActParams& p, DType dtype, int order, cudaStream_t stream);

}  // namespace sg2
