//! Text to token ids, exactly as sentence-transformers 6.3 with transformers 5.25 tokenizes for a
//! DeBERTa-v2/v3 model: `[CLS] pieces [SEP]`, longest-first truncation to max_seq_length
//! (special tokens included), optional lower-casing, no padding (sequences are packed back to
//! back by the model).
//!
//! transformers' `DebertaV2Tokenizer` keeps a tokenizer file's vocabulary but builds its own
//! normalizer and pre-tokenizer, and so does this module:
//! - When the file (or `spm.model`) carries sentencepiece's precompiled normalization table
//!   (DeBERTa-v3's is `nmt_nfkc`: NFKC, control characters dropped, every kind of space made a
//!   plain space), the normalizer is that table, then right-strip, then runs of spaces collapsed
//!   to one. This is what the model was trained with; full-width letters, ligatures, `…`, NBSP,
//!   zero-width spaces and the like tokenize as sentencepiece tokenizes them.
//! - Without a table (files written by transformers 5.0-5.24, which dropped it): whitespace runs
//!   and `\n\r\t` collapsed to one space, NFC, right-strip.
//! - Pre-tokenizer: Metaspace (`▁`, prefix space unless `add_prefix_space` is false), after a
//!   punctuation split when `split_by_punct` is set.
//!
//! A directory with `spm.model` and no `tokenizer.json` gets the tokenizer transformers
//! converts from the sentencepiece model (`spm.rs`).

mod spm;

use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Strip, NFC};
use tokenizers::normalizers::{NormalizerWrapper, Sequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::utils::truncation::{truncate_encodings, TruncationParams, TruncationStrategy};
use tokenizers::{AddedToken, Encoding, ModelWrapper, PostProcessor, SplitDelimiterBehavior};
use tokenizers::{Tokenizer, TruncationDirection};

use crate::error::{Error, Result};

/// A tokenizer bound to one model's max_seq_length and vocabulary.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_length: usize,
    vocab_size: usize,
    /// Special tokens the post-processor adds to one text (2: `[CLS]`, `[SEP]`).
    n_special: usize,
    /// The pipeline is the DeBERTa one (Metaspace words), so truncation may look at a prefix.
    prefix_safe: bool,
}

/// One text as the model sees it: special tokens included, after truncation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenized {
    /// The ids the model sees.
    pub ids: Vec<u32>,
    /// The vocabulary piece of each id (`▁Hello`, `[CLS]`, ...); for the unknown id, the text
    /// that had no piece.
    pub tokens: Vec<String>,
    /// Whether each token is a special token (`[CLS]`, `[SEP]`, ...) rather than text.
    pub special: Vec<bool>,
    /// For each token, the span of the original text it came from, in characters
    /// (`start..stop`); special tokens added around the text have `(0, 0)`.
    pub offsets: Vec<(usize, usize)>,
    /// The text has more than max_seq_length tokens (and was cut, unless asked not to be).
    pub truncated: bool,
}

fn tok_err(what: &str) -> impl Fn(tokenizers::Error) -> Error + '_ {
    move |e| Error::Tokenizer(format!("{what}: {e}"))
}

/// A special token as a tokenizer_config.json names it (`"[CLS]"` or `{"content": "[CLS]", ...}`).
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The named special tokens and the added-token table of a tokenizer_config.json.
struct SpecialTokens {
    unk: String,
    cls: String,
    sep: String,
    /// bos, eos, unk, sep, pad, cls, mask: transformers' attribute order.
    named: Vec<String>,
    /// `added_tokens_decoder` (id, token) and `added_tokens.json` entries.
    declared: Vec<(u32, AddedToken)>,
}

