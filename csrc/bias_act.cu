// Kernels for bias_act: forward, first derivative, second derivative.
// Elementwise and memory bound: each element is loaded once, computed in float32, stored once.
// The activation is a template parameter, so each instantiation is branch-free.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bias_act.h"
#include "elementwise.cuh"

namespace sg2 {
namespace {

constexpr float kSeluScale = 1.0507009873554804934193349852946f;
constexpr float kSeluAlpha = 1.6732632423543772848170429916717f;

__device__ __forceinline__ float sigmoidf(float v) { return 1.f / (1.f + __expf(-v)); }

// act(v) for the forward pass.
template <int A>
__device__ __forceinline__ float act_value(float v, float alpha) {
  if (A == kLinear) return v;
  if (A == kRelu) return v > 0.f ? v : 0.f;
  if (A == kLrelu) return v > 0.f ? v : v * alpha;
  if (A == kTanh) return tanhf(v);
  if (A == kSigmoid) return sigmoidf(v);
  if (A == kElu) return v > 0.f ? v : alpha * (__expf(v) - 1.f);
  if (A == kSelu) return v > 0.f ? kSeluScale * v : kSeluScale * kSeluAlpha * (__expf(v) - 1.f);
  if (A == kSoftplus) return v > 20.f ? v : log1pf(__expf(v));  // torch's threshold of 20
  if (A == kSwish) return v * sigmoidf(v);
  return 0.f;
}

// Whether act' is computed from the output (true) or from the input (false). Must agree with
// ACTIVATIONS[*].grad_from in _bias_act.py, which decides what the forward pass saves.
template <int A>
constexpr bool grad_from_output() { return A != kSwish; }

// act'(v), given the unscaled output u = act(v) (for output-based activations) or v itself.
template <int A>
__device__ __forceinline__ float act_deriv(float v, float u, float alpha) {
  if (A == kLinear) return 1.f;
  if (A == kRelu) return u > 0.f ? 1.f : 0.f;
  if (A == kLrelu) return u > 0.f ? 1.f : alpha;
  if (A == kTanh) return 1.f - u * u;
  if (A == kSigmoid) return u * (1.f - u);
  if (A == kElu) return u > 0.f ? 1.f : u + alpha;
  if (A == kSelu) return u > 0.f ? kSeluScale : u + kSeluScale * kSeluAlpha;
  if (A == kSoftplus) return 1.f - __expf(-u);
  if (A == kSwish) {
    const float s = sigmoidf(v);
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
    const float s = sigmoidf(v);
    return A == kSigmoid ? s * (1.f - s) * (1.f - 2.f * s) : s * (1.f - s);
  }
  if (A == kElu) return v > 0.f ? 0.f : alpha * __expf(v);
  if (A == kSelu) return v > 0.f ? 0.f : kSeluScale * kSeluAlpha * __expf(v);
  if (A == kSwish) {
    const float s = sigmoidf(v);
    return s * (1.f - s) * (2.f + v * (1.f - 2.f * s));
  }
  return 0.f;
}

template <typename T, typename Index>
__device__ __forceinline__ float biased(const BiasActParams& p, const T* x, Index i) {
  float v = load_float(x + i);
  if (p.b != nullptr) {
    const Index c = (i / static_cast<Index>(p.channel_stride)) % static_cast<Index>(p.channels);
    v += load_float(static_cast<const T*>(p.b) + c);
  }
  return v;
}

template <typename T, typename Index, int A>
__global__ void forward_kernel(BiasActParams p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const Index n = static_cast<Index>(p.numel);
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    float v = act_value<A>(biased<T, Index>(p, x, i), p.alpha) * p.gain;
    if (p.clamp >= 0.f) v = fminf(fmaxf(v, -p.clamp), p.clamp);
    store_float(out + i, v);
  }
}

template <typename T, typename Index, int A, int Order>
__global__ void grad_kernel(BiasActParams p) {
  const T* g = static_cast<const T*>(p.g);
  T* out = static_cast<T*>(p.out);
  const Index n = static_cast<Index>(p.numel);
  const float inv_gain = p.gain != 0.f ? 1.f / p.gain : 0.f;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const bool use_y = Order == 1 && grad_from_output<A>() && p.y != nullptr;
    float v = 0.f, u = 0.f, scaled = 0.f;
    if (use_y) {
      scaled = load_float(static_cast<const T*>(p.y) + i);  // already clamped
      u = scaled * inv_gain;
    } else {
      v = biased<T, Index>(p, static_cast<const T*>(p.x), i);
      u = act_value<A>(v, p.alpha);
      scaled = u * p.gain;
    }
    // A clamped element passes no gradient. From a saved (clamped) y, |y| == clamp is taken as
    // clamped; torch.clamp passes the gradient at exact equality, which differs on a set of
    // measure zero only.
    bool pass = true;
    if (p.clamp >= 0.f) pass = use_y ? fabsf(scaled) < p.clamp : fabsf(scaled) <= p.clamp;
    float r = 0.f;
    if (pass) {
      if (Order == 1) {
        r = load_float(g + i) * p.gain * act_deriv<A>(v, u, p.alpha);
      } else {
        r = load_float(g + i) * load_float(static_cast<const T*>(p.h) + i) * p.gain *
            act_deriv2<A>(v, p.alpha);
      }
    }
    store_float(out + i, r);
  }
}

