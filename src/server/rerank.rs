//! The cross-encoder routes, text-embeddings-inference-compatible, served when the model is a
//! cross-encoder ([`crate::CrossEncoder`], given to [`super::Server::new`] through
//! [`crate::CrossEncoder::into_embedder`]):
//!
//! * `POST /rerank`: `{"query", "texts", "raw_scores", "return_text", "truncate"}` ->
//!   `[{"index", "score", "text"?}]`, every text, by descending score (equal scores keep input
//!   order). Scores are the model's activation of its logit (as `CrossEncoder.rank`; sigmoid
//!   unless the model saved another), or the logit with `raw_scores`. Needs a one-label model.
//! * `POST /predict`: `{"inputs", "raw_scores", "truncate"}`, where `inputs` is one text, one
//!   pair `["a", "b"]`, or a list of texts / pairs (`[["a", "b"], ["c"]]`) -> per input, every
//!   label `{"score", "label"}` by descending score (a list of such lists for a list). Scores are
//!   the model's activation and, with several labels, a softmax over them (as
//!   `CrossEncoder.predict(apply_softmax=True)`), or the logits with `raw_scores`.
//!
//! A pair longer than max_seq_length is refused with 413 unless `truncate` is true (default:
//! the server's `auto_truncate`); truncation is longest-first, as sentence-transformers'.
//! On an embedding model these routes answer 400 (and on a cross-encoder so do `/embed` and
//! `/v1/embeddings`), with the route's JSON error shape.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};

use super::batcher::embed_ids;
use super::routes::{
    admit_bytes, bool_field, holding, parse_object, read_body, str_field, texts_field, with_stats,
    ApiError, RequestStats,
};
use super::Shared;
use crate::cross::{rank_scores, softmax, HeadConfig};
use crate::ModelKind;

/// Middleware: the embedding routes for embedding models, the cross-encoder routes for
/// cross-encoders; the other kind gets a 400 naming the routes it does have.
pub(super) async fn by_model_kind(
    State(s): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let kind = s.embedder.kind();
    match (req.uri().path(), kind) {
        // (`POST /` is `/embed` under text-embeddings-inference's root route)
        ("/embed" | "/", ModelKind::CrossEncoder) => ApiError::bad(
            "this model is a cross-encoder: it scores text pairs (POST /rerank, POST /predict) and has no embeddings",
        )
        .tei(),
        ("/v1/embeddings", ModelKind::CrossEncoder) => ApiError::bad(
            "this model is a cross-encoder: it scores text pairs (POST /rerank, POST /predict) and has no embeddings",
        )
        .openai(),
        ("/rerank" | "/predict", ModelKind::Embedding) => ApiError::bad(
            "this model is not a cross-encoder (it embeds text: POST /embed, POST /v1/embeddings); /rerank and /predict need a sequence-classification model",
        )
        .tei(),
        _ => next.run(req).await,
    }
}

fn head(s: &Shared) -> Result<&HeadConfig, ApiError> {
    s.embedder
        .head_config()
        .ok_or_else(|| ApiError::bad("this model is not a cross-encoder"))
}

/// `truncate` (default: the server's auto_truncate) and `truncation_direction` (Right only).
fn truncation(s: &Shared, obj: &Map<String, Value>) -> Result<bool, ApiError> {
    match str_field(obj, "truncation_direction")? {
        None => {}
        Some(d) if d.eq_ignore_ascii_case("right") => {}
        Some(d) => {
            return Err(ApiError::bad(format!(
                "`truncation_direction` {d:?} is not supported (only \"Right\")"
            ))
            .param("truncation_direction"))
        }
    }
    bool_field(obj, "truncate", s.opts.auto_truncate)
}

/// Wait for room for `bytes` (per sequence: bytes of its texts) in the tokens in flight, as
/// `/embed`'s admission does for single texts (a pair has three special tokens).
async fn admit_pairs(
    s: &Shared,
    bytes: &[usize],
    truncate: bool,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    admit_bytes(s, bytes.iter().copied(), 3, truncate).await
}

/// One input of a cross-encoder: a text alone or a pair.
enum Item {
    Single(String),
    Pair(String, String),
}

