//! Loopback load benchmark of the embedding server: starts `deberta_embed::server` in-process on
//! 127.0.0.1:<free port>, then for each concurrency level runs that many clients (threads with
//! a kept-alive connection each) sending `POST /v1/embeddings` requests of 1 to 4 corpus
//! sentences, and prints requests/s, sentences/s, p50/p99 latency and requests per batch. The
//! first row, `direct`, is the baseline without HTTP: the same requests one after another
//! through `Embedder::encode` in the same process.
//! Bounded: at most `--requests` requests and about `--max-seconds` per level.
//!
//! ```text
//! cargo bench --bench serve -- --model DIR [--corpus FILE] [--requests 200] \
//!     [--concurrency 1,16,64] [--threads N] [--max-seconds 60]
//! ```
//!
//! `--model` may also come from `DEBERTA_EMBED_MODEL`, `--corpus` from `DEBERTA_EMBED_CORPUS`.
//! Server and clients share the machine: on a small one the clients' own CPU time counts
//! against the server.

#[path = "../tests/common/http.rs"]
mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use deberta_embed::server::{serve, Server, ServerOptions};
use deberta_embed::testing::{XorShift, GOLDEN};
use deberta_embed::{Device, Embedder, EmbedderOptions};

#[derive(Parser)]
#[command(about = "Loopback load benchmark of deberta-embed's HTTP server")]
struct Args {
    /// Model directory (default: $DEBERTA_EMBED_MODEL).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Sentences to draw requests from, one per line (default: $DEBERTA_EMBED_CORPUS, else a
    /// few built-in sentences).
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Stop a level after about this many seconds even if requests are left.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Concurrent clients, one level per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Forward worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The server's token budget per batch.
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const BUILTIN: &[&str] = &[
    "A man is eating food.",
    "A woman is playing the violin on a small stage.",
    "The new movie is awesome and everybody should see it.",
    "Two dogs run through a field of tall grass in the late afternoon sun.",
    "Le chat dort sur le canapé depuis ce matin.",
    "How do I reset my password if I no longer have access to my email account?",
];

fn main() -> Result<()> {
    let a = Args::parse();
    let Some(model) = a
        .model
        .clone()
        .or_else(|| std::env::var_os("DEBERTA_EMBED_MODEL").map(PathBuf::from))
    else {
        bail!("give --model DIR (or set DEBERTA_EMBED_MODEL)");
    };
    let corpus_path = a
        .corpus
        .clone()
        .or_else(|| std::env::var_os("DEBERTA_EMBED_CORPUS").map(PathBuf::from));
    if a.requests == 0 || a.concurrency.contains(&0) {
        bail!("--requests and every --concurrency value must be at least 1");
    }
    let corpus: Vec<String> = match &corpus_path {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => BUILTIN.iter().map(|s| s.to_string()).collect(),
    };
    if corpus.is_empty() {
        bail!("the corpus has no sentences");
    }
    let opts = EmbedderOptions {
        threads: a.threads,
        batch_size: a.batch_size,
        max_batch_tokens: a.max_batch_tokens,
        ..Default::default()
    };
    let embedder = Embedder::load_with(&model, Device::Cpu, opts)?;
    let server = Server::new(
        embedder,
        ServerOptions {
            max_batch_tokens: a.max_batch_tokens,
            ..Default::default()
        },
    )?;
    // Requests: 1 to 4 sentences drawn with a fixed xorshift sequence.
    let mut rng = XorShift(GOLDEN);
    let mut next = || rng.next_u64();
    let requests: Vec<Vec<&str>> = (0..a.requests)
        .map(|_| {
            let n = 1 + (next() % 4) as usize;
            (0..n)
                .map(|_| corpus[(next() % corpus.len() as u64) as usize].as_str())
                .collect()
        })
        .collect();
    let bodies: Arc<Vec<(String, usize)>> = Arc::new(
        requests
            .iter()
            .map(|texts| {
                (
                    serde_json::json!({ "input": texts }).to_string(),
                    texts.len(),
                )
            })
            .collect(),
    );

    let (sentences, tokens) = requests.iter().try_fold((0, 0), |(s, t), texts| {
        let ids = server.embedder().token_ids(texts)?;
        anyhow::Ok((s + ids.len(), t + ids.iter().map(Vec::len).sum::<usize>()))
    })?;
    println!(
        "{} requests: {sentences} sentences, {tokens} tokens ({:.1} per sentence, special tokens included)",
        requests.len(),
        tokens as f64 / sentences as f64
    );
    println!(
        "{:>11} {:>9} {:>8} {:>9} {:>12} {:>8} {:>8} {:>14}",
        "concurrency",
        "requests",
        "seconds",
        "req/s",
        "sentences/s",
        "p50 ms",
        "p99 ms",
        "requests/batch"
    );
    // Baseline without HTTP: the same requests one after another through Embedder::encode.
    server.embedder().encode(&requests[0])?; // warm-up
    let mut direct = Level::default();
    let start = Instant::now();
    for texts in &requests {
        if start.elapsed().as_secs_f64() > a.max_seconds {
            break;
        }
        let t = Instant::now();
        server.embedder().encode(texts)?;
        direct.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
        direct.sentences += texts.len();
    }
    direct.seconds = start.elapsed().as_secs_f64();
    print_row("direct", direct, None);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        rt.block_on(serve(listener, server, async {
            let _ = stopped.await;
        }))
    });

    // warm-up: a few sequential requests
    let mut conn = http::Conn::connect(addr)?;
    for (body, _) in bodies.iter().take(4) {
        let r = conn.request("POST", "/v1/embeddings", body.as_bytes())?;
        if r.status != 200 {
            bail!("warm-up request failed: {} {}", r.status, r.text());
        }
    }
    drop(conn);

    for &c in &a.concurrency {
        let before = batch_counts(addr)?;
        let level = run_level(addr, &bodies, c, a.max_seconds)?;
        let after = batch_counts(addr)?;
        let per_batch = (after.0 - before.0) / (after.1 - before.1).max(1.0);
        print_row(&c.to_string(), level, Some(per_batch));
    }
    let _ = stop.send(());
    match server_thread.join() {
        Ok(r) => r.context("server")?,
        Err(_) => bail!("the server thread panicked"),
    }
    Ok(())
}

