//! deberta-embed: DeBERTa-v2/v3 sentence embeddings in Rust.

pub mod backend;
pub mod checkpoint;
pub mod error;

pub use error::{Error, Result};
