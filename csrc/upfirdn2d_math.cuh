// The index math and the per-thread work of the upfirdn2d kernels, written once for two
// compilers: nvcc builds it into the kernels of upfirdn2d.cu (as device functions), and a plain
// C++ compiler builds it into the host test harness (tests/kernel_harness/upfirdn2d_host.cpp),
// which runs every block and thread of a launch on the CPU and compares with the reference.
// The __global__ wrappers in upfirdn2d.cu only add __shared__ arrays and __syncthreads().
//
// Before including this file, the includer provides load_float(const T*) and
// store_float(T*, float) for each storage type T it instantiates (elementwise.cuh on the GPU).
#pragma once

#include <cstdint>

#include "upfirdn2d.h"

#ifdef __CUDACC__
#define SG2_UFD_FN __device__ __forceinline__
#define SG2_UFD_ASSERT(cond) ((void)0)
#else
#define SG2_UFD_FN inline
#ifndef SG2_UFD_ASSERT
#define SG2_UFD_ASSERT(cond) ((void)0)
#endif
#endif

namespace sg2 {
namespace ufd {

constexpr int kThreads = 256;  // threads per block, both kernels

// Floor division and modulo for a positive divisor (C++ rounds toward zero; paddings and crops
// make the dividends negative).
SG2_UFD_FN int floor_div(int a, int b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }
SG2_UFD_FN int floor_mod(int a, int b) { return a - floor_div(a, b) * b; }
SG2_UFD_FN int ceil_div(int a, int b) { return -floor_div(-a, b); }

// Along one axis, output o's taps k sit over upsampled positions o*down + k - pad0; only the
// positions divisible by up hold input samples (the rest are inserted zeros). TapRun names the
// first tap that lands on a sample and that sample: taps k0, k0+up, k0+2*up, ... (< taps) see
// samples j0, j0+1, j0+2, ... (which may lie in the zero padding outside [0, in)).
struct TapRun {
  int k0;  // first tap on a sample, 0 <= k0 < up (may be >= taps: no tap sees a sample)
  int j0;  // the input index under tap k0
};

SG2_UFD_FN TapRun tap_run(int o, int up, int down, int pad0) {
  const int base = o * down - pad0;       // position under tap 0
  const int k0 = floor_mod(-base, up);    // (base + k0) % up == 0
  return {k0, (base + k0) / up};          // an exact division, also for negative positions
}

// The correlation weights the kernels apply, in float32, gain included: w[ky * filter_w + kx]
// multiplies the sample under tap (ky, kx). A convolution reverses the filter along both axes;
// a separable filter is the outer product of its taps. Threads tid, tid+nthreads, ... of a block
// fill it.
SG2_UFD_FN void load_weights(const Upfirdn2dParams& p, int tid, int nthreads, float* w) {
  const int fw = p.filter_w, fh = p.filter_h;
  for (int e = tid; e < fw * fh; e += nthreads) {
    const int ky = e / fw, kx = e - (e / fw) * fw;
    const int sy = p.flip ? ky : fh - 1 - ky;
    const int sx = p.flip ? kx : fw - 1 - kx;
    const float v = p.separable ? p.f[sy] * p.f[sx] : p.f[sy * fw + sx];
    w[e] = v * p.gain;
  }
}

// ------------------------------------------------------------------------------------------------
// General kernel: one output per loop step, read straight from global memory (the caches catch
// the reuse between neighbours). Any factors, taps, padding and strides.

// Output i in traversal order: (batch, row, column, channel) with the channel fastest when y is
// channels_last (c_inner), else (batch, channel, row, column). Consecutive threads then write
// (and mostly read) consecutive addresses in either memory format; the strides alone decide
// where each element lives, so the order never affects the result.
template <typename T, typename Index>
SG2_UFD_FN void general_output(const Upfirdn2dParams& p, Index i, bool c_inner, const float* w) {
  const Index C = static_cast<Index>(p.channels);
  const Index OH = p.out_h, OW = p.out_w;
  Index n, c, r = i;
  int ox, oy;
  if (c_inner) {
    c = r % C; r /= C;
    ox = static_cast<int>(r % OW); r /= OW;
    oy = static_cast<int>(r % OH); n = r / OH;
  } else {
    ox = static_cast<int>(r % OW); r /= OW;
    oy = static_cast<int>(r % OH); r /= OH;
    c = r % C; n = r / C;
  }
  const TapRun rx = tap_run(ox, p.up_x, p.down_x, p.pad_x0);
  const TapRun ry = tap_run(oy, p.up_y, p.down_y, p.pad_y0);
  const T* plane = static_cast<const T*>(p.x) + n * static_cast<Index>(p.x_stride[0]) +
                   c * static_cast<Index>(p.x_stride[1]);
  const Index sh = static_cast<Index>(p.x_stride[2]), sw = static_cast<Index>(p.x_stride[3]);
  float acc = 0.f;
  for (int ky = ry.k0, jy = ry.j0; ky < p.filter_h; ky += p.up_y, ++jy) {
    if (jy < 0 || jy >= p.in_h) continue;  // zero padding
    const T* row = plane + static_cast<Index>(jy) * sh;
    for (int kx = rx.k0, jx = rx.j0; kx < p.filter_w; kx += p.up_x, ++jx) {
      if (jx < 0 || jx >= p.in_w) continue;
      acc += w[ky * p.filter_w + kx] * load_float(row + static_cast<Index>(jx) * sw);
    }
  }
  T* out = static_cast<T*>(p.y) + n * static_cast<Index>(p.y_stride[0]) + c * static_cast<Index>(p.y_stride[1]) +
           static_cast<Index>(oy) * static_cast<Index>(p.y_stride[2]) +
           static_cast<Index>(ox) * static_cast<Index>(p.y_stride[3]);
  store_float(out, acc);
}

// ------------------------------------------------------------------------------------------------
// Tiled fast paths: a block computes a TH x TW tile of outputs for CT channels of one image. It
// first copies the input samples the tile needs (zeros where they fall in the padding) into
// shared memory as float32, then computes each output from there. Everything compile-time, so
// the tap loops unroll.
//
// Along x the tile's outputs ox0 .. ox0+TW-1 see upsampled positions ox0*DX - pad_x0 ..
// (ox0+TW-1)*DX - pad_x0 + FW-1, a span of (TW-1)*DX + FW-1; the samples in it are at most
// that span / UX + 1, starting at jx0 = ceil((ox0*DX - pad_x0) / UX). Likewise along y.
template <int UX_, int UY_, int DX_, int DY_, int FW_, int FH_, int TW_, int TH_, int CT_, bool CInner_>
struct TileConfig {
  static constexpr int UX = UX_, UY = UY_, DX = DX_, DY = DY_, FW = FW_, FH = FH_;
  static constexpr int TW = TW_, TH = TH_;  // output tile
  static constexpr int CT = CT_;            // channels per block
  static constexpr bool CInner = CInner_;   // channel fastest in smem and in the loops (channels_last)
  static constexpr int kInW = ((TW - 1) * DX + FW - 1) / UX + 1;  // input tile
  static constexpr int kInH = ((TH - 1) * DY + FH - 1) / UY + 1;
  static constexpr int kInElems = CT * kInH * kInW;
  static constexpr int kOutElems = CT * TH * TW;
  static constexpr int kTapsX = (FW + UX - 1) / UX;  // most taps of a row that see samples
  static constexpr int kTapsY = (FH + UY - 1) / UY;

