//! The HTTP embedding server behind `deberta-embed serve`.
//!
//! Routes:
//!
//! * `POST /v1/embeddings`: OpenAI-compatible (`input`, `model`, `encoding_format`,
//!   `dimensions`); inputs longer than max_seq_length are truncated, as sentence-transformers
//!   truncates them.
//! * `POST /embed`: text-embeddings-inference-compatible (`inputs`, `normalize`, `truncate`);
//!   an over-long input is refused with 413 unless `truncate` is true.
//! * `POST /tokenize`: text-embeddings-inference-compatible (`inputs`, `add_special_tokens`):
//!   per input the tokens the model sees, each `{id, text, special, start, stop}` with
//!   character offsets into the input; `truncate: false` gives every token instead.
//! * `POST /rerank`, `POST /predict`: text-embeddings-inference-compatible, for a
//!   cross-encoder: a model loaded as [`crate::CrossEncoder`] (see `src/server/rerank.rs`); the
//!   embedding routes are refused for it, as these are for an embedding model.
//! * `GET /health`: 200 while the model is loaded and the batcher runs.
//! * `GET /metrics`: Prometheus text exposition.
//! * `GET /info`, `GET /v1/models`: what is served; `GET /openapi.json`: the OpenAPI document
//!   ([`openapi_json`]).
//!
//! The three POST routes take `prompt_name` / `prompt` (sentence-transformers' prompts; the
//! model's default prompt applies without them), prepended before tokenizing.
//!
//! Request handlers parse and validate the JSON, tokenize on tokio's blocking pool (so token
//! counts are known before anything is queued), and hand the ids to one batcher thread through
//! a bounded queue. The batcher takes whole requests off the queue until the next one would
//! exceed the token budget, runs one [`Embedder::encode_ids_pooled`] over all their sequences,
//! normalizes each request's rows as that request asked, and answers each request with exactly
//! its own rows. The CPU forward is batch-invariant to rounding, so a request's embeddings do
//! not depend on what it was batched with.
//!
//! Errors are JSON: `{"error": {"message", "type", "param", "code"}}` on `/v1/embeddings` (as
//! OpenAI) and `{"error", "error_type"}` on `/embed` (as text-embeddings-inference). Status
//! codes: 400 for a body that is not JSON and for a field of the right type with an unsupported
//! value (an empty input list, an unknown `encoding_format`, `dimensions` other than the
//! model's); 422 for a missing field or a field of the wrong JSON type; 413 for too large a
//! body, too many inputs, or (on `/embed` without `truncate`) too long an input; 429 when the
//! queue is full; 500 if the forward fails; 503 while shutting down.
//!
//! [`Server::new`] takes a loaded model and starts its batcher; [`serve`] runs it on a tokio
//! listener until a shutdown future completes:
//!
//! ```
//! use std::io::{Read, Write};
//! use deberta_embed::server::{serve, Server, ServerOptions};
//! use deberta_embed::{Device, Embedder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/st6_proj_cls_norm");
//! let want = Embedder::load(dir, Device::Cpu)?.encode(&["Hello world!"])?;
//! let server = Server::new(Embedder::load(dir, Device::Cpu)?, ServerOptions::default())?;
//! let rt = tokio::runtime::Runtime::new()?;
//! let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
//! let addr = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = rt.spawn(serve(listener, server, async {
//!     let _ = stopped.await;
//! }));
//!
//! // POST /embed, as text-embeddings-inference takes it (HTTP/1.0: the reply body is sent
//! // whole, not in chunks, and the connection closes after it)
//! let body = r#"{"inputs": ["Hello world!"]}"#;
//! let mut conn = std::net::TcpStream::connect(addr)?;
//! write!(conn, "POST /embed HTTP/1.0\r\nContent-Type: application/json\r\n")?;
//! write!(conn, "Content-Length: {}\r\n\r\n{body}", body.len())?;
//! let mut reply = String::new();
//! conn.read_to_string(&mut reply)?;
//! assert!(reply.starts_with("HTTP/1.0 200 OK"), "{reply}");
//! let (_, json) = reply.split_once("\r\n\r\n").expect("a body");
//! let rows: Vec<Vec<f32>> = serde_json::from_str(json)?;
//! assert!(rows[0].iter().zip(want.row(0)).all(|(a, b)| (a - b).abs() <= 1e-6));
//!
//! stop.send(()).ok(); // the requests in flight are answered, then `serve` returns
//! rt.block_on(running)??;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::{pooling, Embedder};

mod listen;
mod openapi;
mod rerank;

pub use listen::{connection_limit, default_max_connections};
pub use openapi::openapi_json;

