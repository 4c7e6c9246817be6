//! Weight files as users have them: `model.safetensors` (memory-mapped) or `pytorch_model.bin`
//! (PyTorch zip + pickle, read here without Python). Both become a [`Checkpoint`]: named tensors
//! that the model loader pulls out one by one, converted to f32.

pub mod pytorch;

/// Element type of a stored tensor. Everything is converted to f32 at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// A tensor read fully into memory: contiguous, row-major, little-endian bytes.
#[derive(Clone, Debug)]
pub struct OwnedTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensors};

use crate::error::{Error, Result};

/// Where the tensors live.
enum Store {
    /// `model.safetensors`, memory-mapped; tensors are sliced out of the map on request.
    Safetensors {
        map: Arc<Mmap>,
        /// byte offset of the data section
        data_start: usize,
        meta: Metadata,
    },
    /// `pytorch_model.bin`, read fully.
    Torch(HashMap<String, OwnedTensor>),
}

/// The named tensors of one weight file.
pub struct Checkpoint {
    path: PathBuf,
    store: Store,
    /// "deberta." when the backbone keys carry a task-head model's prefix.
    prefix: &'static str,
}

impl Checkpoint {
    /// Open the weights in a transformers model folder: `model.safetensors` if present,
    /// else `pytorch_model.bin`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let st = dir.join("model.safetensors");
        let bin = dir.join("pytorch_model.bin");
        if st.is_file() {
            Self::open_safetensors(&st)
        } else if bin.is_file() {
            Self::open_pytorch(&bin)
        } else if dir.join("model.safetensors.index.json").is_file()
            || dir.join("pytorch_model.bin.index.json").is_file()
        {
            Err(Error::Input(format!(
                "{}: sharded checkpoints are not supported; save the model as one file",
                dir.display()
            )))
        } else {
            Err(Error::Input(format!(
                "{}: no model.safetensors or pytorch_model.bin found",
                dir.display()
            )))
        }
    }

    /// Memory-map a `.safetensors` file and validate its header.
    pub fn open_safetensors(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process; a concurrent writer
        // truncating the file could fault, which is the documented caveat of every mmap reader
        // (safetensors itself loads this way). We never hand out references past `map`'s life.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        SafeTensors::deserialize(&map)
            .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
        // The safetensors crate keeps the last of two entries with one name; refuse instead.
        if let Some(name) = duplicate_header_key(&map) {
            return Err(Error::checkpoint(
                path,
                format!("the header names tensor `{name}` twice"),
            ));
        }
        let (header_len, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
        let mut ck = Checkpoint {
            path: path.to_path_buf(),
            store: Store::Safetensors {
                data_start: 8 + header_len,
                map: Arc::new(map),
                meta,
            },
            prefix: "",
        };
        ck.detect_prefix();
        Ok(ck)
    }

    /// Read a PyTorch zip checkpoint.
    pub fn open_pytorch(path: &Path) -> Result<Self> {
        let tensors = pytorch::load(path)?;
        let mut ck = Checkpoint {
            path: path.to_path_buf(),
            store: Store::Torch(tensors.into_iter().collect()),
            prefix: "",
        };
        ck.detect_prefix();
        Ok(ck)
    }

    /// The weight file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn has_raw(&self, name: &str) -> bool {
        match &self.store {
            Store::Safetensors { meta, .. } => meta.info(name).is_some(),
            Store::Torch(map) => map.contains_key(name),
        }
    }

    fn detect_prefix(&mut self) {
        let key = "embeddings.word_embeddings.weight";
        if !self.has_raw(key) && self.has_raw(&format!("deberta.{key}")) {
            self.prefix = "deberta.";
        }
    }

    /// Whether the backbone tensor `name` (without prefix) exists.
    pub fn contains(&self, name: &str) -> bool {
        self.has_raw(&format!("{}{name}", self.prefix))
    }

    /// Backbone tensor `name` as f32, used in place in the memory map when the file stores it
    /// as aligned f32 (no copy: the pages are shared with the page cache), else copied.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<F32Tensor> {
        if let Store::Safetensors {
            map,
            data_start,
            meta,
        } = &self.store
        {
            let full = format!("{}{name}", self.prefix);
            if let Some(info) = meta.info(&full) {
                let (a, b) = info.data_offsets;
                let n: usize = shape.iter().product();
                let start = data_start + a;
                let aligned =
                    (map.as_ptr() as usize + start).is_multiple_of(std::mem::align_of::<f32>());
                if cfg!(target_endian = "little")
                    && info.dtype == safetensors::Dtype::F32
                    && info.shape == shape
                    && b - a == n * 4
                    && start + n * 4 <= map.len()
                    && aligned
                {
                    let t = F32Tensor::Mapped {
                        map: Arc::clone(map),
                        start,
                        len: n,
                    };
                    if let Some(pos) = t.iter().position(|x| !x.is_finite()) {
                        return Err(Error::checkpoint(
                            &self.path,
                            format!("tensor `{full}` holds a non-finite value at element {pos}"),
                        ));
                    }
                    // The check touched every page; the forward touches only the rows it uses.
                    self.release_range(start, n * 4);
                    return Ok(t);
                }
            }
        }
        self.tensor(name, shape).map(F32Tensor::Owned)
    }

    /// After loading: drop the map's pages from this process's resident set. Tensors read in
    /// place stay valid (a read-only file mapping re-reads a dropped page from the page cache on
    /// the next touch), so only the embedding rows actually looked up come back. Best effort.
    pub fn release_resident_pages(&self) {
        #[cfg(unix)]
        if let Store::Safetensors { map, .. } = &self.store {
            // SAFETY: MADV_DONTNEED on a read-only, file-backed shared mapping does not change
            // its contents: later reads fault the same bytes back in from the file. Slices into
            // the map (F32Tensor::Mapped) therefore keep seeing identical data.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, map.len())
            };
        }
    }

    /// Drop the map's pages of bytes `start .. start + len` from the resident set once they
    /// have been read (copied, or checked), so that loading never holds the whole file
    /// resident: the peak RSS is then the copies plus one tensor's pages, not the file plus the
    /// copies. Pages straddling the range's ends may be dropped too; like any dropped page of
    /// this read-only map they come back from the page cache when touched. Best effort.
    fn release_range(&self, start: usize, len: usize) {
        #[cfg(unix)]
        if let Store::Safetensors { map, .. } = &self.store {
            // SAFETY: as in `release_resident_pages`: MADV_DONTNEED on a read-only, file-backed
            // mapping leaves its contents unchanged (a later read faults the same bytes back in);
            // memmap2 checks the range against the map and aligns its start to a page.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
        #[cfg(not(unix))]
        let _ = (start, len);
    }

    /// Backbone tensor `name` as f32, checked against `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.tensor_named(format!("{}{name}", self.prefix), shape)
    }

    /// Whether a tensor outside the backbone (a task head's, e.g. `classifier.weight`) exists,
    /// named as stored.
    pub fn contains_head(&self, name: &str) -> bool {
        self.has_raw(name)
    }

    /// A task head's tensor (`pooler.dense.weight`, `classifier.bias`, ...), named as stored
    /// (no backbone prefix), as f32, checked against `shape`.
    pub fn head_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.tensor_named(name.to_string(), shape)
    }

    fn tensor_named(&self, full: String, shape: &[usize]) -> Result<Vec<f32>> {
        // (the byte range in the safetensors map, released once copied)
        let mut mapped: Option<(usize, usize)> = None;
        let (dtype, found, bytes): (DType, Vec<usize>, &[u8]) = match &self.store {
            Store::Safetensors {
                map,
                data_start,
                meta,
            } => {
                let info = meta.info(&full).ok_or_else(|| Error::MissingTensor {
                    path: self.path.clone(),
                    name: full.clone(),
                })?;
                let dtype = match info.dtype {
                    safetensors::Dtype::F32 => DType::F32,
                    safetensors::Dtype::F16 => DType::F16,
                    safetensors::Dtype::BF16 => DType::BF16,
                    other => {
                        return Err(Error::checkpoint(
                            &self.path,
                            format!("tensor `{full}` has dtype {other:?}; only F32/F16/BF16 weights are supported"),
                        ))
                    }
                };
                let (a, b) = info.data_offsets;
                let bytes = data_start
                    .checked_add(a)
                    .zip(data_start.checked_add(b))
                    .and_then(|(a, b)| map.get(a..b))
                    .ok_or_else(|| {
                        Error::checkpoint(
                            &self.path,
                            format!("tensor `{full}` lies outside the file"),
                        )
                    })?;
                mapped = Some((data_start + a, bytes.len()));
                (dtype, info.shape.clone(), bytes)
            }
            Store::Torch(map) => {
                let t = map.get(&full).ok_or_else(|| Error::MissingTensor {
                    path: self.path.clone(),
                    name: full.clone(),
                })?;
                (t.dtype, t.shape.clone(), &t.data[..])
            }
        };
        if found != shape {
            return Err(Error::TensorShape {
                path: self.path.clone(),
                name: full,
                expected: shape.to_vec(),
                found,
            });
        }
        let n: usize = shape.iter().product();
        if bytes.len() != n * dtype.size() {
            return Err(Error::checkpoint(
                &self.path,
                format!(
                    "tensor `{full}` holds {} bytes, expected {}",
                    bytes.len(),
                    n * dtype.size()
                ),
            ));
        }
        let out = to_f32(dtype, bytes);
        if let Some((start, len)) = mapped {
            self.release_range(start, len);
        }
        if let Some(pos) = out.iter().position(|x| !x.is_finite()) {
            return Err(Error::checkpoint(
                &self.path,
                format!("tensor `{full}` holds a non-finite value at element {pos}"),
            ));
        }
        Ok(out)
    }
}