/// Token ids of every item (pairs with their token types folded in), on the blocking pool;
/// 413 for an over-long one unless `truncate`.
async fn tokenize_items(
    s: &Shared,
    items: Vec<Item>,
    truncate: bool,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let embedder = s.embedder.clone();
    let joined = tokio::task::spawn_blocking(move || -> crate::Result<Vec<(Vec<u32>, bool)>> {
        let mut out = Vec::with_capacity(items.len());
        // consecutive runs of one kind go through the tokenizer together
        let mut i = 0;
        while i < items.len() {
            match &items[i] {
                Item::Pair(..) => {
                    let mut pairs = Vec::new();
                    while let Some(Item::Pair(a, b)) = items.get(i) {
                        pairs.push((a.as_str(), b.as_str()));
                        i += 1;
                    }
                    out.extend(embedder.pair_ids(&pairs, truncate)?);
                }
                Item::Single(_) => {
                    let mut texts = Vec::new();
                    while let Some(Item::Single(t)) = items.get(i) {
                        texts.push(t.as_str());
                        i += 1;
                    }
                    let toks = if truncate {
                        embedder.tokenize(&texts)?
                    } else {
                        embedder.tokenize_all(&texts)?
                    };
                    out.extend(toks.into_iter().map(|t| {
                        let over = t.truncated;
                        (t.ids, over)
                    }));
                }
            }
        }
        Ok(out)
    })
    .await;
    let seqs = match joined {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: tokenization panicked",
            ))
        }
    };
    if !truncate {
        if let Some(i) = seqs.iter().position(|(_, over)| *over) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "input {i} is longer than the model's maximum of {} tokens; send \"truncate\": true to truncate it",
                    s.embedder.max_seq_length()
                ),
            ));
        }
    }
    Ok(seqs.into_iter().map(|(ids, _)| ids).collect())
}

/// Logits of each sequence (`[N, num_labels]`, row-major) from the batcher. Identical
/// sequences are sent once, so equal inputs get equal scores (and keep their input order in
/// a ranking), whatever their places in the batch.
async fn score_ids(s: &Shared, ids: Vec<Vec<u32>>) -> Result<(Vec<f32>, RequestStats), ApiError> {
    let l = s.embedder.dim();
    let mut unique: Vec<Vec<u32>> = Vec::new();
    let mut slot = Vec::with_capacity(ids.len());
    {
        let mut seen: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
        for seq in &ids {
            let k = *seen.entry(seq.as_slice()).or_insert_with(|| {
                unique.push(seq.clone());
                unique.len() - 1
            });
            slot.push(k);
        }
    }
    let (rows, mut stats) = embed_ids(s, unique, false, 0).await?;
    stats.inputs = ids.len();
    let mut out = Vec::with_capacity(ids.len() * l);
    for k in slot {
        out.extend_from_slice(&rows[k * l..(k + 1) * l]);
    }
    Ok((out, stats))
}

#[derive(Serialize)]
struct RankEntry<'a> {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

pub(super) async fn tei_rerank(State(s): State<Arc<Shared>>, req: Request) -> Response {
    rerank_inner(&s, req).await.unwrap_or_else(ApiError::tei)
}

async fn rerank_inner(s: &Shared, req: Request) -> Result<Response, ApiError> {
    let mut obj = parse_object(&read_body(s, req).await?)?;
    let query = match obj.remove("query") {
        None | Some(Value::Null) => {
            return Err(ApiError::unprocessable("missing field `query`").param("query"))
        }
        Some(Value::String(q)) => q,
        Some(_) => return Err(ApiError::unprocessable("`query` must be a string").param("query")),
    };
    let texts = texts_field(&mut obj, "texts", s.opts.max_inputs)?;
    let raw = bool_field(&obj, "raw_scores", false)?;
    let return_text = bool_field(&obj, "return_text", false)?;
    let truncate = truncation(s, &obj)?;
    let head = head(s)?;
    if head.num_labels != 1 {
        return Err(ApiError::bad(format!(
            "/rerank needs a model with one label; this one has {} (use /predict)",
            head.num_labels
        )));
    }
    let activation = head.activation;
    let bytes: Vec<usize> = texts.iter().map(|t| t.len() + query.len()).collect();
    let admitted = admit_pairs(s, &bytes, truncate).await?;
    let items = texts
        .iter()
        .map(|t| Item::Pair(query.clone(), t.clone()))
        .collect();
    let ids = tokenize_items(s, items, truncate).await?;
    let (mut scores, stats) = score_ids(s, ids).await?;
    if !raw {
        // one label: the activation of each score alone
        for x in scores.iter_mut() {
            activation.apply(std::slice::from_mut(x));
        }
    }
    let out: Vec<RankEntry> = rank_scores(&scores, None)
        .into_iter()
        .map(|r| RankEntry {
            index: r.index,
            score: r.score,
            text: return_text.then(|| texts[r.index].as_str()),
        })
        .collect();
    Ok(with_stats(
        holding(Json(out).into_response(), admitted),
        stats,
    ))
}

