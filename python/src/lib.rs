//! `deberta_embed._native`: the Python face of [`deberta_embed::Embedder`].
//!
//! Shapes and arguments follow `SentenceTransformer.encode`'s numpy output: a `str` gives a
//! 1-D array `(dim,)`, a list gives `(n, dim)` (`(0, dim)` when empty). The GIL is released
//! while text is tokenized and while the model runs, so Python threads calling `encode` on one
//! `Embedder` overlap their tokenization (the forwards take turns on the model's own worker
//! pool). Library errors become `DebertaEmbedError` (a `ValueError`) with the library's
//! message; a panic inside the library is caught and raised as one too, never unwinding into
//! the interpreter.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;

use deberta_embed::{Device, EmbedderOptions, Embeddings, Error, Precision, Similarity};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

pyo3::create_exception!(
    deberta_embed,
    DebertaEmbedError,
    PyValueError,
    "A model that cannot be loaded or an input that cannot be embedded; the message is the \
     library's (it names the file, field or argument at fault)."
);

/// A library error as the Python exception.
fn py_err(e: Error) -> PyErr {
    DebertaEmbedError::new_err(e.to_string())
}

/// `f()`, with a panic turned into an error instead of unwinding across the FFI boundary.
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(py_err),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(DebertaEmbedError::new_err(format!(
                "internal error (please report it): {msg}"
            )))
        }
    }
}

/// A count argument that must be at least 1 (`DebertaEmbedError` otherwise, not the
/// `OverflowError` a negative int would raise on its way to `usize`).
fn positive(name: &str, v: i64) -> PyResult<usize> {
    if v < 1 {
        return Err(DebertaEmbedError::new_err(format!(
            "{name} must be at least 1, got {v}"
        )));
    }
    usize::try_from(v).map_err(|_| DebertaEmbedError::new_err(format!("{name} = {v} is too large")))
}

/// The texts of `sentences` (a `str`, or an iterable of `str`), and whether it was one `str`.
fn texts_of(sentences: &Bound<'_, PyAny>) -> PyResult<(Vec<String>, bool)> {
    if let Ok(s) = sentences.cast::<PyString>() {
        return Ok((vec![s.to_cow()?.into_owned()], true));
    }
    if sentences.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "expected a str or a list of str, got bytes (decode it first)",
        ));
    }
    let iter = sentences.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "expected a str or a list of str, got {}",
            type_name(sentences)
        ))
    })?;
    let mut out = Vec::new();
    for (i, item) in iter.enumerate() {
        let item = item?;
        let s = item.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "sentences[{i}] is {}, expected str",
                type_name(&item)
            ))
        })?;
        out.push(s.to_cow()?.into_owned());
    }
    Ok((out, false))
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an object".into())
}

/// Progress over batches: tqdm when it is installed, else a line on stderr.
struct Progress<'py> {
    bar: Option<Bound<'py, PyAny>>,
    stderr: Option<Bound<'py, PyAny>>,
    done: usize,
    total: usize,
}

impl<'py> Progress<'py> {
    fn new(py: Python<'py>, total: usize) -> PyResult<Self> {
        if let Ok(tqdm) = py.import("tqdm.auto").and_then(|m| m.getattr("tqdm")) {
            let kw = PyDict::new(py);
            kw.set_item("total", total)?;
            kw.set_item("desc", "Batches")?;
            return Ok(Progress {
                bar: Some(tqdm.call((), Some(&kw))?),
                stderr: None,
                done: 0,
                total,
            });
        }
        let p = Progress {
            bar: None,
            stderr: Some(py.import("sys")?.getattr("stderr")?),
            done: 0,
            total,
        };
        p.show()?;
        Ok(p)
    }

    fn show(&self) -> PyResult<()> {
        if let Some(err) = &self.stderr {
            err.call_method1(
                "write",
                (format!("\rBatches: {}/{}", self.done, self.total),),
            )?;
            err.call_method0("flush")?;
        }
        Ok(())
    }

    fn step(&mut self) -> PyResult<()> {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.call_method1("update", (1,))?;
        }
        self.show()
    }

    fn close(&self) -> PyResult<()> {
        if let Some(bar) = &self.bar {
            bar.call_method0("close")?;
        }
        if let Some(err) = &self.stderr {
            err.call_method1("write", ("\n",))?;
        }
        Ok(())
    }
}

