//! The `deberta-embed` command line: the argument parser, the flags several subcommands share,
//! and one module per subcommand (embed, similarity, tokenize, info, bench, eval, serve, rerank
//! and predict); `input` reads their input files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use deberta_embed::{Device, Embedder, EmbedderOptions, Precision};

mod bench;
mod cross;
mod embed;
mod eval;
mod info;
mod input;
#[cfg(feature = "server")]
mod serve;
mod similarity;
mod tokenize;

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
    Embed(embed::EmbedArgs),
    /// Print the similarity matrix of the given sentences.
    Similarity(similarity::SimilarityArgs),
    /// Write per input line the token ids and vocabulary pieces the model sees (special tokens
    /// included, after truncation), as one JSON object {"ids": [...], "tokens": [...]}.
    Tokenize(tokenize::TokenizeArgs),
    /// Print the resolved configuration of a model directory.
    Info(info::InfoArgs),
    /// Time the forward + pooling on fixed-shape inputs (B sequences of exactly L tokens).
    Bench(bench::BenchArgs),
    /// Evaluate a model on labelled sentence pairs, as sentence-transformers' evaluators do.
    Eval(eval::EvalArgs),
    /// Serve embeddings over HTTP: OpenAI-compatible /v1/embeddings,
    /// text-embeddings-inference-compatible /embed and /tokenize, /health, Prometheus /metrics,
    /// /info and the OpenAPI document at /openapi.json.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
    /// Not in this build: the HTTP server needs the `server` feature (a default one).
    #[cfg(not(feature = "server"))]
    #[command(hide = true, disable_help_flag = true)]
    Serve {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
    /// Precision: f32 (CPU and GPU), f16 (GPU), bf16 (GPU; on the CPU: bf16 weights, on AMX tiles where the CPU has them) or int8 (CPU: int8 weights, inputs quantized per row; AMX-INT8, AVX512-VNNI or AVX-VNNI). Default: f32 on the CPU, f16 on a GPU.
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

/// Parse the command line, run the subcommand, and turn its outcome into the exit status (an
/// error: one line on stderr).
pub fn main() -> ExitCode {
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
        Command::Embed(a) => embed::run(a),
        Command::Similarity(a) => similarity::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        #[cfg(feature = "server")]
        Command::Serve(a) => serve::run(a),
        #[cfg(not(feature = "server"))]
        Command::Serve { .. } => Err(anyhow::anyhow!(
            "serve: this build has no HTTP server (build with the `server` feature, a default one)"
        )),
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