/// Limits and names of a [`Server`]. The defaults are those of `deberta-embed serve`.
#[derive(Clone)]
pub struct ServerOptions {
    /// Reported as `model` by `/v1/embeddings` when a request names none (a request that names
    /// one gets its own string back).
    pub model_name: String,
    /// Token budget of one batch: the batcher takes queued requests until the next would take
    /// the batch past this many tokens (special tokens included). A request larger than the
    /// budget runs alone; the embedder splits its forward by its own
    /// [`EmbedderOptions::max_batch_tokens`](crate::EmbedderOptions::max_batch_tokens).
    pub max_batch_tokens: usize,
    /// Most inputs (texts) in one request; more is answered with 413.
    pub max_inputs: usize,
    /// Largest request body in bytes; a larger one is answered with 413.
    pub max_body_bytes: usize,
    /// Requests that may wait for the batcher; a request beyond that is answered with 429.
    pub max_queued_requests: usize,
    /// Tokens in flight: requests being tokenized, queued, embedded or answered hold their
    /// tokens, counted before tokenizing as `min(bytes + 2, max_seq_length)` per input
    /// (`bytes + 2` when not truncating); a request that would exceed this waits until enough
    /// finish. A request larger than the whole budget runs alone. This bounds the memory the
    /// requests in flight hold, whatever their mix.
    pub max_tokens_in_flight: usize,
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Time for a request head to arrive once its first byte has.
    pub header_timeout: std::time::Duration,
    /// Time for a request body to arrive once its head has (408 after that).
    pub body_timeout: std::time::Duration,
    /// Time a connection may wait for its next (or first) request before it is closed.
    pub idle_timeout: std::time::Duration,
    /// `/embed`'s `truncate` when a request does not send one (text-embeddings-inference's
    /// `--auto-truncate`): true truncates over-long inputs instead of answering 413.
    pub auto_truncate: bool,
    /// When set, every route but `/health` and `/metrics` needs `Authorization: Bearer <key>`
    /// (401 otherwise).
    pub api_key: Option<String>,
    /// The model's revision, if known (the hub commit of a model loaded by id), for `/info`.
    pub revision: Option<String>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("model_name", &self.model_name)
            .field("max_batch_tokens", &self.max_batch_tokens)
            .field("max_inputs", &self.max_inputs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_queued_requests", &self.max_queued_requests)
            .field("max_tokens_in_flight", &self.max_tokens_in_flight)
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("auto_truncate", &self.auto_truncate)
            // never the key itself
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("revision", &self.revision)
            .finish()
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            model_name: "deberta-embed".into(),
            max_batch_tokens: 16384,
            max_inputs: 2048,
            max_body_bytes: 2 * 1024 * 1024,
            max_queued_requests: 512,
            max_tokens_in_flight: 1 << 18,
            max_connections: default_max_connections(),
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::from_secs(60),
            auto_truncate: false,
            api_key: None,
            revision: None,
        }
    }
}

/// A loaded model with its batcher thread running, ready to [`serve`].
pub struct Server {
    shared: Arc<Shared>,
    batcher: std::thread::JoinHandle<()>,
}

/// What every request handler sees.
struct Shared {
    embedder: Arc<Embedder>,
    opts: ServerOptions,
    queue: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    /// [`ServerOptions::max_tokens_in_flight`] permits.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// One request's sequences on their way to the batcher.
struct Job {
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

// Handlers tokenize on other threads while the batcher runs the forward: the embedder is shared.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Embedder>();
};

impl Server {
    /// Start the batcher thread for `embedder` (which keeps its own worker pool for the
    /// forward). Fails if a limit in `opts` is zero.
    pub fn new(embedder: Embedder, opts: ServerOptions) -> Result<Server> {
        for (name, v) in [
            ("max_batch_tokens", opts.max_batch_tokens),
            ("max_inputs", opts.max_inputs),
            ("max_body_bytes", opts.max_body_bytes),
            ("max_queued_requests", opts.max_queued_requests),
            ("max_tokens_in_flight", opts.max_tokens_in_flight),
            ("max_connections", opts.max_connections),
        ] {
            if v == 0 {
                return Err(Error::Input(format!("{name} must be at least 1")));
            }
        }
        if let Some(limit) = connection_limit().filter(|&l| opts.max_connections > l) {
            return Err(Error::Input(format!(
                "max_connections = {} does not fit the open-file limit (`ulimit -n` leaves room for {limit}); raise the limit or lower max_connections",
                opts.max_connections
            )));
        }
        if opts.max_tokens_in_flight > u32::MAX as usize {
            return Err(Error::Input("max_tokens_in_flight is too large".into()));
        }
        if opts.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(Error::Input("api_key must not be empty".into()));
        }
        for (name, t) in [
            ("header_timeout", opts.header_timeout),
            ("body_timeout", opts.body_timeout),
            ("idle_timeout", opts.idle_timeout),
        ] {
            if t.is_zero() {
                return Err(Error::Input(format!("{name} must be more than 0")));
            }
        }
        let embedder = Arc::new(embedder);
        let metrics = Arc::new(Metrics::default());
        let (queue, rx) = mpsc::channel(opts.max_queued_requests);
        let batcher = {
            let (embedder, metrics) = (embedder.clone(), metrics.clone());
            let budget = opts.max_batch_tokens;
            std::thread::Builder::new()
                .name("deberta-embed-batcher".into())
                .spawn(move || run_batcher(&embedder, &metrics, rx, budget))
                .map_err(|e| Error::Device(format!("cannot start the batcher thread: {e}")))?
        };
        let in_flight = Arc::new(tokio::sync::Semaphore::new(opts.max_tokens_in_flight));
        Ok(Server {
            shared: Arc::new(Shared {
                embedder,
                opts,
                queue,
                metrics,
                in_flight,
            }),
            batcher,
        })
    }

