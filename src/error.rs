//! The library's error type: every failure a user can cause (bad model directory, bad input)
//! becomes one of these, with a message that names the file, field or tensor at fault.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or embedding text.
///
/// ```
/// use deberta_embed::{Device, Embedder, Error};
///
/// // A directory that is not a model: the error names the file at fault.
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eval");
/// let err = Embedder::load(dir, Device::Cpu).err().expect("not a model");
/// assert!(err.to_string().contains("config.json"), "{err}");
///
/// // Bad arguments are `Input` errors.
/// assert!(matches!("cuda:x".parse::<Device>(), Err(Error::Input(_))));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// config.json or a sentence-transformers file is malformed, inconsistent or unsupported.
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    /// The weight file is truncated, corrupt or in a format we cannot read.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// A tensor the config requires is absent from the weight file.
    #[error("{}: tensor `{name}` is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor has a shape other than the config implies.
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// tokenizer.json is missing, corrupt, or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A caller-supplied argument or input is invalid.
    #[error("{0}")]
    Input(String),
    /// A model named by hub id could not be fetched or found in the cache (repository, revision
    /// or file not found, token refused, no network, offline, interrupted download).
    #[error("{repo}: {msg}")]
    Hub { repo: String, msg: String },
    /// The requested device is unavailable or failed.
    #[error("device: {0}")]
    Device(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

thread_local! {
    /// How many [`catching_panics`] calls this thread is inside.
    static CATCHING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `f()`, with a panic inside it turned into `Error::Tokenizer("{what}: {panic message}")`.
/// For calls into dependencies that panic on malformed files (the tokenizers crate does on a
/// corrupt precompiled charsmap, for one) instead of returning an error.
pub(crate) fn catching_panics<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    r.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Tokenizer(format!("{what}: {msg}")))
    })
}

/// Whether a panic on this thread is about to be turned into an error (for a panic hook that
/// reports only the panics nobody handles).
pub fn panic_is_caught() -> bool {
    CATCHING.with(|c| c.get() > 0)
}