  SG2_UFD_FN static int smem_index(int c, int iy, int ix) {
    return CInner ? (iy * kInW + ix) * CT + c : (c * kInH + iy) * kInW + ix;
  }
};

// Where one block works: its spatial tile (from blockIdx.x) and its channel group (blockIdx.y).
struct TileCoords {
  int64_t n;      // image
  int64_t c0;     // first channel
  int ox0, oy0;   // first output column, row
  int jx0, jy0;   // input column, row held at smem column/row 0
};

template <class Cfg>
SG2_UFD_FN int64_t tile_groups_per_image(const Upfirdn2dParams& p) {
  return (p.channels + Cfg::CT - 1) / Cfg::CT;
}

template <class Cfg>
SG2_UFD_FN TileCoords tile_coords(const Upfirdn2dParams& p, int64_t tile, int64_t group) {
  const int tiles_x = (p.out_w + Cfg::TW - 1) / Cfg::TW;
  const int64_t per_image = tile_groups_per_image<Cfg>(p);
  TileCoords t;
  t.n = group / per_image;
  t.c0 = (group - t.n * per_image) * Cfg::CT;
  t.ox0 = static_cast<int>(tile % tiles_x) * Cfg::TW;
  t.oy0 = static_cast<int>(tile / tiles_x) * Cfg::TH;
  t.jx0 = ceil_div(t.ox0 * Cfg::DX - p.pad_x0, Cfg::UX);
  t.jy0 = ceil_div(t.oy0 * Cfg::DY - p.pad_y0, Cfg::UY);
  return t;
}

// Phase 1: threads tid, tid+nthreads, ... copy the input tile to s (float32, zeros outside the
// input and past the last channel). The loop order follows x's memory order for coalescing.
template <typename T, class Cfg>
SG2_UFD_FN void tile_load(const Upfirdn2dParams& p, const TileCoords& t, int tid, int nthreads, float* s) {
  const T* x = static_cast<const T*>(p.x);
  for (int e = tid; e < Cfg::kInElems; e += nthreads) {
    int c, iy, ix;
    if (Cfg::CInner) {
      c = e % Cfg::CT;
      ix = (e / Cfg::CT) % Cfg::kInW;
      iy = e / (Cfg::CT * Cfg::kInW);
    } else {
      ix = e % Cfg::kInW;
      iy = (e / Cfg::kInW) % Cfg::kInH;
      c = e / (Cfg::kInW * Cfg::kInH);
    }
    const int jx = t.jx0 + ix, jy = t.jy0 + iy;
    const int64_t cc = t.c0 + c;
    float v = 0.f;
    if (cc < p.channels && jx >= 0 && jx < p.in_w && jy >= 0 && jy < p.in_h) {
      // 32-bit offsets: the tiled path runs only where upfirdn2d_fits_int32 holds.
      const int32_t off = static_cast<int32_t>(t.n) * static_cast<int32_t>(p.x_stride[0]) +
                          static_cast<int32_t>(cc) * static_cast<int32_t>(p.x_stride[1]) +
                          jy * static_cast<int32_t>(p.x_stride[2]) + jx * static_cast<int32_t>(p.x_stride[3]);
      v = load_float(x + off);
    }
    s[Cfg::smem_index(c, iy, ix)] = v;
  }
}

// Phase 2 (after the block has synchronized): threads tid, tid+nthreads, ... compute the tile's
// outputs from s and the weights w (Cfg::FH x Cfg::FW) and store them. Same tap arithmetic as
// general_output, so the two paths differ only in summation order.
template <typename T, class Cfg>
SG2_UFD_FN void tile_compute(const Upfirdn2dParams& p, const TileCoords& t, int tid, int nthreads,
                             const float* s, const float* w) {
  T* y = static_cast<T*>(p.y);
  for (int e = tid; e < Cfg::kOutElems; e += nthreads) {
    int c, ty, tx;
    if (Cfg::CInner) {
      c = e % Cfg::CT;
      tx = (e / Cfg::CT) % Cfg::TW;
      ty = e / (Cfg::CT * Cfg::TW);
    } else {
      tx = e % Cfg::TW;
      ty = (e / Cfg::TW) % Cfg::TH;
      c = e / (Cfg::TW * Cfg::TH);
    }
    const int ox = t.ox0 + tx, oy = t.oy0 + ty;
    const int64_t cc = t.c0 + c;
    if (ox >= p.out_w || oy >= p.out_h || cc >= p.channels) continue;
    const TapRun rx = tap_run(ox, Cfg::UX, Cfg::DX, p.pad_x0);
    const TapRun ry = tap_run(oy, Cfg::UY, Cfg::DY, p.pad_y0);
    const int ix0 = rx.j0 - t.jx0, iy0 = ry.j0 - t.jy0;
    float acc = 0.f;
#pragma unroll
    for (int a = 0; a < Cfg::kTapsY; ++a) {
      const int ky = ry.k0 + a * Cfg::UY;
      if (ky >= Cfg::FH) continue;
#pragma unroll
      for (int b = 0; b < Cfg::kTapsX; ++b) {
        const int kx = rx.k0 + b * Cfg::UX;
        if (kx >= Cfg::FW) continue;
        SG2_UFD_ASSERT(iy0 + a >= 0 && iy0 + a < Cfg::kInH && ix0 + b >= 0 && ix0 + b < Cfg::kInW);
        acc += w[ky * Cfg::FW + kx] * s[Cfg::smem_index(c, iy0 + a, ix0 + b)];
      }
    }
    const int32_t off = static_cast<int32_t>(t.n) * static_cast<int32_t>(p.y_stride[0]) +
                        static_cast<int32_t>(cc) * static_cast<int32_t>(p.y_stride[1]) +
                        oy * static_cast<int32_t>(p.y_stride[2]) + ox * static_cast<int32_t>(p.y_stride[3]);
    store_float(y + off, acc);
  }
}

// ------------------------------------------------------------------------------------------------
// The tile configurations and the launch plan (host code; the harness runs the same plan).

// Contiguous layouts: one channel per block, wide tiles along the row.
using TileFilterRows = TileConfig<1, 1, 1, 1, 4, 4, 64, 16, 1, false>;  // input tile 67 x 19
using TileUp2Rows = TileConfig<2, 2, 1, 1, 4, 4, 64, 32, 1, false>;     // input tile 34 x 18
using TileDown2Rows = TileConfig<1, 1, 2, 2, 4, 4, 32, 16, 1, false>;   // input tile 66 x 34
// channels_last with many channels: 16 channels per block, channel fastest, small square tiles.
using TileFilterCh = TileConfig<1, 1, 1, 1, 4, 4, 8, 8, 16, true>;      // 16 x 11 x 11
using TileUp2Ch = TileConfig<2, 2, 1, 1, 4, 4, 16, 8, 16, true>;        // 16 x 6 x 10
using TileDown2Ch = TileConfig<1, 1, 2, 2, 4, 4, 8, 8, 16, true>;       // 16 x 18 x 18

enum class Kernel : int {
  kGeneral = 0,
  kFilterRows, kUp2Rows, kDown2Rows,
  kFilterCh, kUp2Ch, kDown2Ch,
};

struct Plan {
  Kernel kernel;
  bool index64;        // general kernel only: int64 offsets
  bool c_inner;        // general kernel only: traversal with the channel fastest
  int64_t grid_x;      // blocks: grid-stride steps (general) or spatial tiles (tiled)
  int64_t grid_y;      // blocks: channel groups (tiled; they loop when there are more)
  int64_t groups;      // tiled: channel groups in all (batch * groups per image)
};

constexpr int64_t kMaxGridY = 65535;

template <class Cfg>
inline Plan tiled_plan(const Upfirdn2dParams& p, Kernel k) {
  Plan plan{};
  plan.kernel = k;
  const int64_t tiles_x = (p.out_w + Cfg::TW - 1) / Cfg::TW;
  const int64_t tiles_y = (p.out_h + Cfg::TH - 1) / Cfg::TH;
  plan.grid_x = tiles_x * tiles_y;
  plan.groups = p.batch * tile_groups_per_image<Cfg>(p);
  plan.grid_y = plan.groups < kMaxGridY ? plan.groups : kMaxGridY;
  return plan;
}

// channels_last with enough channels to fill a 16-wide channel group mostly.
inline bool channels_inner(const int64_t stride[4], int64_t channels) {
  return channels >= 8 && stride[1] == 1;
}

// Which kernel runs and its grid. Assumes parameters within the limits (the launcher checks).
inline Plan make_plan(const Upfirdn2dParams& p) {
  const bool tiled = p.path == kUpfirdn2dTiled || (p.path == kUpfirdn2dAuto && upfirdn2d_tiled_covers(p));
  if (tiled) {
    const bool ch = channels_inner(p.x_stride, p.channels);
    if (p.up_x == 2) return ch ? tiled_plan<TileUp2Ch>(p, Kernel::kUp2Ch) : tiled_plan<TileUp2Rows>(p, Kernel::kUp2Rows);
    if (p.down_x == 2)
      return ch ? tiled_plan<TileDown2Ch>(p, Kernel::kDown2Ch) : tiled_plan<TileDown2Rows>(p, Kernel::kDown2Rows);
    return ch ? tiled_plan<TileFilterCh>(p, Kernel::kFilterCh) : tiled_plan<TileFilterRows>(p, Kernel::kFilterRows);
  }
  Plan plan{};
  plan.kernel = Kernel::kGeneral;
  plan.index64 = !upfirdn2d_fits_int32(p);
  plan.c_inner = channels_inner(p.y_stride, p.channels);
  const int64_t numel = p.batch * p.channels * p.out_h * p.out_w;
  // Enough blocks to fill any current GPU several times over; each thread loops over the rest.
  int64_t blocks = (numel + kThreads * 4 - 1) / (kThreads * 4);
  if (blocks < 1) blocks = 1;
  if (blocks > 65536) blocks = 65536;
  plan.grid_x = blocks;
  plan.grid_y = 1;
  return plan;
}

}  // namespace ufd
}  // namespace sg2
