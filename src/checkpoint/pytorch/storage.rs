//! From the unpickled object graph to tensors: finding the state dict, resolving each tensor's
//! torch storage and dtype, then copying every tensor out of its storage (strides, offsets,
//! shared storages, byte order), within the memory budget.

use std::collections::HashMap;
use std::io::{Read, Seek};

use super::pickle::{Id, Obj, PResult, Pickle};
use super::zip::EntryReader;
use super::MAX_EXPANSION;
use crate::checkpoint::{DType, OwnedTensor};

/// Keys under which training scripts commonly nest the actual state dict.
const NESTED_KEYS: [&str; 4] = ["state_dict", "model_state_dict", "model", "module"];

/// What the state dict says about one float tensor, before its storage is read.
#[derive(Debug)]
pub(super) struct TensorPlan<'p> {
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
pub(super) fn assemble<R: Read + Seek>(
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
    pub(super) fn tensor_plans(&self) -> Result<Vec<TensorPlan<'_>>, String> {
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
    use super::super::pickle::testing::{run, state_dict, t, P};
    use super::*;

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
}
