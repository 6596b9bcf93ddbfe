// The CUDA emulator's scheduler: runs a kernel launch on the CPU, one block after another, the
// threads of a block as fibers (ucontext) that switch only at __syncthreads() and at warp
// collectives. See README.md beside this file for the model and its limits.
#include "emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SG2EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SG2EMU_ASAN 1
#endif
#endif

#ifdef SG2EMU_ASAN
// AddressSanitizer must be told about stack switches, or it reports false errors on the fibers'
// stacks (https://github.com/google/sanitizers/issues/189 describes the annotations).
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
}
#endif

// Switching threads. glibc's swapcontext makes a system call (the signal mask) on every switch,
// which dominated the emulator's time (~3.6 us per emulated thread); on x86-64 a switch of the
// callee-saved registers and the stack pointer does the same job in a few nanoseconds. The
// AddressSanitizer build and other architectures keep ucontext.
#if defined(__x86_64__) && !defined(SG2EMU_ASAN)
#define SG2EMU_FAST_SWITCH 1
extern "C" void sg2emu_switch(void** save_sp, void* next_sp);
asm(R"(
  .text
  .globl sg2emu_switch
  .hidden sg2emu_switch
  .type sg2emu_switch, @function
sg2emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size sg2emu_switch, .-sg2emu_switch
)");
#endif

