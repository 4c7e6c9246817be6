//! The AMX-BF16 GEMM: `out[m, n] = epilogue(x[m, k] . W[n, k]^T)` on the tile unit of Intel
//! Xeons from Sapphire Rapids on (`tdpbf16ps`), for weights packed by
//! [`PackedWeight::with_bf16_tiles`](super::PackedWeight::with_bf16_tiles).
//!
//! # Layout
//!
//! * **Tiles.** `tdpbf16ps C, A, B` adds to the 16 x 16 fp32 tile C the products of A (16 rows
//!   x 32 bf16 of k) and B (16 pairs of k x 16 columns, each entry the two bf16 of a pair in
//!   one 32-bit word): 8,192 multiply-adds per instruction. The micro-kernel keeps a 32 x 32
//!   block of `out` in four C tiles (tmm0-3) and, per 32 values of k, loads two A tiles (rows
//!   0-15 and 16-31: tmm4-5) and two B tiles (columns 0-15 and 16-31: tmm6-7): four loads for
//!   four products, the most reuse eight tile registers allow.
//! * **W** keeps the bf16-pair panels of the `avx512_bf16` kernel (panel `q`: 32 words per pair
//!   of k, word `c` = `W[32q + c, 2pp]` | `W[32q + c, 2pp + 1] << 16`), with the pairs padded
//!   with zeros to a multiple of 16 and 64-byte aligned, so a B tile is 16 rows of 64 bytes at
//!   a stride of 128 bytes and never reads past the panel.
//! * **x** is rounded to bf16 (nearest even) once per call, its rows padded with zeros to the
//!   same multiple of 32 values and its row count to a multiple of 32, into blocks of 32 rows
//!   laid out step by step: for each 32 values of k, the 32 rows' 64 bytes back to back (2 KB,
//!   the two A tiles of that step), so a block is read as one sequential stream. The rounding
//!   is split among the threads before the products start.
//! * **Work split**: tiles are (block of rows, group of W panels); each walks its panels, and
//!   for each panel its 32-row blocks, the whole of k at once (the panel stays in L1/L2 while
//!   the row blocks stream past it).
//! * **Epilogue**: each block is stored to one of two 4 KB scratch blocks; its epilogue runs
//!   there after the next block's products were issued, and writes the rows past m and columns
//!   past n nowhere, the rest to `out` with ordinary stores (the tile unit works behind the
//!   core: reading a block back right after `tilestored` waits for it, and so did reading
//!   `out` back when the tiles were stored there).
//!
//! # Permission
//!
//! Linux hands out the 8 KB of tile state per thread only to a process that asked for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`amx_available`] asks once, and
//! reports false, so that bf16 runs on the other kernels, where the CPU lacks AMX-BF16, the
//! kernel refuses, or [`AMX_ENV`] turns it off.

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::{padded_pairs, run_jobs, Epilogue, Line, SharedPtr, SimdLevel, NR};

/// Environment variable: `0`/`off`/`false` keeps bf16 weights off the AMX kernel (they then run
/// on the `avx512_bf16` or widening kernels). Read once.
pub const AMX_ENV: &str = "DEBERTA_GEMM_AMX";

/// Rows (and columns) of `out` one micro-kernel call computes: 2 x 2 tiles of 16 x 16.
pub(super) const BLOCK: usize = 32;

/// `ARCH_REQ_XCOMP_PERM` and the AMX tile-data state component (Linux `asm/prctl.h`, x86).
const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
const XFEATURE_XTILEDATA: libc::c_long = 18;

/// Whether the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22). Says nothing
/// about the operating system's permission: see [`amx_available`].
pub fn amx_bf16_detected() -> bool {
    // (CPUID leaf 7 exists on every x86-64 CPU that has AVX-512, checked first)
    SimdLevel::Avx512.is_available() && {
        let leaf7 = __cpuid_count(7, 0);
        leaf7.edx & (1 << 24) != 0 && leaf7.edx & (1 << 22) != 0
    }
}

/// Whether bf16 tile weights can run here: the CPU has AMX-BF16, `avx512_bf16` (x is rounded
/// with `vcvtne2ps2bf16`), the kernel granted this process the tile data state, and
/// [`AMX_ENV`] does not turn it off. Decided once per process (the request is made then).
pub fn amx_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let off = std::env::var(AMX_ENV).is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "0" | "off" | "false" | "no"
            )
        });
        !off && amx_bf16_detected() && super::bf16_dot_detected() && request_tile_permission()
    })
}