/// A loaded DeBERTa-v2/v3 sentence-embedding model.
///
/// Embedder(model, device="cpu", dtype=None, threads=None, batch_size=32, normalize=None,
///          max_batch_tokens=16384)
///
/// model: a model directory (sentence-transformers layout or a plain transformers
///     checkpoint) or a Hugging Face hub id (`org/name`, fetched into the Hugging Face cache on
///     first use; `HF_HUB_OFFLINE=1` keeps to the cache).
/// device: "cpu", or "cuda" / "cuda:N" in a build with the `cuda` feature.
/// dtype: None or "f32" (exact), "bf16" (bf16 weights and inputs, fp32 sums), "int8" (CPU:
///     int8 weights, inputs quantized per row, exact integer sums), "f16" (GPU).
/// threads: worker threads of the forward (None: one per core).
/// batch_size: default sentences per forward batch of `encode`.
/// normalize: None follows the model (its Normalize module); True / False force L2
///     normalization on / off.
/// max_batch_tokens: tokens per forward batch at most (bounds activation memory).
#[pyclass(module = "deberta_embed", frozen)]
struct Embedder {
    inner: deberta_embed::Embedder,
    /// Taken before a forward enters the model's worker pool: one forward at a time. Without
    /// it, a pool worker idling inside one caller's forward can pick up a second caller's
    /// forward, which then waits on the model's state held by the first: a deadlock.
    forward: Mutex<()>,
    model: String,
    batch_size: usize,
    threads: usize,
}

