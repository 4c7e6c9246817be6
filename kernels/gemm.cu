// nn.Linear GEMMs: C[M, N] = A[M, K] . W[N, K]^T (torch layout, both K-contiguous) with a fused
// epilogue. Two families:
//
// * gemm_<in>_<out>[_k8]: tensor cores through mma.sync.m16n8k16 (fp16 or bf16 inputs, fp32
//   accumulation), 64x64x32 block tile, 4 warps of 32x32, 3-stage shared-memory ring,
//   ldmatrix fragment loads. The `_k8` variants need K % 8 == 0 and 16-byte aligned A/W (the
//   host checks) and stream tiles with cp.async (16 bytes per copy, zero-fill past M/N/K); the
//   plain variants load element by element with bounds checks and handle any K.
// * gemm_simt_f32: the exact fp32 path (plain FMA, 64x64x16 tile, 4x4 outputs per thread).
//
// Epilogue `epi`: 0 = none, 1 = + bias[n], 2 = gelu_erf(. + bias[n]), 3 = . + bias[n] +
// residual[m, n] (fp32, row stride N). bias is fp32. Output type Tout is float or the input
// type.
#include "common.cuh"
#include "mma.cuh"

#define EPI_NONE 0
#define EPI_BIAS 1
#define EPI_BIAS_GELU 2
#define EPI_BIAS_RESIDUAL 3

static __device__ __forceinline__ float apply_epi(float acc, int epi, const float* bias,
                                                  const float* residual, int m, int n, int N) {
  if (epi == EPI_NONE) return acc;
  float v = acc + bias[n];
  if (epi == EPI_BIAS_GELU) return gelu_erf(v);
  if (epi == EPI_BIAS_RESIDUAL) return v + residual[(size_t)m * N + n];
  return v;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core GEMM
// ---------------------------------------------------------------------------------------------
#define TC_BM 64
#define TC_BN 64
#define TC_BK 32
#define TC_PAD 8  // halves of padding per smem row: 80-byte rows, conflict-free ldmatrix
#define TC_LD (TC_BK + TC_PAD)
#define TC_STAGES 3
#define TC_THREADS 128


// Load rows [row0, row0 + 64) x k [k0, k0 + 32) of src ([rows, K], row-major) into a smem tile
// [64][TC_LD]; zeros outside the matrix. 256 chunks of 8 elements, 2 per thread.
template <typename T, bool K8>
static __device__ __forceinline__ void tc_load_tile(T* tile, const T* src, int rows, int K,
                                                    int row0, int k0) {
#pragma unroll
  for (int it = 0; it < 2; ++it) {
    const int c = threadIdx.x + it * TC_THREADS;
    const int r = c >> 2, kc = (c & 3) * 8;
    const int gr = row0 + r, gk = k0 + kc;
    T* dst = tile + r * TC_LD + kc;
    if (K8) {
      const bool ok = gr < rows && gk < K;  // K % 8 == 0: a chunk is all in or all out
      const T* p = ok ? src + (size_t)gr * K + gk : src;
      cp_async16(dst, p, ok ? 16 : 0);
    } else {
      const T zero = from_f32<T>(0.0f);
      __align__(16) T v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e)
        v[e] = (gr < rows && gk + e < K) ? src[(size_t)gr * K + gk + e] : zero;
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
    }
  }
}