/// Ask Linux for the tile data state (once per process; later threads inherit it).
fn request_tile_permission() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes which XSAVE components the
        // process may use; it reads no memory of ours. A kernel without AMX support answers
        // an error, which is reported as "not available".
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The 64-byte tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
pub(super) struct TileConfig(pub(super) [u8; 64]);

impl TileConfig {
    pub(super) const fn all_16x64() -> TileConfig {
        let mut b = [0u8; 64];
        b[0] = 1; // palette
        let mut t = 0;
        while t < 8 {
            b[16 + 2 * t] = 64; // bytes per row (little-endian u16)
            b[48 + t] = 16; // rows
            t += 1;
        }
        TileConfig(b)
    }
}

static CONFIG: TileConfig = TileConfig::all_16x64();

thread_local! {
    /// x rounded to bf16 (`m` padded to 32 rows of `kp` values, in blocks of 32 rows in step
    /// order; lines, so every step is 64-byte aligned),
    /// owned by the thread that calls `linear`.
    static X_BF16: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// `out = epilogue(x . W^T)` with `w` the bf16 tile panels of an `[n, k]` weight
/// (`padded_pairs(k)` rows of 32 words per panel, see the module docs).
///
/// # Panics
/// If [`amx_available`] is false, or slice lengths disagree with the shapes (checked by the
/// caller, `linear_with`).
#[allow(clippy::too_many_arguments)]
pub(super) fn linear(
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    w: &[u32],
    ep: Epilogue<'_>,
    out: &mut [f32],
    threads: usize,
) {
    assert!(
        amx_available(),
        "the AMX kernel needs AMX-BF16 and the tile permission"
    );
    let k2p = padded_pairs(k);
    let kp = 2 * k2p;
    let panels = n.div_ceil(NR);
    assert!(
        w.len() >= panels * k2p * NR,
        "tile panels shorter than the weight"
    );
    assert!(x.len() >= m * k && out.len() >= m * n);
    let m_pad = m.div_ceil(BLOCK) * BLOCK;
    // Row blocks per tile: as many as the threads leave (each W panel is read once per tile
    // and then reused from L1 by every block of the tile, so more blocks mean fewer panel
    // reads from L2), at most 8 (256 rows); the column split below restores balance.
    let blocks = m_pad / BLOCK;
    let per_tile = blocks.div_ceil(threads.max(1)).clamp(1, 8);
    let m_tiles = blocks.div_ceil(per_tile);
    // Too few row tiles for the threads: split the panels too.
    let n_groups = (2 * threads).div_ceil(m_tiles).clamp(1, panels);
    let group = panels.div_ceil(n_groups);
    let n_groups = panels.div_ceil(group);

    X_BF16.with(|cell| {
        let mut private = Vec::new();
        let mut borrowed = cell.try_borrow_mut();
        let buf: &mut Vec<Line> = match borrowed {
            Ok(ref mut b) => b,
            Err(_) => &mut private,
        };
        // kp bf16 = kp / 32 lines per row; every line is written by the rounding units.
        let row_lines = kp / 32;
        if buf.len() < m_pad * row_lines {
            buf.resize(m_pad * row_lines, Line([0.0; 16]));
        }
        let xb = SharedPtr(buf.as_mut_ptr().cast::<f32>());
        let out_ptr = SharedPtr(out.as_mut_ptr());
        // Rounding units of 32 rows (the padded rows are zeroed).
        // Rounding units of 32 rows (the padded rows are zeroed), each written in the tile
        // order of its block (see the module docs).
        let round = |u: usize| {
            let words = k.div_ceil(2);
            let mut row = vec![0.0f32; kp / 2];
            // SAFETY: block u (`32 * kp / 2` words from `u * 32 * kp / 2`) is inside the
            // buffer's `m_pad * kp / 2` words; each unit writes only its own block, and no
            // tile reads the buffer before every unit has finished (`run_jobs` barrier).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(xb.get().add(u * BLOCK * kp / 2), BLOCK * kp / 2)
            };
            for r in 0..BLOCK {
                let i = u * BLOCK + r;
                if i < m {
                    // SAFETY: `amx_available` implies AVX-512F and AVX512_BF16.
                    unsafe {
                        super::x86::round_to_bf16_pairs(&x[i * k..(i + 1) * k], &mut row[..words])
                    };
                    row[words..].fill(0.0);
                } else {
                    row.fill(0.0);
                }
                // step s of row r: 16 words at (s * 32 + r) * 16
                for (st, chunk) in row.chunks_exact(16).enumerate() {
                    dst[(st * BLOCK + r) * 16..][..16].copy_from_slice(chunk);
                }
            }
        };
        let tile = |t: usize, _next: Option<usize>| {
            let (mt, ng) = (t / n_groups, t % n_groups);
            let b0 = mt * per_tile;
            let b1 = (b0 + per_tile).min(blocks);
            let q0 = ng * group;
            let q1 = (q0 + group).min(panels);
            // SAFETY: AMX is available (asserted above) and the permission was granted; the
            // configuration is the one every asm block below assumes.
            unsafe {
                asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly))
            };
            // Every block is stored to one of two L1-resident scratch blocks, and its epilogue
            // runs (writing the result to out) after the next block's products: values just
            // written by `tilestored` are not forwarded to ordinary loads, so reading them back
            // at once stalls.
            let mut scratch = [[0.0f32; BLOCK * BLOCK]; 2];
            let mut pending: Option<Pending> = None;
            let finish = |p: Pending, scratch: &mut [[f32; BLOCK * BLOCK]; 2]| {
                // SAFETY: AVX-512F and FMA (AMX implies them); the scratch block holds this
                // block's products (stored by an earlier `block` call on this thread); the
                // block at (p.i0, p.j0) is inside out (p.rows x p.cols in range) and owned by
                // this tile.
                unsafe {
                    super::x86::epilogue_from_scratch_avx512(
                        ep,
                        scratch[p.scratch].as_mut_ptr(),
                        BLOCK,
                        out_ptr.get().add(p.i0 * n + p.j0),
                        p.rows,
                        p.cols,
                        p.i0,
                        p.j0,
                        n,
                    )
                }
            };
            for q in q0..q1 {
                let j0 = q * NR;
                let cols = NR.min(n - j0);
                let b_panel = &w[q * k2p * NR..(q + 1) * k2p * NR];
                for b in b0..b1 {
                    let i0 = b * BLOCK;
                    let rows = BLOCK.min(m - i0);
                    // SAFETY: block b of the rounded buffer (32 * kp values from i0 * kp) exists
                    // (m_pad rows, written before the tiles started, read-only now).
                    let a = unsafe { xb.get().add(i0 * kp / 2).cast::<u16>().cast_const() };
                    // the scratch block the pending block (if any) is not using
                    let s = pending.as_ref().map_or(0, |p| 1 - p.scratch);
                    // the last row block of a panel requests the next panel of this tile
                    let next =
                        (b + 1 == b1 && q + 1 < q1).then(|| w[(q + 1) * k2p * NR..].as_ptr());
                    // SAFETY: a and b_panel hold 32 rows of 2 * k2p values and k2p pair rows (see
                    // `block`'s contract); the scratch block is 32 x 32 and no pending block
                    // still needs it; `next` is only prefetched.
                    unsafe {
                        block(
                            a,
                            b_panel.as_ptr(),
                            k2p,
                            scratch[s].as_mut_ptr(),
                            BLOCK,
                            next,
                        )
                    };
                    let this = Pending {
                        i0,
                        j0,
                        rows,
                        cols,
                        scratch: s,
                    };
                    if let Some(p) = pending.replace(this) {
                        finish(p, &mut scratch);
                    }
                }
            }
            if let Some(p) = pending {
                finish(p, &mut scratch);
            }
            // SAFETY: releases this thread's tile state (no tile is live past this point).
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        };
        run_jobs(threads, blocks, &round, m_tiles * n_groups, &tile);
    });
}

