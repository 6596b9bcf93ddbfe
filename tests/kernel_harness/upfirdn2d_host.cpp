// Host harness for the upfirdn2d kernels: runs csrc/upfirdn2d_math.cuh (the code the kernels run
// per thread) for every block and thread of the launch the kernels would make, on the CPU, in
// float32. Driven by tests/test_upfirdn2d_index_math.py, which compares with the reference.
//
// Besides the result it checks what a GPU would not report: every load inside x's storage, every
// shared-memory read inside the tile and of an element the load phase wrote, every output
// element written exactly once.
//
// Usage: upfirdn2d_host IN OUT
//   IN:  int64 header[kHeader] (see main), float64 gain, float32 x storage, float32 f
//   OUT: int64 kernel id, int64 index64, float32 y storage, int32 writes per y element
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

namespace {
const float* g_x_begin = nullptr;
const float* g_x_end = nullptr;
float* g_y_begin = nullptr;
float* g_y_end = nullptr;
std::vector<int32_t>* g_writes = nullptr;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "upfirdn2d_host: %s\n", what);
  std::exit(3);
}
}  // namespace

#define SG2_UFD_ASSERT(cond) ((cond) ? (void)0 : fail("tile index out of range: " #cond))

namespace sg2 {
inline float load_float(const float* p) {
  if (p < g_x_begin || p >= g_x_end) fail("load outside x's storage");
  return *p;
}
inline void store_float(float* p, float v) {
  if (p < g_y_begin || p >= g_y_end) fail("store outside y's storage");
  (*g_writes)[p - g_y_begin] += 1;
  *p = v;
}
}  // namespace sg2

#include "upfirdn2d_math.cuh"

using namespace sg2;
using namespace sg2::ufd;

