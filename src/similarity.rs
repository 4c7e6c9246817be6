//! Pairwise similarity matrices with sentence-transformers' conventions
//! (`SentenceTransformer.similarity`): cosine, dot, and the *negative* euclidean and manhattan
//! distances, so that larger always means more similar.

use crate::Embeddings;

/// A similarity function, named as in sentence-transformers.
///
/// ```
/// use deberta_embed::{Embeddings, Similarity};
///
/// # fn main() -> deberta_embed::Result<()> {
/// let (a, b) = ([3.0, 4.0], [4.0, 0.0]);
/// assert_eq!(Similarity::Dot.pair(&a, &b), 12.0);
/// assert!((Similarity::Cosine.pair(&a, &b) - 0.6).abs() < 1e-6);
/// assert_eq!(Similarity::Manhattan.pair(&a, &b), -5.0); // a negative distance
/// assert_eq!(Similarity::parse("l2"), Some(Similarity::Euclidean));
///
/// let e = Embeddings::from_vec(vec![3.0, 4.0, 4.0, 0.0], 2)?;
/// let m = Similarity::Euclidean.matrix(&e, &e); // [2, 2], row-major
/// assert_eq!(m[0], 0.0);
/// assert!((m[1] + 17f32.sqrt()).abs() < 1e-6);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Similarity {
    Cosine,
    Dot,
    /// `-||a - b||_2`
    Euclidean,
    /// `-||a - b||_1`
    Manhattan,
}

impl Similarity {
    /// Parse `cosine`, `dot`, `euclidean`, `manhattan` (also `dot_product`, `l2`, `l1`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" | "cos" => Some(Similarity::Cosine),
            "dot" | "dot_product" => Some(Similarity::Dot),
            "euclidean" | "l2" => Some(Similarity::Euclidean),
            "manhattan" | "l1" => Some(Similarity::Manhattan),
            _ => None,
        }
    }

    /// Similarity of two vectors of equal length.
    pub fn pair(self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "vectors must have the same length");
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>()
        };
        let v = match self {
            Similarity::Dot => dot(a, b),
            Similarity::Cosine => {
                // torch: a / max(||a||, eps) with eps = 1e-8 (util.cos_sim normalizes first)
                let na = dot(a, a).sqrt().max(1e-8);
                let nb = dot(b, b).sqrt().max(1e-8);
                dot(a, b) / (na * nb)
            }
            Similarity::Euclidean => -a
                .iter()
                .zip(b)
                .map(|(&x, &y)| {
                    let d = x as f64 - y as f64;
                    d * d
                })
                .sum::<f64>()
                .sqrt(),
            Similarity::Manhattan => -a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).abs())
                .sum::<f64>(),
        };
        v as f32
    }

    /// The [a.rows(), b.rows()] matrix, row-major.
    pub fn matrix(self, a: &Embeddings, b: &Embeddings) -> Vec<f32> {
        assert_eq!(a.dim(), b.dim(), "embeddings must have the same width");
        let mut out = Vec::with_capacity(a.len() * b.len());
        for ra in a.iter() {
            for rb in b.iter() {
                out.push(self.pair(ra, rb));
            }
        }
        out
    }
}

/// Cosine similarity matrix.
pub fn cosine(a: &Embeddings, b: &Embeddings) -> Vec<f32> {
    Similarity::Cosine.matrix(a, b)
}
/// Dot-product matrix.
pub fn dot(a: &Embeddings, b: &Embeddings) -> Vec<f32> {
    Similarity::Dot.matrix(a, b)
}
/// Negative euclidean distance matrix.
pub fn euclidean(a: &Embeddings, b: &Embeddings) -> Vec<f32> {
    Similarity::Euclidean.matrix(a, b)
}
/// Negative manhattan distance matrix.
pub fn manhattan(a: &Embeddings, b: &Embeddings) -> Vec<f32> {
    Similarity::Manhattan.matrix(a, b)
}
