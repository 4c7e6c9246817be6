//! Compute backends. The CPU backend is always compiled; CUDA sits behind the `cuda` feature.
//!
//! Both implement `Backend`: pooled rows of one batch of sequences, and one sequence's
//! hidden states. What lies above a batch (validation, sorting by length, the token budget,
//! rows back in input order) is written once, in `run_batches`; what lies below it (weights
//! laid out for the device from the shared preparation in `model.rs`, the forward, pooling)
//! is each backend's own.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::config::PoolingMode;
use crate::Result;

/// A device's forward, one batch at a time.
pub(crate) trait Backend {
    /// The buffers a forward reuses (allocated once, grown for larger batches); the caller
    /// holds it for a whole encode.
    type State;

    /// The pooled rows of `seqs` (pooling `modes`, each sequence leaving out its first
    /// `skip[b]` tokens; `skip` empty: none), `[seqs.len(), dim]` into `out`, in batch order.
    fn encode_batch(
        &self,
        st: &mut Self::State,
        seqs: &[&[u32]],
        modes: &[PoolingMode],
        skip: &[usize],
        out: &mut [f32],
    ) -> Result<()>;

    /// Every layer's output for one sequence (index 0 = the embedding output), `[n, H]` each.
    fn hidden_states(&self, st: &mut Self::State, ids: &[u32]) -> Result<Vec<Vec<f32>>>;
}

/// Pooled rows (`dim` values each) of every sequence of `ids`, in input order: sorted by
/// length into batches of at most `batch_size` sequences and `max_tokens` tokens
/// ([`crate::batches_by_length`]), each run by the backend; `skip` (empty, or one per
/// sequence) leaves tokens out of pooling.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_batches<B: Backend>(
    backend: &B,
    st: &mut B::State,
    ids: &[Vec<u32>],
    skip: &[usize],
    modes: &[PoolingMode],
    dim: usize,
    batch_size: usize,
    max_tokens: usize,
) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; ids.len() * dim];
    let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
    let (mut seqs, mut skips, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in crate::batches_by_length(&lens, batch_size, max_tokens) {
        seqs.clear();
        seqs.extend(chunk.iter().map(|&i| ids[i].as_slice()));
        skips.clear();
        if !skip.is_empty() {
            skips.extend(chunk.iter().map(|&i| skip[i]));
        }
        rows.clear();
        rows.resize(chunk.len() * dim, 0.0);
        backend.encode_batch(st, &seqs, modes, &skips, &mut rows)?;
        for (row, &i) in rows.chunks_exact(dim.max(1)).zip(&chunk) {
            out[i * dim..(i + 1) * dim].copy_from_slice(row);
        }
    }
    Ok(out)
}