impl SpecialTokens {
    fn from_config(cfg: &Value, added_json: Option<&Value>) -> Self {
        let name = |key: &str, default: &str| {
            cfg.get(key)
                .and_then(token_content)
                .unwrap_or_else(|| default.to_string())
        };
        let named: Vec<String> = [
            ("bos_token", "[CLS]"),
            ("eos_token", "[SEP]"),
            ("unk_token", "[UNK]"),
            ("sep_token", "[SEP]"),
            ("pad_token", "[PAD]"),
            ("cls_token", "[CLS]"),
            ("mask_token", "[MASK]"),
        ]
        .iter()
        .map(|(k, d)| name(k, d))
        .collect();
        let mut declared = Vec::new();
        if let Some(Value::Object(dec)) = cfg.get("added_tokens_decoder") {
            for (id, t) in dec {
                let (Ok(id), Some(content)) = (id.parse::<u32>(), token_content(t)) else {
                    continue;
                };
                let flag = |k: &str, d: bool| t.get(k).and_then(Value::as_bool).unwrap_or(d);
                let tok = AddedToken::from(content, flag("special", true))
                    .normalized(flag("normalized", false))
                    .lstrip(flag("lstrip", false))
                    .rstrip(flag("rstrip", false))
                    .single_word(flag("single_word", false));
                declared.push((id, tok));
            }
        }
        if let Some(Value::Object(extra)) = added_json {
            for (content, id) in extra {
                if let Some(id) = id.as_u64().and_then(|i| u32::try_from(i).ok()) {
                    if !declared.iter().any(|(_, t)| t.content == *content) {
                        declared.push((id, AddedToken::from(content.clone(), true)));
                    }
                }
            }
        }
        declared.sort_by_key(|(id, _)| *id);
        SpecialTokens {
            unk: named[2].clone(),
            cls: named[5].clone(),
            sep: named[3].clone(),
            named,
            declared,
        }
    }

    /// Every token to register, each once: the named ones (with the flags the added-token
    /// table gives them, else special and not normalized), then the rest of the table.
    fn in_order(&self) -> Vec<AddedToken> {
        let mut out: Vec<AddedToken> = Vec::new();
        let mut push = |t: AddedToken| {
            if !out.iter().any(|o| o.content == t.content) {
                out.push(t);
            }
        };
        for n in &self.named {
            match self.declared.iter().find(|(_, t)| t.content == *n) {
                Some((_, t)) => push(t.clone()),
                None => push(AddedToken::from(n.clone(), true)),
            }
        }
        for (_, t) in &self.declared {
            push(t.clone());
        }
        out
    }
}

/// The tokenizer_config.json settings transformers' `DebertaV2Tokenizer` reads.
pub(crate) struct DebertaOptions {
    do_lower_case: bool,
    split_by_punct: bool,
    add_prefix_space: bool,
    specials: SpecialTokens,
}

impl DebertaOptions {
    fn from_config(cfg: &Value, added_json: Option<&Value>) -> Self {
        let flag = |k: &str, default: bool| cfg.get(k).and_then(Value::as_bool).unwrap_or(default);
        DebertaOptions {
            do_lower_case: flag("do_lower_case", false),
            split_by_punct: flag("split_by_punct", false),
            add_prefix_space: flag("add_prefix_space", true),
            specials: SpecialTokens::from_config(cfg, added_json),
        }
    }
}

/// `DebertaV2Tokenizer`'s normalizer, pre-tokenizer and decoder (see the module doc).
fn set_deberta_pipeline(
    tok: &mut Tokenizer,
    opts: &DebertaOptions,
    charsmap: Option<Precompiled>,
) -> Result<()> {
    let replace = |pattern: &str, with: &str| {
        Replace::new(ReplacePattern::Regex(pattern.into()), with)
            .map_err(tok_err("cannot build the normalizer"))
    };
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if opts.do_lower_case {
        norm.push(Lowercase.into());
    }
    match charsmap {
        Some(table) => {
            norm.push(table.into());
            norm.push(Strip::new(false, true).into());
            norm.push(replace(" {2,}", " ")?.into());
        }
        None => {
            norm.push(replace(r"\s{2,}|[\n\r\t]", " ")?.into());
            norm.push(NFC.into());
            norm.push(Strip::new(false, true).into());
        }
    }
    tok.with_normalizer(Some(Sequence::new(norm)))
        .map_err(tok_err("cannot set the normalizer"))?;

    let mut pre: Vec<PreTokenizerWrapper> = Vec::new();
    if opts.split_by_punct {
        pre.push(Punctuation::new(SplitDelimiterBehavior::Isolated).into());
    }
    let scheme = if opts.add_prefix_space {
        PrependScheme::Always
    } else {
        PrependScheme::First
    };
    pre.push(Metaspace::new('\u{2581}', scheme, true).into());
    tok.with_pre_tokenizer(Some(PreSequence::new(pre)));
    tok.with_decoder(Some(DecoderWrapper::Metaspace(Metaspace::new(
        '\u{2581}', scheme, true,
    ))));
    Ok(())
}

