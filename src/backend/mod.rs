//! Compute backends. The CPU backend is always compiled; CUDA sits behind the `cuda` feature.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
