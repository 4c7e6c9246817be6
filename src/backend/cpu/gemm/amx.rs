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

use super::int8::{padded_quads, Corrections, Int8Kernel, RowQuant};
use super::{padded_pairs, run_jobs, Epilogue, Line, SharedPtr, SimdLevel, NR};

/// Environment variable: `0`/`off`/`false` keeps weights off the tile unit (bf16 then runs on
/// the `avx512_bf16` or widening kernels, int8 on AVX512-VNNI). Read once.
pub const AMX_ENV: &str = "DEBERTA_GEMM_AMX";

/// Rows (and columns) of `out` one micro-kernel call computes: 2 x 2 tiles of 16 x 16.
pub(super) const BLOCK: usize = 32;

/// `ARCH_REQ_XCOMP_PERM` and the AMX tile-data state component (Linux `asm/prctl.h`, x86).
const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
const XFEATURE_XTILEDATA: libc::c_long = 18;

/// Whether the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22). Says nothing
/// about the operating system's permission: see [`amx_available`].
pub fn amx_bf16_detected() -> bool {
    amx_detected(22)
}

/// Whether the CPU has AMX-TILE (CPUID leaf 7, EDX bit 24) and the AMX extension in EDX bit
/// `bit` (22: AMX-BF16, 25: AMX-INT8), with AVX-512 (CPUID leaf 7 exists on every x86-64 CPU
/// that has AVX-512, checked first).
fn amx_detected(bit: u32) -> bool {
    SimdLevel::Avx512.is_available() && {
        let leaf7 = __cpuid_count(7, 0);
        leaf7.edx & (1 << 24) != 0 && leaf7.edx & (1 << bit) != 0
    }
}

/// Whether bf16 tile weights can run here: the CPU has AMX-BF16, `avx512_bf16` (x is rounded
/// with `vcvtne2ps2bf16`), the kernel granted this process the tile data state, and
/// [`AMX_ENV`] does not turn it off. Decided once per process (the request is made then).
pub fn amx_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        !amx_off() && amx_bf16_detected() && super::bf16_dot_detected() && request_tile_permission()
    })
}

/// Whether int8 tile weights can run on the tile unit here: the CPU has AMX-TILE and AMX-INT8
/// (CPUID leaf 7, EDX bit 25), the kernel granted the tile data state, and [`AMX_ENV`] does
/// not turn it off. Decided once per process.
pub fn amx_int8_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| !amx_off() && amx_detected(25) && request_tile_permission())
}

/// Whether [`AMX_ENV`] turns the tile kernels off.
fn amx_off() -> bool {
    std::env::var(AMX_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        )
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

/// The weight operand of a tile product, in the panel layouts of `PackedWeight`.
#[derive(Clone, Copy)]
pub(super) enum TilePanels<'a> {
    /// bf16 pair panels (`with_bf16_tiles`: `padded_pairs(k)` rows of 32 words per panel),
    /// multiplied on AMX-BF16 (`tdpbf16ps`) with x rounded to bf16.
    Bf16(&'a [u32]),
    /// int8 quad panels (`with_int8`: `padded_quads(k)` rows of 32 words per panel) with the
    /// per-feature scales and sums (`n` padded to the panels), multiplied by `kernel`
    /// (AMX-INT8 `tdpbusd`, AVX512-VNNI or AVX-VNNI) with x quantized per row (see `int8.rs`).
    Int8 {
        words: &'a [u32],
        scale: &'a [f32],
        colsum: &'a [i32],
        kernel: Int8Kernel,
    },
}

impl TilePanels<'_> {
    /// Steps of k (one A tile of 64 bytes per row, one B tile of 16 rows) for `k` values.
    fn steps(&self, k: usize) -> usize {
        match self {
            TilePanels::Bf16(_) => padded_pairs(k) / 16,
            TilePanels::Int8 { .. } => padded_quads(k) / 16,
        }
    }

    fn words(&self) -> &[u32] {
        match self {
            TilePanels::Bf16(w) | TilePanels::Int8 { words: w, .. } => w,
        }
    }

    /// Whether the tile unit runs the products (else the AVX512-VNNI kernel does).
    fn on_tiles(&self) -> bool {
        match self {
            TilePanels::Bf16(_) => true,
            TilePanels::Int8 { kernel, .. } => *kernel == Int8Kernel::Amx,
        }
    }
}