namespace sg2emu {
namespace {

struct Context {
#ifdef SG2EMU_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Prepares `c` to run fn() (which must never return) on the given stack.
void context_init(Context& c, char* stack, size_t bytes, void (*fn)()) {
#ifdef SG2EMU_FAST_SWITCH
  // What sg2emu_switch pops: six callee-saved registers, then fn as the return address. With
  // fn's frame starting at an address = 8 mod 16, as after a call instruction.
  auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                           // fn's (never used) return address
  *--sp = reinterpret_cast<void*>(fn);       // where sg2emu_switch's ret goes
  for (int r = 0; r < 6; ++r) *--sp = nullptr;  // r15 .. rbp
  c.sp = sp;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fn, 0);
#endif
}

void context_switch(Context& from, Context& to) {
#ifdef SG2EMU_FAST_SWITCH
  sg2emu_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

// The order in which runnable threads are resumed. Running a kernel in two orders exposes a
// missing barrier: without one, some order lets a reader run before the writer it needs.
enum Order : int { kForward = 0, kReverse = 1, kRandom = 2 };

enum class State { kRunnable, kAtBarrier, kAtCollective, kDone };

struct Fiber {
  Context context;
  State state = State::kRunnable;
  uint3 tid{};
  int linear = 0;  // x + y * bx + z * bx * by: lanes are linear % 32, warps linear / 32
  // The collective this thread waits at (valid in kAtCollective).
  Collective kind = kSyncWarp;
  unsigned mask = 0;
  uint64_t bits = 0;
  int arg = 0;
  int width = 32;
  uint64_t result = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping for this stack
};

// Raised inside the scheduler (never across a fiber switch) to abort a launch.
struct LaunchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr size_t kStackBytes =
#ifdef SG2EMU_ASAN
    512 * 1024;
#else
    128 * 1024;
#endif

const char* collective_name(Collective k) {
  switch (k) {
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kBallot: return "__ballot_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    case kSyncWarp: return "__syncwarp";
  }
  return "?";
}

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

class Block {
 public:
  // Runs every thread of block `bid`; throws LaunchError on a deadlock or a collective misuse.
  void run(const LaunchConfig& cfg, uint3 bid, const std::function<void()>& body);

  // Called on a fiber's stack.
  void barrier();
  uint64_t collective(Collective kind, unsigned mask, uint64_t bits, int arg, int width);
  void* shared_alloc(const void* site, size_t bytes, size_t align);

  const uint3& tid() const { return fibers_[current_].tid; }
  uint3 bid{};
  dim3 block_dim{}, grid_dim{};

 private:
  static void entry();
  void switch_to_scheduler();
  void release_completed_collectives();
  void release_completed_collectives(int warp);
  void complete_group(int i);
  void make_runnable(int i) {
    fibers_[i].state = State::kRunnable;
    first_runnable_ = std::min(first_runnable_, i);
    last_runnable_ = std::max(last_runnable_, i);
  }
  [[noreturn]] void fail(const std::string& what);
  std::string describe_waits() const;
  int pick_next();
  void free_shared();

  std::vector<Fiber> fibers_;
  int current_ = -1;
  // Bounds on the runnable threads' indices, so that picking the next thread in forward or
  // reverse order does not rescan the whole block after every switch.
  int first_runnable_ = 0, last_runnable_ = 0;
  Context scheduler_{};
  const std::function<void()>* body_ = nullptr;
  std::string error_;  // set on a fiber; the scheduler raises it
  std::map<const void*, void*> shared_;
  std::vector<char*> stacks_;
#ifdef SG2EMU_ASAN
  void* sched_fake_stack_ = nullptr;
  const void* sched_stack_bottom_ = nullptr;
  size_t sched_stack_size_ = 0;
#endif
};

// ---- process-wide state --------------------------------------------------------------------
std::mutex g_launch_mutex;  // one emulated launch at a time (they share the globals below)
Block* g_block = nullptr;
cudaError_t g_last_error = cudaSuccess;
std::string g_last_message;
int g_order = kForward;
std::mt19937_64 g_rng(0);
std::vector<char*> g_stack_pool;  // stacks with a guard page below, reused across blocks

char* take_stack() {
  if (!g_stack_pool.empty()) {
    char* s = g_stack_pool.back();
    g_stack_pool.pop_back();
    return s;
  }
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* mem = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw LaunchError("cannot map a fiber stack");
  mprotect(mem, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
  return static_cast<char*>(mem) + page;
}

void Block::entry() {
  Block* b = g_block;
#ifdef SG2EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b->sched_stack_bottom_, &b->sched_stack_size_);
#endif
  (*b->body_)();
  b->fibers_[b->current_].state = State::kDone;
  b->switch_to_scheduler();  // never resumed
}

void Block::switch_to_scheduler() {
  Fiber& f = fibers_[current_];
#ifdef SG2EMU_ASAN
  // A finished fiber's stack is gone: pass nullptr so ASan frees its fake stack.
  __sanitizer_start_switch_fiber(f.state == State::kDone ? nullptr : &f.fake_stack, sched_stack_bottom_,
                                 sched_stack_size_);
#endif
  context_switch(f.context, scheduler_);
#ifdef SG2EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &sched_stack_bottom_, &sched_stack_size_);
#endif
}

void Block::fail(const std::string& what) {
  error_ = what;
  // Leave the fiber for good: the scheduler sees the error and abandons the launch.
  fibers_[current_].state = State::kDone;
  switch_to_scheduler();
  std::abort();  // unreachable: an abandoned fiber is never resumed
}

void Block::barrier() {
  fibers_[current_].state = State::kAtBarrier;
  switch_to_scheduler();
}

uint64_t Block::collective(Collective kind, unsigned mask, uint64_t bits, int arg, int width) {
  Fiber& f = fibers_[current_];
  const int lane = f.linear % 32;
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail(std::string(collective_name(kind)) + ": width " + std::to_string(width) + " is not a power of two <= 32");
  }
  if (!(mask >> lane & 1u)) {
    fail(std::string(collective_name(kind)) + " called by thread " + std::to_string(f.linear) + " (lane " +
         std::to_string(lane) + ") with mask " + hex(mask) + ", which does not include the calling lane");
  }
  f.kind = kind;
  f.mask = mask;
  f.bits = bits;
  f.arg = arg;
  f.width = width;
  f.state = State::kAtCollective;
  switch_to_scheduler();
  return f.result;
}

void* Block::shared_alloc(const void* site, size_t bytes, size_t align) {
  auto it = shared_.find(site);
  if (it != shared_.end()) return it->second;
  if (align < 16) align = 16;
  void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
  if (p == nullptr) fail("cannot allocate emulated shared memory");
  std::memset(p, 0xFF, bytes);  // NaN for float, half and bfloat16: a read before a write shows
  shared_[site] = p;
  return p;
}

void Block::free_shared() {
  for (auto& kv : shared_) std::free(kv.second);
  shared_.clear();
}

std::string Block::describe_waits() const {
  std::ostringstream out;
  int shown = 0;
  for (const Fiber& f : fibers_) {
    if (f.state == State::kDone) continue;
    if (shown++ == 8) {
      out << " ...";
      break;
    }
    out << " thread " << f.linear << " (" << f.tid.x << "," << f.tid.y << "," << f.tid.z << ") ";
    if (f.state == State::kAtBarrier) out << "at __syncthreads;";
    if (f.state == State::kAtCollective) out << "at " << collective_name(f.kind) << " mask " << hex(f.mask) << ";";
  }
  return out.str();
}

// Completes every warp collective whose named lanes have all arrived; raises on a lane that
// names an exited or missing lane, or on lanes that disagree about the collective.
void Block::release_completed_collectives() {
  const int n = static_cast<int>(fibers_.size());
  for (int warp = 0; warp * 32 < n; ++warp) release_completed_collectives(warp);
}

// The same for one warp: only a thread that arrives at a collective or exits can complete (or
// break) one, and only in its own warp, so the scheduler checks just that warp after a switch
// (checking every warp after every switch made the epilogue's backward quadratic in threads).
void Block::release_completed_collectives(int warp) {
  const int end = std::min(static_cast<int>(fibers_.size()), (warp + 1) * 32);
  for (int i = warp * 32; i < end; ++i) complete_group(i);
}

// Completes the collective thread i waits at if every lane it names has arrived (then all of
// them become runnable); raises if a named lane is missing or exited, or meets elsewhere.
void Block::complete_group(int i) {
  const int n = static_cast<int>(fibers_.size());
  {
    Fiber& f = fibers_[i];
    if (f.state != State::kAtCollective) return;
    const int warp_base = f.linear / 32 * 32;
    bool complete = true;
    for (int lane = 0; lane < 32; ++lane) {
      if (!(f.mask >> lane & 1u)) continue;
      const int j = warp_base + lane;
      if (j >= n) {
        throw LaunchError(std::string(collective_name(f.kind)) + " mask " + hex(f.mask) + " of thread " +
                          std::to_string(f.linear) + " names lane " + std::to_string(lane) +
                          ", which does not exist in a block of " + std::to_string(n) + " threads");
      }
      const Fiber& g = fibers_[j];
      if (g.state == State::kDone) {
        throw LaunchError(std::string(collective_name(f.kind)) + " mask " + hex(f.mask) + " of thread " +
                          std::to_string(f.linear) + " names lane " + std::to_string(lane) + " (thread " +
                          std::to_string(j) + "), which exited without reaching it");
      }
      if (g.state != State::kAtCollective) {
        complete = false;
        continue;
      }
      if (g.kind != f.kind || g.mask != f.mask) {
        throw LaunchError("threads " + std::to_string(f.linear) + " and " + std::to_string(j) +
                          " of one warp meet at different collectives: " + collective_name(f.kind) + " mask " +
                          hex(f.mask) + " vs " + collective_name(g.kind) + " mask " + hex(g.mask));
      }
    }
    if (!complete) return;
    // Everyone named is here: compute each lane's result, then let them all go.
    uint64_t vote = 0;
    for (int lane = 0; lane < 32; ++lane) {
      if ((f.mask >> lane & 1u) && fibers_[warp_base + lane].bits != 0) vote |= uint64_t{1} << lane;
    }
    for (int lane = 0; lane < 32; ++lane) {
      if (!(f.mask >> lane & 1u)) continue;
      Fiber& g = fibers_[warp_base + lane];
      const int w = g.width, seg = lane & ~(w - 1);
      int src = lane;
      switch (g.kind) {
        case kShflIdx: src = seg + ((g.arg % w) + w) % w; break;
        case kShflUp: src = lane - g.arg >= seg ? lane - g.arg : lane; break;
        case kShflDown: src = lane + g.arg < seg + w ? lane + g.arg : lane; break;
        case kShflXor: src = ((lane ^ g.arg) & ~(w - 1)) == seg ? lane ^ g.arg : lane; break;
        default: break;
      }
      if (g.kind <= kShflXor) {
        if (!(f.mask >> src & 1u)) {
          throw LaunchError(std::string(collective_name(g.kind)) + ": thread " + std::to_string(g.linear) +
                            " (lane " + std::to_string(lane) + ") reads lane " + std::to_string(src) +
                            ", which is not in the mask " + hex(f.mask));
        }
        g.result = fibers_[warp_base + src].bits;
      } else if (g.kind == kBallot) {
        g.result = vote;
      } else if (g.kind == kAny) {
        g.result = vote != 0;
      } else if (g.kind == kAll) {
        g.result = vote == (f.mask & 0xffffffffu);
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      if (f.mask >> lane & 1u) make_runnable(warp_base + lane);
    }
  }
}

int Block::pick_next() {
  const int n = static_cast<int>(fibers_.size());
  if (g_order == kRandom) {
    int count = 0;
    for (const Fiber& f : fibers_) count += f.state == State::kRunnable;
    if (count == 0) return -1;
    int k = static_cast<int>(g_rng() % static_cast<uint64_t>(count));
    for (int i = 0; i < n; ++i) {
      if (fibers_[i].state == State::kRunnable && k-- == 0) return i;
    }
    return -1;
  }
  if (g_order == kReverse) {
    for (; last_runnable_ >= 0; --last_runnable_) {
      if (fibers_[last_runnable_].state == State::kRunnable) return last_runnable_;
    }
    first_runnable_ = n;
    return -1;
  }
  for (; first_runnable_ < n; ++first_runnable_) {
    if (fibers_[first_runnable_].state == State::kRunnable) return first_runnable_;
  }
  last_runnable_ = -1;
  return -1;
}

void Block::run(const LaunchConfig& cfg, uint3 block_id, const std::function<void()>& body) {
  bid = block_id;
  block_dim = cfg.block;
  grid_dim = cfg.grid;
  body_ = &body;
  error_.clear();
  const int n = static_cast<int>(cfg.block.x * cfg.block.y * cfg.block.z);
  fibers_.assign(static_cast<size_t>(n), Fiber{});
  first_runnable_ = 0;
  last_runnable_ = n - 1;
  for (int i = 0; i < n; ++i) {
    Fiber& f = fibers_[i];
    f.linear = i;
    f.tid = uint3{static_cast<unsigned>(i) % cfg.block.x, static_cast<unsigned>(i) / cfg.block.x % cfg.block.y,
                  static_cast<unsigned>(i) / (cfg.block.x * cfg.block.y)};
    if (static_cast<int>(stacks_.size()) <= i) stacks_.push_back(take_stack());
    context_init(f.context, stacks_[i], kStackBytes, &Block::entry);
  }
  struct Cleanup {
    Block* b;
    ~Cleanup() {
      b->free_shared();
      for (char* s : b->stacks_) g_stack_pool.push_back(s);
      b->stacks_.clear();
    }
  } cleanup{this};

  for (;;) {
    int next = pick_next();
    if (next < 0) {
      release_completed_collectives();
      next = pick_next();
    }
    if (next < 0) {
      bool all_done = true, all_barrier = true;
      for (const Fiber& f : fibers_) {
        all_done &= f.state == State::kDone;
        all_barrier &= f.state == State::kDone || f.state == State::kAtBarrier;
      }
      if (all_done) return;
      if (!all_barrier) {
        throw LaunchError("deadlock in block (" + std::to_string(bid.x) + "," + std::to_string(bid.y) + "," +
                          std::to_string(bid.z) + "): no thread can run;" + describe_waits());
      }
      // __syncthreads over the block's live threads: every thread that has not exited is here.
      for (int i = 0; i < static_cast<int>(fibers_.size()); ++i) {
        if (fibers_[i].state == State::kAtBarrier) make_runnable(i);
      }
      continue;
    }
    current_ = next;
#ifdef SG2EMU_ASAN
    __sanitizer_start_switch_fiber(&sched_fake_stack_, stacks_[next], kStackBytes);
#endif
    context_switch(scheduler_, fibers_[next].context);
#ifdef SG2EMU_ASAN
    __sanitizer_finish_switch_fiber(sched_fake_stack_, nullptr, nullptr);
#endif
    current_ = -1;
    if (!error_.empty()) {
      throw LaunchError("block (" + std::to_string(bid.x) + "," + std::to_string(bid.y) + "," + std::to_string(bid.z) +
                        "): " + error_);
    }
    if (fibers_[next].state == State::kAtCollective) {
      complete_group(next);  // only the arriving lane's group can have completed
    } else if (fibers_[next].state == State::kDone) {
      release_completed_collectives(next / 32);  // a lane waiting on this one must hear of it
    }
  }
}

const char* config_problem(const LaunchConfig& cfg) {
  const dim3& g = cfg.grid;
  const dim3& b = cfg.block;
  if (g.x == 0 || g.y == 0 || g.z == 0) return "a grid dimension is 0";
  if (g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) return "the grid exceeds 2^31-1 x 65535 x 65535 blocks";
  if (b.x == 0 || b.y == 0 || b.z == 0) return "a block dimension is 0";
  if (b.x > 1024 || b.y > 1024 || b.z > 64) return "a block dimension exceeds 1024 x 1024 x 64";
  if (static_cast<uint64_t>(b.x) * b.y * b.z > 1024) return "the block has more than 1024 threads";
  if (cfg.shared_bytes > 48 * 1024) return "more than 48 KiB of dynamic shared memory";
  return nullptr;
}

}  // namespace

// ---- the device-side API of emu.h ------------------------------------------------------------
const uint3& thread_idx() { return g_block->tid(); }
const uint3& block_idx() { return g_block->bid; }
const dim3& block_dim() { return g_block->block_dim; }
const dim3& grid_dim() { return g_block->grid_dim; }
void syncthreads() { g_block->barrier(); }
uint64_t collective(Collective kind, unsigned mask, uint64_t bits, int arg, int width) {
  return g_block->collective(kind, mask, bits, arg, width);
}
void* shared_alloc(const void* site, size_t bytes, size_t align) { return g_block->shared_alloc(site, bytes, align); }

void run_grid(const LaunchConfig& cfg, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  if (const char* problem = config_problem(cfg)) {
    g_last_error = cudaErrorInvalidConfiguration;
    g_last_message = std::string("invalid launch configuration: ") + problem;
    return;
  }
  Block block;
  g_block = &block;
  try {
    for (unsigned z = 0; z < cfg.grid.z; ++z) {
      for (unsigned y = 0; y < cfg.grid.y; ++y) {
        for (unsigned x = 0; x < cfg.grid.x; ++x) block.run(cfg, uint3{x, y, z}, body);
      }
    }
  } catch (const LaunchError& e) {
    g_last_error = cudaErrorLaunchFailure;
    g_last_message = e.what();
  }
  g_block = nullptr;
}

}  // namespace sg2emu

// ---- the host API the kernels' launchers call -------------------------------------------------
extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = sg2emu::g_last_error;
  sg2emu::g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return sg2emu::g_last_error; }

// Test controls (ctypes): the resume order of runnable threads, and the message of the last
// failed launch.
void sg2emu_set_order(int order, unsigned long long seed) {
  sg2emu::g_order = order;
  sg2emu::g_rng.seed(seed);
}

const char* sg2emu_last_message(void) { return sg2emu::g_last_message.c_str(); }

void sg2emu_clear_error(void) {
  sg2emu::g_last_error = cudaSuccess;
  sg2emu::g_last_message.clear();
}

}  // extern "C"
