// Kernels for bias_act: forward, first derivative, second derivative.
// Elementwise and memory bound: each element is loaded once, computed in float32, stored once.

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bias_act.h"
#include "activations.cuh"
#include "elementwise.cuh"

namespace sg2 {
namespace {

// How the bias channel of consecutive elements advances, decided once per launch:
enum ChannelWalk : int {
  kNoBias = 0,    // no bias to add
  kStrideOne = 1, // channels_last-like: consecutive elements are consecutive channels
  kPerVector = 2, // the channel stride is a multiple of the vector width: one channel per vector
  kGeneral = 3,   // anything else: one division per element
};

// The result for one element. mode 0: forward; 1: first derivative; 2: second derivative.
// xv: input (without bias), yv: saved output, gv/hv: gradients, bias: this element's bias.
// clamp_y: the clamp as the storage type rounds it, which is what a clamped element of a saved y
// holds (0.1 in float16 is 0.0999755859375: comparing y against 0.1f would pass clamped elements).
template <int A, int Mode>
__device__ __forceinline__ float element(const BiasActParams& p, bool use_y, float inv_gain, float clamp_y, float xv,
                                         float yv, float gv, float hv, float bias) {
  if (Mode == 0) {
    float r = act_value<A>(xv + bias, p.alpha) * p.gain;
    // Not fminf/fmaxf: those turn NaN into -clamp, and torch.clamp keeps NaN (a diverging run
    // must stay visible).
    if (p.clamp >= 0.f && fabsf(r) > p.clamp) r = copysignf(p.clamp, r);
    return r;
  }
  float v = 0.f, u, scaled;
  if (use_y) {
    scaled = yv;  // already clamped
    u = scaled * inv_gain;
  } else {
    v = xv + bias;
    u = act_value<A>(v, p.alpha);
    scaled = u * p.gain;
  }
  // A clamped element passes no gradient. From a saved (clamped) y, |y| == clamp counts as
  // clamped; torch.clamp passes the gradient at exact equality: a difference on a set of
  // measure zero only.
  if (p.clamp >= 0.f && (use_y ? fabsf(scaled) >= clamp_y : fabsf(scaled) > p.clamp)) return 0.f;
  if (Mode == 1) return gv * p.gain * act_deriv<A>(v, u, p.alpha);
  return gv * hv * p.gain * act_deriv2<A>(v, p.alpha);
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Loads N consecutive elements starting at i (aligned when N > 1), as float.
template <typename T, int N, typename Index>
__device__ __forceinline__ void load_pack(const void* base, Index i, float (&out)[N]) {
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(static_cast<const T*>(base) + i);
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = load_float(&pack.v[k]);
}

template <typename T, int N, typename Index>
__device__ __forceinline__ void store_pack(void* base, Index i, const float (&in)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int k = 0; k < N; ++k) store_float(&pack.v[k], in[k]);
  *reinterpret_cast<Pack<T, N>*>(static_cast<T*>(base) + i) = pack;
}

// N elements from i on: every operand is read once and the result written once, in packs of N
// (16-byte accesses when N > 1). The channel is found with at most one division per pack.
template <typename T, typename Index, int A, int Mode, int N>
__device__ __forceinline__ void process(const BiasActParams& p, int walk, bool use_y, float inv_gain, float clamp_y,
                                        Index i) {
  float xv[N] = {}, yv[N] = {}, gv[N] = {}, hv[N] = {}, bias[N] = {}, out[N];
  const bool need_x = Mode == 0 || Mode == 2 || !use_y;
  if (need_x) load_pack<T, N>(p.x, i, xv);
  if (Mode != 0) load_pack<T, N>(p.g, i, gv);
  if (Mode == 1 && use_y) load_pack<T, N>(p.y, i, yv);
  if (Mode == 2) load_pack<T, N>(p.h, i, hv);
  if (walk != kNoBias && (need_x)) {
    const T* b = static_cast<const T*>(p.b);
    const Index channels = static_cast<Index>(p.channels);
    const Index stride = static_cast<Index>(p.channel_stride);
    Index c = (i / stride) % channels;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (walk == kGeneral && k > 0) c = ((i + k) / stride) % channels;
      bias[k] = load_float(b + c);
      if (walk == kStrideOne && ++c == channels) c = 0;
    }
  }
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = element<A, Mode>(p, use_y, inv_gain, clamp_y, xv[k], yv[k], gv[k], hv[k], bias[k]);
  store_pack<T, N>(p.out, i, out);
}

// Grid-stride loop over packs of N, then the last numel % N elements one at a time.
template <typename T, typename Index, int A, int Mode, int N>
__global__ void bias_act_kernel(BiasActParams p, int walk) {
  const bool use_y = Mode == 1 && grad_from_output<A>() && p.y != nullptr;
  const float inv_gain = p.gain != 0.f ? 1.f / p.gain : 0.f;
  T clamp_t;
  store_float(&clamp_t, p.clamp);
  const float clamp_y = load_float(&clamp_t);
  const Index n = static_cast<Index>(p.numel);
  const Index packs = n / N;
  const Index first = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index j = first; j < packs; j += step) process<T, Index, A, Mode, N>(p, walk, use_y, inv_gain, clamp_y, j * N);
  if (N > 1) {
    const int tail_walk = walk == kNoBias ? kNoBias : kGeneral;
    for (Index i = packs * N + first; i < n; i += step) process<T, Index, A, Mode, 1>(p, tail_walk, use_y, inv_gain, clamp_y, i);
  }
}

