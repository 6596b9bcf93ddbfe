// Types shared by every kernel family and the bindings. Plain C++: no torch headers here.
#pragma once

namespace sg2 {

// The element types the kernels are compiled for; all compute in float32.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace sg2
