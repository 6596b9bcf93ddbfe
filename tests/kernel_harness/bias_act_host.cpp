// Host check of the bias_act kernels' 32-bit index head room: for element counts around the
// int32 limit that bias_act_fits_int32 accepts, the largest value any grid-stride counter of
// bias_act_kernel reaches (launched as csrc/bias_act.cu launches it) must fit int32.
// Driven by tests/test_bias_act.py. Prints one line per failing case and "ok" when none fail.
#include <cstdint>
#include <cstdio>

#include "bias_act.h"
#include "elementwise.cuh"

int main() {
  const int64_t limit = int64_t{1} << 31;
  int failures = 0;
  for (int n_vec : {1, 2, 4, 8}) {  // pack widths: scalar, and 16 bytes of float / half
    for (int64_t back = 1; back <= (int64_t{1} << 27); back *= 2) {
      for (int64_t jitter : {0, 1, 3, 4095, 4097}) {
        const int64_t numel = limit - back - jitter;
        if (numel < 1 || !sg2::bias_act_fits_int32(numel)) continue;
        const sg2::LaunchShape s = sg2::elementwise_launch_shape((numel + n_vec - 1) / n_vec);
        const int64_t step = int64_t{s.blocks} * s.threads;
        const int64_t packs = numel / n_vec;
        // Main loop: j < packs, then j += step; the tail: i from packs * N + thread, i += step.
        int64_t highest = packs - 1 + step;
        if (n_vec > 1) {
          const int64_t tail_first = packs * n_vec + step - 1;
          highest = highest > tail_first ? highest : tail_first;
          highest = highest > numel - 1 + step ? highest : numel - 1 + step;
        }
        if (highest >= limit) {
          std::printf("numel %lld pack %d: a loop counter reaches %lld\n", static_cast<long long>(numel), n_vec,
                      static_cast<long long>(highest));
          ++failures;
        }
      }
    }
  }
  if (failures == 0) std::printf("ok\n");
  return failures == 0 ? 0 : 1;
}