/// An f32 tensor either owned or read in place from a memory-mapped safetensors file.
pub enum F32Tensor {
    Owned(Vec<f32>),
    Mapped {
        map: Arc<Mmap>,
        /// byte offset of the first element (4-byte aligned in memory)
        start: usize,
        /// elements
        len: usize,
    },
}

impl std::ops::Deref for F32Tensor {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32Tensor::Owned(v) => v,
            // SAFETY: `tensor_f32` only builds `Mapped` after checking that bytes
            // start..start + 4 * len lie inside the map, that their address is 4-byte aligned,
            // and that the target is little-endian (safetensors stores little-endian f32); every
            // bit pattern is a valid f32, the map is read-only and lives as long as `self`
            // (the Arc), so the slice is valid for the returned lifetime.
            F32Tensor::Mapped { map, start, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*start).cast::<f32>(), *len)
            },
        }
    }
}

impl From<Vec<f32>> for F32Tensor {
    fn from(v: Vec<f32>) -> Self {
        F32Tensor::Owned(v)
    }
}

/// Decode little-endian elements to f32.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

/// The first key that appears twice at the top level of a safetensors header (the JSON object
/// after the 8-byte length), if any. Only called on a header the safetensors crate accepted.
pub(crate) fn duplicate_header_key(file: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct FirstDuplicate;
    impl<'de> Visitor<'de> for FirstDuplicate {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut dup = None;
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if dup.is_none() && !seen.insert(key.clone()) {
                    dup = Some(key);
                }
            }
            Ok(dup)
        }
    }
    let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(len).ok()?)?;
    let header = file.get(8..end)?;
    let mut de = serde_json::Deserializer::from_slice(header);
    de.deserialize_map(FirstDuplicate).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_safetensors_tensor_is_used_in_place_and_equals_the_copy() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/st6_proj_cls_norm");
        let ck = Checkpoint::open_dir(&dir).unwrap();
        let name = "embeddings.word_embeddings.weight";
        let shape = [640, 24];
        let mapped = ck.tensor_f32(name, &shape).unwrap();
        assert!(
            matches!(mapped, F32Tensor::Mapped { .. }),
            "expected a zero-copy view"
        );
        let copied = ck.tensor(name, &shape).unwrap();
        ck.release_resident_pages();
        assert_eq!(&mapped[..], &copied[..]);
        // a wrong shape is still an error naming both shapes
        let err = ck.tensor_f32(name, &[641, 24]).err().unwrap().to_string();
        assert!(
            err.contains("[640, 24]") && err.contains("[641, 24]"),
            "{err}"
        );
    }
}
