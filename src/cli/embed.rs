//! `deberta-embed embed`: sentences from a file or stdin, one embedding per input line, as JSON
//! lines or a float32 `.npy` file, streamed in chunks (memory stays bounded).

use std::io::{BufWriter, IsTerminal, Seek, SeekFrom, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use deberta_embed::{EmbedderOptions, Embeddings};

use super::input;

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON array of floats per input line.
    Jsonl,
    /// A float32 .npy file of shape [N, dim].
    Npy,
}

#[derive(clap::Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    common: super::CommonModel,
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
    prompt: super::PromptArgs,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Sentences embedded per step of the progress bar (and per write).
pub const CHUNK: usize = 4096;

/// Bytes of input sentences held at once (with [`CHUNK`] sentences at most).
pub const CHUNK_BYTES: usize = 64 << 20;

/// How `embed` and `tokenize` bound a line: past what the tokenizer ever reads, it is skipped.
pub fn line_bound(t: &deberta_embed::tokenize::TextTokenizer) -> input::LineBound {
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

pub fn run(a: EmbedArgs) -> Result<()> {
    let embedder = super::load_budget(
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

/// A float32 `.npy` header (version 1.0, C order, little-endian) for `[rows, cols]`, always 128
/// bytes (so a placeholder can be overwritten in place once the row count is known).
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