    /// The model being served.
    pub fn embedder(&self) -> &Embedder {
        &self.shared.embedder
    }

    /// The limits in force.
    pub fn options(&self) -> &ServerOptions {
        &self.shared.opts
    }
}

/// Serve on `listener` until `shutdown` completes, then stop accepting connections, finish the
/// requests in flight, let the batcher drain its queue, and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Server { shared, batcher } = server;
    let opts = shared.opts.clone();
    let app = router(shared);
    let served = listen::accept_loop(listener, app, &opts, shutdown).await;
    // Every connection has closed, so the router, and with it the queue's only sender, is gone:
    // the batcher answers what is still queued and stops.
    let joined = tokio::task::spawn_blocking(move || batcher.join()).await;
    served?;
    match joined {
        Ok(Ok(())) => Ok(()),
        _ => Err(std::io::Error::other("the batcher thread panicked")),
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM: the `shutdown` future of [`serve`] for a
/// process. If a handler cannot be installed, that signal is not waited for.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embed", post(tei_embed))
        // text-embeddings-inference answers its model's main task on `/` too (clients that are
        // given the server's URL as the model's, like huggingface_hub's, post there)
        .route("/", post(tei_embed))
        .route("/tokenize", post(tei_tokenize))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/info", get(info))
        .route("/v1/models", get(models))
        .route("/openapi.json", get(openapi::document))
        .route("/rerank", post(rerank::tei_rerank))
        .route("/predict", post(rerank::tei_predict))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            rerank::by_model_kind,
        ))
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .layer(middleware::from_fn_with_state(shared.clone(), track))
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// The batcher

fn run_batcher(embedder: &Embedder, metrics: &Metrics, mut rx: mpsc::Receiver<Job>, budget: usize) {
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

// ---------------------------------------------------------------------------------------------
// Requests

/// A failed request, rendered in the error shape of the route it came in on.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// The request field at fault (OpenAI's `param`).
    param: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    /// OpenAI's `{"error": {"message", "type", "param", "code"}}`.
    fn openai(self) -> Response {
        let kind = match self.status {
            StatusCode::TOO_MANY_REQUESTS => "server_overloaded",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let body = OpenAiErrorBody {
            error: OpenAiError {
                message: &self.message,
                kind,
                param: self.param,
                code: None,
            },
        };
        (self.status, Json(body)).into_response()
    }

    /// text-embeddings-inference's `{"error", "error_type"}`.
    fn tei(self) -> Response {
        let kind = match self.status {
            StatusCode::TOO_MANY_REQUESTS => "Overloaded",
            StatusCode::SERVICE_UNAVAILABLE => "Unhealthy",
            s if s.is_server_error() => "Backend",
            _ => "Validation",
        };
        let body = TeiError {
            error: &self.message,
            error_type: kind,
        };
        (self.status, Json(body)).into_response()
    }
}

/// OpenAI's error body.
#[derive(Serialize, utoipa::ToSchema)]
struct OpenAiErrorBody<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct OpenAiError<'a> {
    message: &'a str,
    /// `invalid_request_error`, `server_overloaded` (429) or `server_error` (5xx).
    #[serde(rename = "type")]
    kind: &'static str,
    /// The request field at fault, if one is.
    param: Option<&'static str>,
    /// Always null.
    code: Option<&'static str>,
}

/// text-embeddings-inference's error body.
#[derive(Serialize, utoipa::ToSchema)]
struct TeiError<'a> {
    error: &'a str,
    /// `Validation`, `Overloaded` (429), `Unhealthy` (503) or `Backend` (5xx).
    error_type: &'static str,
}

