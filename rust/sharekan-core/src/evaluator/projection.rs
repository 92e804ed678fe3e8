//! The projection-table path (batches below [`DECODE_MIN_BATCH`](super::DECODE_MIN_BATCH)
//! rows, and layers too wide for decoded tiles): per row and input, the `k + 1` (or `M`)
//! basis values project the transposed codebook onto a `K`-entry table, which the row of
//! codes and gains then gathers. The loops here are `#[inline(always)]` so that they are
//! compiled into both builds of [`super::simd`].

use super::basis::basis_at;
use super::{lookup, Basis, Code, Elem, Plan, WSlice};

/// `acc[o] += w[o] * p[codes[o]]`.
#[inline(always)]
fn gather_axpy<W: Elem, C: Code>(acc: &mut [f32], w: &[W], codes: &[C], p: &[f32]) {
    let n = acc.len();
    let (w, codes) = (&w[..n], &codes[..n]);
    let p = if C::BYTE { &p[..256] } else { p };
    for o in 0..n {
        acc[o] += w[o].f() * lookup(p, codes[o]);
    }
}

#[inline(always)]
fn axpy<W: Elem>(acc: &mut [f32], w: &[W], s: f32) {
    let n = acc.len();
    let w = &w[..n];
    for o in 0..n {
        acc[o] += w[o].f() * s;
    }
}

#[inline(always)]
fn axpy2<W: Elem>(acc_a: &mut [f32], a: &[W], sa: f32, acc_b: &mut [f32], b: &[W], sb: f32) {
    let n = acc_a.len();
    let (a, b, acc_b) = (&a[..n], &b[..n], &mut acc_b[..n]);
    for o in 0..n {
        acc_a[o] += a[o].f() * sa;
        acc_b[o] += b[o].f() * sb;
    }
}

#[inline(always)]
fn row_axpy(acc: &mut [f32], w: WSlice<'_>, s: f32) {
    match w {
        WSlice::F32(r) => axpy(acc, r, s),
        WSlice::I8(r) => axpy(acc, r, s),
    }
}

/// `p[q] = sum_t c[t] * rows[t][q]`, `N` rows in one pass.
#[inline(always)]
fn proj_terms<const N: usize>(p: &mut [f32], ct: &[f32], kt: usize, rows: &[usize], c: &[f32]) {
    let n = p.len();
    let w: [&[f32]; N] = std::array::from_fn(|t| &ct[rows[t] * kt..][..n]);
    let c: [f32; N] = std::array::from_fn(|t| c[t]);
    for q in 0..n {
        let mut acc = c[0] * w[0][q];
        for t in 1..N {
            acc += c[t] * w[t][q];
        }
        p[q] = acc;
    }
}

/// Per-thread scratch of the projection-table path (sizes in [`ProjScratch::new`]).
pub(super) struct ProjScratch {
    p: Vec<f32>,
    b: Vec<f64>,
    /// Dense basis values (`M`, RBF / Chebyshev only).
    bd: Vec<f32>,
    rows: Vec<usize>,
    c: Vec<f32>,
    acc_g: Vec<f32>,
    acc_b: Vec<f32>,
    acc_w: Vec<f32>,
}

impl ProjScratch {
    pub(super) fn new<C: Code>(l: &Plan<'_, C>) -> Self {
        ProjScratch {
            // u8 lookups read 256 entries (zero beyond K).
            p: vec![0.0; if C::BYTE { l.kt.max(256) } else { l.kt }],
            b: vec![0.0; l.k + 1],
            bd: vec![0.0; if l.basis == Basis::BSpline { 0 } else { l.m }],
            rows: vec![0; l.k + 1],
            c: vec![0.0; l.k + 1],
            acc_g: vec![0.0; l.n_out],
            acc_b: vec![0.0; l.n_out],
            acc_w: vec![0.0; l.n_out],
        }
    }
}

/// One input of one row for a dense basis (RBF, Chebyshev): all `M` basis values,
/// `P[q] = sum_m b_m C[q, m]` (in order of `m`), `S = sum_m b_m`, then the gathers and the
/// edge-bias and base rows.
#[inline(always)]
fn dense_input<C: Code>(l: &Plan<'_, C>, i: usize, xi: f32, s: &mut ProjScratch) {
    let (n_out, m, kc, kt) = (l.n_out, l.m, l.kc, l.kt);
    let lo = i * n_out;
    let bd = &mut s.bd[..m];
    l.dense_basis(i, xi, bd);
    let p = &mut s.p[..kc];
    let row0 = &l.ct[..kc];
    let c0 = bd[0];
    for (pq, &w) in p.iter_mut().zip(row0) {
        *pq = c0 * w;
    }
    let mut sum_b = c0;
    for (mm, &c) in bd.iter().enumerate().skip(1) {
        axpy(p, &l.ct[mm * kt..][..kc], c);
        sum_b += c;
    }
    let codes = &l.codes[lo..lo + n_out];
    match l.gains.range(lo, lo + n_out) {
        WSlice::F32(g) => gather_axpy(&mut s.acc_g, g, codes, &s.p),
        WSlice::I8(g) => gather_axpy(&mut s.acc_g, g, codes, &s.p),
    }
    if let Some(e) = l.edge_bias {
        row_axpy(&mut s.acc_b, e.range(lo, lo + n_out), sum_b);
    }
    if let Some(w) = l.base_weight {
        row_axpy(&mut s.acc_w, w.range(lo, lo + n_out), l.act(xi));
    }
}

