#!/usr/bin/env python3
"""Writes the hand-made part of the seed corpus in fuzz/corpus/ (small edge cases beside the
real fixture files that scripts copy in). Python's standard library only; run from anywhere:
    python3 fuzz/make_seeds.py
"""
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

ROOT = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(ROOT, "..", "tests", "fixtures", "models")


def out(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors ---------------------------------------------------------------------------

def st(tensors, pad_header_to=None, raw_header=None, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, data = {}, b""
    for name, dtype, shape, b in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    if metadata is not None:
        header["__metadata__"] = metadata
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    if pad_header_to is not None:
        h = h + b" " * (pad_header_to - len(h))
    return struct.pack("<Q", len(h)) + h + data


def f32(*v):
    return struct.pack(f"<{len(v)}f", *v)


def f16(*v):
    return struct.pack(f"<{len(v)}e", *v)


def bf16(*v):
    return b"".join(struct.pack("<f", x)[2:] for x in v)


def safetensors_seeds():
    t = "safetensors_header"
    out(t, "f32_2x2", st([("a", "F32", [2, 2], f32(1, 2, 3, 4))]))
    out(t, "f32_unaligned", st([("a", "F32", [2], f32(1, 2))], pad_header_to=13))
    out(t, "f16_bf16", st([("h", "F16", [3], f16(1, -2, 0.5)),
                           ("b", "BF16", [2], bf16(1, -3))]))
    out(t, "prefix", st([("deberta.embeddings.word_embeddings.weight", "F32", [2, 2],
                          f32(1, 2, 3, 4)),
                         ("deberta.embeddings.LayerNorm.weight", "F16", [2], f16(1, 1))]))
    out(t, "int64_and_scalar", st([("position_ids", "I64", [2], struct.pack("<2q", 0, 1)),
                                   ("s", "F32", [], f32(7))]))
    out(t, "empty_and_meta", st([("e", "F32", [0], b"")], metadata={"format": "pt"}))
    out(t, "nan", st([("n", "F32", [2], f32(float("nan"), 1))]))
    out(t, "dup_names", st([], raw_header=b'{"a":{"dtype":"F32","shape":[1],'
                                          b'"data_offsets":[0,4]},"a":{"dtype":"F32",'
                                          b'"shape":[1],"data_offsets":[0,4]}}') + f32(1))
    out(t, "huge_len", struct.pack("<Q", 2**63) + b"{}")
    out(t, "short", b"\x02\x00\x00")


# ---- pytorch zip ---------------------------------------------------------------------------

def fake_torch():
    """Just enough of a `torch` module for pickle to name its globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    def _rebuild_tensor_v2(*a):
        raise NotImplementedError
    def _rebuild_parameter(*a):
        raise NotImplementedError
    for f in (_rebuild_tensor_v2, _rebuild_parameter):
        f.__module__ = "torch._utils"
        f.__qualname__ = f.__name__
        setattr(utils, f.__name__, f)
    torch._utils = utils
    for name in ("FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
                 "DoubleStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return torch


class Storage:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class Tensor:
    def __init__(self, storage, offset, size, stride, param=False):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.param = param

    def __reduce__(self):
        torch = sys.modules["torch"]
        if self.param:
            inner = Tensor(self.storage, self.offset, self.size, self.stride)
            return (torch._utils._rebuild_parameter, (inner, False, OrderedDict()))
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                 OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def torch_zip(state, storages, prefix="archive", byteorder=b"little", compress=False):
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(state)
    z = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(z, "w", method) as zf:
        zf.writestr(f"{prefix}/data.pkl", buf.getvalue())
        if byteorder is not None:
            zf.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in storages.items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", b"3\n")
    return z.getvalue()


def pytorch_seeds():
    torch = fake_torch()
    t = "pytorch_zip"
    s0 = Storage(torch.FloatStorage, "0", 6)
    s1 = Storage(torch.HalfStorage, "1", 2)
    s2 = Storage(torch.LongStorage, "2", 2)
    s3 = Storage(torch.BFloat16Storage, "3", 2)
    storages = {"0": f32(0, 1, 2, 3, 4, 5), "1": f16(1, 2), "2": struct.pack("<2q", 0, 1),
                "3": bf16(1, 2)}
    state = OrderedDict([
        ("contig", Tensor(s0, 0, [2, 3], [3, 1])),
        ("transposed", Tensor(s0, 0, [3, 2], [1, 3])),
        ("offset_view", Tensor(s0, 2, [2], [2])),
        ("scalar", Tensor(s0, 5, [], [])),
        ("half", Tensor(s1, 0, [2], [1], param=True)),
        ("bf16", Tensor(s3, 0, [2], [1])),
        ("position_ids", Tensor(s2, 0, [1, 2], [2, 1])),
    ])
    out(t, "strided_shared", torch_zip(state, storages))
    out(t, "nested_state_dict", torch_zip({"state_dict": OrderedDict(
        [("w", Tensor(s0, 0, [6], [1]))])}, {"0": storages["0"]}, prefix="model"))
    out(t, "big_endian", torch_zip(OrderedDict([("w", Tensor(s0, 0, [6], [1]))]),
                                   {"0": struct.pack(">6f", 0, 1, 2, 3, 4, 5)},
                                   byteorder=b"big"))
    out(t, "deflated", torch_zip(OrderedDict([("w", Tensor(s0, 0, [6], [1]))]),
                                 {"0": storages["0"]}, compress=True))
    out(t, "double", torch_zip(OrderedDict([("d", Tensor(Storage(torch.DoubleStorage, "0", 1),
                                                          0, [1], [1]))]),
                               {"0": struct.pack("<d", 1.0)}))
    out(t, "legacy_pickle", pickle.dumps({"a": 1}, protocol=2))
    out(t, "empty_zip", torch_zip({}, {}))


# ---- config resolution ---------------------------------------------------------------------

CONFIG_FILES = ["config.json", "modules.json", "sentence_bert_config.json",
                "1_Pooling/config.json", "tokenizer_config.json",
                "config_sentence_transformers.json", "added_tokens.json"]


def read(d, name):
    p = os.path.join(FIX, d, name)
    return open(p, "rb").read() if os.path.isfile(p) else b""


def config_seeds():
    t = "config_resolution"
    for d in ("st2_v3like", "st3_conv_multipool", "st6_pool_weightedmean",
              "st6_proj_cls_norm", "hf_bf16_bin"):
        for tok in (b"spm", b"json"):
            parts = [read(d, f) for f in CONFIG_FILES] + [tok]
            out(t, f"{d}_{tok.decode()}", b"\0".join(parts))
    base = [read("st2_v3like", f) for f in CONFIG_FILES]
    cfg = json.loads(base[0])
    def variant(name, **changes):
        c = dict(cfg)
        c.update(changes)
        parts = list(base)
        parts[0] = json.dumps(c).encode()
        out(t, name, b"\0".join(parts + [b"spm"]))
    variant("layers_1e8", num_hidden_layers=100000000)
    variant("heads_3", num_attention_heads=3)
    variant("hidden_0", hidden_size=0)
    variant("vocab_huge", vocab_size=2**40)
    variant("buckets_neg", position_buckets=-5, max_relative_positions=-7)
    variant("pos_att_bad", pos_att_type="c2p|p2p|xyz")
    sb = list(base)
    sb[2] = b'{"max_seq_length": 1, "do_lower_case": true}'
    out(t, "max_seq_1", b"\0".join(sb + [b"spm"]))
    tk = list(base)
    tk[4] = b'{"model_max_length": 1e30, "cls_token": {"content": "[NOPE]"}}'
    out(t, "tokcfg_specials", b"\0".join(tk + [b"spm"]))
    md = list(base)
    md[1] = b'[{"type": "sentence_transformers.models.Pooling", "path": "../x"}]'
    out(t, "modules_escape", b"\0".join(md + [b"json"]))


# ---- HTTP bodies ---------------------------------------------------------------------------

def http_seeds():
    t = "http_bodies"
    routes = {0: "/v1/embeddings", 1: "/embed", 2: "/tokenize"}
    bodies = {
        0: [{"input": "A man is eating food."},
            {"input": ["one", "two"], "model": "m", "encoding_format": "base64"},
            {"input": [[1, 2, 3]], "dimensions": 32},
            {"input": "x", "encoding_format": "nope"},
            {"input": []}],
        1: [{"inputs": "A man is eating food."},
            {"inputs": ["a b c " * 80], "truncate": True, "normalize": False},
            {"inputs": ["a b c " * 80]},
            {"inputs": "x", "truncation_direction": "Left"},
            {"inputs": "x", "prompt_name": "q"}],
        2: [{"inputs": "Ünïcödé 🙂 text\ttabs"},
            {"inputs": ["a", "b"], "add_special_tokens": False, "truncate": False},
            {"inputs": 5}],
    }
    for r, bs in bodies.items():
        for i, b in enumerate(bs):
            out(t, f"{routes[r].strip('/').replace('/', '_')}_{i}",
                bytes([r]) + json.dumps(b, ensure_ascii=False).encode())
    out(t, "not_json", bytes([0]) + b"{\"input\": ")
    out(t, "empty_body", bytes([1]))


def fixture_copies():
    """Real weight files of the test fixtures, as the richest seeds of the two file formats."""
    for target, d, name in [
            ("safetensors_header", "st6_proj_cls_norm", "model.safetensors"),
            ("safetensors_header", "hf_seqcls_prefix", "model.safetensors"),
            ("pytorch_zip", "st2_v3like", "pytorch_model.bin"),
            ("pytorch_zip", "hf_bf16_bin", "pytorch_model.bin"),
            ("pytorch_zip", "st3_conv_multipool", "pytorch_model.bin")]:
        out(target, f"fixture_{d}", read(d, name))


if __name__ == "__main__":
    fixture_copies()
    safetensors_seeds()
    pytorch_seeds()
    config_seeds()
    http_seeds()
