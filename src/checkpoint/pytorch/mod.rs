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
//! unpickler below models exactly what is needed for that: containers, primitives, globals,
//! `OrderedDict`, the tensor rebuild functions and storages; every other callable becomes an opaque
//! value that is only an error where a tensor is expected.
//!
//! Robustness: every length and index read from the file is checked before use, nothing panics on
//! bad input, and memory is bounded by a multiple of the file size (`MAX_EXPANSION`) even for
//! hostile files (zip bombs, overlapping entries, memoized objects referenced many times).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use super::{DType, OwnedTensor};
use crate::{Error, Result};

/// Bound on (a) the total bytes decompressed from the archive and (b) the total bytes of tensor
/// data produced, as a multiple of the file size. `torch.save` stores entries uncompressed and
/// tensors rarely share storage, so real checkpoints stay near 1x; the bound only stops hostile
/// files from exhausting memory.
const MAX_EXPANSION: u64 = 16;

/// Most dimensions a tensor may have (PyTorch itself does not go beyond a few dozen).
const MAX_DIMS: usize = 64;

/// Keys under which training scripts commonly nest the actual state dict.
const NESTED_KEYS: [&str; 4] = ["state_dict", "model_state_dict", "model", "module"];

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

/// Recognizes the file kind from its first bytes; only a zip archive passes.
fn check_signature(head: &[u8]) -> Result<(), String> {
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

/// Finds the archive's top folder (with its trailing `/`) from the location of `data.pkl`.
fn find_prefix<R: Read + Seek>(zip: &ZipArchive<R>) -> Result<String, String> {
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
struct EntryReader<'z, R> {
    zip: &'z mut ZipArchive<R>,
    file_len: u64,
    read_left: u64,
}

impl<R: Read + Seek> EntryReader<'_, R> {
    /// The bytes of entry `name`, or `None` if the archive has no such entry.
    fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, String> {
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

/// What the state dict says about one float tensor, before its storage is read.
#[derive(Debug)]
struct TensorPlan<'p> {
    name: &'p str,
    dtype: DType,
    /// Storage key: the entry `<prefix>data/<key>`.
    key: &'p str,
    /// Offset, sizes and strides, in elements.
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Reads the storages (each once) and copies every planned tensor out of its storage.
fn assemble<R: Read + Seek>(
    plans: Vec<TensorPlan<'_>>,
    reader: &mut EntryReader<'_, R>,
    prefix: &str,
    big_endian: bool,
    budget: u64,
) -> Result<Vec<(String, OwnedTensor)>, String> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for plan in &plans {
        *uses.entry(plan.key).or_default() += 1;
    }
    let mut cache: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut out_left = budget;
    let mut out = Vec::with_capacity(plans.len());

    for plan in plans {
        let TensorPlan {
            name,
            dtype,
            key,
            offset,
            size,
            stride,
        } = plan;
        let esize = dtype.size();
        let last_use = match uses.get_mut(key) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => true,
        };
        let numel = size
            .iter()
            .try_fold(1usize, |acc, &s| acc.checked_mul(s))
            .filter(|n| n.checked_mul(esize).is_some());
        let Some(numel) = numel else {
            return Err(format!(
                "tensor `{name}` has shape {size:?}, too many elements"
            ));
        };
        let nbytes = numel * esize;
        if nbytes as u64 > out_left {
            return Err(format!(
                "tensor `{name}` with shape {size:?} needs {nbytes} bytes, which with the tensors \
                 before it exceeds {MAX_EXPANSION} times the file size; the checkpoint is corrupt"
            ));
        }
        out_left -= nbytes as u64;
        if numel == 0 {
            if last_use {
                cache.remove(key);
            }
            let tensor = OwnedTensor {
                dtype,
                shape: size,
                data: Vec::new(),
            };
            out.push((name.to_owned(), tensor));
            continue;
        }

        if !cache.contains_key(key) {
            let entry = format!("{prefix}data/{key}");
            let bytes = reader.read(&entry)?.ok_or_else(|| {
                format!("storage `{entry}` of tensor `{name}` is missing from the zip archive")
            })?;
            cache.insert(key, bytes);
        }
        let storage = cache.get(key).map(Vec::as_slice).unwrap_or_default();
        let storage_elems = storage.len() / esize;
        let last_elem = size.iter().zip(&stride).try_fold(offset, |acc, (&s, &st)| {
            (s - 1).checked_mul(st).and_then(|d| acc.checked_add(d))
        });
        if last_elem.is_none_or(|last| last >= storage_elems) {
            return Err(format!(
                "tensor `{name}` (shape {size:?}, stride {stride:?}, offset {offset}) reads past \
                 the end of its storage `{prefix}data/{key}`, which holds {storage_elems} \
                 elements of {esize} bytes; the checkpoint is corrupt"
            ));
        }

        let whole = offset == 0 && nbytes == storage.len() && is_contiguous(&size, &stride);
        let mut data = if whole && last_use {
            cache.remove(key).unwrap_or_default()
        } else {
            let mut data = Vec::with_capacity(nbytes);
            gather(storage, esize, offset, &size, &stride, &mut data)
                .ok_or_else(|| format!("tensor `{name}`: internal error copying strided data"))?;
            if last_use {
                cache.remove(key);
            }
            data
        };
        if big_endian {
            for elem in data.chunks_exact_mut(esize) {
                elem.reverse();
            }
        }
        let tensor = OwnedTensor {
            dtype,
            shape: size,
            data,
        };
        out.push((name.to_owned(), tensor));
    }
    Ok(out)
}

/// Whether `stride` is the row-major stride of `size` (dimensions of size 1 don't matter).
fn is_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(s);
    }
    true
}

