// Fused disentangled self-attention over packed sequences, flash style (online softmax), one
// block per (query tile of one sequence, head). For query i and key j of one sequence:
//
//   s(i,j) = scale * ( q_i.k_j  [+ q_i.PK[idx(i-j)]  (c2p)]  [+ k_j.PQ[idx(i-j)]  (p2c)] )
//
// where idx = relidx[i - j + max_len - 1] (RelPosTable::as_slice()) selects a row of the
// per-layer projected relative embeddings PK / PQ ([2S, H], heads side by side). Only the
// band of PK / PQ rows that a (query tile, key tile) pair touches is staged in shared memory
// (BQ + BKV - 1 rows); no [L, L] or [L, 2S] matrix exists anywhere.
//
// Version 1 is SIMT (fp32 FMA, not tensor cores): within a block, warp w owns query rows
// w*RPW .. w*RPW+RPW-1 of the tile; for each 32-key tile, lane l computes the score of key l,
// the warp reduces max / sum with shuffles, and lane l accumulates output dims l, l+32, ...
// (DPL = dims per lane, a template parameter: d <= 32 * DPL, any d).
//
// Tiles: `tiles` holds int4 {sequence start token, sequence length, first query row, 0} per
// block (built on the host, see launch.rs::attention_tiles). qkv: [T, 3H] (Q | K | V, heads
// side by side in each), ctx: [T, H]. Accumulation and softmax statistics in fp32.
#include "common.cuh"

// ATT_*: kernels/constants.cuh

