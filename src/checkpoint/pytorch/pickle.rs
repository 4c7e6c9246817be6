//! The unpickler: a stack machine for the pickle opcodes `torch.save` writes, building an arena
//! of Python objects in which containers, primitives, globals, `OrderedDict`, the tensor rebuild
//! functions and storages have a meaning and every other callable is an opaque value.

use std::collections::HashMap;

/// Most dimensions a tensor may have (PyTorch itself does not go beyond a few dozen).
const MAX_DIMS: usize = 64;

/// Index of an object in the unpickler's arena. Containers hold ids, so memoized objects are
/// shared (never copied) and in-place mutation (SETITEMS on a memoized dict) is seen everywhere.
pub(super) type Id = usize;

/// A Python object as far as we model it. Payloads of bools, floats and bytes are never needed
/// to find tensors; they are kept for `Debug` output and the unit tests.
#[derive(Debug)]
#[allow(dead_code)]
pub(super) enum Obj {
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
pub(super) struct TensorMeta {
    pub(super) storage: Id,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

/// The callables the unpickler gives a meaning to.
enum Known {
    Dict,
    RebuildTensor,
    RebuildParameter,
    RebuildFromType,
    Other,
}

pub(super) type PResult<T> = std::result::Result<T, String>;

/// A stack machine for the pickle opcodes `torch.save` emits (protocol 2) and the other binary
/// opcodes of protocols 2 to 5.
pub(super) struct Unpickler<'a> {
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
pub(super) struct Pickle {
    arena: Vec<Obj>,
    pub(super) root: Id,
}

impl<'a> Unpickler<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
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
    pub(super) fn run(mut self) -> PResult<Pickle> {
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

impl Pickle {
    pub(super) fn get(&self, id: Id) -> Option<&Obj> {
        self.arena.get(id)
    }

    pub(super) fn str_at(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub(super) fn dict(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.get(id) {
            Some(Obj::Dict(pairs)) => Some(pairs),
            _ => None,
        }
    }

    pub(super) fn is_tensor(&self, id: Id) -> bool {
        matches!(self.get(id), Some(Obj::Tensor(_)))
    }

    /// Human-readable name of an opaque object's origin.
    pub(super) fn describe(&self, id: Id) -> String {
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
}

/// A pickle writer for the tests of this reader (hand-built pickles, as `torch.save` writes them).
#[cfg(test)]
pub(super) mod testing {
    use super::*;

    /// Emits pickle opcodes.
    #[derive(Default)]
    pub(crate) struct P(pub(crate) Vec<u8>);

    impl P {
        pub(crate) fn proto() -> Self {
            P(vec![0x80, 2])
        }
        pub(crate) fn op(mut self, op: u8) -> Self {
            self.0.push(op);
            self
        }
        pub(crate) fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        pub(crate) fn global(self, module: &str, name: &str) -> Self {
            self.op(b'c')
                .raw(module.as_bytes())
                .op(b'\n')
                .raw(name.as_bytes())
                .op(b'\n')
        }
        pub(crate) fn s(self, s: &str) -> Self {
            let n = (s.len() as u32).to_le_bytes();
            self.op(b'X').raw(&n).raw(s.as_bytes())
        }
        pub(crate) fn int(self, v: i32) -> Self {
            self.op(b'J').raw(&v.to_le_bytes())
        }
        pub(crate) fn ints(self, vs: &[usize]) -> Self {
            let mut p = self.op(b'(');
            for &v in vs {
                p = p.int(v as i32);
            }
            p.op(b't')
        }
        pub(crate) fn stop(self) -> Vec<u8> {
            self.op(b'.').0
        }
        /// `_rebuild_tensor_v2(('storage', torch.<ty>, key, 'cpu', 0), offset, size, stride,
        /// False, OrderedDict())`.
        pub(crate) fn tensor(
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
        pub(crate) fn tensor_args(
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

    pub(crate) struct T<'a> {
        name: &'a str,
        ty: &'a str,
        key: &'a str,
        offset: usize,
        size: &'a [usize],
        stride: &'a [usize],
    }

    pub(crate) fn t<'a>(
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
    pub(crate) fn state_dict(tensors: &[T]) -> Vec<u8> {
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

    pub(crate) fn run(bytes: &[u8]) -> PResult<Pickle> {
        Unpickler::new(bytes).run()
    }

    pub(crate) fn run_err(bytes: &[u8]) -> String {
        match run(bytes) {
            Ok(p) => panic!("expected an error, got root {:?}", p.get(p.root)),
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{run, run_err, state_dict, t, P};
    use super::*;

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
}