#[pymethods]
impl Embedder {
    #[new]
    #[pyo3(signature = (model, device = "cpu", dtype = None, threads = None, batch_size = 32, normalize = None, max_batch_tokens = 16384))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        device: &str,
        dtype: Option<&str>,
        threads: Option<i64>,
        batch_size: i64,
        normalize: Option<bool>,
        max_batch_tokens: i64,
    ) -> PyResult<Self> {
        let device = Device::from_str(device).map_err(py_err)?;
        let precision = match dtype {
            None => Precision::F32,
            Some(d) => Precision::from_str(d).map_err(py_err)?,
        };
        let threads = threads.map(|t| positive("threads", t)).transpose()?;
        let batch_size = positive("batch_size", batch_size)?;
        let opts = EmbedderOptions {
            threads,
            // `encode` forms the batches of `batch_size` itself (per call); the library
            // splits them further only by the token budget.
            batch_size: usize::MAX,
            normalize,
            precision,
            max_batch_tokens: positive("max_batch_tokens", max_batch_tokens)?,
        };
        let dir = model.clone();
        let inner =
            py.detach(|| guarded(|| deberta_embed::Embedder::load_with(&dir, device, opts)))?;
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        Ok(Embedder {
            inner,
            forward: Mutex::new(()),
            model: model.display().to_string(),
            batch_size,
            threads,
        })
    }

    /// Embed a sentence or a list of sentences.
    ///
    /// Returns a float32 numpy array: (dim,) for a str, (n, dim) for a list (rows in input
    /// order), (0, dim) for an empty list, as SentenceTransformer.encode does.
    /// batch_size: sentences per forward batch (default: the Embedder's); batches are formed
    ///     from sentences of similar token length, as sentence-transformers does.
    /// normalize_embeddings: True L2-normalizes every row; False (default) leaves them as the
    ///     Embedder makes them (normalized if the model has a Normalize module or the Embedder
    ///     was made with normalize=True), as in sentence-transformers.
    /// show_progress_bar: a progress bar over batches on stderr (tqdm's if installed).
    #[pyo3(signature = (sentences, batch_size = None, normalize_embeddings = false, show_progress_bar = false))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        sentences: &Bound<'py, PyAny>,
        batch_size: Option<i64>,
        normalize_embeddings: bool,
        show_progress_bar: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (texts, single) = texts_of(sentences)?;
        let batch_size = match batch_size {
            None => self.batch_size,
            Some(b) => positive("batch_size", b)?,
        };
        let dim = self.inner.dim();
        let n = texts.len();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut ids = py.detach(|| guarded(|| self.inner.token_ids(&refs)))?;
        // Longest first (as sentence-transformers sorts), so each batch holds similar lengths.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let batches = n.div_ceil(batch_size);
        let mut progress = if show_progress_bar {
            Some(Progress::new(py, batches)?)
        } else {
            None
        };
        let mut out = vec![0f32; n * dim];
        for chunk in order.chunks(batch_size) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| std::mem::take(&mut ids[i])).collect();
            let emb: Embeddings = py.detach(|| {
                // A panic in an earlier forward poisons nothing this lock guards.
                let _one = self.forward.lock().unwrap_or_else(|p| p.into_inner());
                guarded(|| {
                    if normalize_embeddings {
                        self.inner.encode_ids_pooled(&batch)
                    } else {
                        self.inner.encode_ids(&batch)
                    }
                })
            })?;
            for (row, &i) in emb.iter().zip(chunk) {
                let dst = &mut out[i * dim..(i + 1) * dim];
                dst.copy_from_slice(row);
                if normalize_embeddings {
                    deberta_embed::pooling::l2_normalize(dst);
                }
            }
            if let Some(p) = progress.as_mut() {
                p.step()?;
            }
            // Ctrl-C between batches.
            py.check_signals()?;
        }
        if let Some(p) = &progress {
            p.close()?;
        }
        let arr = PyArray1::from_vec(py, out);
        if single {
            Ok(arr.into_any())
        } else {
            Ok(arr.reshape([n, dim])?.into_any())
        }
    }

    /// Pairwise similarity of two sets of embeddings (arrays of shape (dim,) or (n, dim), as
    /// `encode` returns): a float32 array (n, m), as SentenceTransformer.similarity.
    /// similarity_fn: "cosine" (default), "dot", "euclidean" or "manhattan" (the last two are
    ///     negative distances, so that larger is more similar).
    #[pyo3(signature = (a, b, similarity_fn = "cosine"))]
    fn similarity<'py>(
        &self,
        py: Python<'py>,
        a: &Bound<'py, PyAny>,
        b: &Bound<'py, PyAny>,
        similarity_fn: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f = Similarity::parse(similarity_fn).ok_or_else(|| {
            DebertaEmbedError::new_err(format!(
                "unknown similarity function `{similarity_fn}` (expected cosine, dot, euclidean or manhattan)"
            ))
        })?;
        let a = rows_of(py, a, "a")?;
        let b = rows_of(py, b, "b")?;
        if a.dim() != b.dim() {
            return Err(DebertaEmbedError::new_err(format!(
                "a has rows of width {}, b of width {}",
                a.dim(),
                b.dim()
            )));
        }
        let (n, m) = (a.len(), b.len());
        let sims = py.detach(|| f.matrix(&a, &b));
        Ok(PyArray1::from_vec(py, sims).reshape([n, m])?.into_any())
    }

    /// How the model sees each text (truncated to max_seq_length, special tokens included):
    /// for a str one dict, for a list one dict per text, with "ids" (token ids), "tokens"
    /// (vocabulary pieces), "special" (whether each token is a special token), "offsets"
    /// ((start, stop) character span of each token in the text; (0, 0) for added special
    /// tokens) and "truncated" (the text had more tokens than max_seq_length).
    fn tokenize<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (texts, single) = texts_of(texts)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let toks = py.detach(|| guarded(|| self.inner.tokenize(&refs)))?;
        let list = PyList::empty(py);
        for t in toks {
            let d = PyDict::new(py);
            d.set_item("ids", t.ids)?;
            d.set_item("tokens", t.tokens)?;
            d.set_item("special", t.special)?;
            d.set_item("offsets", t.offsets)?;
            d.set_item("truncated", t.truncated)?;
            list.append(d)?;
        }
        if single {
            Ok(list.get_item(0)?)
        } else {
            Ok(list.into_any())
        }
    }

    /// Width of the embeddings.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Inputs are truncated to this many tokens, special tokens included.
    #[getter]
    fn max_seq_length(&self) -> usize {
        self.inner.max_seq_length()
    }

    /// The device the forward runs on ("cpu", "cuda:0", ...).
    #[getter]
    fn device(&self) -> String {
        self.inner.device().to_string()
    }

    /// Precision of the forward ("f32", "bf16" or "f16").
    #[getter]
    fn dtype(&self) -> String {
        self.inner.options().precision.to_string()
    }

    /// Worker threads of the forward.
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// Default sentences per forward batch of `encode`.
    #[getter]
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Whether `encode` L2-normalizes its output by default.
    #[getter]
    fn normalize(&self) -> bool {
        self.inner.normalizes()
    }

    /// The model as given (directory or hub id).
    #[getter]
    fn model(&self) -> &str {
        &self.model
    }

    fn __repr__(&self) -> String {
        format!(
            "Embedder(model={:?}, device={:?}, dtype={:?}, threads={}, batch_size={}, dim={}, max_seq_length={})",
            self.model,
            self.device(),
            self.dtype(),
            self.threads,
            self.batch_size,
            self.dim(),
            self.max_seq_length()
        )
    }
}

/// Rows of an array-like of shape (dim,) or (n, dim), as float32.
fn rows_of(py: Python<'_>, x: &Bound<'_, PyAny>, name: &str) -> PyResult<Embeddings> {
    let np = py.import("numpy")?;
    let arr = np
        .call_method1("ascontiguousarray", (x, "float32"))
        .map_err(|e| PyTypeError::new_err(format!("{name}: not an array of numbers ({e})")))?;
    let arr = arr.cast::<PyArrayDyn<f32>>()?;
    let shape = arr.shape().to_vec();
    let dim = match shape.as_slice() {
        [d] | [_, d] => *d,
        _ => {
            return Err(DebertaEmbedError::new_err(format!(
                "{name} must have 1 or 2 dimensions, got shape {shape:?}"
            )))
        }
    };
    if dim == 0 {
        return Err(DebertaEmbedError::new_err(format!(
            "{name} has rows of width 0"
        )));
    }
    let data = arr.to_vec()?;
    Embeddings::from_vec(data, dim).map_err(py_err)
}

/// DeBERTa-v2/v3 sentence embeddings, numerically identical to sentence-transformers.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Embedder>()?;
    m.add("DebertaEmbedError", m.py().get_type::<DebertaEmbedError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
