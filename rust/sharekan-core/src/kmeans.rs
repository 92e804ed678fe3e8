//! Weighted, sign-invariant spherical k-means (SPEC §2.4, ARCHITECTURE §3 "K-means rules").
//!
//! Minimises `J = sum_e ||r_e||^2 - <r_e, c_{q_e}>^2` over unit codewords `c_q` and codes
//! `q_e`. The result is bit-identical for any rayon thread count: every parallel loop
//! works on fixed-size chunks whose partial results are combined in chunk order, and every
//! per-cluster reduction runs in edge-index order.

use crate::error::{check_finite, fmt_shape, Error, Result};
use crate::linalg::{dot, fix_sign, norm, power_iteration, rayleigh};
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Rows per f32 score block of the assignment step (independent of the thread count).
const ASSIGN_CHUNK: usize = 512;
/// Edges per block of the k-means++ distance update and prefix sums.
const INIT_CHUNK: usize = 4096;
/// Relative gain below which an edge counts as flat (weight 0).
const FLAT_REL: f64 = 1e-12;
/// Maximum number of power-iteration steps per cluster update.
const POWER_MAX_ITER: usize = 300;

/// Initialisation method of [`spherical_kmeans`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// k-means++: D^2 sampling with the sign-invariant distance, seeded ChaCha8 RNG.
    #[default]
    KMeansPlusPlus,
}

/// Parameters of [`spherical_kmeans`] (and of [`crate::gsb::fit`]).
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansParams {
    /// Number of codewords `K` (`1 <= K <= E`).
    pub k: usize,
    /// Maximum number of iterations (0 = initialisation and one assignment only).
    pub n_iter: usize,
    /// Stop when the relative objective improvement `(J_prev - J) / J_prev` is below this.
    pub tol: f64,
    /// Seed of the ChaCha8 RNG used by the initialisation.
    pub seed: u64,
    /// Initialisation method.
    pub init: Init,
}

impl Default for KMeansParams {
    fn default() -> Self {
        KMeansParams {
            k: 256,
            n_iter: 25,
            tol: 1e-4,
            seed: 0,
            init: Init::KMeansPlusPlus,
        }
    }
}

/// Result of [`spherical_kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansResult {
    /// Unit-norm codewords `(K, M)` (a zero row only where no non-flat edge was left).
    pub centroids: Array2<f64>,
    /// Code of every edge, `E` values in `0..K`.
    pub codes: Vec<u32>,
    /// Objective `J` after initialisation, then after each iteration (non-increasing).
    pub objective: Vec<f64>,
    /// Number of iterations run.
    pub iterations: usize,
    /// Whether the run stopped on `tol` (or on `J = 0`) rather than on `n_iter`.
    pub converged: bool,
    /// Number of empty clusters reseeded over the whole run.
    pub reseeds: usize,
}