/// A stored block whose epilogue has not run yet.
struct Pending {
    i0: usize,
    j0: usize,
    rows: usize,
    cols: usize,
    /// which scratch block holds its products
    scratch: usize,
}

/// One 32 x 32 block: `c[r, j] = sum_p a[r, p] * B[p, j]` over `2 * k2p` values of k, with `a`
/// a block of x in step order (2 KB per 32 values of k) and `b` a tile panel of `k2p` pair rows
/// (128 bytes each);
/// with `prefetch`, the panel there (the next one this thread multiplies) is requested into L2
/// step by step meanwhile: with few rows the products wait on the weights, which the hardware
/// prefetchers do not fetch ahead for tile loads.
///
/// # Safety
/// The tile configuration [`CONFIG`] is loaded on this thread (AMX available and permitted);
/// `a .. a + 64 * k2p` bf16 readable; `b .. b + k2p * 32` words readable; `k2p` a positive
/// multiple of 16; the 32 rows of 32 floats at `c` (row stride `ldc` floats)
/// writable and not accessed otherwise meanwhile.
#[inline]
unsafe fn block(
    a: *const u16,
    b: *const u32,
    k2p: usize,
    c: *mut f32,
    ldc: usize,
    prefetch: Option<*const u32>,
) {
    let steps = k2p / 16;
    // bytes per row of an A tile (rows of one step are contiguous), per row of c
    let (sa, sc) = (64usize, ldc * 4);
    macro_rules! kernel {
        ($($prefetch:literal,)*) => {
            // SAFETY: caller contract. Per step: A tiles read rows 0-15 and 16-31 (64 bytes
            // each at the step's k offset), B tiles 16 pair rows (columns 0-15 at +0, 16-31 at
            // +64 in each 128-byte row); the pointers advance by 64 bytes (A) and 2048 bytes
            // (B) per step, `steps` times, staying inside the buffers; the stores write the
            // four 16 x 16 quarters of the 32 x 32 block at c. A prefetch never faults.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "2:",
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b} + {sb}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    $($prefetch,)*
                    "add {pf}, 2048",
                    "add {a0}, 2048",
                    "add {a1}, 2048",
                    "add {b}, 2048",
                    "dec {steps}",
                    "jnz 2b",
                    "tilestored [{c0} + {sc}*1], tmm0",
                    "tilestored [{c0} + {sc}*1 + 64], tmm1",
                    "tilestored [{c1} + {sc}*1], tmm2",
                    "tilestored [{c1} + {sc}*1 + 64], tmm3",
                    a0 = inout(reg) a => _,
                    a1 = inout(reg) a.wrapping_add(16 * 32) => _,
                    b = inout(reg) b => _,
                    pf = inout(reg) prefetch.unwrap_or(b) => _,
                    steps = inout(reg) steps => _,
                    sa = in(reg) sa,
                    sb = in(reg) 128usize,
                    c0 = in(reg) c,
                    c1 = in(reg) c.wrapping_add(16 * ldc),
                    sc = in(reg) sc,
                    options(nostack),
                );
            }
        };
    }
    match prefetch {
        // the same 2 KB of the next panel as this step reads of this one: 32 lines into L2
        Some(_) => kernel!(
            "prefetcht1 [{pf} + 0]",
            "prefetcht1 [{pf} + 64]",
            "prefetcht1 [{pf} + 128]",
            "prefetcht1 [{pf} + 192]",
            "prefetcht1 [{pf} + 256]",
            "prefetcht1 [{pf} + 320]",
            "prefetcht1 [{pf} + 384]",
            "prefetcht1 [{pf} + 448]",
            "prefetcht1 [{pf} + 512]",
            "prefetcht1 [{pf} + 576]",
            "prefetcht1 [{pf} + 640]",
            "prefetcht1 [{pf} + 704]",
            "prefetcht1 [{pf} + 768]",
            "prefetcht1 [{pf} + 832]",
            "prefetcht1 [{pf} + 896]",
            "prefetcht1 [{pf} + 960]",
            "prefetcht1 [{pf} + 1024]",
            "prefetcht1 [{pf} + 1088]",
            "prefetcht1 [{pf} + 1152]",
            "prefetcht1 [{pf} + 1216]",
            "prefetcht1 [{pf} + 1280]",
            "prefetcht1 [{pf} + 1344]",
            "prefetcht1 [{pf} + 1408]",
            "prefetcht1 [{pf} + 1472]",
            "prefetcht1 [{pf} + 1536]",
            "prefetcht1 [{pf} + 1600]",
            "prefetcht1 [{pf} + 1664]",
            "prefetcht1 [{pf} + 1728]",
            "prefetcht1 [{pf} + 1792]",
            "prefetcht1 [{pf} + 1856]",
            "prefetcht1 [{pf} + 1920]",
            "prefetcht1 [{pf} + 1984]",
        ),
        None => kernel!(),
    }
}
