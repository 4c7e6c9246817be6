// The emulator's runtime: CUDA threads as fibers, barriers, warp collectives, the tensor-core
// instructions and cp.async (see cuda_emu.h). Fibers are created with makecontext and switched
// with _setjmp / _longjmp (no signal-mask system call per switch).
#include "runtime.h"

#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

alignas(16) thread_local float smem[emu::kDynSmemMax / sizeof(float)];
alignas(16) thread_local float smem_row[emu::kDynSmemMax / sizeof(float)];
alignas(16) thread_local unsigned char a2_smem[emu::kDynSmemMax];
alignas(16) thread_local unsigned char gemm_smem[emu::kDynSmemMax];

namespace emu {
namespace {

constexpr size_t kStack = 256 * 1024;
constexpr int kMaxThreads = 1024;
constexpr size_t kGuard = 4096;  // bytes past the dynamic shared size that must stay poisoned

struct Barrier {
  uint64_t gen = 0;
  int arrived = 0;
  int expected = 0;
};

struct Pending {
  unsigned char* dst;
  unsigned char data[16];
  int bytes;
  uint32_t group;
};

struct Fiber {
  ThreadState st;
  jmp_buf jb;
  ucontext_t uc;
  void* stack = nullptr;
  bool started = false;  // has a live trampoline frame to _longjmp into
  bool done = true;
  const uint64_t* wait_gen = nullptr;  // blocked while *wait_gen == wait_val
  uint64_t wait_val = 0;
  std::vector<Pending> cp;
  uint32_t ncommit = 0;
};

struct WarpState {
  Barrier bar;
  LaneSlot slots[2][32];
};

struct Worker {
  std::vector<Fiber*> fibers;
  jmp_buf sched;
  Barrier block;
  std::vector<WarpState> warps;
  const std::function<void()>* body = nullptr;
  uint64_t rng = 1;
  Fiber* running = nullptr;
  bool cp_early = false;          // this block's cp.async copies land at issue, not at the wait
  const char* error = nullptr;    // set by fail() inside the block: the block is abandoned
};

thread_local Worker* W = nullptr;
thread_local Fiber* t_starting = nullptr;
thread_local ucontext_t t_creator;

void on_fault(int sig, siginfo_t*, void*);

Worker& worker() {
  if (!W) {
    W = new Worker();  // one per host thread, for the life of the process
    // a fault inside a kernel (on a fiber stack, maybe its guard page) is handled on a stack
    // of this host thread's own
    stack_t ss{};
    ss.ss_size = 64 * 1024;
    ss.ss_sp = malloc(ss.ss_size);
    if (!ss.ss_sp || sigaltstack(&ss, nullptr) != 0) fail("cannot set a signal stack");
    static const bool installed = [] {
      struct sigaction sa{};
      sa.sa_sigaction = on_fault;
      sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
      sigemptyset(&sa.sa_mask);
      return sigaction(SIGSEGV, &sa, nullptr) == 0 && sigaction(SIGBUS, &sa, nullptr) == 0;
    }();
    if (!installed) fail("cannot install the fault handler");
  }
  return *W;
}

uint64_t next_rand(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}


void yield_to_scheduler() {
  Fiber* f = W->running;
  if (_setjmp(f->jb) == 0) _longjmp(W->sched, 1);
}

void flush_cp(Fiber* f, uint32_t below) {
  size_t keep = 0;
  for (size_t i = 0; i < f->cp.size(); ++i) {
    Pending& p = f->cp[i];
    if (p.group < below) {
      memcpy(p.dst, p.data, (size_t)p.bytes);
    } else {
      f->cp[keep++] = p;
    }
  }
  f->cp.resize(keep);
}

void release_if_complete(Barrier& b) {
  if (b.arrived > 0 && b.arrived >= b.expected) {
    b.arrived = 0;
    ++b.gen;
  }
}

void thread_exit(Fiber* f) {
  flush_cp(f, UINT32_MAX);  // copies still in flight land before the kernel ends
  f->done = true;
  Worker& w = *W;
  --w.block.expected;
  release_if_complete(w.block);
  WarpState& ws = w.warps[f->st.tid.x >> 5];
  // lanes of this warp wait in a shuffle / vote / ldmatrix / mma / __syncwarp that this lane
  // never reaches (undefined on the GPU; here the collective would never have run)
  if (ws.bar.arrived > 0) fail("a lane exited while its warp waits in a warp collective");
  --ws.bar.expected;
  release_if_complete(ws.bar);
}

void trampoline() {
  Fiber* f = t_starting;
  if (_setjmp(f->jb) == 0) swapcontext(&f->uc, &t_creator);  // back to create(); resumed below
  for (;;) {
    (*W->body)();
    thread_exit(W->running);
    yield_to_scheduler();
  }
}

void create(Fiber* f) {
  if (!f->stack) {
    // one guard page below the stack: an overflow faults instead of corrupting a neighbour
    void* m = mmap(nullptr, kStack + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (m == MAP_FAILED || mprotect(m, 4096, PROT_NONE) != 0) fail("cannot map a fiber stack");
    f->stack = static_cast<char*>(m) + 4096;
  }
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack;
  f->uc.uc_stack.ss_size = kStack;
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, trampoline, 0);
  t_starting = f;
  swapcontext(&t_creator, &f->uc);
  f->started = true;
}

void wait_on(Barrier& b) {
  Fiber* f = W->running;
  const uint64_t g = b.gen;
  if (++b.arrived >= b.expected) {
    b.arrived = 0;
    ++b.gen;
  }
  f->wait_gen = &b.gen;
  f->wait_val = g;
  yield_to_scheduler();  // always: lets the scheduler reorder the threads here
  f->wait_gen = nullptr;
}

// Run one block on this host thread: nullptr, or why it failed (a deadlock: a barrier some
// threads never reach; or a fail() inside the kernel: a misaligned ldmatrix / cp.async, ...).
const char* run_block(uint3 bidx, dim3 bdim, uint64_t seed) {
  Worker& w = worker();
  const int n = (int)(bdim.x * bdim.y * bdim.z);
  if (bdim.y != 1 || bdim.z != 1) fail("only 1-D blocks are emulated");
  if (n < 1 || n > kMaxThreads) fail("block size out of range");
  while ((int)w.fibers.size() < n) w.fibers.push_back(new Fiber());
  const int nwarps = (n + 31) / 32;
  if ((int)w.warps.size() < nwarps) w.warps.resize(nwarps);
  w.block = Barrier{0, 0, n};
  for (int i = 0; i < nwarps; ++i) w.warps[i].bar = Barrier{0, 0, std::min(32, n - 32 * i)};
  block_idx = bidx;
  block_dim = bdim;
  for (int i = 0; i < n; ++i) {
    Fiber* f = w.fibers[i];
    if (!f->started) create(f);
    f->st.tid = uint3{(unsigned)i, 0, 0};
    f->done = false;
    f->wait_gen = nullptr;
    f->cp.clear();
    f->ncommit = 0;
  }
  w.rng = (seed ^ (0x9E3779B97F4A7C15ull * (1 + bidx.x + 65536ull * (bidx.y + 65536ull * bidx.z)))) | 1;
  // Two schedules, picked per block: interleaved (every runnable thread resumes once per
  // pass, in a shuffled order: the warps advance together) and warp-serial (the warps in a
  // shuffled order, each run until all its threads wait at a block barrier: the warps drift
  // as far apart as the barriers allow, which exposes a missing __syncthreads).
  const uint64_t mode = next_rand(w.rng);
  const bool serial = (mode & 1) != 0;
  // cp.async copies land either at issue (the earliest moment: catches a copy into a buffer
  // that other warps still read) or at the wait_group that retires them (the latest: catches
  // a read before the wait), independently of the schedule
  w.cp_early = (mode & 2) != 0;
  w.error = nullptr;
  std::vector<int> order(n), worder(nwarps);
  for (int i = 0; i < n; ++i) order[i] = i;
  for (int i = 0; i < nwarps; ++i) worder[i] = i;
  int live = n;
  auto runnable = [&](Fiber* f) { return !f->done && !(f->wait_gen && *f->wait_gen == f->wait_val); };
  auto resume = [&](Fiber* f) {
    w.running = f;
    cur = &f->st;
    if (_setjmp(w.sched) == 0) _longjmp(f->jb, 1);
    if (f->done) --live;
    if (w.error) live = -1;  // fail() in this fiber: stop scheduling the block
  };
  auto abandon = [&] {  // the stacks of unfinished threads are dropped, not unwound
    for (int i = 0; i < n; ++i)
      if (!w.fibers[i]->done) w.fibers[i]->started = false;
    cur = nullptr;
  };
  auto shuffle = [&](int* a, int len) {
    for (int i = len - 1; i > 0; --i) std::swap(a[i], a[next_rand(w.rng) % (i + 1)]);
  };
  while (live > 0) {
    bool progress = false;
    if (serial) {
      shuffle(worder.data(), nwarps);
      for (int wi : worder) {
        const int lo = 32 * wi, cnt = std::min(32, n - lo);
        for (bool ran = true; ran;) {
          ran = false;
          shuffle(order.data() + lo, cnt);
          for (int k = lo; k < lo + cnt; ++k) {
            Fiber* f = w.fibers[order[k]];
            if (!runnable(f)) continue;
            ran = progress = true;
            resume(f);
            if (live < 0) break;
          }
          if (live < 0) break;
        }
        if (live < 0) break;
      }
    } else {
      shuffle(order.data(), n);
      for (int k = 0; k < n; ++k) {
        Fiber* f = w.fibers[order[k]];
        if (!runnable(f)) continue;
        progress = true;
        resume(f);
        if (live < 0) break;
      }
    }
    if (live < 0) {
      abandon();
      return w.error;
    }
    if (!progress) {  // every live thread waits on a barrier that cannot complete
      abandon();
      return "deadlock: a barrier that not every thread reaches";
    }
  }
  cur = nullptr;
  return nullptr;
}

// ---- the launch: blocks shared among host threads -------------------------------------------
struct Launch {
  dim3 grid, block;
  size_t dsmem = 0;
  uint64_t seed = 0;
  const std::function<void()>* body = nullptr;
  std::atomic<uint64_t> next{0};
  std::atomic<const char*> error{nullptr};  // the first block's failure
  std::atomic<int> guard_broken{0};
};

bool guard_ok(const unsigned char* p, size_t from, size_t to) {
  for (size_t i = from; i < to; ++i)
    if (p[i] != 0xff) return false;
  return true;
}

void work(Launch& L) {
  Worker& w = worker();
  w.body = L.body;
  grid_dim = L.grid;
  const uint64_t total = (uint64_t)L.grid.x * L.grid.y * L.grid.z;
  unsigned char* dyn[4] = {reinterpret_cast<unsigned char*>(smem),
                           reinterpret_cast<unsigned char*>(smem_row), a2_smem, gemm_smem};
  const size_t used = std::min(kDynSmemMax, L.dsmem + kGuard);
  for (;;) {
    const uint64_t b = L.next.fetch_add(1);
    if (b >= total) break;
    const uint3 bidx{(unsigned)(b % L.grid.x), (unsigned)((b / L.grid.x) % L.grid.y),
                     (unsigned)(b / ((uint64_t)L.grid.x * L.grid.y))};
    for (auto* p : dyn) memset(p, 0xff, used);
    if (const char* e = run_block(bidx, L.block, L.seed)) {
      const char* none = nullptr;
      L.error.compare_exchange_strong(none, e);
    }
    for (auto* p : dyn)
      if (!guard_ok(p, L.dsmem, used)) L.guard_broken.fetch_add(1);
  }
}

struct Pool {
  std::mutex mu;
  std::condition_variable cv, done_cv;
  Launch* job = nullptr;
  uint64_t epoch = 0;
  int busy = 0;
  std::vector<std::thread> threads;
  explicit Pool(int n) {
    for (int i = 0; i < n; ++i)
      threads.emplace_back([this] {
        uint64_t seen = 0;
        for (;;) {
          Launch* j;
          {
            std::unique_lock<std::mutex> lk(mu);
            cv.wait(lk, [&] { return epoch != seen; });
            seen = epoch;
            j = job;
          }
          work(*j);
          std::lock_guard<std::mutex> lk(mu);
          if (--busy == 0) done_cv.notify_all();
        }
      });
  }
};

int host_threads() {
  static const int n = [] {
    const char* e = getenv("EMU_THREADS");
    int v = e ? atoi(e) : (int)std::thread::hardware_concurrency();
    return std::max(1, std::min(v, 16));
  }();
  return n;
}

Pool* pool() {
  static Pool* p = new Pool(host_threads() - 1);  // the caller is the last worker
  return p;
}

}  // namespace

namespace {
// SIGSEGV / SIGBUS inside a kernel (a misaligned 16-byte access, which the host compiler
// emits as an aligned vector instruction as the GPU does; a wild address): the launch fails
// with this message; the block's threads are abandoned like after fail(). Elsewhere: the
// default action.
void on_fault(int sig, siginfo_t*, void*) {
  if (W && W->running && cur) {
    W->error = sig == SIGBUS ? "bus error in the kernel"
                             : "memory fault in the kernel (SIGSEGV: a misaligned vector "
                               "access, an address outside any buffer or a fiber stack "
                               "overflow)";
    W->running->started = false;
    _longjmp(W->sched, 1);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}
}  // namespace

[[noreturn]] void fail(const char* what) {
  if (W && W->running && cur) {
    // inside a kernel: the launch reports it, the block is abandoned (run_block)
    W->error = what;
    W->running->started = false;  // its stack is dropped: a later block creates it afresh
    _longjmp(W->sched, 1);
  }
  fprintf(stderr, "emulator: %s\n", what);
  abort();
}

void syncthreads() { wait_on(W->block); }

void syncwarp() {
  WarpState& ws = W->warps[W->running->st.tid.x >> 5];
  wait_on(ws.bar);
}

void warp_collective(const void* in, size_t n_in, void* out, size_t n_out, WarpOp op) {
  Worker& w = *W;
  Fiber* f = w.running;
  WarpState& ws = w.warps[f->st.tid.x >> 5];
  const int lane = f->st.tid.x & 31;
  if (ws.bar.expected != 32) fail("warp collective in a warp with exited or missing lanes");
  // two slot sets by generation: a lane can be at most one collective ahead of the others
  LaneSlot* slots = ws.slots[ws.bar.gen & 1];
  memcpy(slots[lane].in, in, n_in);
  if (ws.bar.arrived + 1 == ws.bar.expected) op(slots);  // the last lane executes it
  wait_on(ws.bar);
  memcpy(out, slots[lane].out, n_out);
}

void shfl_op(LaneSlot* l) {
  uint64_t v[32];
  for (int i = 0; i < 32; ++i) memcpy(&v[i], l[i].in, 8);
  for (int i = 0; i < 32; ++i) {
    ShflIn s;
    memcpy(&s, l[i].in, sizeof s);
    memcpy(l[i].out, &v[s.src & 31], 8);
  }
}

void vote_op(LaneSlot* l) {
  uint32_t r = 0;
  for (int i = 0; i < 32; ++i) {
    uint32_t p;
    memcpy(&p, l[i].in, 4);
    r |= (p ? 1u : 0u) << i;
  }
  for (int i = 0; i < 32; ++i) memcpy(l[i].out, &r, 4);
}

// ---- ldmatrix: PTX ISA "Warp-level matrix load instruction: ldmatrix" -----------------------
// Lanes 8i .. 8i+7 give the row addresses of matrix i (16 bytes each, 16-byte aligned). Without
// .trans, lane l receives elements (row l/4, columns 2(l%4), 2(l%4)+1) of each matrix; with
// .trans, elements (rows 2(l%4), 2(l%4)+1, column l/4).
struct LdmIn {
  const unsigned char* p;
  int nmat, trans;
};
void ldmatrix_op(LaneSlot* l) {
  LdmIn a[32];
  for (int i = 0; i < 32; ++i) memcpy(&a[i], l[i].in, sizeof(LdmIn));
  for (int i = 0; i < 32; ++i)
    if (a[i].nmat != a[0].nmat || a[i].trans != a[0].trans) fail("ldmatrix: lanes disagree");
  const int nmat = a[0].nmat;
  for (int r = 0; r < 8 * nmat; ++r)
    if (((uintptr_t)a[r].p & 15) != 0) fail("ldmatrix: row address not 16-byte aligned");
  for (int lane = 0; lane < 32; ++lane) {
    uint32_t out[4] = {0, 0, 0, 0};
    for (int m = 0; m < nmat; ++m) {
      uint16_t e[2];
      for (int k = 0; k < 2; ++k) {
        int row, col;
        if (a[0].trans) {
          row = 2 * (lane % 4) + k;
          col = lane / 4;
        } else {
          row = lane / 4;
          col = 2 * (lane % 4) + k;
        }
        memcpy(&e[k], a[8 * m + row].p + 2 * col, 2);
      }
      out[m] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
    }
    memcpy(l[lane].out, out, 16);
  }
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 -------------------------
// PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type": groupID g = lane / 4,
// t = lane % 4.  A (16x16, row): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8,
// 2t+8..).  B (16x8, col): b0 (k 2t..2t+1, n g), b1 (k 2t+8..2t+9, n g).  C / D (16x8): c0, c1
// (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1). Products of 16-bit inputs are exact in fp32; the sum
// over k is done in double and rounded once (the hardware's internal order is unspecified).
struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};
template <bool BF> void mma_op(LaneSlot* l) {
  float A[16][16], B[16][8], C[16][8];
  auto cvt = [](uint16_t h) { return BF ? bf16_bits_to_f32(h) : f16_bits_to_f32(h); };
  for (int lane = 0; lane < 32; ++lane) {
    MmaIn in;
    memcpy(&in, l[lane].in, sizeof in);
    const int g = lane / 4, t = lane % 4;
    for (int k = 0; k < 2; ++k) {
      auto lo_hi = [&](uint32_t v) { return cvt((uint16_t)(k ? v >> 16 : v & 0xffff)); };
      A[g][2 * t + k] = lo_hi(in.a[0]);
      A[g + 8][2 * t + k] = lo_hi(in.a[1]);
      A[g][2 * t + 8 + k] = lo_hi(in.a[2]);
      A[g + 8][2 * t + 8 + k] = lo_hi(in.a[3]);
      B[2 * t + k][g] = lo_hi(in.b[0]);
      B[2 * t + 8 + k][g] = lo_hi(in.b[1]);
      C[g][2 * t + k] = in.c[k];
      C[g + 8][2 * t + k] = in.c[2 + k];
    }
  }
  float D[16][8];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double s = 0.0;
      for (int k = 0; k < 16; ++k) s += (double)A[i][k] * (double)B[k][j];
      D[i][j] = (float)(s + (double)C[i][j]);
    }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const float d[4] = {D[g][2 * t], D[g][2 * t + 1], D[g + 8][2 * t], D[g + 8][2 * t + 1]};
    memcpy(l[lane].out, d, 16);
  }
}

}  // namespace emu

