//! `tokenizer.json` through the `tokenizers` crate, set up as sentence-transformers sets up its
//! tokenizer: `[CLS] pieces [SEP]` via the file's post-processor, longest-first truncation to
//! max_seq_length (special tokens included), optional lower-casing, no padding (sequences are
//! packed back to back by the model).

use std::path::Path;

use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Sequence};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// A tokenizer bound to one model's max_seq_length and vocabulary.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_length: usize,
    vocab_size: usize,
}

impl TextTokenizer {
    /// Load `tokenizer.json`, truncating to `max_seq_length` tokens; ids must stay below
    /// `vocab_size` (the model's embedding rows).
    pub fn from_file(
        path: &Path,
        max_seq_length: usize,
        do_lower_case: bool,
        vocab_size: usize,
    ) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Tokenizer(format!("{} not found", path.display())));
        }
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: cannot load: {e}", path.display())))?;
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
            out.push(ids.to_vec());
        }
        Ok(out)
    }
}
