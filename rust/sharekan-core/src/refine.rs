//! Lloyd refinement of a codebook under one metric per edge (`metric="output"`,
//! ARCHITECTURE §2; the Python side is `python/sharekan/refine.py`).
//!
//! Edge `e` has coefficients `w_e (M)` and its own metric `R_e (M, M)`; it is reconstructed
//! as `g_e C[q_e] + b_e 1`. For a fixed code, `(g_e, b_e)` solve the 2x2 normal equations
//! with `a = C^T R C`, `c = 1^T R C`, `d = 1^T R 1`, `p = w^T R C`, `s = 1^T R w`
//! (`det = a d - c^2`; when `det <= 1e-12 a d` the system is degenerate: `g = 0`,
//! `b = s / d`). The explained part of `w^T R w` by the best `(g, b)` is
//! `(d p^2 - 2 c p s + a s^2) / det` (or `s^2 / d` when degenerate).
//!
//! One Lloyd iteration: codeword update `(sum g^2 R_e) C_q = sum g R_e (w_e - b_e 1)` over
//! the edges of cluster `q` (clusters without a usable system keep their codeword), then
//! reassignment (an edge keeps its code unless another explains strictly more; ties to the
//! lowest index), then the gain/bias solve; a step is kept only if the objective
//! `sum_e (w_e - g_e C_q - b_e 1)^T R_e (...)` does not increase.
//!
//! Determinism: every per-edge value depends only on that edge's inputs and the codebook
//! (fixed-size edge chunks, each computed the same way whatever thread runs it); sums over
//! edges (the objective, the per-cluster normal equations) are taken in edge-index order.
//! Results are bit-identical for any rayon thread count. All arithmetic is f64.

use std::borrow::Cow;

use crate::error::{check_finite, fmt_shape, Error, Result};
use crate::linalg::{dot, solve_lu};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayView3};
use rayon::prelude::*;

/// Edges per block of the assignment step (one matrix product per block); fixed, so the
/// values never depend on the thread count.
const ASSIGN_CHUNK: usize = 64;
/// Edges per parallel task of the per-edge loops (values do not depend on it).
const EDGE_CHUNK: usize = 512;
/// Relative determinant below which the 2x2 gain/bias system is degenerate.
const DET_REL: f64 = 1e-12;
/// Relative ridge added to the codeword update's system (times its trace).
const UPDATE_RIDGE: f64 = 1e-12;
/// Relative objective decrease below which the Lloyd iterations stop.
const STOP_REL: f64 = 1e-9;

/// Result of [`lloyd_refine`].
#[derive(Debug, Clone, PartialEq)]
pub struct LloydResult {
    /// Refined codebook in coefficient space, `(K, M)`.
    pub codebook: Array2<f64>,
    /// Code of every edge, `E` values in `0..K`.
    pub codes: Vec<u32>,
    /// Objective at the start, then after each kept iteration (non-increasing).
    pub objective: Vec<f64>,
}

/// Validated, contiguous inputs shared by every step.
struct Edges<'a> {
    /// Metrics, row-major `(E, M, M)`.
    r: Cow<'a, [f64]>,
    /// Coefficients, row-major `(E, M)`.
    w: Cow<'a, [f64]>,
    e: usize,
    m: usize,
}

impl Edges<'_> {
    fn metric(&self, i: usize) -> &[f64] {
        let mm = self.m * self.m;
        &self.r[i * mm..(i + 1) * mm]
    }

    fn coeffs(&self, i: usize) -> &[f64] {
        &self.w[i * self.m..(i + 1) * self.m]
    }
}

fn contiguous<'a, D: ndarray::Dimension>(a: &ndarray::ArrayView<'a, f64, D>) -> Cow<'a, [f64]> {
    match a.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

fn check_edges<'a>(metrics: ArrayView3<'a, f64>, coeffs: ArrayView2<'a, f64>) -> Result<Edges<'a>> {
    let (e, m1, m2) = metrics.dim();
    if e == 0 || m1 == 0 || m1 != m2 {
        return Err(Error::shape(
            "metrics",
            "(E, M, M) with E >= 1 and M >= 1",
            fmt_shape(&[e, m1, m2]),
        ));
    }
    let (ce, cm) = coeffs.dim();
    if ce != e || cm != m1 {
        return Err(Error::shape(
            "coeffs",
            format!("(E, M) = ({e}, {m1}) (as metrics)"),
            fmt_shape(&[ce, cm]),
        ));
    }
    let r = contiguous(&metrics);
    check_finite("metrics", r.iter())?;
    let w = contiguous(&coeffs);
    check_finite("coeffs", w.iter())?;
    Ok(Edges { r, w, e, m: m1 })
}