/// Weighted sign-invariant spherical k-means over the rows of `residuals (E, M)`.
///
/// Edge weights `||r_e||^2` are implicit. See the module documentation and ARCHITECTURE
/// §3 for the exact rules (initialisation, f32 assignment verified in f64, deterministic
/// reseeding, power-iteration update, stopping).
///
/// # Errors
/// [`Error::Shape`] if `E == 0` or `M == 0`; [`Error::InvalidValue`] if `K == 0`,
/// `K > E`, `K > u32::MAX` or `tol` is negative or NaN; [`Error::NonFinite`] for NaN/Inf
/// residuals.
pub fn spherical_kmeans(
    residuals: ArrayView2<'_, f64>,
    params: &KMeansParams,
) -> Result<KMeansResult> {
    let (e, m) = residuals.dim();
    if e == 0 || m == 0 {
        return Err(Error::shape(
            "residuals",
            "(E, M) with E >= 1 and M >= 1",
            fmt_shape(&[e, m]),
        ));
    }
    let k = params.k;
    if k == 0 {
        return Err(Error::invalid(
            "k",
            "codebook size K must be at least 1, got 0",
        ));
    }
    if k > e {
        return Err(Error::invalid(
            "k",
            format!("codebook size K = {k} exceeds the number of edges E = {e}"),
        ));
    }
    if k > u32::MAX as usize {
        return Err(Error::invalid(
            "k",
            format!("K = {k} does not fit in u32 codes"),
        ));
    }
    if params.tol.is_nan() || params.tol < 0.0 {
        return Err(Error::invalid(
            "tol",
            format!("tolerance must be >= 0, got {}", params.tol),
        ));
    }
    let std = residuals.as_standard_layout();
    let r = std
        .as_slice()
        .ok_or_else(|| Error::invalid("residuals", "could not be made contiguous"))?;
    check_finite("residuals", r.iter())?;
    let mut state = State::new(r, e, m, k);
    state.init(params.seed);
    let mut codes = vec![0u32; e];
    let mut err = vec![0.0f64; e];
    let mut objective = Vec::with_capacity(params.n_iter + 1);
    let mut j = state.assign(true, &mut codes, &mut err);
    objective.push(j);
    let mut iterations = 0;
    let mut converged = j == 0.0;
    let mut reseeds = 0;
    let mut saved_cent = Vec::new();
    let mut saved_codes = Vec::new();
    let mut saved_err = Vec::new();
    while !converged && iterations < params.n_iter {
        saved_cent.clone_from(&state.cent);
        saved_codes.clone_from(&codes);
        saved_err.clone_from(&err);
        let n_reseeded = state.reseed(&codes, &err);
        state.update(&codes);
        let mut j_new = state.assign(false, &mut codes, &mut err);
        iterations += 1;
        if j_new > j {
            // Only rounding can make J grow (each step is monotone in exact arithmetic):
            // keep the previous state, so the reported history never increases.
            state.cent.clone_from(&saved_cent);
            state.refresh_cent32();
            codes.clone_from(&saved_codes);
            err.clone_from(&saved_err);
            j_new = j;
            // The same step would be taken again from the same state: stop here.
            converged = true;
        } else {
            reseeds += n_reseeded;
        }
        objective.push(j_new);
        if j_new == 0.0 || (j - j_new) / j < params.tol {
            converged = true;
        }
        j = j_new;
    }
    let centroids = Array2::from_shape_vec((k, m), state.cent)
        .map_err(|err| Error::invalid("centroids", err.to_string()))?;
    Ok(KMeansResult {
        centroids,
        codes,
        objective,
        iterations,
        converged,
        reseeds,
    })
}

/// Working state of one k-means run.
struct State<'a> {
    /// Residuals `(E, M)` row-major, f64.
    r: &'a [f64],
    /// Residuals as f32 for the score products.
    r32: Vec<f32>,
    /// `||r_e||^2`.
    norm2: Vec<f64>,
    /// Flat edges (weight 0).
    flat: Vec<bool>,
    /// Centroids `(K, M)` row-major, f64 (unit norm or zero).
    cent: Vec<f64>,
    /// Centroids as f32.
    cent32: Vec<f32>,
    e: usize,
    m: usize,
    k: usize,
}

impl<'a> State<'a> {
    fn new(r: &'a [f64], e: usize, m: usize, k: usize) -> Self {
        let norm2: Vec<f64> = r.par_chunks(m).map(|row| dot(row, row)).collect();
        let max_gamma = norm2.iter().fold(0.0_f64, |a, &b| a.max(b)).sqrt();
        let flat = norm2
            .iter()
            .map(|&n2| {
                let g = n2.sqrt();
                g == 0.0 || g <= FLAT_REL * max_gamma
            })
            .collect();
        State {
            r,
            r32: r.iter().map(|&v| v as f32).collect(),
            norm2,
            flat,
            cent: vec![0.0; k * m],
            cent32: vec![0.0; k * m],
            e,
            m,
            k,
        }
    }

    #[inline]
    fn row(&self, e: usize) -> &[f64] {
        &self.r[e * self.m..(e + 1) * self.m]
    }

