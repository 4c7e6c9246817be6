//! The Prometheus metrics of `GET /metrics`: requests by route and status, latency, inputs and
//! tokens embedded, batch sizes, and the state of the queue and the model.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::Embedder;

const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const BATCH_TOKEN_BOUNDS: &[f64] = &[16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0];

/// A Prometheus histogram: per-bucket counts (rendered cumulatively), sum and count.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }
    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
    /// `name_bucket{labels,le=...}` lines, then `_sum` and `_count`; `labels` is empty or
    /// ends with a comma.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        use std::fmt::Write;
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let bare = labels.trim_end_matches(',');
        let braces = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
pub(super) struct Metrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Clone)]
struct MetricsInner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    inputs: u64,
    tokens: u64,
    batch_size: Histogram,
    batch_requests: Histogram,
    batch_tokens: Histogram,
}

impl Default for MetricsInner {
    fn default() -> Self {
        MetricsInner {
            requests: BTreeMap::new(),
            latency: BTreeMap::new(),
            inputs: 0,
            tokens: 0,
            batch_size: Histogram::new(BATCH_SIZE_BOUNDS),
            batch_requests: Histogram::new(BATCH_SIZE_BOUNDS),
            batch_tokens: Histogram::new(BATCH_TOKEN_BOUNDS),
        }
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, MetricsInner> {
        // counters stay meaningful after a panic elsewhere: keep counting
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub(super) fn record_request(&self, route: &'static str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests.entry((route, status)).or_default() += 1;
        m.latency
            .entry(route)
            .or_insert_with(|| Histogram::new(LATENCY_BOUNDS))
            .observe(seconds);
    }
    pub(super) fn record_embedded(&self, inputs: usize, tokens: usize) {
        let mut m = self.lock();
        m.inputs += inputs as u64;
        m.tokens += tokens as u64;
    }
    pub(super) fn record_batch(&self, sequences: usize, requests: usize, tokens: usize) {
        let mut m = self.lock();
        m.batch_size.observe(sequences as f64);
        m.batch_requests.observe(requests as f64);
        m.batch_tokens.observe(tokens as f64);
    }

    /// The Prometheus text exposition (format 0.0.4).
    /// `queued`: requests waiting for the batcher; `in_flight`: tokens the requests in flight
    /// hold (of [`ServerOptions::max_tokens_in_flight`]).
    pub(super) fn render(
        &self,
        model: &str,
        embedder: &Embedder,
        queued: usize,
        in_flight: usize,
    ) -> String {
        use std::fmt::Write;
        let m = self.lock().clone();
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "deberta_embed_model_info",
            "gauge",
            "The model being served (value always 1).",
        );
        let _ = writeln!(
            out,
            "deberta_embed_model_info{{model=\"{}\",dim=\"{}\",max_seq_length=\"{}\",device=\"{}\"}} 1",
            escape_label(model),
            embedder.dim(),
            embedder.max_seq_length(),
            embedder.device()
        );
        head(
            &mut out,
            "deberta_embed_requests_total",
            "counter",
            "HTTP requests answered, by route and status code.",
        );
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "deberta_embed_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        head(
            &mut out,
            "deberta_embed_request_duration_seconds",
            "histogram",
            "Time from request to response, by route.",
        );
        for (route, h) in &m.latency {
            h.render(
                &mut out,
                "deberta_embed_request_duration_seconds",
                &format!("route=\"{route}\","),
            );
        }
        head(
            &mut out,
            "deberta_embed_inputs_total",
            "counter",
            "Texts embedded.",
        );
        let _ = writeln!(out, "deberta_embed_inputs_total {}", m.inputs);
        head(
            &mut out,
            "deberta_embed_tokens_total",
            "counter",
            "Tokens embedded (special tokens included, after truncation).",
        );
        let _ = writeln!(out, "deberta_embed_tokens_total {}", m.tokens);
        head(
            &mut out,
            "deberta_embed_batch_size",
            "histogram",
            "Sequences per batch the batcher ran.",
        );
        m.batch_size
            .render(&mut out, "deberta_embed_batch_size", "");
        head(
            &mut out,
            "deberta_embed_batch_requests",
            "histogram",
            "Requests per batch the batcher ran.",
        );
        m.batch_requests
            .render(&mut out, "deberta_embed_batch_requests", "");
        head(
            &mut out,
            "deberta_embed_batch_tokens",
            "histogram",
            "Tokens per batch the batcher ran.",
        );
        m.batch_tokens
            .render(&mut out, "deberta_embed_batch_tokens", "");
        head(
            &mut out,
            "deberta_embed_queued_requests",
            "gauge",
            "Requests waiting for the batcher.",
        );
        let _ = writeln!(out, "deberta_embed_queued_requests {queued}");
        head(
            &mut out,
            "deberta_embed_tokens_in_flight",
            "gauge",
            "Tokens held by requests in flight (estimated before tokenizing).",
        );
        let _ = writeln!(out, "deberta_embed_tokens_in_flight {in_flight}");
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The route label of a path: the known routes by name, everything else as "other" (so that
/// random paths cannot grow the label set).
pub(super) fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/embeddings" => "/v1/embeddings",
        "/embed" => "/embed",
        "/" => "/",
        "/tokenize" => "/tokenize",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/info" => "/info",
        "/v1/models" => "/v1/models",
        "/openapi.json" => "/openapi.json",
        "/rerank" => "/rerank",
        "/predict" => "/predict",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let mut h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [1.0, 1.5, 3.0, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "r=\"a\",");
        assert_eq!(
            out,
            "x_bucket{r=\"a\",le=\"1\"} 1\nx_bucket{r=\"a\",le=\"2\"} 2\nx_bucket{r=\"a\",le=\"4\"} 3\n\
             x_bucket{r=\"a\",le=\"+Inf\"} 4\nx_sum{r=\"a\"} 14.5\nx_count{r=\"a\"} 4\n"
        );
        let mut bare = String::new();
        Histogram::new(&[1.0]).render(&mut bare, "y", "");
        assert_eq!(
            bare,
            "y_bucket{le=\"1\"} 0\ny_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(route_label("/embed"), "/embed");
        assert_eq!(route_label("/embed/x"), "other");
        assert_eq!(route_label("/random-123"), "other");
    }
}