template <typename T, int DPL>
static __device__ void attention_impl(const T* __restrict__ qkv, const T* __restrict__ pk,
                                      const T* __restrict__ pq, const uint32_t* __restrict__ relidx,
                                      int max_len, const int4* __restrict__ tiles, int heads,
                                      int d, float scale, int c2p, int p2c, T* __restrict__ ctx) {
  extern __shared__ float smem[];
  const int ds = d | 1;  // odd row stride: lanes reading different rows hit different banks
  float* Qs = smem;                  // [BQ][d]
  float* Ks = Qs + ATT_BQ * d;       // [BKV][ds]
  float* Vs = Ks + ATT_BKV * ds;     // [BKV][d]
  float* PKs = Vs + ATT_BKV * d;     // [NB][ds]
  float* PQs = PKs + ATT_NB * ds;    // [NB][ds]

  const int4 tile = tiles[blockIdx.x];
  const int start = tile.x, len = tile.y, q0 = tile.z;
  const int head = blockIdx.y;
  const int H = heads * d;
  const size_t ld = (size_t)3 * H;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  // Q tile (zeros past the sequence end)
  for (int e = threadIdx.x; e < ATT_BQ * d; e += blockDim.x) {
    const int r = e / d, c = e - r * d;
    const int i = q0 + r;
    Qs[e] = i < len ? to_f32<T>(qkv[(size_t)(start + i) * ld + head * d + c]) : 0.0f;
  }

  float m_run[ATT_RPW], l_run[ATT_RPW], o[ATT_RPW][DPL];
#pragma unroll
  for (int r = 0; r < ATT_RPW; ++r) {
    m_run[r] = -INFINITY;
    l_run[r] = 0.0f;
#pragma unroll
    for (int x = 0; x < DPL; ++x) o[r][x] = 0.0f;
  }

  for (int j0 = 0; j0 < len; j0 += ATT_BKV) {
    __syncthreads();  // the previous key tile is consumed (and Q is staged, first time)
    for (int e = threadIdx.x; e < ATT_BKV * d; e += blockDim.x) {
      const int r = e / d, c = e - r * d;
      const int j = j0 + r;
      float kv = 0.0f, vv = 0.0f;
      if (j < len) {
        const size_t row = (size_t)(start + j) * ld + head * d + c;
        kv = to_f32<T>(qkv[row + H]);
        vv = to_f32<T>(qkv[row + 2 * H]);
      }
      Ks[r * ds + c] = kv;
      Vs[r * d + c] = vv;
    }
    if (c2p || p2c) {
      // band row b <-> relative offset rel = q0 - j0 - (BKV - 1) + b; offsets only reached by
      // out-of-range (i, j) pairs are clamped (those rows are never used).
      const int rmin = q0 - j0 - (ATT_BKV - 1);
      for (int e = threadIdx.x; e < ATT_NB * d; e += blockDim.x) {
        const int b = e / d, c = e - b * d;
        int rel = rmin + b;
        rel = max(-(max_len - 1), min(max_len - 1, rel));
        const size_t src = (size_t)relidx[rel + max_len - 1] * H + head * d + c;
        if (c2p) PKs[b * ds + c] = to_f32<T>(pk[src]);
        if (p2c) PQs[b * ds + c] = to_f32<T>(pq[src]);
      }
    }
    __syncthreads();

    const int jl = lane;
    const bool kvalid = j0 + jl < len;
#pragma unroll
    for (int r = 0; r < ATT_RPW; ++r) {
      const int il = warp * ATT_RPW + r;
      if (q0 + il >= len) continue;  // warp-uniform
      float s = -INFINITY;
      if (kvalid) {
        const float* q = Qs + il * d;
        const float* k = Ks + jl * ds;
        const int b = il - jl + (ATT_BKV - 1);
        float acc = 0.0f;
        for (int c = 0; c < d; ++c) acc = fmaf(q[c], k[c], acc);
        if (c2p) {
          const float* prow = PKs + b * ds;
          float a2 = 0.0f;
          for (int c = 0; c < d; ++c) a2 = fmaf(q[c], prow[c], a2);
          acc += a2;
        }
        if (p2c) {
          const float* prow = PQs + b * ds;
          float a3 = 0.0f;
          for (int c = 0; c < d; ++c) a3 = fmaf(k[c], prow[c], a3);
          acc += a3;
        }
        s = acc * scale;
      }
      // key j0 < len always, so the tile max is finite
      const float m_new = fmaxf(m_run[r], warp_max(s));
      const float corr = expf(m_run[r] - m_new);  // exp(-inf) = 0 on the first tile
      const float p = kvalid ? expf(s - m_new) : 0.0f;
      l_run[r] = l_run[r] * corr + warp_sum(p);
      m_run[r] = m_new;
#pragma unroll
      for (int x = 0; x < DPL; ++x) o[r][x] *= corr;
      const int nk = min(ATT_BKV, len - j0);
      for (int jj = 0; jj < nk; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        const float* v = Vs + jj * d;
#pragma unroll
        for (int x = 0; x < DPL; ++x) {
          const int dd = lane + 32 * x;
          if (dd < d) o[r][x] = fmaf(pj, v[dd], o[r][x]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < ATT_RPW; ++r) {
    const int i = q0 + warp * ATT_RPW + r;
    if (i >= len) continue;
    const float inv = 1.0f / l_run[r];
    T* out = ctx + (size_t)(start + i) * H + head * d;
#pragma unroll
    for (int x = 0; x < DPL; ++x) {
      const int dd = lane + 32 * x;
      if (dd < d) out[dd] = from_f32<T>(o[r][x] * inv);
    }
  }
}

// One entry point per (compute type, DPL), each name written out in full so that a profiler row
// or a launch error names text that is in this file (build.rs lists the entry points for
// src/backend/cuda/launch.rs: names).
#define ATTENTION_ENTRY(NAME, T, DPL)                                                         \
  extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                   \
      NAME(const T* qkv, const T* pk, const T* pq, const uint32_t* relidx, int max_len,       \
           const int4* tiles, int heads, int d, float scale, int c2p, int p2c, T* ctx) {      \
    attention_impl<T, DPL>(qkv, pk, pq, relidx, max_len, tiles, heads, d, scale, c2p, p2c,    \
                           ctx);                                                              \
  }
ATTENTION_ENTRY(attention_f32_dpl1, float, 1)
ATTENTION_ENTRY(attention_f32_dpl2, float, 2)
ATTENTION_ENTRY(attention_f32_dpl4, float, 4)
ATTENTION_ENTRY(attention_f32_dpl8, float, 8)
ATTENTION_ENTRY(attention_f16_dpl1, f16, 1)
ATTENTION_ENTRY(attention_f16_dpl2, f16, 2)
ATTENTION_ENTRY(attention_f16_dpl4, f16, 4)
ATTENTION_ENTRY(attention_f16_dpl8, f16, 8)
ATTENTION_ENTRY(attention_bf16_dpl1, bf16, 1)
ATTENTION_ENTRY(attention_bf16_dpl2, bf16, 2)
ATTENTION_ENTRY(attention_bf16_dpl4, bf16, 4)
ATTENTION_ENTRY(attention_bf16_dpl8, bf16, 8)