/// The request body, read within [`ServerOptions::body_timeout`] and at most
/// [`ServerOptions::max_body_bytes`] long.
async fn read_body(s: &Shared, req: Request) -> std::result::Result<Bytes, ApiError> {
    let limit = s.opts.max_body_bytes;
    let read = axum::body::to_bytes(req.into_body(), limit);
    match tokio::time::timeout(s.opts.body_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let inner = e.into_inner();
            if inner.is::<http_body_util::LengthLimitError>() {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than the limit of {limit} bytes"),
                ))
            } else {
                Err(ApiError::bad(format!(
                    "cannot read the request body: {inner}"
                )))
            }
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                s.opts.body_timeout.as_secs_f64()
            ),
        )),
    }
}

/// The request body as a JSON object.
fn parse_object(bytes: &[u8]) -> std::result::Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::unprocessable(
            "request body must be a JSON object",
        )),
    }
}

/// `resp` with `permit` held until its body has been sent (or the client has gone): a
/// response waiting for a slow reader still counts against the tokens in flight.
fn holding(resp: Response, permit: tokio::sync::OwnedSemaphorePermit) -> Response {
    use http_body_util::BodyExt;
    resp.map(|body| {
        axum::body::Body::new(body.map_frame(move |frame| {
            let _held = &permit;
            frame
        }))
    })
}

/// Wait until `texts` fit in the tokens in flight ([`ServerOptions::max_tokens_in_flight`]);
/// the permit is theirs until it is dropped (see [`holding`]).
async fn admit(
    s: &Shared,
    texts: &[String],
    truncate: bool,
) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    admit_bytes(s, texts.iter().map(String::len), 2, truncate).await
}

/// Wait for room in the tokens in flight for sequences of `bytes` bytes of text each, plus
/// `special` tokens per sequence: at most a token per byte, or max_seq_length when truncated.
async fn admit_bytes(
    s: &Shared,
    bytes: impl Iterator<Item = usize>,
    special: usize,
    truncate: bool,
) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let msl = s.embedder.max_seq_length();
    let estimate = bytes
        .map(|b| {
            let n = b.saturating_add(special);
            if truncate {
                n.min(msl)
            } else {
                n
            }
        })
        .fold(0usize, usize::saturating_add);
    // (Server::new keeps max_tokens_in_flight within u32)
    let n = estimate.clamp(1, s.opts.max_tokens_in_flight) as u32;
    s.in_flight
        .clone()
        .acquire_many_owned(n)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        })
}

/// `key`: a string or a non-empty array of strings, at most `max` of them.
fn texts_field(
    obj: &mut Map<String, Value>,
    key: &'static str,
    max: usize,
) -> std::result::Result<Vec<String>, ApiError> {
    let shape = || {
        ApiError::unprocessable(format!("`{key}` must be a string or an array of strings"))
            .param(key)
    };
    let texts = match obj.remove(key) {
        None | Some(Value::Null) => {
            return Err(ApiError::unprocessable(format!("missing field `{key}`")).param(key))
        }
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::bad(format!("`{key}` must not be an empty array")).param(key));
            }
            let mut texts = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) => texts.push(s),
                    Value::Number(_) | Value::Array(_) => {
                        return Err(ApiError::unprocessable(format!(
                            "`{key}[{i}]` is not a string: token-id inputs are not supported, send text"
                        ))
                        .param(key))
                    }
                    _ => {
                        return Err(
                            ApiError::unprocessable(format!("`{key}[{i}]` must be a string"))
                                .param(key),
                        )
                    }
                }
            }
            texts
        }
        Some(_) => return Err(shape()),
    };
    if texts.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} inputs in one request; the limit is {max}", texts.len()),
        )
        .param(key));
    }
    Ok(texts)
}

/// Optional boolean `key`, `default` when absent or null.
fn bool_field(
    obj: &Map<String, Value>,
    key: &'static str,
    default: bool,
) -> std::result::Result<bool, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::unprocessable(format!("`{key}` must be a boolean")).param(key)),
    }
}

/// Optional string `key`.
fn str_field<'a>(
    obj: &'a Map<String, Value>,
    key: &'static str,
) -> std::result::Result<Option<&'a str>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::unprocessable(format!("`{key}` must be a string")).param(key)),
    }
}