namespace {

template <typename Index>
void run_general(const Upfirdn2dParams& p, const Plan& plan) {
  const Index numel = static_cast<Index>(p.batch) * static_cast<Index>(p.channels) * p.out_h * p.out_w;
  std::vector<float> w(kUpfirdn2dMaxTaps * kUpfirdn2dMaxTaps, std::numeric_limits<float>::quiet_NaN());
  for (int64_t bx = 0; bx < plan.grid_x; ++bx) {
    for (int tid = 0; tid < kThreads; ++tid) load_weights(p, tid, kThreads, w.data());
    for (int tid = 0; tid < kThreads; ++tid) {
      for (Index i = static_cast<Index>(bx) * kThreads + tid; i < numel; i += static_cast<Index>(plan.grid_x) * kThreads) {
        general_output<float, Index>(p, i, plan.c_inner, w.data());
      }
    }
  }
}

template <class Cfg>
void run_tiled(const Upfirdn2dParams& p, const Plan& plan) {
  std::vector<float> w(Cfg::FH * Cfg::FW, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> s(Cfg::kInElems);
  for (int64_t by = 0; by < plan.grid_y; ++by) {
    for (int64_t bx = 0; bx < plan.grid_x; ++bx) {
      for (int tid = 0; tid < kThreads; ++tid) load_weights(p, tid, kThreads, w.data());
      for (int64_t g = by; g < plan.groups; g += plan.grid_y) {
        const TileCoords t = tile_coords<Cfg>(p, bx, g);
        // NaN first: a shared-memory element the load phase forgets shows up in the result.
        for (float& v : s) v = std::numeric_limits<float>::quiet_NaN();
        for (int tid = 0; tid < kThreads; ++tid) tile_load<float, Cfg>(p, t, tid, kThreads, s.data());
        for (int tid = 0; tid < kThreads; ++tid) tile_compute<float, Cfg>(p, t, tid, kThreads, s.data(), w.data());
      }
    }
  }
}

template <typename T>
T read_one(std::FILE* f) {
  T v;
  if (std::fread(&v, sizeof(T), 1, f) != 1) fail("short input");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) fail("usage: upfirdn2d_host IN OUT");
  std::FILE* in = std::fopen(argv[1], "rb");
  if (!in) fail("cannot open IN");
  constexpr int kHeader = 28;
  int64_t h[kHeader];
  for (int i = 0; i < kHeader; ++i) h[i] = read_one<int64_t>(in);
  const double gain = read_one<double>(in);

  Upfirdn2dParams p{};
  p.batch = h[0]; p.channels = h[1];
  p.in_h = static_cast<int>(h[2]); p.in_w = static_cast<int>(h[3]);
  p.out_h = static_cast<int>(h[4]); p.out_w = static_cast<int>(h[5]);
  p.up_x = static_cast<int>(h[6]); p.up_y = static_cast<int>(h[7]);
  p.down_x = static_cast<int>(h[8]); p.down_y = static_cast<int>(h[9]);
  p.pad_x0 = static_cast<int>(h[10]); p.pad_y0 = static_cast<int>(h[11]);
  p.filter_w = static_cast<int>(h[12]); p.filter_h = static_cast<int>(h[13]);
  p.separable = h[14] != 0; p.flip = h[15] != 0; p.path = static_cast<int>(h[16]);
  for (int d = 0; d < 4; ++d) p.x_stride[d] = h[17 + d];
  for (int d = 0; d < 4; ++d) p.y_stride[d] = h[21 + d];
  const int64_t x_len = h[25], y_len = h[26];
  const int64_t options = h[27];  // bit 0: int64 indexing in the general kernel; bits 8+: grid_y cap
  p.gain = static_cast<float>(gain);

  std::vector<float> x(x_len), f(p.separable ? p.filter_w : p.filter_w * p.filter_h);
  if (x_len && std::fread(x.data(), sizeof(float), x_len, in) != static_cast<size_t>(x_len)) fail("short x");
  if (std::fread(f.data(), sizeof(float), f.size(), in) != f.size()) fail("short f");
  std::fclose(in);

  std::vector<float> y(y_len, std::numeric_limits<float>::quiet_NaN());
  std::vector<int32_t> writes(y_len, 0);
  g_x_begin = x.data(); g_x_end = x.data() + x_len;
  g_y_begin = y.data(); g_y_end = y.data() + y_len;
  g_writes = &writes;
  p.x = x.data(); p.f = f.data(); p.y = y.data();

  if (p.path == kUpfirdn2dTiled && !upfirdn2d_tiled_covers(p)) fail("tiled path forced on a configuration it does not cover");
  Plan plan = make_plan(p);
  if (options & 1) plan.index64 = true;
  const int64_t grid_y_cap = options >> 8;
  if (grid_y_cap > 0 && plan.grid_y > grid_y_cap) plan.grid_y = grid_y_cap;  // exercises the group loop

  if (p.batch > 0 && p.channels > 0) {
    switch (plan.kernel) {
      case Kernel::kGeneral:
        if (plan.index64) run_general<int64_t>(p, plan); else run_general<int32_t>(p, plan);
        break;
      case Kernel::kFilterRows: run_tiled<TileFilterRows>(p, plan); break;
      case Kernel::kUp2Rows: run_tiled<TileUp2Rows>(p, plan); break;
      case Kernel::kDown2Rows: run_tiled<TileDown2Rows>(p, plan); break;
      case Kernel::kFilterCh: run_tiled<TileFilterCh>(p, plan); break;
      case Kernel::kUp2Ch: run_tiled<TileUp2Ch>(p, plan); break;
      case Kernel::kDown2Ch: run_tiled<TileDown2Ch>(p, plan); break;
    }
  }

  std::FILE* out = std::fopen(argv[2], "wb");
  if (!out) fail("cannot open OUT");
  const int64_t kernel = static_cast<int64_t>(plan.kernel), index64 = plan.index64 ? 1 : 0;
  std::fwrite(&kernel, sizeof kernel, 1, out);
  std::fwrite(&index64, sizeof index64, 1, out);
  std::fwrite(y.data(), sizeof(float), y.size(), out);
  std::fwrite(writes.data(), sizeof(int32_t), writes.size(), out);
  std::fclose(out);
  return 0;
}
