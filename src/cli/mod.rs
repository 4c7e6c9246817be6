//! The `deberta-embed` command line: embed, similarity, info, bench, eval, serve, rerank, predict.

use std::io::{BufWriter, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use deberta_embed::{Device, Embedder, EmbedderOptions, Embeddings, Precision, Similarity};

mod cross;
mod eval;
mod input;
mod serve;

#[derive(Parser)]
#[command(
    name = "deberta-embed",
    version,
    about = "DeBERTa-v2/v3 sentence embeddings, numerically identical to sentence-transformers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed sentences from a file (or stdin) and write one embedding per input line.
    Embed(EmbedArgs),
    /// Print the similarity matrix of the given sentences.
    Similarity(SimilarityArgs),
    /// Write per input line the token ids and vocabulary pieces the model sees (special tokens
    /// included, after truncation), as one JSON object {"ids": [...], "tokens": [...]}.
    Tokenize(TokenizeArgs),
    /// Print the resolved configuration of a model directory.
    Info(InfoArgs),
    /// Time the forward + pooling on fixed-shape inputs (B sequences of exactly L tokens).
    Bench(BenchArgs),
    /// Evaluate a model on labelled sentence pairs, as sentence-transformers' evaluators do.
    Eval(eval::EvalArgs),
    /// Serve embeddings over HTTP: OpenAI-compatible /v1/embeddings,
    /// text-embeddings-inference-compatible /embed and /tokenize, /health, Prometheus /metrics,
    /// /info and the OpenAPI document at /openapi.json.
    Serve(serve::ServeArgs),
    /// Rank documents (one per input line) by a cross-encoder's score against a query, as
    /// sentence-transformers' CrossEncoder.rank: one JSON line {"index", "score"} per
    /// document, best first.
    Rerank(cross::RerankArgs),
    /// Score text pairs from a .tsv or .jsonl file with a cross-encoder, as
    /// sentence-transformers' CrossEncoder.predict: one JSON line per pair (a number for a
    /// one-label model, else one score per label).
    Predict(cross::PredictArgs),
}

#[derive(clap::Args)]
struct CommonModel {
    /// Model directory (sentence-transformers or transformers layout), or a Hugging Face hub id
    /// (org/name), downloaded into the Hugging Face cache on first use.
    #[arg(long, value_name = "DIR|ORG/NAME")]
    model: PathBuf,
    /// Hub revision of an org/name model: branch, tag or commit.
    #[arg(long, default_value = deberta_embed::hub::DEFAULT_REVISION)]
    revision: String,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Precision: f32 (CPU and GPU), f16 (GPU) or bf16 (GPU; on the CPU: bf16 weights, on AMX tiles where the CPU has them). Default: f32 on the CPU, f16 on a GPU.
    #[arg(long)]
    dtype: Option<String>,
    /// Worker threads (default: all cores; at most 4 per core, more is lowered to that with a
    /// notice).
    #[arg(long, value_parser = parse_threads)]
    threads: Option<usize>,
}

/// `--prompt-name` / `--prompt`, as sentence-transformers' `encode(prompt_name=, prompt=)`.
#[derive(clap::Args)]
struct PromptArgs {
    /// Prepend the model's prompt NAME (from `prompts` in config_sentence_transformers.json) to
    /// every input. Without --prompt-name or --prompt, the model's default_prompt_name applies.
    #[arg(long, value_name = "NAME")]
    prompt_name: Option<String>,
    /// Prepend TEXT to every input (wins over --prompt-name; `--prompt ""` embeds the inputs
    /// without the model's default prompt). It counts against max_seq_length.
    #[arg(long, value_name = "TEXT")]
    prompt: Option<String>,
}

