// sentence-transformers pooling per packed sequence, and row-wise L2 normalization.
#include "common.cuh"

// Mode codes POOL_* (kernels/constants.cuh; the host packs up to POOL_MAX_MODES of them, 4 bits
// each, in `modes`, first mode in the low bits): cls, max, mean, mean_sqrt_len_tokens,
// weightedmean, lasttoken.

// x: fp32 [T, H]; cu_seqlens: [B + 1]; out: fp32 [B, nmodes * H], blocks in mode order.
// Launch: grid (B, ceil(H / blockDim.x)), block COL_THREADS. Each thread owns one column of one
// sequence and walks its tokens in order (coalesced across the block), summing in fp32 in the
// same order as the CPU reference. An empty sequence pools to zeros in every mode.
extern "C" __global__ void pool(const float* __restrict__ x, const int* __restrict__ cu_seqlens,
                                int batch, int H, unsigned modes, int nmodes,
                                float* __restrict__ out) {
  const int b = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (b >= batch || c >= H) return;
  const int s = cu_seqlens[b], n = cu_seqlens[b + 1] - s;
  const float* xs = x + (size_t)s * H + c;
  float* o = out + (size_t)b * nmodes * H + c;
  for (int k = 0; k < nmodes; ++k) {
    const int mode = (modes >> (4 * k)) & 15;
    float v = 0.0f;
    if (n > 0) {
      switch (mode) {
        case POOL_CLS: v = xs[0]; break;
        case POOL_LAST: v = xs[(size_t)(n - 1) * H]; break;
        case POOL_MAX: {
          v = -INFINITY;
          for (int t = 0; t < n; ++t) v = fmaxf(v, xs[(size_t)t * H]);
          break;
        }
        case POOL_MEAN:
        case POOL_MEAN_SQRT: {
          for (int t = 0; t < n; ++t) v += xs[(size_t)t * H];
          v /= (mode == POOL_MEAN) ? (float)n : sqrtf((float)n);
          break;
        }
        case POOL_WEIGHTED: {
          for (int t = 0; t < n; ++t) v += (float)(t + 1) * xs[(size_t)t * H];
          v /= (float)(((long long)n * (n + 1)) / 2);
          break;
        }
        default: v = __int_as_float(0x7fffffff); break;  // unknown mode: NaN, caught on the host
      }
    }
    o[(size_t)k * H] = v;
  }
}

// x[r, :] /= max(||x[r, :]||_2, 1e-12), in place (torch.nn.functional.normalize).
// Launch: grid (rows), block 32..1024.
extern "C" __global__ void l2_normalize(float* x, int rows, int dim) {
  __shared__ float scratch[32];
  const int r = blockIdx.x;
  if (r >= rows) return;
  float* row = x + (size_t)r * dim;
  float s = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) s += row[c] * row[c];
  const float norm = sqrtf(block_sum(s, scratch));
  const float inv = 1.0f / fmaxf(norm, 1e-12f);
  for (int c = threadIdx.x; c < dim; c += blockDim.x) row[c] *= inv;
}
