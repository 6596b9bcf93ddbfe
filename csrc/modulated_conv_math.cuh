// The per-thread work of the modulated_conv2d kernels, apart from the cross-thread reductions:
// what each thread loads, computes and stores, and which partial sums it contributes.
// modulated_conv.cu wraps these in kernels (adding the warp / shared-memory reductions and
// atomics); tests/host/modconv_harness.cpp runs the same functions on the CPU, emulating the
// grid, so the index math and formulas are checked without a GPU.
// Needs load_float / store_float for the element types declared before it (elementwise.cuh on
// the GPU; the harness declares float versions).
#pragma once

#include <cstdint>

#include "activations.cuh"
#include "modulated_conv.h"

namespace sg2 {

// ---------------------------------------------------------------------------------------------
// Weight modulation. Row (n, o) has row = in_channels * kernel_size elements; a thread takes
// elements j = first, first + step, ...

// m = weight[o, j] * styles[n, j / kernel_size]; the sum of m^2 over this thread's elements.
template <typename Tp>
__device__ __forceinline__ float modulate_sumsq_part(const ModulateParams& p, int n, int o, int first, int step) {
  const int row = p.in_channels * p.kernel_size;
  const Tp* w = static_cast<const Tp*>(p.weight) + static_cast<int64_t>(o) * row;
  const Tp* s = static_cast<const Tp*>(p.styles) + static_cast<int64_t>(n) * p.in_channels;
  float acc = 0.f;
  for (int j = first; j < row; j += step) {
    const float m = load_float(w + j) * load_float(s + j / p.kernel_size);
    acc += m * m;
  }
  return acc;
}

// out[n, o, j] = m * d for this thread's elements.
template <typename Tp, typename To>
__device__ __forceinline__ void modulate_store_part(const ModulateParams& p, int n, int o, float d, int first,
                                                    int step) {
  const int row = p.in_channels * p.kernel_size;
  const Tp* w = static_cast<const Tp*>(p.weight) + static_cast<int64_t>(o) * row;
  const Tp* s = static_cast<const Tp*>(p.styles) + static_cast<int64_t>(n) * p.in_channels;
  To* out = static_cast<To*>(p.out) + (static_cast<int64_t>(n) * p.out_channels + o) * row;
  for (int j = first; j < row; j += step) store_float(out + j, load_float(w + j) * load_float(s + j / p.kernel_size) * d);
}

// Backward. With w = m * d and d = rsqrt(sum m^2 + eps), the gradient reaching m is
//     dm = d * (g - q * w),   q[n, o] = sum_j g * w
// (without demodulation d = 1 and q = 0: dm = g). Then
//     grad_weight[o, j] = sum_n dm[n, o, j] * styles[n, i]       (i = j / kernel_size)
//     grad_styles[n, i] = sum_{o, k} dm[n, o, i*K + k] * weight[o, i*K + k]
__device__ __forceinline__ float modulate_dm(float g, float wv, float sv, float d, float q, bool demodulate) {
  return demodulate ? d * (g - q * (wv * sv * d)) : g;
}

// sum_j g * m over this thread's elements of row (n, o) (times d, it is q[n, o]).
template <typename Tp, typename To>
__device__ __forceinline__ float modulate_q_part(const ModulateParams& p, int n, int o, int first, int step) {
  const int row = p.in_channels * p.kernel_size;
  const Tp* w = static_cast<const Tp*>(p.weight) + static_cast<int64_t>(o) * row;
  const Tp* s = static_cast<const Tp*>(p.styles) + static_cast<int64_t>(n) * p.in_channels;
  const To* g = static_cast<const To*>(p.grad) + (static_cast<int64_t>(n) * p.out_channels + o) * row;
  float acc = 0.f;
  for (int j = first; j < row; j += step) acc += load_float(g + j) * load_float(w + j) * load_float(s + j / p.kernel_size);
  return acc;
}

// grad_weight at flat index idx = o * row + j (a sum over the batch).
template <typename Tp, typename To>
__device__ __forceinline__ float modulate_grad_weight_at(const ModulateParams& p, int64_t idx) {
  const int row = p.in_channels * p.kernel_size;
  const int o = static_cast<int>(idx / row);
  const int j = static_cast<int>(idx - static_cast<int64_t>(o) * row);
  const int i = j / p.kernel_size;
  const float wv = load_float(static_cast<const Tp*>(p.weight) + idx);
  const Tp* s = static_cast<const Tp*>(p.styles);
  const To* g = static_cast<const To*>(p.grad);
  const int64_t g_step = static_cast<int64_t>(p.out_channels) * row;
  float acc = 0.f;
  for (int n = 0; n < p.batch_size; ++n) {
    const float sv = load_float(s + static_cast<int64_t>(n) * p.in_channels + i);
    const int64_t no = static_cast<int64_t>(n) * p.out_channels + o;
    const float d = p.demodulate ? p.dcoefs[no] : 1.f;
    const float q = p.demodulate ? p.q[no] : 0.f;
    acc += modulate_dm(load_float(g + n * g_step + idx), wv, sv, d, q, p.demodulate) * sv;
  }
  return acc;
}

// Part of grad_styles[n, i]: output channels o = first, first + step, ...
template <typename Tp, typename To>
__device__ __forceinline__ float modulate_grad_styles_part(const ModulateParams& p, int n, int i, int first, int step) {
  const int row = p.in_channels * p.kernel_size;
  const float sv = load_float(static_cast<const Tp*>(p.styles) + static_cast<int64_t>(n) * p.in_channels + i);
  float acc = 0.f;
  for (int o = first; o < p.out_channels; o += step) {
    const int64_t no = static_cast<int64_t>(n) * p.out_channels + o;
    const float d = p.demodulate ? p.dcoefs[no] : 1.f;
    const float q = p.demodulate ? p.q[no] : 0.f;
    const Tp* w = static_cast<const Tp*>(p.weight) + static_cast<int64_t>(o) * row + static_cast<int64_t>(i) * p.kernel_size;
    const To* g = static_cast<const To*>(p.grad) + no * row + static_cast<int64_t>(i) * p.kernel_size;
    for (int k = 0; k < p.kernel_size; ++k) {
      const float wv = load_float(w + k);
      acc += modulate_dm(load_float(g + k), wv, sv, d, q, p.demodulate) * wv;
    }
  }
  return acc;
}

// ---------------------------------------------------------------------------------------------
// Epilogue. Element (n, a, b) of the [N, A, B] view (modulated_conv.h) lies at offset
// (n * A + a) * B + b in both layouts; its channel is a (NCHW) or b (NHWC).

// y = clamp(act(v) * gain)
template <int Act>
__device__ __forceinline__ float epilogue_value(float v, float alpha, float gain, float clamp) {
  float r = act_value<Act>(v, alpha) * gain;
  // Not fminf/fmaxf: those turn NaN into -clamp, and torch.clamp keeps NaN (a diverging run
  // must stay visible).
  if (clamp >= 0.f && fabsf(r) > clamp) r = copysignf(clamp, r);
  return r;
}

// dv = dy * gain * act'(v), zero where the clamp cut (torch.clamp passes the gradient at
// |y| == clamp, and so does this).
template <int Act>
__device__ __forceinline__ float epilogue_dv(float dy, float v, float alpha, float gain, float clamp) {
  const float u = act_value<Act>(v, alpha);
  if (clamp >= 0.f && !(fabsf(u * gain) <= clamp)) return 0.f;
  return dy * gain * act_deriv<Act>(v, u, alpha);
}

struct EpilogueElement {
  int64_t offset;  // into x, y, dy, dx
  int c;           // channel
  int pix;         // pixel (h * width + w)
};

template <bool ChannelsLast>
__device__ __forceinline__ EpilogueElement epilogue_element(const EpilogueParams& p, int n, int a, int b) {
  const int a_len = ChannelsLast ? p.pixels : p.channels;
  const int b_len = ChannelsLast ? p.channels : p.pixels;
  EpilogueElement e;
  e.offset = (static_cast<int64_t>(n) * a_len + a) * b_len + b;
  e.c = ChannelsLast ? b : a;
  e.pix = ChannelsLast ? a : b;
  return e;
}

// v = x * scale[n, c] + noise[n, pix] + bias[c]; absent operands contribute exactly nothing.
// The forward and the backward both call this, so the backward sees the forward's v bit for bit.
template <typename T>
__device__ __forceinline__ float epilogue_preact(const EpilogueParams& p, int n, const EpilogueElement& e, float xv) {
  float v = xv;
  if (p.scale != nullptr) v *= p.scale[static_cast<int64_t>(n) * p.channels + e.c];
  if (p.noise != nullptr) {
    const int64_t row = p.noise_per_sample ? n : 0;
    v += load_float(static_cast<const T*>(p.noise) + row * p.pixels + e.pix);
  }
  if (p.bias != nullptr) v += load_float(static_cast<const T*>(p.bias) + e.c);
  return v;
}

// The first element of thread (tx, ty) of tile (tile_a, tile_b): its a and b. The thread then
// takes a_first + by * ja and b_first + bx * jb for ja < kTileA, jb < kTileB.
struct ThreadOrigin {
  int a_first, b_first;
};

__device__ __forceinline__ ThreadOrigin epilogue_thread_origin(int64_t tile_a, int64_t tile_b, int tx, int ty, int bx,
                                                               int by) {
  ThreadOrigin t;
  t.a_first = static_cast<int>(tile_a * by * kTileA + ty);
  t.b_first = static_cast<int>(tile_b * bx * kTileB + tx);
  return t;
}

// Each thread first loads all of its elements, then computes and stores: the loads of a thread
// are independent, so they are all in flight at once (the stores could alias x as far as the
// compiler knows, which would otherwise serialize load, store, load, ...).
template <typename T, int Act, bool ChannelsLast>
__device__ __forceinline__ void epilogue_forward_thread(const EpilogueParams& p, int n, ThreadOrigin t, int bx, int by) {
  const int a_len = ChannelsLast ? p.pixels : p.channels;
  const int b_len = ChannelsLast ? p.channels : p.pixels;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  float xv[kTileA][kTileB];
#pragma unroll
  for (int ja = 0; ja < kTileA; ++ja) {
#pragma unroll
    for (int jb = 0; jb < kTileB; ++jb) {
      const int a = t.a_first + by * ja, b = t.b_first + bx * jb;
      xv[ja][jb] = a < a_len && b < b_len ? load_float(x + epilogue_element<ChannelsLast>(p, n, a, b).offset) : 0.f;
    }
  }
#pragma unroll
  for (int ja = 0; ja < kTileA; ++ja) {
#pragma unroll
    for (int jb = 0; jb < kTileB; ++jb) {
      const int a = t.a_first + by * ja, b = t.b_first + bx * jb;
      if (a >= a_len || b >= b_len) continue;
      const EpilogueElement e = epilogue_element<ChannelsLast>(p, n, a, b);
      const float v = epilogue_preact<T>(p, n, e, xv[ja][jb]);
      store_float(y + e.offset, epilogue_value<Act>(v, p.alpha, p.gain, p.clamp));
    }
  }
}

// Partial sums of one thread, indexed by its ja or jb (whichever runs along the channel or the
// pixel axis): chan_x[.] = sum dv * x and chan_1[.] = sum dv per channel, pix_1[.] = sum dv per
// pixel. Along A the index is ja, along B it is jb.
struct EpiloguePartials {
  float chan_x[kTileA > kTileB ? kTileA : kTileB];
  float chan_1[kTileA > kTileB ? kTileA : kTileB];
  float pix_1[kTileA > kTileB ? kTileA : kTileB];
};

// Stores dx for the thread's elements and fills its partial sums (zero for elements outside the
// tensor). x may be nullptr only when nothing needs it: a linear activation without clamping and
// no grad_scale (v then matters to nothing).
template <typename T, int Act, bool ChannelsLast>
__device__ __forceinline__ void epilogue_backward_thread(const EpilogueParams& p, int n, ThreadOrigin t, int bx, int by,
                                                         EpiloguePartials& part) {
  const int a_len = ChannelsLast ? p.pixels : p.channels;
  const int b_len = ChannelsLast ? p.channels : p.pixels;
  constexpr int kChanTiles = ChannelsLast ? kTileB : kTileA;
  constexpr int kPixTiles = ChannelsLast ? kTileA : kTileB;
#pragma unroll
  for (int j = 0; j < kChanTiles; ++j) part.chan_x[j] = part.chan_1[j] = 0.f;
#pragma unroll
  for (int j = 0; j < kPixTiles; ++j) part.pix_1[j] = 0.f;
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  float xs[kTileA][kTileB], dys[kTileA][kTileB];  // all loads first, as in the forward
#pragma unroll
  for (int ja = 0; ja < kTileA; ++ja) {
#pragma unroll
    for (int jb = 0; jb < kTileB; ++jb) {
      const int a = t.a_first + by * ja, b = t.b_first + bx * jb;
      const bool in = a < a_len && b < b_len;
      const int64_t off = in ? epilogue_element<ChannelsLast>(p, n, a, b).offset : 0;
      xs[ja][jb] = in && x != nullptr ? load_float(x + off) : 0.f;
      dys[ja][jb] = in ? load_float(dy + off) : 0.f;
    }
  }
#pragma unroll
  for (int ja = 0; ja < kTileA; ++ja) {
#pragma unroll
    for (int jb = 0; jb < kTileB; ++jb) {
      const int a = t.a_first + by * ja, b = t.b_first + bx * jb;
      if (a >= a_len || b >= b_len) continue;
      const EpilogueElement e = epilogue_element<ChannelsLast>(p, n, a, b);
      const float xv = xs[ja][jb];
      const float v = epilogue_preact<T>(p, n, e, xv);
      const float dv = epilogue_dv<Act>(dys[ja][jb], v, p.alpha, p.gain, p.clamp);
      const float sc = p.scale != nullptr ? p.scale[static_cast<int64_t>(n) * p.channels + e.c] : 1.f;
      store_float(dx + e.offset, dv * sc);
      const int jc = ChannelsLast ? jb : ja;
      const int jp = ChannelsLast ? ja : jb;
      part.chan_x[jc] += dv * xv;
      part.chan_1[jc] += dv;
      part.pix_1[jp] += dv;
    }
  }
}

}  // namespace sg2
