//! The CPU backend: GEMM, fused disentangled attention and the small element-wise ops, in fp32,
//! parallel over rayon.

pub mod attention;
pub mod gemm;
pub mod ops;
pub mod simd;
