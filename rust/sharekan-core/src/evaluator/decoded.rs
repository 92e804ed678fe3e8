//! The decoded-tile path (batches of at least
//! [`DECODE_MIN_BATCH`](super::DECODE_MIN_BATCH) rows, tiles of
//! [`BATCH_TILE`](super::BATCH_TILE) rows): per input, decode the rows of the dense weight
//! block the tile touches into a cache-resident buffer and add `k + 1` spline rows plus
//! the edge-bias and base rows to each row of the tile. Also the bounds of its per-thread
//! scratch (column blocks, input chunks) and their test hooks. The loops here are
//! `#[inline(always)]` so that they are compiled into both builds of [`super::simd`].

use super::basis::{tile_basis, Knots};
use super::{lookup, Code, Plan, WSlice, DECODE_BLOCK_BYTES, DECODE_MIN_COLS, TILE_INPUTS};

/// `y[o] += sum_t c_t * w[row_t][o]` for the `(row, c)` terms, `N` at a time in one pass.
#[inline(always)]
fn axpy_terms<const N: usize>(y: &mut [f32], w: &[f32], stride: usize, terms: &[(usize, f32)]) {
    let n = y.len();
    let rows: [&[f32]; N] = std::array::from_fn(|t| &w[terms[t].0 * stride..][..n]);
    let c: [f32; N] = std::array::from_fn(|t| terms[t].1);
    for o in 0..n {
        let mut acc = y[o] + c[0] * rows[0][o];
        for t in 1..N {
            acc += c[t] * rows[t][o];
        }
        y[o] = acc;
    }
}

#[inline(always)]
fn axpy_many(y: &mut [f32], w: &[f32], stride: usize, terms: &[(usize, f32)]) {
    let mut chunks = terms.chunks_exact(6);
    for t in &mut chunks {
        axpy_terms::<6>(y, w, stride, t);
    }
    let t = chunks.remainder();
    match t.len() {
        5 => axpy_terms::<5>(y, w, stride, t),
        4 => axpy_terms::<4>(y, w, stride, t),
        3 => axpy_terms::<3>(y, w, stride, t),
        2 => axpy_terms::<2>(y, w, stride, t),
        1 => axpy_terms::<1>(y, w, stride, t),
        _ => {}
    }
}

/// `w[mm * stride + o] = gg[o] * ct[mm * kt + codes[o]]` for rows `mm` in `m_lo..=m_hi`,
/// `o < gg.len()`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decode_rows<C: Code>(
    w: &mut [f32],
    stride: usize,
    gg: &[f32],
    codes: &[C],
    ct: &[f32],
    kt: usize,
    m_lo: usize,
    m_hi: usize,
) {
    let n = gg.len();
    let codes = &codes[..n];
    let decode = |wr: &mut [f32], table: &[f32]| {
        // A known length of 256 removes the bounds checks of u8 lookups.
        let table = if C::BYTE { &table[..256] } else { table };
        for o in 0..n {
            wr[o] = gg[o] * lookup(table, codes[o]);
        }
    };
    if C::BYTE && kt < 256 {
        // u8 lookups read 256 entries: an unpadded row is copied into a padded one.
        let mut padded = [0.0f32; 256];
        for mm in m_lo..m_hi + 1 {
            padded[..kt].copy_from_slice(&ct[mm * kt..(mm + 1) * kt]);
            decode(&mut w[mm * stride..][..n], &padded);
        }
        return;
    }
    for mm in m_lo..m_hi + 1 {
        decode(&mut w[mm * stride..][..n], &ct[mm * kt..(mm + 1) * kt]);
    }
}

/// `out[o] = scale[o] * e[o]`.
#[inline(always)]
fn scaled_row(out: &mut [f32], e: WSlice<'_>, scale: &[f32]) {
    let n = out.len();
    let scale = &scale[..n];
    match e {
        WSlice::F32(v) => {
            let v = &v[..n];
            for o in 0..n {
                out[o] = scale[o] * v[o];
            }
        }
        WSlice::I8(v) => {
            let v = &v[..n];
            for o in 0..n {
                out[o] = scale[o] * v[o] as f32;
            }
        }
    }
}

