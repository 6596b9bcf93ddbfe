// Helpers for elementwise kernels: float32 compute on float / half / bfloat16 storage, and the
// launch shape. Device code only; no torch headers.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace sg2 {

__device__ __forceinline__ float load_float(const float* p) { return *p; }
__device__ __forceinline__ float load_float(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_float(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store_float(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_float(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_float(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

struct LaunchShape {
  unsigned int blocks;
  unsigned int threads;
};

// Grid-stride loops: enough blocks to fill any current GPU several times over, never more
// than the work needs (each thread handles at least 4 elements when the tensor is large).
constexpr int64_t kElementwiseThreads = 256;
constexpr int64_t kElementwiseMaxBlocks = 65536;

inline LaunchShape elementwise_launch_shape(int64_t numel) {
  constexpr int64_t kThreads = kElementwiseThreads;
  constexpr int64_t kMaxBlocks = kElementwiseMaxBlocks;
  int64_t blocks = (numel + kThreads * 4 - 1) / (kThreads * 4);
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return {static_cast<unsigned int>(blocks), static_cast<unsigned int>(kThreads)};
}

}  // namespace sg2
