//! Arbitrary bytes as `pytorch_model.bin`: signature sniffing, the zip reader, our unpickler and
//! the assembly of strided / shared storages into contiguous tensors
//! (`deberta_embed::fuzzing::pytorch_case`).
#![no_main]

use deberta_embed::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzzing::pytorch_case(data);
});
