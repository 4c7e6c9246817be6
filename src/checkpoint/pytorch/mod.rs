//! `pytorch_model.bin` reader: the zip archive that `torch.save` writes since PyTorch 1.6, read in
//! Rust with our own minimal unpickler (no Python at run time).
//!
//! Layout of such an archive (the top folder is `archive/` or the file stem; we locate it by the
//! `*/data.pkl` entry):
//!
//! ```text
//! <prefix>/data.pkl      pickle (protocol 2) of the state dict: an OrderedDict name -> tensor
//! <prefix>/data/<key>    raw bytes of one storage, shared by every tensor viewing it
//! <prefix>/byteorder     "little" or "big" (absent in old files: little)
//! <prefix>/version       format version, not needed here
//! ```
//!
//! In `data.pkl` each tensor is a call `torch._utils._rebuild_tensor_v2(storage, offset, size,
//! stride, requires_grad, hooks[, metadata])`, possibly wrapped in `_rebuild_parameter`, whose
//! storage is a persistent id `('storage', torch.FloatStorage, key, location, numel)`. The
//! unpickler models exactly what is needed for that: containers, primitives, globals,
//! `OrderedDict`, the tensor rebuild functions and storages; every other callable becomes an opaque
//! value that is only an error where a tensor is expected.
//!
//! The reader in three steps, one file each:
//!
//! - `zip.rs`: recognize the file kind, find the archive's top folder, read whole entries within
//!   a decompression budget;
//! - `pickle.rs`: run `data.pkl` into an object graph (the unpickler);
//! - `storage.rs`: find the state dict in that graph, resolve each tensor's storage and dtype,
//!   and copy every tensor out of its storage.
//!
//! Robustness: every length and index read from the file is checked before use, nothing panics on
//! bad input, and memory is bounded by a multiple of the file size (`MAX_EXPANSION`) even for
//! hostile files (zip bombs, overlapping entries, memoized objects referenced many times).

mod pickle;
mod storage;
mod zip;

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use ::zip::ZipArchive;

use self::pickle::Unpickler;
use self::storage::assemble;
use self::zip::{check_signature, find_prefix, EntryReader};
use super::OwnedTensor;
use crate::{Error, Result};

/// Bound on (a) the total bytes decompressed from the archive and (b) the total bytes of tensor
/// data produced, as a multiple of the file size. `torch.save` stores entries uncompressed and
/// tensors rarely share storage, so real checkpoints stay near 1x; the bound only stops hostile
/// files from exhausting memory.
const MAX_EXPANSION: u64 = 16;

/// Reads every float tensor of a `torch.save` checkpoint (`pytorch_model.bin`), in the order of
/// the state dict.
///
/// - float32, float16 and bfloat16 tensors are returned as contiguous little-endian bytes, whatever
///   their strides, storage offsets or storage sharing in the file;
/// - integer and bool tensors (e.g. the int64 buffer `embeddings.position_ids`) are skipped;
/// - other dtypes (float64, complex, quantized...) are an error that names the tensor and dtype;
/// - a state dict nested one level (`{"state_dict": {...}}`, `{"model": {...}}`...) is found;
/// - the legacy pre-1.6 format and TorchScript archives are rejected with a clear message.
pub fn load(path: &Path) -> Result<Vec<(String, OwnedTensor)>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::with_capacity(512);
    (&mut file)
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    check_signature(&head).map_err(|msg| Error::checkpoint(path, msg))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    load_zip(BufReader::new(file), file_len).map_err(|msg| Error::checkpoint(path, msg))
}

/// [`load`] on a file already in memory (the fuzzer's entry; errors carry no path).
pub(crate) fn load_slice(bytes: &[u8]) -> Result<Vec<(String, OwnedTensor)>, String> {
    check_signature(&bytes[..bytes.len().min(512)])?;
    load_zip(std::io::Cursor::new(bytes), bytes.len() as u64)
}

