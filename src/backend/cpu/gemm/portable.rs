//! Portable micro-kernel in plain Rust (no intrinsics): an `MR x 16` tile on each half of the
//! 32-wide W panel, written so the compiler keeps the accumulators in vector registers on the
//! baseline target (SSE2 on x86-64, NEON on aarch64). Always compiled, on every architecture.

use super::{Isa, NR};

/// Most rows per portable micro-kernel call (4 x 16 accumulators = 16 NEON / SSE registers).
pub(super) const MR: usize = 4;

/// The portable level (`SimdLevel::Portable`).
pub(super) struct Portable;

impl Isa for Portable {
    const MR: usize = MR;

    unsafe fn kernel(
        mr: usize,
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        nr: usize,
        accumulate: bool,
    ) {
        // SAFETY: forwarded contract.
        unsafe { kernel(mr, kc, a, b, c, ldc, nr, accumulate) }
    }
}

/// Columns per half tile.
const H: usize = 16;

/// Portable micro-kernel, see `super::micro_kernel` for the contract.
///
/// # Safety
/// `1 <= mr <= MR`, `1 <= nr <= NR`, `a.len() >= mr * kc`, `b.len() >= kc * NR`; `c` valid for
/// reads (if `accumulate`) and writes of the `mr x nr` tile with row stride `ldc`, and not
/// accessed through any other reference meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel(
    mr: usize,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    assert!(mr * kc <= a.len() && kc * NR <= b.len() && (1..=NR).contains(&nr));
    for half in 0..NR / H {
        let j0 = half * H;
        if j0 >= nr {
            break;
        }
        let cols = (nr - j0).min(H);
        let mut tile = [[0.0f32; H]; MR];
        match mr {
            1 => half_tile::<1>(kc, a, b, j0, &mut tile),
            2 => half_tile::<2>(kc, a, b, j0, &mut tile),
            3 => half_tile::<3>(kc, a, b, j0, &mut tile),
            4 => half_tile::<4>(kc, a, b, j0, &mut tile),
            _ => unreachable!("mr out of range"),
        }
        for (r, acc) in tile.iter().enumerate().take(mr) {
            // SAFETY: row r < mr, columns j0 .. j0 + cols <= nr of the tile, which the caller
            // guarantees valid and exclusively ours.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc + j0), cols) };
            for (o, &v) in row.iter_mut().zip(acc) {
                *o = if accumulate { *o + v } else { v };
            }
        }
    }
}

/// `tile[r][j] = sum_p a[p * R + r] * b[p * NR + j0 + j]` for `r < R`, `j < H`.
#[inline(always)]
fn half_tile<const R: usize>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    j0: usize,
    tile: &mut [[f32; H]; MR],
) {
    let mut acc = [[0.0f32; H]; R];
    for (ap, bp) in a.chunks_exact(R).zip(b.chunks_exact(NR)).take(kc) {
        let bh: &[f32; H] = bp[j0..j0 + H].try_into().expect("half panel");
        for r in 0..R {
            let av = ap[r];
            for j in 0..H {
                acc[r][j] += av * bh[j];
            }
        }
    }
    tile[..R].copy_from_slice(&acc);
}
