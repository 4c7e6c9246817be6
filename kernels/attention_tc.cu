// Disentangled self-attention, version 2: tensor cores (mma.sync m16n8k16, fp16 / bf16 inputs,
// fp32 accumulation), flash style (online softmax), head dim 64. Same contract and math as
// version 1 (kernels/attention.cu), which stays the exact fp32 path and the fallback for other
// head dims.
//
// One block of 4 warps per (64-query tile of one sequence, head); warp w owns query rows
// 16w .. 16w+15 of the tile. Per 64-key tile:
//   * K, V and the band of PK / PQ rows the tile pair touches (relative offsets
//     q0 - j0 - 63 .. q0 - j0 + 63: 127 rows, row bb <-> offset q0 - j0 - 63 + bb) are staged in
//     shared memory as T (rows padded to 72 halves: conflict-free ldmatrix);
//   * c2p: each warp multiplies its 16 queries by the 80 band rows its offsets reach
//     (bb = 16w .. 16w+79) into a per-warp fp32 scratch C[16][80];
//   * p2c: warp w multiplies keys 16w .. 16w+15 by all 128 band rows into P[64][128] (fp32,
//     shared by the block);
//   * S = Q K^T on tensor cores, then s(i,j) += C[i][i - j + 63 - 16w] + P[j][i - j + 63]
//     (the gathers), scale, mask keys past the sequence, online softmax in fp32, and
//     O += softmax(S) V with the probabilities rounded to T (the FlashAttention-2 layout: the
//     S accumulators are reused as the A operand of the PV product).
//
// Pipelined variant (attention_tc_async_*, PIPE = true; opt-in, not yet measured): K and V in
// two buffers, every operand staged with cp.async. Tile j+1's K / V copies are issued at the
// top of iteration j (into the buffers iteration j-1 read) and its PK / PQ band right after the
// c2p / p2c products consumed tile j's band, so both loads overlap tile j's tensor-core work;
// one wait + barrier at the end of the iteration replaces the two barriers around the loads.
// 135 KB of shared memory instead of 117 KB.
//
// Tiles: the 16-row tile list of version 1 (launch.rs::attention_tiles), which puts the tiles
// that start a 64-row group first; the host launches only those (attention_tc_tiles), so every
// block has work. A block given any other tile returns at once (a guard, not the plan).
#include "common.cuh"
#include "mma.cuh"

// A2_* (head dim, tile sizes, shared-memory strides, threads): kernels/constants.cuh

