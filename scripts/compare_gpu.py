#!/usr/bin/env python3
"""Time HuggingFace eager, DisentangledFlash, FlashDeBERTa and `deberta-embed bench` on one GPU.

On the GPU machine (no network there: the peers travel as wheels, scripts/fetch-gpu-peers.sh):

    python3 scripts/make_xsmall_checkpoint.py /tmp/xsmall --layout hf
    python3 scripts/compare_gpu.py --model /tmp/xsmall --binary .carry/deberta-embed \
        --wheels .carry/peers --out $OUT/compare_gpu.md [--shapes 1x16,1x512,...] [--rounds 3]

Debug mode on a machine without a GPU (argument handling, checks, tables, file writing):

    venv/bin/python scripts/compare_gpu.py --device cpu --model /tmp/xsmall \
        --shapes 1x16 --rounds 2 --out /tmp/compare_gpu_cpu.md [--wheels .carry/peers] [--binary BIN]

Workload (the one `deberta-embed bench` times): B sequences of exactly L tokens, [CLS]=1, random
ids in [4, vocab), [SEP]=2, attention mask all ones; forward of the backbone + mean pooling.
Every Python runner's timed call ends with the pooled [B, H] fp32 embeddings copied to the host
(which also synchronizes), as `deberta-embed bench` ends with host embeddings.

Runners (--device cuda):
  HF fp16 / HF bf16  transformers AutoModel (DebertaV2Model, eager attention: DeBERTa-v2 has no
                     sdpa/flash path in transformers), .to(dtype).cuda().eval(), inference_mode;
                     mean pooling over the attention mask in fp32.
  DisentangledFlash  PyPI disentangled-flash (pinned in scripts/fetch-gpu-peers.sh). What its
                     1.1.1 source says:
                       * `optimize_deberta(backbone, sequence_lengths=[...])` takes the HF
                         DebertaV2Model itself (it needs `.embeddings` and `.encoder`) and swaps
                         `backbone.encoder` in place for its `DebertaV2OptimizedEncoder` (Triton
                         attention, fused QKV; the FFN / LayerNorm modules stay HF's). Move the
                         model to the GPU and dtype FIRST: the encoder's `_apply` (.to / .half)
                         drops its prepared caches.
                       * it is inference-only with a prepared bucket per sequence length:
                         `sequence_lengths` prepares them (projected relative-position tables per
                         layer + index plans); before a forward at length L,
                         `backbone.encoder.activate_shape(L)` must select bucket L, otherwise the
                         forward raises "active bucket length ... call activate_shape() first".
                       * the forward requires eval() and torch.no_grad()/inference_mode, and a 2-D
                         [B, L] mask (HF's DebertaV2Model.forward passes the raw mask through).
                       * dtypes: fp16, bf16, fp32 (strict, or TF32 "fast"); head dim 32/64/128
                         (xsmall: 64). If Triton is missing or the shape is unsupported it silently
                         KEEPS the HF encoder: we check the encoder type and `.backend == "triton"`
                         so that HF is never timed under its name.
                       * kernel configs: mode "auto" = a bundled profile when it matches exactly
                         (GPU name and capability, torch, Triton, kernel digest: its one profile
                         is H200 + torch 2.14 + Triton 3.8), else a built-in heuristic.
                     Timed in fp16 (as the GPU figures in BENCHMARKS.md are).
  FlashDeBERTa       PyPI flashdeberta (pinned likewise). Its 0.0.8 source:
                       * `FlashDebertaV2Model` is a transformers PreTrainedModel whose encoder
                         layers use `FlashDisentangledSelfAttention` (a subclass of HF's
                         DisentangledSelfAttention, same parameter names) unconditionally; the
                         rest are HF's own DebertaV2 modules. Built with
                         `FlashDebertaV2Model.from_pretrained(DIR, dtype=...)` (its own config
                         class, model_type "deberta-v2"); if that reports missing keys or fails we
                         build `FlashDebertaV2Model(hf_model.config)` and load the HF state dict
                         (strict).
                       * no per-length preparation (no activate_shape): every layer projects the
                         relative embeddings again and, per call, compares sum(mask) with B*L
                         (a host sync) to choose the padded kernel or the varlen (unpad) kernel.
                       * Triton kernels in the input dtype (fp16 / bf16; fp32 accumulators); tile
                         sizes from FLASHDEBERTA_FWD_* or defaults measured on an RTX 5060 Ti,
                         shrunk at launch when shared memory is short. CUDA only.
                       * needs einops at import (flashdeberta/padding.py), besides torch,
                         transformers and triton.
                     Timed in fp16.
  deberta-embed      `BIN bench --model DIR --device cuda --dtype f16 --batch-size B --seq-len L
                     --json --iters N --warmup W` as a subprocess (its own median; model load and
                     warm-up outside its timed region); run from a private copy of BIN.

Runners (--device cpu, a debug mode): HF fp32 on the CPU; DisentangledFlash with backend="torch"
(its PyTorch implementation: checks our wiring of optimize_deberta / activate_shape, times
nothing meaningful); FlashDeBERTa is built (tests the loading path) and then skipped: its kernels
are Triton-on-CUDA only; deberta-embed with --device cpu --dtype f32 when --binary is given.

Correctness before timing: HF fp32 (on the same device) is the reference. Per shape, each Python
runner's pooled output on the benchmark inputs must reach cosine >= 0.99 with it (every row),
else that runner is dropped for that shape with the numbers. deberta-embed: `BIN embed` on a few
sentences vs HF fp32 + mean pooling on the same tokenization, once. A runner that fails to load,
to compile or to run is reported as "failed: <reason>"; the others go on.

Timing: per shape, each runner is warmed up (--warmup calls; Triton compiles here) and calibrated
(iterations per measurement chosen to take about --budget-s, within [--min-iters, --max-iters];
deberta-embed gets the largest count of the Python runners). Then --rounds rounds, runners in a
rotating order (A B C, B C A, ...); a measurement is the median over its iterations. Reported:
the median over rounds; "vs best peer" = tokens/s ours / tokens/s of the fastest peer, the median
of same-round ratios (the fastest peer in each round).

Peak device memory (CUDA): for the Python runners, resident = bytes torch allocated while the
runner was built (weights, and for DisentangledFlash its prepared caches for every length in
--shapes), transient = torch.cuda.max_memory_allocated() - memory_allocated() over one call after
reset_peak_memory_stats(); the table shows resident + transient. deberta-embed does not go through
torch's allocator: its figure is the device's used memory (NVML, polled every few ms) over the
level before the process started, i.e. the whole process including its CUDA context, unless its
JSON carries a "peak_device_bytes" key, which is then used instead.

--deadline-s: no new shape or round starts after that many seconds; the file is rewritten after
every shape, so a run cut short by an outer `timeout` still leaves the shapes it finished.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import importlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import REPO, cpu_model, git_revision, log, sh
CUDA_SHAPES = "1x16,1x512,256x32,64x128,16x512,1024x32"
CPU_SHAPES = "1x16"
COS_MIN = 0.99
RUNNERS = ("hf-fp16", "hf-bf16", "hf-fp32", "disentangled-flash", "flashdeberta", "deberta-embed")
SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "Someone is playing a guitar on the street while people walk by.",
    "x",
]
T_START = time.time()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="xsmall-shaped checkpoint dir (scripts/make_xsmall_checkpoint.py)")
    ap.add_argument("--binary", type=Path, help="deberta-embed binary (built with --features cuda for --device cuda); "
                    "without it the deberta-embed column is skipped")
    ap.add_argument("--wheels", type=Path, help="folder of peer wheels (scripts/fetch-gpu-peers.sh): installed with "
                    "pip --no-deps --no-index --target into a temporary folder put first on sys.path")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu = debug mode: HF fp32, DisentangledFlash's torch backend, no CUDA-only peer")
    ap.add_argument("--dry-run", action="store_true", help="same as --device cpu")
    ap.add_argument("--shapes", help=f"comma-separated BxL (default: {CUDA_SHAPES} on cuda, {CPU_SHAPES} on cpu)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write the Markdown report here (rewritten after every shape)")
    ap.add_argument("--json-out", type=Path, help="also write the raw results as JSON")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per runner and shape (default 3)")
    ap.add_argument("--budget-s", type=float, default=0.25, help="target seconds per measurement (default 0.25)")
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--max-iters", type=int, default=50)
    ap.add_argument("--deadline-s", type=float, default=0.0,
                    help="start no new shape or round after this many seconds since start (0 = none)")
    ap.add_argument("--skip", default="", help="comma-separated runners to leave out: " + ",".join(RUNNERS))
    ap.add_argument("--threads", type=int, help="CPU threads in --device cpu mode (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.dry_run:
        a.device = "cpu"
    if a.shapes is None:
        a.shapes = CUDA_SHAPES if a.device == "cuda" else CPU_SHAPES
    try:
        a.shape_list = [tuple(int(x) for x in s.strip().lower().split("x")) for s in a.shapes.split(",") if s.strip()]
        assert a.shape_list and all(len(s) == 2 and s[0] >= 1 and s[1] >= 2 for s in a.shape_list)
    except (ValueError, AssertionError):
        ap.error(f"--shapes: expected comma-separated BxL with B >= 1 and L >= 2, got {a.shapes!r}")
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    if not (a.model / "config.json").is_file():
        ap.error(f"--model: {a.model}/config.json not found")
    if a.binary is not None and not a.binary.is_file():
        ap.error(f"--binary: {a.binary} not found")
    if a.wheels is not None and not sorted(a.wheels.glob("*.whl")):
        ap.error(f"--wheels: no .whl in {a.wheels}")
    a.model = a.model.resolve()
    a.skip_set = {s.strip() for s in a.skip.split(",") if s.strip()}
    if a.skip_set - set(RUNNERS):
        ap.error(f"--skip: unknown runner(s) {sorted(a.skip_set - set(RUNNERS))}; known: {', '.join(RUNNERS)}")
    return a


ARGS = parse_args()
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
if ARGS.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if ARGS.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
            os.environ[var] = str(ARGS.threads)

import warnings

warnings.filterwarnings("ignore")


def install_wheels(folder: Path) -> dict:
    """pip install --no-deps --no-index --target TMP; nothing outside TMP is touched."""
    target = Path(tempfile.mkdtemp(prefix="compare_gpu_peers."))
    atexit.register(shutil.rmtree, target, True)
    wheels = sorted(str(w) for w in folder.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(target), *wheels]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-800:]}")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return {"target": str(target), "wheels": [Path(w).name for w in wheels]}


WHEELS = None
WHEELS_ERROR = None
if ARGS.wheels is not None:
    try:
        WHEELS = install_wheels(ARGS.wheels)
    except Exception as e:  # the HF / deberta-embed columns still run
        WHEELS_ERROR = str(e)

import numpy as np
import torch

DEV = torch.device(ARGS.device)
if ARGS.device == "cuda" and not torch.cuda.is_available():
    sys.exit("error: --device cuda but torch sees no GPU (use --device cpu for the debug mode)")
if ARGS.device == "cpu" and ARGS.threads:
    torch.set_num_threads(ARGS.threads)


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def short(e: BaseException, n: int = 300) -> str:
    s = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")
    return s if len(s) <= n else s[: n - 3] + "..."


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(torch.float32)
    return (h.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    return {"max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(np.nan_to_num(cos, nan=-1.0).min()),
            "finite": bool(np.isfinite(a).all())}


def allocated() -> int:
    return torch.cuda.memory_allocated() if DEV.type == "cuda" else 0


def load_hf(dtype: torch.dtype):
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(ARGS.model), dtype=dtype)
    return m.to(DEV).eval()


# ------------------------------------------------------------------------------------------------
# Python runners
# ------------------------------------------------------------------------------------------------


class TorchRunner:
    """A backbone callable on (input_ids, attention_mask); pooled fp32 output copied to the host."""

    def __init__(self, name: str, label: str, build):
        self.name, self.label, self.info = name, label, ""
        sync()
        before = allocated()
        self.model = build(self)
        sync()
        self.resident = allocated() - before

    def prepare(self, ids: torch.Tensor, mask: torch.Tensor):
        self.ids, self.mask = ids, mask

    def run(self) -> torch.Tensor:
        h = self.model(input_ids=self.ids, attention_mask=self.mask).last_hidden_state
        return mean_pool(h, self.mask).cpu()


class DisentangledFlashRunner(TorchRunner):
    def __init__(self, lengths: list[int], dtype: torch.dtype, backend: str):
        self.lengths, self.dtype, self.backend = lengths, dtype, backend
        label = "DisentangledFlash" + (" (torch backend, glue check)" if backend == "torch" else "")
        super().__init__("disentangled-flash", label, self._build)

    def _build(self, _self):
        import disentangled_flash as df

        m = load_hf(self.dtype)  # on the device and in its dtype before the swap
        df.optimize_deberta(m, backend=self.backend, sequence_lengths=sorted(set(self.lengths)))
        enc = m.encoder
        if not isinstance(enc, df.DebertaV2OptimizedEncoder):
            raise RuntimeError(f"optimize_deberta kept the HF encoder ({type(enc).__name__}): Triton missing or "
                               f"shape unsupported")
        if enc.backend != self.backend:
            raise RuntimeError(f"optimize_deberta resolved backend {enc.backend!r}, wanted {self.backend!r}")
        self.info = f"disentangled-flash {df.__version__}, backend {enc.backend}, tuning mode {enc.tuning.mode}"
        if enc.backend == "triton":
            self.info += f" ({self._profile_match(enc)})"
        return m

    @staticmethod
    def _profile_match(enc) -> str:
        """Does a tuning profile apply (exact GPU + compiler match), or do its heuristic configs run?"""
        try:
            from disentangled_flash.tuning import CompilerSpec, HardwareSpec, ProfileRegistry

            reg = ProfileRegistry.from_options(enc.tuning)
            hw, cc = HardwareSpec.current(DEV), CompilerSpec.current()
            kinds = [p.compatibility(hw, cc) for p in reg.profiles]
            if "exact" in kinds:
                return "an exactly matching tuning profile"
            return f"heuristic configs: {len(kinds)} profile(s), none exact ({', '.join(kinds) or 'none'})"
        except Exception as e:  # internal API: informative only
            return f"profile match unknown: {short(e, 80)}"

    def prepare(self, ids, mask):
        super().prepare(ids, mask)
        self.model.encoder.activate_shape(ids.shape[1])


class FlashDebertaRunner(TorchRunner):
    def __init__(self, dtype: torch.dtype, hf_fp32):
        self.dtype, self.hf_fp32 = dtype, hf_fp32
        super().__init__("flashdeberta", "FlashDeBERTa", self._build)

    def _build(self, _self):
        import flashdeberta as fd

        how = "FlashDebertaV2Model.from_pretrained"
        try:
            m, info = fd.FlashDebertaV2Model.from_pretrained(str(ARGS.model), dtype=self.dtype, output_loading_info=True)
            missing = list(info.get("missing_keys", []))
            if missing:
                raise RuntimeError(f"missing keys {missing[:4]}")
        except Exception as e:
            how = f"FlashDebertaV2Model(hf config) + HF state dict (from_pretrained: {short(e, 120)})"
            m = fd.FlashDebertaV2Model(self.hf_fp32.config)
            m.load_state_dict(self.hf_fp32.state_dict(), strict=True)
            m = m.to(self.dtype)
        n_flash = sum(type(mod).__name__ == "FlashDisentangledSelfAttention" for mod in m.modules())
        if n_flash != m.config.num_hidden_layers:
            raise RuntimeError(f"{n_flash} FlashDisentangledSelfAttention modules for {m.config.num_hidden_layers} layers")
        try:
            from importlib.metadata import version

            v = version("flashdeberta")
        except Exception:
            v = "?"
        self.info = f"flashdeberta {v}, built with {how}"
        return m.to(DEV).eval()


# ------------------------------------------------------------------------------------------------
# deberta-embed
# ------------------------------------------------------------------------------------------------


class MemPoller:
    """Highest device memory in use (NVML, else nvidia-smi) while a block runs, minus the level before."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.read = interval, None
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self.read = lambda: pynvml.nvmlDeviceGetMemoryInfo(h).used
            self.how = "NVML"
        except Exception:
            if shutil.which("nvidia-smi"):
                idx = str(torch.cuda.current_device())

                def smi():
                    out = sh(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", idx], 5)
                    return int(out.splitlines()[0]) * 2**20

                self.read, self.interval, self.how = smi, 0.05, "nvidia-smi"
        if self.read is not None:
            try:
                self.read()
            except Exception:
                self.read = None

    def __enter__(self):
        self.peak = self.base = None
        if self.read is None:
            return self
        self.base = self.peak = self.read()
        self.stop = threading.Event()

        def loop():
            while not self.stop.is_set():
                try:
                    self.peak = max(self.peak, self.read())
                except Exception:
                    pass
                time.sleep(self.interval)

        self.t = threading.Thread(target=loop, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *exc):
        if self.read is not None:
            self.stop.set()
            self.t.join()

    @property
    def delta(self):
        return None if self.base is None else self.peak - self.base


class Binary:
    def __init__(self, path: Path):
        # a private copy: a concurrent build must not swap the binary mid-run
        d = Path(tempfile.mkdtemp(prefix="compare_gpu_bin."))
        atexit.register(shutil.rmtree, d, True)
        self.path = d / "deberta-embed"
        shutil.copy2(path, self.path)
        commit = path.resolve().parent / "commit.txt"
        self.info = {
            "path": str(path.resolve()),
            "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest()[:16],
            "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.path.stat().st_mtime)),
            "commit": commit.read_text().strip()[:12] if commit.is_file() else None,
        }
        self.dtype = "f16" if DEV.type == "cuda" else "f32"
        self.poller = MemPoller() if DEV.type == "cuda" else None

    def dev_args(self) -> list[str]:
        a = ["--device", ARGS.device, "--dtype", self.dtype]
        if DEV.type == "cpu":
            a += ["--threads", str(torch.get_num_threads())]
        return a

    def bench(self, b: int, l: int, iters: int, warmup: int) -> dict:
        cmd = [str(self.path), "bench", "--model", str(ARGS.model), *self.dev_args(), "--batch-size", str(b),
               "--seq-len", str(l), "--json", "--iters", str(iters), "--warmup", str(warmup)]
        # our own process allocates nothing meanwhile: the rise of device memory is the child's
        with (self.poller or _Null()) as mem:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        lines = [x for x in p.stdout.splitlines() if x.strip()]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"{shlex.join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()[-400:]}")
        j = json.loads(lines[-1])
        if "peak_device_bytes" in j:
            j["_peak_bytes"], j["_peak_how"] = j["peak_device_bytes"], "its own peak_device_bytes"
        elif mem is not None and getattr(mem, "delta", None) is not None:
            j["_peak_bytes"], j["_peak_how"] = mem.delta, f"process total incl. CUDA context ({self.poller.how})"
        return j

    def embed_check(self, ref_fn) -> dict:
        """`embed` on SENTENCES vs HF fp32 + mean pooling on the same tokenization."""
        with tempfile.TemporaryDirectory() as tmp:
            inp, out = Path(tmp) / "s.jsonl", Path(tmp) / "e.npy"
            inp.write_text("".join(json.dumps(s) + "\n" for s in SENTENCES), encoding="utf-8")
            cmd = [str(self.path), "embed", "--model", str(ARGS.model), *self.dev_args(), "--input", str(inp),
                   "--format", "npy", "--output", str(out), "--quiet"]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if p.returncode != 0:
                raise RuntimeError(f"{shlex.join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()[-400:]}")
            ours = np.load(out)
        ref = ref_fn(SENTENCES)
        if ours.shape != ref.shape:
            raise RuntimeError(f"embed gave shape {ours.shape}, HF {ref.shape}")
        return compare(ours, ref)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def fmt_tps(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def summarize(sr: dict, peers: list[str]) -> None:
    tokens = sr["tokens"]
    sr["median_ms"] = {rt: statistics.median(v) for rt, v in sr["rounds"].items() if v}
    ours = sr["rounds"].get("deberta-embed") or []
    per = []
    for i, o in enumerate(ours):
        best = [sr["rounds"][p][i] for p in peers if p in sr["rounds"] and len(sr["rounds"][p]) > i]
        if o and best:
            per.append(min(best) / o)
    sr["vs_best_peer"] = {"median": statistics.median(per), "min": min(per), "max": max(per)} if per else None
    meds = {p: sr["median_ms"][p] for p in peers if p in sr["median_ms"]}
    sr["best_peer"] = min(meds, key=meds.get) if meds else None
    sr["tokens_per_s"] = {rt: tokens / ms * 1e3 for rt, ms in sr["median_ms"].items()}


def render(res: dict) -> str:
    cols = res["columns"]
    label = res["labels"]
    L = []
    dev = res["device"]
    title = "GPU" if dev["type"] == "cuda" else "CPU debug run (--device cpu: NOT a GPU comparison)"
    L.append(f"## {title}: deberta-embed vs HF eager, DisentangledFlash, FlashDeBERTa\n")
    L.append(f"card: **{dev['name']}**" + (f", {dev['detail']}" if dev.get("detail") else ""))
    L.append("versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()))
    bi = res.get("binary")
    if bi:
        L.append(f"deberta-embed: {bi['path']} (commit {bi.get('commit') or '?'}, sha256 {bi['sha256']}, "
                 f"built {bi['mtime']}), `bench --dtype {bi['dtype']}`")
    L.append(f"checkpoint: {res['model']} (random weights, xsmall shape); workload: B x L random ids, mask all ones, "
             f"backbone + mean pooling, pooled embeddings to the host")
    L.append(f"command: `{res['command']}`\n")
    L.append("Median over rounds; B = 1: latency, else tokens/s (latency in parentheses). "
             "\"vs best peer\": tokens/s deberta-embed / tokens/s of the fastest peer, median of same-round ratios "
             "(range); > 1 = deberta-embed faster.\n")
    L.append("| B x L | " + " | ".join(label[c] for c in cols) + " | best peer | vs best peer |")
    L.append("|---" * (len(cols) + 3) + "|")
    for key, sr in res["shapes"].items():
        cells = []
        for c in cols:
            if c in sr.get("median_ms", {}):
                ms = sr["median_ms"][c]
                cells.append(f"{ms:.2f} ms" if sr["batch_size"] == 1 else f"{fmt_tps(sr['tokens_per_s'][c])} tok/s ({ms:.2f} ms)")
            else:
                cells.append(sr.get("status", {}).get(c, "—"))
        bp = sr.get("best_peer")
        r = sr.get("vs_best_peer")
        rs = f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" if r else "—"
        L.append(f"| {key} | " + " | ".join(cells) + f" | {label[bp] if bp else '—'} | {rs} |")
    if dev["type"] == "cuda":
        L.append("\nPeak device memory, MiB (Python runners: resident + transient of one call, torch allocator; "
                 "deberta-embed: see note):\n")
        L.append("| B x L | " + " | ".join(label[c] for c in cols) + " |")
        L.append("|---" * (len(cols) + 1) + "|")
        for key, sr in res["shapes"].items():
            cells = []
            for c in cols:
                v = sr.get("peak_bytes", {}).get(c)
                cells.append(f"{v / 2**20:,.0f}" if v is not None else "—")
            L.append(f"| {key} | " + " | ".join(cells) + " |")
        res_mib = ", ".join(f"{label[c]} {v / 2**20:,.0f}" for c, v in res.get("resident_bytes", {}).items())
        if res_mib:
            L.append(f"\nresident MiB (weights + caches, included above): {res_mib}")
    L.append("")
    for c, info in res.get("runner_info", {}).items():
        if info:
            L.append(f"- {label.get(c, c)}: {info}")
    for c in cols:  # the worst shape per runner
        chk = [(sr["checks"][c], key) for key, sr in res["shapes"].items() if c in sr.get("checks", {})]
        if chk:
            worst, at = min(chk, key=lambda x: x[0]["min_cosine"])
            L.append(f"- check {label[c]} vs HF fp32, pooled, {len(chk)} shape(s): min cosine {worst['min_cosine']:.6f} "
                     f"(at {at}), max |diff| {max(x[0]['max_abs_diff'] for x in chk):.2e}")
    for n in res["notes"]:
        L.append(f"- note: {n}")
    L.append(f"- elapsed: {res.get('elapsed_s', time.time() - T_START):.0f} s")
    return "\n".join(L) + "\n"


def write_out(res: dict) -> None:
    if ARGS.out:
        ARGS.out.parent.mkdir(parents=True, exist_ok=True)
        ARGS.out.write_text(render(res), encoding="utf-8")
    if ARGS.json_out:
        ARGS.json_out.write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")


def versions() -> dict:
    import transformers

    v = {"torch": torch.__version__, "CUDA (torch)": torch.version.cuda, "transformers": transformers.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("triton", "disentangled-flash", "flashdeberta"):
        try:
            v[name] = version(name)
        except PackageNotFoundError:
            v[name] = "not installed"
    v["python"] = platform.python_version()
    rev = git_revision(mark_dirty=False)
    if rev:
        v["repo HEAD"] = rev
    return v


def device_info() -> dict:
    if DEV.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        drv = sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"])
        return {"type": "cuda", "name": torch.cuda.get_device_name(0),
                "detail": f"{p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, "
                          f"sm_{p.major}{p.minor}" + (f", driver {drv}" if drv else "")}
    return {"type": "cpu", "name": cpu_model() or "CPU", "detail": f"{torch.get_num_threads()} threads"}


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()  # ends with a device-to-host copy, i.e. synchronized
        out.append((time.perf_counter() - t) * 1e3)
    return out


def iters_for(ms: float) -> int:
    return int(min(ARGS.max_iters, max(ARGS.min_iters, round(ARGS.budget_s * 1e3 / max(ms, 1e-3)))))


def past_deadline() -> bool:
    return ARGS.deadline_s > 0 and time.time() - T_START > ARGS.deadline_s


def run_shape(res, sr, key, ids, mask, ref, runners, binary, peers) -> None:
    """Warm-up, check, memory and calibration per runner, then the alternating rounds."""
    cuda = DEV.type == "cuda"
    b, l, tokens = sr["batch_size"], sr["seq_len"], sr["tokens"]
    ref.prepare(ids, mask)
    want = ref.run().numpy()
    active = []
    for name, r in runners.items():
        try:
            r.prepare(ids, mask)
            t = time.time()
            out = r.run()  # first call at this shape: Triton compiles here
            first = time.time() - t
            for _ in range(max(0, ARGS.warmup - 1)):
                r.run()
            c = compare(out.numpy(), want)
            sr["checks"][name] = c
            if not (c["finite"] and c["min_cosine"] >= COS_MIN):
                raise RuntimeError(f"pooled output vs HF fp32: min cosine {c['min_cosine']:.4f} < {COS_MIN} "
                                   f"(max |diff| {c['max_abs_diff']:.3g})")
            if cuda:
                sync()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                r.run()
                sync()
                sr["peak_bytes"][name] = r.resident + torch.cuda.max_memory_allocated() - base
            ms = statistics.median(timed(r.run, 3))
            sr["iters"][name] = iters_for(ms)
            sr["rounds"][name] = []
            active.append(name)
            log(f"warm-up : {res['labels'][name]:<34} first call {first:6.2f} s, {ms:8.2f} ms/iter -> "
                f"{sr['iters'][name]} iters; cosine vs HF fp32 {c['min_cosine']:.6f}")
        except Exception as e:
            sr["status"][name] = f"failed: {short(e)}"
            log(f"warm-up : {res['labels'][name]:<34} FAILED: {short(e, 2000)}")
            if cuda:
                torch.cuda.empty_cache()
    if binary is not None and "deberta-embed" not in sr["status"]:
        sr["iters"]["deberta-embed"] = max(sr["iters"].values(), default=ARGS.min_iters)
        sr["rounds"]["deberta-embed"] = []
        active.append("deberta-embed")

    for rnd in range(ARGS.rounds):
        if rnd > 0 and past_deadline():
            res["notes"].append(f"{key}: --deadline-s reached after {rnd} round(s)")
            break
        k = rnd % max(1, len(active))
        for name in active[k:] + active[:k]:
            n = sr["iters"][name]
            try:
                if name == "deberta-embed":
                    j = binary.bench(b, l, n, 3)
                    ms = float(j["median_ms"])
                    if j.get("_peak_bytes") is not None:
                        sr["peak_bytes"][name] = max(sr["peak_bytes"].get(name, 0), j["_peak_bytes"])
                        sr["peak_how"] = j["_peak_how"]
                else:
                    ms = statistics.median(timed(runners[name].run, n))
            except Exception as e:
                sr["status"][name] = f"failed: {short(e)}"
                log(f"round {rnd + 1}/{ARGS.rounds} {res['labels'][name]}: FAILED: {short(e, 2000)}")
                active.remove(name)
                sr["rounds"].pop(name, None)
                continue
            sr["rounds"][name].append(ms)
            log(f"round {rnd + 1}/{ARGS.rounds} {res['labels'][name]:<34} {ms:9.3f} ms  "
                f"({tokens / ms * 1e3:12,.0f} tok/s, {n} iters)")
    summarize(sr, peers)


def main() -> None:
    torch.set_grad_enabled(False)  # DisentangledFlash's forward insists; the timed calls run under inference_mode
    cuda = DEV.type == "cuda"
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    res = {"command": command, "model": str(ARGS.model), "device": device_info(), "notes": [], "shapes": {},
           "labels": {}, "runner_info": {}, "resident_bytes": {}, "columns": []}
    if WHEELS_ERROR:
        res["notes"].append(f"peer wheels not installed: {WHEELS_ERROR}")
    elif WHEELS:
        res["notes"].append(f"peer wheels from {ARGS.wheels}: {', '.join(WHEELS['wheels'])} (pip --target, temporary)")
    elif ARGS.wheels is None:
        res["notes"].append("no --wheels: peers are imported from the environment if present")
    res["versions"] = versions()
    log(f"command : {command}")
    log(f"device  : {res['device']['name']} ({res['device'].get('detail', '')})")
    log("versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()))
    for n in res["notes"]:
        log(f"note    : {n}")

    lengths = sorted({l for _, l in ARGS.shape_list})
    hf32 = load_hf(torch.float32)  # the reference (and the timed runner on the CPU)
    ref = TorchRunner("hf-fp32", "HF fp32", lambda _: hf32)

    # --- runners ----------------------------------------------------------------------------------
    peers, runners, status = [], {}, {}  # status: column -> "failed: ..." / "skipped: ..."

    def add(name, label, make):
        res["labels"][name] = label
        res["columns"].append(name)
        if name in ARGS.skip_set:
            status[name] = "skipped (--skip)"
            return
        t = time.time()
        try:
            r = make()
            runners[name] = r
            res["runner_info"][name] = r.info
            if cuda:
                res["resident_bytes"][name] = r.resident
            log(f"load    : {label:<34} ok ({time.time() - t:.1f} s){'; ' + r.info if r.info else ''}")
        except Exception as e:
            status[name] = f"failed: {short(e)}"
            log(f"load    : {label:<34} FAILED: {short(e, 2000)}")

    if cuda:
        add("hf-fp16", "HF eager fp16", lambda: TorchRunner("hf-fp16", "HF eager fp16", lambda _: load_hf(torch.float16)))
        add("hf-bf16", "HF eager bf16", lambda: TorchRunner("hf-bf16", "HF eager bf16", lambda _: load_hf(torch.bfloat16)))
        add("disentangled-flash", "DisentangledFlash fp16", lambda: DisentangledFlashRunner(lengths, torch.float16, "triton"))
        add("flashdeberta", "FlashDeBERTa fp16", lambda: FlashDebertaRunner(torch.float16, hf32))
        peers = ["hf-fp16", "hf-bf16", "disentangled-flash", "flashdeberta"]
    else:
        add("hf-fp32", "HF eager fp32 (CPU)", lambda: ref)
        add("disentangled-flash", "DisentangledFlash (torch backend, CPU glue check)",
            lambda: DisentangledFlashRunner(lengths, torch.float32, "torch"))
        res["labels"]["flashdeberta"] = "FlashDeBERTa"
        res["columns"].append("flashdeberta")
        try:
            fr = FlashDebertaRunner(torch.float32, hf32)
            status["flashdeberta"] = f"skipped: CUDA only (Triton kernels); model built OK ({fr.info})"
            del fr
        except Exception as e:
            status["flashdeberta"] = f"skipped: CUDA only; building it also failed: {short(e, 160)}"
        log(f"load    : {'FlashDeBERTa':<34} {status['flashdeberta']}")
        peers = ["hf-fp32", "disentangled-flash"]

    binary = None
    res["labels"]["deberta-embed"] = f"deberta-embed {'f16' if cuda else 'f32'}"
    res["columns"].append("deberta-embed")
    if "deberta-embed" in ARGS.skip_set:
        status["deberta-embed"] = "skipped (--skip)"
    elif ARGS.binary is None:
        status["deberta-embed"] = "skipped (no --binary)"
        log("load    : deberta-embed                      skipped (no --binary)")
    else:
        binary = Binary(ARGS.binary)
        res["binary"] = dict(binary.info, dtype=binary.dtype)
        tok = None
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(ARGS.model))

            def ref_fn(sents):
                enc = tok(sents, padding=True, return_tensors="pt").to(DEV)
                h = hf32(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                return mean_pool(h, enc["attention_mask"]).cpu().numpy()

            c = binary.embed_check(ref_fn)
            ok = c["finite"] and c["min_cosine"] >= COS_MIN
            msg = (f"deberta-embed embed ({binary.dtype}) vs HF fp32 on {len(SENTENCES)} sentences: min cosine "
                   f"{c['min_cosine']:.6f}, max |diff| {c['max_abs_diff']:.2e}")
            log(f"check   : {msg}" + ("" if ok else "  <-- MISMATCH"))
            res["notes"].append(msg + ("" if ok else " (MISMATCH: its timings are suspect)"))
        except Exception as e:
            res["notes"].append(f"deberta-embed embed check failed: {short(e)}")
            log(f"check   : deberta-embed embed check FAILED: {short(e, 2000)}")
        if cuda:
            try:  # a 1 x 2 run: CUDA context + weights + minimal workspace, for reading the memory column
                j = binary.bench(1, 2, 1, 0)
                if j.get("_peak_bytes") is not None:
                    res["notes"].append(f"deberta-embed at 1 x 2 peaks at {j['_peak_bytes'] / 2**20:,.0f} MiB "
                                        f"({j['_peak_how']}): its context + weights baseline")
            except Exception as e:
                res["notes"].append(f"deberta-embed 1 x 2 baseline failed: {short(e)}")
    vocab = int(hf32.config.vocab_size)

    # --- shapes -----------------------------------------------------------------------------------
    for si, (b, l) in enumerate(ARGS.shape_list):
        key = f"{b}x{l}"
        if past_deadline():
            left = ", ".join(f"{x}x{y}" for x, y in ARGS.shape_list[si:])
            res["notes"].append(f"--deadline-s {ARGS.deadline_s:.0f} reached: not run: {left}")
            log(f"\ndeadline reached; not run: {left}")
            break
        tokens = b * l
        sr = {"batch_size": b, "seq_len": l, "tokens": tokens, "iters": {}, "rounds": {}, "status": dict(status),
              "checks": {}, "peak_bytes": {}}
        res["shapes"][key] = sr
        log(f"\n== {key} ({tokens} tokens)")
        g = torch.Generator().manual_seed(ARGS.seed + si)
        ids = torch.randint(4, vocab, (b, l), generator=g)
        ids[:, 0], ids[:, -1] = 1, 2
        ids = ids.to(DEV)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            run_shape(res, sr, key, ids, mask, ref, runners, binary, peers)
        res["elapsed_s"] = time.time() - T_START
        write_out(res)  # after every shape: a killed run keeps what it finished

    if binary is not None and any("peak_how" in sr for sr in res["shapes"].values()):
        how = next(sr["peak_how"] for sr in res["shapes"].values() if "peak_how" in sr)
        res["notes"].append(f"deberta-embed memory column: {how}, over the device's level before it started; "
                            f"not comparable 1:1 with torch's allocator figures")
    elif binary is not None and cuda:
        res["notes"].append("deberta-embed memory column: no NVML / nvidia-smi reading")
    res["elapsed_s"] = time.time() - T_START
    text = render(res)
    log("\n" + text)
    write_out(res)
    if ARGS.out:
        log(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
