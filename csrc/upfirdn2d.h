// upfirdn2d: upsample by zero insertion, pad (or crop), FIR-filter and downsample a batch of 2-D
// images. Plain C++ (no torch headers): included by upfirdn2d.cu, by the bindings and by the
// host test harness (tests/kernel_harness).
//
// Along each axis, output o is (stylegan2_ops/_upfirdn2d.py is the definition)
//     y[o] = gain * sum_k w[k] * u[o * down + k - pad0],   k = 0 .. taps-1
// where u is the input with up-1 zeros inserted after every sample (zero outside it) and w is
// the filter reversed (a true convolution) or, with flip, as given (a correlation).
// The padding after the signal only decides the output size: no output's taps reach past it.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common.h"

namespace sg2 {

// What the kernels cover. stylegan2_ops/_upfirdn2d.py (KERNEL_MAX_TAPS, KERNEL_MAX_FACTOR) must
// agree: the module exports these values and a test compares them.
constexpr int kUpfirdn2dMaxTaps = 12;    // filter taps per axis
constexpr int kUpfirdn2dMaxFactor = 8;   // up and down factor per axis

// Which kernel runs. Auto takes a tiled fast path where one covers the configuration and the
// general kernel otherwise; tests force one or the other to compare them.
enum Upfirdn2dPath : int { kUpfirdn2dAuto = 0, kUpfirdn2dGeneral = 1, kUpfirdn2dTiled = 2 };

struct Upfirdn2dParams {
  const void* x;        // [batch, channels, in_h, in_w] input; any non-negative strides (x_stride)
  const float* f;       // [filter_h, filter_w] 2-D taps, or [filter_w] separable taps; contiguous
  void* y;              // [batch, channels, out_h, out_w] output; strides y_stride
  int64_t x_stride[4];  // [4] strides of x in elements: batch, channel, row, column
  int64_t y_stride[4];  // [4] strides of y in elements: batch, channel, row, column
  int64_t batch;        // batch size (x and y)
  int64_t channels;     // channels (x and y)
  int in_h, in_w;       // input height, width
  int out_h, out_w;     // output height, width (>= 1)
  int up_x, up_y;       // upsampling factors, 1 .. kUpfirdn2dMaxFactor
  int down_x, down_y;   // downsampling factors, 1 .. kUpfirdn2dMaxFactor
  int pad_x0, pad_y0;   // padding before the upsampled signal (negative crops)
  int filter_w, filter_h;  // taps per axis, 1 .. kUpfirdn2dMaxTaps (equal when separable)
  bool separable;       // f is 1-D: the 2-D filter is its outer product with itself
  bool flip;            // false: convolution (taps reversed); true: correlation
  float gain;           // multiplies every output
  int path;             // Upfirdn2dPath
};

// True when every element offset of x and y (and the output loop counter) fits int32, so the
// kernels may index with int32 (their division/modulo is much cheaper than int64's).
inline bool upfirdn2d_fits_int32(const Upfirdn2dParams& p) {
  constexpr int64_t kLimit = (int64_t{1} << 31) - (int64_t{1} << 26);  // head room for loop strides
  const int64_t x_sizes[4] = {p.batch, p.channels, p.in_h, p.in_w};
  const int64_t y_sizes[4] = {p.batch, p.channels, p.out_h, p.out_w};
  int64_t x_span = 0, y_span = 0, numel = 1;
  for (int d = 0; d < 4; ++d) {
    if (x_sizes[d] > 0) x_span += (x_sizes[d] - 1) * p.x_stride[d];
    if (y_sizes[d] > 0) y_span += (y_sizes[d] - 1) * p.y_stride[d];
    numel *= y_sizes[d];
    if (numel >= kLimit) return false;
  }
  return x_span < kLimit && y_span < kLimit;
}

// The tiled fast paths, for what StyleGAN2 runs all the time: 4x4 taps (2-D, or separable with
// 4 taps) with up=1/down=1 (filter only), up=2/down=1 or up=1/down=2 on both axes, and 32-bit
// indexing. Everything else (and anything when forced) runs the general kernel.
inline bool upfirdn2d_tiled_covers(const Upfirdn2dParams& p) {
  if (p.filter_w != 4 || p.filter_h != 4 || !upfirdn2d_fits_int32(p)) return false;
  if (p.up_x != p.up_y || p.down_x != p.down_y) return false;
  return (p.up_x == 1 && p.down_x == 1) || (p.up_x == 2 && p.down_x == 1) || (p.up_x == 1 && p.down_x == 2);
}

// Output elements are written once each; every launch is checked; 0-element outputs launch
// nothing. Returns cudaErrorInvalidValue for parameters outside the limits above.
cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, DType dtype, cudaStream_t stream);

}  // namespace sg2
