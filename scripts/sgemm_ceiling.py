#!/usr/bin/env python3
"""What the Python stack's BLAS reaches on this machine: torch.mm and numpy (OpenBLAS) at 2048^3,
and torch's Linear at the headline GEMM shape 4096 x 384 x 1536, fp32, medians of 15-20 calls.

    OMP_NUM_THREADS=2 /tmp/venv/bin/python scripts/sgemm_ceiling.py [--threads 2]

Issue 3 states the GEMM target against "the machine's sgemm ceiling (OpenBLAS / torch at
2048^3)"; scripts/fma_peak.c gives the hardware's FMA peak next to it.
"""

import argparse
import time

import numpy as np
import torch


def median_gflops(fn, flops, reps):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return flops / times[len(times) // 2] / 1e9, flops / times[0] / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    med, best = median_gflops(lambda: torch.mm(a, b), 2 * n**3, 15)
    print(f"torch.mm {n}^3: median {med:.1f} GFLOP/s, best {best:.1f}")
    an, bn = a.numpy(), b.numpy()
    med, best = median_gflops(lambda: an @ bn, 2 * n**3, 15)
    print(f"numpy (OpenBLAS) {n}^3: median {med:.1f} GFLOP/s, best {best:.1f}")
    m, k, nn = 4096, 384, 1536
    x, w, bias = torch.randn(m, k), torch.randn(nn, k), torch.randn(nn)
    med, best = median_gflops(lambda: torch.nn.functional.linear(x, w, bias), 2 * m * k * nn, 20)
    print(f"torch Linear {m} x {k} x {nn}: median {med:.1f} GFLOP/s, best {best:.1f}")


if __name__ == "__main__":
    main()
