"""Helpers shared by the comparison scripts (compare_cpu.py, compare_rerank.py, compare_gpu.py):
logging, the machine and repository a run is labelled with, the timing loop, the share of the
CPUs other processes took, ONNX export and the ONNX Runtime runner (`InferenceSession`) every CPU
comparison uses.

Standard library only at import time: the scripts pin thread-pool environment variables before
they import torch or numpy, so torch and onnxruntime are imported inside the functions that
need them.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def log(*a):
    print(*a, flush=True)


def sh(cmd: list[str], timeout: float = 30) -> str:
    """stdout of `cmd`, stripped; "" when it cannot run or fails to finish in time."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except Exception:
        return ""


def machine_info() -> dict:
    """Platform, CPU (lscpu's model name, core counts, caches, the ISA flags the kernels use)
    and memory of this machine."""
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


def cpu_model() -> str:
    """lscpu's model name (what benchmark runs are labelled with)."""
    return machine_info().get("Model name") or platform.processor()


def git_revision(mark_dirty: bool = True) -> str:
    """The repository's short HEAD, with "+dirty" when tracked files are modified (and
    `mark_dirty`); "" outside a checkout."""
    rev = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if rev and mark_dirty and sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]):
        rev += "+dirty"
    return rev


def timed(fn, n: int) -> list[float]:
    """Milliseconds of each of `n` calls of `fn`."""
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


def export_onnx(module, out: Path, output_name: str) -> None:
    """Export `module(input_ids, attention_mask)` with torch.onnx.export(dynamo=True), batch and
    sequence axes dynamic (sequence up to 512), to `out` (written as out.tmp, then renamed, so a
    failed export leaves no file). Run it in a child process: torch.export leaves global state
    behind, which the timed process should not carry."""
    import torch

    # batch 2 / seq 17 so that neither axis gets specialized to 1
    ids = torch.randint(4, 640, (2, 17))
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=512)
    tmp = out.with_name(out.name + ".tmp")
    torch.onnx.export(
        module,
        (ids, torch.ones_like(ids)),
        str(tmp),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=[output_name],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        external_data=False,
    )
    tmp.replace(out)


def ort_session(onnx_path: Path, threads: int):
    """ONNX Runtime on the CPU as the comparisons run it: `threads` intra-op threads, one
    inter-op thread, every graph optimization, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
