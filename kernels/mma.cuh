// Tensor-core building blocks shared by the GEMM and the tensor-core attention: shared-memory
// addresses, cp.async, ldmatrix and mma.sync m16n8k16 (fp16 / bf16 in, fp32 accumulate).
#pragma once

#include "common.cuh"

#ifdef DEBERTA_EMULATE
// Host emulator (kernels/emu): the same wrappers, implemented from the PTX ISA's fragment
// layouts in kernels/emu/runtime.cpp.
static inline uint32_t smem_addr(const void* p) { return (uint32_t)(uintptr_t)p; }
static inline void cp_async16(void* dst, const void* src, int src_bytes) {
  emu::cp_async(dst, src, 16, src_bytes);
}
static inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N> static inline void cp_async_wait() { emu::cp_async_wait(N); }
static inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { emu::ldmatrix(r, 4, false, p); }
static inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  emu::ldmatrix(r, 4, true, p);
}
template <typename T> struct Mma;
template <> struct Mma<f16> {
  static inline void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    emu::mma_m16n8k16_f16(c, a, b0, b1);
  }
};
template <> struct Mma<bf16> {
  static inline void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    emu::mma_m16n8k16_bf16(c, a, b0, b1);
  }
};
#else
static __device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

static __device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <typename T> struct Mma;
template <> struct Mma<f16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <> struct Mma<bf16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
#endif  // DEBERTA_EMULATE
