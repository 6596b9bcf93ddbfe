// Bindings of the upfirdn2d kernels. Included ONLY by bindings.cpp.
#pragma once

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "torch_checks.h"
#include "upfirdn2d.h"

namespace sg2_bind {

// Spatial sizes, factors and paddings are ints in the kernels; these keep every product of
// them (position = index * factor + padding + taps) far from int32 overflow.
constexpr int64_t kUpfirdn2dMaxSpatial = int64_t{1} << 24;

inline void check_spatial(int64_t v, const char* what) {
  TORCH_CHECK(v >= -kUpfirdn2dMaxSpatial && v <= kUpfirdn2dMaxSpatial, "upfirdn2d: ", what, " = ", v,
              " is outside the kernel's range (|value| <= ", kUpfirdn2dMaxSpatial, ")");
}

inline int64_t upfirdn2d_out_size(int64_t in, int64_t up, int64_t down, int64_t pad0, int64_t pad1, int64_t taps,
                                  const char* axis) {
  const int64_t padded = in * up + pad0 + pad1;
  TORCH_CHECK(padded >= taps, "upfirdn2d: the output would be empty along ", axis, ": ", in, " * up ", up,
              " + padding (", pad0, ", ", pad1, ") = ", padded, " is fewer than the filter's ", taps, " taps");
  return (padded - taps) / down + 1;
}

// y = upfirdn2d(x, f, ...), allocated in x's memory format (read from its strides: output_layout).
// path: 0 = auto, 1 = general kernel, 2 = tiled fast path (the tests compare the two).
inline at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, int64_t up_x, int64_t up_y, int64_t down_x,
                            int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1, bool flip,
                            double gain, int64_t path) {
  check_cuda(x, "x");
  const sg2::DType dtype = kernel_dtype(x, "x");
  TORCH_CHECK(x.dim() == 4, "x must have shape [batch, channels, height, width], got ", x.sizes());
  check_cuda(f, "f");
  TORCH_CHECK(f.device() == x.device(), "f is on ", f.device(), " but x is on ", x.device());
  TORCH_CHECK(f.scalar_type() == at::kFloat, "f must be float32, got ", f.scalar_type());
  TORCH_CHECK(f.dim() == 1 || f.dim() == 2, "f must have 1 (separable) or 2 dimensions, got ", f.sizes());
  TORCH_CHECK(f.is_contiguous(), "f must be contiguous");
  const int64_t fw = f.size(-1), fh = f.size(0);
  TORCH_CHECK(fw >= 1 && fh >= 1 && fw <= sg2::kUpfirdn2dMaxTaps && fh <= sg2::kUpfirdn2dMaxTaps,
              "f has shape ", f.sizes(), "; the kernel takes 1 to ", sg2::kUpfirdn2dMaxTaps, " taps per axis");
  for (int64_t v : {up_x, up_y, down_x, down_y}) {
    TORCH_CHECK(v >= 1 && v <= sg2::kUpfirdn2dMaxFactor, "upfirdn2d: up/down factors must be 1 to ",
                sg2::kUpfirdn2dMaxFactor, ", got up=[", up_x, ", ", up_y, "] down=[", down_x, ", ", down_y, "]");
  }
  TORCH_CHECK(path >= sg2::kUpfirdn2dAuto && path <= sg2::kUpfirdn2dTiled, "path must be 0, 1 or 2, got ", path);
  check_spatial(x.size(2), "input height");
  check_spatial(x.size(3), "input width");
  for (int64_t v : {pad_x0, pad_x1, pad_y0, pad_y1}) check_spatial(v, "padding");
  for (int d = 0; d < 4; ++d) TORCH_CHECK(x.stride(d) >= 0, "x has a negative stride: ", x.strides());

  const int64_t out_w = upfirdn2d_out_size(x.size(3), up_x, down_x, pad_x0, pad_x1, fw, "width");
  const int64_t out_h = upfirdn2d_out_size(x.size(2), up_y, down_y, pad_y0, pad_y1, fh, "height");
  check_spatial(x.size(3) * up_x, "upsampled width");
  check_spatial(x.size(2) * up_y, "upsampled height");

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options().memory_format(output_layout(x)));

  sg2::Upfirdn2dParams p{};
  p.x = x.data_ptr();
  p.f = f.data_ptr<float>();
  p.y = y.data_ptr();
  for (int d = 0; d < 4; ++d) {
    p.x_stride[d] = x.stride(d);
    p.y_stride[d] = y.stride(d);
  }
  p.batch = x.size(0);
  p.channels = x.size(1);
  p.in_h = static_cast<int>(x.size(2));
  p.in_w = static_cast<int>(x.size(3));
  p.out_h = static_cast<int>(out_h);
  p.out_w = static_cast<int>(out_w);
  p.up_x = static_cast<int>(up_x);
  p.up_y = static_cast<int>(up_y);
  p.down_x = static_cast<int>(down_x);
  p.down_y = static_cast<int>(down_y);
  p.pad_x0 = static_cast<int>(pad_x0);
  p.pad_y0 = static_cast<int>(pad_y0);
  p.filter_w = static_cast<int>(fw);
  p.filter_h = static_cast<int>(fh);
  p.separable = f.dim() == 1;
  p.flip = flip;
  p.gain = static_cast<float>(gain);
  p.path = static_cast<int>(path);
  // Index type: int32 when every offset fits (the launcher checks the same), int64 otherwise;
  // the tiled paths are int32 only, so forcing one on a huge tensor is an error here.
  TORCH_CHECK(path != sg2::kUpfirdn2dTiled || sg2::upfirdn2d_tiled_covers(p),
              "upfirdn2d: the tiled path covers 4x4 filters with up=1/down=1, up=2 or down=2 on both axes and "
              "32-bit offsets; this call has a ", fh, "x", fw, " filter, up=[", up_x, ", ", up_y, "], down=[", down_x,
              ", ", down_y, "]");
  if (y.numel() == 0) return y;
  check_launch(sg2::launch_upfirdn2d(p, dtype, c10::cuda::getCurrentCUDAStream().stream()), "upfirdn2d");
  return y;
}

inline void register_upfirdn2d(pybind11::module& m) {
  m.def("upfirdn2d", &upfirdn2d, "upsample, pad, FIR-filter and downsample a batch of 2D images",
        pybind11::arg("x"), pybind11::arg("f"), pybind11::arg("up_x"), pybind11::arg("up_y"), pybind11::arg("down_x"),
        pybind11::arg("down_y"), pybind11::arg("pad_x0"), pybind11::arg("pad_x1"), pybind11::arg("pad_y0"),
        pybind11::arg("pad_y1"), pybind11::arg("flip"), pybind11::arg("gain"), pybind11::arg("path"));
  // The Python layer's limits (KERNEL_MAX_TAPS, KERNEL_MAX_FACTOR) are checked against these.
  m.attr("UPFIRDN2D_MAX_TAPS") = sg2::kUpfirdn2dMaxTaps;
  m.attr("UPFIRDN2D_MAX_FACTOR") = sg2::kUpfirdn2dMaxFactor;
}

}  // namespace sg2_bind
