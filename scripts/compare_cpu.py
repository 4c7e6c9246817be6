#!/usr/bin/env python3
"""Time PyTorch, ONNX Runtime and `deberta-embed bench` on the same checkpoint, shapes and threads.

    venv/bin/pip install -r scripts/requirements-compare.txt
    venv/bin/python scripts/make_xsmall_checkpoint.py /tmp/xsmall
    cargo build --release
    venv/bin/python scripts/compare_cpu.py --model /tmp/xsmall --threads 2 \
        [--shapes 1x16,32x128,256x32] [--rounds 3] [--bin target/release/deberta-embed] [--json-out FILE]

Workload (the one `deberta-embed bench` times): B sequences of exactly L tokens, [CLS]=1, random
ids, [SEP]=2, attention mask all ones; forward of the backbone + mean pooling, fp32, CPU.

  PyTorch        transformers AutoModel, eval, torch.inference_mode, torch.set_num_threads(T),
                 OMP/MKL_NUM_THREADS=T, backbone + mean pooling as sentence-transformers does it.
  ONNX Runtime   the backbone exported with torch.onnx.export(dynamo=True) (dynamic batch and
                 sequence axes; the legacy TorchScript exporter gives wrong outputs for DeBERTa-v2
                 on current transformers), CPU EP, intra_op T, inter_op 1, ORT_ENABLE_ALL,
                 sequential; mean pooling in numpy, inside the timed region. The .onnx is cached
                 next to the model dir (<DIR>.backbone.onnx) and re-exported only when it is
                 missing or older than the checkpoint.
  deberta-embed  `BIN bench --model DIR --batch-size B --seq-len L --threads T --json --iters N
                 --warmup 2` as a subprocess; its own median is used (model loading and warm-up
                 are outside its timed region).

Correctness before timing:
  * `BIN embed` vs sentence-transformers' encode on a few sentences (max |diff|, cosine);
  * per shape, ORT's pooled output vs PyTorch's on the benchmark inputs; if cosine < 0.9999 the
    ORT column is dropped with a message (its timings would be meaningless).

Timing: per shape, each runtime is calibrated once (iterations per measurement chosen to take
about --budget-s seconds, at least --min-iters); then for each of --rounds rounds the three
runtimes are measured one after the other in a rotating order, each measurement being the
median over its iterations. Reported: per runtime the median over rounds; ratios (tokens/s ours
/ theirs) are the median of the per-round ratios, i.e. of measurements taken seconds apart.
The 2-core machine is shared: the load average before and after is printed and recorded.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNTIMES = ("pytorch", "ort", "deberta-embed")
LABEL = {"pytorch": "PyTorch", "ort": "ONNX Runtime", "deberta-embed": "deberta-embed"}
COS_MIN = 0.9999
COS_MIN_BF16 = 0.999  # the bf16 weight path's contract (issue 3)
SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "Someone is playing a guitar on the street while people walk by.",
    "x",
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=False, help="model dir (sentence-transformers or transformers layout)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="1x16,32x128,256x32", help="comma-separated BxL")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release" / "deberta-embed")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--budget-s", type=float, default=1.0, help="target seconds per measurement (default 1.0)")
    ap.add_argument("--min-iters", type=int, default=3, help="iterations per measurement, at least (default 3)")
    ap.add_argument("--max-iters", type=int, default=200, help="iterations per measurement, at most (default 200)")
    ap.add_argument("--onnx", type=Path, help="cached export path (default: <model dir>.backbone.onnx)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"],
                    help="deberta-embed's --dtype (bf16: opt-in bf16 weights, bf16 dot products where "
                         "the CPU has avx512_bf16; the peers stay fp32)")
    ap.add_argument("--skip", default="", help="comma-separated runtimes to leave out: pytorch,ort,deberta-embed")
    ap.add_argument("--quiet-threshold", type=float, default=0.10,
                    help="a measurement is 'quiet' when other processes took at most this share of the CPUs (default 0.10)")
    ap.add_argument("--report", type=Path, help="re-print the tables of a saved --json-out file and exit")
    # internal: export the backbone in a clean child process
    ap.add_argument("--_export", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._export is None and a.report is None and a.model is None:
        ap.error("--model is required")
    return a


ARGS = parse_args()
# Thread pools must be pinned before torch / numpy are imported.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import warnings

warnings.filterwarnings("ignore")

import numpy as np
import torch


class Backbone(torch.nn.Module):
    """input_ids, attention_mask -> last_hidden_state (what gets exported / timed)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def load_backbone(model_dir: Path) -> Backbone:
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    for n, p in m.named_parameters():
        assert p.dtype == torch.float32, (n, p.dtype)
    return Backbone(m).eval()