namespace emu {

void ldmatrix(uint32_t* r, int nmat, bool trans, const void* row_addr) {
  LdmIn in{static_cast<const unsigned char*>(row_addr), nmat, trans ? 1 : 0};
  uint32_t out[4];
  warp_collective(&in, sizeof in, out, sizeof out, ldmatrix_op);
  for (int i = 0; i < nmat; ++i) r[i] = out[i];
}

static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, WarpOp op) {
  MmaIn in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {c[0], c[1], c[2], c[3]}};
  float d[4];
  warp_collective(&in, sizeof in, d, sizeof d, op);
  for (int i = 0; i < 4; ++i) c[i] = d[i];
}
void mma_m16n8k16_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma(c, a, b0, b1, mma_op<false>);
}
void mma_m16n8k16_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma(c, a, b0, b1, mma_op<true>);
}

// cp.async.cg.shared.global [dst], [src], cp_bytes, src_bytes: src_bytes read now, the rest
// zero-filled; the data lands at the wait_group that retires its group.
void cp_async(void* dst, const void* src, int cp_bytes, int src_bytes) {
  if (cp_bytes != 16 && cp_bytes != 8 && cp_bytes != 4) fail("cp.async: bad copy size");
  if (src_bytes < 0 || src_bytes > cp_bytes) fail("cp.async: bad source size");
  if (((uintptr_t)dst % cp_bytes) != 0 || (src_bytes > 0 && ((uintptr_t)src % cp_bytes) != 0))
    fail("cp.async: misaligned address");
  Fiber* f = W->running;
  Pending p;
  p.dst = static_cast<unsigned char*>(dst);
  memset(p.data, 0, sizeof p.data);
  if (src_bytes > 0) memcpy(p.data, src, (size_t)src_bytes);
  p.bytes = cp_bytes;
  p.group = f->ncommit;
  if (W->cp_early) memcpy(p.dst, p.data, (size_t)p.bytes);
  else f->cp.push_back(p);
}
void cp_async_commit() { ++W->running->ncommit; }
void cp_async_wait(int n) {
  Fiber* f = W->running;
  const uint32_t below = f->ncommit >= (uint32_t)n ? f->ncommit - (uint32_t)n : 0;
  flush_cp(f, below);
}

