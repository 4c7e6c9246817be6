// Every constant that both the kernels and the host need: tile sizes, threads per block,
// shared-memory strides and the codes passed as kernel arguments. The one place they are
// written: the kernels include this file, build.rs reads it and generates the Rust constants
// that src/backend/cuda/launch.rs includes, and kernels/emu/check.cpp launches with them.
//
// Format (build.rs parses it): one `#define NAME value` per line, value an integer or an
// expression of + - * / and parentheses over integers and names defined above it; a comment
// may follow on the line. No other preprocessor lines but the include guard. A kernel file
// must not #define any of these names again (build.rs fails the build if one does).
#pragma once

// ---- GEMM epilogue codes (`epi` argument of every gemm_* kernel) ----------------------------
#define EPI_NONE 0
#define EPI_BIAS 1
#define EPI_BIAS_GELU 2
#define EPI_BIAS_RESIDUAL 3

// ---- tensor-core GEMM (kernels/gemm.cu), 64 x 64 tiles --------------------------------------
#define TC_BM 64
#define TC_BN 64
#define TC_BK 32
#define TC_PAD 8  // halves of padding per smem row: 80-byte rows, conflict-free ldmatrix
#define TC_LD (TC_BK + TC_PAD)
#define TC_STAGES 3
#define TC_WARPS_M 2
#define TC_WARPS_N 2
#define TC_THREADS (32 * TC_WARPS_M * TC_WARPS_N)

// ---- tensor-core GEMM, the opt-in 128 x 128 tiles (gemm_*_k8_128), dynamic shared memory ----
#define TC_BIG 128
#define TC_BIG_STAGES 4
#define TC_BIG_WARPS_M 2
#define TC_BIG_WARPS_N 4
#define TC_BIG_THREADS (32 * TC_BIG_WARPS_M * TC_BIG_WARPS_N)

// ---- fp32 SIMT GEMM (gemm_simt_f32) ----------------------------------------------------------
#define SG_BM 64
#define SG_BN 64
#define SG_BK 16
#define SG_THREADS 256

// ---- attention version 1 (kernels/attention.cu) ---------------------------------------------
#define ATT_BQ 16
#define ATT_BKV 32
#define ATT_WARPS 4
#define ATT_THREADS (32 * ATT_WARPS)
#define ATT_RPW (ATT_BQ / ATT_WARPS)   // query rows per warp
#define ATT_NB (ATT_BQ + ATT_BKV - 1)  // band rows of PK / PQ staged per (query, key) tile pair

// ---- attention version 2, tensor cores (kernels/attention_tc.cu) ----------------------------
#define A2_D 64
#define A2_BQ 64
#define A2_BKV 64
#define A2_NB 128  // band rows staged per key tile (A2_BQ + A2_BKV - 1 = 127 used)
#define A2_LDH 72  // smem row stride of the T operands, in elements
#define A2_LDC 84  // row stride of the per-warp c2p scratch [16][80] (fp32)
#define A2_LDP 132 // row stride of the p2c scratch [64][128] (fp32)
#define A2_WARPS 4
#define A2_THREADS (32 * A2_WARPS)

// ---- pooling (kernels/pooling.cu): mode codes, 4 bits each in the `modes` argument ----------
#define POOL_CLS 0
#define POOL_MAX 1
#define POOL_MEAN 2
#define POOL_MEAN_SQRT 3
#define POOL_WEIGHTED 4
#define POOL_LAST 5
#define POOL_MAX_MODES 8  // modes that fit the 32-bit code

// ---- conv block (kernels/conv.cu): activation codes ------------------------------------------
#define ACT_GELU 0
#define ACT_TANH 1
#define ACT_RELU 2

// ---- threads per block of the column-per-thread kernels (pool, conv1d_act) -------------------
#define COL_THREADS 128

// ---- the tensor-core probe (kernels/peak.cu) ---------------------------------------------------
#define PEAK_THREADS 128
#define PEAK_MMA_CHAINS 8  // independent mma.sync chains per warp
