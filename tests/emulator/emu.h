// The CUDA emulator's device-side vocabulary, force-included (g++ -include) ahead of every
// csrc/*.cu file compiled for the CPU. README.md beside this file describes the model.
//
// With a host compiler CUDA's headers declare the host API only: threadIdx, __syncthreads, the
// warp intrinsics and atomics are missing, and __global__ / __device__ / __shared__ expand to
// nothing. This header supplies them, backed by the fiber scheduler in runtime.cpp. The two
// constructs a macro cannot express are rewritten in the source first (build.py):
//     kernel<<<grid, block, smem, stream>>>(args);   ->  ::sg2emu::launch({grid, block, smem, stream}, kernel, args);
//     __shared__ T name[dims];                       ->  SG2_EMU_SHARED(T, name, [dims]);
#pragma once

#include <cuda_runtime.h>  // dim3, uint3, cudaError_t, cudaStream_t: host declarations only

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace sg2emu {

// ---- where the running emulated thread is ---------------------------------------------------
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// ---- block barrier and warp collectives (each is a scheduling point) ------------------------
void syncthreads();

enum Collective : int {
  kShflIdx = 0,
  kShflUp = 1,
  kShflDown = 2,
  kShflXor = 3,
  kBallot = 4,
  kAny = 5,
  kAll = 6,
  kSyncWarp = 7,
};

// Meets the other lanes named in `mask` at the same collective and returns this lane's result
// (the source lane's value for shuffles, the vote for ballot / any / all). `bits` carries the
// lane's value (shuffles) or predicate (votes); `arg` the source lane, delta or lane mask.
uint64_t collective(Collective kind, unsigned mask, uint64_t bits, int arg, int width);

template <typename T>
T shuffle(Collective kind, unsigned mask, T v, int arg, int width) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "the emulator shuffles trivially copyable values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = collective(kind, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// ---- shared memory ---------------------------------------------------------------------------
// One allocation per declaration site per block, filled with 0xFF bytes (NaN for float and half
// types) when the block starts using it, so that a read before any write shows; released when
// the block ends (an AddressSanitizer build sees out-of-bounds accesses to it).
void* shared_alloc(const void* site, size_t bytes, size_t align);

template <typename A>
A& shared(const void* site) {
  return *static_cast<A*>(shared_alloc(site, sizeof(A), alignof(A)));
}

// ---- launches --------------------------------------------------------------------------------
struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t shared_bytes = 0;
  cudaStream_t stream = nullptr;
};

// Runs body() once per thread of every block of the grid; sets the error cudaGetLastError()
// returns (invalid configurations, deadlocks, collective misuse).
void run_grid(const LaunchConfig& cfg, const std::function<void()>& body);

template <typename... P, typename... A>
void launch(const LaunchConfig& cfg, void (*kernel)(P...), A&&... args) {
  // The kernel's parameters are copied once at the launch, as the GPU copies them to constant
  // memory; each thread then gets its own copies, as each GPU thread reads its own.
  std::tuple<typename std::decay<P>::type...> params(std::forward<A>(args)...);
  run_grid(cfg, [&params, kernel]() { std::apply(kernel, params); });
}

}  // namespace sg2emu

// ---- the CUDA names ------------------------------------------------------------------------------
#define threadIdx (::sg2emu::thread_idx())
#define blockIdx (::sg2emu::block_idx())
#define blockDim (::sg2emu::block_dim())
#define gridDim (::sg2emu::grid_dim())
#define warpSize 32

// Every __shared__ must have been rewritten (build.py): one left here would silently become a
// per-thread local, so it is a compile error instead.
#undef __shared__
#define __shared__ __shared___declaration_not_rewritten_by_the_emulator

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#define SG2_EMU_SHARED(T, name, dims)        \
  static const char sg2emu_site_##name = 0; \
  auto& name = ::sg2emu::shared<T dims>(&sg2emu_site_##name)

inline void __syncthreads() { ::sg2emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::sg2emu::collective(::sg2emu::kSyncWarp, mask, 0, 0, 32);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return ::sg2emu::shuffle(::sg2emu::kShflIdx, mask, v, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::sg2emu::shuffle(::sg2emu::kShflUp, mask, v, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::sg2emu::shuffle(::sg2emu::kShflDown, mask, v, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::sg2emu::shuffle(::sg2emu::kShflXor, mask, v, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(::sg2emu::collective(::sg2emu::kBallot, mask, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return static_cast<int>(::sg2emu::collective(::sg2emu::kAny, mask, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  return static_cast<int>(::sg2emu::collective(::sg2emu::kAll, mask, pred != 0, 0, 32));
}

// Atomics: threads switch only at barriers and collectives, so a plain read-modify-write is
// atomic here. They return the old value, as CUDA's do.
template <typename T>
inline T atomicAdd(T* address, T v) {
  const T old = *address;
  *address = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* address, T v) {
  const T old = *address;
  *address = old < v ? v : old;
  return old;
}
template <typename T>
inline T atomicMin(T* address, T v) {
  const T old = *address;
  *address = v < old ? v : old;
  return old;
}
template <typename T>
inline T atomicExch(T* address, T v) {
  const T old = *address;
  *address = v;
  return old;
}
template <typename T>
inline T atomicCAS(T* address, T compare, T v) {
  const T old = *address;
  if (old == compare) *address = v;
  return old;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline void __threadfence() {}
inline void __threadfence_block() {}

// Device math the host lacks. These are the exact functions, where the GPU's intrinsics
// (__expf, rsqrtf) are approximations: the tests' tolerances cover the difference.
inline float __expf(float v) { return std::exp(v); }
inline float __logf(float v) { return std::log(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float v) { return 1.f / std::sqrt(v); }
inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }
