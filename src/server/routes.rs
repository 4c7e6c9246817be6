//! The route table and the request side: parsing and validating JSON bodies, admission against
//! the tokens in flight, tokenizing, the error shapes, and the handlers of the embedding routes,
//! `/tokenize`, `/health`, `/metrics`, `/info` and `/v1/models`, with the authorization and
//! tracking middleware.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

use super::batcher::embed_ids;
use super::metrics::route_label;
use super::{openapi, rerank, Shared};
use crate::error::Error;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embed", post(tei_embed))
        // text-embeddings-inference answers its model's main task on `/` too (clients that are
        // given the server's URL as the model's, like huggingface_hub's, post there)
        .route("/", post(tei_embed))
        .route("/tokenize", post(tei_tokenize))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/info", get(info))
        .route("/v1/models", get(models))
        .route("/openapi.json", get(openapi::document))
        .route("/rerank", post(rerank::tei_rerank))
        .route("/predict", post(rerank::tei_predict))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            rerank::by_model_kind,
        ))
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .layer(middleware::from_fn_with_state(shared.clone(), track))
        .with_state(shared)
}

/// A failed request, rendered in the error shape of the route it came in on.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
    /// The request field at fault (OpenAI's `param`).
    param: Option<&'static str>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub(super) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    pub(super) fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    /// OpenAI's `{"error": {"message", "type", "param", "code"}}`.
    pub(super) fn openai(self) -> Response {
        let kind = match self.status {
            StatusCode::TOO_MANY_REQUESTS => "server_overloaded",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let body = OpenAiErrorBody {
            error: OpenAiError {
                message: &self.message,
                kind,
                param: self.param,
                code: None,
            },
        };
        (self.status, Json(body)).into_response()
    }

    /// text-embeddings-inference's `{"error", "error_type"}`.
    pub(super) fn tei(self) -> Response {
        let kind = match self.status {
            StatusCode::TOO_MANY_REQUESTS => "Overloaded",
            StatusCode::SERVICE_UNAVAILABLE => "Unhealthy",
            s if s.is_server_error() => "Backend",
            _ => "Validation",
        };
        let body = TeiError {
            error: &self.message,
            error_type: kind,
        };
        (self.status, Json(body)).into_response()
    }
}

/// OpenAI's error body.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct OpenAiErrorBody<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct OpenAiError<'a> {
    message: &'a str,
    /// `invalid_request_error`, `server_overloaded` (429) or `server_error` (5xx).
    #[serde(rename = "type")]
    kind: &'static str,
    /// The request field at fault, if one is.
    param: Option<&'static str>,
    /// Always null.
    code: Option<&'static str>,
}

/// text-embeddings-inference's error body.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TeiError<'a> {
    error: &'a str,
    /// `Validation`, `Overloaded` (429), `Unhealthy` (503) or `Backend` (5xx).
    error_type: &'static str,
}

/// The request body, read within [`ServerOptions::body_timeout`] and at most
/// [`ServerOptions::max_body_bytes`] long.
pub(super) async fn read_body(s: &Shared, req: Request) -> std::result::Result<Bytes, ApiError> {
    let limit = s.opts.max_body_bytes;
    let read = axum::body::to_bytes(req.into_body(), limit);
    match tokio::time::timeout(s.opts.body_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let inner = e.into_inner();
            if inner.is::<http_body_util::LengthLimitError>() {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than the limit of {limit} bytes"),
                ))
            } else {
                Err(ApiError::bad(format!(
                    "cannot read the request body: {inner}"
                )))
            }
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                s.opts.body_timeout.as_secs_f64()
            ),
        )),
    }
}

/// The request body as a JSON object.
pub(super) fn parse_object(bytes: &[u8]) -> std::result::Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::unprocessable(
            "request body must be a JSON object",
        )),
    }
}

/// `resp` with `permit` held until its body has been sent (or the client has gone): a
/// response waiting for a slow reader still counts against the tokens in flight.
pub(super) fn holding(resp: Response, permit: tokio::sync::OwnedSemaphorePermit) -> Response {
    use http_body_util::BodyExt;
    resp.map(|body| {
        axum::body::Body::new(body.map_frame(move |frame| {
            let _held = &permit;
            frame
        }))
    })
}

/// Wait until `texts` fit in the tokens in flight ([`ServerOptions::max_tokens_in_flight`]);
/// the permit is theirs until it is dropped (see [`holding`]).
async fn admit(
    s: &Shared,
    texts: &[String],
    truncate: bool,
) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    admit_bytes(s, texts.iter().map(String::len), 2, truncate).await
}

/// Wait for room in the tokens in flight for sequences of `bytes` bytes of text each, plus
/// `special` tokens per sequence: at most a token per byte, or max_seq_length when truncated.
pub(super) async fn admit_bytes(
    s: &Shared,
    bytes: impl Iterator<Item = usize>,
    special: usize,
    truncate: bool,
) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let msl = s.embedder.max_seq_length();
    let estimate = bytes
        .map(|b| {
            let n = b.saturating_add(special);
            if truncate {
                n.min(msl)
            } else {
                n
            }
        })
        .fold(0usize, usize::saturating_add);
    // (Server::new keeps max_tokens_in_flight within u32)
    let n = estimate.clamp(1, s.opts.max_tokens_in_flight) as u32;
    s.in_flight
        .clone()
        .acquire_many_owned(n)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            )
        })
}

/// `key`: a string or a non-empty array of strings, at most `max` of them.
pub(super) fn texts_field(
    obj: &mut Map<String, Value>,
    key: &'static str,
    max: usize,
) -> std::result::Result<Vec<String>, ApiError> {
    let shape = || {
        ApiError::unprocessable(format!("`{key}` must be a string or an array of strings"))
            .param(key)
    };
    let texts = match obj.remove(key) {
        None | Some(Value::Null) => {
            return Err(ApiError::unprocessable(format!("missing field `{key}`")).param(key))
        }
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::bad(format!("`{key}` must not be an empty array")).param(key));
            }
            let mut texts = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) => texts.push(s),
                    Value::Number(_) | Value::Array(_) => {
                        return Err(ApiError::unprocessable(format!(
                            "`{key}[{i}]` is not a string: token-id inputs are not supported, send text"
                        ))
                        .param(key))
                    }
                    _ => {
                        return Err(
                            ApiError::unprocessable(format!("`{key}[{i}]` must be a string"))
                                .param(key),
                        )
                    }
                }
            }
            texts
        }
        Some(_) => return Err(shape()),
    };
    if texts.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} inputs in one request; the limit is {max}", texts.len()),
        )
        .param(key));
    }
    Ok(texts)
}

/// Optional boolean `key`, `default` when absent or null.
pub(super) fn bool_field(
    obj: &Map<String, Value>,
    key: &'static str,
    default: bool,
) -> std::result::Result<bool, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::unprocessable(format!("`{key}` must be a boolean")).param(key)),
    }
}

/// Optional string `key`.
pub(super) fn str_field<'a>(
    obj: &'a Map<String, Value>,
    key: &'static str,
) -> std::result::Result<Option<&'a str>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::unprocessable(format!("`{key}` must be a string")).param(key)),
    }
}

/// The prompt a request asks for (`prompt_name`, `prompt`; neither: the model's default), as
/// sentence-transformers resolves it; the request's texts get it prepended. An unknown name is
/// 400.
fn apply_prompt(
    s: &Shared,
    obj: &Map<String, Value>,
    texts: &mut [String],
) -> std::result::Result<usize, ApiError> {
    let opts = crate::EncodeOptions {
        prompt_name: str_field(obj, "prompt_name")?,
        prompt: str_field(obj, "prompt")?,
    };
    let param = if opts.prompt.is_some() {
        "prompt"
    } else {
        "prompt_name"
    };
    let prompt = s.embedder.resolve_prompt(&opts).map_err(|e| match e {
        Error::Input(m) => ApiError::bad(m).param(param),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    if let Some(p) = &prompt {
        for t in texts.iter_mut() {
            *t = p.apply(t);
        }
    }
    Ok(s.embedder.pooling_skip(prompt.as_ref()))
}

/// `dimensions`: absent, or the model's own width (no Matryoshka truncation here).
fn check_dimensions(obj: &Map<String, Value>, dim: usize) -> std::result::Result<(), ApiError> {
    match obj.get("dimensions") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_u64() == Some(dim as u64) => Ok(()),
        Some(Value::Number(n)) => Err(ApiError::bad(format!(
            "`dimensions` {n} is not supported: this model's embeddings have {dim} dimensions"
        ))
        .param("dimensions")),
        Some(_) => {
            Err(ApiError::unprocessable("`dimensions` must be an integer").param("dimensions"))
        }
    }
}

/// Tokenize on the blocking pool (the runtime's workers keep serving meanwhile).
async fn tokenize(
    s: &Shared,
    texts: Vec<String>,
) -> std::result::Result<Vec<crate::Tokenized>, ApiError> {
    tokenize_with(s, Arc::new(texts), true).await
}

/// [`tokenize`], truncated to max_seq_length or not, keeping the texts for the caller.
async fn tokenize_with(
    s: &Shared,
    texts: Arc<Vec<String>>,
    truncate: bool,
) -> std::result::Result<Vec<crate::Tokenized>, ApiError> {
    let embedder = s.embedder.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        if truncate {
            embedder.tokenize(&refs)
        } else {
            embedder.tokenize_all(&refs)
        }
    })
    .await;
    match joined {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: tokenization panicked",
        )),
    }
}

/// What a request cost, for its log line: a response extension that [`track`] reads.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RequestStats {
    pub(super) inputs: usize,
    pub(super) tokens: usize,
    /// Seconds waiting for the batcher, and in the forward of the batch it joined.
    pub(super) queue_s: f64,
    pub(super) compute_s: f64,
}

impl RequestStats {
    pub(super) fn of(tokenized: &[Vec<u32>]) -> Self {
        RequestStats {
            inputs: tokenized.len(),
            tokens: tokenized.iter().map(Vec::len).sum(),
            ..Default::default()
        }
    }
}

/// `resp` carrying `stats` for its log line.
pub(super) fn with_stats(mut resp: Response, stats: RequestStats) -> Response {
    resp.extensions_mut().insert(stats);
    resp
}

/// `/v1/embeddings`' answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct OpenAiResponse<'a> {
    /// `list`.
    object: &'static str,
    data: Vec<OpenAiEmbedding<'a>>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct OpenAiEmbedding<'a> {
    /// `embedding`.
    object: &'static str,
    embedding: EmbeddingValue<'a>,
    /// The input's position in the request.
    index: usize,
}

/// An array of numbers (`encoding_format` float) or base64 of the little-endian float32 bytes.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum EmbeddingValue<'a> {
    Float(&'a [f32]),
    Base64(String),
}

/// Tokens embedded, special tokens and the prompt included, after truncation.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

async fn openai_embeddings(State(s): State<Arc<Shared>>, req: Request) -> Response {
    openai_inner(&s, req).await.unwrap_or_else(ApiError::openai)
}

async fn openai_inner(s: &Shared, req: Request) -> std::result::Result<Response, ApiError> {
    let mut obj = parse_object(&read_body(s, req).await?)?;
    let mut texts = texts_field(&mut obj, "input", s.opts.max_inputs)?;
    let model = str_field(&obj, "model")?
        .unwrap_or(&s.opts.model_name)
        .to_string();
    let base64 = match str_field(&obj, "encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "`encoding_format` must be \"float\" or \"base64\", not {other:?}"
            ))
            .param("encoding_format"))
        }
    };
    let dim = s.embedder.dim();
    check_dimensions(&obj, dim)?;
    let skip = apply_prompt(s, &obj, &mut texts)?;
    let admitted = admit(s, &texts, true).await?;
    let ids: Vec<Vec<u32>> = tokenize(s, texts)
        .await?
        .into_iter()
        .map(|t| t.ids)
        .collect();
    let tokens: usize = ids.iter().map(Vec::len).sum();
    let (rows, stats) = embed_ids(s, ids, s.embedder.normalizes(), skip).await?;
    let data = rows
        .chunks_exact(dim)
        .enumerate()
        .map(|(index, row)| OpenAiEmbedding {
            object: "embedding",
            embedding: if base64 {
                let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingValue::Float(row)
            },
            index,
        })
        .collect();
    let resp = OpenAiResponse {
        object: "list",
        data,
        model: &model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    Ok(with_stats(
        holding(Json(resp).into_response(), admitted),
        stats,
    ))
}

async fn tei_embed(State(s): State<Arc<Shared>>, req: Request) -> Response {
    tei_inner(&s, req).await.unwrap_or_else(ApiError::tei)
}

async fn tei_inner(s: &Shared, req: Request) -> std::result::Result<Response, ApiError> {
    let mut obj = parse_object(&read_body(s, req).await?)?;
    let mut texts = texts_field(&mut obj, "inputs", s.opts.max_inputs)?;
    let normalize = bool_field(&obj, "normalize", true)?;
    let truncate = bool_field(&obj, "truncate", s.opts.auto_truncate)?;
    match str_field(&obj, "truncation_direction")? {
        None => {}
        Some(d) if d.eq_ignore_ascii_case("right") => {}
        Some(d) => {
            return Err(ApiError::bad(format!(
                "`truncation_direction` {d:?} is not supported (only \"Right\")"
            ))
            .param("truncation_direction"))
        }
    }
    let dim = s.embedder.dim();
    check_dimensions(&obj, dim)?;
    let skip = apply_prompt(s, &obj, &mut texts)?;
    let admitted = admit(s, &texts, true).await?;
    let tokenized = tokenize(s, texts).await?;
    if !truncate {
        if let Some(i) = tokenized.iter().position(|t| t.truncated) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "input {i} is longer than the model's maximum of {} tokens; send \"truncate\": true to truncate it",
                    s.embedder.max_seq_length()
                ),
            )
            .param("inputs"));
        }
    }
    let ids = tokenized.into_iter().map(|t| t.ids).collect();
    let (rows, stats) = embed_ids(s, ids, normalize, skip).await?;
    let out: Vec<&[f32]> = rows.chunks_exact(dim).collect();
    Ok(with_stats(
        holding(Json(out).into_response(), admitted),
        stats,
    ))
}

async fn tei_tokenize(State(s): State<Arc<Shared>>, req: Request) -> Response {
    tokenize_inner(&s, req).await.unwrap_or_else(ApiError::tei)
}

/// One token of `/tokenize`'s answer, as text-embeddings-inference writes it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct SimpleToken {
    id: u32,
    /// The piece of the input it came from (the vocabulary piece for special tokens).
    text: String,
    special: bool,
    /// Character offsets into the input; null for special tokens.
    start: Option<usize>,
    stop: Option<usize>,
}

async fn tokenize_inner(s: &Shared, req: Request) -> std::result::Result<Response, ApiError> {
    let mut obj = parse_object(&read_body(s, req).await?)?;
    let mut texts = texts_field(&mut obj, "inputs", s.opts.max_inputs)?;
    let add_special = bool_field(&obj, "add_special_tokens", true)?;
    let truncate = bool_field(&obj, "truncate", true)?;
    apply_prompt(s, &obj, &mut texts)?;
    let texts = Arc::new(texts);
    let admitted = admit(s, &texts, truncate).await?;
    let tokenized = tokenize_with(s, texts.clone(), truncate).await?;
    let out: Vec<Vec<SimpleToken>> = tokenized
        .iter()
        .zip(texts.iter())
        .map(|(t, text)| simple_tokens(t, text, add_special))
        .collect();
    let stats = RequestStats {
        inputs: tokenized.len(),
        tokens: tokenized.iter().map(|t| t.ids.len()).sum(),
        ..Default::default()
    };
    Ok(with_stats(
        holding(Json(out).into_response(), admitted),
        stats,
    ))
}

/// A tokenized text as `/tokenize` answers it: each token with the characters it covers.
fn simple_tokens(t: &crate::Tokenized, text: &str, add_special: bool) -> Vec<SimpleToken> {
    // byte index of each character, and of the end
    let bytes: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    let n_chars = bytes.len() - 1;
    let mut out = Vec::with_capacity(t.ids.len());
    for (i, &id) in t.ids.iter().enumerate() {
        if t.special[i] {
            if add_special {
                out.push(SimpleToken {
                    id,
                    text: t.tokens[i].clone(),
                    special: true,
                    start: None,
                    stop: None,
                });
            }
            continue;
        }
        let (start, stop) = t.offsets[i];
        let (a, b) = (
            start.min(n_chars),
            stop.min(n_chars).max(start.min(n_chars)),
        );
        out.push(SimpleToken {
            id,
            text: text[bytes[a]..bytes[b]].to_string(),
            special: false,
            start: Some(start),
            stop: Some(stop),
        });
    }
    out
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    if s.queue.is_closed() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the batcher has stopped").openai();
    }
    Json(openapi::Health {
        status: "ok".into(),
    })
    .into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let queued = s.queue.max_capacity() - s.queue.capacity();
    let in_flight = s.opts.max_tokens_in_flight - s.in_flight.available_permits();
    let text = s
        .metrics
        .render(&s.opts.model_name, &s.embedder, queued, in_flight);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
    .openai()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .openai()
}

/// Middleware: with an API key set, refuse requests without it (401) on every route but
/// `/health` and `/metrics` (probes and scrapers; neither reveals request data).
async fn authorize(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(key) = &s.opts.api_key else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/health" | "/metrics") {
        return next.run(req).await;
    }
    // the scheme is case-insensitive (RFC 9110): `Bearer`, `bearer`, ...
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token);
    if same_secret(given.trim().as_bytes(), key.as_bytes()) {
        return next.run(req).await;
    }
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send `Authorization: Bearer <key>`",
    )
    .openai();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// `a == b` in time that depends only on the lengths (an attacker learns nothing from timing
/// about how much of a guessed key was right).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // (black_box: keep the compiler from ending the fold at the first difference)
    std::hint::black_box(diff) == 0 && a.len() == b.len()
}

/// `GET /info`: what is served and with which limits.
async fn info(State(s): State<Arc<Shared>>) -> Response {
    let e = &s.embedder;
    let p = e.pipeline();
    let o = &s.opts;
    Json(openapi::Info {
        model_id: o.model_name.clone(),
        revision: o.revision.clone(),
        model_sha: o.revision.clone(),
        model_type: match e.kind() {
            crate::ModelKind::Embedding => "embedding",
            crate::ModelKind::CrossEncoder => "reranker",
        }
        .into(),
        dim: e.dim(),
        max_seq_length: e.max_seq_length(),
        max_input_length: e.max_seq_length(),
        pooling: p.pooling.iter().map(|m| m.name().to_string()).collect(),
        normalize: p.normalize,
        dtype: e.options().precision.to_string(),
        device: e.device().to_string(),
        max_batch_tokens: o.max_batch_tokens,
        max_client_batch_size: o.max_inputs,
        max_body_bytes: o.max_body_bytes,
        max_queued_requests: o.max_queued_requests,
        max_tokens_in_flight: o.max_tokens_in_flight,
        max_connections: o.max_connections,
        auto_truncate: o.auto_truncate,
        prompts: e.prompts().clone(),
        default_prompt_name: e.default_prompt_name().map(String::from),
        include_prompt: p.include_prompt,
        version: env!("CARGO_PKG_VERSION").into(),
    })
    .into_response()
}

/// `GET /v1/models`: the one model, in OpenAI's list shape.
async fn models(State(s): State<Arc<Shared>>) -> Response {
    Json(openapi::ModelList {
        object: "list".into(),
        data: vec![openapi::ModelCard {
            id: s.opts.model_name.clone(),
            object: "model".into(),
            created: 0,
            owned_by: "deberta-embed".into(),
        }],
    })
    .into_response()
}

/// Middleware: count and time every request by route and status.
async fn track(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    s.metrics.record_request(route, status, seconds);
    // one line per request; never the request's text
    let st = resp
        .extensions()
        .get::<RequestStats>()
        .copied()
        .unwrap_or_default();
    tracing::info!(
        target: "deberta_embed::request",
        method = %method,
        route,
        status,
        inputs = st.inputs,
        tokens = st.tokens,
        queue_ms = st.queue_s * 1e3,
        compute_ms = st.compute_s * 1e3,
        total_ms = seconds * 1e3,
        "request"
    );
    resp
}