pub(crate) fn check_codebook<'a>(
    codebook: ArrayView2<'a, f64>,
    m: usize,
) -> Result<Cow<'a, [f64]>> {
    let (n_codes, cm) = codebook.dim();
    if n_codes == 0 || cm != m {
        return Err(Error::shape(
            "codebook",
            format!("(K, M) with K >= 1 and M = {m}"),
            fmt_shape(&[n_codes, cm]),
        ));
    }
    let c = contiguous(&codebook);
    check_finite("codebook", c.iter())?;
    Ok(c)
}

pub(crate) fn check_codes(codes: &[u32], e: usize, n_codes: usize) -> Result<()> {
    if codes.len() != e {
        return Err(Error::shape(
            "codes",
            format!("(E,) = ({e},)"),
            fmt_shape(&[codes.len()]),
        ));
    }
    if let Some(index) = codes.iter().position(|&c| c as usize >= n_codes) {
        return Err(Error::CodeOutOfRange {
            arg: "codes".into(),
            index,
            code: codes[index] as i64,
            n_codes,
        });
    }
    Ok(())
}

fn check_scalars<'a>(x: ArrayView1<'a, f64>, arg: &str, e: usize) -> Result<Cow<'a, [f64]>> {
    if x.len() != e {
        return Err(Error::shape(
            arg,
            format!("(E,) = ({e},)"),
            fmt_shape(&[x.len()]),
        ));
    }
    let s = match x.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().copied().collect()),
    };
    check_finite(arg, s.iter())?;
    Ok(s)
}

/// `(g, b)` of the 2x2 normal equations (degenerate: `g = 0`, `b = s / d`).
#[inline]
pub(crate) fn solve_gain_bias(a: f64, c: f64, d: f64, p: f64, s: f64) -> (f64, f64) {
    let det = a * d - c * c;
    if det > DET_REL * a * d && det.is_finite() {
        ((d * p - c * s) / det, (a * s - c * p) / det)
    } else {
        (0.0, s / d)
    }
}

/// The part of `w^T R w` the best `(g, b)` removes.
#[inline]
fn explained(a: f64, c: f64, d: f64, p: f64, s: f64) -> f64 {
    let det = a * d - c * c;
    if det > DET_REL * a * d && det.is_finite() {
        (d * p * p - 2.0 * c * p * s + a * s * s) / det
    } else {
        s * s / d
    }
}

/// Per-edge gain and bias for codeword `cq`: `rc = R C`, `a = C . rc`, `c = sum rc`,
/// `d = sum R`, `p = rc . w`, `s = sum R w`.
fn gain_bias_one(r: &[f64], w: &[f64], cq: &[f64], m: usize, rc: &mut [f64]) -> (f64, f64) {
    let mut d = 0.0;
    let mut s = 0.0;
    for (row, rcj) in r.chunks_exact(m).zip(rc.iter_mut()) {
        *rcj = dot(row, cq);
        d += row.iter().sum::<f64>();
        s += dot(row, w);
    }
    let a = dot(cq, rc);
    let c = rc.iter().sum::<f64>();
    let p = dot(rc, w);
    solve_gain_bias(a, c, d, p, s)
}

fn gain_bias_all(edges: &Edges<'_>, codebook: &[f64], codes: &[u32]) -> (Vec<f64>, Vec<f64>) {
    let (e, m) = (edges.e, edges.m);
    let mut gains = vec![0.0; e];
    let mut biases = vec![0.0; e];
    gains
        .par_chunks_mut(EDGE_CHUNK)
        .zip(biases.par_chunks_mut(EDGE_CHUNK))
        .enumerate()
        .for_each_init(
            || vec![0.0; m],
            |rc, (ci, (g_c, b_c))| {
                for (t, (g, b)) in g_c.iter_mut().zip(b_c.iter_mut()).enumerate() {
                    let i = ci * EDGE_CHUNK + t;
                    let q = codes[i] as usize;
                    (*g, *b) = gain_bias_one(
                        edges.metric(i),
                        edges.coeffs(i),
                        &codebook[q * m..(q + 1) * m],
                        m,
                        rc,
                    );
                }
            },
        );
    (gains, biases)
}

