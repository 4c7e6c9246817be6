//! `deberta-embed serve`: the HTTP embedding server of `deberta_embed::server` on a tokio
//! runtime, stopped by SIGINT or SIGTERM after the requests in flight are answered.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use deberta_embed::server::{self, Server, ServerOptions};
use deberta_embed::{CrossEncoder, Embedder, EmbedderOptions, ModelKind};

/// The model flags of the other commands, each with its DEBERTA_EMBED_* variable (a container
/// or a Kubernetes pod sets the model by environment).
#[derive(clap::Args)]
struct ServeModel {
    /// Model directory (sentence-transformers or transformers layout), or a Hugging Face hub id
    /// (org/name), downloaded into the Hugging Face cache on first use.
    #[arg(long, value_name = "DIR|ORG/NAME", env = "DEBERTA_EMBED_MODEL")]
    model: PathBuf,
    /// Hub revision of an org/name model: branch, tag or commit.
    #[arg(long, default_value = deberta_embed::hub::DEFAULT_REVISION, env = "DEBERTA_EMBED_REVISION")]
    revision: String,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "DEBERTA_EMBED_DEVICE")]
    device: String,
    /// Precision: f32 (CPU and GPU), f16 (GPU) or bf16 (GPU; on the CPU: bf16-stored weights, fp32 math). Default: f32 on the CPU, f16 on a GPU.
    #[arg(long, env = "DEBERTA_EMBED_DTYPE")]
    dtype: Option<String>,
    /// Worker threads (default: all cores; at most 4 per core, more is lowered to that with a
    /// notice).
    #[arg(long, value_parser = super::parse_threads, env = "DEBERTA_EMBED_THREADS")]
    threads: Option<usize>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    common: ServeModel,
    /// Address to bind. Loopback by default; to expose it, set --api-key and put a proxy that
    /// terminates TLS in front of it (0.0.0.0 in a container).
    #[arg(long, default_value = "127.0.0.1", env = "DEBERTA_EMBED_HOST")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed at startup).
    #[arg(long, default_value_t = 8080, env = "DEBERTA_EMBED_PORT")]
    port: u16,
    /// Token budget of one batch (special tokens included): requests that arrive together are
    /// embedded together until the next one would exceed it.
    #[arg(long, default_value_t = 16384, env = "DEBERTA_EMBED_MAX_BATCH_TOKENS")]
    max_batch_tokens: usize,
    /// Sentences per forward pass (a batch of more runs as several forwards).
    #[arg(long, default_value_t = 32, env = "DEBERTA_EMBED_BATCH_SIZE")]
    batch_size: usize,
    /// Most texts in one request (more is refused with 413).
    #[arg(long, default_value_t = 2048, env = "DEBERTA_EMBED_MAX_INPUTS")]
    max_inputs: usize,
    /// Largest request body in bytes (larger is refused with 413).
    #[arg(long, default_value_t = 2 * 1024 * 1024, env = "DEBERTA_EMBED_MAX_BODY_BYTES")]
    max_body_bytes: usize,
    /// Requests that may wait for the batcher (more are refused with 429).
    #[arg(long, default_value_t = 512, env = "DEBERTA_EMBED_MAX_QUEUED_REQUESTS")]
    max_queued_requests: usize,
    /// Tokens the requests in flight may hold (counted before tokenizing as min(bytes + 2,
    /// max_seq_length) per input); a request that would exceed it waits. Bounds memory.
    #[arg(long, default_value_t = 1 << 18, env = "DEBERTA_EMBED_MAX_TOKENS_IN_FLIGHT")]
    max_tokens_in_flight: usize,
    /// Connections served at once; one more is answered 503. Default: 1024, or less when the
    /// open-file limit (`ulimit -n`) leaves room for fewer.
    #[arg(long, env = "DEBERTA_EMBED_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Seconds for a request head to arrive once its first byte has.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", value_parser = parse_seconds, env = "DEBERTA_EMBED_HEADER_TIMEOUT")]
    header_timeout: f64,
    /// Seconds for a request body to arrive once its head has (then 408).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = parse_seconds, env = "DEBERTA_EMBED_BODY_TIMEOUT")]
    body_timeout: f64,
    /// Seconds a connection may wait for its next (or first) request before it is closed.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS", value_parser = parse_seconds, env = "DEBERTA_EMBED_IDLE_TIMEOUT")]
    idle_timeout: f64,
    /// Truncate over-long inputs on /embed when a request does not say `truncate` (instead of
    /// answering 413), as text-embeddings-inference's --auto-truncate.
    #[arg(long, env = "DEBERTA_EMBED_AUTO_TRUNCATE")]
    auto_truncate: bool,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives. At info,
    /// one line per request (route, status, inputs, tokens, queue / compute / total ms; never
    /// the text). RUST_LOG is not read; use this flag or its variable.
    #[arg(long, default_value = "info", env = "DEBERTA_EMBED_LOG_LEVEL")]
    log_level: String,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "DEBERTA_EMBED_LOG_FORMAT")]
    log_format: LogFormat,
    /// Require `Authorization: Bearer KEY` on every route but /health and /metrics (401
    /// otherwise). Prefer the environment variable: a flag shows in the process list.
    #[arg(
        long,
        env = "DEBERTA_EMBED_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
    /// Model name that /v1/embeddings reports when a request names none (default: the hub id
    /// of an org/name model, else the name of the model directory).
    #[arg(long, value_name = "NAME", env = "DEBERTA_EMBED_SERVED_MODEL_NAME")]
    served_model_name: Option<String>,
    /// What to serve: `auto` serves a cross-encoder (a sentence-transformers CrossEncoder, or a
    /// transformers *ForSequenceClassification checkpoint) on /rerank and /predict and anything
    /// else on the embedding routes; `embedding` forces mean-pooled embeddings of a
    /// classification checkpoint's backbone, as sentence-transformers' SentenceTransformer
    /// would load it.
    #[arg(long, value_enum, default_value_t = KindArg::Auto, env = "DEBERTA_EMBED_MODEL_KIND")]
    model_kind: KindArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KindArg {
    Auto,
    Embedding,
    CrossEncoder,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Send `tracing` events (the per-request lines) to stderr.
fn init_logging(level: &str, format: LogFormat) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("--log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    set.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

pub fn run(a: ServeArgs) -> Result<()> {
    init_logging(&a.log_level, a.log_format)?;
    if a.max_batch_tokens == 0 || a.batch_size == 0 {
        bail!("--max-batch-tokens and --batch-size must be at least 1");
    }
    let device = super::parse_device(&a.common.device)?;
    let opts = EmbedderOptions {
        threads: a.common.threads,
        batch_size: a.batch_size,
        normalize: None,
        precision: super::parse_precision(a.common.dtype.as_deref(), device)?,
        max_batch_tokens: a.max_batch_tokens,
    };
    let dir = super::model_dir(&a.common.model, &a.common.revision, false)?;
    let kind = match a.model_kind {
        KindArg::Auto => deberta_embed::cross::model_kind(&dir)?,
        KindArg::Embedding => ModelKind::Embedding,
        KindArg::CrossEncoder => ModelKind::CrossEncoder,
    };
    let embedder = match kind {
        ModelKind::Embedding => Embedder::load_with(&dir, device, opts)?,
        ModelKind::CrossEncoder => CrossEncoder::load_with(&dir, device, opts)?.into_embedder(),
    };
    // A model loaded by hub id is served under that id, not its snapshot's commit hash.
    let by_id = (dir != a.common.model).then(|| a.common.model.display().to_string());
    // a hub model's directory is its snapshot, named by its commit
    let revision = by_id
        .as_ref()
        .and_then(|_| dir.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let model_name = a.served_model_name.clone().or(by_id).unwrap_or_else(|| {
        a.common
            .model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "deberta-embed".into())
    });
    let (dim, max_len) = (embedder.dim(), embedder.max_seq_length());
    let what = match kind {
        ModelKind::Embedding => format!("{dim} dimensions"),
        ModelKind::CrossEncoder => format!("cross-encoder, {dim} labels: /rerank, /predict"),
    };
    let server = Server::new(
        embedder,
        ServerOptions {
            model_name: model_name.clone(),
            max_batch_tokens: a.max_batch_tokens,
            max_inputs: a.max_inputs,
            max_body_bytes: a.max_body_bytes,
            max_queued_requests: a.max_queued_requests,
            max_tokens_in_flight: a.max_tokens_in_flight,
            max_connections: a
                .max_connections
                .unwrap_or_else(server::default_max_connections),
            header_timeout: Duration::from_secs_f64(a.header_timeout),
            body_timeout: Duration::from_secs_f64(a.body_timeout),
            idle_timeout: Duration::from_secs_f64(a.idle_timeout),
            auto_truncate: a.auto_truncate,
            api_key: a.api_key.clone(),
            revision,
        },
    )?;
    limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        eprintln!(
            "deberta-embed: serving {model_name} ({what}, max_seq_length {max_len}, {device}) on http://{addr}"
        );
        let shutdown = async {
            server::shutdown_signal().await;
            eprintln!(
                "deberta-embed: shutting down after the requests in flight (signal again to stop at once)"
            );
            // A client that never finishes its request would hold the shutdown up forever.
            tokio::spawn(async {
                server::shutdown_signal().await;
                eprintln!("error: stopped before the requests in flight were answered");
                std::process::exit(1);
            });
        };
        server::serve(listener, server, shutdown)
            .await
            .context("serving")?;
        eprintln!("deberta-embed: stopped");
        Ok(())
    })
}

/// A timeout in seconds: more than 0, at most a day.
fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 86_400.0 => Ok(x),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

/// Cap glibc's malloc arenas at one per core (at least 2). Request handlers tokenize on many
/// short-lived blocking threads; with glibc's default of 8 arenas per core each keeps its own
/// high-water mark, and 32 concurrent 2 MB requests held about twice the memory that one
/// arena per core does (BENCHMARKS.md, server memory).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let arenas = i32::try_from(cores.max(2)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets an allocator parameter; it is called before the runtime
        // starts any thread, and a refusal (return 0) leaves the default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