template <typename T, typename Index, int A>
cudaError_t launch_for_act(const BiasActParams& p, int mode, cudaStream_t stream) {
  const LaunchShape s = elementwise_launch_shape(p.numel);
  if (mode == 0) forward_kernel<T, Index, A><<<s.blocks, s.threads, 0, stream>>>(p);
  if (mode == 1) grad_kernel<T, Index, A, 1><<<s.blocks, s.threads, 0, stream>>>(p);
  if (mode == 2) grad_kernel<T, Index, A, 2><<<s.blocks, s.threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, typename Index>
cudaError_t launch_typed(const BiasActParams& p, int mode, cudaStream_t stream) {
  switch (p.act) {
    case kLinear: return launch_for_act<T, Index, kLinear>(p, mode, stream);
    case kRelu: return launch_for_act<T, Index, kRelu>(p, mode, stream);
    case kLrelu: return launch_for_act<T, Index, kLrelu>(p, mode, stream);
    case kTanh: return launch_for_act<T, Index, kTanh>(p, mode, stream);
    case kSigmoid: return launch_for_act<T, Index, kSigmoid>(p, mode, stream);
    case kElu: return launch_for_act<T, Index, kElu>(p, mode, stream);
    case kSelu: return launch_for_act<T, Index, kSelu>(p, mode, stream);
    case kSoftplus: return launch_for_act<T, Index, kSoftplus>(p, mode, stream);
    case kSwish: return launch_for_act<T, Index, kSwish>(p, mode, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch(const BiasActParams& p, DType dtype, int mode, cudaStream_t stream) {
  if (p.numel == 0) return cudaSuccess;
  // 32-bit indexing wherever it fits: the channel division is the costliest arithmetic here.
  const bool small = p.numel <= 0x7fffffff - 0x10000;
  switch (dtype) {
    case DType::kFloat32:
      return small ? launch_typed<float, int32_t>(p, mode, stream) : launch_typed<float, int64_t>(p, mode, stream);
    case DType::kFloat16:
      return small ? launch_typed<__half, int32_t>(p, mode, stream) : launch_typed<__half, int64_t>(p, mode, stream);
    case DType::kBFloat16:
      return small ? launch_typed<__nv_bfloat16, int32_t>(p, mode, stream)
                   : launch_typed<__nv_bfloat16, int64_t>(p, mode, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_bias_act_forward(const BiasActParams& p, DType dtype, cudaStream_t stream) {
  return launch(p, dtype, 0, stream);
}

cudaError_t launch_bias_act_grad(const BiasActParams& p, DType dtype, int order, cudaStream_t stream) {
  if (order != 1 && order != 2) return cudaErrorInvalidValue;
  return launch(p, dtype, order, stream);
}

}  // namespace sg2
