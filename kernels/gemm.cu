// nn.Linear GEMMs: C[M, N] = A[M, K] . W[N, K]^T (torch layout, both K-contiguous) with a fused
// epilogue. Two families:
//
// * gemm_<in>_<out>[_k8]: tensor cores through mma.sync.m16n8k16 (fp16 or bf16 inputs, fp32
//   accumulation), 64x64x32 block tile, 4 warps of 32x32, 3-stage shared-memory ring,
//   ldmatrix fragment loads. gemm_<in>_<out>_k8_128 (opt-in): 128x128x32, 8 warps of 64x32,
//   4 stages in dynamic shared memory. The `_k8` variants need K % 8 == 0 and 16-byte
//   aligned A/W (the host checks) and stream tiles with cp.async (16 bytes per copy, zero-fill
//   past M/N/K); the plain variants load element by element with bounds checks and handle any
//   K.
// * gemm_simt_f32: the exact fp32 path (plain FMA, 64x64x16 tile, 4x4 outputs per thread).
//
// Epilogue `epi`: 0 = none, 1 = + bias[n], 2 = gelu_erf(. + bias[n]), 3 = . + bias[n] +
// residual[m, n] (fp32, row stride N). bias is fp32. Output type Tout is float or the input
// type.
#include "common.cuh"
#include "mma.cuh"

// EPI_*, TC_*, SG_*: kernels/constants.cuh

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