/// `[CLS] $A [SEP]` (pairs: `[CLS] $A [SEP] $B [SEP]`, B with type id 1).
fn set_post_processor(tok: &mut Tokenizer, opts: &DebertaOptions) -> Result<()> {
    let (cls, sep) = (&opts.specials.cls, &opts.specials.sep);
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| Error::Tokenizer(format!("special token {t} is not in the vocabulary")))
    };
    let (cls_id, sep_id) = (id(cls)?, id(sep)?);
    let template = TemplateProcessing::builder()
        .try_single(format!("{cls}:0 $A:0 {sep}:0"))
        .and_then(|b| b.try_pair(format!("{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1")))
        .map_err(|e| Error::Tokenizer(format!("cannot build the post-processor: {e}")))?
        .special_tokens(vec![(cls.clone(), cls_id), (sep.clone(), sep_id)])
        .build()
        .map_err(|e| Error::Tokenizer(format!("cannot build the post-processor: {e}")))?;
    tok.with_post_processor(Some(template));
    Ok(())
}

/// The precompiled normalization table inside a tokenizer.json's normalizer, if any.
fn find_charsmap(n: Option<&NormalizerWrapper>) -> Option<Precompiled> {
    match n? {
        NormalizerWrapper::Precompiled(p) => Some(p.clone()),
        NormalizerWrapper::Sequence(s) => s.as_ref().iter().find_map(|n| find_charsmap(Some(n))),
        _ => None,
    }
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Tokenizer(format!("{}: not valid JSON: {e}", path.display())))
}

impl TextTokenizer {
    /// The tokenizer of a model directory (or hub id, see [`crate::hub`]) exactly as
    /// [`crate::Embedder::load`] sets it up, without reading the weights.
    pub fn load(model_dir: &Path) -> Result<Self> {
        let dir = crate::hub::resolve_model(model_dir, &crate::hub::HubOptions::default())?;
        let (pipeline, cfg) = crate::config::PipelineConfig::load(&dir)?;
        Self::for_pipeline(&pipeline, &cfg)
    }

    /// The tokenizer of a resolved model directory.
    pub(crate) fn for_pipeline(
        pipeline: &crate::config::PipelineConfig,
        cfg: &crate::config::ModelConfig,
    ) -> Result<Self> {
        let dir = &pipeline.transformer_dir;
        // A malformed tokenizer file can make the tokenizers crate panic while loading it or
        // on its first input; either becomes a load error naming the directory.
        crate::error::catching_panics(&format!("{}: unusable tokenizer", dir.display()), || {
            let t = Self::from_dir(
                dir,
                pipeline.max_seq_length,
                pipeline.do_lower_case,
                cfg.vocab_size,
            )?;
            t.encode_one("Probe text, 123.", true, true)?;
            Ok(t)
        })
    }

    /// Load the tokenizer of a model folder — `tokenizer.json`, else `spm.model` — with its
    /// `tokenizer_config.json` (and `added_tokens.json`) when present, truncating to
    /// `max_seq_length` tokens; ids must stay below `vocab_size` (the model's embedding rows).
    /// `do_lower_case` is sentence-transformers' flag (sentence_bert_config.json).
    fn from_dir(
        dir: &Path,
        max_seq_length: usize,
        do_lower_case: bool,
        vocab_size: usize,
    ) -> Result<Self> {
        let cfg = read_optional_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let added = read_optional_json(&dir.join("added_tokens.json"))?;
        let opts = DebertaOptions::from_config(&cfg, added.as_ref());
        let json_path = dir.join("tokenizer.json");
        let spm_path = dir.join("spm.model");
        let mut prefix_safe = true;
        let mut inner = if json_path.is_file() {
            let mut t = Tokenizer::from_file(&json_path).map_err(|e| {
                Error::Tokenizer(format!("{}: cannot load: {e}", json_path.display()))
            })?;
            // transformers builds a DebertaV2Tokenizer for tokenizer_class DebertaV2Tokenizer
            // (or its Fast alias) and, with no class named, from config.json's model type,
            // which is DeBERTa-v2 here; another class keeps the file as it is.
            let class = cfg.get("tokenizer_class").and_then(Value::as_str);
            let deberta = matches!(
                class,
                None | Some("DebertaV2Tokenizer" | "DebertaV2TokenizerFast")
            );
            if deberta && matches!(t.get_model(), ModelWrapper::Unigram(_)) {
                let charsmap = find_charsmap(t.get_normalizer());
                set_deberta_pipeline(&mut t, &opts, charsmap)?;
            } else {
                prefix_safe = false;
            }
            t
        } else if spm_path.is_file() {
            spm::SpmModel::read(&spm_path)?.into_tokenizer(&opts)?
        } else {
            return Err(Error::Tokenizer(format!(
                "{}: neither tokenizer.json nor spm.model is there",
                dir.display()
            )));
        };
        if do_lower_case {
            prepend_lowercase(&mut inner)?;
        }
        // Truncation is ours (see `encode_one`), so that `tokenize` can also give every token.
        inner
            .with_truncation(None)
            .map_err(tok_err("cannot set truncation"))?;
        inner.with_padding(None);
        let n_special = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        Ok(TextTokenizer {
            inner,
            max_seq_length,
            vocab_size,
            n_special,
            prefix_safe,
        })
    }

