// Host harness for the modulated_conv2d kernels: runs csrc/modulated_conv_math.cuh (what each GPU
// thread computes) for every block and thread of the launches the kernels make, on the CPU, in
// float32. The cross-thread sums the kernels do with warp shuffles, shared memory and atomics are
// done here by adding every thread's partial sums into the index the kernel would add them to;
// so the tiling, the offsets, which partial goes where, and the formulas are checked, while the
// shuffle / __syncthreads code itself is left to the GPU tests. Driven by
// tests/test_modulated_conv_host.py.
//
// Usage: modulated_conv_host IN OUT
//   IN:  int64 mode (0 modulate, 1 epilogue), then per mode (see run_modulate / run_epilogue)
//   OUT: float32 arrays, then int32 store counts per element of each stored array
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime.h>

// activations.cuh calls the device intrinsic __expf; on the host it is plain expf.
extern "C" float __expf(float v) { return std::exp(v); }

namespace {
struct Storage {
  const float* begin = nullptr;
  const float* end = nullptr;
  std::vector<int32_t>* writes = nullptr;  // only for stored arrays
};
std::vector<Storage> g_storages;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "modulated_conv_host: %s\n", what);
  std::exit(3);
}

Storage* find(const float* p) {
  for (auto& s : g_storages) {
    if (p >= s.begin && p < s.end) return &s;
  }
  return nullptr;
}
}  // namespace

namespace sg2 {
inline float load_float(const float* p) {
  if (find(p) == nullptr) fail("load outside every array");
  return *p;
}
inline void store_float(float* p, float v) {
  Storage* s = find(p);
  if (s == nullptr || s->writes == nullptr) fail("store outside the output arrays");
  (*s->writes)[p - s->begin] += 1;
  *p = v;
}
}  // namespace sg2

#include "modulated_conv_math.cuh"

using namespace sg2;

