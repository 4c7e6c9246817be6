//! `spm.model` (a serialized sentencepiece `ModelProto`) turned into the `tokenizers` pipeline
//! transformers builds from it for `DebertaV2Tokenizer`, for model directories that ship no
//! tokenizer.json (older DeBERTa-v2/v3 checkpoints).
//!
//! Only the fields that conversion reads are declared; protobuf skips the rest. Field numbers
//! are sentencepiece's `sentencepiece_model.proto`.

use std::path::Path;

use prost::Message;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::AddedToken;
use tokenizers::Tokenizer;

use super::DebertaOptions;
use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<SentencePiece>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    /// NORMAL = 1 (default), UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6.
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct TrainerSpec {
    /// UNIGRAM = 1 (default), BPE = 2, WORD = 3, CHAR = 4.
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
    #[prost(int32, optional, tag = "40")]
    unk_id: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct NormalizerSpec {
    #[prost(bytes = "vec", optional, tag = "2")]
    precompiled_charsmap: Option<Vec<u8>>,
}

const CONTROL: i32 = 3;

/// What an `spm.model` holds that the tokenizer needs.
pub(super) struct SpmModel {
    /// (piece, score) in id order.
    pub vocab: Vec<(String, f64)>,
    /// Ids of CONTROL pieces (`[PAD]`, `[CLS]`, `[SEP]` in DeBERTa-v3's model).
    pub control: Vec<u32>,
    pub unk_id: usize,
    /// The `nmt_nfkc` (or other) normalization table; empty when the model has none.
    pub charsmap: Vec<u8>,
}

impl SpmModel {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes).map_err(|msg| Error::Tokenizer(format!("{}: {msg}", path.display())))
    }

    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let proto = ModelProto::decode(bytes)
            .map_err(|e| format!("not a sentencepiece model (protobuf: {e})"))?;
        let trainer = proto.trainer_spec.unwrap_or_default();
        match trainer.model_type.unwrap_or(1) {
            1 => {}
            t => {
                return Err(format!(
                    "sentencepiece model type {t} is not unigram (1): not a DeBERTa-v2/v3 tokenizer"
                ))
            }
        }
        if proto.pieces.is_empty() {
            return Err("the sentencepiece model has no pieces".into());
        }
        let mut vocab = Vec::with_capacity(proto.pieces.len());
        let mut control = Vec::new();
        for (i, p) in proto.pieces.into_iter().enumerate() {
            let piece = p.piece.unwrap_or_default();
            if piece.is_empty() {
                return Err(format!("piece {i} is empty"));
            }
            if p.kind == Some(CONTROL) {
                control.push(i as u32);
            }
            vocab.push((piece, f64::from(p.score.unwrap_or(0.0))));
        }
        let unk_id = usize::try_from(trainer.unk_id.unwrap_or(0))
            .ok()
            .filter(|&u| u < vocab.len())
            .ok_or_else(|| {
                format!(
                    "unk_id {:?} is outside the {} pieces",
                    trainer.unk_id,
                    vocab.len()
                )
            })?;
        let charsmap = proto
            .normalizer_spec
            .and_then(|n| n.precompiled_charsmap)
            .unwrap_or_default();
        Ok(SpmModel {
            vocab,
            control,
            unk_id,
            charsmap,
        })
    }

    /// The tokenizer transformers 5's `DebertaV2Tokenizer` builds from this model: Unigram over
    /// every piece (no byte fallback), the unknown piece found by name, CONTROL pieces and the
    /// named special tokens registered as special added tokens.
    pub fn into_tokenizer(self, opts: &DebertaOptions) -> Result<Tokenizer> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            Error::Tokenizer(format!("spm.model: cannot build {what}: {e}"))
        };
        // transformers looks the unknown token up as (piece, 0.0) before it falls back on the
        // trainer's unk_id
        let unk_id = self
            .vocab
            .iter()
            .position(|(p, s)| *p == opts.specials.unk && *s == 0.0)
            .unwrap_or(self.unk_id);
        let control: Vec<String> = self
            .control
            .iter()
            .map(|&i| self.vocab[i as usize].0.clone())
            .collect();
        let model = Unigram::from(self.vocab, Some(unk_id), false)
            .map_err(|e| err("the unigram model", &e))?;
        let mut tok = Tokenizer::new(model);
        let charsmap = if self.charsmap.is_empty() {
            None
        } else {
            Some(Precompiled::from(&self.charsmap).map_err(|e| err("the charsmap", &e))?)
        };
        super::set_deberta_pipeline(&mut tok, opts, charsmap)?;
        // The named special tokens in transformers' attribute order (a name the model lacks,
        // like DeBERTa-v3's [MASK], gets the next free id), then the CONTROL pieces.
        let mut added = opts.specials.in_order();
        for c in control {
            if !added.iter().any(|a| a.content == c) {
                added.push(AddedToken::from(c, true).normalized(false));
            }
        }
        tok.add_special_tokens(added)
            .map_err(|e| err("the special tokens", &e))?;
        for (id, t) in &opts.specials.declared {
            if tok.token_to_id(&t.content) != Some(*id) {
                return Err(Error::Tokenizer(format!(
                    "spm.model: tokenizer_config.json / added_tokens.json give {} the id {id}, the model gives it {:?}",
                    t.content,
                    tok.token_to_id(&t.content)
                )));
            }
        }
        super::set_post_processor(&mut tok, opts)?;
        Ok(tok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(p: &str, score: f32, kind: Option<i32>) -> SentencePiece {
        SentencePiece {
            piece: Some(p.into()),
            score: Some(score),
            kind,
        }
    }

    #[test]
    fn parses_pieces_types_and_charsmap() {
        let proto = ModelProto {
            pieces: vec![
                piece("[PAD]", 0.0, Some(CONTROL)),
                piece("[UNK]", 0.0, Some(2)),
                piece("\u{2581}a", -1.5, None),
            ],
            trainer_spec: Some(TrainerSpec {
                model_type: Some(1),
                unk_id: Some(1),
            }),
            normalizer_spec: Some(NormalizerSpec {
                precompiled_charsmap: Some(vec![1, 2, 3]),
            }),
        };
        let m = SpmModel::parse(&proto.encode_to_vec()).unwrap();
        assert_eq!(m.vocab.len(), 3);
        assert_eq!(m.vocab[2], ("\u{2581}a".to_string(), -1.5));
        assert_eq!(m.control, vec![0]);
        assert_eq!(m.unk_id, 1);
        assert_eq!(m.charsmap, vec![1, 2, 3]);
    }

    #[test]
    fn refuses_bpe_garbage_and_bad_unk() {
        let bpe = ModelProto {
            pieces: vec![piece("a", 0.0, None)],
            trainer_spec: Some(TrainerSpec {
                model_type: Some(2),
                unk_id: Some(0),
            }),
            normalizer_spec: None,
        };
        let e = SpmModel::parse(&bpe.encode_to_vec()).err().unwrap();
        assert!(e.contains("not unigram"), "{e}");
        let e = SpmModel::parse(b"\xff\xff\xff\xff").err().unwrap();
        assert!(e.contains("not a sentencepiece model"), "{e}");
        let bad_unk = ModelProto {
            pieces: vec![piece("a", 0.0, None)],
            trainer_spec: Some(TrainerSpec {
                model_type: None,
                unk_id: Some(5),
            }),
            normalizer_spec: None,
        };
        let e = SpmModel::parse(&bad_unk.encode_to_vec()).err().unwrap();
        assert!(e.contains("unk_id"), "{e}");
        let e = SpmModel::parse(&[]).err().unwrap();
        assert!(e.contains("no pieces"), "{e}");
    }
}