    /// Sets centroid `q` to `r_e / ||r_e||`, sign-fixed.
    fn set_centroid_from_edge(&mut self, q: usize, e: usize) {
        let m = self.m;
        let nrm = self.norm2[e].sqrt();
        let (r, cent) = (self.r, &mut self.cent);
        let c = &mut cent[q * m..(q + 1) * m];
        for (ci, ri) in c.iter_mut().zip(&r[e * m..(e + 1) * m]) {
            *ci = ri / nrm;
        }
        fix_sign(c);
    }

    fn refresh_cent32(&mut self) {
        for (d, s) in self.cent32.iter_mut().zip(&self.cent) {
            *d = *s as f32;
        }
    }

    /// k-means++ initialisation (D^2 sampling with the sign-invariant distance).
    fn init(&mut self, seed: u64) {
        let (e, m) = (self.e, self.m);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut d: Vec<f64> = (0..e)
            .map(|i| if self.flat[i] { 0.0 } else { self.norm2[i] })
            .collect();
        // f32 residuals transposed to (M, E): the distance update streams half the bytes
        // and vectorises across edges.
        let mut rt = vec![0.0f32; m * e];
        for (i, row) in self.r32.chunks_exact(m).enumerate() {
            for (jj, &v) in row.iter().enumerate() {
                rt[jj * e + i] = v;
            }
        }
        let mut chosen = vec![false; e];
        let mut next_unchosen = 0usize;
        let mut chunk_sums: Vec<f64> = d.chunks(INIT_CHUNK).map(|c| c.iter().sum()).collect();
        for q in 0..self.k {
            if q > 0 {
                let c = &self.cent[(q - 1) * m..q * m];
                if c.iter().any(|&v| v != 0.0) {
                    let c32: Vec<f32> = c.iter().map(|&v| v as f32).collect();
                    let c32 = &c32;
                    let norm2 = &self.norm2;
                    let rt = &rt;
                    chunk_sums = d
                        .par_chunks_mut(INIT_CHUNK)
                        .enumerate()
                        .map_init(
                            || vec![0.0f32; INIT_CHUNK],
                            |proj, (ci, dc)| {
                                let base = ci * INIT_CHUNK;
                                let n = dc.len();
                                let proj = &mut proj[..n];
                                // <r_e, c> for the whole chunk, vectorised across edges
                                // (per edge still summed in component order).
                                proj.fill(0.0);
                                for (jj, &cj) in c32.iter().enumerate() {
                                    let col = &rt[jj * e + base..jj * e + base + n];
                                    for (pv, &rv) in proj.iter_mut().zip(col) {
                                        *pv += rv * cj;
                                    }
                                }
                                let mut s = 0.0;
                                for (t, (dv, &p)) in dc.iter_mut().zip(proj.iter()).enumerate() {
                                    let p = p as f64;
                                    let dist = (norm2[base + t] - p * p).max(0.0);
                                    if dist < *dv {
                                        *dv = dist;
                                    }
                                    s += *dv;
                                }
                                s
                            },
                        )
                        .collect();
                }
            }
            let total: f64 = chunk_sums.iter().sum();
            let mut pick = None;
            if total > 0.0 && total.is_finite() {
                let u = rng.random::<f64>() * total;
                pick = sample(&d, &chunk_sums, u);
            }
            if pick.is_none() {
                // All remaining distances are 0: lowest-index unchosen non-flat edge.
                while next_unchosen < e && (chosen[next_unchosen] || self.flat[next_unchosen]) {
                    next_unchosen += 1;
                }
                pick = (next_unchosen < e).then_some(next_unchosen);
            }
            match pick {
                Some(i) => {
                    chosen[i] = true;
                    let ci = i / INIT_CHUNK;
                    chunk_sums[ci] -= d[i];
                    d[i] = 0.0;
                    self.set_centroid_from_edge(q, i);
                }
                None => {
                    // No non-flat edge left: a zero codeword.
                    self.cent[q * m..(q + 1) * m].fill(0.0);
                }
            }
        }
        self.refresh_cent32();
    }