/// The prompt a request asks for (`prompt_name`, `prompt`; neither: the model's default), as
/// sentence-transformers resolves it; the request's texts get it prepended. An unknown name is
/// 400.
fn apply_prompt(
    s: &Shared,
    obj: &Map<String, Value>,
    texts: &mut [String],
) -> std::result::Result<usize, ApiError> {
    let opts = crate::EncodeOptions {
        prompt_name: str_field(obj, "prompt_name")?,
        prompt: str_field(obj, "prompt")?,
    };
    let param = if opts.prompt.is_some() {
        "prompt"
    } else {
        "prompt_name"
    };
    let prompt = s.embedder.resolve_prompt(&opts).map_err(|e| match e {
        Error::Input(m) => ApiError::bad(m).param(param),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    if let Some(p) = &prompt {
        for t in texts.iter_mut() {
            *t = p.apply(t);
        }
    }
    Ok(s.embedder.pooling_skip(prompt.as_ref()))
}

/// `dimensions`: absent, or the model's own width (no Matryoshka truncation here).
fn check_dimensions(obj: &Map<String, Value>, dim: usize) -> std::result::Result<(), ApiError> {
    match obj.get("dimensions") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_u64() == Some(dim as u64) => Ok(()),
        Some(Value::Number(n)) => Err(ApiError::bad(format!(
            "`dimensions` {n} is not supported: this model's embeddings have {dim} dimensions"
        ))
        .param("dimensions")),
        Some(_) => {
            Err(ApiError::unprocessable("`dimensions` must be an integer").param("dimensions"))
        }
    }
}

/// Tokenize on the blocking pool (the runtime's workers keep serving meanwhile).
async fn tokenize(
    s: &Shared,
    texts: Vec<String>,
) -> std::result::Result<Vec<crate::Tokenized>, ApiError> {
    tokenize_with(s, Arc::new(texts), true).await
}

/// [`tokenize`], truncated to max_seq_length or not, keeping the texts for the caller.
async fn tokenize_with(
    s: &Shared,
    texts: Arc<Vec<String>>,
    truncate: bool,
) -> std::result::Result<Vec<crate::Tokenized>, ApiError> {
    let embedder = s.embedder.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        if truncate {
            embedder.tokenize(&refs)
        } else {
            embedder.tokenize_all(&refs)
        }
    })
    .await;
    match joined {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: tokenization panicked",
        )),
    }
}

/// What a request cost, for its log line: a response extension that [`track`] reads.
#[derive(Clone, Copy, Debug, Default)]
struct RequestStats {
    inputs: usize,
    tokens: usize,
    /// Seconds waiting for the batcher, and in the forward of the batch it joined.
    queue_s: f64,
    compute_s: f64,
}

impl RequestStats {
    fn of(tokenized: &[Vec<u32>]) -> Self {
        RequestStats {
            inputs: tokenized.len(),
            tokens: tokenized.iter().map(Vec::len).sum(),
            ..Default::default()
        }
    }
}

/// `resp` carrying `stats` for its log line.
fn with_stats(mut resp: Response, stats: RequestStats) -> Response {
    resp.extensions_mut().insert(stats);
    resp
}

/// Queue `ids` for the batcher and wait for their rows (row-major, `ids.len() * dim`).
async fn embed_ids(
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

/// `/v1/embeddings`' answer.
#[derive(Serialize, utoipa::ToSchema)]
struct OpenAiResponse<'a> {
    /// `list`.
    object: &'static str,
    data: Vec<OpenAiEmbedding<'a>>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize, utoipa::ToSchema)]
struct OpenAiEmbedding<'a> {
    /// `embedding`.
    object: &'static str,
    embedding: EmbeddingValue<'a>,
    /// The input's position in the request.
    index: usize,
}

/// An array of numbers (`encoding_format` float) or base64 of the little-endian float32 bytes.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum EmbeddingValue<'a> {
    Float(&'a [f32]),
    Base64(String),
}

/// Tokens embedded, special tokens and the prompt included, after truncation.
#[derive(Serialize, utoipa::ToSchema)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

async fn openai_embeddings(State(s): State<Arc<Shared>>, req: Request) -> Response {
    openai_inner(&s, req).await.unwrap_or_else(ApiError::openai)
}

async fn openai_inner(s: &Shared, req: Request) -> std::result::Result<Response, ApiError> {
    let mut obj = parse_object(&read_body(s, req).await?)?;
    let mut texts = texts_field(&mut obj, "input", s.opts.max_inputs)?;
    let model = str_field(&obj, "model")?
        .unwrap_or(&s.opts.model_name)
        .to_string();
    let base64 = match str_field(&obj, "encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "`encoding_format` must be \"float\" or \"base64\", not {other:?}"
            ))
            .param("encoding_format"))
        }
    };
    let dim = s.embedder.dim();
    check_dimensions(&obj, dim)?;
    let skip = apply_prompt(s, &obj, &mut texts)?;
    let admitted = admit(s, &texts, true).await?;
    let ids: Vec<Vec<u32>> = tokenize(s, texts)
        .await?
        .into_iter()
        .map(|t| t.ids)
        .collect();
    let tokens: usize = ids.iter().map(Vec::len).sum();
    let (rows, stats) = embed_ids(s, ids, s.embedder.normalizes(), skip).await?;
    let data = rows
        .chunks_exact(dim)
        .enumerate()
        .map(|(index, row)| OpenAiEmbedding {
            object: "embedding",
            embedding: if base64 {
                let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingValue::Float(row)
            },
            index,
        })
        .collect();
    let resp = OpenAiResponse {
        object: "list",
        data,
        model: &model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    Ok(with_stats(
        holding(Json(resp).into_response(), admitted),
        stats,
    ))
}