template <typename T, typename Tout, bool K8>
static __device__ void gemm_tc_impl(const T* __restrict__ A, const T* __restrict__ W,
                                    const float* __restrict__ bias,
                                    const float* __restrict__ residual, Tout* __restrict__ C, int M,
                                    int N, int K, int epi) {
  __shared__ __align__(16) T As[TC_STAGES][TC_BM * TC_LD];
  __shared__ __align__(16) T Bs[TC_STAGES][TC_BN * TC_LD];

  const int bm = blockIdx.y * TC_BM, bn = blockIdx.x * TC_BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;  // warp tile origin inside the block

  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const int nk = (K + TC_BK - 1) / TC_BK;
#pragma unroll
  for (int s = 0; s < TC_STAGES - 1; ++s) {
    if (s < nk) {
      tc_load_tile<T, K8>(As[s], A, M, K, bm, s * TC_BK);
      tc_load_tile<T, K8>(Bs[s], W, N, K, bn, s * TC_BK);
    }
    cp_async_commit();
  }

  // ldmatrix lane addressing (see the PTX ISA fragment layouts for m16n8k16):
  // A x4: matrices (rows +0/+8) x (k +0/+8) -> a0..a3; lane l gives row (l & 7) + ((l >> 3) & 1) * 8,
  //       column ((l >> 4) & 1) * 8.
  // B x4 over two n8 tiles: matrices (n +0, k +0), (n +0, k +8), (n +8, k +0), (n +8, k +8)
  //       -> b0, b1 of tile 0, b0, b1 of tile 1; lane l gives n (l & 7) + ((l >> 4) & 1) * 8,
  //       k ((l >> 3) & 1) * 8.
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = ((lane >> 4) & 1) * 8;
  const int b_row = (lane & 7) + ((lane >> 4) & 1) * 8, b_col = ((lane >> 3) & 1) * 8;

  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<TC_STAGES - 2>();
    __syncthreads();  // stage kt visible to all; stage kt-1 fully consumed by all
    const int nxt = kt + TC_STAGES - 1;
    if (nxt < nk) {
      tc_load_tile<T, K8>(As[nxt % TC_STAGES], A, M, K, bm, nxt * TC_BK);
      tc_load_tile<T, K8>(Bs[nxt % TC_STAGES], W, N, K, bn, nxt * TC_BK);
    }
    cp_async_commit();

    const T* as = As[kt % TC_STAGES];
    const T* bs = Bs[kt % TC_STAGES];
#pragma unroll
    for (int kk = 0; kk < TC_BK; kk += 16) {
      uint32_t af[2][4], bfr[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        ldmatrix_x4(af[i], as + (wm + i * 16 + a_row) * TC_LD + kk + a_col);
#pragma unroll
      for (int j = 0; j < 2; ++j)
        ldmatrix_x4(bfr[j], bs + (wn + j * 16 + b_row) * TC_LD + kk + b_col);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          Mma<T>::run(acc[i][j], af[i], bfr[j >> 1][(j & 1) * 2], bfr[j >> 1][(j & 1) * 2 + 1]);
    }
  }
  cp_async_wait<0>();

  // C fragment: c0, c1 at (row g, cols 2t, 2t+1), c2, c3 at (row g+8, same cols).
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = bm + wm + i * 16 + g + h * 8;
        const int n = bn + wn + j * 8 + t4 * 2;
        if (m >= M) continue;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (n + e < N)
            C[(size_t)m * N + n + e] =
                from_f32<Tout>(apply_epi(acc[i][j][h * 2 + e], epi, bias, residual, m, n + e, N));
        }
      }
}

#define GEMM_TC_ENTRY(NAME, T, TOUT, K8)                                                      \
  extern "C" __global__ void __launch_bounds__(TC_THREADS)                                    \
      NAME(const T* A, const T* W, const float* bias, const float* residual, TOUT* C, int M,  \
           int N, int K, int epi) {                                                           \
    gemm_tc_impl<T, TOUT, K8>(A, W, bias, residual, C, M, N, K, epi);                         \
  }
GEMM_TC_ENTRY(gemm_f16_f16, f16, f16, false)
GEMM_TC_ENTRY(gemm_f16_f32, f16, float, false)
GEMM_TC_ENTRY(gemm_bf16_bf16, bf16, bf16, false)
GEMM_TC_ENTRY(gemm_bf16_f32, bf16, float, false)
GEMM_TC_ENTRY(gemm_f16_f16_k8, f16, f16, true)
GEMM_TC_ENTRY(gemm_f16_f32_k8, f16, float, true)
GEMM_TC_ENTRY(gemm_bf16_bf16_k8, bf16, bf16, true)
GEMM_TC_ENTRY(gemm_bf16_f32_k8, bf16, float, true)

// ---------------------------------------------------------------------------------------------
// fp32 SIMT GEMM (the exact validation path)
// ---------------------------------------------------------------------------------------------
#define SG_BM 64
#define SG_BN 64
#define SG_BK 16
#define SG_THREADS 256

// Thread (tx, ty) of a 16x16 block computes rows bm + ty + 16 i, columns bn + tx + 16 j
// (i, j < 4): strided so that the output stores are coalesced across tx and the smem reads
// are conflict-free.
extern "C" __global__ void __launch_bounds__(SG_THREADS)
    gemm_simt_f32(const float* __restrict__ A, const float* __restrict__ W,
                  const float* __restrict__ bias, const float* __restrict__ residual,
                  float* __restrict__ C, int M, int N, int K, int epi) {
  __shared__ float As[SG_BK][SG_BM + 1];
  __shared__ float Ws[SG_BK][SG_BN + 1];
  const int bm = blockIdx.y * SG_BM, bn = blockIdx.x * SG_BN;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < K; k0 += SG_BK) {
    // 64 rows x 16 k per operand = 1024 values, 4 per thread; k fastest (coalesced reads).
#pragma unroll
    for (int it = 0; it < 4; ++it) {
      const int idx = threadIdx.x + it * SG_THREADS;
      const int r = idx >> 4, k = idx & 15;
      const int gk = k0 + k;
      As[k][r] = (bm + r < M && gk < K) ? A[(size_t)(bm + r) * K + gk] : 0.0f;
      Ws[k][r] = (bn + r < N && gk < K) ? W[(size_t)(bn + r) * K + gk] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < SG_BK; ++k) {
      float a[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = Ws[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = bm + ty + 16 * i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = bn + tx + 16 * j;
      if (n < N) C[(size_t)m * N + n] = apply_epi(acc[i][j], epi, bias, residual, m, n, N);
    }
  }
}