    /// Assignment step. Scores in f32 by sgemm over fixed-size row blocks; candidates
    /// within f32 rounding of the best |score| are compared in f64 (ties to the lowest
    /// index); unless `first`, the old code is kept unless the new one is strictly
    /// better in f64. Writes codes and per-edge errors; returns the objective.
    fn assign(&self, first: bool, codes: &mut [u32], err: &mut [f64]) -> f64 {
        let (m, k) = (self.m, self.k);
        let margin_factor = 4.0 * (m as f32 + 2.0) * f32::EPSILON;
        let sums: Vec<f64> = codes
            .par_chunks_mut(ASSIGN_CHUNK)
            .zip(err.par_chunks_mut(ASSIGN_CHUNK))
            .enumerate()
            .map_init(
                || vec![0.0f32; ASSIGN_CHUNK * k],
                |buf, (ci, (codes_c, err_c))| {
                    let start = ci * ASSIGN_CHUNK;
                    let rows = codes_c.len();
                    let a = &self.r32[start * m..(start + rows) * m];
                    let scores = &mut buf[..rows * k];
                    // SAFETY: a is rows x m (row stride m), cent32 is k x m read as its
                    // transpose m x k (row stride 1, column stride m), scores is rows x k;
                    // all slices are exactly that long and do not alias.
                    unsafe {
                        matrixmultiply::sgemm(
                            rows,
                            m,
                            k,
                            1.0,
                            a.as_ptr(),
                            m as isize,
                            1,
                            self.cent32.as_ptr(),
                            1,
                            m as isize,
                            0.0,
                            scores.as_mut_ptr(),
                            k as isize,
                            1,
                        );
                    }
                    let mut sum = 0.0;
                    for t in 0..rows {
                        let i = start + t;
                        let s = &scores[t * k..(t + 1) * k];
                        let best_abs = max_abs(s);
                        let thr = best_abs - margin_factor * (self.norm2[i].sqrt() as f32);
                        let row = self.row(i);
                        let mut best_q = usize::MAX;
                        let mut best_sc = -1.0f64;
                        for (b, block) in s.chunks(16).enumerate() {
                            if !any_at_least(block, thr) {
                                continue;
                            }
                            for (o, v) in block.iter().enumerate() {
                                if v.abs() >= thr {
                                    let q = b * 16 + o;
                                    let p = dot(row, &self.cent[q * m..(q + 1) * m]);
                                    let sc = p * p;
                                    if sc > best_sc {
                                        best_sc = sc;
                                        best_q = q;
                                    }
                                }
                            }
                        }
                        if best_q == usize::MAX {
                            // Only possible with NaN scores; fall back to codeword 0.
                            best_q = 0;
                            let p = dot(row, &self.cent[..m]);
                            best_sc = p * p;
                        }
                        let score = if first {
                            codes_c[t] = best_q as u32;
                            best_sc
                        } else {
                            let old = codes_c[t] as usize;
                            let p = dot(row, &self.cent[old * m..(old + 1) * m]);
                            let old_sc = p * p;
                            if best_sc > old_sc {
                                codes_c[t] = best_q as u32;
                                best_sc
                            } else {
                                old_sc
                            }
                        };
                        let ev = (self.norm2[i] - score).max(0.0);
                        err_c[t] = ev;
                        sum += ev;
                    }
                    sum
                },
            )
            .collect();
        sums.iter().sum()
    }

    /// Reseeds empty clusters (ascending q) with the edges of largest current error
    /// (ties: lowest index), each edge used at most once. Returns the number reseeded.
    fn reseed(&mut self, codes: &[u32], err: &[f64]) -> usize {
        let mut counts = vec![0usize; self.k];
        for &c in codes {
            counts[c as usize] += 1;
        }
        let empty: Vec<usize> = (0..self.k).filter(|&q| counts[q] == 0).collect();
        if empty.is_empty() {
            return 0;
        }
        let mut cand: Vec<(f64, usize)> = (0..self.e)
            .filter(|&i| !self.flat[i] && err[i] > 0.0)
            .map(|i| (err[i], i))
            .collect();
        let order = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let n = empty.len().min(cand.len());
        if n == 0 {
            return 0;
        }
        if n < cand.len() {
            cand.select_nth_unstable_by(n - 1, order);
            cand.truncate(n);
        }
        cand.sort_unstable_by(order);
        for (&q, &(_, i)) in empty.iter().zip(&cand) {
            self.set_centroid_from_edge(q, i);
        }
        self.refresh_cent32();
        n
    }