/// Column-block width of the decoded-tile strategy for `m` basis functions and `n_out >= 1`
/// outputs: as many columns as fit [`DECODE_BLOCK_BYTES`] with `m + 2` rows (a multiple
/// of 16 when below `n_out`), or `None` when fewer than `min(n_out, DECODE_MIN_COLS)` fit.
pub(super) fn block_cols(m: usize, n_out: usize) -> Option<usize> {
    let rows = m.checked_add(2)?;
    let fit = DECODE_BLOCK_BYTES / std::mem::size_of::<f32>() / rows;
    if fit < n_out.min(DECODE_MIN_COLS) {
        return None;
    }
    Some(if fit >= n_out { n_out } else { fit - fit % 16 })
}

/// [`block_cols`], narrowed by the test hook.
pub(super) fn decode_cols(m: usize, n_out: usize) -> Option<usize> {
    let nb = block_cols(m, n_out)?;
    #[cfg(test)]
    if let forced @ 1.. = FORCE_DECODE_COLS.load(std::sync::atomic::Ordering::Relaxed) {
        return Some(nb.min(forced));
    }
    Some(nb)
}

/// Test hooks: narrower column blocks / input chunks than the budgets give (results must
/// not change, so concurrent tests are unaffected). 0: off.
#[cfg(test)]
pub(super) static FORCE_DECODE_COLS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);
#[cfg(test)]
pub(super) static FORCE_TILE_INPUTS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Inputs transposed at a time by a decoded tile.
#[inline]
fn tile_inputs(n_in: usize) -> usize {
    #[cfg(test)]
    if let forced @ 1.. = FORCE_TILE_INPUTS.load(std::sync::atomic::Ordering::Relaxed) {
        return n_in.min(forced);
    }
    n_in.min(TILE_INPUTS)
}

/// Bytes of scratch one decoded tile of `bsz` rows allocates (per thread), or `None` when
/// the layer does not use decoded tiles: the `(M + 2) x nb` weight block, the transposed
/// inputs (`min(n_in, TILE_INPUTS) x bsz`), the scaled gains of a block, the per-row basis
/// values and terms, and the per-input knots and reciprocals (`(k + 1) (NG + 2k)` f64)
/// unless the grid is shared. At most
/// [`TILE_SCRATCH_MAX_BYTES`](super::TILE_SCRATCH_MAX_BYTES) for `bsz <= BATCH_TILE` and
/// `k <= MAX_SPLINE_ORDER`, whatever `n_in` and `n_out`.
pub fn tile_scratch_bytes(
    n_in: usize,
    n_out: usize,
    m: usize,
    k: usize,
    shared_grid: bool,
    bsz: usize,
) -> Option<usize> {
    let nb = block_cols(m, n_out)?;
    let f32s = (m + 2) * nb + n_in.min(TILE_INPUTS) * bsz + nb + bsz * (k + 1) + 2 * bsz;
    let knots = (k + 1) * (if shared_grid { 2 } else { m + k + 1 } + 2 * k);
    let f64s = k + 1 + knots;
    let other = bsz * std::mem::size_of::<isize>()
        + bsz * (k + 3) * std::mem::size_of::<(usize, f32)>()
        + (bsz + 1) * std::mem::size_of::<usize>();
    Some(f32s * 4 + f64s * 8 + other)
}