def export_onnx(model_dir: Path, out: Path) -> None:
    """Runs in a child process (torch.export leaves global state behind; keep the timed process clean)."""
    torch.set_num_threads(ARGS.threads)
    w = load_backbone(model_dir)
    # batch 2 / seq 17 so that neither axis gets specialized to 1
    ids = torch.randint(4, 640, (2, 17))
    mask = torch.ones_like(ids)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=512)
    tmp = out.with_name(out.name + ".tmp")
    torch.onnx.export(
        w,
        (ids, mask),
        str(tmp),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        external_data=False,
    )
    tmp.replace(out)


if ARGS._export is not None:
    export_onnx(Path(ARGS._export[0]), Path(ARGS._export[1]))
    sys.exit(0)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def log(*a):
    print(*a, flush=True)


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus_visible": os.cpu_count()}
    for line in sh(["lscpu"]).splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "L2 cache", "L3 cache"):
            info[k] = v
        if k == "Flags":
            info["avx512f"] = "avx512f" in v.split()
            info["avx512_bf16"] = "avx512_bf16" in v.split()
            info["amx_tile"] = "amx_tile" in v.split()
    try:
        info["mem_total_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def versions() -> dict:
    import transformers

    v = {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
    for mod in ("onnxruntime", "onnx", "onnxscript", "sentence_transformers"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    rev = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if rev:
        dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
        v["deberta-embed (repo HEAD)"] = rev + ("+dirty" if dirty else "")
    return v


def make_ids(b: int, l: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 640, size=(b, l), dtype=np.int64)
    ids[:, 0] = 1
    ids[:, -1] = 2
    return ids


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(cos.min()), "ref_max_abs": float(np.abs(b).max())}


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


class CpuShare:
    """Share of the machine's CPU time that went to OTHER processes during a window (0 = quiet).

    (busy jiffies of all CPUs from /proc/stat - CPU time of this process and its waited-for
    children) / (wall time x CPUs); hypervisor steal counts as busy.
    """

    def __enter__(self):
        self.t, self.busy, self.own = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        other = (self._busy() - self.busy) - (self._own() - self.own)
        self.other = max(0.0, other / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0

    @staticmethod
    def _busy() -> float:
        try:
            f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        except OSError:
            return 0.0
        user, nice, system, _idle, _iowait, irq, softirq, steal = (f + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def iters_for(ms: float) -> int:
    return int(min(ARGS.max_iters, max(ARGS.min_iters, round(ARGS.budget_s * 1e3 / max(ms, 1e-3)))))


# ------------------------------------------------------------------------------------------------
# runtimes
# ------------------------------------------------------------------------------------------------


class TorchRunner:
    def __init__(self, model_dir: Path):
        self.w = load_backbone(model_dir)

    def prepare(self, ids: np.ndarray):
        self.ids = torch.from_numpy(ids)
        self.mask = torch.ones_like(self.ids)

    def run(self) -> torch.Tensor:
        with torch.inference_mode():
            h = self.w(self.ids, self.mask)
            m = self.mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers' mean pooling


class OrtRunner:
    def __init__(self, onnx_path: Path, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

    def prepare(self, ids: np.ndarray):
        self.feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def run(self) -> np.ndarray:
        h = self.sess.run(["last_hidden_state"], self.feed)[0]
        m = self.feed["attention_mask"][:, :, None].astype(h.dtype)
        return (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def rust_bench(b: int, l: int, iters: int, warmup: int) -> dict:
    cmd = [
        str(ARGS.bin), "bench", "--model", str(ARGS.model), "--batch-size", str(b), "--seq-len", str(l),
        "--threads", str(ARGS.threads), "--json", "--iters", str(iters), "--warmup", str(warmup),
        "--dtype", ARGS.dtype,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in p.stdout.splitlines() if x.strip()]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def ensure_onnx(model_dir: Path) -> Path:
    out = ARGS.onnx or model_dir.parent / (model_dir.name + ".backbone.onnx")
    weights = [f for f in (model_dir / "model.safetensors", model_dir / "pytorch_model.bin") if f.exists()]
    stale = out.exists() and weights and out.stat().st_mtime < max(f.stat().st_mtime for f in weights)
    if out.exists() and not stale:
        log(f"ONNX: using cached export {out}")
        return out
    log(f"ONNX: exporting the backbone with torch.onnx.export(dynamo=True) -> {out} (about a minute)")
    t = time.time()
    p = subprocess.run(
        [sys.executable, __file__, "--threads", str(ARGS.threads), "--_export", str(model_dir), str(out)],
        capture_output=True, text=True,
    )
    if p.returncode != 0 or not out.exists():
        raise RuntimeError(f"ONNX export failed (exit {p.returncode}):\n{(p.stderr or p.stdout)[-3000:]}")
    log(f"ONNX: exported in {time.time() - t:.0f} s ({out.stat().st_size / 1e6:.0f} MB)")
    return out


def check_embed_vs_st(model_dir: Path) -> dict:
    """`deberta-embed embed` vs sentence-transformers' encode on a few sentences."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": torch.float32})
    ref = st.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))
    del st
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "sentences.jsonl"
        inp.write_text("".join(json.dumps(s) + "\n" for s in SENTENCES), encoding="utf-8")
        cmd = [str(ARGS.bin), "embed", "--model", str(model_dir), "--input", str(inp), "--threads", str(ARGS.threads),
               "--dtype", ARGS.dtype]
        p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
    ours = np.array([json.loads(x) for x in p.stdout.splitlines() if x.strip()], dtype=np.float32)
    if ours.shape != ref.shape:
        raise RuntimeError(f"deberta-embed embed gave shape {ours.shape}, sentence-transformers {ref.shape}")
    return compare(ours, ref)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def main() -> None:
    if ARGS.report:
        result = json.loads(ARGS.report.read_text(encoding="utf-8"))
        for sr in result["shapes"].values():
            summarize(sr)
        print_table(result)
        return
    ARGS.model = model_dir = ARGS.model.resolve()
    shapes = []
    for s in ARGS.shapes.split(","):
        b, _, l = s.strip().lower().partition("x")
        shapes.append((int(b), int(l)))
    skip = {s.strip() for s in ARGS.skip.split(",") if s.strip()}
    if skip - set(RUNTIMES):
        sys.exit(f"--skip: unknown runtime(s) {sorted(skip - set(RUNTIMES))}")
    active = [r for r in RUNTIMES if r not in skip]
    if "deberta-embed" in active:
        if not ARGS.bin.exists():
            sys.exit(f"{ARGS.bin} not found (cargo build --release, or pass --bin)")
        # Run a private copy: a concurrent `cargo build` must not swap the binary mid-run.
        snap_dir = Path(tempfile.mkdtemp(prefix="compare_cpu_bin."))
        atexit.register(shutil.rmtree, snap_dir, True)
        snap = snap_dir / "deberta-embed"
        shutil.copy2(ARGS.bin, snap)
        bin_info = {"path": str(ARGS.bin.resolve()), "sha256": hashlib.sha256(snap.read_bytes()).hexdigest()[:16],
                    "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.stat().st_mtime))}
        ARGS.bin = snap

    torch.set_num_threads(ARGS.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    command = shlex.join([sys.executable, *sys.argv])
    result = {
        "command": command,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ARGS).items() if k != "_export"},
        "machine": machine_info(),
        "versions": versions(),
        "threads": ARGS.threads,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
        "deberta_embed_binary": bin_info if "deberta-embed" in active else None,
        "shapes": {},
        "notes": [],
    }
    m = result["machine"]
    log(f"command : {command}")
    log(f"machine : {m.get('Model name', '?')}, {m.get('CPU(s)', m['cpus_visible'])} CPUs visible, "
        f"{ARGS.threads} threads used (torch {torch.get_num_threads()}), load avg {result['loadavg_start'][0]:.2f}")
    log("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    if result["deberta_embed_binary"]:
        bi = result["deberta_embed_binary"]
        log(f"binary  : {bi['path']} (built {bi['mtime']}, sha256 {bi['sha256']}), run from a private copy")
    if result["loadavg_start"][0] > 0.5:
        log(f"WARNING : load average {result['loadavg_start'][0]:.2f} at start: other processes share the CPUs "
            f"(PyTorch's OpenMP barriers suffer most from that; compare ratios, not absolute numbers)")

    # --- correctness: deberta-embed vs sentence-transformers ----------------------------------
    if "deberta-embed" in active:
        try:
            c = check_embed_vs_st(model_dir)
            result["check_embed_vs_sentence_transformers"] = c
            ok = c["min_cosine"] >= (COS_MIN if ARGS.dtype == "f32" else COS_MIN_BF16)
            log(f"check   : deberta-embed embed vs sentence-transformers on {len(SENTENCES)} sentences: "
                f"max |diff| {c['max_abs_diff']:.2e}, min cosine {c['min_cosine']:.7f}" + ("" if ok else "  <-- MISMATCH"))
        except Exception as e:  # keep timing the others
            result["check_embed_vs_sentence_transformers"] = {"error": str(e)}
            log(f"check   : deberta-embed embed vs sentence-transformers FAILED: {e}")

    runners = {}
    if "pytorch" in active or "ort" in active:
        runners["pytorch"] = TorchRunner(model_dir)  # also the reference for the ORT check
    if "ort" in active:
        try:
            runners["ort"] = OrtRunner(ensure_onnx(model_dir), ARGS.threads)
        except Exception as e:
            msg = f"ORT column dropped: {e}"
            log(msg)
            result["notes"].append(msg)
            active.remove("ort")

    t_start = time.time()
    for b, l in shapes:
        key = f"{b}x{l}"
        tokens = b * l
        ids = make_ids(b, l, ARGS.seed)
        sr = {"batch_size": b, "seq_len": l, "tokens": tokens, "iters": {}, "rounds": {r: [] for r in active},
              "loadavg": {r: [] for r in active}, "cpu_to_others": {r: [] for r in active}}
        result["shapes"][key] = sr
        log(f"\n== {key} ({tokens} tokens)")

        # --- calibration (+ warm-up, + ORT vs PyTorch check) ------------------------------------
        pooled = {}
        for rt in list(active):
            if rt == "deberta-embed":
                try:
                    j = rust_bench(b, l, 1, 1)
                    sr["iters"][rt] = iters_for(j["median_ms"])
                    log(f"calibrate {rt:13s}: {j['median_ms']:9.2f} ms/iter -> {sr['iters'][rt]} iters per measurement")
                except Exception as e:
                    log(f"deberta-embed column dropped for {key}: {e}")
                    result["notes"].append(f"{key}: deberta-embed failed: {e}")
                    sr["rounds"].pop(rt, None)
                continue
            r = runners[rt]
            r.prepare(ids)
            out = r.run()  # warm-up (allocations, ORT's first-run graph work)
            pooled[rt] = out.numpy() if isinstance(out, torch.Tensor) else out
            ms = min(timed(r.run, 1 if rt == "pytorch" and tokens >= 2048 else 2))
            sr["iters"][rt] = iters_for(ms)
            log(f"calibrate {rt:13s}: {ms:9.2f} ms/iter -> {sr['iters'][rt]} iters per measurement")
        if "ort" in pooled and "pytorch" in pooled:
            c = compare(pooled["ort"], pooled["pytorch"])
            sr["check_ort_vs_pytorch"] = c
            log(f"check   : ORT vs PyTorch pooled output: max |diff| {c['max_abs_diff']:.2e}, min cosine {c['min_cosine']:.7f}")
            if not c["min_cosine"] >= COS_MIN:
                msg = (f"ORT column ABORTED: its pooled output disagrees with PyTorch's at {key} "
                       f"(min cosine {c['min_cosine']:.6f} < {COS_MIN}, max |diff| {c['max_abs_diff']:.3g}); "
                       f"a wrong export? delete the cached .onnx and rerun")
                log(msg)
                result["notes"].append(msg)
                active.remove("ort")
                sr["rounds"].pop("ort", None)
        present = [rt for rt in active if rt in sr["rounds"]]

        # --- alternating rounds ------------------------------------------------------------------
        for rnd in range(ARGS.rounds):
            order = present[rnd % len(present):] + present[: rnd % len(present)]
            for rt in order:
                n = sr["iters"][rt]
                with CpuShare() as share:
                    if rt == "deberta-embed":
                        try:
                            ms = rust_bench(b, l, n, 2)["median_ms"]
                        except Exception as e:
                            log(f"round {rnd + 1} {rt}: {e}")
                            ms = None
                    else:
                        ms = statistics.median(timed(runners[rt].run, n))
                sr["rounds"][rt].append(ms)
                sr["cpu_to_others"][rt].append(share.other)
                if ms is None:
                    continue
                load = os.getloadavg()[0]
                sr["loadavg"][rt].append(load)
                log(f"round {rnd + 1}/{ARGS.rounds} {rt:13s}: {ms:9.2f} ms  ({tokens / ms * 1e3:8.0f} tok/s, "
                    f"{n} iters, load avg {load:.2f}, CPU to other processes {share.other:4.0%})")

        summarize(sr)

    result["elapsed_s"] = time.time() - t_start
    result["loadavg_end"] = os.getloadavg()
    print_table(result)
    if ARGS.json_out:
        ARGS.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log(f"\nwrote {ARGS.json_out}")


def summarize(sr: dict) -> None:
    """Medians over rounds and same-round ratios; also over the quiet rounds only."""
    tokens = sr["tokens"]
    shares = sr.get("cpu_to_others", {})
    q = ARGS.quiet_threshold

    def quiet(rt, i):
        v = shares.get(rt)
        return v is not None and i < len(v) and v[i] is not None and v[i] <= q

    for tag, keep in (("", lambda rt, i: True), ("quiet_", quiet)):
        if tag and not shares:
            continue
        med, tps, ratio = {}, {}, {}
        for rt, v in sr["rounds"].items():
            v = [x for i, x in enumerate(v) if x is not None and keep(rt, i)]
            if v:
                med[rt] = statistics.median(v)
                tps[rt] = tokens / med[rt] * 1e3
        ours = sr["rounds"].get("deberta-embed")
        for other in ("ort", "pytorch"):
            theirs = sr["rounds"].get(other)
            if ours and theirs:
                # tokens/s ours / theirs = ms theirs / ms ours, per round
                per = [t / o for i, (o, t) in enumerate(zip(ours, theirs))
                       if o and t and keep("deberta-embed", i) and keep(other, i)]
                if per:
                    ratio[f"vs_{other}"] = {"median": statistics.median(per), "per_round": per}
        sr[tag + "median_ms"], sr[tag + "tokens_per_s"], sr[tag + "ratio"] = med, tps, ratio


def print_table(result: dict) -> None:
    def cell(sr, rt, tag=""):
        if rt not in sr.get(tag + "median_ms", {}):
            return "—"
        return f"{sr[tag + 'median_ms'][rt]:.2f} ms, {sr[tag + 'tokens_per_s'][rt]:,.0f} tok/s"

    def ratio(sr, k, tag=""):
        r = sr.get(tag + "ratio", {}).get(k)
        if not r:
            return "—"
        k = len(r["per_round"])
        n = f", {k} round{'s' if k != 1 else ''}" if tag else ""
        return f"{r['median']:.2f}x ({min(r['per_round']):.2f}-{max(r['per_round']):.2f}{n})"

    m, v = result["machine"], result["versions"]
    dt = result["args"].get("dtype", "f32")
    what = "fp32" if dt == "f32" else (
        "peers fp32, deberta-embed --dtype bf16 (bf16 weights; "
        + ("bf16 dot products, avx512_bf16" if m.get("avx512_bf16") else "widened to fp32, no avx512_bf16")
        + ")")
    log(f"\n## CPU comparison ({what}, backbone + mean pooling; medians over rounds)\n")
    log(f"machine: {m.get('Model name', '?')}, {m.get('CPU(s)', m['cpus_visible'])} CPUs, "
        f"threads used: {result['threads']} (all three runtimes); "
        f"load avg start {result['loadavg_start'][0]:.2f}, end {result['loadavg_end'][0]:.2f}")
    bi = result.get("deberta_embed_binary") or {}
    log(f"versions: torch {v['torch']}, onnxruntime {v.get('onnxruntime')}, transformers {v['transformers']}, "
        f"deberta-embed {v.get('deberta-embed (repo HEAD)', '?')} (binary built {bi.get('mtime', '?')}, "
        f"sha256 {bi.get('sha256', '?')})")
    log(f"command: {result['command']}\n")
    log("| B x L | PyTorch | ONNX Runtime | deberta-embed | ours / ORT (tok/s) | ours / PyTorch (tok/s) |")
    log("|---|---|---|---|---|---|")
    for key, sr in result["shapes"].items():
        log(f"| {key} | {cell(sr, 'pytorch')} | {cell(sr, 'ort')} | {cell(sr, 'deberta-embed')} | "
            f"{ratio(sr, 'vs_ort')} | {ratio(sr, 'vs_pytorch')} |")
    log("\nratios: median of same-round ratios (range over rounds in parentheses); > 1 means deberta-embed is faster")
    shares = [x for sr in result["shapes"].values() for v in sr.get("cpu_to_others", {}).values() for x in v if x is not None]
    if shares:
        log(f"CPU time taken by other processes during the measurements: mean {statistics.mean(shares):.0%}, "
            f"max {max(shares):.0%} of the machine")
    if shares and max(shares) > ARGS.quiet_threshold:
        log(f"\nquiet measurements only (other processes took <= {ARGS.quiet_threshold:.0%} of the CPUs; "
            f"ratios over rounds where both sides were quiet):\n")
        log("| B x L | PyTorch | ONNX Runtime | deberta-embed | ours / ORT (tok/s) | ours / PyTorch (tok/s) |")
        log("|---|---|---|---|---|---|")
        for key, sr in result["shapes"].items():
            log(f"| {key} | {cell(sr, 'pytorch', 'quiet_')} | {cell(sr, 'ort', 'quiet_')} | "
                f"{cell(sr, 'deberta-embed', 'quiet_')} | {ratio(sr, 'vs_ort', 'quiet_')} | "
                f"{ratio(sr, 'vs_pytorch', 'quiet_')} |")
        log("")
    c = result.get("check_embed_vs_sentence_transformers")
    if c:
        if "error" in c:
            log(f"check deberta-embed vs sentence-transformers: FAILED ({c['error']})")
        else:
            log(f"check deberta-embed vs sentence-transformers: max |diff| {c['max_abs_diff']:.2e}, min cosine {c['min_cosine']:.7f}")
    for key, sr in result["shapes"].items():
        c = sr.get("check_ort_vs_pytorch")
        if c:
            log(f"check ORT vs PyTorch at {key}: max |diff| {c['max_abs_diff']:.2e}, min cosine {c['min_cosine']:.7f}")
    if max(result["loadavg_start"][0], result["loadavg_end"][0]) > 0.5:
        log(f"WARNING: the machine was busy (load avg {result['loadavg_start'][0]:.2f} -> {result['loadavg_end'][0]:.2f}; "
            f"per-measurement values in the JSON / log): absolute numbers are pessimistic, PyTorch's most of all")
    for n in result["notes"]:
        log(f"note: {n}")
    log(f"elapsed (timing part): {result['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
