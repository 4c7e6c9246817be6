// LayerNorm with fp32 statistics, one block per row, and the residual + LayerNorm used after
// the attention output, the FFN and the conv block.
#include "common.cuh"

// LayerNorm of one row already staged in shared memory (`row`, n floats), as torch computes
// it: biased variance, eps inside the sqrt. Two passes over shared memory (mean, then the
// centred sum of squares) so that 1e-7 eps and large means stay exact in fp32. Writes the
// fp32 result to out32 (if not null) and the compute-type copy to outc (if not null).
template <typename T>
static __device__ __forceinline__ void ln_row_from_smem(const float* row, int n, const float* w,
                                                        const float* b, float eps, float* out32,
                                                        T* outc, float* scratch) {
  float s = 0.0f;
  for (int c = threadIdx.x; c < n; c += blockDim.x) s += row[c];
  const float mean = block_sum(s, scratch) / (float)n;
  float q = 0.0f;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    const float d = row[c] - mean;
    q += d * d;
  }
  const float var = block_sum(q, scratch) / (float)n;
  const float inv = rsqrtf(var + eps);
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    const float y = (row[c] - mean) * inv * w[c] + b[c];
    if (out32) out32[c] = y;
    if (outc) outc[c] = from_f32<T>(y);
  }
}

// out = LayerNorm(in (+ residual)) per row. in, residual, out32: fp32 [rows, n]; out32 may be
// the same buffer as in (each row is staged in shared memory before it is written).
// Launch: grid (rows), block 32..1024 threads (multiple of 32), dynamic smem n * 4 bytes.
template <typename T>
static __device__ void layernorm_impl(const float* in, const float* residual, int rows, int n,
                                      const float* w, const float* b, float eps, float* out32,
                                      T* outc) {
  extern __shared__ float smem_row[];
  __shared__ float scratch[32];
  const int r = blockIdx.x;
  if (r >= rows) return;
  const size_t base = (size_t)r * n;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    float v = in[base + c];
    if (residual) v += residual[base + c];
    smem_row[c] = v;
  }
  __syncthreads();
  ln_row_from_smem<T>(smem_row, n, w, b, eps, out32 ? out32 + base : nullptr,
                      outc ? outc + base : nullptr, scratch);
}

#define LAYERNORM_ENTRY(NAME, T)                                                              \
  extern "C" __global__ void NAME(const float* in, const float* residual, int rows, int n,    \
                                  const float* w, const float* b, float eps, float* out32,    \
                                  T* outc) {                                                  \
    layernorm_impl<T>(in, residual, rows, n, w, b, eps, out32, outc);                         \
  }
LAYERNORM_ENTRY(layernorm_f32, float)
LAYERNORM_ENTRY(layernorm_f16, f16)
LAYERNORM_ENTRY(layernorm_bf16, bf16)