namespace {

FILE* g_in = nullptr;
FILE* g_out = nullptr;

int64_t read_i64() {
  int64_t v;
  if (std::fread(&v, sizeof v, 1, g_in) != 1) fail("short input (int)");
  return v;
}
double read_f64() {
  double v;
  if (std::fread(&v, sizeof v, 1, g_in) != 1) fail("short input (double)");
  return v;
}
std::vector<float> read_floats(int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  if (n > 0 && std::fread(v.data(), sizeof(float), v.size(), g_in) != v.size()) fail("short input (floats)");
  return v;
}
void write_floats(const std::vector<float>& v) { std::fwrite(v.data(), sizeof(float), v.size(), g_out); }
void write_counts(const std::vector<int32_t>& v) { std::fwrite(v.data(), sizeof(int32_t), v.size(), g_out); }

void track(const std::vector<float>& v) {
  if (!v.empty()) g_storages.push_back({v.data(), v.data() + v.size(), nullptr});
}
void track_out(std::vector<float>& v, std::vector<int32_t>& writes) {
  writes.assign(v.size(), 0);
  if (!v.empty()) g_storages.push_back({v.data(), v.data() + v.size(), &writes});
}

// IN: N O I K demodulate, float64 eps, weight [O*I*K], styles [N*I], grad [N*O*I*K]
// OUT: out [N*O*I*K], dcoefs [N*O], grad_weight [O*I*K], grad_styles [N*I], counts of out,
//      grad_weight, grad_styles
void run_modulate() {
  const int n_ = static_cast<int>(read_i64()), o_ = static_cast<int>(read_i64());
  const int i_ = static_cast<int>(read_i64()), k_ = static_cast<int>(read_i64());
  const bool demod = read_i64() != 0;
  const float eps = static_cast<float>(read_f64());
  const int64_t row = static_cast<int64_t>(i_) * k_;
  std::vector<float> weight = read_floats(o_ * row), styles = read_floats(int64_t(n_) * i_),
                     grad = read_floats(int64_t(n_) * o_ * row);
  std::vector<float> out(static_cast<size_t>(n_ * o_ * row), NAN), dcoefs(static_cast<size_t>(n_ * o_), NAN),
      q(static_cast<size_t>(n_ * o_), NAN), gw(static_cast<size_t>(o_ * row), NAN),
      gs(static_cast<size_t>(n_ * i_), NAN);
  std::vector<int32_t> w_out, w_gw, w_gs;
  track(weight);
  track(styles);
  track(grad);
  track_out(out, w_out);
  track_out(gw, w_gw);
  track_out(gs, w_gs);

  ModulateParams p{};
  p.weight = weight.data();
  p.styles = styles.data();
  p.out = out.data();
  p.dcoefs = dcoefs.data();
  p.grad = grad.data();
  p.q = q.data();
  p.grad_weight = gw.data();
  p.grad_styles = gs.data();
  p.batch_size = n_;
  p.out_channels = o_;
  p.in_channels = i_;
  p.kernel_size = k_;
  p.demodulate = demod;
  p.eps = eps;
  constexpr int kThreads = 256, kLanes = 32, kSlices = 8;  // as modulated_conv.cu launches them

  // modulate_kernel: block (o, n) of kThreads threads.
  for (int n = 0; n < n_; ++n) {
    for (int o = 0; o < o_; ++o) {
      float d = 1.f;
      if (demod) {
        float sum = 0.f;
        for (int t = 0; t < kThreads; ++t) sum += modulate_sumsq_part<float>(p, n, o, t, kThreads);
        d = 1.f / std::sqrt(sum + eps);
      }
      dcoefs[static_cast<size_t>(n) * o_ + o] = d;
      for (int t = 0; t < kThreads; ++t) modulate_store_part<float, float>(p, n, o, d, t, kThreads);
    }
  }
  // modulate_q_kernel
  if (demod) {
    for (int n = 0; n < n_; ++n) {
      for (int o = 0; o < o_; ++o) {
        float sum = 0.f;
        for (int t = 0; t < kThreads; ++t) sum += modulate_q_part<float, float>(p, n, o, t, kThreads);
        q[static_cast<size_t>(n) * o_ + o] = sum * dcoefs[static_cast<size_t>(n) * o_ + o];
      }
    }
  }
  // modulate_grad_weight_kernel: one thread per element.
  for (int64_t idx = 0; idx < o_ * row; ++idx) store_float(gw.data() + idx, modulate_grad_weight_at<float, float>(p, idx));
  // modulate_grad_styles_kernel: block (kLanes, kSlices) per (input-channel tile, n).
  for (int n = 0; n < n_; ++n) {
    for (int tile = 0; tile < (i_ + kLanes - 1) / kLanes; ++tile) {
      for (int tx = 0; tx < kLanes; ++tx) {
        const int i = tile * kLanes + tx;
        if (i >= i_) continue;
        float sum = 0.f;
        for (int ty = 0; ty < kSlices; ++ty) sum += modulate_grad_styles_part<float, float>(p, n, i, ty, kSlices);
        store_float(gs.data() + static_cast<size_t>(n) * i_ + i, sum);
      }
    }
  }
  write_floats(out);
  write_floats(dcoefs);
  write_floats(gw);
  write_floats(gs);
  write_counts(w_out);
  write_counts(w_gw);
  write_counts(w_gs);
}

// pf runs the forward, p the backward (they differ in x when the backward goes without it).
template <int Act, bool CL>
void epilogue_all(const EpilogueParams& pf, const EpilogueParams& p, std::vector<float>& gsc, std::vector<float>& gb,
                  std::vector<float>& gn) {
  const EpilogueTiling t = epilogue_tiling(p.channels, p.pixels, p.channels_last);
  if (t.bx * t.by != kEpilogueThreads || 32 % t.bx != 0) fail("block shape is not 256 threads in whole warps");
  const int a_len = CL ? p.pixels : p.channels;
  const int b_len = CL ? p.channels : p.pixels;
  for (int n = 0; n < p.batch_size; ++n) {
    for (int64_t block = 0; block < t.grid_a * t.grid_b; ++block) {
      const int64_t tile_a = block / t.grid_b, tile_b = block - tile_a * t.grid_b;
      for (int ty = 0; ty < t.by; ++ty) {
        for (int tx = 0; tx < t.bx; ++tx) {
          const ThreadOrigin o = epilogue_thread_origin(tile_a, tile_b, tx, ty, t.bx, t.by);
          epilogue_forward_thread<float, Act, CL>(pf, n, o, t.bx, t.by);
          EpiloguePartials part;
          epilogue_backward_thread<float, Act, CL>(p, n, o, t.bx, t.by, part);
          // What the kernel's row sums (over tx) and column sums (over ty) add up, per index.
          for (int ja = 0; ja < kTileA; ++ja) {
            const int a = o.a_first + t.by * ja;
            if (a >= a_len) continue;
            if (!CL) {
              gsc[static_cast<size_t>(n) * p.channels + a] += part.chan_x[ja];
              gb[static_cast<size_t>(n) * p.channels + a] += part.chan_1[ja];
            } else {
              gn[static_cast<size_t>(n) * p.pixels + a] += part.pix_1[ja];
            }
          }
          for (int jb = 0; jb < kTileB; ++jb) {
            const int b = o.b_first + t.bx * jb;
            if (b >= b_len) continue;
            if (!CL) {
              gn[static_cast<size_t>(n) * p.pixels + b] += part.pix_1[jb];
            } else {
              gsc[static_cast<size_t>(n) * p.channels + b] += part.chan_x[jb];
              gb[static_cast<size_t>(n) * p.channels + b] += part.chan_1[jb];
            }
          }
        }
      }
    }
  }
}

template <int Act>
void epilogue_layout(const EpilogueParams& pf, const EpilogueParams& p, std::vector<float>& gsc, std::vector<float>& gb,
                     std::vector<float>& gn) {
  if (p.channels_last) {
    epilogue_all<Act, true>(pf, p, gsc, gb, gn);
  } else {
    epilogue_all<Act, false>(pf, p, gsc, gb, gn);
  }
}

// IN: N C P channels_last act has_scale has_noise noise_rows has_bias has_x, float64 alpha gain
//     clamp, x [N*C*P] (layout order), dy [N*C*P], scale [N*C] if has_scale, noise
//     [noise_rows*P] if has_noise, bias [C] if has_bias
// OUT: y, dx, grad_scale [N*C], grad_bias [N*C], grad_noise [N*P], counts of y and dx
void run_epilogue() {
  EpilogueParams p{};
  p.batch_size = static_cast<int>(read_i64());
  p.channels = static_cast<int>(read_i64());
  p.pixels = static_cast<int>(read_i64());
  p.channels_last = read_i64() != 0;
  p.act = static_cast<int>(read_i64());
  const bool has_scale = read_i64() != 0, has_noise = read_i64() != 0;
  const int64_t noise_rows = read_i64();
  const bool has_bias = read_i64() != 0, has_x = read_i64() != 0;
  p.alpha = static_cast<float>(read_f64());
  p.gain = static_cast<float>(read_f64());
  p.clamp = static_cast<float>(read_f64());
  const int64_t numel = int64_t(p.batch_size) * p.channels * p.pixels;
  std::vector<float> x = read_floats(numel), dy = read_floats(numel);
  std::vector<float> scale = has_scale ? read_floats(int64_t(p.batch_size) * p.channels) : std::vector<float>();
  std::vector<float> noise = has_noise ? read_floats(noise_rows * p.pixels) : std::vector<float>();
  std::vector<float> bias = has_bias ? read_floats(p.channels) : std::vector<float>();
  std::vector<float> y(static_cast<size_t>(numel), NAN), dx(static_cast<size_t>(numel), NAN);
  std::vector<float> gsc(static_cast<size_t>(p.batch_size) * p.channels, 0.f), gb(gsc.size(), 0.f),
      gn(static_cast<size_t>(p.batch_size) * p.pixels, 0.f);
  std::vector<int32_t> w_y, w_dx;
  track(x);
  track(dy);
  track(noise);
  track(bias);
  track_out(y, w_y);
  track_out(dx, w_dx);
  track(scale);
  p.x = has_x ? x.data() : nullptr;
  p.dy = dy.data();
  p.y = y.data();
  p.dx = dx.data();
  p.scale = has_scale ? scale.data() : nullptr;  // float* read directly, like the kernel
  p.noise = has_noise ? noise.data() : nullptr;
  p.noise_per_sample = has_noise && noise_rows == p.batch_size && p.batch_size > 1;
  p.bias = has_bias ? bias.data() : nullptr;
  EpilogueParams pf = p;  // the forward always reads x
  pf.x = x.data();
  switch (p.act) {
#define SG2_CASE(id)                               \
  case id:                                         \
    epilogue_layout<id>(pf, p, gsc, gb, gn);        \
    break;
    SG2_CASE(kLinear)
    SG2_CASE(kRelu)
    SG2_CASE(kLrelu)
    SG2_CASE(kTanh)
    SG2_CASE(kSigmoid)
    SG2_CASE(kElu)
    SG2_CASE(kSelu)
    SG2_CASE(kSoftplus)
    SG2_CASE(kSwish)
#undef SG2_CASE
    default: fail("unknown activation");
  }
  write_floats(y);
  write_floats(dx);
  write_floats(gsc);
  write_floats(gb);
  write_floats(gn);
  write_counts(w_y);
  write_counts(w_dx);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) fail("usage: modulated_conv_host IN OUT");
  g_in = std::fopen(argv[1], "rb");
  g_out = std::fopen(argv[2], "wb");
  if (g_in == nullptr || g_out == nullptr) fail("cannot open IN or OUT");
  const int64_t mode = read_i64();
  if (mode == 0) {
    run_modulate();
  } else if (mode == 1) {
    run_epilogue();
  } else {
    fail("unknown mode");
  }
  std::fclose(g_out);
  return 0;
}