#[derive(Serialize)]
struct LabelScore<'a> {
    score: f32,
    label: &'a str,
}

pub(super) async fn tei_predict(State(s): State<Arc<Shared>>, req: Request) -> Response {
    predict_inner(&s, req).await.unwrap_or_else(ApiError::tei)
}

/// `inputs`: a text, a pair, or a non-empty list of texts / pairs (at most `max` of them);
/// also whether it was a list.
fn predict_inputs(obj: &mut Map<String, Value>, max: usize) -> Result<(Vec<Item>, bool), ApiError> {
    let bad = |msg: String| ApiError::unprocessable(msg).param("inputs");
    let item = |v: Value, at: &str| -> Result<Item, ApiError> {
        match v {
            Value::String(t) => Ok(Item::Single(t)),
            Value::Array(a) => {
                let mut strs = Vec::with_capacity(2);
                for x in a {
                    match x {
                        Value::String(t) => strs.push(t),
                        _ => return Err(bad(format!("`inputs{at}` must hold strings"))),
                    }
                }
                let mut it = strs.into_iter();
                match (it.next(), it.next(), it.next()) {
                    (Some(a), None, _) => Ok(Item::Single(a)),
                    (Some(a), Some(b), None) => Ok(Item::Pair(a, b)),
                    _ => Err(bad(format!(
                        "`inputs{at}` must be a text or a pair of texts (1 or 2 strings)"
                    ))),
                }
            }
            _ => Err(bad(format!(
                "`inputs{at}` must be a string or a list of strings"
            ))),
        }
    };
    match obj.remove("inputs") {
        None | Some(Value::Null) => Err(bad("missing field `inputs`".into())),
        Some(Value::String(t)) => Ok((vec![Item::Single(t)], false)),
        Some(Value::Array(a)) if a.is_empty() => {
            Err(ApiError::bad("`inputs` must not be an empty list").param("inputs"))
        }
        // a flat list of strings is one input (a text or a pair), as text-embeddings-inference
        // reads it; a list of lists is a batch
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            Ok((vec![item(Value::Array(a), "")?], false))
        }
        Some(Value::Array(a)) => {
            if a.len() > max {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{} inputs in one request; the limit is {max}", a.len()),
                )
                .param("inputs"));
            }
            let items = a
                .into_iter()
                .enumerate()
                .map(|(i, v)| item(v, &format!("[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((items, true))
        }
        Some(_) => Err(bad("`inputs` must be a string or a list".into())),
    }
}

async fn predict_inner(s: &Shared, req: Request) -> Result<Response, ApiError> {
    let mut obj = parse_object(&read_body(s, req).await?)?;
    let (items, batch) = predict_inputs(&mut obj, s.opts.max_inputs)?;
    let raw = bool_field(&obj, "raw_scores", false)?;
    let truncate = truncation(s, &obj)?;
    let head = head(s)?;
    let (activation, l) = (head.activation, head.num_labels);
    let bytes: Vec<usize> = items
        .iter()
        .map(|i| match i {
            Item::Single(t) => t.len(),
            Item::Pair(a, b) => a.len() + b.len(),
        })
        .collect();
    let admitted = admit_pairs(s, &bytes, truncate).await?;
    let ids = tokenize_items(s, items, truncate).await?;
    let (mut scores, stats) = score_ids(s, ids).await?;
    if !raw {
        for row in scores.chunks_exact_mut(l) {
            activation.apply(row);
            if l > 1 {
                softmax(row);
            }
        }
    }
    let per: Vec<Vec<LabelScore>> = scores
        .chunks_exact(l)
        .map(|row| {
            let mut v: Vec<LabelScore> = row
                .iter()
                .zip(&head.labels)
                .map(|(&score, label)| LabelScore { score, label })
                .collect();
            v.sort_by(|a, b| b.score.total_cmp(&a.score));
            v
        })
        .collect();
    let resp = if batch {
        Json(per).into_response()
    } else {
        Json(per.into_iter().next().unwrap_or_default()).into_response()
    };
    Ok(with_stats(holding(resp, admitted), stats))
}
