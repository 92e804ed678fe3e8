//! Run-time multiversioning: the projection-table and decoded-tile loops compiled twice,
//! portable and with AVX2 enabled (x86_64), and the dispatch between them. Both builds
//! perform the same IEEE operations in the same order (no FMA, no reassociation; AVX2
//! only widens the vectors), so the choice never changes a result.

use super::decoded::decoded_tile_impl;
use super::projection::{projection_rows_impl, ProjScratch};
use super::{Code, Plan};

fn projection_rows_portable<C: Code>(
    l: &Plan<'_, C>,
    xs: &[f32],
    ys: &mut [f32],
    s: &mut ProjScratch,
) {
    projection_rows_impl(l, xs, ys, s)
}

fn decoded_tile_portable<C: Code>(
    l: &Plan<'_, C>,
    x: &[f32],
    y: &mut [f32],
    ones: &[f32],
    nb: usize,
) {
    decoded_tile_impl(l, x, y, ones, nb)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn projection_rows<C: Code>(
        l: &Plan<'_, C>,
        xs: &[f32],
        ys: &mut [f32],
        s: &mut ProjScratch,
    ) {
        projection_rows_impl(l, xs, ys, s)
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn decoded_tile<C: Code>(
        l: &Plan<'_, C>,
        x: &[f32],
        y: &mut [f32],
        ones: &[f32],
        nb: usize,
    ) {
        decoded_tile_impl(l, x, y, ones, nb)
    }
}

#[cfg(test)]
pub(super) static FORCE_PORTABLE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the AVX2 build of the hot loops may run (same results as the portable one:
/// no FMA, no reassociation, only wider vectors).
#[inline]
fn use_avx2() -> bool {
    #[cfg(test)]
    if FORCE_PORTABLE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(super) fn projection_rows<C: Code>(
    l: &Plan<'_, C>,
    xs: &[f32],
    ys: &mut [f32],
    s: &mut ProjScratch,
) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { avx2::projection_rows(l, xs, ys, s) };
        return;
    }
    projection_rows_portable(l, xs, ys, s)
}

pub(super) fn decoded_tile<C: Code>(
    l: &Plan<'_, C>,
    x: &[f32],
    y: &mut [f32],
    ones: &[f32],
    nb: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { avx2::decoded_tile(l, x, y, ones, nb) };
        return;
    }
    decoded_tile_portable(l, x, y, ones, nb)
}
