//! `deberta-embed tokenize`: the token ids and pieces the model sees, one JSON line per input.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::embed::{line_bound, CHUNK, CHUNK_BYTES};
use super::input;

#[derive(clap::Args)]
pub struct TokenizeArgs {
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

pub fn run(a: TokenizeArgs) -> Result<()> {
    let dir = super::model_dir(&a.model, &a.revision, false)?;
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
