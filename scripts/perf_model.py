#!/usr/bin/env python3
"""The GPU performance model of BENCHMARKS.md ("GPU performance model"): for each kernel of
the f16 forward at each BENCHMARKS shape, the FLOPs it must do and the fewest bytes it must move
through device memory, and from those a predicted time on an H100 (SXM) and an H200.

These are predictions, not measurements. A kernel's floor is max(FLOPs / tensor-core peak,
bytes / HBM bandwidth), datasheet rates; a real kernel is slower. The second prediction uses
the rates the current kernels reached in the one measured run (H200, 2026-11-27) and that run's
cost per launch: it is shown next to that run's end-to-end times, the only test of the model
so far. The H100 numbers assume the SXM card (132 SMs, HBM3); a PCIe H100 (114 SMs, 2.0 TB/s)
is slower.

    python3 scripts/perf_model.py            # markdown tables on stdout
"""

import math

# deberta-v3-xsmall (scripts/make_xsmall_checkpoint.py)
H, LAYERS, HEADS, D, INTER = 384, 12, 6, 64, 1536
REL_ROWS = 2 * 256  # PK / PQ rows: 2 x position_buckets
SHAPES = [(1, 16), (1, 512), (256, 32), (64, 128), (16, 512), (1024, 32)]

# Datasheet rates. Dense fp16 / bf16 tensor-core peak (no sparsity) is 989 TFLOP/s on both
# H100 SXM5 and H200; HBM 3.35 TB/s (H100 SXM5, HBM3) and 4.8 TB/s (H200, HBM3e).
DEVICES = {"H100 SXM": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}

# The rates the kernels reached on the H200 (2026-11-27, f16, 16 x 512, DEBERTA_CUDA_PROFILE):
# the GEMMs took 11.2% and attention v1 87.4% of 31.41 ms (see BENCHMARKS.md).
MEASURED_MS_16x512 = 31.41
GEMM_FLOPS_16x512 = LAYERS * 2 * 16 * 512 * H * (3 * H + H + INTER + INTER)
ATT_FLOPS_16x512 = LAYERS * 8 * 16 * HEADS * 512 * 512 * D
RATE_GEMM = GEMM_FLOPS_16x512 / (0.112 * MEASURED_MS_16x512 * 1e-3)
RATE_ATT_V1 = ATT_FLOPS_16x512 / (0.874 * MEASURED_MS_16x512 * 1e-3)
# measured end to end, same run (bench --synthetic xsmall, f16): ms per forward
MEASURED_MS = {(1, 16): 0.999, (1, 512): 5.350, (256, 32): 8192 / 1.33e6 * 1e3,
               (64, 128): 8192 / 739e3 * 1e3, (16, 512): MEASURED_MS_16x512,
               (1024, 32): 32768 / 1.40e6 * 1e3}

# the measured 1 x 16 forward (eager launches, host work included) over its 86 launches
T_LAUNCH = MEASURED_MS[(1, 16)] * 1e-3 / 86

V2_TILE_FLOPS = 2 * 64 * D * (80 + 128 + 64 + 64)  # c2p (80 band rows), p2c (128), QK^T, PV
V2_TILE_L2 = (2 * 64 + 2 * 128) * D * 2  # K, V and the PK / PQ band staged per tile pair


def kernels(b, l):
    """(name, launches, useful FLOPs, HBM bytes, extra) for one forward, f16."""
    t = b * l
    rows = []

    def gemm(name, n, k, out_bytes, residual):
        flops = 2 * t * n * k
        byts = t * k * 2 + n * k * 2 + n * 4 + t * n * out_bytes + (t * n * 4 if residual else 0)
        tiles = math.ceil(t / 64) * 64 * math.ceil(n / 64) * 64 * math.ceil(k / 32) * 32
        rows.append((name, LAYERS, LAYERS * flops, LAYERS * byts,
                     f"64x64 tiles issue {2 * tiles / flops:.1f}x the FLOPs"))

    rows.append(("embed_gather_ln", 1, 0, t * H * 2 + t * H * 6, ""))
    gemm("gemm qkv (N 1152, K 384)", 3 * H, H, 2, False)
    nq = math.ceil(l / 64)
    att_flops = 8 * b * HEADS * l * l * D
    v2_flops = b * HEADS * nq * nq * V2_TILE_FLOPS
    att_bytes = t * 3 * H * 2 + t * H * 2 + 2 * REL_ROWS * H * 2
    l2 = b * HEADS * nq * nq * V2_TILE_L2
    rows.append(("attention", LAYERS, LAYERS * att_flops, LAYERS * att_bytes,
                 f"v2 issues {v2_flops / att_flops:.2f}x the FLOPs and re-reads "
                 f"{LAYERS * l2 / 1e6:.0f} MB through L2"))
    gemm("gemm out (N 384, K 384) + res", H, H, 4, True)
    rows.append(("layernorm (x2)", 2 * LAYERS, 0, 2 * LAYERS * t * H * (4 + 4 + 2), ""))
    gemm("gemm ffn up (N 1536, K 384) + gelu", INTER, H, 2, False)
    gemm("gemm ffn down (N 384, K 1536) + res", H, INTER, 4, True)
    rows.append(("pool (mean)", 1, 0, t * H * 4 + b * H * 4, ""))
    return rows


