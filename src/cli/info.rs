//! `deberta-embed info`: the resolved configuration of a model directory, as text or JSON.

use std::path::PathBuf;

use anyhow::Result;
use deberta_embed::{Device, Embedder};

#[derive(clap::Args)]
pub struct InfoArgs {
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

pub fn run(a: InfoArgs) -> Result<()> {
    let dir = super::model_dir(&a.model, &a.revision, false)?;
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