/// One tile of rows: `x` `(bsz, n_in)` into `y` `(bsz, n_out)`, decoded weights in column
/// blocks of `nb` outputs (see [`tile_scratch_bytes`] for the scratch it allocates).
#[inline(always)]
pub(super) fn decoded_tile_impl<C: Code>(
    l: &Plan<'_, C>,
    x: &[f32],
    y: &mut [f32],
    ones: &[f32],
    nb: usize,
) {
    let (n_in, n_out, k, m, kt, ng) = (l.n_in, l.n_out, l.k, l.m, l.kt, l.ng);
    let bsz = x.len() / n_in;
    for yr in y.chunks_exact_mut(n_out) {
        match l.out_bias {
            Some(ob) => yr.copy_from_slice(ob),
            None => yr.fill(0.0),
        }
    }
    // Column reads of x (stride n_in) would thrash a few L1 sets; transpose a chunk of
    // inputs at a time.
    let ni = tile_inputs(n_in);
    let mut xt = vec![0.0f32; ni * bsz];
    // Rows 0..m: decoded spline rows; m: edge-bias row; m + 1: base row; nb columns.
    let (bias_row, base_row) = (m, m + 1);
    let mut w = vec![0.0f32; (m + 2) * nb];
    let mut gg = vec![0.0f32; nb];
    let mut coef = vec![0.0f32; bsz * (k + 1)];
    let mut first = vec![0isize; bsz];
    let mut s_sum = vec![0.0f32; bsz];
    let mut s_silu = vec![0.0f32; bsz];
    let mut b = vec![0.0f64; k + 1];
    // Knots of the current input (a 2-knot placeholder when the grid is shared).
    let mut own = Knots::new(if l.shared_knots.is_some() { 2 } else { ng }, k);
    // Terms of row r: terms[term_end[r]..term_end[r + 1]], the same for every block.
    let mut terms: Vec<(usize, f32)> = Vec::with_capacity(bsz * (k + 3));
    let mut term_end = vec![0usize; bsz + 1];
    let gain_scale = l.gain_scale.unwrap_or(ones);
    let edge_bias_scale = l.edge_bias_scale.unwrap_or(ones);
    let base_scale = l.base_scale.unwrap_or(ones);
    for i0 in (0..n_in).step_by(ni) {
        let i1 = (i0 + ni).min(n_in);
        for r in 0..bsz {
            let xr = &x[r * n_in + i0..r * n_in + i1];
            for (ii, &v) in xr.iter().enumerate() {
                xt[ii * bsz + r] = v;
            }
        }
        for i in i0..i1 {
            let kn = match &l.shared_knots {
                Some(kn) => kn,
                None => {
                    own.set(l.grid_row(i));
                    &own
                }
            };
            let xs = &xt[(i - i0) * bsz..(i - i0 + 1) * bsz];
            let (cf, fi, ss) = (&mut coef[..], &mut first[..], &mut s_sum[..]);
            let (m_lo, m_hi) = match k {
                1 => tile_basis::<1>(kn, m, xs, cf, fi, ss, &mut b),
                2 => tile_basis::<2>(kn, m, xs, cf, fi, ss, &mut b),
                3 => tile_basis::<3>(kn, m, xs, cf, fi, ss, &mut b),
                _ => tile_basis::<0>(kn, m, xs, cf, fi, ss, &mut b),
            };
            if l.base_weight.is_some() {
                for (sv, &xi) in s_silu.iter_mut().zip(xs) {
                    *sv = l.act(xi);
                }
            }
            terms.clear();
            for r in 0..bsz {
                let cr = &coef[r * (k + 1)..(r + 1) * (k + 1)];
                for (t, &c) in cr.iter().enumerate() {
                    let mi = first[r] + t as isize;
                    if mi >= 0 && (mi as usize) < m && c != 0.0 {
                        terms.push((mi as usize, c));
                    }
                }
                if l.edge_bias.is_some() && s_sum[r] != 0.0 {
                    terms.push((bias_row, s_sum[r]));
                }
                if l.base_weight.is_some() {
                    terms.push((base_row, s_silu[r]));
                }
                term_end[r + 1] = terms.len();
            }
            let lo = i * n_out;
            for o0 in (0..n_out).step_by(nb) {
                let o1 = (o0 + nb).min(n_out);
                let wn = o1 - o0;
                let (elo, ehi) = (lo + o0, lo + o1);
                if m_lo <= m_hi {
                    let gg = &mut gg[..wn];
                    scaled_row(gg, l.gains.range(elo, ehi), &gain_scale[o0..o1]);
                    let codes = &l.codes[elo..ehi];
                    decode_rows(&mut w, wn, gg, codes, &l.ct, kt, m_lo, m_hi);
                }
                if let Some(e) = l.edge_bias {
                    let wr = &mut w[bias_row * wn..(bias_row + 1) * wn];
                    scaled_row(wr, e.range(elo, ehi), &edge_bias_scale[o0..o1]);
                }
                if let Some(e) = l.base_weight {
                    let wr = &mut w[base_row * wn..(base_row + 1) * wn];
                    scaled_row(wr, e.range(elo, ehi), &base_scale[o0..o1]);
                }
                for r in 0..bsz {
                    let tr = &terms[term_end[r]..term_end[r + 1]];
                    axpy_many(&mut y[r * n_out + o0..r * n_out + o1], &w, wn, tr);
                }
            }
        }
    }
}
