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