    /// Longest token sequence produced (special tokens included).
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Whether this is the DeBERTa pipeline, where runs of word breaks ([`is_word_break`])
    /// tokenize like one of them and truncation reads only a prefix of the text.
    pub fn collapses_word_breaks(&self) -> bool {
        self.prefix_safe
    }

    /// The tokenizers-crate pipeline (normalizer, pre-tokenizer, model, post-processor).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Most bytes of one input that truncation looks at: 64 per token of max_seq_length (at
    /// least 16 KiB), far more than any real text needs (English runs at 4-6 bytes per token,
    /// CJK at 2-4). An input that fills max_seq_length only past this many bytes (text made
    /// mostly of characters the normalizer drops) is cut here.
    pub fn scan_limit(&self) -> usize {
        (64 * self.max_seq_length).max(16 * 1024)
    }

    /// One text: pieces, then (when `truncate`) the first `max_seq_length` minus the special
    /// tokens of them kept, then the special tokens added. This is what the tokenizers crate's
    /// longest-first truncation does for a single sequence (and so what sentence-transformers
    /// feeds the model). Returns whether the text had more tokens than fit.
    ///
    /// Truncating, only a prefix of the text is tokenized, so work and memory per input are
    /// bounded whatever its length: a prefix that ends just before a space, tab, newline or
    /// carriage return gives exactly the pieces the whole text gives up to that point (words
    /// are normalized and split independently), so once such a prefix has more pieces than fit,
    /// the rest cannot change the result. The prefix doubles until it does (or the text ends,
    /// or [`TextTokenizer::scan_limit`] is reached). A run without whitespace longer than the
    /// prefix is cut inside; the pieces are then kept only with a margin of 64 beyond what fits.
    fn encode_one(
        &self,
        text: &str,
        char_offsets: bool,
        truncate: bool,
    ) -> Result<(Encoding, bool)> {
        let budget = self.max_seq_length.saturating_sub(self.n_special);
        let (mut enc, over) = if truncate && self.prefix_safe {
            self.pieces_truncated(text, char_offsets, budget)?
        } else {
            let enc = self.pieces(text, char_offsets)?;
            let over = enc.len() > budget;
            (enc, over)
        };
        if over && truncate {
            enc.truncate(budget, 0, TruncationDirection::Right);
            enc.get_overflowing_mut().clear();
        }
        let enc = self
            .inner
            .post_process(enc, None, true)
            .map_err(tok_err("encoding failed"))?;
        if let Some(&bad) = enc
            .get_ids()
            .iter()
            .find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(Error::Tokenizer(format!(
                "token id {bad} is outside the model's vocabulary ({} rows): the tokenizer does not belong to this model",
                self.vocab_size
            )));
        }
        Ok((enc, over))
    }

    /// The pieces of `text`, no special tokens, no truncation.
    fn pieces(&self, text: &str, char_offsets: bool) -> Result<Encoding> {
        if char_offsets {
            self.inner.encode_char_offsets(text, false)
        } else {
            self.inner.encode_fast(text, false)
        }
        .map_err(tok_err("encoding failed"))
    }

    /// The pieces of the shortest prefix of `text` that settles its first `budget` pieces (see
    /// [`TextTokenizer::encode_one`]), and whether the text has more than `budget`.
    fn pieces_truncated(
        &self,
        text: &str,
        char_offsets: bool,
        budget: usize,
    ) -> Result<(Encoding, bool)> {
        const MARGIN: usize = 64;
        let limit = self.scan_limit();
        let mut want = 8 * budget + 64;
        loop {
            let p = Squeezed::prefix(text, want);
            let mut enc = self.pieces(&p.text, char_offsets)?;
            if char_offsets {
                p.restore_offsets(&mut enc);
            }
            // the whole text, or nothing after the prefix but word breaks (which collapse and
            // are stripped): these are the text's pieces
            let rest = &text.as_bytes()[p.consumed..];
            if rest.iter().all(|&b| is_word_break(b)) {
                let over = enc.len() > budget;
                return Ok((enc, over));
            }
            let settled = if p.at_break {
                enc.len() > budget
            } else {
                enc.len() > budget + MARGIN
            };
            if settled || p.text.len() >= limit {
                return Ok((enc, true));
            }
            want = (2 * p.text.len()).min(limit);
        }
    }
}