impl PromptArgs {
    fn options(&self) -> deberta_embed::EncodeOptions<'_> {
        deberta_embed::EncodeOptions {
            prompt_name: self.prompt_name.as_deref(),
            prompt: self.prompt.as_deref(),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON array of floats per input line.
    Jsonl,
    /// A float32 .npy file of shape [N, dim].
    Npy,
}

#[derive(clap::Args)]
struct EmbedArgs {
    #[command(flatten)]
    common: CommonModel,
    /// Input: .txt (one sentence per line), .jsonl (a JSON string or an object with a "text"
    /// field per line), or - for text lines on stdin.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Output file (default: stdout).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Sentences per forward batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Tokens per forward batch at most (a longer single input still runs alone): bounds the
    /// activation memory. On a GPU, larger batches (e.g. --batch-size 1024
    /// --max-batch-tokens 65536) keep the device busy.
    #[arg(long, default_value_t = EmbedderOptions::default().max_batch_tokens)]
    max_batch_tokens: usize,
    /// L2-normalize the embeddings even if the model has no Normalize module.
    #[arg(long)]
    normalize: bool,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum SimFn {
    Cosine,
    Dot,
    Euclidean,
    Manhattan,
}

#[derive(clap::Args)]
struct SimilarityArgs {
    #[command(flatten)]
    common: CommonModel,
    /// Similarity function (euclidean and manhattan are negative distances, as in
    /// sentence-transformers).
    #[arg(long = "fn", value_enum, default_value = "cosine")]
    func: SimFn,
    /// The sentences to compare.
    #[arg(required = true, value_name = "SENTENCE")]
    sentences: Vec<String>,
}

#[derive(clap::Args)]
struct TokenizeArgs {
    /// Model directory (only its tokenizer and configs are read, not the weights), or a hub id
    /// (org/name).
    #[arg(long, value_name = "DIR|ORG/NAME")]
    model: PathBuf,
    /// Hub revision of an org/name model: branch, tag or commit.
    #[arg(long, default_value = deberta_embed::hub::DEFAULT_REVISION)]
    revision: String,
    /// Input, read as `embed` reads it: .txt, .jsonl, or - for stdin.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Output file (default: stdout).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
struct InfoArgs {
    /// Model directory, or a hub id (org/name).
    #[arg(long, value_name = "DIR|ORG/NAME")]
    model: PathBuf,
    /// Hub revision of an org/name model: branch, tag or commit.
    #[arg(long, default_value = deberta_embed::hub::DEFAULT_REVISION)]
    revision: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Model directory to time (its tokenizer is not used: inputs are fixed-length id runs), or
    /// a hub id (org/name).
    #[arg(
        long,
        value_name = "DIR|ORG/NAME",
        conflicts_with = "synthetic",
        required_unless_present_any = ["synthetic", "ops"]
    )]
    model: Option<PathBuf>,
    /// Hub revision of an org/name model: branch, tag or commit.
    #[arg(long, default_value = deberta_embed::hub::DEFAULT_REVISION)]
    revision: String,
    /// Built-in architecture with deterministic random weights (no download needed).
    #[arg(long, value_name = "ARCH", value_parser = ["xsmall"])]
    synthetic: Option<String>,
    /// End to end instead of fixed shapes: embed every line of FILE (.txt or .jsonl), raw text
    /// in, tokenization included, and report sentences/s (needs --model).
    #[arg(long, value_name = "FILE", requires = "model")]
    corpus: Option<PathBuf>,
    /// Reranking with a cross-encoder (needs --model): one query against 100 documents, the
    /// whole `rank` call timed (forward of the 100 pairs, head, sort). Without
    /// --rerank-input: a 16-token query and 64-token documents of random ids (83-token pairs,
    /// shortened to fit a smaller max_seq_length).
    #[arg(long, requires = "model", conflicts_with = "corpus")]
    rerank: bool,
    /// Text for --rerank, end to end (tokenization included): the first line is the query, every
    /// further line a document (.txt or .jsonl, read as `embed` reads it).
    #[arg(long, value_name = "FILE", requires = "rerank")]
    rerank_input: Option<PathBuf>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Tokens per sequence (special tokens included).
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Precision: f32 (CPU and GPU), f16 (GPU) or bf16 (GPU; on the CPU: bf16 weights, on AMX tiles where the CPU has them). Default: f32 on the CPU, f16 on a GPU.
    #[arg(long)]
    dtype: Option<String>,
    /// Worker threads (default: all cores; at most 4 per core, more is lowered to that with a
    /// notice).
    #[arg(long, value_parser = parse_threads)]
    threads: Option<usize>,
    /// Timed iterations (default: as many as fit in about 3 seconds, at least 5).
    #[arg(long)]
    iters: Option<usize>,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// End with a JSON line of the results.
    #[arg(long)]
    json: bool,
    /// The kernel testbed instead of the model (CUDA only): every GEMM and attention variant
    /// at the xsmall shapes, checked against the CPU reference, then timed, in TFLOP/s and
    /// GB/s against the device's measured peaks. Uses --device and --dtype (f16 or bf16).
    #[arg(long)]
    ops: bool,
    /// Kernel variant (CUDA only): `attention=v2` is the tensor-core attention (f16/bf16,
    /// head dim 64; otherwise v1 runs), `attention=v2-async` the same with cp.async
    /// double-buffered K/V, default v1 (same as DEBERTA_CUDA_ATTENTION);
    /// `gemm=128` runs 128x128 tensor-core GEMM tiles where K % 8 == 0, default 64 (same as
    /// DEBERTA_CUDA_GEMM); `graphs=off` launches every kernel instead of replaying CUDA graphs,
    /// default on (same as DEBERTA_CUDA_GRAPHS=0). Repeatable.
    #[arg(long, value_name = "OP=VARIANT")]
    kernel: Vec<String>,
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        if deberta_embed::error::panic_is_caught() {
            return; // the library turns it into an error, reported as such
        }
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        eprintln!("error: internal error (please report): {msg}");
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.cmd {
        Command::Embed(a) => embed(a),
        Command::Similarity(a) => similarity(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Info(a) => info(a),
        Command::Bench(a) => bench(a),
        Command::Eval(a) => eval::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Rerank(a) => cross::rerank(a),
        Command::Predict(a) => cross::predict(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `--threads`: at least 1; above [`deberta_embed::max_threads`] lowered to it, with a notice.
fn parse_threads(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of threads"))?;
    let cap = deberta_embed::max_threads();
    match n {
        0 => Err("must be at least 1".into()),
        n if n > cap => {
            eprintln!("deberta-embed: --threads {n} lowered to {cap} (4 per core)");
            Ok(cap)
        }
        n => Ok(n),
    }
}

fn parse_device(s: &str) -> Result<Device> {
    Ok(s.parse::<Device>()?)
}

/// `--dtype`, defaulting to f32 on the CPU and f16 on a GPU.
fn parse_precision(dtype: Option<&str>, device: Device) -> Result<Precision> {
    match dtype {
        Some(s) => Ok(s.parse::<Precision>()?),
        None if device == Device::Cpu => Ok(Precision::F32),
        None => Ok(Precision::F16),
    }
}

/// `--model` as a local directory: an existing path as it is, an org/name hub id as its
/// snapshot in the Hugging Face cache (downloaded first if needed, with a progress bar on a
/// terminal unless `quiet`).
fn model_dir(model: &Path, revision: &str, quiet: bool) -> Result<PathBuf> {
    let opts = deberta_embed::hub::HubOptions {
        revision: revision.to_string(),
        progress: !quiet,
        ..Default::default()
    };
    Ok(deberta_embed::hub::resolve_model(model, &opts)?)
}

fn load(
    common: &CommonModel,
    batch_size: usize,
    normalize: Option<bool>,
    quiet: bool,
) -> Result<Embedder> {
    let max_batch_tokens = EmbedderOptions::default().max_batch_tokens;
    load_budget(common, batch_size, max_batch_tokens, normalize, quiet)
}

/// [`load`] with a token budget per batch.
fn load_budget(
    common: &CommonModel,
    batch_size: usize,
    max_batch_tokens: usize,
    normalize: Option<bool>,
    quiet: bool,
) -> Result<Embedder> {
    let device = parse_device(&common.device)?;
    let opts = EmbedderOptions {
        threads: common.threads,
        batch_size,
        normalize,
        precision: parse_precision(common.dtype.as_deref(), device)?,
        max_batch_tokens,
    };
    let dir = model_dir(&common.model, &common.revision, quiet)?;
    Ok(Embedder::load_with(dir, device, opts)?)
}

/// Sentences embedded per step of the progress bar (and per write).
const CHUNK: usize = 4096;

/// Bytes of input sentences held at once (with [`CHUNK`] sentences at most).
const CHUNK_BYTES: usize = 64 << 20;

/// How `embed` and `tokenize` bound a line: past what the tokenizer ever reads, it is skipped.
fn line_bound(t: &deberta_embed::tokenize::TextTokenizer) -> input::LineBound {
    input::LineBound {
        keep: t.scan_limit() + 4096,
        squeeze: t.collapses_word_breaks(),
    }
}

/// A progress bar over the bytes of the input (hidden when stderr is not a terminal, with
/// --quiet, or for input of unknown size).
fn input_bar(inputs: &input::Inputs, quiet: bool) -> indicatif::ProgressBar {
    match inputs.size {
        Some(n) if !quiet && std::io::stderr().is_terminal() && n > 1 << 20 => {
            let b = indicatif::ProgressBar::new(n);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes}  {binary_bytes_per_sec}  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        }
        _ => indicatif::ProgressBar::hidden(),
    }
}

fn embed(a: EmbedArgs) -> Result<()> {
    let embedder = load_budget(
        &a.common,
        a.batch_size,
        a.max_batch_tokens,
        a.normalize.then_some(true),
        a.quiet,
    )?;
    // an unknown prompt name fails before any input is read
    let prompt_opts = a.prompt.options();
    embedder.resolve_prompt(&prompt_opts)?;
    let mut inputs = input::Inputs::open(&a.input, Some(line_bound(embedder.tokenizer())))?;
    let dim = embedder.dim();
    // npy needs the row count in its header: to a file, a placeholder is patched at the end;
    // to stdout, the rows are kept until the input is read.
    let mut file = match &a.output {
        Some(p) => Some(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => None,
    };
    let npy = matches!(a.format, Format::Npy);
    let mut held: Vec<f32> = Vec::new();
    let mut rows = 0usize;
    {
        let sink: Box<dyn Write + '_> = match file.as_mut() {
            Some(f) => Box::new(f),
            None => Box::new(std::io::stdout().lock()),
        };
        let mut w = BufWriter::with_capacity(1 << 20, sink);
        let to_file = a.output.is_some();
        if npy && to_file {
            w.write_all(&npy_header(0, dim))?;
        }
        let bar = input_bar(&inputs, a.quiet);
        loop {
            let chunk = inputs.next_chunk(CHUNK, CHUNK_BYTES)?;
            if chunk.is_empty() {
                break;
            }
            let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
            embedder.encode_chunked_with(&texts, CHUNK, &prompt_opts, |emb| -> Result<()> {
                rows += emb.len();
                match a.format {
                    Format::Jsonl => write_jsonl(&mut w, &emb).context("writing output")?,
                    Format::Npy if to_file => emb
                        .as_slice()
                        .iter()
                        .try_for_each(|x| w.write_all(&x.to_le_bytes()))
                        .context("writing output")?,
                    Format::Npy => held.extend_from_slice(emb.as_slice()),
                }
                Ok(())
            })?;
            bar.set_position(inputs.read);
        }
        bar.finish_and_clear();
        if npy && !to_file {
            w.write_all(&npy_header(rows, dim))?;
            held.iter()
                .try_for_each(|x| w.write_all(&x.to_le_bytes()))
                .context("writing output")?;
        }
        w.flush().context("writing output")?;
    }
    if let (true, Some(f)) = (npy, file.as_mut()) {
        f.seek(SeekFrom::Start(0)).context("writing output")?;
        f.write_all(&npy_header(rows, dim))
            .context("writing output")?;
    }
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let dir = model_dir(&a.model, &a.revision, false)?;
    let tokenizer = deberta_embed::tokenize::TextTokenizer::load(&dir)?;
    let mut inputs = input::Inputs::open(&a.input, Some(line_bound(&tokenizer)))?;
    let sink: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = BufWriter::with_capacity(1 << 20, sink);
    loop {
        let chunk = inputs.next_chunk(CHUNK, CHUNK_BYTES)?;
        if chunk.is_empty() {
            break;
        }
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for t in tokenizer.tokenize(&texts, true)? {
            let line = serde_json::json!({"ids": t.ids, "tokens": t.tokens});
            serde_json::to_writer(&mut w, &line).context("writing output")?;
            w.write_all(b"\n").context("writing output")?;
        }
    }
    w.flush().context("writing output")?;
    Ok(())
}

fn write_jsonl(w: &mut impl Write, emb: &Embeddings) -> Result<()> {
    let mut line = String::new();
    for row in emb.iter() {
        line.clear();
        line.push('[');
        for (j, x) in row.iter().enumerate() {
            if j > 0 {
                line.push(',');
            }
            // Display of f32 is the shortest string that reads back to the same f32.
            line.push_str(&x.to_string());
        }
        line.push_str("]\n");
        w.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// .npy version 1.0 header for a C-order little-endian float32 [rows, cols] array.
/// A float32 `.npy` header for `[rows, cols]`, always 128 bytes (so a placeholder can be
/// overwritten in place once the row count is known).
fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic (6) + version (2) + header length (2) + dict + padding + '\n' = 128
    let pad = 128usize.saturating_sub(10 + dict.len() + 1);
    let header = format!("{dict}{}\n", " ".repeat(pad));
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

fn similarity(a: SimilarityArgs) -> Result<()> {
    let embedder = load(&a.common, 32, None, false)?;
    let texts: Vec<&str> = a.sentences.iter().map(String::as_str).collect();
    let emb = embedder.encode(&texts)?;
    let f = match a.func {
        SimFn::Cosine => Similarity::Cosine,
        SimFn::Dot => Similarity::Dot,
        SimFn::Euclidean => Similarity::Euclidean,
        SimFn::Manhattan => Similarity::Manhattan,
    };
    let m = f.matrix(&emb, &emb);
    let n = texts.len();
    let mut out = std::io::stdout().lock();
    for (i, t) in texts.iter().enumerate() {
        let cells: Vec<String> = m[i * n..(i + 1) * n]
            .iter()
            .map(|v| format!("{v:>9.4}"))
            .collect();
        writeln!(
            out,
            "{}  [{i}] {}",
            cells.join(" "),
            t.replace(['\n', '\t'], " ")
        )?;
    }
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let dir = model_dir(&a.model, &a.revision, false)?;
    let kind = deberta_embed::cross::model_kind(&dir)?;
    let e = match kind {
        deberta_embed::ModelKind::Embedding => Embedder::load(&dir, Device::Cpu)?,
        deberta_embed::ModelKind::CrossEncoder => {
            deberta_embed::CrossEncoder::load(&dir, Device::Cpu)?.into_embedder()
        }
    };
    let c = e.config();
    let p = e.pipeline();
    let pooling: Vec<&str> = p.pooling.iter().map(|m| m.name()).collect();
    let pos_att: Vec<&str> = [("c2p", c.c2p), ("p2c", c.p2c)]
        .iter()
        .filter(|x| x.1)
        .map(|x| x.0)
        .collect();
    let head = e.head_config().map(|h| {
        serde_json::json!({
            "num_labels": h.num_labels,
            "labels": h.labels,
            "activation_fn": h.activation.name(),
            "pooler_hidden_act": format!("{:?}", h.pooler_act),
        })
    });
    let v = serde_json::json!({
        "model": a.model.display().to_string(),
        "model_dir": dir.display().to_string(),
        "kind": match kind {
            deberta_embed::ModelKind::Embedding => "embedding",
            deberta_embed::ModelKind::CrossEncoder => "cross-encoder",
        },
        "cross_encoder": head,
        "layout": format!("{:?}", p.layout),
        "dim": e.dim(),
        "pooling": pooling,
        "normalize": e.normalizes(),
        "prompts": e.prompts(),
        "default_prompt_name": e.default_prompt_name(),
        "include_prompt": p.include_prompt,
        "max_seq_length": e.max_seq_length(),
        "do_lower_case": p.do_lower_case,
        "parameters": e.num_params(),
        "config": {
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "embedding_size": c.embedding_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "attention_head_size": c.head_dim,
            "intermediate_size": c.intermediate_size,
            "layer_norm_eps": c.layer_norm_eps,
            "max_position_embeddings": c.max_position_embeddings,
            "position_biased_input": c.position_biased_input,
            "type_vocab_size": c.type_vocab_size,
            "relative_attention": c.relative_attention,
            "max_relative_positions": c.max_relative_positions,
            "position_buckets": c.position_buckets,
            "att_span": c.att_span,
            "norm_rel_ebd": if c.norm_rel_ebd { "layer_norm" } else { "none" },
            "share_att_key": c.share_att_key,
            "pos_att_type": pos_att,
            "conv": c.conv.as_ref().map(|cv| serde_json::json!({
                "kernel_size": cv.kernel_size, "groups": cv.groups, "act": format!("{:?}", cv.act).to_lowercase()
            })),
        }
    });
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!("model            {}", a.model.display());
    if dir != a.model {
        println!("directory        {}", dir.display());
    }
    println!("layout           {:?}", p.layout);
    if let Some(h) = e.head_config() {
        println!(
            "cross-encoder    {} labels ({}), activation {}, pooler {:?}",
            h.num_labels,
            h.labels.join(", "),
            h.activation.name(),
            h.pooler_act
        );
    } else {
        println!("embedding dim    {}", e.dim());
    }
    println!("pooling          {}", pooling.join(" + "));
    println!("normalize        {}", e.normalizes());
    let named: Vec<String> = e
        .prompts()
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    println!("prompts          {}", named.join(", "));
    if let Some(d) = e.default_prompt_name() {
        println!("default prompt   {d}");
    }
    if !p.include_prompt {
        println!("include_prompt   false (prompt tokens left out of pooling)");
    }
    println!("max_seq_length   {}", e.max_seq_length());
    println!("parameters       {}", e.num_params());
    println!("config:");
    if let Some(obj) = v["config"].as_object() {
        for (k, val) in obj {
            println!("  {k:<24} {val}");
        }
    }
    Ok(())
}

/// Sort the timings; return (median, mean, min).
fn summarize(times: &mut [f64]) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    (times[times.len() / 2], mean, times[0])
}

/// `bench --ops`: the CUDA kernel testbed (`backend::cuda::testbed`).
#[cfg(feature = "cuda")]
fn bench_ops(a: &BenchArgs, device: Device, precision: Precision) -> Result<()> {
    use deberta_embed::backend::cuda::{testbed, Gpu};
    let Device::Cuda(ordinal) = device else {
        bail!("--ops times the CUDA kernels: add --device cuda (the CPU ops have `cargo bench`)");
    };
    let gpu = Gpu::new(ordinal)?;
    let dt = precision.into();
    let (peaks, rows) = testbed::run(&gpu, dt)?;
    println!(
        "{} ({} SMs), {precision}: measured peaks {:.1} TFLOP/s (mma.sync probe), {:.0} GB/s (device copy)",
        gpu.name(),
        gpu.sm_count(),
        peaks.mma_tflops,
        peaks.copy_gbps
    );
    println!(
        "{:<10} {:<18} {:<20} {:>10} {:>6} {:>10} {:>9} {:>6} {:>8} {:>6}",
        "op",
        "variant",
        "shape",
        "rel err",
        "check",
        "median us",
        "TFLOP/s",
        "%peak",
        "GB/s",
        "%peak"
    );
    for r in &rows {
        println!(
            "{:<10} {:<18} {:<20} {:>10.2e} {:>6} {:>10.1} {:>9.1} {:>5.0}% {:>8.0} {:>5.0}%",
            r.op,
            r.variant,
            r.shape,
            r.rel_err,
            if r.ok() { "ok" } else { "FAIL" },
            r.median_us,
            r.tflops,
            100.0 * r.tflops / peaks.mma_tflops,
            r.gbps,
            100.0 * r.gbps / peaks.copy_gbps
        );
    }
    if a.json {
        let v = serde_json::json!({
            "device": gpu.name(),
            "dtype": precision.to_string(),
            "peak_mma_tflops": peaks.mma_tflops,
            "peak_copy_gbps": peaks.copy_gbps,
            "rows": rows.iter().map(|r| serde_json::json!({
                "op": r.op, "variant": r.variant, "shape": r.shape, "rel_err": r.rel_err,
                "tolerance": r.tolerance, "ok": r.ok(), "median_us": r.median_us,
                "tflops": r.tflops, "gbps": r.gbps,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
    }
    let failed = rows.iter().filter(|r| !r.ok()).count();
    if failed > 0 {
        bail!("{failed} kernel variant(s) failed their check against the CPU reference");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn bench_ops(_: &BenchArgs, _: Device, _: Precision) -> Result<()> {
    bail!("--ops times the CUDA kernels: this build has no CUDA support (rebuild with --features cuda)")
}

/// `bench --corpus`: raw text in, embeddings out, tokenization included.
/// `bench --rerank`: `CrossEncoder::rank` of one query against 100 documents (or the
/// documents of --rerank-input), timed whole.
fn bench_rerank(a: &BenchArgs, dir: &Path, device: Device, opts: EmbedderOptions) -> Result<()> {
    const DOCS: usize = 100;
    let opts = EmbedderOptions {
        max_batch_tokens: EmbedderOptions::default().max_batch_tokens,
        ..opts
    };
    let t0 = Instant::now();
    let ce = deberta_embed::CrossEncoder::load_with(dir, device, opts)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    // (workload label, pairs, tokens, one timed call)
    type Run<'a> = Box<dyn Fn() -> Result<Vec<deberta_embed::cross::Ranked>> + 'a>;
    let lines;
    let (label, pairs, tokens, run): (String, usize, usize, Run) = match &a.rerank_input {
        Some(f) => {
            lines = input::read_inputs(f)?;
            let Some((query, docs)) = lines.split_first() else {
                bail!("{}: empty (the first line is the query)", f.display());
            };
            if docs.is_empty() {
                bail!("{}: no documents after the query line", f.display());
            }
            let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
            let refs: Vec<(&str, &str)> = docs.iter().map(|d| (query.as_str(), *d)).collect();
            let tokens = ce.pair_ids(&refs)?.iter().map(Vec::len).sum();
            let n = docs.len();
            (
                format!("{} (text, tokenization included)", f.display()),
                n,
                tokens,
                Box::new(move || Ok(ce.rank(query, &docs, None)?)),
            )
        }
        None => {
            let cfg = ce.embedder().config();
            let vocab = cfg.vocab_size as u64;
            let second = if cfg.type_vocab_size > 1 {
                cfg.vocab_size as u32
            } else {
                0
            };
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                5 + (state % (vocab - 5)) as u32
            };
            // 16 + 64 tokens, or as much as a shorter max_seq_length leaves
            let room = ce.max_seq_length().saturating_sub(3);
            let q_len = 16.min(room / 4);
            let d_len = 64.min(room - q_len);
            let query: Vec<u32> = (0..q_len).map(|_| next()).collect();
            let ids: Vec<Vec<u32>> = (0..DOCS)
                .map(|_| {
                    let mut s = vec![1];
                    s.extend(&query);
                    s.push(2);
                    // the document and its [SEP] have token type 1 (folded into the id)
                    s.extend((0..d_len).map(|_| next() + second));
                    s.push(2 + second);
                    s
                })
                .collect();
            let tokens = ids.iter().map(Vec::len).sum();
            (
                format!("1 query ({q_len} tokens) x {DOCS} documents ({d_len} tokens), random ids"),
                DOCS,
                tokens,
                Box::new(move || {
                    let mut s = ce.logits_of_ids(&ids)?;
                    ce.activate(&mut s, false);
                    Ok(deberta_embed::cross::rank_scores(s.as_slice(), None))
                }),
            )
        }
    };
    for _ in 0..a.warmup {
        std::hint::black_box(run()?);
    }
    let mut times = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        std::hint::black_box(run()?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let done = match a.iters {
            Some(n) => times.len() >= n,
            None => times.len() >= 5 && start.elapsed().as_secs_f64() > 3.0,
        };
        if done {
            break;
        }
    }
    let (median, mean, min) = summarize(&mut times);
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    println!(
        "rerank {label} on {device} ({threads} threads, batch {}): {pairs} pairs, {tokens} tokens, {} iterations",
        a.batch_size,
        times.len()
    );
    println!("load {load_ms:.1} ms");
    println!("median {median:.2} ms   mean {mean:.2} ms   min {min:.2} ms per rank call");
    println!(
        "{:.1} pairs/s   {:.0} tokens/s",
        pairs as f64 / (median / 1e3),
        tokens as f64 / (median / 1e3)
    );
    if a.json {
        let v = serde_json::json!({
            "workload": "rerank",
            "model": dir.display().to_string(),
            "input": label,
            "device": device.to_string(),
            "threads": threads,
            "batch_size": a.batch_size,
            "pairs": pairs,
            "tokens": tokens,
            "iters": times.len(),
            "load_ms": load_ms,
            "median_ms": median,
            "mean_ms": mean,
            "min_ms": min,
            "pairs_per_s": pairs as f64 / (median / 1e3),
            "tokens_per_s": tokens as f64 / (median / 1e3),
        });
        println!("{v}");
    }
    Ok(())
}

fn bench_corpus(
    a: &BenchArgs,
    corpus: &Path,
    dir: &Path,
    device: Device,
    opts: EmbedderOptions,
) -> Result<()> {
    let inputs = input::read_inputs(corpus)?;
    if inputs.is_empty() {
        bail!("{}: no sentences", corpus.display());
    }
    let t0 = Instant::now();
    let e = Embedder::load_with(dir, device, opts)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let texts: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let t1 = Instant::now();
    e.encode(&texts[..1])?;
    let first_ms = t1.elapsed().as_secs_f64() * 1e3;
    let tokens: usize = e.token_ids(&texts)?.iter().map(Vec::len).sum();
    for _ in 0..a.warmup.min(1) {
        e.encode(&texts)?;
    }
    let iters = a.iters.unwrap_or(3).max(1);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        // as `embed` runs: chunks, tokenization overlapped with a GPU's forward
        let t = Instant::now();
        e.encode_chunked(&texts, CHUNK, |emb| -> Result<()> {
            std::hint::black_box(emb);
            Ok(())
        })?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (median, mean, min) = summarize(&mut times);
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    let n = texts.len() as f64;
    println!(
        "{} on {device} ({threads} threads): {} sentences, {tokens} tokens, {} iterations",
        corpus.display(),
        texts.len(),
        times.len()
    );
    println!("load {load_ms:.1} ms, first embedding {first_ms:.1} ms");
    println!("median {median:.1} ms   mean {mean:.1} ms   min {min:.1} ms");
    println!(
        "{:.1} sentences/s   {:.0} tokens/s",
        n / (median / 1e3),
        tokens as f64 / (median / 1e3)
    );
    if a.json {
        let v = serde_json::json!({
            "model": dir.display().to_string(),
            "corpus": corpus.display().to_string(),
            "device": device.to_string(),
            "threads": threads,
            "batch_size": a.batch_size,
            "sentences": texts.len(),
            "tokens": tokens,
            "iters": times.len(),
            "load_ms": load_ms,
            "first_embedding_ms": first_ms,
            "median_ms": median,
            "mean_ms": mean,
            "min_ms": min,
            "sentences_per_s": n / (median / 1e3),
            "tokens_per_s": tokens as f64 / (median / 1e3),
        });
        println!("{v}");
    }
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    if a.batch_size == 0 || a.seq_len < 2 {
        bail!("--batch-size must be >= 1 and --seq-len >= 2");
    }
    let precision = parse_precision(a.dtype.as_deref(), device)?;
    for spec in &a.kernel {
        let (op, variant) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--kernel {spec}: expected OP=VARIANT, e.g. attention=v2"))?;
        if device == Device::Cpu {
            bail!("--kernel {spec}: kernel variants exist on the CUDA device only");
        }
        match op.trim() {
            "attention" => {
                let v = variant.trim().to_ascii_lowercase();
                if !matches!(v.as_str(), "v1" | "v2" | "v2-async") {
                    bail!("--kernel {spec}: attention variants are v1, v2 and v2-async");
                }
                // Read once when the device is opened (below); nothing else runs yet.
                std::env::set_var("DEBERTA_CUDA_ATTENTION", v);
            }
            "gemm" => {
                let v = variant.trim().to_ascii_lowercase();
                if !matches!(v.as_str(), "64" | "64x64" | "128" | "128x128") {
                    bail!("--kernel {spec}: gemm variants are 64 and 128");
                }
                std::env::set_var("DEBERTA_CUDA_GEMM", v);
            }
            "graphs" => {
                let v = match variant.trim().to_ascii_lowercase().as_str() {
                    "on" | "1" => "1",
                    "off" | "0" => "0",
                    _ => bail!("--kernel {spec}: graphs is on or off"),
                };
                std::env::set_var("DEBERTA_CUDA_GRAPHS", v);
            }
            other => {
                bail!("--kernel {spec}: no variants of `{other}` (attention=v1|v2|v2-async, gemm=64|128, graphs=on|off)")
            }
        }
    }
    if a.ops {
        return bench_ops(&a, device, precision);
    }
    let opts = EmbedderOptions {
        threads: a.threads,
        batch_size: a.batch_size,
        normalize: None,
        precision,
        // one forward over the whole B x L batch, as the peers run it
        max_batch_tokens: a.batch_size.saturating_mul(a.seq_len),
    };
    let dir = match &a.model {
        Some(m) => Some(model_dir(m, &a.revision, false)?),
        None => None,
    };
    if let (Some(corpus), Some(dir)) = (&a.corpus, &dir) {
        return bench_corpus(&a, corpus, dir, device, opts);
    }
    if let (true, Some(dir)) = (a.rerank, &dir) {
        return bench_rerank(&a, dir, device, opts);
    }
    // Inputs: [CLS] random pieces [SEP], exactly seq_len tokens each.
    let make_ids = |vocab: usize| -> Vec<Vec<u32>> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        (0..a.batch_size)
            .map(|_| {
                let mut s = Vec::with_capacity(a.seq_len);
                s.push(1);
                for _ in 1..a.seq_len - 1 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    s.push(4 + (state % (vocab as u64 - 4)) as u32);
                }
                s.push(2);
                s
            })
            .collect()
    };
    // (label, model FLOPs per token at --seq-len, one timed call)
    type Run = Box<dyn Fn() -> Result<()>>;
    let (label, flops_per_token, run): (String, f64, Run) = match (&dir, &a.synthetic) {
        (Some(dir), _) => {
            let e = Embedder::load_with(dir, device, opts)?;
            if a.seq_len > e.max_seq_length() {
                bail!(
                    "--seq-len {} exceeds the model's max_seq_length {}",
                    a.seq_len,
                    e.max_seq_length()
                );
            }
            let ids = make_ids(e.config().vocab_size);
            (
                dir.display().to_string(),
                e.config().forward_flops_per_token(a.seq_len),
                Box::new(move || e.encode_ids(&ids).map(|_| ()).map_err(Into::into)),
            )
        }
        #[cfg(feature = "cuda")]
        (None, Some(_)) if matches!(device, Device::Cuda(_)) => {
            let Device::Cuda(ordinal) = device else {
                unreachable!()
            };
            let m = deberta_embed::backend::cuda::synthetic_xsmall(ordinal, precision)?;
            if a.seq_len > m.config().max_position_embeddings {
                bail!("--seq-len must be <= 512 for xsmall");
            }
            let ids = make_ids(m.config().vocab_size);
            let modes = [deberta_embed::PoolingMode::Mean];
            (
                "synthetic xsmall".to_string(),
                m.config().forward_flops_per_token(a.seq_len),
                Box::new(move || {
                    m.encode_batches(&ids, ids.len().max(1), usize::MAX, &modes)
                        .map(|_| ())
                        .map_err(Into::into)
                }),
            )
        }
        (None, Some(_)) => {
            if device != Device::Cpu {
                bail!("--synthetic runs on the CPU only in this build");
            }
            let e = Embedder::synthetic_xsmall(opts)?;
            if a.seq_len > e.config().max_position_embeddings {
                bail!("--seq-len must be <= 512 for xsmall");
            }
            let ids = make_ids(e.config().vocab_size);
            (
                "synthetic xsmall".to_string(),
                e.config().forward_flops_per_token(a.seq_len),
                Box::new(move || e.encode_ids(&ids).map(|_| ()).map_err(Into::into)),
            )
        }
        (None, None) => bail!("give --model DIR or --synthetic xsmall"),
    };
    for _ in 0..a.warmup {
        run()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let done = match a.iters {
            Some(n) => times.len() >= n,
            None => times.len() >= 5 && start.elapsed().as_secs_f64() > 3.0,
        };
        if done {
            break;
        }
    }
    let (median, mean, min) = summarize(&mut times);
    let tokens = (a.batch_size * a.seq_len) as f64;
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads);
    println!(
        "{label} on {device} ({threads} threads): batch {} x {} tokens, {} iterations",
        a.batch_size,
        a.seq_len,
        times.len()
    );
    let cpu_kernels = cpu_kernels(device, precision);
    if let Some(k) = &cpu_kernels {
        println!("cpu kernels: {k}");
    }
    println!("median {median:.3} ms   mean {mean:.3} ms   min {min:.3} ms");
    let model_tflops = tokens * flops_per_token / (median / 1e3) / 1e12;
    println!(
        "{:.0} tokens/s   {:.1} sentences/s   {model_tflops:.3} TFLOP/s of encoder math ({:.1} MFLOP/token)",
        tokens / (median / 1e3),
        a.batch_size as f64 / (median / 1e3),
        flops_per_token / 1e6
    );
    let device_mem = device_memory(device);
    if let Some((used, total)) = device_mem {
        println!(
            "device memory in use after the run: {:.0} MiB of {:.0} MiB (whole device)",
            used as f64 / 1048576.0,
            total as f64 / 1048576.0
        );
    }
    if a.json {
        let v = serde_json::json!({
            "model": label,
            "device": device.to_string(),
            "dtype": precision.to_string(),
            "threads": threads,
            "batch_size": a.batch_size,
            "seq_len": a.seq_len,
            "iters": times.len(),
            "median_ms": median,
            "mean_ms": mean,
            "min_ms": min,
            "tokens_per_s": tokens / (median / 1e3),
            "sentences_per_s": a.batch_size as f64 / (median / 1e3),
            "flops_per_token": flops_per_token,
            "model_tflops": model_tflops,
            "device_mem_used_mib": device_mem.map(|(u, _)| u as f64 / 1048576.0),
            "cpu_kernels": cpu_kernels,
        });
        println!("{v}");
    }
    Ok(())
}

/// Which CPU GEMM kernels a forward at `precision` runs (the SIMD level; for bf16, the weight
/// form this CPU gets: AMX tiles, `avx512_bf16` dot products or widened storage); `None` on a GPU.
fn cpu_kernels(device: Device, precision: Precision) -> Option<String> {
    use deberta_embed::backend::cpu::gemm::{bf16_gemm_form, simd_level, Bf16Form};
    if device != Device::Cpu {
        return None;
    }
    let bf16 = match (precision, bf16_gemm_form()) {
        (Precision::BF16, Bf16Form::Tiles) => ", bf16 weights on AMX tiles",
        (Precision::BF16, Bf16Form::Dot) => ", bf16 weights as avx512_bf16 dot products",
        (Precision::BF16, Bf16Form::Storage) => ", bf16 weights widened to f32",
        (Precision::BF16, Bf16Form::F32) => {
            ", bf16 requested but weights kept f32 (every bf16 kernel is slower on this CPU)"
        }
        _ => "",
    };
    Some(format!("gemm {}{bf16}", simd_level()))
}

/// (used, total) bytes of the GPU's memory, all processes included; `None` on the CPU.
fn device_memory(device: Device) -> Option<(usize, usize)> {
    match device {
        Device::Cpu => None,
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => deberta_embed::backend::cuda::device::memory_in_use().ok(),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => None,
    }
}
