//! The batching queue and its worker: handlers queue each request's token ids as a [`Job`]
//! ([`embed_ids`]); one thread takes whole requests off the queue up to the token budget, runs
//! one forward over all their sequences, and answers each request with its own rows.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use axum::http::StatusCode;
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use super::routes::{ApiError, RequestStats};
use super::Shared;
use crate::{pooling, Embedder};

/// One request's sequences on their way to the batcher.
pub(super) struct Job {
    ids: Vec<Vec<u32>>,
    tokens: usize,
    normalize: bool,
    /// Leading tokens of each sequence left out of pooling (a prompt with `include_prompt:
    /// false`; 0 otherwise).
    skip: usize,
    /// The request's rows (row-major, `ids.len() * dim`), or why the forward failed.
    /// (and the seconds the forward of its batch took)
    reply: oneshot::Sender<std::result::Result<(Vec<f32>, f64), String>>,
}

pub(super) fn run_batcher(
    embedder: &Embedder,
    metrics: &Metrics,
    mut rx: mpsc::Receiver<Job>,
    budget: usize,
) {
    let mut carried: Option<Job> = None;
    loop {
        let Some(first) = carried.take().or_else(|| rx.blocking_recv()) else {
            // every sender is gone and the queue is empty: shutdown
            return;
        };
        let mut tokens = first.tokens;
        let mut jobs = vec![first];
        while let Ok(job) = rx.try_recv() {
            if tokens + job.tokens > budget {
                carried = Some(job);
                break;
            }
            tokens += job.tokens;
            jobs.push(job);
        }
        // A client that went away no longer waits for its rows.
        jobs.retain(|j| !j.reply.is_closed());
        if !jobs.is_empty() {
            run_batch(embedder, metrics, jobs);
        }
    }
}

/// One forward over every sequence of `jobs`; each job gets its own rows back.
fn run_batch(embedder: &Embedder, metrics: &Metrics, mut jobs: Vec<Job>) {
    let dim = embedder.dim();
    let counts: Vec<usize> = jobs.iter().map(|j| j.ids.len()).collect();
    let tokens: usize = jobs.iter().map(|j| j.tokens).sum();
    let skip: Vec<usize> = jobs
        .iter()
        .flat_map(|j| std::iter::repeat_n(j.skip, j.ids.len()))
        .collect();
    let ids: Vec<Vec<u32>> = jobs
        .iter_mut()
        .flat_map(|j| std::mem::take(&mut j.ids))
        .collect();
    let t0 = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        embedder.encode_ids_pooled_skipping(&ids, &skip)
    }));
    let compute = t0.elapsed().as_secs_f64();
    let rows = match result {
        Ok(Ok(e)) => e.into_vec(),
        Ok(Err(e)) => return fail_all(jobs, &e.to_string()),
        Err(_) => return fail_all(jobs, "internal error: the forward panicked"),
    };
    metrics.record_batch(ids.len(), jobs.len(), tokens);
    let mut start = 0;
    for (job, n) in jobs.into_iter().zip(counts) {
        let mut mine = rows[start * dim..(start + n) * dim].to_vec();
        start += n;
        if job.normalize {
            mine.chunks_exact_mut(dim).for_each(pooling::l2_normalize);
        }
        // the client may have gone away meanwhile: nothing to do then
        let _ = job.reply.send(Ok((mine, compute)));
    }
}

fn fail_all(jobs: Vec<Job>, msg: &str) {
    for j in jobs {
        let _ = j.reply.send(Err(msg.to_string()));
    }
}

/// Queue `ids` for the batcher and wait for their rows (row-major, `ids.len() * dim`).
pub(super) async fn embed_ids(
    s: &Shared,
    ids: Vec<Vec<u32>>,
    normalize: bool,
    skip: usize,
) -> std::result::Result<(Vec<f32>, RequestStats), ApiError> {
    let mut stats = RequestStats::of(&ids);
    let (inputs, tokens) = (stats.inputs, stats.tokens);
    let sent = Instant::now();
    let (reply, rx) = oneshot::channel();
    let job = Job {
        ids,
        tokens,
        normalize,
        skip,
        reply,
    };
    s.queue.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the server is overloaded ({} requests queued); retry later",
                s.opts.max_queued_requests
            ),
        ),
        mpsc::error::TrySendError::Closed(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ),
    })?;
    match rx.await {
        Ok(Ok((rows, compute))) => {
            s.metrics.record_embedded(inputs, tokens);
            stats.compute_s = compute;
            stats.queue_s = (sent.elapsed().as_secs_f64() - compute).max(0.0);
            Ok((rows, stats))
        }
        Ok(Err(msg)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the batcher stopped before answering",
        )),
    }
}