// Load rows [row0, row0 + ROWS) x k [k0, k0 + 32) of src ([rows, K], row-major) into a smem
// tile [ROWS][TC_LD]; zeros outside the matrix. ROWS * 4 chunks of 8 elements over THREADS.
template <typename T, bool K8, int ROWS, int THREADS>
static __device__ __forceinline__ void tc_load_tile(T* tile, const T* src, int rows, int K,
                                                    int row0, int k0) {
  static_assert(ROWS * 4 % THREADS == 0, "whole chunks per thread");
#pragma unroll
  for (int it = 0; it < ROWS * 4 / THREADS; ++it) {
    const int c = threadIdx.x + it * THREADS;
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

// One tensor-core GEMM block: a BM x BN tile of C, WARPS_M x WARPS_N warps (each a
// BM / WARPS_M x BN / WARPS_N tile of 16 x 8 mma tiles), STAGES k-tiles of 32 in flight. DYN: the
// ring lives in dynamic shared memory (`gemm_smem`, sized by the host: gemm_tc_big_smem_bytes in
// launch.rs), needed above the 48 KB of static shared memory.
template <typename T, typename Tout, bool K8, int BM, int BN, int WARPS_M, int WARPS_N,
          int STAGES, bool DYN>
static __device__ void gemm_tc_impl(const T* __restrict__ A, const T* __restrict__ W,
                                    const float* __restrict__ bias,
                                    const float* __restrict__ residual, Tout* __restrict__ C, int M,
                                    int N, int K, int epi) {
  constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
  constexpr int MI = WTM / 16, NJ = WTN / 8;             // mma tiles per warp
  static_assert(MI * 16 == WTM && NJ * 8 == WTN && NJ % 2 == 0, "warp tile of whole x4 loads");
  __shared__ __align__(16) T As_static[DYN ? 1 : STAGES * BM * TC_LD];
  __shared__ __align__(16) T Bs_static[DYN ? 1 : STAGES * BN * TC_LD];
  extern __shared__ __align__(16) unsigned char gemm_smem[];
  T* const As = DYN ? reinterpret_cast<T*>(gemm_smem) : As_static;  // [STAGES][BM][TC_LD]
  T* const Bs = DYN ? As + STAGES * BM * TC_LD : Bs_static;          // [STAGES][BN][TC_LD]

  const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = (warp / WARPS_N) * WTM, wn = (warp % WARPS_N) * WTN;  // warp tile origin

  float acc[MI][NJ][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const int nk = (K + TC_BK - 1) / TC_BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nk) {
      tc_load_tile<T, K8, BM, THREADS>(As + s * BM * TC_LD, A, M, K, bm, s * TC_BK);
      tc_load_tile<T, K8, BN, THREADS>(Bs + s * BN * TC_LD, W, N, K, bn, s * TC_BK);
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
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kt visible to all; stage kt-1 fully consumed by all
    const int nxt = kt + STAGES - 1;
    if (nxt < nk) {
      tc_load_tile<T, K8, BM, THREADS>(As + (nxt % STAGES) * BM * TC_LD, A, M, K, bm, nxt * TC_BK);
      tc_load_tile<T, K8, BN, THREADS>(Bs + (nxt % STAGES) * BN * TC_LD, W, N, K, bn, nxt * TC_BK);
    }
    cp_async_commit();

    const T* as = As + (kt % STAGES) * BM * TC_LD;
    const T* bs = Bs + (kt % STAGES) * BN * TC_LD;
#pragma unroll
    for (int kk = 0; kk < TC_BK; kk += 16) {
      uint32_t af[MI][4], bfr[NJ / 2][4];
#pragma unroll
      for (int i = 0; i < MI; ++i)
        ldmatrix_x4(af[i], as + (wm + i * 16 + a_row) * TC_LD + kk + a_col);
#pragma unroll
      for (int j = 0; j < NJ / 2; ++j)
        ldmatrix_x4(bfr[j], bs + (wn + j * 16 + b_row) * TC_LD + kk + b_col);
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j)
          Mma<T>::run(acc[i][j], af[i], bfr[j >> 1][(j & 1) * 2], bfr[j >> 1][(j & 1) * 2 + 1]);
    }
  }
  cp_async_wait<0>();

  // C fragment: c0, c1 at (row g, cols 2t, 2t+1), c2, c3 at (row g+8, same cols).
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
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
    gemm_tc_impl<T, TOUT, K8, TC_BM, TC_BN, TC_WARPS_M, TC_WARPS_N, TC_STAGES, false>(      \
        A, W, bias, residual, C, M, N, K, epi);                                               \
  }
GEMM_TC_ENTRY(gemm_f16_f16, f16, f16, false)
GEMM_TC_ENTRY(gemm_f16_f32, f16, float, false)
GEMM_TC_ENTRY(gemm_bf16_bf16, bf16, bf16, false)
GEMM_TC_ENTRY(gemm_bf16_f32, bf16, float, false)
GEMM_TC_ENTRY(gemm_f16_f16_k8, f16, f16, true)
GEMM_TC_ENTRY(gemm_f16_f32_k8, f16, float, true)
GEMM_TC_ENTRY(gemm_bf16_bf16_k8, bf16, bf16, true)
GEMM_TC_ENTRY(gemm_bf16_f32_k8, bf16, float, true)

// 128 x 128 tiles, 8 warps of 64 x 32, 4 stages (80 KB of dynamic shared memory), cp.async
// only (K % 8 == 0): opt-in (`--kernel gemm=128`), not yet measured.
#define GEMM_TC_BIG_ENTRY(NAME, T, TOUT)                                                      \
  extern "C" __global__ void __launch_bounds__(TC_BIG_THREADS)                                \
      NAME(const T* A, const T* W, const float* bias, const float* residual, TOUT* C, int M,  \
           int N, int K, int epi) {                                                           \
    gemm_tc_impl<T, TOUT, true, TC_BIG, TC_BIG, TC_BIG_WARPS_M, TC_BIG_WARPS_N, TC_BIG_STAGES, \
                 true>(A, W, bias, residual, C, M, N, K, epi);                                \
  }
GEMM_TC_BIG_ENTRY(gemm_f16_f16_k8_128, f16, f16)
GEMM_TC_BIG_ENTRY(gemm_f16_f32_k8_128, f16, float)
GEMM_TC_BIG_ENTRY(gemm_bf16_bf16_k8_128, bf16, bf16)
GEMM_TC_BIG_ENTRY(gemm_bf16_f32_k8_128, bf16, float)

// ---------------------------------------------------------------------------------------------
// fp32 SIMT GEMM (the exact validation path)
// ---------------------------------------------------------------------------------------------
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
