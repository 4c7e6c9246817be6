//! aarch64 NEON micro-kernel: up to 6 x 16 on each half of the 32-wide W panel, i.e. 24
//! accumulators of 4 lanes, 4 W vectors and the x values as by-element FMA operands.

use std::arch::aarch64::*;

use super::{Isa, NR};

/// Most rows per NEON micro-kernel call.
pub(super) const NEON_MR: usize = 6;

/// The NEON level (`SimdLevel::Neon`); its epilogue and bf16 widening are the portable ones,
/// which the baseline aarch64 target already compiles to NEON.
pub(super) struct Neon;

impl Isa for Neon {
    const MR: usize = NEON_MR;

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
        // SAFETY: forwarded contract (the level is available: NEON).
        unsafe { neon_kernel(mr, kc, a, b, c, ldc, nr, accumulate) }
    }
}

/// NEON micro-kernel, see `super::micro_kernel` for the contract.
///
/// # Safety
/// NEON must be available; `1 <= mr <= NEON_MR`, `1 <= nr <= NR`, `a.len() >= mr * kc`,
/// `b.len() >= kc * NR`; `c` valid for reads (if `accumulate`) and writes of the `mr x nr`
/// tile with row stride `ldc`, and not accessed through any other reference meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub(super) unsafe fn neon_kernel(
    mr: usize,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    nr: usize,
    accumulate: bool,
) {
    half_panel_kernel!(neon_tile, mr, kc, a, b, c, ldc, nr, accumulate)
}

/// `MR x 16` NEON tile over one half of a W panel (row stride `NR`).
///
/// # Safety
/// NEON available; `a` valid for `MR * kc` reads, `b + p * NR .. + 16` valid for p < kc;
/// `c` valid for the `MR x cols` tile (row stride `ldc`, `1 <= cols <= 16`), exclusively ours.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
#[inline]
unsafe fn neon_tile<const MR: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
    // SAFETY: for p < kc the reads are inside the operands (contract).
    unsafe {
        for p in 0..kc {
            let bp = b.add(p * NR);
            let bv = [
                vld1q_f32(bp),
                vld1q_f32(bp.add(4)),
                vld1q_f32(bp.add(8)),
                vld1q_f32(bp.add(12)),
            ];
            let ap = a.add(p * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = *ap.add(r);
                for (v, bq) in row.iter_mut().zip(bv) {
                    *v = vfmaq_n_f32(*v, bq, av);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        if cols == 16 {
            for (q, v) in row.iter().enumerate() {
                // SAFETY: row r < MR of the tile, columns 4q .. 4q + 4 <= 16 = cols: inside
                // it (contract) and exclusively ours.
                unsafe {
                    let cq = c.add(r * ldc + 4 * q);
                    let v = if accumulate {
                        vaddq_f32(*v, vld1q_f32(cq))
                    } else {
                        *v
                    };
                    vst1q_f32(cq, v);
                }
            }
            continue;
        }
        // Partial: go through a stack buffer and copy the `cols` valid columns.
        let mut tmp = [0.0f32; 16];
        for (q, v) in row.iter().enumerate() {
            // SAFETY: `tmp` has 16 floats; lanes 4q .. 4q + 4 are inside it.
            unsafe { vst1q_f32(tmp.as_mut_ptr().add(4 * q), *v) };
        }
        // SAFETY: row r < MR of the tile, columns < cols: inside it and exclusively ours.
        let out = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), cols) };
        for (o, &v) in out.iter_mut().zip(&tmp) {
            *o = if accumulate { *o + v } else { v };
        }
    }
}