def floor_s(flops, byts, dev):
    peak, bw = DEVICES[dev]
    return max(flops / peak, byts / bw), ("compute" if flops / peak > byts / bw else "HBM")


def current_s(name, n, flops, byts, dev):
    """The current kernels at their measured rates, each launch at least T_LAUNCH."""
    if name.startswith("gemm"):
        t = flops / RATE_GEMM
    elif name == "attention":
        t = flops / RATE_ATT_V1
    else:  # memory-bound row kernels at the datasheet bandwidth (optimistic)
        t = byts / DEVICES[dev][1]
    return n * max(t / n, T_LAUNCH)


def fmt_t(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def main():
    print("Per kernel, summed over the 12 layers (f16; FLOPs are the useful ones, bytes the")
    print("fewest through HBM: each input read once, each output written once):\n")
    print("| B x L | kernel | launches | GFLOP | MB | floor H100 SXM | floor H200 | bound "
          "(H100 / H200) | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    totals = {}
    for b, l in SHAPES:
        tot = [0, 0, 0, 0.0, 0.0, 0.0, 0.0]  # launches, flops, bytes, floors, current
        for name, n, flops, byts, note in kernels(b, l):
            f1, b1 = floor_s(flops, byts, "H100 SXM")
            f2, b2 = floor_s(flops, byts, "H200")
            tot[0] += n
            tot[1] += flops
            tot[2] += byts
            tot[3] += f1
            tot[4] += f2
            tot[5] += current_s(name, n, flops, byts, "H100 SXM")
            tot[6] += current_s(name, n, flops, byts, "H200")
            bound = b1 if b1 == b2 else f"{b1} / {b2}"
            print(f"| {b} x {l} | {name} | {n} | {flops / 1e9:.2f} | {byts / 1e6:.1f} | "
                  f"{fmt_t(f1)} | {fmt_t(f2)} | {bound} | {note} |")
        totals[(b, l)] = tot
    print("\nPer forward. Floors: the sum of the kernels' floors, one launch after another, no")
    print("launch cost. Current kernels: GEMMs and attention v1 at the rates they reached on the")
    print(f"H200, the row kernels at datasheet bandwidth, and no launch shorter than "
          f"{T_LAUNCH * 1e6:.1f} us (the measured 1 x 16 forward over its 86 launches):\n")
    print("| B x L | tokens | launches | GFLOP | MB through HBM | floor H100 SXM | floor H200 | "
          "current kernels, predicted H100 SXM | current kernels, predicted H200 | "
          "measured 2026-11-27 H200 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (b, l), tot in totals.items():
        print(f"| {b} x {l} | {b * l} | {tot[0]} | {tot[1] / 1e9:.1f} | {tot[2] / 1e6:.0f} | "
              f"{fmt_t(tot[3])} | {fmt_t(tot[4])} | {fmt_t(tot[5])} | {fmt_t(tot[6])} | "
              f"{fmt_t(MEASURED_MS[(b, l)] * 1e-3)} |")
    print(f"\nRates of the current kernels, from the 16 x 512 profile of that run: GEMMs "
          f"{RATE_GEMM / 1e12:.0f} TFLOP/s, attention v1 {RATE_ATT_V1 / 1e12:.1f} TFLOP/s.")


if __name__ == "__main__":
    main()