/// Appends the elements of the strided view (`offset`, `size`, `stride`, in elements of `esize`
/// bytes) of `src` to `out`, in row-major order. The caller has checked that the view has at least
/// one element and lies within `src`; `None` only if that check was wrong.
fn gather(
    src: &[u8],
    esize: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
    out: &mut Vec<u8>,
) -> Option<()> {
    let elem = |i: usize| src.get(i * esize..(i + 1) * esize);
    let Some((&n_inner, outer)) = size.split_last() else {
        out.extend_from_slice(elem(offset)?);
        return Some(());
    };
    let s_inner = *stride.last()?;
    let mut idx = vec![0usize; outer.len()];
    loop {
        let base = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        if s_inner == 1 {
            out.extend_from_slice(src.get(base * esize..(base + n_inner) * esize)?);
        } else {
            for k in 0..n_inner {
                out.extend_from_slice(elem(base + k * s_inner)?);
            }
        }
        // Advance the multi-index over the outer dimensions, last one fastest.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return Some(());
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < outer[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The unpickler
// ---------------------------------------------------------------------------------------------

/// Index of an object in the unpickler's arena. Containers hold ids, so memoized objects are
/// shared (never copied) and in-place mutation (SETITEMS on a memoized dict) is seen everywhere.
type Id = usize;

/// A Python object as far as we model it. Payloads of bools, floats and bytes are never needed
/// to find tensors; they are kept for `Debug` output and the unit tests.
#[derive(Debug)]
#[allow(dead_code)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64 (never needed, kept opaque).
    BigInt,
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    /// Lists, and sets (order does not matter to us).
    List(Vec<Id>),
    /// Insertion-ordered pairs; a repeated key is resolved when the dict is read.
    Dict(Vec<(Id, Id)>),
    /// A module attribute (`GLOBAL` / `STACK_GLOBAL`); both ids are `Str`.
    Global {
        module: Id,
        name: Id,
    },
    /// A persistent id `('storage', <storage type>, key, ...)`.
    Storage {
        ty: Id,
        key: Id,
    },
    Tensor(TensorMeta),
    /// The result of a call we do not model, or an unknown persistent id; `from` is the callable
    /// or the id, for messages.
    Opaque {
        from: Id,
    },
}

/// Arguments of `_rebuild_tensor_v2`, in elements.
#[derive(Debug)]
struct TensorMeta {
    storage: Id,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// The callables the unpickler gives a meaning to.
enum Known {
    Dict,
    RebuildTensor,
    RebuildParameter,
    RebuildFromType,
    Other,
}

type PResult<T> = std::result::Result<T, String>;

/// A stack machine for the pickle opcodes `torch.save` emits (protocol 2) and the other binary
/// opcodes of protocols 2 to 5.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for messages.
    op_pos: usize,
    arena: Vec<Obj>,
    stack: Vec<Id>,
    /// Stack heights at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    /// Container items that may still be copied (see `dict_from`).
    copy_budget: usize,
}

/// The unpickled object graph.
struct Pickle {
    arena: Vec<Obj>,
    root: Id,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            op_pos: 0,
            arena: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copy_budget: data.len(),
        }
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated: the opcode at byte {} needs {n} more bytes, only {} remain",
                self.op_pos,
                self.data.len() - self.pos
            ));
        };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A length field, which must fit in the remaining input (checked again by `take`).
    fn len_from(&self, n: u64) -> PResult<usize> {
        usize::try_from(n).map_err(|_| format!("length {n} at byte {} is too large", self.op_pos))
    }

    /// A newline-terminated line (text opcodes), without the newline.
    fn line(&mut self) -> PResult<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(format!(
                "truncated: the opcode at byte {} has no terminating newline",
                self.op_pos
            ));
        };
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn line_str(&mut self) -> PResult<&'a str> {
        let op_pos = self.op_pos;
        std::str::from_utf8(self.line()?)
            .map_err(|_| format!("invalid UTF-8 in the opcode at byte {op_pos}"))
    }

    fn text(&self, bytes: &[u8]) -> PResult<String> {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("invalid UTF-8 string at byte {}", self.op_pos))
    }

    fn new_obj(&mut self, obj: Obj) -> Id {
        self.arena.push(obj);
        self.arena.len() - 1
    }

    fn push(&mut self, obj: Obj) {
        let id = self.new_obj(obj);
        self.stack.push(id);
    }

    fn pop(&mut self) -> PResult<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(format!("stack underflow at byte {}", self.op_pos));
        }
        self.stack
            .pop()
            .ok_or_else(|| format!("stack underflow at byte {}", self.op_pos))
    }

    fn top(&self) -> PResult<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(&id) if self.stack.len() > floor => Ok(id),
            _ => Err(format!("stack underflow at byte {}", self.op_pos)),
        }
    }

    /// Pops everything above the last MARK, and the mark.
    fn pop_mark(&mut self) -> PResult<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return Err(format!("no MARK for the opcode at byte {}", self.op_pos));
        };
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn memo_get(&mut self, key: u64) -> PResult<()> {
        let Some(&id) = self.memo.get(&key) else {
            return Err(format!(
                "memo key {key} at byte {} was never stored",
                self.op_pos
            ));
        };
        self.stack.push(id);
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> PResult<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn kind(&self, id: Id) -> &'static str {
        match self.arena.get(id) {
            Some(Obj::None) => "None",
            Some(Obj::Bool(_)) => "bool",
            Some(Obj::Int(_) | Obj::BigInt) => "int",
            Some(Obj::Float(_)) => "float",
            Some(Obj::Str(_)) => "str",
            Some(Obj::Bytes(_)) => "bytes",
            Some(Obj::Tuple(_)) => "tuple",
            Some(Obj::List(_)) => "list",
            Some(Obj::Dict(_)) => "dict",
            Some(Obj::Global { .. }) => "global",
            Some(Obj::Storage { .. }) => "storage",
            Some(Obj::Tensor(_)) => "tensor",
            Some(Obj::Opaque { .. }) | None => "object",
        }
    }

    /// Runs to the STOP opcode.
    fn run(mut self) -> PResult<Pickle> {
        loop {
            self.op_pos = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return Err(format!(
                    "truncated: input ended at byte {} without a STOP opcode",
                    self.pos
                ));
            };
            self.pos += 1;
            match op {
                // Framing and protocol.
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(Pickle {
                        arena: self.arena,
                        root,
                    });
                }
                // Stack and memo.
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.stack.push(id);
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(k.into())?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k.into())?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let k = self.line_str()?;
                    let k = k
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad PUT key at byte {}", self.op_pos))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(k.into())?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k.into())?;
                }
                b'g' => {
                    let k = self.line_str()?;
                    let k = k
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad GET key at byte {}", self.op_pos))?;
                    self.memo_get(k)?;
                }
                // Primitives.
                b'N' => self.push(Obj::None),
                0x88 => self.push(Obj::Bool(true)),
                0x89 => self.push(Obj::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Obj::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Obj::Int(v.into()));
                }
                0x8a => {
                    let n = self.u8()?;
                    let bytes = self.take(n.into())?;
                    self.push(decode_long(bytes));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = usize::try_from(n)
                        .map_err(|_| format!("negative LONG4 length at byte {}", self.op_pos))?;
                    let bytes = self.take(n)?;
                    self.push(decode_long(bytes));
                }
                b'I' | b'L' => {
                    let s = self.line_str()?.trim().trim_end_matches('L');
                    let obj = match s {
                        "01" if op == b'I' => Obj::Bool(true),
                        "00" if op == b'I' => Obj::Bool(false),
                        _ => match s.parse::<i64>() {
                            Ok(v) => Obj::Int(v),
                            Err(_) if is_decimal(s) => Obj::BigInt,
                            Err(_) => {
                                return Err(format!("bad integer `{s}` at byte {}", self.op_pos))
                            }
                        },
                    };
                    self.push(obj);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Obj::Float(v));
                }
                b'F' => {
                    let s = self.line_str()?.trim();
                    let v = s
                        .parse()
                        .map_err(|_| format!("bad float `{s}` at byte {}", self.op_pos))?;
                    self.push(Obj::Float(v));
                }
                // Strings and bytes.
                b'X' | b'T' | b'B' => {
                    let n = self.u32()?;
                    if op == b'T' && n > i32::MAX as u32 {
                        return Err(format!("negative BINSTRING length at byte {}", self.op_pos));
                    }
                    let n = self.len_from(n.into())?;
                    let bytes = self.take(n)?;
                    self.push_string_like(op, bytes)?;
                }
                0x8c | b'U' | b'C' => {
                    let n = self.u8()?;
                    let bytes = self.take(n.into())?;
                    self.push_string_like(op, bytes)?;
                }
                0x8d | 0x8e | 0x96 => {
                    let n = u64::from_le_bytes(self.array()?);
                    let n = self.len_from(n)?;
                    let bytes = self.take(n)?;
                    self.push_string_like(op, bytes)?;
                }
                // Containers.
                b')' => self.push(Obj::Tuple(Vec::new())),
                b']' | 0x8f => self.push(Obj::List(Vec::new())),
                b'}' => self.push(Obj::Dict(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items));
                }
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Obj::Dict(pairs));
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs)?;
                }
                // Objects.
                b'c' => {
                    let module = self.line_str()?.to_owned();
                    let name = self.line_str()?.to_owned();
                    let module = self.new_obj(Obj::Str(module));
                    let name = self.new_obj(Obj::Str(name));
                    self.push(Obj::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    for id in [module, name] {
                        if !matches!(self.arena.get(id), Some(Obj::Str(_))) {
                            return Err(format!(
                                "STACK_GLOBAL at byte {} needs strings, got a {}",
                                self.op_pos,
                                self.kind(id)
                            ));
                        }
                    }
                    self.push(Obj::Global { module, name });
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let id = self.call(func, args, 0)?;
                    self.stack.push(id);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let id = self.call(func, args, 0)?;
                    self.stack.push(id);
                }
                b'b' => {
                    // Object state (e.g. an OrderedDict's `_metadata`): not needed.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let obj = self.persistent(pid);
                    self.push(obj);
                }
                _ => {
                    return Err(match opcode_name(op) {
                        Some(name) => format!(
                            "unsupported pickle opcode {name} (0x{op:02x}) at byte {}",
                            self.op_pos
                        ),
                        None => format!(
                            "unknown pickle opcode 0x{op:02x} at byte {}: the data is corrupt",
                            self.op_pos
                        ),
                    })
                }
            }
        }
    }

    fn push_string_like(&mut self, op: u8, bytes: &[u8]) -> PResult<()> {
        let obj = match op {
            // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
            b'X' | 0x8c | 0x8d => Obj::Str(self.text(bytes)?),
            // BINSTRING / SHORT_BINSTRING: Python 2 str, read as text when it is UTF-8.
            b'T' | b'U' => match std::str::from_utf8(bytes) {
                Ok(s) => Obj::Str(s.to_owned()),
                Err(_) => Obj::Bytes(bytes.to_vec()),
            },
            _ => Obj::Bytes(bytes.to_vec()),
        };
        self.push(obj);
        Ok(())
    }

    fn pairs(&self, items: Vec<Id>) -> PResult<Vec<(Id, Id)>> {
        if !items.len().is_multiple_of(2) {
            return Err(format!(
                "odd number of items for a dict at byte {}",
                self.op_pos
            ));
        }
        Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn append(&mut self, items: Vec<Id>) -> PResult<()> {
        let target = self.top()?;
        let kind = self.kind(target);
        match self.arena.get_mut(target) {
            Some(Obj::List(list)) => list.extend(items),
            Some(Obj::Opaque { .. }) => {}
            _ => return Err(format!("APPEND to a {kind} at byte {}", self.op_pos)),
        }
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<(Id, Id)>) -> PResult<()> {
        let target = self.top()?;
        let kind = self.kind(target);
        match self.arena.get_mut(target) {
            Some(Obj::Dict(dict)) => dict.extend(pairs),
            Some(Obj::Opaque { .. }) => {}
            _ => return Err(format!("SETITEM on a {kind} at byte {}", self.op_pos)),
        }
        Ok(())
    }

    fn str_at(&self, id: Id) -> Option<&str> {
        match self.arena.get(id) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn classify(&self, func: Id) -> Known {
        let Some(Obj::Global { module, name }) = self.arena.get(func) else {
            return Known::Other;
        };
        match (self.str_at(*module), self.str_at(*name)) {
            (Some("collections"), Some("OrderedDict"))
            | (Some("builtins" | "__builtin__"), Some("dict")) => Known::Dict,
            (Some("torch._utils"), Some("_rebuild_tensor_v2" | "_rebuild_tensor")) => {
                Known::RebuildTensor
            }
            (
                Some("torch._utils"),
                Some("_rebuild_parameter" | "_rebuild_parameter_with_state"),
            ) => Known::RebuildParameter,
            (Some("torch._tensor" | "torch._utils"), Some("_rebuild_from_type_v2")) => {
                Known::RebuildFromType
            }
            _ => Known::Other,
        }
    }

    fn tuple_items(&self, id: Id) -> Option<&[Id]> {
        match self.arena.get(id) {
            Some(Obj::Tuple(items) | Obj::List(items)) => Some(items),
            _ => None,
        }
    }

    /// REDUCE / NEWOBJ: `func(*args)`, returning the result's id.
    fn call(&mut self, func: Id, args: Id, depth: usize) -> PResult<Id> {
        // Calling an opaque value gives an opaque value of the same origin (no chains to walk).
        let origin = match self.arena.get(func) {
            Some(&Obj::Opaque { from }) => from,
            _ => func,
        };
        let opaque = Obj::Opaque { from: origin };
        match self.classify(func) {
            Known::Other => Ok(self.new_obj(opaque)),
            Known::Dict => {
                let pairs = match self.tuple_items(args) {
                    Some([]) => Some(Vec::new()),
                    Some(&[items]) => self.dict_from(items)?,
                    _ => None,
                };
                Ok(match pairs {
                    Some(pairs) => self.new_obj(Obj::Dict(pairs)),
                    None => self.new_obj(opaque),
                })
            }
            Known::RebuildTensor => {
                let meta = self.tensor_meta(args)?;
                Ok(self.new_obj(Obj::Tensor(meta)))
            }
            Known::RebuildParameter => match self.tuple_items(args) {
                Some(&[data, ..]) => Ok(data),
                _ => Err(format!(
                    "malformed arguments to torch._utils._rebuild_parameter at byte {}",
                    self.op_pos
                )),
            },
            Known::RebuildFromType => match self.tuple_items(args) {
                Some(&[inner_func, _ty, inner_args, ..]) if depth < 8 => {
                    self.call(inner_func, inner_args, depth + 1)
                }
                _ => Err(format!(
                    "malformed arguments to torch._tensor._rebuild_from_type_v2 at byte {}",
                    self.op_pos
                )),
            },
        }
    }

    /// `OrderedDict(items)` where items is a dict or a sequence of pairs. The copies are charged
    /// to a budget of the input size, so a memoized container copied over and over cannot make
    /// memory grow quadratically.
    fn dict_from(&mut self, items: Id) -> PResult<Option<Vec<(Id, Id)>>> {
        let n = match self.arena.get(items) {
            Some(Obj::Dict(v)) => v.len(),
            Some(Obj::List(v) | Obj::Tuple(v)) => v.len(),
            _ => 0,
        };
        self.copy_budget = self.copy_budget.checked_sub(n).ok_or_else(|| {
            format!(
                "OrderedDict at byte {} copies more items than the pickle could hold",
                self.op_pos
            )
        })?;
        Ok(self.pairs_of(items))
    }

    fn pairs_of(&self, items: Id) -> Option<Vec<(Id, Id)>> {
        match self.arena.get(items)? {
            Obj::Dict(pairs) => Some(pairs.clone()),
            Obj::List(seq) | Obj::Tuple(seq) => seq
                .iter()
                .map(|&p| match self.tuple_items(p)? {
                    &[k, v] => Some((k, v)),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    fn tensor_meta(&self, args: Id) -> PResult<TensorMeta> {
        let bad = |what: &str| {
            format!(
                "malformed arguments to torch._utils._rebuild_tensor_v2 at byte {}: {what}",
                self.op_pos
            )
        };
        let Some(&[storage, offset, size, stride, ..]) = self.tuple_items(args) else {
            return Err(bad("expected (storage, offset, size, stride, ...)"));
        };
        let index = |id: Id| match self.arena.get(id) {
            Some(&Obj::Int(v)) => usize::try_from(v).ok(),
            _ => None,
        };
        let indices = |id: Id, what: &str| -> PResult<Vec<usize>> {
            let items = self
                .tuple_items(id)
                .ok_or_else(|| bad(&format!("{what} is not a tuple")))?;
            if items.len() > MAX_DIMS {
                return Err(bad(&format!(
                    "{} dimensions, at most {MAX_DIMS} supported",
                    items.len()
                )));
            }
            items
                .iter()
                .map(|&i| index(i).ok_or_else(|| bad(&format!("{what} holds a non-index value"))))
                .collect()
        };
        let offset = index(offset).ok_or_else(|| bad("storage offset is not an index"))?;
        let size = indices(size, "size")?;
        let stride = indices(stride, "stride")?;
        if size.len() != stride.len() {
            return Err(bad("size and stride differ in length"));
        }
        Ok(TensorMeta {
            storage,
            offset,
            size,
            stride,
        })
    }

    /// BINPERSID: `('storage', storage_type, key, location, numel)` becomes a storage.
    fn persistent(&self, pid: Id) -> Obj {
        if let Some(&[tag, ty, key, ..]) = self.tuple_items(pid) {
            if self.str_at(tag) == Some("storage") {
                return Obj::Storage { ty, key };
            }
        }
        Obj::Opaque { from: pid }
    }
}

/// Whether `s` is a (possibly negative) decimal integer.
fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// LONG1 / LONG4 payload: little-endian two's complement.
fn decode_long(bytes: &[u8]) -> Obj {
    let Some(&last) = bytes.last() else {
        return Obj::Int(0);
    };
    let fill = if last & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    let v = i64::from_le_bytes(buf);
    let ext = if v < 0 { 0xff } else { 0 };
    if bytes[n..].iter().all(|&b| b == ext) {
        Obj::Int(v)
    } else {
        Obj::BigInt
    }
}

/// Names of valid pickle opcodes this reader does not implement.
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'P' => "PERSID",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// How a storage type from the pickle (e.g. `torch.FloatStorage`) is handled.
enum StorageKind {
    Float(DType),
    /// Integer and bool tensors: buffers such as `position_ids`, skipped.
    Skip,
    /// Anything else, with the dtype's name for the message.
    Unsupported(String),
}

fn storage_kind(module: &str, name: &str) -> StorageKind {
    if !module.starts_with("torch") {
        return StorageKind::Unsupported(format!("storage type {module}.{name}"));
    }
    let dtype = match name {
        "FloatStorage" => return StorageKind::Float(DType::F32),
        "HalfStorage" => return StorageKind::Float(DType::F16),
        "BFloat16Storage" => return StorageKind::Float(DType::BF16),
        "LongStorage" | "IntStorage" | "ShortStorage" | "CharStorage" | "ByteStorage"
        | "BoolStorage" => return StorageKind::Skip,
        "DoubleStorage" => "dtype torch.float64 storage",
        "ComplexFloatStorage" => "dtype torch.complex64 storage",
        "ComplexDoubleStorage" => "dtype torch.complex128 storage",
        "QInt8Storage" => "dtype torch.qint8 storage",
        "QUInt8Storage" => "dtype torch.quint8 storage",
        "QInt32Storage" => "dtype torch.qint32 storage",
        "QUInt4x2Storage" => "dtype torch.quint4x2 storage",
        "QUInt2x4Storage" => "dtype torch.quint2x4 storage",
        _ => return StorageKind::Unsupported(format!("storage type {module}.{name}")),
    };
    StorageKind::Unsupported(dtype.to_owned())
}

impl Pickle {
    fn get(&self, id: Id) -> Option<&Obj> {
        self.arena.get(id)
    }

    fn str_at(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn dict(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.get(id) {
            Some(Obj::Dict(pairs)) => Some(pairs),
            _ => None,
        }
    }

    fn is_tensor(&self, id: Id) -> bool {
        matches!(self.get(id), Some(Obj::Tensor(_)))
    }

    /// Human-readable name of an opaque object's origin.
    fn describe(&self, id: Id) -> String {
        match self.get(id) {
            Some(Obj::Global { module, name }) => format!(
                "`{}.{}`",
                self.str_at(*module).unwrap_or("?"),
                self.str_at(*name).unwrap_or("?")
            ),
            Some(&Obj::Opaque { from }) => match self.get(from) {
                Some(Obj::Opaque { .. }) | None => "an unsupported object".into(),
                Some(_) => self.describe(from),
            },
            Some(Obj::Tuple(items)) => match items.first().and_then(|&t| self.str_at(t)) {
                Some(tag) => format!("persistent id `{tag}`"),
                None => "an unsupported persistent id".into(),
            },
            _ => "an unsupported object".into(),
        }
    }

    /// The dict holding the tensors: the root, or a state dict nested one level.
    fn state_dict(&self) -> PResult<&[(Id, Id)]> {
        let root = match self.get(self.root) {
            Some(Obj::Dict(pairs)) => pairs,
            Some(Obj::Tensor(_)) => {
                return Err("the checkpoint holds a single tensor, not a state dict".into())
            }
            Some(Obj::Opaque { from }) => {
                return Err(format!(
                    "the checkpoint holds a pickled {} object, not a state dict; \
                     save model.state_dict() instead",
                    self.describe(*from)
                ))
            }
            _ => return Err("the checkpoint's top-level object is not a state dict".into()),
        };
        for wanted in NESTED_KEYS {
            for &(k, v) in root {
                if self.str_at(k) == Some(wanted) {
                    if let Some(inner) = self.dict(v) {
                        return Ok(inner);
                    }
                }
            }
        }
        if root.iter().any(|&(_, v)| self.is_tensor(v)) {
            return Ok(root);
        }
        let mut seen = std::collections::HashSet::new();
        let nested = root
            .iter()
            .filter(|&&(_, v)| seen.insert(v))
            .filter_map(|&(_, v)| self.dict(v))
            .find(|inner| inner.iter().any(|&(_, v)| self.is_tensor(v)));
        Ok(nested.unwrap_or(root))
    }

    /// The float tensors of the state dict in order, with their storage resolved.
    fn tensor_plans(&self) -> Result<Vec<TensorPlan<'_>>, String> {
        let dict = self.state_dict()?;
        // Python semantics for a repeated key: first position, last value.
        let mut entries: Vec<(&str, Id)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for &(k, v) in dict {
            let Some(name) = self.str_at(k) else { continue };
            match index.get(name) {
                Some(&i) => entries[i].1 = v,
                None => {
                    index.insert(name, entries.len());
                    entries.push((name, v));
                }
            }
        }

        let mut plans = Vec::new();
        for (name, v) in entries {
            let meta = match self.get(v) {
                Some(Obj::Tensor(meta)) => meta,
                Some(Obj::Opaque { from }) => {
                    return Err(format!(
                        "tensor `{name}` is stored as {}, which this reader does not support",
                        self.describe(*from)
                    ))
                }
                // Plain Python values (ints, strings, None...) are not weights.
                _ => continue,
            };
            let (ty, key) = match self.get(meta.storage) {
                Some(&Obj::Storage { ty, key }) => (ty, key),
                other => {
                    let what = match other {
                        Some(Obj::Opaque { from }) => self.describe(*from),
                        _ => "not a torch storage".into(),
                    };
                    return Err(format!("tensor `{name}`: its storage is {what}"));
                }
            };
            let kind = match self.get(ty) {
                Some(Obj::Global {
                    module,
                    name: ty_name,
                }) => storage_kind(
                    self.str_at(*module).unwrap_or(""),
                    self.str_at(*ty_name).unwrap_or(""),
                ),
                _ => StorageKind::Unsupported("an unknown storage type".into()),
            };
            let dtype = match kind {
                StorageKind::Float(dtype) => dtype,
                StorageKind::Skip => continue,
                StorageKind::Unsupported(what) => {
                    return Err(format!(
                        "tensor `{name}` has {what}, only float32/float16/bfloat16 are supported"
                    ))
                }
            };
            let Some(key) = self.str_at(key) else {
                return Err(format!("tensor `{name}`: its storage key is not a string"));
            };
            plans.push(TensorPlan {
                name,
                dtype,
                key,
                offset: meta.offset,
                size: meta.size.clone(),
                stride: meta.stride.clone(),
            });
        }
        Ok(plans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    // ---- hand-built pickles -------------------------------------------------------------------

    /// Emits pickle opcodes.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn proto() -> Self {
            P(vec![0x80, 2])
        }
        fn op(mut self, op: u8) -> Self {
            self.0.push(op);
            self
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn global(self, module: &str, name: &str) -> Self {
            self.op(b'c')
                .raw(module.as_bytes())
                .op(b'\n')
                .raw(name.as_bytes())
                .op(b'\n')
        }
        fn s(self, s: &str) -> Self {
            let n = (s.len() as u32).to_le_bytes();
            self.op(b'X').raw(&n).raw(s.as_bytes())
        }
        fn int(self, v: i32) -> Self {
            self.op(b'J').raw(&v.to_le_bytes())
        }
        fn ints(self, vs: &[usize]) -> Self {
            let mut p = self.op(b'(');
            for &v in vs {
                p = p.int(v as i32);
            }
            p.op(b't')
        }
        fn stop(self) -> Vec<u8> {
            self.op(b'.').0
        }
        /// `_rebuild_tensor_v2(('storage', torch.<ty>, key, 'cpu', 0), offset, size, stride,
        /// False, OrderedDict())`.
        fn tensor(
            self,
            ty: &str,
            key: &str,
            offset: usize,
            size: &[usize],
            stride: &[usize],
        ) -> Self {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .tensor_args(ty, key, offset, size, stride)
                .op(b'R')
        }
        /// The argument tuple of `_rebuild_tensor_v2`.
        fn tensor_args(
            self,
            ty: &str,
            key: &str,
            offset: usize,
            size: &[usize],
            stride: &[usize],
        ) -> Self {
            self.op(b'(')
                .op(b'(')
                .s("storage")
                .global("torch", ty)
                .s(key)
                .s("cpu")
                .int(0)
                .op(b't')
                .op(b'Q')
                .int(offset as i32)
                .ints(size)
                .ints(stride)
                .op(0x89)
                .global("collections", "OrderedDict")
                .op(b')')
                .op(b'R')
                .op(b't')
        }
    }

    struct T<'a> {
        name: &'a str,
        ty: &'a str,
        key: &'a str,
        offset: usize,
        size: &'a [usize],
        stride: &'a [usize],
    }

    fn t<'a>(
        name: &'a str,
        ty: &'a str,
        key: &'a str,
        offset: usize,
        size: &'a [usize],
        stride: &'a [usize],
    ) -> T<'a> {
        T {
            name,
            ty,
            key,
            offset,
            size,
            stride,
        }
    }

    /// An `OrderedDict` state dict pickle, like torch.save writes it.
    fn state_dict(tensors: &[T]) -> Vec<u8> {
        let mut p = P::proto()
            .global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b'q')
            .op(0)
            .op(b'(');
        for x in tensors {
            p = p.s(x.name).tensor(x.ty, x.key, x.offset, x.size, x.stride);
        }
        p.op(b'u').stop()
    }

    fn run(bytes: &[u8]) -> PResult<Pickle> {
        Unpickler::new(bytes).run()
    }

    fn run_err(bytes: &[u8]) -> String {
        match run(bytes) {
            Ok(p) => panic!("expected an error, got root {:?}", p.get(p.root)),
            Err(e) => e,
        }
    }

    // ---- archives -------------------------------------------------------------------------------

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn as_f32(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts =
            zip::write::SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
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

    fn load_bytes(bytes: &[u8]) -> Result<Vec<(String, OwnedTensor)>> {
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

    // ---- unpickler --------------------------------------------------------------------------------

    #[test]
    fn primitives_and_containers() {
        // {'a': (1, -2, 300, 70000, -1 (LONG1), 2**40 (LONG1)), 'b': [None, True, 1.5, b'xy'], 'c': 'é'}
        let bytes = P::proto()
            .op(b'}')
            .op(b'(')
            .s("a")
            .op(b'(')
            .op(b'K')
            .op(1)
            .int(-2)
            .op(b'M')
            .raw(&300u16.to_le_bytes())
            .int(70000)
            .op(0x8a)
            .op(1)
            .op(0xff)
            .op(0x8a)
            .op(6)
            .raw(&[0, 0, 0, 0, 0, 1])
            .op(b't')
            .s("b")
            .op(b']')
            .op(b'(')
            .op(b'N')
            .op(0x88)
            .op(b'G')
            .raw(&1.5f64.to_be_bytes())
            .op(b'C')
            .op(2)
            .raw(b"xy")
            .op(b'e')
            .op(0x8c)
            .op(1)
            .raw(b"c")
            .op(0x8c)
            .op(2)
            .raw("é".as_bytes())
            .op(b'u')
            .stop();
        let p = run(&bytes).unwrap();
        let dict = p.dict(p.root).unwrap();
        assert_eq!(dict.len(), 3);
        let keys: Vec<_> = dict.iter().map(|&(k, _)| p.str_at(k).unwrap()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        let Some(Obj::Tuple(ints)) = p.get(dict[0].1) else {
            panic!("not a tuple")
        };
        let ints: Vec<i64> = ints
            .iter()
            .map(|&i| match p.get(i) {
                Some(&Obj::Int(v)) => v,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ints, [1, -2, 300, 70000, -1, 1 << 40]);
        let Some(Obj::List(items)) = p.get(dict[1].1) else {
            panic!("not a list")
        };
        assert!(matches!(p.get(items[0]), Some(Obj::None)));
        assert!(matches!(p.get(items[1]), Some(Obj::Bool(true))));
        assert!(matches!(p.get(items[2]), Some(&Obj::Float(f)) if f == 1.5));
        assert!(matches!(p.get(items[3]), Some(Obj::Bytes(b)) if b == b"xy"));
        assert_eq!(p.str_at(dict[2].1), Some("é"));
    }

    #[test]
    fn decode_long_edge_cases() {
        assert!(matches!(decode_long(&[]), Obj::Int(0)));
        assert!(matches!(decode_long(&[0x80]), Obj::Int(-128)));
        assert!(matches!(decode_long(&[0xff, 0x00]), Obj::Int(255)));
        let mut max = [0xffu8; 9];
        max[7] = 0x7f;
        max[8] = 0;
        assert!(matches!(decode_long(&max[..8]), Obj::Int(i64::MAX)));
        assert!(matches!(decode_long(&max), Obj::Int(i64::MAX)));
        assert!(matches!(
            decode_long(&[0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Obj::BigInt
        ));
        assert!(matches!(decode_long(&[0xff; 12]), Obj::Int(-1)));
    }

    #[test]
    fn memo_shares_mutable_objects() {
        // d = {}; memo[0] = d; l = [d, d]; d['k'] = 1 (after l was built) -> l sees the update.
        let bytes = P::proto()
            .op(b'}')
            .op(b'q')
            .op(0)
            .op(b'0') // pop d
            .op(b'(')
            .op(b'h')
            .op(0)
            .op(b'j')
            .raw(&0u32.to_le_bytes())
            .op(b'l')
            .op(0x94) // memo[1] = list
            .op(b'h')
            .op(0)
            .s("k")
            .op(b'K')
            .op(1)
            .op(b's')
            .op(b'0')
            .stop();
        let p = run(&bytes).unwrap();
        let Some(Obj::List(items)) = p.get(p.root) else {
            panic!("root is not a list")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], items[1]);
        assert_eq!(p.dict(items[0]).unwrap().len(), 1);
    }

    #[test]
    fn protocol_4_opcodes() {
        // PROTO 4, FRAME, STACK_GLOBAL, MEMOIZE, NEWOBJ, TUPLE1..3, BINUNICODE8, BINBYTES8
        let bytes = P(vec![0x80, 4])
            .op(0x95)
            .raw(&100u64.to_le_bytes())
            .op(0x8c)
            .op(11)
            .raw(b"collections")
            .op(0x94)
            .op(0x8c)
            .op(11)
            .raw(b"OrderedDict")
            .op(0x94)
            .op(0x93)
            .op(0x94)
            .op(b')')
            .op(0x81)
            .op(0x94)
            .op(0x8d)
            .raw(&1u64.to_le_bytes())
            .raw(b"k")
            .op(b'K')
            .op(1)
            .op(0x85)
            .op(b'K')
            .op(2)
            .op(b'K')
            .op(3)
            .op(0x86)
            .op(0x8e)
            .raw(&2u64.to_le_bytes())
            .raw(b"ab")
            .op(b'N')
            .op(0x88)
            .op(0x87)
            .op(0x86) // ((2, 3), (b'ab', None, True))
            .op(0x86) // value: ((1,), ((2, 3), (b'ab', None, True)))
            .op(b's')
            .stop();
        let p = run(&bytes).unwrap();
        let dict = p.dict(p.root).unwrap();
        assert_eq!(dict.len(), 1);
        assert_eq!(p.str_at(dict[0].0), Some("k"));
        let Some(Obj::Tuple(v)) = p.get(dict[0].1) else {
            panic!("value is not a tuple")
        };
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn pickle_error_paths() {
        let e = run_err(&P::proto().op(b'N').0);
        assert!(e.contains("without a STOP"), "{e}");
        let e = run_err(
            &P::proto()
                .op(b'X')
                .raw(&1000u32.to_le_bytes())
                .raw(b"abc")
                .0,
        );
        assert!(e.contains("truncated") && e.contains("1000"), "{e}");
        let e = run_err(&P::proto().op(0xff).stop());
        assert!(e.contains("unknown pickle opcode 0xff at byte 2"), "{e}");
        let e = run_err(&P::proto().op(b'V').stop());
        assert!(e.contains("unsupported pickle opcode UNICODE"), "{e}");
        let e = run_err(&P(vec![0x80, 9]).op(b'N').stop());
        assert!(e.contains("protocol 9"), "{e}");
        let e = run_err(&P::proto().stop());
        assert!(e.contains("stack underflow at byte 2"), "{e}");
        let e = run_err(&P::proto().op(b'h').op(7).stop());
        assert!(e.contains("memo key 7"), "{e}");
        let e = run_err(&P::proto().op(b'N').op(b'(').op(b'0').stop());
        assert!(e.contains("stack underflow"), "{e}");
        let e = run_err(&P::proto().op(b't').stop());
        assert!(e.contains("no MARK"), "{e}");
        let e = run_err(&P::proto().op(b'}').op(b'(').op(b'N').op(b'u').stop());
        assert!(e.contains("odd number"), "{e}");
        let e = run_err(&P::proto().op(b'N').s("k").s("v").op(b's').stop());
        assert!(e.contains("SETITEM on a None"), "{e}");
        let e = run_err(&P::proto().op(b')').op(b'N').op(b'a').stop());
        assert!(e.contains("APPEND to a tuple"), "{e}");
        let e = run_err(
            &P::proto()
                .op(b'X')
                .raw(&2u32.to_le_bytes())
                .raw(&[0xc3, 0x28])
                .stop(),
        );
        assert!(e.contains("invalid UTF-8"), "{e}");
        let e = run_err(&P::proto().op(b'c').raw(b"torch").stop());
        assert!(e.contains("newline"), "{e}");
        let e = run_err(&P::proto().op(b'K').op(1).op(b'N').op(0x93).stop());
        assert!(e.contains("STACK_GLOBAL") && e.contains("strings"), "{e}");
        let e = run_err(
            &P::proto()
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b'(')
                .op(b'N')
                .int(0)
                .op(b't')
                .op(b'R')
                .stop(),
        );
        assert!(
            e.contains("malformed arguments to torch._utils._rebuild_tensor_v2"),
            "{e}"
        );
        let e = run_err(
            &P::proto()
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b'(')
                .op(b'N')
                .int(-1)
                .ints(&[1])
                .ints(&[1])
                .op(b't')
                .op(b'R')
                .stop(),
        );
        assert!(e.contains("storage offset is not an index"), "{e}");
        let e = run_err(
            &P::proto()
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b'(')
                .op(b'N')
                .int(0)
                .ints(&[1, 2])
                .ints(&[1])
                .op(b't')
                .op(b'R')
                .stop(),
        );
        assert!(e.contains("differ in length"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random bytes and every truncation of a valid pickle.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 32) as u8
                })
                .collect();
            let _ = run(&bytes).map(|p| p.tensor_plans().map(|v| v.len()));
        }
        let valid = state_dict(&[t("w", "FloatStorage", "0", 0, &[2, 3], &[3, 1])]);
        for cut in 0..valid.len() {
            let e = run_err(&valid[..cut]);
            assert!(
                e.contains("truncated") || e.contains("underflow"),
                "{cut}: {e}"
            );
        }
        assert_eq!(run(&valid).unwrap().tensor_plans().unwrap().len(), 1);
    }

    #[test]
    fn state_dict_plans() {
        let pkl = state_dict(&[
            t("a", "FloatStorage", "0", 0, &[2, 3], &[3, 1]),
            t("ids", "LongStorage", "1", 0, &[1, 4], &[4, 1]),
            t("b", "HalfStorage", "2", 5, &[3, 2], &[1, 3]),
            t("c", "BFloat16Storage", "3", 0, &[], &[]),
        ]);
        let pickle = run(&pkl).unwrap();
        let plans = pickle.tensor_plans().unwrap();
        let names: Vec<_> = plans.iter().map(|p| p.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(plans[1].dtype, DType::F16);
        assert_eq!(
            (plans[1].offset, &plans[1].size[..], &plans[1].stride[..]),
            (5, &[3, 2][..], &[1, 3][..])
        );
        assert_eq!(plans[2].dtype, DType::BF16);
        assert!(plans[2].size.is_empty());
    }

    #[test]
    fn parameter_and_from_type_wrappers() {
        // OrderedDict([('p', _rebuild_parameter(<tensor>, True, OrderedDict())),
        //              ('q', _rebuild_from_type_v2(_rebuild_tensor_v2, Parameter, <args>, {}))])
        let bytes = P::proto()
            .global("collections", "OrderedDict")
            .op(b'(')
            .s("p")
            .global("torch._utils", "_rebuild_parameter")
            .op(b'(')
            .tensor("FloatStorage", "0", 0, &[2], &[1])
            .op(0x88)
            .global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b't')
            .op(b'R')
            .op(0x86)
            .s("q")
            .global("torch._tensor", "_rebuild_from_type_v2")
            .op(b'(')
            .global("torch._utils", "_rebuild_tensor_v2")
            .global("torch.nn.parameter", "Parameter")
            .tensor_args("HalfStorage", "1", 1, &[3], &[1])
            .op(b'}')
            .op(b't')
            .op(b'R')
            .op(0x86)
            .op(b'l')
            .op(0x85)
            .op(b'R')
            .stop();
        let pickle = run(&bytes).unwrap();
        let plans = pickle.tensor_plans().unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!((plans[0].name, plans[0].dtype), ("p", DType::F32));
        assert_eq!(plans[0].size, [2]);
        assert_eq!((plans[1].name, plans[1].dtype), ("q", DType::F16));
        assert_eq!((plans[1].offset, &plans[1].size[..]), (1, &[3][..]));
    }

    #[test]
    fn plan_errors_name_the_tensor() {
        let e = run(&state_dict(&[t("x", "DoubleStorage", "0", 0, &[2], &[1])]))
            .unwrap()
            .tensor_plans()
            .unwrap_err();
        assert_eq!(
            e,
            "tensor `x` has dtype torch.float64 storage, only float32/float16/bfloat16 are supported"
        );
        let e = run(&state_dict(&[t("y", "FancyStorage", "0", 0, &[2], &[1])]))
            .unwrap()
            .tensor_plans()
            .unwrap_err();
        assert!(
            e.contains("tensor `y` has storage type torch.FancyStorage"),
            "{e}"
        );
        // A value built by an unknown function where a tensor is expected.
        let bytes = P::proto()
            .op(b'}')
            .s("q")
            .global("torch._utils", "_rebuild_qtensor")
            .op(b')')
            .op(b'R')
            .op(b's')
            .stop();
        let e = run(&bytes).unwrap().tensor_plans().unwrap_err();
        assert!(
            e.contains("tensor `q` is stored as `torch._utils._rebuild_qtensor`"),
            "{e}"
        );
        // A whole pickled module.
        let bytes = P::proto()
            .global("transformers.models", "DebertaV2Model")
            .op(b')')
            .op(0x81)
            .op(b'}')
            .op(b'b')
            .stop();
        let e = run(&bytes).unwrap().tensor_plans().unwrap_err();
        assert!(
            e.contains("pickled `transformers.models.DebertaV2Model` object, not a state dict"),
            "{e}"
        );
        // Opaque values elsewhere are fine: unknown globals are only values. Here `model` is the
        // (empty) state dict and `note` is never looked at.
        let bytes = P::proto()
            .op(b'}')
            .op(b'(')
            .s("note")
            .global("argparse", "Namespace")
            .op(b')')
            .op(b'R')
            .s("model")
            .op(b'}')
            .op(b'u')
            .stop();
        assert!(run(&bytes).unwrap().tensor_plans().unwrap().is_empty());
    }

    #[test]
    fn nested_state_dict_is_found() {
        let inner = state_dict(&[t("w", "FloatStorage", "0", 0, &[2], &[1])]);
        // {'epoch': 3, 'state_dict': <inner>}
        let body = &inner[2..inner.len() - 1]; // strip PROTO and STOP
        let bytes = P::proto()
            .op(b'}')
            .op(b'(')
            .s("epoch")
            .op(b'K')
            .op(3)
            .s("state_dict")
            .raw(body)
            .op(b'u')
            .stop();
        let pickle = run(&bytes).unwrap();
        let plans = pickle.tensor_plans().unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].name, "w");
    }

    #[test]
    fn hostile_pickles_stay_bounded() {
        // A memoized list of 1000 pairs, copied by OrderedDict(...) 1000 times.
        let mut p = P::proto().op(b'(');
        for _ in 0..1000 {
            p = p.op(b'K').op(0).op(b'N').op(0x86);
        }
        p = p.op(b'l').op(b'q').op(0).op(b'0');
        for _ in 0..1000 {
            p = p
                .global("collections", "OrderedDict")
                .op(b'h')
                .op(0)
                .op(0x85)
                .op(b'R')
                .op(b'0');
        }
        let e = run_err(&p.op(b'N').stop());
        assert!(
            e.contains("copies more items than the pickle could hold"),
            "{e}"
        );

        // An opaque value called on itself 100k times: no chain to recurse through.
        let mut p = P::proto().global("evil", "f");
        for _ in 0..100_000 {
            p = p.op(b')').op(b'R');
        }
        let pickle = run(&p.stop()).unwrap();
        let e = pickle.tensor_plans().map(|v| v.len()).unwrap_err();
        assert!(e.contains("pickled `evil.f` object"), "{e}");
    }

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