    /// Update step: per cluster, top eigenvector of `S_q = sum r r^T` (edge-index order),
    /// warm-started from the old centroid, kept only if its Rayleigh quotient is not lower.
    fn update(&mut self, codes: &[u32]) {
        let (m, k) = (self.m, self.k);
        let mm = m * m;
        // One sequential streaming pass in edge-index order: the scatter matrices of all
        // clusters (K * M * M f64) stay in cache while the residuals are read in order.
        let mut s_all = vec![0.0f64; k * mm];
        let mut biggest = vec![usize::MAX; k];
        for (i, (ri, &c)) in self.r.chunks_exact(m).zip(codes).enumerate() {
            let q = c as usize;
            let s = &mut s_all[q * mm..(q + 1) * mm];
            // Full square (exactly symmetric: same products, same order).
            for (srow, &ra) in s.chunks_exact_mut(m).zip(ri) {
                for (sv, &rb) in srow.iter_mut().zip(ri) {
                    *sv += ra * rb;
                }
            }
            let b = biggest[q];
            if b == usize::MAX || self.norm2[i] > self.norm2[b] {
                biggest[q] = i;
            }
        }
        let r = self.r;
        self.cent
            .par_chunks_mut(m)
            .zip(s_all.par_chunks(mm))
            .zip(biggest.par_iter())
            .for_each_init(
                || (vec![0.0f64; m], vec![0.0f64; m]),
                |(v, scratch), ((c, s), &big)| {
                    if big == usize::MAX {
                        return; // empty cluster
                    }
                    let c_is_zero = c.iter().all(|&x| x == 0.0);
                    let rq_old = if c_is_zero {
                        0.0
                    } else {
                        rayleigh(s, m, c, scratch)
                    };
                    v.copy_from_slice(c);
                    let mut ok = !c_is_zero && power_iteration(s, m, v, scratch, POWER_MAX_ITER);
                    if !ok {
                        v.copy_from_slice(&r[big * m..(big + 1) * m]);
                        ok = power_iteration(s, m, v, scratch, POWER_MAX_ITER);
                    }
                    if !ok {
                        return;
                    }
                    let nv = norm(v);
                    v.iter_mut().for_each(|x| *x /= nv);
                    let rq_new = rayleigh(s, m, v, scratch);
                    if rq_new >= rq_old {
                        fix_sign(v);
                        c.copy_from_slice(v);
                    }
                },
            );
        self.refresh_cent32();
    }
}

/// Picks the first edge whose running sum of `d` exceeds `u` (edges with `d > 0` only),
/// walking fixed-size chunks in order; falls back to the last edge with `d > 0`.
fn sample(d: &[f64], chunk_sums: &[f64], u: f64) -> Option<usize> {
    let mut acc = 0.0;
    let mut last_positive = None;
    for (ci, &cs) in chunk_sums.iter().enumerate() {
        let chunk = &d[ci * INIT_CHUNK..((ci + 1) * INIT_CHUNK).min(d.len())];
        if acc + cs <= u {
            acc += cs;
            if let Some(p) = chunk.iter().rposition(|&v| v > 0.0) {
                last_positive = Some(ci * INIT_CHUNK + p);
            }
            continue;
        }
        let mut inner = acc;
        for (t, &v) in chunk.iter().enumerate() {
            if v > 0.0 {
                inner += v;
                last_positive = Some(ci * INIT_CHUNK + t);
                if inner > u {
                    return last_positive;
                }
            }
        }
        acc += cs;
    }
    last_positive
}

