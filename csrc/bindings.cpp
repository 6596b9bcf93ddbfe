// The one translation unit that includes torch headers (each such include costs ~100 s of compile
// on a 2-core machine, so the .cu files stay plain C++/CUDA). Each op family's bindings live in
// its bind_*.h: they check every argument again (the Python layer checked first), set the device
// guard, map the dtype and launch on PyTorch's current stream.

#include <torch/extension.h>

#include "bind_bias_act.h"
#include "bind_modulated_conv.h"
#include "bind_upfirdn2d.h"

#define SG2_STRINGIFY2(x) #x
#define SG2_STRINGIFY(x) SG2_STRINGIFY2(x)
#ifndef SG2_SOURCE_HASH
#define SG2_SOURCE_HASH unknown
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "stylegan2_ops CUDA kernels";
  // The loader compares this with the hash of csrc/ to tell a stale prebuilt module.
  m.attr("SOURCE_HASH") = SG2_STRINGIFY(SG2_SOURCE_HASH);
  sg2_bind::register_bias_act(m);
  sg2_bind::register_upfirdn2d(m);
  sg2_bind::register_modulated_conv(m);
}
