// Shared helpers for the deberta-embed kernels: element types, conversions, warp/block
// reductions, the exact GELU. Every kernel file includes this; build.rs compiles all kernels
// as one translation unit, so everything here is `static __device__ __forceinline__` or a
// template.
//
// Conventions (all kernels):
// * activations are row-major [tokens, features], sequences packed back to back (no padding);
// * "compute type" T is float (the exact fp32 path), __half or __nv_bfloat16;
// * statistics (LayerNorm, softmax) and accumulation are always fp32;
// * sizes are int (the host checks every product fits), offsets into buffers are size_t.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "constants.cuh"

typedef __half f16;
typedef __nv_bfloat16 bf16;

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<f16>(f16 v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<bf16>(bf16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ f16 from_f32<f16>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float v) { return __float2bfloat16_rn(v); }

// Exact (erf) GELU, as transformers' "gelu": x/2 * (1 + erf(x/sqrt(2))).
static __device__ __forceinline__ float gelu_erf(float x) {
  return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
}

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). `scratch` holds 32
// floats. Every thread gets the result. Contains barriers: call from all threads.
static __device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = (lane < nwarps) ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// Pointer helpers: buffers are passed as raw device pointers; nullptr means "absent".
template <typename T> __device__ __forceinline__ float load_f32(const T* p, size_t i) {
  return to_f32<T>(p[i]);
}