LaunchResult launch(dim3 grid, dim3 block, size_t dyn_smem, uint64_t seed,
                    const std::function<void()>& body) {
  LaunchResult r;
  if (dyn_smem > kDynSmemMax) {
    r.error = "dynamic shared memory above the 227 KB opt-in limit";
    return r;
  }
  if (block.x * block.y * block.z > (unsigned)kMaxThreads) {
    r.error = "more than 1024 threads per block";
    return r;
  }
  if (grid.y > 65535 || grid.z > 65535) {
    r.error = "grid y / z above 65535";
    return r;
  }
  Launch L;
  L.grid = grid;
  L.block = block;
  L.dsmem = dyn_smem;
  L.seed = seed;
  L.body = &body;
  Pool* p = pool();
  const int helpers = (int)p->threads.size();
  if (helpers > 0) {
    std::lock_guard<std::mutex> lk(p->mu);
    p->job = &L;
    p->busy = helpers;
    ++p->epoch;
    p->cv.notify_all();
  }
  work(L);
  if (helpers > 0) {
    std::unique_lock<std::mutex> lk(p->mu);
    p->done_cv.wait(lk, [&] { return p->busy == 0; });
  }
  if (const char* e = L.error.load()) r.error = e;
  else if (L.guard_broken.load() > 0) r.error = "write past the dynamic shared memory size";
  return r;
}

}  // namespace emu