/// The bytes both DeBERTa normalizers turn into a plain space, which the Metaspace
/// pre-tokenizer then splits words at: space, tab, newline, carriage return. (Others, like form
/// feed, are spaces only with the nmt_nfkc table.) A run of two or more of them tokenizes like
/// any one of them.
pub fn is_word_break(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A prefix of a text with every run of two or more word breaks shortened to its last
/// character: the same pieces as the original (both normalizers collapse such a run to one
/// space, and strip it at the end), in as many bytes as the words take.
struct Squeezed {
    text: String,
    /// (chars of `text` before the kept last character of a run, original chars removed
    /// before it), in order.
    removed: Vec<(usize, usize)>,
    /// Bytes of the original the prefix covers.
    consumed: usize,
    /// The prefix ends just before a word break (else inside a run without one, or at the end).
    at_break: bool,
}

impl Squeezed {
    /// About `want` bytes of squeezed text: up to the first word break once `want` bytes are
    /// there, or, in a run without one, 256 bytes further at a char boundary.
    fn prefix(text: &str, want: usize) -> Squeezed {
        let b = text.as_bytes();
        let mut out = Vec::with_capacity(want.min(b.len()) + 260);
        let mut removed = Vec::new();
        let mut chars = 0usize;
        let mut i = 0;
        let mut at_break = false;
        while i < b.len() {
            if is_word_break(b[i]) {
                if out.len() >= want {
                    at_break = true;
                    break;
                }
                let mut j = i + 1;
                while j < b.len() && is_word_break(b[j]) {
                    j += 1;
                }
                // keep the run's last grapheme (a final "\r\n" is one): the normalizers align
                // the one space they make of a run with it
                let keep = if j - i >= 2 && &b[j - 2..j] == b"\r\n" {
                    2
                } else {
                    1
                };
                if j - i > keep {
                    removed.push((chars, j - i - keep));
                }
                out.extend_from_slice(&b[j - keep..j]);
                chars += keep;
                i = j;
            } else {
                // a char starts at every byte that is not a UTF-8 continuation byte
                let starts_char = (b[i] & 0xC0) != 0x80;
                if starts_char && out.len() >= want + 256 {
                    break;
                }
                chars += usize::from(starts_char);
                out.push(b[i]);
                i += 1;
            }
        }
        // `out` is `text` less whole ASCII bytes, cut at a char boundary: valid UTF-8
        // (checked rather than assumed).
        let text = String::from_utf8(out).unwrap_or_default();
        Squeezed {
            text,
            removed,
            consumed: i,
            at_break,
        }
    }

    /// Character offsets into the squeezed text -> offsets into the original: a token that
    /// starts where characters were removed starts after them, one that ends there ends
    /// before them.
    fn restore_offsets(&self, enc: &mut Encoding) {
        if self.removed.is_empty() {
            return;
        }
        let shift = |p: usize, start: bool| -> usize {
            self.removed
                .iter()
                .take_while(|(k, _)| if start { *k <= p } else { *k < p })
                .map(|(_, n)| n)
                .sum()
        };
        for o in enc.get_offsets_mut() {
            *o = (o.0 + shift(o.0, true), o.1 + shift(o.1, false));
        }
    }
}

impl TextTokenizer {
    /// Token ids of each text as the model sees them, in input order (the embedding path:
    /// nothing else is kept).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts
            .par_iter()
            .map(|t| Ok(self.encode_one(t, false, true)?.0.get_ids().to_vec()))
            .collect()
    }

    /// Each text as the model sees it (`truncate`), or with every token: token strings,
    /// special-token flags, character offsets into the text and whether it was too long.
    pub fn tokenize(&self, texts: &[&str], truncate: bool) -> Result<Vec<Tokenized>> {
        texts
            .par_iter()
            .map(|t| {
                let (enc, over) = self.encode_one(t, true, truncate)?;
                Ok(Tokenized {
                    ids: enc.get_ids().to_vec(),
                    tokens: enc.get_tokens().to_vec(),
                    special: enc
                        .get_special_tokens_mask()
                        .iter()
                        .map(|&m| m == 1)
                        .collect(),
                    offsets: enc.get_offsets().to_vec(),
                    truncated: over,
                })
            })
            .collect()
    }
}

