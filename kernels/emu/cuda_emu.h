// Host emulation of the CUDA subset that kernels/*.cu use (`DEBERTA_EMULATE`): the kernels
// compile with a plain C++17 compiler and every CUDA thread of a block runs as a fiber on a
// host thread (kernels/emu/runtime.cpp). Included through the shims cuda_fp16.h / cuda_bf16.h
// in this directory, which shadow the CUDA headers when `-I kernels/emu` comes first.
//
// * `__shared__` is `thread_local` (block-scope thread_local is static): one block runs at a
//   time per host thread, so a host thread's copy is the block's shared memory. Dynamic
//   (`extern __shared__`) arrays are defined below, one per name the kernels use, and are
//   poisoned (0xff: NaN in every float type) before each block and guarded past the launch's
//   dynamic size.
// * `__syncthreads()` is a block barrier; shuffles, votes, `__syncwarp`, `ldmatrix` and
//   `mma.sync` are warp collectives: all 32 lanes deposit their operands, the last one to
//   arrive executes the instruction for the warp, then every lane takes its result.
// * `cp.async` copies read their source at issue and land in shared memory only at the
//   `cp.async.wait_group` that retires their group (the latest moment the PTX ISA allows).
// * The order in which runnable threads resume between synchronization points is shuffled
//   per seed (EMU_SEED), so unsynchronized accesses show up as wrong results, probabilistically.
#pragma once
#ifndef DEBERTA_EMULATE
#error "kernels/emu is the host emulator: compile with -DDEBERTA_EMULATE"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>

// ---- keywords --------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local

// ---- vector types ----------------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct __attribute__((aligned(16))) int4 {
  int x, y, z, w;
};
struct __attribute__((aligned(16))) uint4 {
  unsigned x, y, z, w;
};
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
  return uint4{x, y, z, w};
}
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }

// ---- math the kernels use (device overloads of min / max on int; glibc declares __expf) -------
using std::max;
using std::min;
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __int_as_float(int v) {
  float f;
  memcpy(&f, &v, 4);
  return f;
}
static inline int __float_as_int(float f) {
  int v;
  memcpy(&v, &f, 4);
  return v;
}

// ---- 16-bit floats: bit-exact conversions, round to nearest even -------------------------------
namespace emu {
static inline uint16_t f32_to_f16_bits(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {  // below 2^-14: subnormal, in units of 2^-24 (exact scaling)
    float a;
    memcpy(&a, &ax, 4);
    return (uint16_t)(sign | (uint32_t)nearbyintf(a * 16777216.0f));
  }
  uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return (uint16_t)(sign | h);
}
static inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0x1f) {
    x = sign | 0x7f800000u | (m << 13);
  } else if (e == 0) {
    const float v = (float)m * (1.0f / 16777216.0f);
    return sign ? -v : v;
  } else {
    x = sign | ((e - 15 + 127) << 23) | (m << 13);
  }
  float f;
  memcpy(&f, &x, 4);
  return f;
}
static inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // quiet NaN
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
static inline float bf16_bits_to_f32(uint16_t h) {
  const uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}
}  // namespace emu

