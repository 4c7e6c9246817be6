//! `deberta-embed similarity`: the similarity matrix of sentences given on the command line.

use std::io::Write;

use anyhow::Result;
use clap::ValueEnum;
use deberta_embed::Similarity;

#[derive(Clone, Copy, ValueEnum)]
enum SimFn {
    Cosine,
    Dot,
    Euclidean,
    Manhattan,
}

#[derive(clap::Args)]
pub struct SimilarityArgs {
    #[command(flatten)]
    common: super::CommonModel,
    /// Similarity function (euclidean and manhattan are negative distances, as in
    /// sentence-transformers).
    #[arg(long = "fn", value_enum, default_value = "cosine")]
    func: SimFn,
    /// The sentences to compare.
    #[arg(required = true, value_name = "SENTENCE")]
    sentences: Vec<String>,
}

pub fn run(a: SimilarityArgs) -> Result<()> {
    let embedder = super::load(&a.common, 32, None, false)?;
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
