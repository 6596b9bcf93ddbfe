// Bindings of the upfirdn2d kernels. Included ONLY by bindings.cpp.
// No kernel yet: registers nothing, so dispatch uses the reference for upfirdn2d.
#pragma once

#include <torch/extension.h>

#include "torch_checks.h"

namespace sg2_bind {

inline void register_upfirdn2d(pybind11::module& m) { (void)m; }

}  // namespace sg2_bind