/// Bytes of one step of a block (32 rows of 64 bytes) and of a panel (16 rows of 128 bytes).
const STEP_BYTES: usize = 2048;

thread_local! {
    /// x prepared for the tiles (`m` padded to 32 rows, in blocks of 32 rows in step order,
    /// 2 KB per step; lines, so every step is 64-byte aligned) and, for int8, each row's scale
    /// and zero point; owned by the thread that calls `linear`.
    static X_TILES: RefCell<(Vec<Line>, Vec<RowQuant>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `out = epilogue(x . W^T)` with `w` the tile panels of an `[n, k]` weight (see the module
/// docs and [`TilePanels`]); for int8, `fix` adds per-sequence corrections before the
/// epilogue (see `int8.rs`).
///
/// # Panics
/// If the kernel `w` asks for is not available (AMX-BF16 / AMX-INT8 with the tile permission,
/// or AVX512-VNNI), or slice lengths disagree with the shapes (checked by the caller,
/// `linear_with`).
#[allow(clippy::too_many_arguments)]
pub(super) fn linear(
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    w: TilePanels<'_>,
    ep: Epilogue<'_>,
    out: &mut [f32],
    threads: usize,
    fix: Option<Corrections<'_>>,
) {
    match w {
        TilePanels::Bf16(_) => assert!(
            amx_available(),
            "the AMX kernel needs AMX-BF16 and the tile permission"
        ),
        TilePanels::Int8 {
            kernel: Int8Kernel::Amx,
            ..
        } => assert!(
            amx_int8_available(),
            "the AMX int8 kernel needs AMX-INT8 and the tile permission"
        ),
        TilePanels::Int8 {
            kernel: Int8Kernel::Vnni512,
            ..
        } => assert!(
            super::int8::vnni_detected(),
            "the VNNI int8 kernel needs AVX-512F and AVX512-VNNI"
        ),
        TilePanels::Int8 {
            kernel: Int8Kernel::Vnni256,
            ..
        } => assert!(
            super::int8::avx_vnni_detected(),
            "the AVX-VNNI int8 kernel needs AVX2 and AVX-VNNI"
        ),
    }
    let steps = w.steps(k);
    let panels = n.div_ceil(NR);
    let panel_words = steps * STEP_BYTES / 4;
    assert!(
        w.words().len() >= panels * panel_words,
        "tile panels shorter than the weight"
    );
    if let TilePanels::Int8 { scale, colsum, .. } = w {
        assert!(scale.len() >= panels * NR && colsum.len() >= panels * NR);
    }
    assert!(x.len() >= m * k && out.len() >= m * n);
    if let Some(f) = fix {
        assert!(f.seq_of_row.len() >= m && f.n == n);
        let seqs = f.values.len() / n.max(1);
        assert!(f.seq_of_row[..m].iter().all(|&s| (s as usize) < seqs));
    }
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
    let block_bytes = steps * STEP_BYTES;

    X_TILES.with(|cell| {
        let mut private = (Vec::new(), Vec::new());
        let mut borrowed = cell.try_borrow_mut();
        let (buf, quant) = match borrowed {
            Ok(ref mut b) => {
                let (buf, quant) = &mut **b;
                (buf, quant)
            }
            Err(_) => (&mut private.0, &mut private.1),
        };
        // every line and every row's quantization is written by the preparation units
        if buf.len() < blocks * block_bytes / 64 {
            buf.resize(blocks * block_bytes / 64, Line([0.0; 16]));
        }
        if matches!(w, TilePanels::Int8 { .. }) && quant.len() < m_pad {
            quant.resize(m_pad, RowQuant::default());
        }
        let xb = SharedPtr(buf.as_mut_ptr().cast::<f32>());
        let qp = SharedPtr(quant.as_mut_ptr().cast::<f32>());
        let out_ptr = SharedPtr(out.as_mut_ptr());
        // Preparation units of 32 rows (the padded rows are zeroed), each written in the tile
        // order of its block (see the module docs).
        let prepare = |u: usize| {
            let rows = BLOCK.min(m - u * BLOCK);
            let xs = &x[u * BLOCK * k..][..rows * k];
            match w {
                TilePanels::Bf16(_) => {
                    // SAFETY: block u (`block_bytes / 4` words from `u * block_bytes / 4`) is
                    // inside the buffer of `blocks * block_bytes` bytes, which is lines of
                    // floats; each unit writes only its own block, and no tile reads the
                    // buffer before every unit has finished (`run_jobs` barrier).
                    let words = unsafe {
                        std::slice::from_raw_parts_mut(
                            xb.get().add(u * block_bytes / 4),
                            block_bytes / 4,
                        )
                    };
                    round_block_bf16(xs, rows, k, words)
                }
                TilePanels::Int8 { .. } => {
                    // SAFETY: block u (`block_bytes` from `u * block_bytes`) is inside the buffer of
                    // `blocks * block_bytes` bytes, and so are its 32 quantization slots; each unit
                    // writes only its own block, and no tile reads the buffer before every unit has
                    // finished (`run_jobs` barrier).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            xb.get().cast::<u8>().add(u * block_bytes),
                            block_bytes,
                        )
                    };
                    // SAFETY: as above (slots u * 32 .. u * 32 + 32 < m_pad).
                    let q = unsafe {
                        std::slice::from_raw_parts_mut(
                            qp.get().cast::<RowQuant>().add(u * BLOCK),
                            BLOCK,
                        )
                    };
                    super::int8::quantize_block(xs, rows, k, dst, q);
                }
            }
        };
        // (every kernel runs at the AVX-512 level but AVX-VNNI's, at AVX2)
        let avx512 = !matches!(
            w,
            TilePanels::Int8 {
                kernel: Int8Kernel::Vnni256,
                ..
            }
        );
        let tile = |t: usize, _next: Option<usize>| {
            let (mt, ng) = (t / n_groups, t % n_groups);
            let b0 = mt * per_tile;
            let b1 = (b0 + per_tile).min(blocks);
            let q0 = ng * group;
            let q1 = (q0 + group).min(panels);
            if w.on_tiles() {
                // SAFETY: AMX is available (asserted above) and the permission was granted;
                // the configuration is the one every asm block below assumes.
                unsafe {
                    asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly))
                };
            }
            // Every block is stored to one of two L1-resident scratch blocks, and its epilogue
            // runs (writing the result to out) after the next block's products: values just
            // written by `tilestored` are not forwarded to ordinary loads, so reading them back
            // at once stalls.
            let mut scratch = [[0.0f32; BLOCK * BLOCK]; 2];
            let mut pending: Option<Pending> = None;
            let finish = |p: Pending, scratch: &mut [[f32; BLOCK * BLOCK]; 2]| {
                let s = scratch[p.scratch].as_mut_ptr();
                if let TilePanels::Int8 { scale, colsum, .. } = w {
                    // SAFETY: the quantization slots of rows i0 .. i0 + rows were written by
                    // the preparation units (finished before any tile ran) and are only read
                    // now; the scratch block holds this block's sums; AVX-512F is available
                    // unless the kernel is AVX-VNNI, and AVX2 with every kernel.
                    unsafe {
                        let q = std::slice::from_raw_parts(
                            qp.get().cast::<RowQuant>().add(p.i0).cast_const(),
                            p.rows,
                        );
                        let args = (
                            &scale[p.j0..p.j0 + p.cols],
                            &colsum[p.j0..p.j0 + p.cols],
                            (p.i0, p.j0),
                        );
                        if avx512 {
                            super::int8::dequantize_block_avx512(
                                s, BLOCK, p.rows, q, args.0, args.1, fix, args.2,
                            )
                        } else {
                            super::int8::dequantize_block_avx2(
                                s, BLOCK, p.rows, q, args.0, args.1, fix, args.2,
                            )
                        }
                    }
                }
                let dst = out_ptr.get().wrapping_add(p.i0 * n + p.j0);
                // SAFETY: AVX-512F and FMA (every kernel but AVX-VNNI implies them), else AVX2
                // and FMA (the AVX2 level that kernel runs at); the scratch block holds this
                // block's products (stored by an earlier `block` call on this thread); the
                // block at (p.i0, p.j0) is inside out (p.rows x p.cols in range) and owned by
                // this tile.
                unsafe {
                    if avx512 {
                        super::x86::epilogue_from_scratch_avx512(
                            ep, s, BLOCK, dst, p.rows, p.cols, p.i0, p.j0, n,
                        )
                    } else {
                        super::x86::epilogue_from_scratch_avx2(
                            ep, s, BLOCK, dst, p.rows, p.cols, p.i0, p.j0, n,
                        )
                    }
                }
            };
            let words = w.words();
            for q in q0..q1 {
                let j0 = q * NR;
                let cols = NR.min(n - j0);
                let b_panel = &words[q * panel_words..(q + 1) * panel_words];
                for b in b0..b1 {
                    let i0 = b * BLOCK;
                    let rows = BLOCK.min(m - i0);
                    // SAFETY: block b of the prepared buffer (`block_bytes` from
                    // `b * block_bytes`) exists (written before the tiles started, read-only
                    // now).
                    let a = unsafe { xb.get().cast::<u8>().add(b * block_bytes).cast_const() };
                    // the scratch block the pending block (if any) is not using
                    let s = pending.as_ref().map_or(0, |p| 1 - p.scratch);
                    // the last row block of a panel requests the next panel of this tile
                    let next = (b + 1 == b1 && q + 1 < q1)
                        .then(|| words[(q + 1) * panel_words..].as_ptr());
                    let c = scratch[s].as_mut_ptr();
                    // SAFETY: a and b_panel hold `steps` steps of the block and of the panel
                    // (see the kernels' contracts); the scratch block is 32 x 32 and no
                    // pending block still needs it; `next` is only prefetched; the tile
                    // configuration is loaded when the products run on tiles.
                    unsafe {
                        match w {
                            TilePanels::Bf16(_) => {
                                block_bf16(a, b_panel.as_ptr(), steps, c, BLOCK, next)
                            }
                            TilePanels::Int8 { kernel, .. } => match kernel {
                                Int8Kernel::Amx => {
                                    block_int8(a, b_panel.as_ptr(), steps, c, BLOCK, next)
                                }
                                Int8Kernel::Vnni512 => {
                                    super::int8::vnni_block(a, b_panel.as_ptr(), steps, c, rows)
                                }
                                Int8Kernel::Vnni256 => {
                                    super::int8::vnni256_block(a, b_panel.as_ptr(), steps, c, rows)
                                }
                            },
                        }
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
            if w.on_tiles() {
                // SAFETY: releases this thread's tile state (no tile is live past this point).
                unsafe { asm!("tilerelease", options(nostack, nomem)) };
            }
        };
        run_jobs(threads, blocks, &prepare, m_tiles * n_groups, &tile);
    });
}

/// Round the rows of `x` (`[rows, k]`) to bf16 into a 32-row block of the tile layout: step
/// `st` (32 values of k) of row `r` is the 64 bytes at `(st * 32 + r) * 64`; values past k,
/// and rows past `rows`, are zero.
fn round_block_bf16(x: &[f32], rows: usize, k: usize, dst: &mut [f32]) {
    let kp = 2 * padded_pairs(k);
    let words = k.div_ceil(2);
    let mut row = vec![0.0f32; kp / 2];
    for r in 0..BLOCK {
        if r < rows {
            // SAFETY: `amx_available` (asserted by `linear`) implies AVX-512F and AVX512_BF16.
            unsafe { super::x86::round_to_bf16_pairs(&x[r * k..(r + 1) * k], &mut row[..words]) };
            row[words..].fill(0.0);
        } else {
            row.fill(0.0);
        }
        // step st of row r: 16 words (64 bytes) at (st * 32 + r) * 16 words
        for (st, chunk) in row.chunks_exact(16).enumerate() {
            dst[(st * BLOCK + r) * 16..][..16].copy_from_slice(chunk);
        }
    }
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

/// One 32 x 32 block of products on the tile unit: `c[r, j] = sum_p a[r, p] * B[p, j]` over
/// `steps` steps of k, with `a` a block of prepared x in step order (2 KB per step: 32 rows of
/// 64 bytes) and `b` a tile panel of `16 * steps` rows of 128 bytes; with `prefetch`, the panel
/// there (the next one this thread multiplies) is requested into L2 step by step meanwhile:
/// with few rows the products wait on the weights, which the hardware prefetchers do not fetch
/// ahead for tile loads. The tile instruction is: `tdpbf16ps` (bf16 pairs, f32 sums) or
/// `tdpbusd` (`INT8`: unsigned x bytes times signed W bytes, i32 sums stored as their bits).
///
/// # Safety
/// The tile configuration [`CONFIG`] is loaded on this thread (AMX with the instruction's
/// extension available and permitted); `a .. a + 2048 * steps` bytes readable; `b .. b +
/// 512 * steps` words readable; `steps` positive; the 32 rows of 32 values at `c` (row stride
/// `ldc` values) writable and not accessed otherwise meanwhile.
#[inline]
unsafe fn tile_block<const INT8: bool>(
    a: *const u8,
    b: *const u32,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    prefetch: Option<*const u32>,
) {
    // bytes per row of an A tile (rows of one step are contiguous), per row of c
    let (sa, sc) = (64usize, ldc * 4);
    macro_rules! kernel {
        ($dot:literal, $($prefetch:literal,)*) => {
            // SAFETY: caller contract. Per step: A tiles read rows 0-15 and 16-31 (64 bytes
            // each at the step's k offset), B tiles 16 rows (columns 0-15 at +0, 16-31 at +64
            // in each 128-byte row); the pointers advance by 64 bytes (A) and 2048 bytes (B)
            // per step, `steps` times, staying inside the buffers; the stores write the four
            // 16 x 16 quarters of the 32 x 32 block at c. A prefetch never faults.
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
                    concat!($dot, " tmm0, tmm4, tmm6"),
                    concat!($dot, " tmm1, tmm4, tmm7"),
                    concat!($dot, " tmm2, tmm5, tmm6"),
                    concat!($dot, " tmm3, tmm5, tmm7"),
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
                    a1 = inout(reg) a.wrapping_add(16 * 64) => _,
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
    // (with a prefetch: the same 2 KB of the next panel as this step reads of this one, 32
    // lines into L2)
    macro_rules! prefetching {
        ($dot:literal) => {
            kernel!(
                $dot,
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
            )
        };
    }
    match (INT8, prefetch.is_some()) {
        (false, true) => prefetching!("tdpbf16ps"),
        (false, false) => kernel!("tdpbf16ps",),
        (true, true) => prefetching!("tdpbusd"),
        (true, false) => kernel!("tdpbusd",),
    }
}

/// [`tile_block`] with `tdpbf16ps`.
///
/// # Safety
/// As [`tile_block`], with AMX-BF16.
#[inline]
unsafe fn block_bf16(
    a: *const u8,
    b: *const u32,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    prefetch: Option<*const u32>,
) {
    // SAFETY: forwarded contract.
    unsafe { tile_block::<false>(a, b, steps, c, ldc, prefetch) }
}

/// [`tile_block`] with `tdpbusd`.
///
/// # Safety
/// As [`tile_block`], with AMX-INT8.
#[inline]
unsafe fn block_int8(
    a: *const u8,
    b: *const u32,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    prefetch: Option<*const u32>,
) {
    // SAFETY: forwarded contract.
    unsafe { tile_block::<true>(a, b, steps, c, ldc, prefetch) }
}

/// Words of one step of a 32-row A block (32 rows of 64 bytes) or of a B panel (16 rows of 32
/// words): the unit the tile products walk.
pub(crate) const STEP_WORDS: usize = STEP_BYTES / 4;

/// The tile unit configured on the calling thread for bf16 products on layouts other than the
/// GEMM's own (the attention's): created by [`TileSession::start`], which loads the tile
/// configuration; dropping it releases the thread's tile state. Not `Send`: the configuration
/// belongs to the thread.
pub(crate) struct TileSession {
    _thread: std::marker::PhantomData<*const ()>,
}

impl TileSession {
    /// Configure the tiles on this thread.
    ///
    /// # Panics
    /// Where [`amx_available`] does not hold.
    pub(crate) fn start() -> TileSession {
        assert!(
            amx_available(),
            "tile products need AMX-BF16 and the tile permission"
        );
        // SAFETY: AMX-BF16 is available and the permission granted (asserted above); the
        // configuration is the one `tile_block` assumes.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
        TileSession {
            _thread: std::marker::PhantomData,
        }
    }

    /// `c[r, j] = sum_p A[r, p] B[p, j]` for the 32 x 32 block at `c` (row stride `ldc`): `a`
    /// a 32-row block in step order (see [`round_rows_to_steps`]), `b` a panel of 32 columns
    /// (per step 16 rows of 32 words, each word a pair of k in bf16), `steps` steps of 32
    /// values of k each.
    ///
    /// # Panics
    /// If `a` or `b` hold fewer than `steps` steps, or `c` fewer than 32 rows of 32 values.
    #[inline]
    pub(crate) fn product(&self, a: &[u32], b: &[u32], steps: usize, c: &mut [f32], ldc: usize) {
        if steps == 0 {
            c.chunks_mut(ldc)
                .take(BLOCK)
                .for_each(|row| row[..BLOCK].fill(0.0));
            return;
        }
        assert!(
            a.len() >= steps * STEP_WORDS && b.len() >= steps * STEP_WORDS,
            "tile operands shorter than their steps"
        );
        assert!(
            ldc >= BLOCK && c.len() >= (BLOCK - 1) * ldc + BLOCK,
            "tile product output"
        );
        // SAFETY: the session loaded the configuration on this thread (it is not Send); the
        // extents `tile_block` reads and writes were checked above; `c` is borrowed mutably.
        unsafe {
            tile_block::<false>(
                a.as_ptr().cast(),
                b.as_ptr(),
                steps,
                c.as_mut_ptr(),
                ldc,
                None,
            )
        }
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        // SAFETY: releases this thread's tile state; no tile is live past a product.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Round `rows` rows of `k` values (row `r` at `x[r * ld ..]`) to bf16 into a 32-row A block in
/// step order: step `st` of row `r` is the 16 words at `(st * 32 + r) * 16`, word `w` the
/// values `32 st + 2w` and `32 st + 2w + 1` (low and high half). Values past `k` and rows past
/// `rows` are zero. `dst` holds `ceil(k / 32)` steps.
///
/// # Panics
/// Where [`amx_available`] does not hold (the rounding uses `avx512_bf16`), or the operands
/// are shorter than the shapes.
pub(crate) fn round_rows_to_steps(x: &[f32], ld: usize, rows: usize, k: usize, dst: &mut [u32]) {
    let steps = k.div_ceil(BLOCK);
    assert!(rows <= BLOCK && dst.len() >= steps * STEP_WORDS);
    assert!(rows == 0 || (rows - 1) * ld + k <= x.len());
    assert!(amx_available(), "bf16 rounding needs avx512_bf16");
    for st in 0..steps {
        let (lo, hi) = (st * BLOCK, (st * BLOCK + BLOCK).min(k));
        for r in 0..BLOCK {
            let out = &mut dst[(st * BLOCK + r) * 16..][..16];
            if r < rows {
                let words = bytemuck_f32(out);
                // SAFETY: avx512f and avx512_bf16 are available (`amx_available` implies them).
                unsafe { super::x86::round_to_bf16_pairs(&x[r * ld + lo..r * ld + hi], words) };
                words[(hi - lo).div_ceil(2)..].fill(0.0);
            } else {
                out.fill(0);
            }
        }
    }
}

/// The words as floats of the same bits (what `round_to_bf16_pairs` writes).
fn bytemuck_f32(words: &mut [u32]) -> &mut [f32] {
    // SAFETY: u32 and f32 have the same size and alignment and every bit pattern is valid in
    // both; the exclusive borrow carries over.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<f32>(), words.len()) }
}
