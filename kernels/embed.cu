// Embeddings over packed sequences: word row (+ position row p, the token's position inside
// its own sequence) (+ token-type row 0), then either LayerNorm (fused) or a raw store for the
// embed_proj GEMM.
#include "common.cuh"

// Sum of the embedding rows of token t into smem_row (fp32, n floats).
template <typename T>
static __device__ __forceinline__ void gather_row(const uint32_t* ids, const int* pos, int t,
                                                  int n, const T* word, const T* pos_emb,
                                                  const T* type0, float* dst) {
  const size_t id = ids[t];
  const size_t p = (size_t)pos[t];
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    float v = to_f32<T>(word[id * n + c]);
    if (pos_emb) v += to_f32<T>(pos_emb[p * n + c]);
    if (type0) v += to_f32<T>(type0[c]);
    dst[c] = v;
  }
}

// out[t, :] = word[ids[t]] (+ pos_emb[pos[t]]) (+ type0), in the compute type (input of the
// embed_proj GEMM). Launch: grid (tokens), block 32..1024, dynamic smem n * 4 bytes.
template <typename T>
static __device__ void embed_gather_impl(const uint32_t* ids, const int* pos, int tokens, int n,
                                         const T* word, const T* pos_emb, const T* type0,
                                         T* out) {
  extern __shared__ float smem_row[];
  const int t = blockIdx.x;
  if (t >= tokens) return;
  gather_row<T>(ids, pos, t, n, word, pos_emb, type0, smem_row);
  // each thread reads back only what it wrote: no barrier needed
  for (int c = threadIdx.x; c < n; c += blockDim.x) out[(size_t)t * n + c] = from_f32<T>(smem_row[c]);
}

// x = LayerNorm(word[ids] (+ pos) (+ type0)): fp32 to out32, compute-type copy to outc (if not
// null). Launch: grid (tokens), block 32..1024, dynamic smem n * 4 bytes.
template <typename T>
static __device__ void embed_gather_ln_impl(const uint32_t* ids, const int* pos, int tokens,
                                            int n, const T* word, const T* pos_emb,
                                            const T* type0, const float* w, const float* b,
                                            float eps, float* out32, T* outc) {
  extern __shared__ float smem_row[];
  __shared__ float scratch[32];
  const int t = blockIdx.x;
  if (t >= tokens) return;
  gather_row<T>(ids, pos, t, n, word, pos_emb, type0, smem_row);
  __syncthreads();
  const size_t base = (size_t)t * n;
  float s = 0.0f;
  for (int c = threadIdx.x; c < n; c += blockDim.x) s += smem_row[c];
  const float mean = block_sum(s, scratch) / (float)n;
  float q = 0.0f;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    const float d = smem_row[c] - mean;
    q += d * d;
  }
  const float inv = rsqrtf(block_sum(q, scratch) / (float)n + eps);
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    const float y = (smem_row[c] - mean) * inv * w[c] + b[c];
    out32[base + c] = y;
    if (outc) outc[base + c] = from_f32<T>(y);
  }
}

// Entry points, each name written out in full (build.rs lists them for launch.rs: names).
#define EMBED_GATHER_ENTRY(NAME, T)                                                           \
  extern "C" __global__ void NAME(const uint32_t* ids, const int* pos, int tokens, int n,     \
                                  const T* word, const T* pos_emb, const T* type0, T* out) {  \
    embed_gather_impl<T>(ids, pos, tokens, n, word, pos_emb, type0, out);                     \
  }
#define EMBED_GATHER_LN_ENTRY(NAME, T)                                                        \
  extern "C" __global__ void NAME(const uint32_t* ids, const int* pos, int tokens, int n,     \
                                  const T* word, const T* pos_emb, const T* type0,            \
                                  const float* w, const float* b, float eps, float* out32,    \
                                  T* outc) {                                                  \
    embed_gather_ln_impl<T>(ids, pos, tokens, n, word, pos_emb, type0, w, b, eps, out32,      \
                            outc);                                                            \
  }
EMBED_GATHER_ENTRY(embed_gather_f32, float)
EMBED_GATHER_ENTRY(embed_gather_f16, f16)
EMBED_GATHER_ENTRY(embed_gather_bf16, bf16)
EMBED_GATHER_LN_ENTRY(embed_gather_ln_f32, float)
EMBED_GATHER_LN_ENTRY(embed_gather_ln_f16, f16)
EMBED_GATHER_LN_ENTRY(embed_gather_ln_bf16, bf16)