fn objective_all(
    edges: &Edges<'_>,
    codebook: &[f64],
    codes: &[u32],
    gains: &[f64],
    biases: &[f64],
) -> f64 {
    let (e, m) = (edges.e, edges.m);
    let mut per_edge = vec![0.0; e];
    per_edge
        .par_chunks_mut(EDGE_CHUNK)
        .enumerate()
        .for_each_init(
            || vec![0.0; m],
            |diff, (ci, out)| {
                for (t, o) in out.iter_mut().enumerate() {
                    let i = ci * EDGE_CHUNK + t;
                    let q = codes[i] as usize;
                    let cq = &codebook[q * m..(q + 1) * m];
                    for ((dj, wj), cj) in diff.iter_mut().zip(edges.coeffs(i)).zip(cq) {
                        *dj = wj - gains[i] * cj - biases[i];
                    }
                    let mut v = 0.0;
                    for (row, dj) in edges.metric(i).chunks_exact(m).zip(diff.iter()) {
                        v += dj * dot(row, diff);
                    }
                    *o = v;
                }
            },
        );
    // edge-index order: the same sum for any thread count
    per_edge.iter().sum()
}

/// Per-edge terms that do not depend on the codebook: `u = R^T 1`, `v = R^T w` (so that
/// `c = u . C` and `p = v . C`), `d = 1^T R 1`, `s = 1^T R w`.
struct EdgeTerms {
    /// `(E, 2, M)`: `u_e` then `v_e`.
    uv: Vec<f64>,
    d: Vec<f64>,
    s: Vec<f64>,
}

fn edge_terms(edges: &Edges<'_>) -> EdgeTerms {
    let (e, m) = (edges.e, edges.m);
    let mut uv = vec![0.0; e * 2 * m];
    let mut d = vec![0.0; e];
    let mut s = vec![0.0; e];
    uv.par_chunks_mut(2 * m)
        .zip(d.par_iter_mut())
        .zip(s.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((uv_i, d_i), s_i))| {
            let (u, v) = uv_i.split_at_mut(m);
            let w = edges.coeffs(i);
            for (row, wj) in edges.metric(i).chunks_exact(m).zip(w) {
                for ((ul, vl), rjl) in u.iter_mut().zip(v.iter_mut()).zip(row) {
                    *ul += rjl;
                    *vl += rjl * wj;
                }
            }
            *d_i = u.iter().sum();
            *s_i = dot(u, w);
        });
    EdgeTerms { uv, d, s }
}

fn assign_all(
    edges: &Edges<'_>,
    terms: &EdgeTerms,
    codebook: &[f64],
    n_codes: usize,
    codes: &[u32],
) -> Vec<u32> {
    let m = edges.m;
    let mm = m * m;
    // outer[q] = vec(C_q C_q^T), (K, M*M): a_eq = <vec R_e, outer[q]>
    let mut outer = vec![0.0; n_codes * mm];
    for (o, cq) in outer.chunks_exact_mut(mm).zip(codebook.chunks_exact(m)) {
        for (orow, cj) in o.chunks_exact_mut(m).zip(cq) {
            for (x, cl) in orow.iter_mut().zip(cq) {
                *x = cj * cl;
            }
        }
    }
    let mut out = codes.to_vec();
    out.par_chunks_mut(ASSIGN_CHUNK).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(a, cp): &mut (Vec<f64>, Vec<f64>), (ci, out_c)| {
            let start = ci * ASSIGN_CHUNK;
            let n = out_c.len();
            a.resize(n * n_codes, 0.0);
            cp.resize(2 * n * n_codes, 0.0);
            let r = &edges.r[start * mm..(start + n) * mm];
            let uv = &terms.uv[start * 2 * m..(start + n) * 2 * m];
            // SAFETY: every pointer/stride pair addresses in-bounds elements of a
            // live slice: r is (n, mm) row-major, outer (K, mm) read as its
            // transpose (mm, K), a is (n, K); uv is (2n, m), codebook (K, m) read as
            // (m, K), cp is (2n, K). Outputs do not alias inputs; beta = 0.
            unsafe {
                matrixmultiply::dgemm(
                    n,
                    mm,
                    n_codes,
                    1.0,
                    r.as_ptr(),
                    mm as isize,
                    1,
                    outer.as_ptr(),
                    1,
                    mm as isize,
                    0.0,
                    a.as_mut_ptr(),
                    n_codes as isize,
                    1,
                );
                matrixmultiply::dgemm(
                    2 * n,
                    m,
                    n_codes,
                    1.0,
                    uv.as_ptr(),
                    m as isize,
                    1,
                    codebook.as_ptr(),
                    1,
                    m as isize,
                    0.0,
                    cp.as_mut_ptr(),
                    n_codes as isize,
                    1,
                );
            }
            for (t, code) in out_c.iter_mut().enumerate() {
                let i = start + t;
                let (d, s) = (terms.d[i], terms.s[i]);
                let a_t = &a[t * n_codes..(t + 1) * n_codes];
                let c_t = &cp[2 * t * n_codes..(2 * t + 1) * n_codes];
                let p_t = &cp[(2 * t + 1) * n_codes..(2 * t + 2) * n_codes];
                // numpy.argmax: the first maximum, or the first NaN
                let mut best = 0usize;
                let mut best_val = explained(a_t[0], c_t[0], d, p_t[0], s);
                for q in 1..n_codes {
                    if best_val.is_nan() {
                        break;
                    }
                    let x = explained(a_t[q], c_t[q], d, p_t[q], s);
                    if x > best_val || x.is_nan() {
                        best = q;
                        best_val = x;
                    }
                }
                let old = *code as usize;
                let old_val = explained(a_t[old], c_t[old], d, p_t[old], s);
                if best_val > old_val {
                    *code = best as u32;
                }
            }
        },
    );
    out
}

