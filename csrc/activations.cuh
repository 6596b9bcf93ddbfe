// The activations of bias_act as float32 device functions: value, first and second derivative.
// Shared by every kernel that ends in an activation (bias_act, the modulated-conv epilogue).
// The activation is a template parameter, so each instantiation is branch-free.
#pragma once

#include "bias_act.h"

namespace sg2 {

constexpr float kSeluScale = 1.0507009873554804934193349852946f;
constexpr float kSeluAlpha = 1.6732632423543772848170429916717f;

__device__ __forceinline__ float sigmoid_f(float v) { return 1.f / (1.f + __expf(-v)); }

// act(v) for the forward pass.
template <int A>
__device__ __forceinline__ float act_value(float v, float alpha) {
  if (A == kLinear) return v;
  if (A == kRelu) return v <= 0.f ? 0.f : v;  // NaN stays NaN, as in torch.relu
  if (A == kLrelu) return v > 0.f ? v : v * alpha;
  if (A == kTanh) return tanhf(v);
  if (A == kSigmoid) return sigmoid_f(v);
  if (A == kElu) return v > 0.f ? v : alpha * (__expf(v) - 1.f);
  if (A == kSelu) return v > 0.f ? kSeluScale * v : kSeluScale * kSeluAlpha * (__expf(v) - 1.f);
  if (A == kSoftplus) return v > 20.f ? v : log1pf(__expf(v));  // torch's threshold of 20
  if (A == kSwish) return v * sigmoid_f(v);
  return 0.f;
}

// Whether act' is computed from the output (true) or from the input (false). Must agree with
// ACTIVATIONS[*].grad_from in _bias_act.py, which decides what the forward pass saves.
template <int A>
__host__ __device__ constexpr bool grad_from_output() { return A != kSwish; }

// act'(v), given the unscaled output u = act(v) (for output-based activations) or v itself.
template <int A>
__device__ __forceinline__ float act_deriv(float v, float u, float alpha) {
  if (A == kLinear) return 1.f;
  if (A == kRelu) return u > 0.f ? 1.f : 0.f;
  // With alpha < 0 a negative input gives a positive output, so the sign of u no longer tells
  // the branch: then v decides, and bias_act passes x instead of y (_bias_act.py).
  if (A == kLrelu) return (alpha >= 0.f ? u > 0.f : v > 0.f) ? 1.f : alpha;
  if (A == kTanh) return 1.f - u * u;
  if (A == kSigmoid) return u * (1.f - u);
  if (A == kElu) return (alpha >= 0.f ? u > 0.f : v > 0.f) ? 1.f : u + alpha;
  if (A == kSelu) return u > 0.f ? kSeluScale : u + kSeluScale * kSeluAlpha;
  if (A == kSoftplus) return 1.f - __expf(-u);
  if (A == kSwish) {
    const float s = sigmoid_f(v);
    return s * (1.f + v * (1.f - s));
  }
  return 0.f;
}

// act''(v); zero for the piecewise-linear activations (never launched for them).
template <int A>
__device__ __forceinline__ float act_deriv2(float v, float alpha) {
  if (A == kTanh) {
    const float t = tanhf(v);
    return -2.f * t * (1.f - t * t);
  }
  if (A == kSigmoid || A == kSoftplus) {
    const float s = sigmoid_f(v);
    return A == kSigmoid ? s * (1.f - s) * (1.f - 2.f * s) : s * (1.f - s);
  }
  if (A == kElu) return v > 0.f ? 0.f : alpha * __expf(v);
  if (A == kSelu) return v > 0.f ? 0.f : kSeluScale * kSeluAlpha * __expf(v);
  if (A == kSwish) {
    const float s = sigmoid_f(v);
    return s * (1.f - s) * (2.f + v * (1.f - 2.f * s));
  }
  return 0.f;
}

}  // namespace sg2