/// One line of the table.
fn print_row(label: &str, mut level: Level, per_batch: Option<f64>) {
    let lat = &mut level.latencies_ms;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "{:>11} {:>9} {:>8.2} {:>9.1} {:>12.1} {:>8.1} {:>8.1} {:>14}",
        label,
        lat.len(),
        level.seconds,
        lat.len() as f64 / level.seconds,
        level.sentences as f64 / level.seconds,
        pct(0.50),
        pct(0.99),
        per_batch.map_or("-".to_string(), |b| format!("{b:.2}"))
    );
}

#[derive(Default)]
struct Level {
    latencies_ms: Vec<f64>,
    sentences: usize,
    seconds: f64,
}

/// `clients` threads share the request list; each stops when it is used up or time is out.
fn run_level(
    addr: SocketAddr,
    bodies: &Arc<Vec<(String, usize)>>,
    clients: usize,
    max_seconds: f64,
) -> Result<Level> {
    let taken = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (bodies, taken, barrier) = (bodies.clone(), taken.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<(Vec<f64>, usize)> {
                let mut conn = http::Conn::connect(addr)?;
                let mut lat = Vec::new();
                let mut sentences = 0;
                barrier.wait();
                let start = Instant::now();
                loop {
                    let i = taken.fetch_add(1, Ordering::Relaxed);
                    if i >= bodies.len() || start.elapsed() > Duration::from_secs_f64(max_seconds) {
                        break;
                    }
                    let (body, n) = &bodies[i];
                    let t = Instant::now();
                    let r = conn.request("POST", "/v1/embeddings", body.as_bytes())?;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    if r.status != 200 {
                        bail!("request failed: {} {}", r.status, r.text());
                    }
                    sentences += n;
                }
                Ok((lat, sentences))
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut level = Level::default();
    for h in handles {
        let (lat, n) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        level.latencies_ms.extend(lat);
        level.sentences += n;
    }
    level.seconds = start.elapsed().as_secs_f64();
    if level.latencies_ms.is_empty() {
        bail!("no request completed");
    }
    Ok(level)
}

/// (requests batched, batches run) so far, from /metrics.
fn batch_counts(addr: SocketAddr) -> Result<(f64, f64)> {
    let text = http::request(addr, "GET", "/metrics", b"")?.text();
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    };
    Ok((
        value("deberta_embed_batch_requests_sum")?,
        value("deberta_embed_batch_requests_count")?,
    ))
}