fn update_all(
    edges: &Edges<'_>,
    codebook: &[f64],
    n_codes: usize,
    codes: &[u32],
    gains: &[f64],
    biases: &[f64],
) -> Vec<f64> {
    let (e, m) = (edges.e, edges.m);
    let mm = m * m;
    // counting sort by code: members of every cluster in edge-index order
    let mut start = vec![0usize; n_codes + 1];
    for &q in codes {
        start[q as usize + 1] += 1;
    }
    for q in 0..n_codes {
        start[q + 1] += start[q];
    }
    let mut fill = start.clone();
    let mut members = vec![0usize; e];
    for (i, &q) in codes.iter().enumerate() {
        members[fill[q as usize]] = i;
        fill[q as usize] += 1;
    }
    let mut out = codebook.to_vec();
    out.par_chunks_mut(m).enumerate().for_each_init(
        || (vec![0.0; mm], vec![0.0; m], vec![0.0; m]),
        |(lhs, rhs, target), (q, cq)| {
            lhs.fill(0.0);
            rhs.fill(0.0);
            for &i in &members[start[q]..start[q + 1]] {
                let (g, b) = (gains[i], biases[i]);
                let g2 = g * g;
                for (tj, wj) in target.iter_mut().zip(edges.coeffs(i)) {
                    *tj = wj - b;
                }
                for ((row, lrow), hj) in edges
                    .metric(i)
                    .chunks_exact(m)
                    .zip(lhs.chunks_exact_mut(m))
                    .zip(rhs.iter_mut())
                {
                    for (l, rjl) in lrow.iter_mut().zip(row) {
                        *l += g2 * rjl;
                    }
                    *hj += g * dot(row, target);
                }
            }
            let scale: f64 = (0..m).map(|j| lhs[j * m + j]).sum();
            if scale.is_nan() || scale <= 0.0 || !scale.is_finite() {
                return;
            }
            for j in 0..m {
                lhs[j * m + j] += UPDATE_RIDGE * scale;
            }
            if solve_lu(lhs, m, rhs) {
                cq.copy_from_slice(rhs);
            }
        },
    );
    out
}

fn to_array(v: Vec<f64>, rows: usize, cols: usize, arg: &str) -> Result<Array2<f64>> {
    Array2::from_shape_vec((rows, cols), v).map_err(|err| Error::invalid(arg, err.to_string()))
}

/// Per-edge `(g_e, b_e)` minimising `(w_e - g C[q_e] - b 1)^T R_e (w_e - g C[q_e] - b 1)`.
///
/// `metrics (E, M, M)`, `coeffs (E, M)`, `codebook (K, M)`, `codes` (E values `< K`) ->
/// `(gains (E,), biases (E,))`; degenerate systems give `g = 0`, `b = s / d`.
///
/// # Errors
/// [`Error::Shape`] for inconsistent shapes or an empty input, [`Error::NonFinite`] for
/// NaN/Inf in `metrics`, `coeffs` or `codebook`, [`Error::CodeOutOfRange`] for codes `>= K`.
pub fn edge_gain_bias(
    metrics: ArrayView3<'_, f64>,
    coeffs: ArrayView2<'_, f64>,
    codebook: ArrayView2<'_, f64>,
    codes: &[u32],
) -> Result<(Array1<f64>, Array1<f64>)> {
    let edges = check_edges(metrics, coeffs)?;
    let book = check_codebook(codebook, edges.m)?;
    check_codes(codes, edges.e, codebook.nrows())?;
    let (g, b) = gain_bias_all(&edges, &book, codes);
    Ok((Array1::from(g), Array1::from(b)))
}

