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
//! Files: `routes.rs` (the route table, request parsing and the handlers), `batcher.rs` (the
//! queue and the batcher thread), `metrics.rs` (the Prometheus metrics), `rerank.rs` (the
//! cross-encoder routes), `openapi.rs` (the OpenAPI document), `listen.rs` (the accept loop).
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

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::Embedder;

mod batcher;
mod listen;
mod metrics;
mod openapi;
mod rerank;
mod routes;

use self::batcher::{run_batcher, Job};
use self::metrics::Metrics;
use self::routes::router;

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

#[doc(hidden)]
impl Server {
    /// The routes that [`serve`] serves, as a service to call in-process (the HTTP fuzz target
    /// drives it with requests that never touch a socket).
    pub fn router(&self) -> Router {
        router(self.shared.clone())
    }
}