/// Rows of `x` (`n_in` each) into rows of `y` (`n_out` each) by projection tables.
#[inline(always)]
pub(super) fn projection_rows_impl<C: Code>(
    l: &Plan<'_, C>,
    xs: &[f32],
    ys: &mut [f32],
    s: &mut ProjScratch,
) {
    let (n_in, n_out, k, m, kc, kt) = (l.n_in, l.n_out, l.k, l.m, l.kc, l.kt);
    for (x, y) in xs.chunks_exact(n_in).zip(ys.chunks_exact_mut(n_out)) {
        s.acc_g.fill(0.0);
        s.acc_b.fill(0.0);
        s.acc_w.fill(0.0);
        for (i, &xi) in x.iter().enumerate() {
            let lo = i * n_out;
            if l.basis != Basis::BSpline {
                dense_input(l, i, xi, s);
                continue;
            }
            let in_grid = basis_at(l.grid_row(i), k, xi, &mut s.b);
            let mut sum_b = 0.0f32;
            if let Some(j) = in_grid {
                for t in 0..k + 1 {
                    let mi = j as isize - k as isize + t as isize;
                    let valid = mi >= 0 && (mi as usize) < m;
                    s.rows[t] = if valid { mi as usize } else { m };
                    s.c[t] = if valid { s.b[t] as f32 } else { 0.0 };
                    sum_b += s.c[t];
                }
                let p = &mut s.p[..kc];
                match k {
                    0 => proj_terms::<1>(p, &l.ct, kt, &s.rows, &s.c),
                    1 => proj_terms::<2>(p, &l.ct, kt, &s.rows, &s.c),
                    2 => proj_terms::<3>(p, &l.ct, kt, &s.rows, &s.c),
                    _ => {
                        proj_terms::<4>(p, &l.ct, kt, &s.rows, &s.c);
                        for t in 4..k + 1 {
                            axpy(p, &l.ct[s.rows[t] * kt..][..kc], s.c[t]);
                        }
                    }
                }
                let codes = &l.codes[lo..lo + n_out];
                match l.gains.range(lo, lo + n_out) {
                    WSlice::F32(g) => gather_axpy(&mut s.acc_g, g, codes, &s.p),
                    WSlice::I8(g) => gather_axpy(&mut s.acc_g, g, codes, &s.p),
                }
            }
            let eb = l.edge_bias.filter(|_| in_grid.is_some());
            match (eb, l.base_weight) {
                (Some(e), Some(w)) => {
                    let sw = l.act(xi);
                    match (e.range(lo, lo + n_out), w.range(lo, lo + n_out)) {
                        (WSlice::I8(e), WSlice::I8(w)) => {
                            axpy2(&mut s.acc_b, e, sum_b, &mut s.acc_w, w, sw)
                        }
                        (WSlice::F32(e), WSlice::F32(w)) => {
                            axpy2(&mut s.acc_b, e, sum_b, &mut s.acc_w, w, sw)
                        }
                        (e, w) => {
                            row_axpy(&mut s.acc_b, e, sum_b);
                            row_axpy(&mut s.acc_w, w, sw);
                        }
                    }
                }
                (Some(e), None) => row_axpy(&mut s.acc_b, e.range(lo, lo + n_out), sum_b),
                (None, Some(w)) => row_axpy(&mut s.acc_w, w.range(lo, lo + n_out), l.act(xi)),
                (None, None) => {}
            }
        }
        let scale = |v: Option<&[f32]>, o: usize| v.map_or(1.0, |a| a[o]);
        for (o, yo) in y.iter_mut().enumerate() {
            let mut v = scale(l.gain_scale, o) * s.acc_g[o];
            if l.edge_bias.is_some() {
                v += scale(l.edge_bias_scale, o) * s.acc_b[o];
            }
            if l.base_weight.is_some() {
                v += scale(l.base_scale, o) * s.acc_w[o];
            }
            if let Some(ob) = l.out_bias {
                v += ob[o];
            }
            *yo = v;
        }
    }
}
