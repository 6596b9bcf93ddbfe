// Kernels of modulated_conv2d (see modulated_conv.h): weight modulation with demodulation and its
// backward, and the fused epilogue with its one-pass backward. Per-thread work lives in
// modulated_conv_math.cuh (tested on the CPU); this file adds the reductions and the launches.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "elementwise.cuh"
#include "modulated_conv.h"
#include "modulated_conv_math.cuh"

namespace sg2 {
namespace {

constexpr int kModThreads = 256;  // threads per (n, o) row of the modulation kernels

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over a 1-D block of kModThreads threads; every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[kModThreads / 32];
  __shared__ float total;
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kModThreads / 32 ? partial[lane] : 0.f;
    v = warp_sum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// ---------------------------------------------------------------------------------------------
// Modulation. One block per row (o, n): grid (O, N).

template <typename Tp, typename To>
__global__ void __launch_bounds__(kModThreads) modulate_kernel(ModulateParams p) {
  const int o = blockIdx.x, n = blockIdx.y;
  float d = 1.f;
  if (p.demodulate) d = rsqrtf(block_sum(modulate_sumsq_part<Tp>(p, n, o, threadIdx.x, kModThreads)) + p.eps);
  if (threadIdx.x == 0) p.dcoefs[static_cast<int64_t>(n) * p.out_channels + o] = d;
  modulate_store_part<Tp, To>(p, n, o, d, threadIdx.x, kModThreads);
}

// q[n, o] = d * sum_j g * m (only with demodulation).
template <typename Tp, typename To>
__global__ void __launch_bounds__(kModThreads) modulate_q_kernel(ModulateParams p) {
  const int o = blockIdx.x, n = blockIdx.y;
  const float s = block_sum(modulate_q_part<Tp, To>(p, n, o, threadIdx.x, kModThreads));
  const int64_t no = static_cast<int64_t>(n) * p.out_channels + o;
  if (threadIdx.x == 0) p.q[no] = s * p.dcoefs[no];
}

// One thread per weight element, looping over the batch (coalesced along the row).
template <typename Tp, typename To>
__global__ void modulate_grad_weight_kernel(ModulateParams p) {
  const int64_t total = static_cast<int64_t>(p.out_channels) * p.in_channels * p.kernel_size;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store_float(static_cast<Tp*>(p.grad_weight) + idx, modulate_grad_weight_at<Tp, To>(p, idx));
  }
}

// Block (32 input channels) x (8 slices of the output channels) for one sample: grid
// (ceil(I / 32), N). The 8 slices are summed in shared memory.
constexpr int kStyleLanes = 32;
constexpr int kStyleSlices = 8;

template <typename Tp, typename To>
__global__ void __launch_bounds__(kStyleLanes* kStyleSlices) modulate_grad_styles_kernel(ModulateParams p) {
  __shared__ float part[kStyleSlices][kStyleLanes];
  const int n = blockIdx.y;
  const int i = blockIdx.x * kStyleLanes + threadIdx.x;
  part[threadIdx.y][threadIdx.x] =
      i < p.in_channels ? modulate_grad_styles_part<Tp, To>(p, n, i, threadIdx.y, kStyleSlices) : 0.f;
  __syncthreads();
  if (threadIdx.y == 0 && i < p.in_channels) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kStyleSlices; ++k) s += part[k][threadIdx.x];
    store_float(static_cast<Tp*>(p.grad_styles) + static_cast<int64_t>(n) * p.in_channels + i, s);
  }
}

