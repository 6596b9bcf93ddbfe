// Kernels that test the emulator itself: correct uses of each construct it emulates (barriers,
// shared memory, every warp collective, atomics) and the misuses it must report (a missing
// barrier, a shuffle half a warp never reaches, a lane read outside the mask, a deadlock, an
// invalid launch, an out-of-bounds write for the AddressSanitizer build). Compiled by build.py
// exactly as the csrc/ kernels are; driven by tests/test_emulator.py through the C entry points
// at the bottom.
#include <cstdint>
#include <cuda_runtime.h>

namespace {

constexpr int kThreads = 64;

// out[i] = in[(i + 1) % blockDim] of the same block, exchanged through shared memory.
// Without the barrier a thread may read its neighbour's slot before the neighbour wrote it.
__global__ void neighbour_kernel(const float* in, float* out, int with_barrier) {
  __shared__ float slot[kThreads];
  const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
  slot[t] = in[base + t];
  if (with_barrier) __syncthreads();
  out[base + t] = slot[(t + 1) % blockDim.x];
}

// Every collective, on a full warp; each thread writes what it got into out[8 * i + k].
__global__ void collectives_kernel(const int* in, int* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int v = in[i];
  int* o = out + 8 * i;
  o[0] = __shfl_sync(0xffffffffu, v, 5);
  o[1] = __shfl_up_sync(0xffffffffu, v, 3);
  o[2] = __shfl_down_sync(0xffffffffu, v, 3);
  o[3] = __shfl_xor_sync(0xffffffffu, v, 9);
  o[4] = static_cast<int>(__ballot_sync(0xffffffffu, v & 1));
  o[5] = __any_sync(0xffffffffu, v > 90);
  o[6] = __all_sync(0xffffffffu, v >= 0);
  __syncwarp();
  // Two half-warp groups, in segments of 8: the low half swaps neighbours; the high half's xor 9
  // leaves its segment, so each lane keeps its own value.
  const int lane = threadIdx.x % 32;
  o[7] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, v, 1, 8) : __shfl_xor_sync(0xffff0000u, v, 9, 8);
}

// Lanes 0-15 shuffle with a mask naming all 32 lanes; lanes 16-31 leave without reaching it.
__global__ void half_warp_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Lane 0-15 shuffle among themselves but read lane (i ^ 16), which is outside the mask.
__global__ void outside_mask_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0x0000ffffu, v, 16);
  out[threadIdx.x] = v;
}

// Thread 0 waits at the barrier; the rest of its warp waits at a shuffle that names thread 0.
__global__ void deadlock_kernel(float* out) {
  float v = 1.f;
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

// Every thread of every block adds to one counter and to one float sum.
__global__ void atomics_kernel(int* counter, float* sum) {
  atomicAdd(counter, 1);
  atomicAdd(sum, 0.5f);
}

// Writes one element past the end of out (n elements): the AddressSanitizer build reports it.
__global__ void overflow_kernel(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.f;
}

// Thread t writes slot t + 1 of a 32-float shared array: the last one lands past its end.
__global__ void shared_overflow_kernel(float* out) {
  __shared__ float s[32];
  s[threadIdx.x + 1] = 1.f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// A value of blockIdx/gridDim/blockDim per thread, to check the launch geometry.
__global__ void geometry_kernel(int* out) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  out[block * threads + t] = block * 1000 + t;
}

}  // namespace

extern "C" {

int selftest_neighbour(const float* in, float* out, int blocks, int with_barrier) {
  neighbour_kernel<<<blocks, kThreads>>>(in, out, with_barrier);
  return cudaGetLastError();
}

int selftest_collectives(const int* in, int* out, int blocks) {
  collectives_kernel<<<blocks, kThreads, 0, nullptr>>>(in, out);
  return cudaGetLastError();
}

int selftest_half_warp(float* out) {
  half_warp_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

int selftest_outside_mask(float* out) {
  outside_mask_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

int selftest_deadlock(float* out) {
  deadlock_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

int selftest_atomics(int* counter, float* sum, int blocks, int threads) {
  atomics_kernel<<<blocks, threads>>>(counter, sum);
  return cudaGetLastError();
}

int selftest_overflow(float* out, int n) {
  overflow_kernel<<<(n + 32) / 32, 32>>>(out, n);
  return cudaGetLastError();
}

int selftest_shared_overflow(float* out) {
  shared_overflow_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

int selftest_geometry(int* out, int gx, int gy, int gz, int bx, int by, int bz) {
  geometry_kernel<<<dim3(gx, gy, gz), dim3(bx, by, bz)>>>(out);
  return cudaGetLastError();
}

}  // extern "C"
