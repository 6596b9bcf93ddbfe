// modulated_conv2d: the kernels around the cuDNN convolution.
// Plain C++ (no torch headers): included by modulated_conv.cu and by the bindings.
//
// 1. Weight modulation (the fused / generation path), per sample n and output channel o:
//        m[n,o,j] = weight[o,j] * styles[n, j / kernel_size]      j over in_channels * kernel_size
//        d[n,o]   = rsqrt(sum_j m[n,o,j]^2 + eps)                 (1 without demodulation)
//        out[n,o,j] = m[n,o,j] * d[n,o]
//    and its backward for weight and styles (the demodulation's chain rule included).
//
// 2. The epilogue (both paths), per element (n, c, p) of a [N, C, P] view of a 4-D tensor
//    (p = h * width + w):
//        v = x * scale[n,c] + noise[n,p] + bias[c]
//        y = clamp(act(v) * gain, -clamp, clamp)
//    and its backward in one pass: dx = dv * scale plus the per-(n,c) sums of dv * x and of dv
//    and the per-(n,p) sums of dv, where dv = dy * gain * act'(v) * [not clamped].
//    With act = linear and nothing else it is the per-(sample, channel) scaling of the
//    activations by the styles that the non-fused (training) path starts with.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "common.h"

namespace sg2 {

// The kernels index with int32. Their per-thread loops step past the end before the loop test
// stops them (by up to 256 along a weight row, 8 along the output channels, by * kTileA = 1024
// along the epilogue's A axis), so every such size (weight.numel(), channels, height * width)
// must stay this far below 2^31. _modulated_conv_cuda.MAX_INT32_SIZE mirrors it.
constexpr int64_t kModconvIndexHeadroom = 4096;
inline bool modconv_fits_int32(int64_t v) { return v <= (int64_t{1} << 31) - 1 - kModconvIndexHeadroom; }

struct ModulateParams {
  const void* weight;  // [out_channels, row] parameter dtype (row = in_channels * kernel_size)
  const void* styles;  // [batch_size, in_channels] parameter dtype
  void* out;           // [batch_size, out_channels, row] output dtype (forward)
  float* dcoefs;       // [batch_size, out_channels] written by the forward, read by the backward
  const void* grad;    // [batch_size, out_channels, row] output dtype: d loss / d out (backward)
  float* q;            // [batch_size, out_channels] scratch (backward): sum_j grad * out
  void* grad_weight;   // [out_channels, row] parameter dtype (backward)
  void* grad_styles;   // [batch_size, in_channels] parameter dtype (backward)
  int batch_size;      // N
  int out_channels;    // O
  int in_channels;     // I
  int kernel_size;     // kernel_height * kernel_width
  bool demodulate;     // false: d = 1
  float eps;           // added to the sum of squares (1e-8)
};

// out and dcoefs from weight and styles.
cudaError_t launch_modulate_weights(const ModulateParams& p, DType param_dtype, DType out_dtype,
                                    cudaStream_t stream);

// grad_weight and grad_styles from grad, weight, styles and the saved dcoefs (uses q).
cudaError_t launch_modulate_weights_grad(const ModulateParams& p, DType param_dtype, DType out_dtype,
                                         cudaStream_t stream);

// Every [N, C, P] element tensor below (x, y, dy, dx) shares one dense layout: NCHW
// (channels_last = false: offset n*C*P + c*P + p) or NHWC (true: offset n*P*C + p*C + c).
struct EpilogueParams {
  const void* x;        // [N, C, P] the convolution's output (or the activations to scale)
  void* y;              // [N, C, P] forward result
  const void* dy;       // [N, C, P] incoming gradient (backward)
  void* dx;             // [N, C, P] d loss / d x (backward)
  const float* scale;   // [N, C] float32 per-(sample, channel) factor; nullptr = 1
  const void* noise;    // [noise_batch, P] x's dtype, noise_batch 1 or N; nullptr = none
  const void* bias;     // [C] x's dtype; nullptr = none
  float* grad_scale;    // [N, C] float32, zeroed by the caller; += sum_p dv * x; nullptr = skip
  float* grad_bias;     // [N, C] float32, zeroed by the caller; += sum_p dv; nullptr = skip
  float* grad_noise;    // [N, P] float32, zeroed by the caller; += sum_c dv; nullptr = skip
  int batch_size;       // N
  int channels;         // C
  int pixels;           // P = height * width
  bool noise_per_sample;  // noise has N rows (else 1 row shared by every sample)
  bool channels_last;   // layout of the element tensors, see above
  int act;              // Activation id (bias_act.h)
  float alpha;          // activation parameter
  float gain;           // multiplies the activation's output
  float clamp;          // |y| <= clamp; negative = no clamping
};

cudaError_t launch_epilogue_forward(const EpilogueParams& p, DType dtype, cudaStream_t stream);

// dx and the reductions; reads x, dy and the small operands.
cudaError_t launch_epilogue_backward(const EpilogueParams& p, DType dtype, cudaStream_t stream);

// The tiling of the epilogue kernels (exposed for the host test of the index math): the element
// tensor is viewed as [N, A, B] with B the contiguous axis (NCHW: A = C, B = P; NHWC: A = P,
// B = C). A block of bx * by threads covers a tile of (by * kTileA) x (bx * kTileB) elements of
// one sample; thread (tx, ty) takes a = a0 + ty + by * ja and b = b0 + tx + bx * jb.
constexpr int kEpilogueThreads = 256;
constexpr int kTileA = 4;
constexpr int kTileB = 4;

struct EpilogueTiling {
  int bx, by;          // threads along B (a power of two <= 32) and along A
  int64_t grid_b;      // tiles along B
  int64_t grid_a;      // tiles along A
  // The launch grid is (grid_a * grid_b, N): block x = tile_a * grid_b + tile_b, so the long
  // axis never meets the 65535 limit of grid dimension y.
};

inline EpilogueTiling epilogue_tiling(int channels, int pixels, bool channels_last) {
  const int64_t a_len = channels_last ? pixels : channels;
  const int64_t b_len = channels_last ? channels : pixels;
  int bx = 1;
  while (bx < 32 && bx < b_len) bx *= 2;  // narrow B (few channels in NHWC): fewer idle threads
  const int by = kEpilogueThreads / bx;
  EpilogueTiling t{};
  t.bx = bx;
  t.by = by;
  t.grid_b = (b_len + int64_t(bx) * kTileB - 1) / (int64_t(bx) * kTileB);
  t.grid_a = (a_len + int64_t(by) * kTileA - 1) / (int64_t(by) * kTileA);
  return t;
}

}  // namespace sg2