template <typename Tp, typename To>
cudaError_t modulate_typed(const ModulateParams& p, bool backward, cudaStream_t stream) {
  const dim3 rows(p.out_channels, p.batch_size);
  if (!backward) {
    modulate_kernel<Tp, To><<<rows, kModThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  if (p.demodulate) {
    modulate_q_kernel<Tp, To><<<rows, kModThreads, 0, stream>>>(p);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  const LaunchShape s = elementwise_launch_shape(static_cast<int64_t>(p.out_channels) * p.in_channels * p.kernel_size);
  modulate_grad_weight_kernel<Tp, To><<<s.blocks, s.threads, 0, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 style_grid((p.in_channels + kStyleLanes - 1) / kStyleLanes, p.batch_size);
  modulate_grad_styles_kernel<Tp, To><<<style_grid, dim3(kStyleLanes, kStyleSlices), 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename Tp>
cudaError_t modulate_out(const ModulateParams& p, DType out_dtype, bool backward, cudaStream_t stream) {
  switch (out_dtype) {
    case DType::kFloat32: return modulate_typed<Tp, float>(p, backward, stream);
    case DType::kFloat16: return modulate_typed<Tp, __half>(p, backward, stream);
    case DType::kBFloat16: return modulate_typed<Tp, __nv_bfloat16>(p, backward, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t modulate(const ModulateParams& p, DType param_dtype, DType out_dtype, bool backward, cudaStream_t stream) {
  if (p.batch_size == 0 || p.out_channels == 0 || p.in_channels == 0 || p.kernel_size == 0) return cudaSuccess;
  if (p.batch_size > 65535) return cudaErrorInvalidValue;  // grid dimension y
  switch (param_dtype) {
    case DType::kFloat32: return modulate_out<float>(p, out_dtype, backward, stream);
    case DType::kFloat16: return modulate_out<__half>(p, out_dtype, backward, stream);
    case DType::kBFloat16: return modulate_out<__nv_bfloat16>(p, out_dtype, backward, stream);
  }
  return cudaErrorInvalidValue;
}

// ---------------------------------------------------------------------------------------------
// Epilogue. Block (bx, by) = kEpilogueThreads threads; grid (tiles_a * tiles_b, N).

template <typename T, int Act, bool ChannelsLast>
__global__ void __launch_bounds__(kEpilogueThreads) epilogue_forward_kernel(EpilogueParams p, int64_t grid_b) {
  const int64_t tile_a = blockIdx.x / grid_b, tile_b = blockIdx.x - tile_a * grid_b;
  const ThreadOrigin t = epilogue_thread_origin(tile_a, tile_b, threadIdx.x, threadIdx.y, blockDim.x, blockDim.y);
  epilogue_forward_thread<T, Act, ChannelsLast>(p, blockIdx.y, t, blockDim.x, blockDim.y);
}

// Sum over the bx lanes of one row of the block (a group of consecutive lanes of one warp).
__device__ __forceinline__ float row_sum(float v, int bx) {
  for (int off = bx >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the by rows of the block, through shared memory; the result is valid in row 0.
__device__ __forceinline__ float column_sum(float v, float* buf) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  buf[tid] = v;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.y == 0) {
    for (int r = 0; r < static_cast<int>(blockDim.y); ++r) s += buf[r * blockDim.x + threadIdx.x];
  }
  __syncthreads();  // buf is reused by the next call
  return s;
}

template <typename T, int Act, bool ChannelsLast>
__global__ void __launch_bounds__(kEpilogueThreads) epilogue_backward_kernel(EpilogueParams p, int64_t grid_b) {
  __shared__ float buf[kEpilogueThreads];
  const int64_t tile_a = blockIdx.x / grid_b, tile_b = blockIdx.x - tile_a * grid_b;
  const int bx = blockDim.x, by = blockDim.y;
  const int n = blockIdx.y;
  const ThreadOrigin t = epilogue_thread_origin(tile_a, tile_b, threadIdx.x, threadIdx.y, bx, by);
  EpiloguePartials part;
  epilogue_backward_thread<T, Act, ChannelsLast>(p, n, t, bx, by, part);

  const int a_len = ChannelsLast ? p.pixels : p.channels;
  const int b_len = ChannelsLast ? p.channels : p.pixels;
  // Sums along B (per a): within each row of lanes; lane tx == 0 adds them to global memory.
  // Sums along A (per b): across the rows, in shared memory; row ty == 0 adds them.
  // In NCHW, A is the channel axis; in NHWC, the pixel axis.
  const bool want_x = p.grad_scale != nullptr, want_1 = p.grad_bias != nullptr, want_p = p.grad_noise != nullptr;
#pragma unroll
  for (int ja = 0; ja < kTileA; ++ja) {
    const int a = t.a_first + by * ja;
    if (!ChannelsLast) {
      const float sx = want_x ? row_sum(part.chan_x[ja], bx) : 0.f;
      const float s1 = want_1 ? row_sum(part.chan_1[ja], bx) : 0.f;
      if (threadIdx.x == 0 && a < a_len) {
        const int64_t idx = static_cast<int64_t>(n) * p.channels + a;
        if (want_x) atomicAdd(p.grad_scale + idx, sx);
        if (want_1) atomicAdd(p.grad_bias + idx, s1);
      }
    } else {
      const float sp = want_p ? row_sum(part.pix_1[ja], bx) : 0.f;
      if (threadIdx.x == 0 && a < a_len && want_p) atomicAdd(p.grad_noise + static_cast<int64_t>(n) * p.pixels + a, sp);
    }
  }
#pragma unroll
  for (int jb = 0; jb < kTileB; ++jb) {
    const int b = t.b_first + bx * jb;
    if (!ChannelsLast) {
      if (want_p) {
        const float sp = column_sum(part.pix_1[jb], buf);
        if (threadIdx.y == 0 && b < b_len) atomicAdd(p.grad_noise + static_cast<int64_t>(n) * p.pixels + b, sp);
      }
    } else {
      const float sx = want_x ? column_sum(part.chan_x[jb], buf) : 0.f;
      const float s1 = want_1 ? column_sum(part.chan_1[jb], buf) : 0.f;
      if (threadIdx.y == 0 && b < b_len) {
        const int64_t idx = static_cast<int64_t>(n) * p.channels + b;
        if (want_x) atomicAdd(p.grad_scale + idx, sx);
        if (want_1) atomicAdd(p.grad_bias + idx, s1);
      }
    }
  }
}

template <typename T, int Act, bool ChannelsLast>
cudaError_t epilogue_launch(const EpilogueParams& p, bool backward, cudaStream_t stream) {
  const EpilogueTiling t = epilogue_tiling(p.channels, p.pixels, p.channels_last);
  const dim3 grid(static_cast<unsigned int>(t.grid_a * t.grid_b), p.batch_size);
  const dim3 block(t.bx, t.by);
  if (backward) {
    epilogue_backward_kernel<T, Act, ChannelsLast><<<grid, block, 0, stream>>>(p, t.grid_b);
  } else {
    epilogue_forward_kernel<T, Act, ChannelsLast><<<grid, block, 0, stream>>>(p, t.grid_b);
  }
  return cudaGetLastError();
}

template <typename T, int Act>
cudaError_t epilogue_layout(const EpilogueParams& p, bool backward, cudaStream_t stream) {
  return p.channels_last ? epilogue_launch<T, Act, true>(p, backward, stream)
                         : epilogue_launch<T, Act, false>(p, backward, stream);
}

template <typename T>
cudaError_t epilogue_act(const EpilogueParams& p, bool backward, cudaStream_t stream) {
  switch (p.act) {
    case kLinear: return epilogue_layout<T, kLinear>(p, backward, stream);
    case kRelu: return epilogue_layout<T, kRelu>(p, backward, stream);
    case kLrelu: return epilogue_layout<T, kLrelu>(p, backward, stream);
    case kTanh: return epilogue_layout<T, kTanh>(p, backward, stream);
    case kSigmoid: return epilogue_layout<T, kSigmoid>(p, backward, stream);
    case kElu: return epilogue_layout<T, kElu>(p, backward, stream);
    case kSelu: return epilogue_layout<T, kSelu>(p, backward, stream);
    case kSoftplus: return epilogue_layout<T, kSoftplus>(p, backward, stream);
    case kSwish: return epilogue_layout<T, kSwish>(p, backward, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t epilogue(const EpilogueParams& p, DType dtype, bool backward, cudaStream_t stream) {
  if (p.batch_size == 0 || p.channels == 0 || p.pixels == 0) return cudaSuccess;
  const EpilogueTiling t = epilogue_tiling(p.channels, p.pixels, p.channels_last);
  if (p.batch_size > 65535 || t.grid_a * t.grid_b > 0x7fffffff) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32: return epilogue_act<float>(p, backward, stream);
    case DType::kFloat16: return epilogue_act<__half>(p, backward, stream);
    case DType::kBFloat16: return epilogue_act<__nv_bfloat16>(p, backward, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_modulate_weights(const ModulateParams& p, DType param_dtype, DType out_dtype, cudaStream_t stream) {
  return modulate(p, param_dtype, out_dtype, false, stream);
}

cudaError_t launch_modulate_weights_grad(const ModulateParams& p, DType param_dtype, DType out_dtype,
                                         cudaStream_t stream) {
  return modulate(p, param_dtype, out_dtype, true, stream);
}

cudaError_t launch_epilogue_forward(const EpilogueParams& p, DType dtype, cudaStream_t stream) {
  return epilogue(p, dtype, false, stream);
}

cudaError_t launch_epilogue_backward(const EpilogueParams& p, DType dtype, cudaStream_t stream) {
  return epilogue(p, dtype, true, stream);
}

}  // namespace sg2
