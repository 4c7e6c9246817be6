//! `tokenizer.json` through the `tokenizers` crate, set up as sentence-transformers sets up its
//! tokenizer: `[CLS] pieces [SEP]` via the file's post-processor, longest-first truncation to
//! max_seq_length (special tokens included), optional lower-casing, no padding (sequences are
//! packed back to back by the model).
//!
//! DeBERTa-v2/v3 tokenizers get the treatment transformers 5 gives them: `DebertaV2Tokenizer`
//! keeps the file's vocabulary and post-processor but rebuilds the normalizer (collapse
//! whitespace runs and `\n\r\t` to one space, NFC, strip on the right) and pre-tokenizer
//! (Metaspace, optional punctuation split). For files written by transformers 5 this changes
//! nothing; for older files it makes rare characters (NBSP, full-width forms, ...) tokenize as
//! sentence-transformers 5+/6 tokenizes them.

use std::path::Path;

use serde_json::Value;
use tokenizers::normalizers::{Lowercase, Replace, Strip, NFC};
use tokenizers::normalizers::{NormalizerWrapper, Sequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{ModelWrapper, SplitDelimiterBehavior};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// A tokenizer bound to one model's max_seq_length and vocabulary.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_length: usize,
    vocab_size: usize,
}

/// transformers 5's `DebertaV2Tokenizer.__init__` normalizer and pre-tokenizer.
fn rebuild_like_transformers(tok: &mut Tokenizer, cfg: &Value) -> Result<()> {
    let flag = |k: &str, default: bool| cfg.get(k).and_then(Value::as_bool).unwrap_or(default);
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if flag("do_lower_case", false) {
        norm.push(Lowercase.into());
    }
    let collapse = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s{2,}|[\n\r\t]".into()),
        " ",
    )
    .map_err(|e| Error::Tokenizer(format!("cannot build normalizer: {e}")))?;
    norm.push(collapse.into());
    norm.push(NFC.into());
    norm.push(Strip::new(false, true).into());
    tok.with_normalizer(Some(Sequence::new(norm)))
        .map_err(|e| Error::Tokenizer(format!("cannot set normalizer: {e}")))?;

    let mut pre: Vec<PreTokenizerWrapper> = Vec::new();
    if flag("split_by_punct", false) {
        pre.push(Punctuation::new(SplitDelimiterBehavior::Isolated).into());
    }
    let scheme = if flag("add_prefix_space", true) {
        PrependScheme::Always
    } else {
        PrependScheme::First
    };
    pre.push(Metaspace::new('\u{2581}', scheme, true).into());
    tok.with_pre_tokenizer(Some(PreSequence::new(pre)));
    Ok(())
}

impl TextTokenizer {
    /// Load `dir/tokenizer.json` (and `dir/tokenizer_config.json` when present), truncating to
    /// `max_seq_length` tokens; ids must stay below `vocab_size` (the model's embedding rows).
    /// `do_lower_case` is sentence-transformers' flag (sentence_bert_config.json).
    pub fn from_dir(
        dir: &Path,
        max_seq_length: usize,
        do_lower_case: bool,
        vocab_size: usize,
    ) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::Tokenizer(format!("{} not found", path.display())));
        }
        let mut inner = Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: cannot load: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            let cfg: Value = serde_json::from_str(&text).map_err(|e| {
                Error::Tokenizer(format!("{}: not valid JSON: {e}", cfg_path.display()))
            })?;
            let class = cfg
                .get("tokenizer_class")
                .and_then(Value::as_str)
                .unwrap_or("");
            if matches!(class, "DebertaV2Tokenizer" | "DebertaV2TokenizerFast")
                && matches!(inner.get_model(), ModelWrapper::Unigram(_))
            {
                rebuild_like_transformers(&mut inner, &cfg)?;
            }
        }
        if do_lower_case {
            // sentence-transformers prepends a Lowercase normalizer to the fast tokenizer's own
            // unless one is already there.
            let current = inner.get_normalizer().cloned();
            let has_lower = match &current {
                Some(NormalizerWrapper::Lowercase(_)) => true,
                Some(NormalizerWrapper::Sequence(s)) => s
                    .as_ref()
                    .iter()
                    .any(|n| matches!(n, NormalizerWrapper::Lowercase(_))),
                _ => false,
            };
            if !has_lower {
                let mut seq: Vec<NormalizerWrapper> = vec![Lowercase.into()];
                match current {
                    Some(NormalizerWrapper::Sequence(s)) => seq.extend(s),
                    Some(other) => seq.push(other),
                    None => {}
                }
                inner
                    .with_normalizer(Some(Sequence::new(seq)))
                    .map_err(|e| Error::Tokenizer(format!("cannot add lower-casing: {e}")))?;
            }
        }
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::Tokenizer(format!("cannot set truncation: {e}")))?;
        inner.with_padding(None);
        Ok(TextTokenizer {
            inner,
            max_seq_length,
            vocab_size,
        })
    }

    /// Longest token sequence produced (special tokens included).
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Token ids of each text, in input order.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        Ok(self
            .encode_batch_detailed(texts)?
            .into_iter()
            .map(|t| t.ids)
            .collect())
    }

    /// Token ids of each text, in input order, each with whether truncation to
    /// max_seq_length cut it (what a server needs to refuse over-long inputs).
    pub fn encode_batch_detailed(&self, texts: &[&str]) -> Result<Vec<Tokenized>> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        let mut out = Vec::with_capacity(encodings.len());
        for (i, enc) in encodings.iter().enumerate() {
            let ids = enc.get_ids();
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                return Err(Error::Tokenizer(format!(
                    "input {i}: token id {bad} is outside the model's vocabulary ({} rows): tokenizer.json does not belong to this model",
                    self.vocab_size
                )));
            }
            out.push(Tokenized {
                ids: ids.to_vec(),
                // truncation moves what it cuts into `overflowing` (stride 0: one piece per
                // max_seq_length-sized run of the rest)
                truncated: !enc.get_overflowing().is_empty(),
            });
        }
        Ok(out)
    }
}

/// One text's token ids (special tokens included, after truncation) and whether truncation to
/// max_seq_length removed any of its tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenized {
    /// The ids the model sees.
    pub ids: Vec<u32>,
    /// The text was longer than max_seq_length tokens and was cut.
    pub truncated: bool,
}