async fn tei_embed(State(s): State<Arc<Shared>>, req: Request) -> Response {
    tei_inner(&s, req).await.unwrap_or_else(ApiError::tei)
}

async fn tei_inner(s: &Shared, req: Request) -> std::result::Result<Response, ApiError> {
    let mut obj = parse_object(&read_body(s, req).await?)?;
    let mut texts = texts_field(&mut obj, "inputs", s.opts.max_inputs)?;
    let normalize = bool_field(&obj, "normalize", true)?;
    let truncate = bool_field(&obj, "truncate", s.opts.auto_truncate)?;
    match str_field(&obj, "truncation_direction")? {
        None => {}
        Some(d) if d.eq_ignore_ascii_case("right") => {}
        Some(d) => {
            return Err(ApiError::bad(format!(
                "`truncation_direction` {d:?} is not supported (only \"Right\")"
            ))
            .param("truncation_direction"))
        }
    }
    let dim = s.embedder.dim();
    check_dimensions(&obj, dim)?;
    let skip = apply_prompt(s, &obj, &mut texts)?;
    let admitted = admit(s, &texts, true).await?;
    let tokenized = tokenize(s, texts).await?;
    if !truncate {
        if let Some(i) = tokenized.iter().position(|t| t.truncated) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "input {i} is longer than the model's maximum of {} tokens; send \"truncate\": true to truncate it",
                    s.embedder.max_seq_length()
                ),
            )
            .param("inputs"));
        }
    }
    let ids = tokenized.into_iter().map(|t| t.ids).collect();
    let (rows, stats) = embed_ids(s, ids, normalize, skip).await?;
    let out: Vec<&[f32]> = rows.chunks_exact(dim).collect();
    Ok(with_stats(
        holding(Json(out).into_response(), admitted),
        stats,
    ))
}

async fn tei_tokenize(State(s): State<Arc<Shared>>, req: Request) -> Response {
    tokenize_inner(&s, req).await.unwrap_or_else(ApiError::tei)
}

/// One token of `/tokenize`'s answer, as text-embeddings-inference writes it.
#[derive(Serialize, utoipa::ToSchema)]
struct SimpleToken {
    id: u32,
    /// The piece of the input it came from (the vocabulary piece for special tokens).
    text: String,
    special: bool,
    /// Character offsets into the input; null for special tokens.
    start: Option<usize>,
    stop: Option<usize>,
}

async fn tokenize_inner(s: &Shared, req: Request) -> std::result::Result<Response, ApiError> {
    let mut obj = parse_object(&read_body(s, req).await?)?;
    let mut texts = texts_field(&mut obj, "inputs", s.opts.max_inputs)?;
    let add_special = bool_field(&obj, "add_special_tokens", true)?;
    let truncate = bool_field(&obj, "truncate", true)?;
    apply_prompt(s, &obj, &mut texts)?;
    let texts = Arc::new(texts);
    let admitted = admit(s, &texts, truncate).await?;
    let tokenized = tokenize_with(s, texts.clone(), truncate).await?;
    let out: Vec<Vec<SimpleToken>> = tokenized
        .iter()
        .zip(texts.iter())
        .map(|(t, text)| simple_tokens(t, text, add_special))
        .collect();
    let stats = RequestStats {
        inputs: tokenized.len(),
        tokens: tokenized.iter().map(|t| t.ids.len()).sum(),
        ..Default::default()
    };
    Ok(with_stats(
        holding(Json(out).into_response(), admitted),
        stats,
    ))
}

/// A tokenized text as `/tokenize` answers it: each token with the characters it covers.
fn simple_tokens(t: &crate::Tokenized, text: &str, add_special: bool) -> Vec<SimpleToken> {
    // byte index of each character, and of the end
    let bytes: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    let n_chars = bytes.len() - 1;
    let mut out = Vec::with_capacity(t.ids.len());
    for (i, &id) in t.ids.iter().enumerate() {
        if t.special[i] {
            if add_special {
                out.push(SimpleToken {
                    id,
                    text: t.tokens[i].clone(),
                    special: true,
                    start: None,
                    stop: None,
                });
            }
            continue;
        }
        let (start, stop) = t.offsets[i];
        let (a, b) = (
            start.min(n_chars),
            stop.min(n_chars).max(start.min(n_chars)),
        );
        out.push(SimpleToken {
            id,
            text: text[bytes[a]..bytes[b]].to_string(),
            special: false,
            start: Some(start),
            stop: Some(stop),
        });
    }
    out
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    if s.queue.is_closed() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the batcher has stopped").openai();
    }
    Json(openapi::Health {
        status: "ok".into(),
    })
    .into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let queued = s.queue.max_capacity() - s.queue.capacity();
    let in_flight = s.opts.max_tokens_in_flight - s.in_flight.available_permits();
    let text = s
        .metrics
        .render(&s.opts.model_name, &s.embedder, queued, in_flight);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
    .openai()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .openai()
}