struct __half {
  uint16_t x;
};
struct __nv_bfloat16 {
  uint16_t x;
};
struct __attribute__((aligned(4))) __half2 {
  __half x, y;
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
static inline __half __float2half_rn(float f) { return __half{emu::f32_to_f16_bits(f)}; }
static inline __half __float2half(float f) { return __float2half_rn(f); }
static inline float __half2float(__half h) { return emu::f16_bits_to_f32(h.x); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __nv_bfloat16{emu::f32_to_bf16_bits(f)};
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 h) { return emu::bf16_bits_to_f32(h.x); }
static inline __half2 __floats2half2_rn(float lo, float hi) {
  return __half2{__float2half_rn(lo), __float2half_rn(hi)};
}
static inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

// ---- the runtime (kernels/emu/runtime.cpp) ------------------------------------------------------
namespace emu {
struct ThreadState {
  uint3 tid;
};
// The running CUDA thread of this host thread, and the block it belongs to.
inline thread_local ThreadState* cur = nullptr;
inline thread_local uint3 block_idx = {0, 0, 0};
inline thread_local dim3 block_dim;
inline thread_local dim3 grid_dim;

void syncthreads();
void syncwarp();
// A warp collective: `in` (n_in bytes) is this lane's operand, `out` (n_out bytes) receives
// its result; `op` runs once per warp, on the 32 lanes' operands, when the last lane arrives.
struct LaneSlot {
  alignas(16) unsigned char in[48];
  alignas(16) unsigned char out[16];
};
using WarpOp = void (*)(LaneSlot* lanes);
void warp_collective(const void* in, size_t n_in, void* out, size_t n_out, WarpOp op);
[[noreturn]] void fail(const char* what);

// shuffles / votes
struct ShflIn {
  uint64_t v;
  int src;
};
void shfl_op(LaneSlot* l);
void vote_op(LaneSlot* l);
template <typename T> static inline T shfl_to(T v, int src, unsigned mask) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  if (mask != 0xffffffffu) fail("shuffle with a partial mask (not emulated)");
  ShflIn in{0, src};
  memcpy(&in.v, &v, sizeof(T));
  uint64_t r;
  warp_collective(&in, sizeof in, &r, sizeof r, shfl_op);
  T out;
  memcpy(&out, &r, sizeof(T));
  return out;
}
static inline unsigned lane_id() { return cur->tid.x & 31; }
static inline unsigned ballot(unsigned mask, int pred) {
  if (mask != 0xffffffffu) fail("vote with a partial mask (not emulated)");
  const uint32_t p = pred != 0;
  uint32_t r;
  warp_collective(&p, sizeof p, &r, sizeof r, vote_op);
  return r;
}

// tensor-core instructions and async copies (the `#ifdef DEBERTA_EMULATE` side of mma.cuh)
void ldmatrix(uint32_t* r, int nmat, bool trans, const void* row_addr);
void mma_m16n8k16_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void mma_m16n8k16_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void cp_async(void* dst, const void* src, int cp_bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);

// Dynamic shared memory: every `extern __shared__` name of kernels/*.cu, each the largest
// opt-in size (227 KB). A new name in a kernel is a link error here until it is added.
constexpr size_t kDynSmemMax = 227 * 1024;
}  // namespace emu

// (Declared here, defined in runtime.cpp: GCC 12 mis-links a block-scope `extern thread_local`
// redeclaration of an `inline thread_local` array.)
#define EMU_DYNAMIC_SHARED(TYPE, NAME) extern thread_local TYPE NAME[]
EMU_DYNAMIC_SHARED(float, smem);             // attention.cu
EMU_DYNAMIC_SHARED(float, smem_row);         // layernorm.cu, embed.cu
EMU_DYNAMIC_SHARED(unsigned char, a2_smem);  // attention_tc.cu
EMU_DYNAMIC_SHARED(unsigned char, gemm_smem);  // gemm.cu

#define threadIdx (::emu::cur->tid)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define warpSize 32

static inline void __syncthreads() { emu::syncthreads(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) emu::fail("__syncwarp with a partial mask (not emulated)");
  emu::syncwarp();
}
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  if (width != 32) emu::fail("shuffle width != 32 (not emulated)");
  return emu::shfl_to(v, src & 31, mask);
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) emu::fail("shuffle width != 32 (not emulated)");
  return emu::shfl_to(v, (int)(emu::lane_id() ^ (unsigned)lane_mask) & 31, mask);
}
template <typename T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  if (width != 32) emu::fail("shuffle width != 32 (not emulated)");
  const unsigned l = emu::lane_id();
  return emu::shfl_to(v, (int)(l + delta < 32 ? l + delta : l), mask);
}
static inline unsigned __ballot_sync(unsigned mask, int pred) { return emu::ballot(mask, pred); }
static inline int __any_sync(unsigned mask, int pred) { return emu::ballot(mask, pred) != 0; }
static inline int __all_sync(unsigned mask, int pred) {
  return emu::ballot(mask, pred) == 0xffffffffu;
}
static inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }
