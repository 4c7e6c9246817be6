//! The zip side of a `torch.save` archive: recognizing the file kind from its first bytes,
//! locating the archive's top folder, and reading whole entries within a decompression budget.

use std::io::{Read, Seek};

use ::zip::result::ZipError;
use ::zip::{CompressionMethod, ZipArchive};

use super::MAX_EXPANSION;

/// Recognizes the file kind from its first bytes; only a zip archive passes.
pub(super) fn check_signature(head: &[u8]) -> Result<(), String> {
    const LEGACY: &str = "legacy torch.save format (PyTorch < 1.6, or saved with \
        _use_new_zipfile_serialization=False) is not supported; re-save with torch>=1.6: \
        torch.save(torch.load(path), path)";
    if head.is_empty() {
        return Err("file is empty, expected a PyTorch checkpoint".into());
    }
    if head.starts_with(b"PK") {
        return Ok(());
    }
    if head[0] == 0x80 && head.get(1).is_some_and(|&p| p <= 5) {
        return Err(LEGACY.into());
    }
    if head.get(257..262) == Some(b"ustar".as_slice()) {
        return Err(LEGACY.replace("PyTorch < 1.6", "PyTorch < 0.4, tar archive"));
    }
    if head.len() > 8 && head[8] == b'{' {
        return Err(
            "this looks like a safetensors file, not a PyTorch pickle checkpoint; \
            name it `model.safetensors`"
                .into(),
        );
    }
    let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(format!(
        "not a PyTorch checkpoint: expected a zip archive (torch.save since 1.6), \
         the file starts with bytes {}",
        shown.join(" ")
    ))
}

/// Finds the archive's top folder (with its trailing `/`) from the location of `data.pkl`.
pub(super) fn find_prefix<R: Read + Seek>(zip: &ZipArchive<R>) -> Result<String, String> {
    let mut prefix = None;
    for raw in zip.file_names_raw() {
        let Some(dir) = raw.strip_suffix(b"data.pkl") else {
            continue;
        };
        let top_level =
            dir.is_empty() || (dir.ends_with(b"/") && !dir[..dir.len() - 1].contains(&b'/'));
        if top_level {
            prefix = Some(String::from_utf8_lossy(dir).into_owned());
            break;
        }
    }
    let Some(prefix) = prefix else {
        return Err(
            "zip archive has no `data.pkl`: not a torch.save checkpoint (pytorch_model.bin)".into(),
        );
    };
    let constants = format!("{prefix}constants.pkl");
    if zip.file_names_raw().any(|n| n == constants.as_bytes()) {
        return Err(
            "this is a TorchScript archive (torch.jit.save), not a torch.save state \
            dict; save model.state_dict() with torch.save instead"
                .into(),
        );
    }
    Ok(prefix)
}

/// Reads whole zip entries, within a budget on the total decompressed size.
pub(super) struct EntryReader<'z, R> {
    pub(super) zip: &'z mut ZipArchive<R>,
    pub(super) file_len: u64,
    pub(super) read_left: u64,
}

impl<R: Read + Seek> EntryReader<'_, R> {
    /// The bytes of entry `name`, or `None` if the archive has no such entry.
    pub(super) fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let entry = match self.zip.by_name(name) {
            Ok(entry) => entry,
            Err(ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(format!("cannot open `{name}` in the zip archive: {e}")),
        };
        let declared = entry.size();
        if entry.compression() == CompressionMethod::Stored && declared > self.file_len {
            return Err(format!(
                "zip entry `{name}` claims {declared} bytes, more than a {}-byte file can hold",
                self.file_len
            ));
        }
        if declared > self.read_left {
            return Err(format!(
                "zip entry `{name}` claims {declared} bytes: the archive would decompress to more \
                 than {MAX_EXPANSION} times the file size"
            ));
        }
        // Reserve no more than the file holds; a compressed entry grows as it really decompresses.
        let reserve = declared.min(self.file_len);
        let mut buf = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
        entry
            .take(declared.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read `{name}` from the zip archive: {e}"))?;
        let got = buf.len() as u64;
        if got != declared {
            return Err(format!(
                "zip entry `{name}` is corrupt: it should hold {declared} bytes, found {got}"
            ));
        }
        self.read_left -= got;
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::super::pickle::testing::{state_dict, t};
    use super::super::tests::{as_f32, f32_bytes, load_bytes};
    use super::*;
    use std::io::{Cursor, Write};

    #[test]
    fn deflated_entries_are_read() {
        let pkl = state_dict(&[t("w", "FloatStorage", "0", 0, &[3], &[1])]);
        let data = f32_bytes(&[1.0, 2.0, 3.0]);
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated);
        for (name, bytes) in [("archive/data.pkl", &pkl), ("archive/data/0", &data)] {
            w.start_file(name, opts).unwrap();
            w.write_all(bytes).unwrap();
        }
        let file = w.finish().unwrap().into_inner();
        let got = load_bytes(&file).unwrap();
        assert_eq!(as_f32(&got[0].1.data), [1.0, 2.0, 3.0]);
    }
}