/// Middleware: with an API key set, refuse requests without it (401) on every route but
/// `/health` and `/metrics` (probes and scrapers; neither reveals request data).
async fn authorize(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(key) = &s.opts.api_key else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/health" | "/metrics") {
        return next.run(req).await;
    }
    // the scheme is case-insensitive (RFC 9110): `Bearer`, `bearer`, ...
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token);
    if same_secret(given.trim().as_bytes(), key.as_bytes()) {
        return next.run(req).await;
    }
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send `Authorization: Bearer <key>`",
    )
    .openai();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// `a == b` in time that depends only on the lengths (an attacker learns nothing from timing
/// about how much of a guessed key was right).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // (black_box: keep the compiler from ending the fold at the first difference)
    std::hint::black_box(diff) == 0 && a.len() == b.len()
}

/// `GET /info`: what is served and with which limits.
async fn info(State(s): State<Arc<Shared>>) -> Response {
    let e = &s.embedder;
    let p = e.pipeline();
    let o = &s.opts;
    Json(openapi::Info {
        model_id: o.model_name.clone(),
        revision: o.revision.clone(),
        model_sha: o.revision.clone(),
        model_type: match e.kind() {
            crate::ModelKind::Embedding => "embedding",
            crate::ModelKind::CrossEncoder => "reranker",
        }
        .into(),
        dim: e.dim(),
        max_seq_length: e.max_seq_length(),
        max_input_length: e.max_seq_length(),
        pooling: p.pooling.iter().map(|m| m.name().to_string()).collect(),
        normalize: p.normalize,
        dtype: e.options().precision.to_string(),
        device: e.device().to_string(),
        max_batch_tokens: o.max_batch_tokens,
        max_client_batch_size: o.max_inputs,
        max_body_bytes: o.max_body_bytes,
        max_queued_requests: o.max_queued_requests,
        max_tokens_in_flight: o.max_tokens_in_flight,
        max_connections: o.max_connections,
        auto_truncate: o.auto_truncate,
        prompts: e.prompts().clone(),
        default_prompt_name: e.default_prompt_name().map(String::from),
        include_prompt: p.include_prompt,
        version: env!("CARGO_PKG_VERSION").into(),
    })
    .into_response()
}

/// `GET /v1/models`: the one model, in OpenAI's list shape.
async fn models(State(s): State<Arc<Shared>>) -> Response {
    Json(openapi::ModelList {
        object: "list".into(),
        data: vec![openapi::ModelCard {
            id: s.opts.model_name.clone(),
            object: "model".into(),
            created: 0,
            owned_by: "deberta-embed".into(),
        }],
    })
    .into_response()
}

/// Middleware: count and time every request by route and status.
async fn track(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    s.metrics.record_request(route, status, seconds);
    // one line per request; never the request's text
    let st = resp
        .extensions()
        .get::<RequestStats>()
        .copied()
        .unwrap_or_default();
    tracing::info!(
        target: "deberta_embed::request",
        method = %method,
        route,
        status,
        inputs = st.inputs,
        tokens = st.tokens,
        queue_ms = st.queue_s * 1e3,
        compute_ms = st.compute_s * 1e3,
        total_ms = seconds * 1e3,
        "request"
    );
    resp
}

/// The route label of a path: the known routes by name, everything else as "other" (so that
/// random paths cannot grow the label set).
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/embeddings" => "/v1/embeddings",
        "/embed" => "/embed",
        "/" => "/",
        "/tokenize" => "/tokenize",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/info" => "/info",
        "/v1/models" => "/v1/models",
        "/openapi.json" => "/openapi.json",
        "/rerank" => "/rerank",
        "/predict" => "/predict",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const BATCH_TOKEN_BOUNDS: &[f64] = &[16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0];

/// A Prometheus histogram: per-bucket counts (rendered cumulatively), sum and count.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }
    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
    /// `name_bucket{labels,le=...}` lines, then `_sum` and `_count`; `labels` is empty or
    /// ends with a comma.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        use std::fmt::Write;
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let bare = labels.trim_end_matches(',');
        let braces = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Metrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Clone)]
struct MetricsInner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    inputs: u64,
    tokens: u64,
    batch_size: Histogram,
    batch_requests: Histogram,
    batch_tokens: Histogram,
}