impl TextTokenizer {
    /// Each text pair as a cross-encoder sees it, in input order: `[CLS] a [SEP] b [SEP]`
    /// (the pair template of the tokenizer), and with `truncate` cut to max_seq_length by the
    /// tokenizers crate's longest-first rule, as sentence-transformers' `CrossEncoder`
    /// (`truncation="longest_first"`) does. Also returns whether the pair had more tokens than fit.
    ///
    /// `type_stride`: with `Some(vocab_size)`, a token of token type `t` (the second text and
    /// its `[SEP]` have type 1) comes back as `id + t * vocab_size`, which the forward unfolds
    /// into the word and token-type embeddings; with `None` types are dropped (a model without
    /// token-type embeddings).
    pub fn encode_pair_batch(
        &self,
        pairs: &[(&str, &str)],
        type_stride: Option<usize>,
        truncate: bool,
    ) -> Result<Vec<(Vec<u32>, bool)>> {
        pairs
            .par_iter()
            .map(|(a, b)| {
                let (enc, over) = self.encode_pair(a, b, truncate)?;
                let ids = match type_stride {
                    None => enc.get_ids().to_vec(),
                    Some(v) => enc
                        .get_ids()
                        .iter()
                        .zip(enc.get_type_ids())
                        .map(|(&id, &t)| crate::cross::fold_type(id, t, v))
                        .collect(),
                };
                Ok((ids, over))
            })
            .collect()
    }

    /// One pair (see [`TextTokenizer::encode_pair_batch`]).
    fn encode_pair(&self, a: &str, b: &str, truncate: bool) -> Result<(Encoding, bool)> {
        let n_special = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        let budget = self.max_seq_length.saturating_sub(n_special);
        // Truncating, each text is read only as far as it could be kept (at most `budget`
        // pieces): longest-first then needs only the exact length of a text that fits and the
        // fact that the other does not...
        let side = |t: &str| -> Result<(Encoding, bool)> {
            if truncate && self.prefix_safe {
                self.pieces_truncated(t, false, budget)
            } else {
                let e = self.pieces(t, false)?;
                let over = e.len() > budget;
                Ok((e, over))
            }
        };
        let (mut ea, over_a) = side(a)?;
        let (mut eb, over_b) = side(b)?;
        // ...except when both are over an odd budget: the longer one keeps the extra token,
        // so both are counted in full.
        if truncate && self.prefix_safe && over_a && over_b && budget % 2 == 1 {
            ea = self.pieces(a, false)?;
            eb = self.pieces(b, false)?;
        }
        let over = ea.len() + eb.len() > budget;
        if truncate && over {
            let params = TruncationParams {
                max_length: budget,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            };
            let (x, y) =
                truncate_encodings(ea, Some(eb), &params).map_err(tok_err("truncation failed"))?;
            ea = x;
            eb = y.ok_or_else(|| Error::Tokenizer("truncation lost the second text".into()))?;
            ea.get_overflowing_mut().clear();
            eb.get_overflowing_mut().clear();
        }
        let enc = self
            .inner
            .post_process(ea, Some(eb), true)
            .map_err(tok_err("encoding failed"))?;
        if let Some(&bad) = enc
            .get_ids()
            .iter()
            .find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(Error::Tokenizer(format!(
                "token id {bad} is outside the model's vocabulary ({} rows): the tokenizer does not belong to this model",
                self.vocab_size
            )));
        }
        Ok((enc, over))
    }
}

/// sentence-transformers' `do_lower_case`: a Lowercase normalizer in front of the tokenizer's
/// own, unless one is already there.
fn prepend_lowercase(tok: &mut Tokenizer) -> Result<()> {
    let current = tok.get_normalizer().cloned();
    let has_lower = match &current {
        Some(NormalizerWrapper::Lowercase(_)) => true,
        Some(NormalizerWrapper::Sequence(s)) => s
            .as_ref()
            .iter()
            .any(|n| matches!(n, NormalizerWrapper::Lowercase(_))),
        _ => false,
    };
    if has_lower {
        return Ok(());
    }
    let mut seq: Vec<NormalizerWrapper> = vec![Lowercase.into()];
    match current {
        Some(NormalizerWrapper::Sequence(s)) => seq.extend(s),
        Some(other) => seq.push(other),
        None => {}
    }
    tok.with_normalizer(Some(Sequence::new(seq)))
        .map_err(tok_err("cannot add lower-casing"))?;
    Ok(())
}