template <typename T>
constexpr int pack_width() { return 16 / sizeof(T); }

static_assert(kElementwiseThreads * kElementwiseMaxBlocks <= kBiasActMaxGridThreads,
              "bias_act_fits_int32 leaves too little head room for the grid-stride loops");

bool aligned16(const void* ptr) { return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename T, typename Index, int A, int Mode, int N>
void launch_kernel(const BiasActParams& p, int walk, cudaStream_t stream) {
  const LaunchShape s = elementwise_launch_shape((p.numel + N - 1) / N);
  bias_act_kernel<T, Index, A, Mode, N><<<s.blocks, s.threads, 0, stream>>>(p, walk);
}

template <typename T, int A, int Mode>
void launch_mode(const BiasActParams& p, cudaStream_t stream) {
  constexpr int V = pack_width<T>();
  const bool vector_ok = aligned16(p.x) && aligned16(p.y) && aligned16(p.g) && aligned16(p.h) && aligned16(p.out);
  int walk = kGeneral;
  if (p.b == nullptr) walk = kNoBias;
  else if (p.channel_stride == 1) walk = kStrideOne;
  else if (vector_ok && p.channel_stride % V == 0) walk = kPerVector;
  // 32-bit indexing wherever it fits: the channel division is the costliest arithmetic here.
  // Larger tensors take the 64-bit scalar path (correct, rarely needed).
  if (!bias_act_fits_int32(p.numel)) {
    launch_kernel<T, int64_t, A, Mode, 1>(p, walk, stream);
  } else if (vector_ok) {
    launch_kernel<T, int32_t, A, Mode, V>(p, walk, stream);
  } else {
    launch_kernel<T, int32_t, A, Mode, 1>(p, walk, stream);
  }
}

template <typename T, int A>
void launch_act(const BiasActParams& p, int mode, cudaStream_t stream) {
  if (mode == 0) launch_mode<T, A, 0>(p, stream);
  if (mode == 1) launch_mode<T, A, 1>(p, stream);
  if (mode == 2) launch_mode<T, A, 2>(p, stream);
}

template <typename T>
cudaError_t launch_typed(const BiasActParams& p, int mode, cudaStream_t stream) {
  switch (p.act) {
    case kLinear: launch_act<T, kLinear>(p, mode, stream); break;
    case kRelu: launch_act<T, kRelu>(p, mode, stream); break;
    case kLrelu: launch_act<T, kLrelu>(p, mode, stream); break;
    case kTanh: launch_act<T, kTanh>(p, mode, stream); break;
    case kSigmoid: launch_act<T, kSigmoid>(p, mode, stream); break;
    case kElu: launch_act<T, kElu>(p, mode, stream); break;
    case kSelu: launch_act<T, kSelu>(p, mode, stream); break;
    case kSoftplus: launch_act<T, kSoftplus>(p, mode, stream); break;
    case kSwish: launch_act<T, kSwish>(p, mode, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch(const BiasActParams& p, DType dtype, int mode, cudaStream_t stream) {
  if (p.numel == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch_typed<float>(p, mode, stream);
    case DType::kFloat16: return launch_typed<__half>(p, mode, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(p, mode, stream);
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