impl Default for MetricsInner {
    fn default() -> Self {
        MetricsInner {
            requests: BTreeMap::new(),
            latency: BTreeMap::new(),
            inputs: 0,
            tokens: 0,
            batch_size: Histogram::new(BATCH_SIZE_BOUNDS),
            batch_requests: Histogram::new(BATCH_SIZE_BOUNDS),
            batch_tokens: Histogram::new(BATCH_TOKEN_BOUNDS),
        }
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, MetricsInner> {
        // counters stay meaningful after a panic elsewhere: keep counting
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn record_request(&self, route: &'static str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests.entry((route, status)).or_default() += 1;
        m.latency
            .entry(route)
            .or_insert_with(|| Histogram::new(LATENCY_BOUNDS))
            .observe(seconds);
    }
    fn record_embedded(&self, inputs: usize, tokens: usize) {
        let mut m = self.lock();
        m.inputs += inputs as u64;
        m.tokens += tokens as u64;
    }
    fn record_batch(&self, sequences: usize, requests: usize, tokens: usize) {
        let mut m = self.lock();
        m.batch_size.observe(sequences as f64);
        m.batch_requests.observe(requests as f64);
        m.batch_tokens.observe(tokens as f64);
    }

    /// The Prometheus text exposition (format 0.0.4).
    /// `queued`: requests waiting for the batcher; `in_flight`: tokens the requests in flight
    /// hold (of [`ServerOptions::max_tokens_in_flight`]).
    fn render(&self, model: &str, embedder: &Embedder, queued: usize, in_flight: usize) -> String {
        use std::fmt::Write;
        let m = self.lock().clone();
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "deberta_embed_model_info",
            "gauge",
            "The model being served (value always 1).",
        );
        let _ = writeln!(
            out,
            "deberta_embed_model_info{{model=\"{}\",dim=\"{}\",max_seq_length=\"{}\",device=\"{}\"}} 1",
            escape_label(model),
            embedder.dim(),
            embedder.max_seq_length(),
            embedder.device()
        );
        head(
            &mut out,
            "deberta_embed_requests_total",
            "counter",
            "HTTP requests answered, by route and status code.",
        );
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "deberta_embed_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        head(
            &mut out,
            "deberta_embed_request_duration_seconds",
            "histogram",
            "Time from request to response, by route.",
        );
        for (route, h) in &m.latency {
            h.render(
                &mut out,
                "deberta_embed_request_duration_seconds",
                &format!("route=\"{route}\","),
            );
        }
        head(
            &mut out,
            "deberta_embed_inputs_total",
            "counter",
            "Texts embedded.",
        );
        let _ = writeln!(out, "deberta_embed_inputs_total {}", m.inputs);
        head(
            &mut out,
            "deberta_embed_tokens_total",
            "counter",
            "Tokens embedded (special tokens included, after truncation).",
        );
        let _ = writeln!(out, "deberta_embed_tokens_total {}", m.tokens);
        head(
            &mut out,
            "deberta_embed_batch_size",
            "histogram",
            "Sequences per batch the batcher ran.",
        );
        m.batch_size
            .render(&mut out, "deberta_embed_batch_size", "");
        head(
            &mut out,
            "deberta_embed_batch_requests",
            "histogram",
            "Requests per batch the batcher ran.",
        );
        m.batch_requests
            .render(&mut out, "deberta_embed_batch_requests", "");
        head(
            &mut out,
            "deberta_embed_batch_tokens",
            "histogram",
            "Tokens per batch the batcher ran.",
        );
        m.batch_tokens
            .render(&mut out, "deberta_embed_batch_tokens", "");
        head(
            &mut out,
            "deberta_embed_queued_requests",
            "gauge",
            "Requests waiting for the batcher.",
        );
        let _ = writeln!(out, "deberta_embed_queued_requests {queued}");
        head(
            &mut out,
            "deberta_embed_tokens_in_flight",
            "gauge",
            "Tokens held by requests in flight (estimated before tokenizing).",
        );
        let _ = writeln!(out, "deberta_embed_tokens_in_flight {in_flight}");
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[doc(hidden)]
impl Server {
    /// The routes that [`serve`] serves, as a service to call in-process (the HTTP fuzz target
    /// drives it with requests that never touch a socket).
    pub fn router(&self) -> Router {
        router(self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let mut h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [1.0, 1.5, 3.0, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "r=\"a\",");
        assert_eq!(
            out,
            "x_bucket{r=\"a\",le=\"1\"} 1\nx_bucket{r=\"a\",le=\"2\"} 2\nx_bucket{r=\"a\",le=\"4\"} 3\n\
             x_bucket{r=\"a\",le=\"+Inf\"} 4\nx_sum{r=\"a\"} 14.5\nx_count{r=\"a\"} 4\n"
        );
        let mut bare = String::new();
        Histogram::new(&[1.0]).render(&mut bare, "y", "");
        assert_eq!(
            bare,
            "y_bucket{le=\"1\"} 0\ny_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(route_label("/embed"), "/embed");
        assert_eq!(route_label("/embed/x"), "other");
        assert_eq!(route_label("/random-123"), "other");
    }
}
