// Kernels for upfirdn2d. The backward pass is upfirdn2d again with the transposed configuration
// (the Python layer derives it), so these kernels serve every derivative order.
//
// Memory formats: the kernels take strides rather than converting. A channels_last tensor then
// costs no extra copy in (and none out: the bindings allocate the output in the input's format),
// which matters because the op is memory bound; the loop orders follow the layout so that
// neighbouring threads touch neighbouring addresses either way.
//
// The per-thread work lives in upfirdn2d_math.cuh, shared with the host test harness.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "elementwise.cuh"
#include "upfirdn2d.h"
#include "upfirdn2d_math.cuh"

namespace sg2 {
namespace {

using namespace ufd;

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads) general_kernel(Upfirdn2dParams p, bool c_inner) {
  __shared__ float w[kUpfirdn2dMaxTaps * kUpfirdn2dMaxTaps];
  load_weights(p, threadIdx.x, blockDim.x, w);
  __syncthreads();
  const Index numel = static_cast<Index>(p.batch) * static_cast<Index>(p.channels) * p.out_h * p.out_w;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    general_output<T, Index>(p, i, c_inner, w);
  }
}

template <typename T, class Cfg>
__global__ void __launch_bounds__(kThreads) tiled_kernel(Upfirdn2dParams p, int64_t groups) {
  __shared__ float w[Cfg::FH * Cfg::FW];
  __shared__ float s[Cfg::kInElems];
  load_weights(p, threadIdx.x, blockDim.x, w);
  for (int64_t g = blockIdx.y; g < groups; g += gridDim.y) {
    const TileCoords t = tile_coords<Cfg>(p, blockIdx.x, g);
    tile_load<T, Cfg>(p, t, threadIdx.x, blockDim.x, s);
    __syncthreads();  // the tile (and, the first time, w) is complete
    tile_compute<T, Cfg>(p, t, threadIdx.x, blockDim.x, s, w);
    __syncthreads();  // everyone is done reading s before the next group overwrites it
  }
}

template <typename T, class Cfg>
cudaError_t launch_tiled(const Upfirdn2dParams& p, const Plan& plan, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(plan.grid_x), static_cast<unsigned int>(plan.grid_y));
  tiled_kernel<T, Cfg><<<grid, kThreads, 0, stream>>>(p, plan.groups);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const Upfirdn2dParams& p, cudaStream_t stream) {
  const Plan plan = make_plan(p);
  switch (plan.kernel) {
    case Kernel::kGeneral: {
      const unsigned int blocks = static_cast<unsigned int>(plan.grid_x);
      if (plan.index64) {
        general_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(p, plan.c_inner);
      } else {
        general_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(p, plan.c_inner);
      }
      return cudaGetLastError();
    }
    case Kernel::kFilterRows: return launch_tiled<T, TileFilterRows>(p, plan, stream);
    case Kernel::kUp2Rows: return launch_tiled<T, TileUp2Rows>(p, plan, stream);
    case Kernel::kDown2Rows: return launch_tiled<T, TileDown2Rows>(p, plan, stream);
    case Kernel::kFilterCh: return launch_tiled<T, TileFilterCh>(p, plan, stream);
    case Kernel::kUp2Ch: return launch_tiled<T, TileUp2Ch>(p, plan, stream);
    case Kernel::kDown2Ch: return launch_tiled<T, TileDown2Ch>(p, plan, stream);
  }
  return cudaErrorInvalidValue;
}

bool within_limits(const Upfirdn2dParams& p) {
  auto factor_ok = [](int v) { return v >= 1 && v <= kUpfirdn2dMaxFactor; };
  auto taps_ok = [](int v) { return v >= 1 && v <= kUpfirdn2dMaxTaps; };
  if (!factor_ok(p.up_x) || !factor_ok(p.up_y) || !factor_ok(p.down_x) || !factor_ok(p.down_y)) return false;
  if (!taps_ok(p.filter_w) || !taps_ok(p.filter_h)) return false;
  if (p.separable && p.filter_w != p.filter_h) return false;
  if (p.batch < 0 || p.channels < 0 || p.in_h < 0 || p.in_w < 0 || p.out_h < 1 || p.out_w < 1) return false;
  for (int d = 0; d < 4; ++d) {
    if (p.x_stride[d] < 0 || p.y_stride[d] < 0) return false;
  }
  if (p.path == kUpfirdn2dTiled && !upfirdn2d_tiled_covers(p)) return false;
  return p.path >= kUpfirdn2dAuto && p.path <= kUpfirdn2dTiled;
}

}  // namespace

cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, DType dtype, cudaStream_t stream) {
  if (!within_limits(p)) return cudaErrorInvalidValue;
  if (p.batch == 0 || p.channels == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch_typed<float>(p, stream);
    case DType::kFloat16: return launch_typed<__half>(p, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sg2
