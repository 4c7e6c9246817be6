//! Shared helpers for the fixture tests: reading the references written by
//! scripts/make_fixtures.py.
#![allow(dead_code)]

use std::path::PathBuf;

use safetensors::SafeTensors;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Names of every reference model (tests/fixtures/reference/<name>.json).
pub fn model_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("reference"))
        .expect("reference dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let stem = p.file_stem()?.to_str()?.to_string();
            (p.extension()? == "json" && p.with_extension("safetensors").is_file()).then_some(stem)
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 8,
        "expected the fixture models, found {names:?}"
    );
    names
}

/// A JSON array of arrays of token ids (a reference's `token_ids`, `input_ids`, ...).
pub fn id_rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .expect("an array of id rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("a row of ids")
                .iter()
                .map(|x| x.as_u64().expect("a token id") as u32)
                .collect()
        })
        .collect()
}

pub struct Reference {
    pub name: String,
    pub meta: Value,
    pub sentences: Vec<String>,
    pub token_ids: Vec<Vec<u32>>,
    pub dim: usize,
    bytes: Vec<u8>,
}

impl Reference {
    pub fn load(name: &str) -> Self {
        let dir = fixtures().join("reference");
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let sentences = meta["sentences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        let token_ids = id_rows(&meta["token_ids"]);
        let dim = meta["dim"].as_u64().unwrap() as usize;
        let bytes = std::fs::read(dir.join(format!("{name}.safetensors"))).unwrap();
        Reference {
            name: name.to_string(),
            meta,
            sentences,
            token_ids,
            dim,
            bytes,
        }
    }

    pub fn model_dir(&self) -> PathBuf {
        fixtures().join("models").join(&self.name)
    }

    /// A float32 tensor of the reference file, flattened, with its shape.
    pub fn tensor(&self, key: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(key).ok()?;
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some((t.shape().to_vec(), v))
    }

    pub fn embeddings(&self) -> Vec<f32> {
        let (shape, v) = self.tensor("embeddings").expect("embeddings tensor");
        assert_eq!(shape, vec![self.sentences.len(), self.dim]);
        v
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    dot / (na * nb)
}
