//! CUDA backend (feature `cuda`). PLACEHOLDER interface: the kernels and launchers land here.

use crate::config::{ModelConfig, PoolingMode};
use crate::error::{Error, Result};
use crate::model::HostWeights;
use crate::Precision;

/// The model resident on one GPU.
pub struct CudaModel {}

impl CudaModel {
    /// Upload weights (fp16/bf16 copies plus fp32 where needed), compute PK/PQ and the index
    /// table, allocate persistent buffers for up to `max_len` tokens per sequence.
    pub fn new(
        _cfg: &ModelConfig,
        _w: &HostWeights,
        _max_len: usize,
        _ordinal: usize,
        _precision: Precision,
    ) -> Result<Self> {
        Err(Error::Device("CUDA backend not implemented yet".into()))
    }

    /// Pooled (not normalized) embeddings of `ids`, rows in input order.
    pub fn encode_batches(
        &self,
        _ids: &[Vec<u32>],
        _batch_size: usize,
        _modes: &[PoolingMode],
    ) -> Result<Vec<f32>> {
        Err(Error::Device("CUDA backend not implemented yet".into()))
    }

    /// Every layer's output for one sequence (index 0 = embedding output), [n, H] each.
    pub fn hidden_states(&self, _ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        Err(Error::Device("CUDA backend not implemented yet".into()))
    }
}