/// Reassignment under per-edge metrics: the code whose codeword, with its best gain and
/// bias, explains the most of `w_e^T R_e w_e`; an edge keeps `codes[e]` unless another code
/// is strictly better (ties to the lowest index).
///
/// # Errors
/// As [`edge_gain_bias`].
pub fn assign(
    metrics: ArrayView3<'_, f64>,
    coeffs: ArrayView2<'_, f64>,
    codebook: ArrayView2<'_, f64>,
    codes: &[u32],
) -> Result<Vec<u32>> {
    let edges = check_edges(metrics, coeffs)?;
    let book = check_codebook(codebook, edges.m)?;
    let n_codes = codebook.nrows();
    check_codes(codes, edges.e, n_codes)?;
    let terms = edge_terms(&edges);
    Ok(assign_all(&edges, &terms, &book, n_codes, codes))
}

/// Codeword update for fixed codes, gains and biases: `C_q` solves
/// `(sum g^2 R_e + 1e-12 tr I) C_q = sum g R_e (w_e - b_e 1)` over the edges of cluster `q`
/// (summed in edge-index order); empty clusters, clusters whose system has no positive
/// finite trace and singular systems keep their codeword. Returns the codebook `(K, M)`.
///
/// # Errors
/// As [`edge_gain_bias`], plus [`Error::Shape`] / [`Error::NonFinite`] for `gains` and
/// `biases` (E values each).
pub fn update(
    metrics: ArrayView3<'_, f64>,
    coeffs: ArrayView2<'_, f64>,
    codebook: ArrayView2<'_, f64>,
    codes: &[u32],
    gains: ArrayView1<'_, f64>,
    biases: ArrayView1<'_, f64>,
) -> Result<Array2<f64>> {
    let edges = check_edges(metrics, coeffs)?;
    let book = check_codebook(codebook, edges.m)?;
    let n_codes = codebook.nrows();
    check_codes(codes, edges.e, n_codes)?;
    let g = check_scalars(gains, "gains", edges.e)?;
    let b = check_scalars(biases, "biases", edges.e)?;
    let out = update_all(&edges, &book, n_codes, codes, &g, &b);
    to_array(out, n_codes, edges.m, "codebook")
}

/// `sum_e (w_e - g_e C[q_e] - b_e 1)^T R_e (w_e - g_e C[q_e] - b_e 1)`, summed in
/// edge-index order.
///
/// # Errors
/// As [`update`].
pub fn objective(
    metrics: ArrayView3<'_, f64>,
    coeffs: ArrayView2<'_, f64>,
    codebook: ArrayView2<'_, f64>,
    codes: &[u32],
    gains: ArrayView1<'_, f64>,
    biases: ArrayView1<'_, f64>,
) -> Result<f64> {
    let edges = check_edges(metrics, coeffs)?;
    let book = check_codebook(codebook, edges.m)?;
    check_codes(codes, edges.e, codebook.nrows())?;
    let g = check_scalars(gains, "gains", edges.e)?;
    let b = check_scalars(biases, "biases", edges.e)?;
    Ok(objective_all(&edges, &book, codes, &g, &b))
}