template <typename T> struct Pack2;
template <> struct Pack2<f16> {
  static __device__ __forceinline__ uint32_t run(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <> struct Pack2<bf16> {
  static __device__ __forceinline__ uint32_t run(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// rows [0, rows) of a [rows][64] T operand into smem (row stride A2_LDH), 16 bytes per copy;
// row r comes from src + off(r) (an element offset), or is zero when off(r) < 0. ASYNC: with
// cp.async (zero-fill), landing at the caller's cp.async wait; otherwise plain loads / stores.
template <bool ASYNC, typename T, typename Off>
static __device__ __forceinline__ void a2_stage(T* dst, const T* __restrict__ src, int rows,
                                                Off off) {
  for (int e = threadIdx.x; e < rows * (A2_D / 8); e += A2_THREADS) {
    const int r = e >> 3, c = (e & 7) * 8;
    const long long o = off(r);
    if (ASYNC) {
      cp_async16(dst + r * A2_LDH + c, o >= 0 ? src + o + c : src, o >= 0 ? 16 : 0);
    } else {
      uint4 v = make_uint4(0, 0, 0, 0);
      if (o >= 0) v = *reinterpret_cast<const uint4*>(src + o + c);
      *reinterpret_cast<uint4*>(dst + r * A2_LDH + c) = v;
    }
  }
}

template <typename T, bool PIPE>
static __device__ void attention_tc_impl(const T* __restrict__ qkv, const T* __restrict__ pk,
                                         const T* __restrict__ pq,
                                         const uint32_t* __restrict__ relidx, int max_len,
                                         const int4* __restrict__ tiles, int heads, float scale,
                                         int c2p, int p2c, T* __restrict__ ctx) {
  const int4 tile = tiles[blockIdx.x];
  if (tile.z % A2_BQ != 0) return;  // covered by the block of the tile starting its 64 rows
  extern __shared__ __align__(16) unsigned char a2_smem[];
  constexpr int NBUF = PIPE ? 2 : 1;      // K / V buffers
  T* Qs = reinterpret_cast<T*>(a2_smem);  // [64][LDH]
  T* Ks = Qs + A2_BQ * A2_LDH;             // [NBUF][64][LDH]
  T* Vs = Ks + NBUF * A2_BKV * A2_LDH;     // [NBUF][64][LDH]
  T* PKs = Vs + NBUF * A2_BKV * A2_LDH;    // [128][LDH]
  T* PQs = PKs + A2_NB * A2_LDH;           // [128][LDH]
  float* Cs = reinterpret_cast<float*>(PQs + A2_NB * A2_LDH);  // [A2_WARPS][16][LDC]
  float* Ps = Cs + A2_WARPS * 16 * A2_LDC;                     // [A2_BKV][LDP]

  const int start = tile.x, len = tile.y, q0 = tile.z;
  const int head = blockIdx.y;
  const int H = heads * A2_D;
  const long long ld = 3LL * H;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  float* Cw = Cs + warp * 16 * A2_LDC;

  // row offsets of the key tile at j0, and of its PK / PQ band (relative offsets
  // q0 - j0 - 63 + b, clamped to the table)
  auto kv_rows = [=](int j0) {
    return [=](int r) -> long long {
      return j0 + r < len ? (start + j0 + r) * ld + head * A2_D : -1;
    };
  };
  auto band_rows = [=](int j0) {
    const int rmin = q0 - j0 - (A2_BKV - 1);
    return [=](int b) -> long long {
      const int rel = max(-(max_len - 1), min(max_len - 1, rmin + b));
      return (long long)relidx[rel + max_len - 1] * H + head * A2_D;
    };
  };

  a2_stage<PIPE>(Qs, qkv, A2_BQ, [&](int r) -> long long {
    return q0 + r < len ? (start + q0 + r) * ld + head * A2_D : -1;
  });
  if (PIPE) {  // key tile 0 and its band with Q, in one group
    a2_stage<true>(Ks, qkv + H, A2_BKV, kv_rows(0));
    a2_stage<true>(Vs, qkv + 2 * H, A2_BKV, kv_rows(0));
    if (c2p) a2_stage<true>(PKs, pk, A2_NB, band_rows(0));
    if (p2c) a2_stage<true>(PQs, pq, A2_NB, band_rows(0));
    cp_async_commit();
    cp_async_wait<0>();
  }
  __syncthreads();
  // Q fragments of this warp's 16 rows (A operand), 4 k-steps of 16
  uint32_t qf[4][4];
#pragma unroll
  for (int ks = 0; ks < 4; ++ks)
    ldmatrix_x4(qf[ks], Qs + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * A2_LDH + ks * 16 +
                            8 * (lane >> 4));

  float o[8][4];
#pragma unroll
  for (int x = 0; x < 8; ++x) o[x][0] = o[x][1] = o[x][2] = o[x][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const float sl2 = scale * 1.4426950408889634f;  // softmax in base 2

  for (int j0 = 0, it = 0; j0 < len; j0 += A2_BKV, ++it) {
    // this tile's K / V buffers (PIPE: alternating; tile 0 in buffer 0)
    const T* Kb = Ks + (it % NBUF) * A2_BKV * A2_LDH;
    const T* Vb = Vs + (it % NBUF) * A2_BKV * A2_LDH;
    if (PIPE) {
      // the next tile's K / V into the other buffers, which the previous iteration read
      // (every warp passed the barrier that ended it)
      if (j0 + A2_BKV < len) {
        T* Kn = Ks + ((it + 1) % NBUF) * A2_BKV * A2_LDH;
        T* Vn = Vs + ((it + 1) % NBUF) * A2_BKV * A2_LDH;
        a2_stage<true>(Kn, qkv + H, A2_BKV, kv_rows(j0 + A2_BKV));
        a2_stage<true>(Vn, qkv + 2 * H, A2_BKV, kv_rows(j0 + A2_BKV));
      }
      cp_async_commit();
    } else {
      __syncthreads();  // the previous key tile's operands are consumed
      a2_stage<false>(Ks, qkv + H, A2_BKV, kv_rows(j0));
      a2_stage<false>(Vs, qkv + 2 * H, A2_BKV, kv_rows(j0));
      if (c2p) a2_stage<false>(PKs, pk, A2_NB, band_rows(j0));
      if (p2c) a2_stage<false>(PQs, pq, A2_NB, band_rows(j0));
      __syncthreads();
    }

    if (c2p) {  // C[16][80] = Q_w . PKband[16w .. 16w+79]^T
#pragma unroll
      for (int nt2 = 0; nt2 < 5; ++nt2) {
        float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          uint32_t b[4];
          ldmatrix_x4(b, PKs + (16 * warp + nt2 * 16 + (lane & 7) + 8 * (lane >> 4)) * A2_LDH +
                             ks * 16 + 8 * ((lane >> 3) & 1));
          Mma<T>::run(acc[0], qf[ks], b[0], b[1]);
          Mma<T>::run(acc[1], qf[ks], b[2], b[3]);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int col = nt2 * 16 + h * 8 + 2 * t;
          Cw[g * A2_LDC + col] = acc[h][0];
          Cw[g * A2_LDC + col + 1] = acc[h][1];
          Cw[(g + 8) * A2_LDC + col] = acc[h][2];
          Cw[(g + 8) * A2_LDC + col + 1] = acc[h][3];
        }
      }
    }
    if (p2c) {  // P[16w .. 16w+15][128] = K_w . PQband^T
      uint32_t kf[4][4];
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        ldmatrix_x4(kf[ks], Kb + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * A2_LDH +
                                ks * 16 + 8 * (lane >> 4));
#pragma unroll
      for (int nt2 = 0; nt2 < 8; ++nt2) {
        float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          uint32_t b[4];
          ldmatrix_x4(b, PQs + (nt2 * 16 + (lane & 7) + 8 * (lane >> 4)) * A2_LDH + ks * 16 +
                             8 * ((lane >> 3) & 1));
          Mma<T>::run(acc[0], kf[ks], b[0], b[1]);
          Mma<T>::run(acc[1], kf[ks], b[2], b[3]);
        }
        float* prow = Ps + (warp * 16) * A2_LDP;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int col = nt2 * 16 + h * 8 + 2 * t;
          prow[g * A2_LDP + col] = acc[h][0];
          prow[g * A2_LDP + col + 1] = acc[h][1];
          prow[(g + 8) * A2_LDP + col] = acc[h][2];
          prow[(g + 8) * A2_LDP + col + 1] = acc[h][3];
        }
      }
    }
    __syncthreads();  // P (and C) written; this tile's band is consumed
    if (PIPE) {  // the next tile's band, while this tile's scores and P V run
      if (j0 + A2_BKV < len) {
        if (c2p) a2_stage<true>(PKs, pk, A2_NB, band_rows(j0 + A2_BKV));
        if (p2c) a2_stage<true>(PQs, pq, A2_NB, band_rows(j0 + A2_BKV));
      }
      cp_async_commit();
    }

    // S = Q K^T: 8 n-tiles of 8 keys
    float s[8][4];
#pragma unroll
    for (int x = 0; x < 8; ++x) s[x][0] = s[x][1] = s[x][2] = s[x][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
      for (int nt2 = 0; nt2 < 4; ++nt2) {
        uint32_t b[4];
        ldmatrix_x4(b, Kb + (nt2 * 16 + (lane & 7) + 8 * (lane >> 4)) * A2_LDH + ks * 16 +
                           8 * ((lane >> 3) & 1));
        Mma<T>::run(s[2 * nt2], qf[ks], b[0], b[1]);
        Mma<T>::run(s[2 * nt2 + 1], qf[ks], b[2], b[3]);
      }
    }
    // position terms, scale (base 2), mask keys past the sequence
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int rl = g + 8 * (e >> 1);         // row in the warp
        const int cl = nt * 8 + 2 * t + (e & 1);  // key in the tile
        float v = s[nt][e];
        if (c2p) v += Cw[rl * A2_LDC + (rl - cl + A2_BKV - 1)];
        if (p2c) v += Ps[cl * A2_LDP + (warp * 16 + rl - cl + A2_BKV - 1)];
        s[nt][e] = j0 + cl < len ? v * sl2 : -INFINITY;
      }
    }
    // online softmax: rows g (elements 0, 1) and g + 8 (elements 2, 3); a row's 64 keys are
    // spread over the 4 threads of a quad
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[r], mx);  // finite: key j0 < len is in every row
      const float corr = exp2f(m_run[r] - m_new);
      m_run[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const float p0 = exp2f(s[nt][2 * r] - m_new), p1 = exp2f(s[nt][2 * r + 1] - m_new);
        s[nt][2 * r] = p0;
        s[nt][2 * r + 1] = p1;
        sum += p0 + p1;
      }
      l_run[r] = l_run[r] * corr + sum;  // this thread's share; the quad is summed at the end
#pragma unroll
      for (int x = 0; x < 8; ++x) {
        o[x][2 * r] *= corr;
        o[x][2 * r + 1] *= corr;
      }
    }
    // O += P V: the S accumulators of n-tiles 2kk, 2kk+1 form the A operand of key step kk
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      a[0] = Pack2<T>::run(s[2 * kk][0], s[2 * kk][1]);
      a[1] = Pack2<T>::run(s[2 * kk][2], s[2 * kk][3]);
      a[2] = Pack2<T>::run(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = Pack2<T>::run(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dt2 = 0; dt2 < 4; ++dt2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, Vb + (kk * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * A2_LDH +
                                 dt2 * 16 + 8 * (lane >> 4));
        Mma<T>::run(o[2 * dt2], a, b[0], b[1]);
        Mma<T>::run(o[2 * dt2 + 1], a, b[2], b[3]);
      }
    }
    if (PIPE) {
      cp_async_wait<0>();  // the next tile's K / V and band have landed (this thread's copies)
      __syncthreads();     // ... everyone's, and this tile's C, P, K, V reads are done
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int i = q0 + warp * 16 + g + 8 * r;
    if (i >= len) continue;
    const float inv = 1.0f / l;
    T* out = ctx + (long long)(start + i) * H + head * A2_D;
#pragma unroll
    for (int x = 0; x < 8; ++x) {
      const uint32_t v = Pack2<T>::run(o[x][2 * r] * inv, o[x][2 * r + 1] * inv);
      *reinterpret_cast<uint32_t*>(out + x * 8 + 2 * t) = v;
    }
  }
}

// Same signature as version 1; `d` must be A2_D (the host only launches it then).
#define ATTENTION_TC_ENTRY(NAME, T, PIPE)                                                     \
  extern "C" __global__ void __launch_bounds__(A2_THREADS) NAME(                              \
      const T* qkv, const T* pk, const T* pq, const uint32_t* relidx, int max_len,            \
      const int4* tiles, int heads, int d, float scale, int c2p, int p2c, T* ctx) {           \
    if (d != A2_D) return;                                                                    \
    attention_tc_impl<T, PIPE>(qkv, pk, pq, relidx, max_len, tiles, heads, scale, c2p, p2c,   \
                               ctx);                                                          \
  }
ATTENTION_TC_ENTRY(attention_tc_f16, f16, false)
ATTENTION_TC_ENTRY(attention_tc_bf16, bf16, false)
ATTENTION_TC_ENTRY(attention_tc_async_f16, f16, true)
ATTENTION_TC_ENTRY(attention_tc_async_bf16, bf16, true)