/// Reads the archive behind `reader` (whose total size is `file_len`).
fn load_zip<R: Read + Seek>(
    reader: R,
    file_len: u64,
) -> Result<Vec<(String, OwnedTensor)>, String> {
    let mut zip =
        ZipArchive::new(reader).map_err(|e| format!("corrupt or truncated zip archive: {e}"))?;
    let prefix = find_prefix(&zip)?;
    let budget = file_len.saturating_mul(MAX_EXPANSION);
    let mut reader = EntryReader {
        zip: &mut zip,
        file_len,
        read_left: budget,
    };

    let pkl_name = format!("{prefix}data.pkl");
    let pkl = reader
        .read(&pkl_name)?
        .ok_or_else(|| format!("`{pkl_name}` is missing from the zip archive"))?;
    let big_endian = match reader.read(&format!("{prefix}byteorder"))? {
        None => false,
        Some(b) => match String::from_utf8_lossy(&b).trim() {
            "little" => false,
            "big" => true,
            other => {
                return Err(format!(
                    "unknown byte order `{other}` in `{prefix}byteorder`"
                ))
            }
        },
    };
    let pickle = Unpickler::new(&pkl)
        .run()
        .map_err(|e| format!("cannot parse `{pkl_name}`: {e}"))?;
    let plans = pickle.tensor_plans()?;
    assemble(plans, &mut reader, &prefix, big_endian, budget)
}

#[cfg(test)]
mod tests {
    use super::pickle::testing::{run, state_dict, t};
    use super::*;
    use crate::checkpoint::DType;
    use ::zip::CompressionMethod;
    use std::io::{Cursor, Write};

    // ---- archives -------------------------------------------------------------------------------

    pub(super) fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    pub(super) fn as_f32(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = ::zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = ::zip::write::SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored);
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    pub(super) fn load_bytes(bytes: &[u8]) -> Result<Vec<(String, OwnedTensor)>> {
        let f = write_tmp(bytes);
        load(f.path())
    }

    fn load_err(bytes: &[u8]) -> String {
        match load_bytes(bytes) {
            Ok(t) => panic!("expected an error, loaded {} tensors", t.len()),
            Err(e) => {
                assert!(
                    matches!(e, Error::Checkpoint { .. }),
                    "expected a checkpoint error, got {e:?}"
                );
                e.to_string()
            }
        }
    }

    fn checkpoint(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let names: Vec<String> = storages
            .iter()
            .map(|(k, _)| format!("archive/data/{k}"))
            .collect();
        let mut entries: Vec<(&str, &[u8])> = vec![("archive/data.pkl", pkl)];
        for (name, (_, data)) in names.iter().zip(storages) {
            entries.push((name, data));
        }
        entries.push(("archive/version", b"3\n"));
        entries.push(("archive/byteorder", b"little"));
        zip_of(&entries)
    }

    // ---- whole files ----------------------------------------------------------------------------

    #[test]
    fn strided_shared_and_scalar_tensors() {
        // storage 0: 0..12 as f32; storage 1: one f16 (1.0)
        let s0 = f32_bytes(&(0..12).map(|i| i as f32).collect::<Vec<_>>());
        let s1 = half::f16::from_f32(1.0).to_le_bytes().to_vec();
        let pkl = state_dict(&[
            t("contig", "FloatStorage", "0", 0, &[3, 4], &[4, 1]),
            t("transposed", "FloatStorage", "0", 0, &[4, 3], &[1, 4]),
            t("slice_a", "FloatStorage", "0", 2, &[3], &[1]),
            t("slice_b", "FloatStorage", "0", 8, &[2, 2], &[2, 1]),
            t("every_other", "FloatStorage", "0", 1, &[2, 3], &[6, 2]),
            t("scalar", "HalfStorage", "1", 0, &[], &[]),
            t("position_ids", "LongStorage", "9", 0, &[1, 512], &[512, 1]),
            t("empty", "FloatStorage", "0", 0, &[0, 4], &[4, 1]),
        ]);
        let file = checkpoint(&pkl, &[("0", s0), ("1", s1)]);
        let got = load_bytes(&file).unwrap();
        let names: Vec<_> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "contig",
                "transposed",
                "slice_a",
                "slice_b",
                "every_other",
                "scalar",
                "empty"
            ]
        );
        let find = |n: &str| &got.iter().find(|(m, _)| m == n).unwrap().1;
        assert_eq!(
            as_f32(&find("contig").data),
            (0..12).map(|i| i as f32).collect::<Vec<_>>()
        );
        assert_eq!(
            as_f32(&find("transposed").data),
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        assert_eq!(find("transposed").shape, [4, 3]);
        assert_eq!(as_f32(&find("slice_a").data), [2., 3., 4.]);
        assert_eq!(as_f32(&find("slice_b").data), [8., 9., 10., 11.]);
        assert_eq!(as_f32(&find("every_other").data), [1., 3., 5., 7., 9., 11.]);
        let scalar = find("scalar");
        assert_eq!((scalar.dtype, scalar.shape.len()), (DType::F16, 0));
        assert_eq!(scalar.data, half::f16::from_f32(1.0).to_le_bytes());
        assert!(find("empty").data.is_empty());
    }

    #[test]
    fn big_endian_and_other_prefixes() {
        let pkl = state_dict(&[t("w", "FloatStorage", "0", 0, &[2], &[1])]);
        let be: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        let file = zip_of(&[
            ("my_model/data.pkl", &pkl),
            ("my_model/data/0", &be),
            ("my_model/byteorder", b"big"),
        ]);
        let got = load_bytes(&file).unwrap();
        assert_eq!(as_f32(&got[0].1.data), [1.5, -2.0]);
        let e = load_err(&zip_of(&[
            ("m/data.pkl", &pkl),
            ("m/data/0", &be),
            ("m/byteorder", b"middle"),
        ]));
        assert!(e.contains("unknown byte order `middle`"), "{e}");
    }

    #[test]
    fn file_level_errors() {
        let pkl = state_dict(&[t("w", "FloatStorage", "0", 1, &[2, 2], &[2, 1])]);
        let good = checkpoint(&pkl, &[("0", f32_bytes(&[0., 1., 2., 3., 4.]))]);
        assert_eq!(load_bytes(&good).unwrap().len(), 1);

        let e = load_err(b"");
        assert!(e.contains("file is empty"), "{e}");
        let e = load_err(b"hello world, not a checkpoint");
        assert!(
            e.contains("not a PyTorch checkpoint") && e.contains("68 65 6c 6c"),
            "{e}"
        );
        let legacy = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20];
        let e = load_err(&legacy);
        assert!(
            e.contains("legacy torch.save format") && e.contains("torch>=1.6"),
            "{e}"
        );
        let e = load_err(b"\x10\0\0\0\0\0\0\0{\"w\":{}}       ");
        assert!(e.contains("safetensors"), "{e}");

        // Truncated archive: every cut must give an error, never a panic.
        for cut in [4, good.len() / 2, good.len() - 10, good.len() - 1] {
            let e = load_err(&good[..cut]);
            assert!(e.contains("zip"), "cut {cut}: {e}");
        }
        let mut corrupt = good.clone();
        let at = corrupt.len() - 30;
        corrupt[at..at + 8].copy_from_slice(b"garbage!");
        let _ = load_bytes(&corrupt);

        let e = load_err(&zip_of(&[("archive/other.txt", b"x")]));
        assert!(e.contains("no `data.pkl`"), "{e}");
        let e = load_err(&zip_of(&[("archive/data.pkl", b"\x80\x02garbage")]));
        assert!(e.contains("cannot parse `archive/data.pkl`"), "{e}");
        let e = load_err(&zip_of(&[
            ("archive/data.pkl", &pkl),
            ("archive/constants.pkl", b""),
        ]));
        assert!(e.contains("TorchScript"), "{e}");
        let e = load_err(&checkpoint(&pkl, &[]));
        assert!(
            e.contains("storage `archive/data/0` of tensor `w` is missing"),
            "{e}"
        );
        let e = load_err(&checkpoint(&pkl, &[("0", f32_bytes(&[0., 1., 2., 3.]))]));
        assert!(
            e.contains("tensor `w` (shape [2, 2], stride [2, 1], offset 1) reads past the end")
                && e.contains("holds 4 elements"),
            "{e}"
        );
        // A zero stride that expands a tiny storage to far more than the file.
        let huge = state_dict(&[t("w", "FloatStorage", "0", 0, &[1 << 20, 1 << 10], &[0, 0])]);
        let e = load_err(&checkpoint(&huge, &[("0", f32_bytes(&[0.]))]));
        assert!(e.contains("exceeds 16 times the file size"), "{e}");
        let e = load_err(&checkpoint(
            &state_dict(&[t("d", "DoubleStorage", "0", 0, &[1], &[1])]),
            &[("0", vec![0; 8])],
        ));
        assert!(
            e.contains("tensor `d` has dtype torch.float64 storage"),
            "{e}"
        );
        let missing = load(Path::new("/nonexistent/pytorch_model.bin")).unwrap_err();
        assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
    }

    // ---- fixtures written by scripts/make_bin_fixtures.py with real torch -----------------------

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/bin")
            .join(name)
    }

    #[test]
    fn torch_fixtures_match_safetensors() {
        for dtype in ["float32", "float16", "bfloat16"] {
            let bin = load(&fixture(&format!("weights_{dtype}.bin"))).unwrap();
            let st_bytes = std::fs::read(fixture(&format!("weights_{dtype}.safetensors"))).unwrap();
            let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
            let order: Vec<&str> = bin.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                order,
                [
                    "embeddings.word_embeddings.weight",
                    "embeddings.LayerNorm.weight",
                    "encoder.rel_embeddings.weight",
                    "logit_scale",
                    "transposed.weight",
                    "shared.first",
                    "shared.second",
                    "shared.strided",
                    "pooler.weight",
                ],
                "{dtype}: state dict order"
            );
            let mut st_names = st.names();
            st_names.sort();
            let mut bin_names: Vec<&str> = bin.iter().map(|(n, _)| n.as_str()).collect();
            bin_names.sort();
            assert_eq!(bin_names, st_names, "{dtype}: tensor names");
            assert!(
                !bin.iter().any(|(n, _)| n.contains("position_ids")),
                "{dtype}: int64 buffer should be skipped"
            );
            let expected = match dtype {
                "float32" => DType::F32,
                "float16" => DType::F16,
                _ => DType::BF16,
            };
            for (name, tensor) in &bin {
                let view = st.tensor(name).unwrap();
                assert_eq!(tensor.dtype, expected, "{dtype} {name}");
                assert_eq!(tensor.shape, view.shape(), "{dtype} {name}: shape");
                assert_eq!(tensor.data, view.data(), "{dtype} {name}: data");
            }
        }
    }

    #[test]
    fn torch_fixture_nested_and_legacy() {
        let nested = load(&fixture("nested.bin")).unwrap();
        let flat = load(&fixture("weights_float32.bin")).unwrap();
        assert_eq!(nested.len(), flat.len());
        for ((n1, t1), (n2, t2)) in nested.iter().zip(&flat) {
            assert_eq!(n1, n2);
            assert_eq!(t1.data, t2.data, "{n1}");
        }
        let e = load(&fixture("legacy.bin")).unwrap_err().to_string();
        assert!(e.contains("legacy torch.save format"), "{e}");
        assert!(e.contains("re-save with torch>=1.6"), "{e}");
    }

    #[test]
    fn corrupted_torch_fixture_never_panics() {
        let file = std::fs::read(fixture("weights_float32.bin")).unwrap();
        let len = file.len() as u64;
        for cut in 0..file.len() {
            let _ = load_zip(Cursor::new(&file[..cut]), cut as u64);
        }
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x5a;
            let _ = load_zip(Cursor::new(bad), len);
        }
        // The zip CRC catches most damage to data.pkl, so also feed damaged pickles directly.
        let mut zip = ZipArchive::new(Cursor::new(&file)).unwrap();
        let mut pkl = Vec::new();
        zip.by_name("weights_float32/data.pkl")
            .unwrap()
            .read_to_end(&mut pkl)
            .unwrap();
        for i in 0..pkl.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = pkl.clone();
                bad[i] ^= flip;
                let _ = run(&bad).map(|p| p.tensor_plans().map(|v| v.len()));
            }
        }
    }
}