/// Largest absolute value of a slice (vectorisable: 8 independent lanes).
#[inline]
fn max_abs(s: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut blocks = s.chunks_exact(8);
    for b in &mut blocks {
        for (l, v) in lanes.iter_mut().zip(b) {
            let a = v.abs();
            *l = if a > *l { a } else { *l };
        }
    }
    let mut best = lanes.iter().fold(0.0f32, |a, &b| if b > a { b } else { a });
    for v in blocks.remainder() {
        if v.abs() > best {
            best = v.abs();
        }
    }
    best
}

/// Whether any `|v| >= thr` in a block.
#[inline]
fn any_at_least(block: &[f32], thr: f32) -> bool {
    block.iter().map(|v| (v.abs() >= thr) as u32).sum::<u32>() > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use proptest::prelude::*;
    use rand::Rng;

    fn random_residuals(e: usize, m: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((e, m), |_| rng.random::<f64>() * 2.0 - 1.0)
    }

    fn objective_of(r: &Array2<f64>, res: &KMeansResult) -> f64 {
        let mut j = 0.0;
        for (i, row) in r.rows().into_iter().enumerate() {
            let c = res.centroids.row(res.codes[i] as usize);
            let p = row.dot(&c);
            j += (row.dot(&row) - p * p).max(0.0);
        }
        j
    }

    fn run_in_pool(threads: usize, r: &Array2<f64>, p: &KMeansParams) -> KMeansResult {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| spherical_kmeans(r.view(), p).unwrap())
    }

    #[test]
    fn errors() {
        let r = random_residuals(10, 4, 0);
        let p = |k| KMeansParams {
            k,
            ..KMeansParams::default()
        };
        assert!(matches!(
            spherical_kmeans(r.view(), &p(0)),
            Err(Error::InvalidValue { .. })
        ));
        assert!(matches!(
            spherical_kmeans(r.view(), &p(11)),
            Err(Error::InvalidValue { .. })
        ));
        let empty = Array2::<f64>::zeros((0, 4));
        assert!(matches!(
            spherical_kmeans(empty.view(), &p(1)),
            Err(Error::Shape { .. })
        ));
        let empty = Array2::<f64>::zeros((4, 0));
        assert!(matches!(
            spherical_kmeans(empty.view(), &p(1)),
            Err(Error::Shape { .. })
        ));
        let mut bad = r.clone();
        bad[[2, 1]] = f64::NAN;
        assert!(matches!(
            spherical_kmeans(bad.view(), &p(2)),
            Err(Error::NonFinite { index: 9, .. })
        ));
        let mut q = p(2);
        q.tol = f64::NAN;
        assert!(matches!(
            spherical_kmeans(r.view(), &q),
            Err(Error::InvalidValue { .. })
        ));
    }

    #[test]
    fn recovers_planted_directions_with_signs() {
        // Three directions, random signs and gains, small noise.
        let m = 6;
        let dirs = random_residuals(3, m, 7);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let e = 300;
        let mut r = Array2::<f64>::zeros((e, m));
        for i in 0..e {
            let d = dirs.row(i % 3);
            let g = (rng.random::<f64>() + 0.5) * if rng.random::<bool>() { 1.0 } else { -1.0 };
            for j in 0..m {
                r[[i, j]] = g * d[j] + 1e-3 * (rng.random::<f64>() - 0.5);
            }
        }
        let res = spherical_kmeans(
            r.view(),
            &KMeansParams {
                k: 3,
                n_iter: 50,
                tol: 0.0,
                seed: 1,
                init: Init::KMeansPlusPlus,
            },
        )
        .unwrap();
        for i in 0..e {
            assert_eq!(res.codes[i], res.codes[i % 3]);
        }
        let total: f64 = r.iter().map(|v| v * v).sum();
        assert!(res.objective.last().unwrap() / total < 1e-5);
        for row in res.centroids.rows() {
            assert!((row.dot(&row) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn flat_edges_and_zero_codewords() {
        let mut r = Array2::<f64>::zeros((5, 3));
        r[[1, 0]] = 2.0;
        r[[3, 2]] = -1.0;
        let res = spherical_kmeans(
            r.view(),
            &KMeansParams {
                k: 4,
                ..KMeansParams::default()
            },
        )
        .unwrap();
        assert_eq!(res.objective[0], 0.0);
        assert!(res.converged);
        let zero_rows = res
            .centroids
            .rows()
            .into_iter()
            .filter(|c| c.iter().all(|&v| v == 0.0))
            .count();
        assert_eq!(zero_rows, 2);
        // All flat: every codeword is zero, J = 0.
        let z = Array2::<f64>::zeros((4, 3));
        let res = spherical_kmeans(
            z.view(),
            &KMeansParams {
                k: 2,
                ..KMeansParams::default()
            },
        )
        .unwrap();
        assert!(res.centroids.iter().all(|&v| v == 0.0));
        assert_eq!(res.objective, vec![0.0]);
    }

    #[test]
    fn deterministic_across_thread_counts_and_seeds_matter() {
        let r = random_residuals(5000, 9, 11);
        let p = KMeansParams {
            k: 37,
            n_iter: 8,
            tol: 0.0,
            seed: 5,
            init: Init::KMeansPlusPlus,
        };
        let a = run_in_pool(1, &r, &p);
        let b = run_in_pool(2, &r, &p);
        let c = run_in_pool(3, &r, &p);
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.iterations, 8);
        let other = run_in_pool(
            2,
            &r,
            &KMeansParams {
                seed: 6,
                ..p.clone()
            },
        );
        assert_ne!(a.codes, other.codes);
        assert!((objective_of(&r, &a) - a.objective.last().unwrap()).abs() < 1e-9 * a.objective[0]);
    }

    #[test]
    fn empty_clusters_are_reseeded() {
        // Many duplicates: k-means++ picks distinct points, but tiny K vs duplicates
        // structure can produce empty clusters; check the bookkeeping stays valid.
        let base = random_residuals(4, 5, 2);
        let r = Array2::from_shape_fn((400, 5), |(i, j)| {
            base[[i % 4, j]] * (1.0 + (i / 4) as f64 * 1e-3)
        });
        let res = spherical_kmeans(
            r.view(),
            &KMeansParams {
                k: 10,
                n_iter: 10,
                tol: 0.0,
                seed: 0,
                init: Init::KMeansPlusPlus,
            },
        )
        .unwrap();
        assert!(res.codes.iter().all(|&c| c < 10));
        for w in res.objective.windows(2) {
            assert!(w[1] <= w[0]);
        }
    }

    #[test]
    fn sampling_walks_chunks() {
        let d = vec![0.0, 1.0, 0.0, 2.0];
        let sums = vec![3.0];
        assert_eq!(sample(&d, &sums, 0.5), Some(1));
        assert_eq!(sample(&d, &sums, 1.0), Some(3));
        assert_eq!(sample(&d, &sums, 2.99), Some(3));
        assert_eq!(sample(&d, &sums, 3.5), Some(3));
        assert_eq!(
            max_abs(&[1.0, -3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -4.0]),
            4.0
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn objective_never_increases_and_is_thread_invariant(
            e in 1usize..400, m in 1usize..10, kfrac in 0.0f64..1.0, seed in 0u64..1000,
        ) {
            let k = 1 + ((e - 1) as f64 * kfrac * 0.3) as usize;
            let r = random_residuals(e, m, seed);
            let p = KMeansParams { k, n_iter: 6, tol: 0.0, seed, init: Init::KMeansPlusPlus };
            let a = run_in_pool(1, &r, &p);
            let b = run_in_pool(2, &r, &p);
            prop_assert_eq!(&a, &b);
            for w in a.objective.windows(2) {
                prop_assert!(w[1] <= w[0], "objective increased: {:?}", a.objective);
            }
            prop_assert!(a.codes.iter().all(|&c| (c as usize) < k));
            let j = objective_of(&r, &a);
            prop_assert!((j - a.objective.last().unwrap()).abs() <= 1e-9 * (1.0 + a.objective[0]));
        }
    }
}