/// Lloyd iterations under per-edge metrics, starting from `codebook (K, M)` and `codes`:
/// per iteration [`update`], [`assign`], [`edge_gain_bias`] and the [`objective`]; the step
/// is kept only if the objective does not increase (else stop), and the loop stops after
/// `n_iter` iterations or when the decrease is at most `1e-9` of the objective.
///
/// # Errors
/// As [`edge_gain_bias`].
pub fn lloyd_refine(
    metrics: ArrayView3<'_, f64>,
    coeffs: ArrayView2<'_, f64>,
    codebook: ArrayView2<'_, f64>,
    codes: &[u32],
    n_iter: usize,
) -> Result<LloydResult> {
    let edges = check_edges(metrics, coeffs)?;
    let mut book = check_codebook(codebook, edges.m)?.into_owned();
    let n_codes = codebook.nrows();
    check_codes(codes, edges.e, n_codes)?;
    let terms = edge_terms(&edges);
    let mut codes = codes.to_vec();
    let (mut gains, mut biases) = gain_bias_all(&edges, &book, &codes);
    let mut best = objective_all(&edges, &book, &codes, &gains, &biases);
    let mut history = vec![best];
    for _ in 0..n_iter {
        let cand_book = update_all(&edges, &book, n_codes, &codes, &gains, &biases);
        let cand_codes = assign_all(&edges, &terms, &cand_book, n_codes, &codes);
        let (g, b) = gain_bias_all(&edges, &cand_book, &cand_codes);
        let value = objective_all(&edges, &cand_book, &cand_codes, &g, &b);
        // also stops on NaN
        if value.is_nan() || best.is_nan() || value > best {
            break;
        }
        let improved = best - value;
        (book, codes, gains, biases, best) = (cand_book, cand_codes, g, b, value);
        history.push(best);
        // Python's max(best, 1e-300)
        let floor = if 1e-300 > best { 1e-300 } else { best };
        if improved <= STOP_REL * floor {
            break;
        }
    }
    Ok(LloydResult {
        codebook: to_array(book, n_codes, edges.m, "codebook")?,
        codes,
        objective: history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, Array3};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    struct Case {
        metrics: Array3<f64>,
        coeffs: Array2<f64>,
        codebook: Array2<f64>,
        codes: Vec<u32>,
    }

    /// Random SPD metrics (A A^T / M + 0.05 I), coefficients, codebook and codes.
    fn case(e: usize, m: usize, n_codes: usize, seed: u64) -> Case {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut metrics = Array3::<f64>::zeros((e, m, m));
        for i in 0..e {
            let a = Array2::from_shape_fn((m, m), |_| rng.random::<f64>() * 2.0 - 1.0);
            let r = a.dot(&a.t()) / m as f64 + Array2::<f64>::eye(m) * 0.05;
            metrics.slice_mut(ndarray::s![i, .., ..]).assign(&r);
        }
        let coeffs = Array2::from_shape_fn((e, m), |_| rng.random::<f64>() * 2.0 - 1.0);
        let codebook = Array2::from_shape_fn((n_codes, m), |_| rng.random::<f64>() * 2.0 - 1.0);
        let codes = (0..e)
            .map(|_| rng.random_range(0..n_codes as u32))
            .collect();
        Case {
            metrics,
            coeffs,
            codebook,
            codes,
        }
    }

    fn objective_of(c: &Case, book: &Array2<f64>, codes: &[u32]) -> f64 {
        let (g, b) = edge_gain_bias(c.metrics.view(), c.coeffs.view(), book.view(), codes).unwrap();
        objective(
            c.metrics.view(),
            c.coeffs.view(),
            book.view(),
            codes,
            g.view(),
            b.view(),
        )
        .unwrap()
    }

    fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn errors_name_the_argument() {
        let c = case(6, 4, 3, 0);
        let (r, w, cb) = (c.metrics.view(), c.coeffs.view(), c.codebook.view());
        let bad_r = Array3::<f64>::zeros((6, 4, 3));
        assert!(matches!(
            edge_gain_bias(bad_r.view(), w, cb, &c.codes),
            Err(Error::Shape { ref arg, .. }) if arg == "metrics"
        ));
        let empty = Array3::<f64>::zeros((0, 4, 4));
        assert!(matches!(
            assign(empty.view(), Array2::zeros((0, 4)).view(), cb, &[]),
            Err(Error::Shape { ref arg, .. }) if arg == "metrics"
        ));
        let w5 = Array2::<f64>::zeros((5, 4));
        assert!(matches!(
            assign(r, w5.view(), cb, &c.codes),
            Err(Error::Shape { ref arg, .. }) if arg == "coeffs"
        ));
        let cb0 = Array2::<f64>::zeros((0, 4));
        assert!(matches!(
            lloyd_refine(r, w, cb0.view(), &c.codes, 3),
            Err(Error::Shape { ref arg, .. }) if arg == "codebook"
        ));
        assert!(matches!(
            assign(r, w, cb, &c.codes[..5]),
            Err(Error::Shape { ref arg, .. }) if arg == "codes"
        ));
        let mut codes = c.codes.clone();
        codes[4] = 3;
        assert!(matches!(
            lloyd_refine(r, w, cb, &codes, 3),
            Err(Error::CodeOutOfRange {
                index: 4,
                code: 3,
                n_codes: 3,
                ..
            })
        ));
        let mut nan = c.metrics.clone();
        nan[[1, 0, 2]] = f64::NAN;
        assert!(matches!(
            lloyd_refine(nan.view(), w, cb, &c.codes, 3),
            Err(Error::NonFinite { ref arg, index: 18 }) if arg == "metrics"
        ));
        let mut inf = c.codebook.clone();
        inf[[2, 3]] = f64::INFINITY;
        assert!(matches!(
            edge_gain_bias(r, w, inf.view(), &c.codes),
            Err(Error::NonFinite { ref arg, index: 11 }) if arg == "codebook"
        ));
        let g = Array1::<f64>::zeros(5);
        let b = Array1::<f64>::zeros(6);
        assert!(matches!(
            update(r, w, cb, &c.codes, g.view(), b.view()),
            Err(Error::Shape { ref arg, .. }) if arg == "gains"
        ));
        let g = Array1::from_elem(6, f64::NAN);
        assert!(matches!(
            objective(r, w, cb, &c.codes, b.view(), g.view()),
            Err(Error::NonFinite { ref arg, index: 0 }) if arg == "biases"
        ));
    }

    #[test]
    fn gain_bias_is_the_least_squares_and_degenerate_codes_get_zero_gain() {
        let mut c = case(30, 6, 3, 1);
        c.codebook.row_mut(1).fill(0.0); // zero codeword
        c.codebook.row_mut(2).fill(-1.5); // parallel to the ones vector
        let (g, b) = edge_gain_bias(
            c.metrics.view(),
            c.coeffs.view(),
            c.codebook.view(),
            &c.codes,
        )
        .unwrap();
        let err = |i: usize, g: f64, b: f64| {
            let r = c.metrics.slice(ndarray::s![i, .., ..]);
            let q = c.codes[i] as usize;
            let d = &c.coeffs.row(i) - &(&c.codebook.row(q) * g) - b;
            d.dot(&r.dot(&d))
        };
        for i in 0..30 {
            let base = err(i, g[i], b[i]);
            for (dg, db) in [(1e-5, 0.0), (-1e-5, 0.0), (0.0, 1e-5), (0.0, -1e-5)] {
                assert!(err(i, g[i] + dg, b[i] + db) >= base - 1e-12);
            }
            if c.codes[i] != 0 {
                assert_eq!(g[i], 0.0);
            }
        }
    }

    #[test]
    fn assign_keeps_ties_and_zero_edges() {
        let mut c = case(40, 5, 4, 2);
        // codeword 3 duplicates codeword 1: never strictly better than 1
        let dup = c.codebook.row(1).to_owned();
        c.codebook.row_mut(3).assign(&dup);
        c.coeffs.row_mut(7).fill(0.0); // zero-norm edge: every code explains 0
        let codes = assign(
            c.metrics.view(),
            c.coeffs.view(),
            c.codebook.view(),
            &c.codes,
        )
        .unwrap();
        assert_eq!(codes[7], c.codes[7]);
        for (i, (&new, &old)) in codes.iter().zip(&c.codes).enumerate() {
            if old == 3 || old == 1 {
                assert!(new == old || (new != 1 && new != 3), "edge {i}");
            } else {
                assert_ne!(
                    new, 3,
                    "edge {i}: a duplicate of 1 wins only over its own index"
                );
            }
        }
        // no edge got worse
        for (i, (&new, &old)) in codes.iter().zip(&c.codes).enumerate() {
            let one = |q: u32| {
                let r = c.metrics.slice(ndarray::s![i..i + 1, .., ..]);
                let w = c.coeffs.slice(ndarray::s![i..i + 1, ..]);
                let (g, b) = edge_gain_bias(r, w, c.codebook.view(), &[q]).unwrap();
                objective(r, w, c.codebook.view(), &[q], g.view(), b.view()).unwrap()
            };
            assert!(one(new) <= one(old));
        }
    }

    #[test]
    fn empty_clusters_and_k_above_e_keep_their_codewords() {
        let c = case(5, 4, 9, 3);
        let codes = vec![0u32, 0, 2, 2, 2];
        let (g, b) =
            edge_gain_bias(c.metrics.view(), c.coeffs.view(), c.codebook.view(), &codes).unwrap();
        let book = update(
            c.metrics.view(),
            c.coeffs.view(),
            c.codebook.view(),
            &codes,
            g.view(),
            b.view(),
        )
        .unwrap();
        for q in [1usize, 3, 4, 5, 6, 7, 8] {
            assert_eq!(book.row(q), c.codebook.row(q));
        }
        assert_ne!(book.row(0), c.codebook.row(0));
        let res = lloyd_refine(
            c.metrics.view(),
            c.coeffs.view(),
            c.codebook.view(),
            &codes,
            8,
        )
        .unwrap();
        assert!(res.objective.last().unwrap() <= &res.objective[0]);
        // K = 1: a single cluster
        let c1 = case(12, 5, 1, 4);
        let res = lloyd_refine(
            c1.metrics.view(),
            c1.coeffs.view(),
            c1.codebook.view(),
            &c1.codes,
            8,
        )
        .unwrap();
        assert!(res.codes.iter().all(|&q| q == 0));
        assert!(res.objective.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn zero_iterations_and_all_zero_edges() {
        let mut c = case(8, 4, 2, 5);
        let res = lloyd_refine(
            c.metrics.view(),
            c.coeffs.view(),
            c.codebook.view(),
            &c.codes,
            0,
        )
        .unwrap();
        assert_eq!(res.codes, c.codes);
        assert_eq!(res.codebook, c.codebook);
        assert_eq!(res.objective.len(), 1);
        c.coeffs.fill(0.0);
        let res = lloyd_refine(
            c.metrics.view(),
            c.coeffs.view(),
            c.codebook.view(),
            &c.codes,
            5,
        )
        .unwrap();
        assert_eq!(res.objective[0], 0.0);
        assert_eq!(res.codes, c.codes);
    }

    #[test]
    fn lu_update_solves_the_normal_equations() {
        // One cluster, gains 1, biases 0: C = (sum R_e)^{-1} sum R_e w_e (up to the 1e-12 ridge).
        let c = case(20, 5, 1, 6);
        let g = Array1::<f64>::ones(20);
        let b = Array1::<f64>::zeros(20);
        let book = update(
            c.metrics.view(),
            c.coeffs.view(),
            c.codebook.view(),
            &c.codes,
            g.view(),
            b.view(),
        )
        .unwrap();
        let mut lhs = Array2::<f64>::zeros((5, 5));
        let mut rhs = Array1::<f64>::zeros(5);
        for i in 0..20 {
            let r: ArrayView2<f64> = c.metrics.slice(ndarray::s![i, .., ..]);
            lhs = lhs + r;
            rhs = rhs + r.dot(&c.coeffs.row(i));
        }
        let resid = lhs.dot(&book.row(0)) - rhs;
        assert!(resid.iter().all(|x| x.abs() < 1e-9), "{resid}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn lloyd_pass_never_increases_and_is_thread_invariant(
            e in 1usize..150, m in 2usize..9, n_codes in 1usize..12, seed in 0u64..1000, zero_every in 2usize..9,
        ) {
            let mut c = case(e, m, n_codes, seed);
            for i in (0..e).step_by(zero_every) {
                c.coeffs.row_mut(i).fill(0.0);
            }
            // one pass by hand: update, assign, gain/bias
            let (g, b) = edge_gain_bias(c.metrics.view(), c.coeffs.view(), c.codebook.view(), &c.codes).unwrap();
            let before = objective(c.metrics.view(), c.coeffs.view(), c.codebook.view(), &c.codes, g.view(), b.view()).unwrap();
            let book = update(c.metrics.view(), c.coeffs.view(), c.codebook.view(), &c.codes, g.view(), b.view()).unwrap();
            let mid = objective(c.metrics.view(), c.coeffs.view(), book.view(), &c.codes, g.view(), b.view()).unwrap();
            prop_assert!(mid <= before * (1.0 + 1e-9) + 1e-12, "update: {} -> {}", before, mid);
            let codes = assign(c.metrics.view(), c.coeffs.view(), book.view(), &c.codes).unwrap();
            let after = objective_of(&c, &book, &codes);
            prop_assert!(after <= mid * (1.0 + 1e-9) + 1e-12, "assign+refit: {} -> {}", mid, after);

            let run = |threads| in_pool(threads, || {
                lloyd_refine(c.metrics.view(), c.coeffs.view(), c.codebook.view(), &c.codes, 6).unwrap()
            });
            let (one, two) = (run(1), run(2));
            prop_assert_eq!(&one, &two);
            prop_assert!(one.objective.windows(2).all(|w| w[1] <= w[0]));
            let last = *one.objective.last().unwrap();
            let again = objective_of(&c, &one.codebook, &one.codes);
            prop_assert!((again - last).abs() <= 1e-12 * (1.0 + last.abs()));
        }
    }
}
