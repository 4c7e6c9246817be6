// Tensor-core peak probe for the kernel testbed (`deberta-embed bench --device cuda --ops`):
// the rate of the instruction our GEMM and attention v2 are built on, mma.sync m16n8k16 with
// fp32 accumulation, measured rather than taken from a datasheet (wgmma on sm_90 has a higher
// ceiling; this is the one our kernels can reach).
//
// Every warp issues `iters` rounds of PEAK_MMA_CHAINS (8) independent mma.sync on register
// operands (8 chains cover the instruction latency); no memory traffic but one store per
// thread, so the compiler cannot drop the work. Operands are a small constant (1/1024):
// finite, nonzero, no overflow. FLOPs: (threads / 32) * iters * PEAK_MMA_CHAINS * 2 * 16 * 8 *
// 16 (launch.rs: mma_peak_flops).
#include "common.cuh"
#include "mma.cuh"

template <typename T> struct SmallPair;
template <> struct SmallPair<f16> {
  static constexpr uint32_t bits = 0x14001400u;  // two f16 1/1024
};
template <> struct SmallPair<bf16> {
  static constexpr uint32_t bits = 0x3A803A80u;  // two bf16 1/1024
};

template <typename T> static __device__ void mma_peak(int iters, float* __restrict__ out) {
  // Opaque to the compiler (depends on the launch), so the chains are not constant-folded.
  const uint32_t v = SmallPair<T>::bits ^ (threadIdx.x >> 31);
  const uint32_t a[4] = {v, v, v, v};
  float c[PEAK_MMA_CHAINS][4];
#pragma unroll
  for (int j = 0; j < PEAK_MMA_CHAINS; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < PEAK_MMA_CHAINS; ++j) Mma<T>::run(c[j], a, v, v);
  }
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < PEAK_MMA_CHAINS; ++j) s += c[j][0] + c[j][1] + c[j][2] + c[j][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

// out: fp32 [gridDim.x * blockDim.x]; blockDim.x a multiple of 32.
extern "C" __global__ void mma_peak_f16(int iters, float* out) { mma_peak<f16>(iters, out); }
extern "C" __global__ void mma_peak_bf16(int iters, float* out) { mma_peak<bf16>(iters, out); }
