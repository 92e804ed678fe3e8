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
use scan::{Codebook32, Top2};

mod scan;

/// Edges per block of the assignment step (independent of the thread count).
const ASSIGN_CHUNK: usize = 1024;
/// Edges per block of the k-means++ distance update and prefix sums.
const INIT_CHUNK: usize = 256;
/// Edges per parallel block when pending k-means++ centres are applied (multiple of
/// INIT_CHUNK).
const APPLY_CHUNK: usize = 4096;
/// Most pending k-means++ centres before they are applied to all edges.
const INIT_BATCH_MAX: usize = 64;
/// Rejections in a row after which the pending centres are applied.
const INIT_MAX_REJECT: usize = 8;
/// Relative gain below which an edge counts as flat (weight 0).
const FLAT_REL: f64 = 1e-12;
/// Fixed number of cluster groups whose scatter matrices are accumulated in parallel.
const UPDATE_GROUPS: usize = 2;
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
    pub n_codes: usize,
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
            n_codes: 256,
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
    let n_codes = params.n_codes;
    if n_codes == 0 {
        return Err(Error::invalid(
            "k",
            "codebook size K must be at least 1, got 0",
        ));
    }
    if n_codes > e {
        return Err(Error::invalid(
            "k",
            format!("codebook size K = {n_codes} exceeds the number of edges E = {e}"),
        ));
    }
    if n_codes > u32::MAX as usize {
        return Err(Error::invalid(
            "k",
            format!("K = {n_codes} does not fit in u32 codes"),
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
    let mut state = State::new(r, e, m, n_codes);
    state.init(params.seed);
    let mut codes = vec![0u32; e];
    let mut err = vec![0.0f64; e];
    let mut objective = Vec::with_capacity(params.n_iter + 1);
    let mut j = state.assign(None, &mut codes, &mut err);
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
        let drift = Drift::new(&saved_cent, &state.cent, m);
        let mut j_new = state.assign(Some(&drift), &mut codes, &mut err);
        iterations += 1;
        if j_new > j {
            // Only rounding can make J grow (each step is monotone in exact arithmetic):
            // keep the previous state, so the reported history never increases.
            state.cent.clone_from(&saved_cent);
            state.refresh_cb();
            state.ub.fill(f64::INFINITY);
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
    let centroids = Array2::from_shape_vec((n_codes, m), state.cent)
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

/// Largest move of a centroid between two iterations, sign-invariant:
/// `d_j = min(||c_new - c_old||, ||c_new + c_old||)`, so `|<r, c_j>|` changes by at most
/// `||r|| d_j`. Keeps the largest and second largest so that `max_{j != q} d_j` is O(1).
#[derive(Debug, Clone, Copy)]
struct Drift {
    d1: f64,
    q1: usize,
    d2: f64,
}

impl Drift {
    fn new(old: &[f64], new: &[f64], m: usize) -> Self {
        let mut dr = Drift {
            d1: 0.0,
            q1: usize::MAX,
            d2: 0.0,
        };
        for (q, (a, b)) in old.chunks_exact(m).zip(new.chunks_exact(m)).enumerate() {
            let (mut minus, mut plus) = (0.0f64, 0.0f64);
            for (&x, &y) in a.iter().zip(b) {
                minus += (y - x) * (y - x);
                plus += (y + x) * (y + x);
            }
            // Inflated to cover the rounding of this computation.
            let d = minus.min(plus).sqrt() * (1.0 + 1e-12) + 1e-14;
            if d > dr.d1 {
                dr.d2 = dr.d1;
                dr.d1 = d;
                dr.q1 = q;
            } else if d > dr.d2 {
                dr.d2 = d;
            }
        }
        dr
    }

    /// `max_{j != q} d_j`.
    #[inline]
    fn others(&self, q: usize) -> f64 {
        if q == self.q1 {
            self.d2
        } else {
            self.d1
        }
    }
}

/// Working state of one k-means run.
struct State<'a> {
    /// Residuals `(E, M)` row-major, f64.
    r: &'a [f64],
    /// Residuals as f32 for the score products.
    r32: Vec<f32>,
    /// `||r_e||^2`.
    norm2: Vec<f64>,
    /// `||r_e||`.
    nrm: Vec<f64>,
    /// Flat edges (weight 0).
    flat: Vec<bool>,
    /// Centroids `(K, M)` row-major, f64 (unit norm or zero).
    cent: Vec<f64>,
    /// Centroids as f32, transposed for the score kernel.
    cb: Codebook32,
    /// Per edge, an upper bound on `max_{j != q_e} |<r_e, c_j>|` (exact arithmetic), valid
    /// for the current centroids; `+inf` when unknown.
    ub: Vec<f64>,
    e: usize,
    m: usize,
    n_codes: usize,
}

impl<'a> State<'a> {
    fn new(r: &'a [f64], e: usize, m: usize, n_codes: usize) -> Self {
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
            nrm: norm2.iter().map(|v| v.sqrt()).collect(),
            norm2,
            flat,
            cent: vec![0.0; n_codes * m],
            cb: Codebook32::new(m, n_codes),
            ub: vec![f64::INFINITY; e],
            e,
            m,
            n_codes,
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

    fn refresh_cb(&mut self) {
        self.cb.set(&self.cent);
    }

    /// k-means++ initialisation: exact D^2 sampling with the sign-invariant distance,
    /// computed lazily.
    ///
    /// `d` holds, per edge, the distance to the nearest centre among those *applied* so
    /// far; it is an upper bound of the true D^2 weight while newer centres are pending.
    /// An edge is drawn with probability proportional to `d` (chunked prefix sums) and
    /// accepted with probability `d_true / d` (rejection sampling, so the accepted edge
    /// follows the exact D^2 law); a rejected edge gets its exact `d`. Pending centres are
    /// applied to all edges in one pass (the f32 score kernel, many centres at once)
    /// when there are too many of them or after repeated rejections. Distances use f32
    /// projections `p` and `max(||r||^2 - p^2, 0)` in f64, the same values whichever way
    /// they are computed. Sequential decisions, fixed chunks: thread-count independent.
    fn init(&mut self, seed: u64) {
        let (e, m, n_codes) = (self.e, self.m, self.n_codes);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut d: Vec<f64> = (0..e)
            .map(|i| if self.flat[i] { 0.0 } else { self.norm2[i] })
            .collect();
        let mut chunk_sums: Vec<f64> = d.chunks(INIT_CHUNK).map(|c| c.iter().sum()).collect();
        let mut chosen = vec![false; e];
        let mut next_unchosen = 0usize;
        let mut pend = Codebook32::new(m, INIT_BATCH_MAX);
        let mut pending: Vec<f64> = Vec::with_capacity(INIT_BATCH_MAX * m);
        let mut one = [Top2::default()];
        for q in 0..n_codes {
            let limit = (q / 8).clamp(1, INIT_BATCH_MAX);
            if pending.len() >= limit * m {
                self.apply_pending(&mut d, &mut chunk_sums, &pend, &mut pending);
            }
            let mut rejections = 0;
            let pick = loop {
                let total: f64 = chunk_sums.iter().sum();
                let drawn = if total > 0.0 && total.is_finite() {
                    let u = rng.random::<f64>() * total;
                    sample(&d, &chunk_sums, u)
                } else {
                    None
                };
                let Some(i) = drawn else {
                    if pending.is_empty() {
                        break None;
                    }
                    self.apply_pending(&mut d, &mut chunk_sums, &pend, &mut pending);
                    continue;
                };
                if pending.is_empty() {
                    break Some(i);
                }
                pend.top2(&self.r32[i * m..(i + 1) * m], &mut one);
                let p = one[0].best as f64;
                let exact = d[i].min((self.norm2[i] - p * p).max(0.0));
                if rng.random::<f64>() * d[i] < exact {
                    break Some(i);
                }
                if exact != d[i] {
                    d[i] = exact;
                    let ci = i / INIT_CHUNK;
                    chunk_sums[ci] = d[ci * INIT_CHUNK..((ci + 1) * INIT_CHUNK).min(e)]
                        .iter()
                        .sum();
                }
                rejections += 1;
                if rejections >= INIT_MAX_REJECT {
                    self.apply_pending(&mut d, &mut chunk_sums, &pend, &mut pending);
                }
            };
            let pick = pick.or_else(|| {
                // All remaining distances are 0: lowest-index unchosen non-flat edge.
                while next_unchosen < e && (chosen[next_unchosen] || self.flat[next_unchosen]) {
                    next_unchosen += 1;
                }
                (next_unchosen < e).then_some(next_unchosen)
            });
            match pick {
                Some(i) => {
                    chosen[i] = true;
                    if d[i] != 0.0 {
                        d[i] = 0.0;
                        let ci = i / INIT_CHUNK;
                        chunk_sums[ci] = d[ci * INIT_CHUNK..((ci + 1) * INIT_CHUNK).min(e)]
                            .iter()
                            .sum();
                    }
                    self.set_centroid_from_edge(q, i);
                    pending.extend_from_slice(&self.cent[q * m..(q + 1) * m]);
                    pend.truncate(pending.len() / m);
                    pend.set(&pending);
                }
                None => {
                    // No non-flat edge left: a zero codeword.
                    self.cent[q * m..(q + 1) * m].fill(0.0);
                }
            }
        }
        self.refresh_cb();
    }

    /// Applies the pending centres to every edge: `d = min(d, ||r||^2 - max_c p_c^2)`,
    /// chunk sums recomputed in order. Fixed chunks: thread-count independent.
    fn apply_pending(
        &self,
        d: &mut [f64],
        chunk_sums: &mut [f64],
        pend: &Codebook32,
        pending: &mut Vec<f64>,
    ) {
        let m = self.m;
        let n_pend = pending.len() / m;
        if n_pend == 0 {
            return;
        }
        // `pend` holds exactly the pending centres (kept in sync as they are added).
        let (r32, norm2) = (&self.r32, &self.norm2);
        d.par_chunks_mut(APPLY_CHUNK)
            .zip(chunk_sums.par_chunks_mut(APPLY_CHUNK / INIT_CHUNK))
            .enumerate()
            .for_each_init(Vec::new, |tops, (ci, (dc, sums))| {
                let base = ci * APPLY_CHUNK;
                let n = dc.len();
                tops.resize(n, Top2::default());
                pend.top2(&r32[base * m..(base + n) * m], tops);
                for (t, (dv, top)) in dc.iter_mut().zip(tops.iter()).enumerate() {
                    if *dv > 0.0 {
                        let p = top.best as f64;
                        let dist = (norm2[base + t] - p * p).max(0.0);
                        if dist < *dv {
                            *dv = dist;
                        }
                    }
                }
                for (s, c) in sums.iter_mut().zip(dc.chunks(INIT_CHUNK)) {
                    *s = c.iter().sum();
                }
            });
        pending.clear();
    }

    /// Assignment step (`drift = None`: the first one, after the initialisation).
    ///
    /// Exactly equivalent to: f64 scores `<r_e, c_q>` (by [`dot`]) for every codeword,
    /// best `|score|` with ties to the lowest index, then (unless first) the old code
    /// kept unless the best is strictly better. Computed as follows: (1) an edge whose
    /// bound `ub_e` on the other codewords (moved by the centroid drifts) is below its
    /// f64 score with its own codeword by more than f64 rounding keeps its code; (2)
    /// otherwise f32 scores against all codewords give the best and second best; if the
    /// second is within f32 rounding of the best, every codeword is scored in f64.
    /// Writes codes, per-edge errors and bounds; returns the objective.
    fn assign(&mut self, drift: Option<&Drift>, codes: &mut [u32], err: &mut [f64]) -> f64 {
        let (m, n_codes) = (self.m, self.n_codes);
        // Bound on the f32 error of one score (inputs rounded to f32, M-term sum):
        // (M + 2) eps ||r|| with a factor 2 of safety.
        let margin32 = 2.0 * (m as f64 + 2.0) * f32::EPSILON as f64;
        let margin64 = 2.0 * (m as f64 + 2.0) * f64::EPSILON;
        let mut ub = std::mem::take(&mut self.ub);
        let this = &*self;
        let sums: Vec<f64> = codes
            .par_chunks_mut(ASSIGN_CHUNK)
            .zip(err.par_chunks_mut(ASSIGN_CHUNK))
            .zip(ub.par_chunks_mut(ASSIGN_CHUNK))
            .enumerate()
            .map_init(
                || (Vec::new(), Vec::new(), Vec::new()),
                |(todo, rows, tops): &mut (Vec<usize>, Vec<f32>, Vec<Top2>),
                 (ci, ((codes_c, err_c), ub_c))| {
                    let start = ci * ASSIGN_CHUNK;
                    todo.clear();
                    rows.clear();
                    for t in 0..codes_c.len() {
                        let i = start + t;
                        if let Some(dr) = drift {
                            let q = codes_c[t] as usize;
                            let nrm = this.nrm[i];
                            let bound = ub_c[t] + nrm * dr.others(q);
                            let p = dot(this.row(i), &this.cent[q * m..(q + 1) * m]);
                            if p.abs() > bound + 2.0 * margin64 * nrm {
                                // No other codeword can score as high, even in f64.
                                ub_c[t] = bound;
                                err_c[t] = (this.norm2[i] - p * p).max(0.0);
                                continue;
                            }
                        }
                        todo.push(t);
                        rows.extend_from_slice(&this.r32[i * m..(i + 1) * m]);
                    }
                    tops.resize(todo.len(), Top2::default());
                    this.cb.top2(rows, tops);
                    for (&t, top) in todo.iter().zip(tops.iter()) {
                        let i = start + t;
                        let row = this.row(i);
                        let nrm = this.nrm[i];
                        let tol32 = margin32 * nrm;
                        let q1 = top.index as usize;
                        let (best_q, best_sc, other_max) = if (top.second as f64)
                            < top.best as f64 - 2.0 * tol32
                            && q1 < n_codes
                        {
                            // One candidate within f32 rounding of the best.
                            let p = dot(row, &this.cent[q1 * m..(q1 + 1) * m]);
                            (q1, p * p, top.second.max(0.0) as f64 + tol32)
                        } else {
                            this.full_scan_f64(i)
                        };
                        let (q, sc, other) = if drift.is_none() {
                            (best_q, best_sc, other_max)
                        } else {
                            let old = codes_c[t] as usize;
                            if old == best_q {
                                (best_q, best_sc, other_max)
                            } else {
                                let p = dot(row, &this.cent[old * m..(old + 1) * m]);
                                let old_sc = p * p;
                                if best_sc > old_sc {
                                    (best_q, best_sc, other_max)
                                } else {
                                    // A near tie kept the old code: no bound.
                                    (old, old_sc, f64::INFINITY)
                                }
                            }
                        };
                        codes_c[t] = q as u32;
                        ub_c[t] = other;
                        err_c[t] = (this.norm2[i] - sc).max(0.0);
                    }
                    err_c.iter().sum::<f64>()
                },
            )
            .collect();
        self.ub = ub;
        sums.iter().sum()
    }

    /// Scores edge `i` against every codeword in f64: best code (ties to the lowest
    /// index), its squared score, and a bound on `|score|` of the other codewords.
    fn full_scan_f64(&self, i: usize) -> (usize, f64, f64) {
        let m = self.m;
        let row = self.row(i);
        let margin64 = 2.0 * (m as f64 + 2.0) * f64::EPSILON * self.nrm[i];
        let mut best_q = 0;
        let mut best_sc = -1.0f64;
        let mut best_abs = 0.0f64;
        let mut second = 0.0f64;
        for (q, c) in self.cent.chunks_exact(m).enumerate() {
            let p = dot(row, c);
            let sc = p * p;
            if sc > best_sc {
                second = second.max(best_abs);
                best_sc = sc;
                best_abs = p.abs();
                best_q = q;
            } else {
                second = second.max(p.abs());
            }
        }
        (best_q, best_sc, second + margin64)
    }

    /// Reseeds empty clusters (ascending q) with the edges of largest current error
    /// (ties: lowest index), each edge used at most once. Returns the number reseeded.
    fn reseed(&mut self, codes: &[u32], err: &[f64]) -> usize {
        let mut counts = vec![0usize; self.n_codes];
        for &c in codes {
            counts[c as usize] += 1;
        }
        let empty: Vec<usize> = (0..self.n_codes).filter(|&q| counts[q] == 0).collect();
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
        self.refresh_cb();
        n
    }

    /// Update step: per cluster, top eigenvector of `S_q = sum r r^T` (edge-index order),
    /// warm-started from the old centroid, kept only if its Rayleigh quotient is not lower.
    fn update(&mut self, codes: &[u32]) {
        let (m, n_codes) = (self.m, self.n_codes);
        let mm = m * m;
        // Scatter matrices: the clusters are split into UPDATE_GROUPS fixed groups
        // (q mod UPDATE_GROUPS), processed in parallel; each group streams all edges in
        // index order and accumulates those of its clusters, so every S_q is summed in
        // edge-index order whatever the thread count. Upper triangle, then mirrored (the
        // products and their order are those of the full square).
        let (r, norm2) = (self.r, &self.norm2);
        let mp = m.div_ceil(4) * 4;
        let groups: Vec<(Vec<f64>, Vec<usize>)> = (0..UPDATE_GROUPS)
            .into_par_iter()
            .map(|g| scatter_group(codes, r, norm2, g, n_codes, m))
            .collect();
        self.cent.par_chunks_mut(m).enumerate().for_each_init(
            || (vec![0.0f64; mm], vec![0.0f64; m], vec![0.0f64; m]),
            |(s, v, scratch), (q, c)| {
                let (g, slot) = (q % UPDATE_GROUPS, q / UPDATE_GROUPS);
                let big = groups[g].1[slot];
                if big == usize::MAX {
                    return; // empty cluster
                }
                let src = &groups[g].0[slot * m * mp..(slot + 1) * m * mp];
                for a in 0..m {
                    for b in 0..m {
                        s[a * m + b] = if b >= a {
                            src[a * mp + b]
                        } else {
                            src[b * mp + a]
                        };
                    }
                }
                let s = &s[..];
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
        self.refresh_cb();
    }
}

/// Scatter matrices of the clusters `q` with `q % UPDATE_GROUPS == g`, summed in
/// edge-index order: per cluster `m` rows of `mp = ceil(m/4)*4` f64 (only `b >= a` is
/// meaningful), and per cluster the member of largest norm (`usize::MAX` if empty).
fn scatter_group(
    codes: &[u32],
    r: &[f64],
    norm2: &[f64],
    g: usize,
    n_codes: usize,
    m: usize,
) -> (Vec<f64>, Vec<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { scatter_group_avx2(codes, r, norm2, g, n_codes, m) };
        }
    }
    scatter_group_body(codes, r, norm2, g, n_codes, m)
}

/// [`scatter_group_body`] compiled for AVX2 (same operations: multiply, then add).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scatter_group_avx2(
    codes: &[u32],
    r: &[f64],
    norm2: &[f64],
    g: usize,
    n_codes: usize,
    m: usize,
) -> (Vec<f64>, Vec<usize>) {
    scatter_group_body(codes, r, norm2, g, n_codes, m)
}

#[inline(always)]
fn scatter_group_body(
    codes: &[u32],
    r: &[f64],
    norm2: &[f64],
    g: usize,
    n_codes: usize,
    m: usize,
) -> (Vec<f64>, Vec<usize>) {
    let mp = m.div_ceil(4) * 4;
    let nq = (n_codes + UPDATE_GROUPS - 1 - g) / UPDATE_GROUPS;
    let mut s_all = vec![0.0f64; nq * m * mp];
    let mut biggest = vec![usize::MAX; nq];
    let mut rp = vec![0.0f64; mp];
    for (i, &c) in codes.iter().enumerate() {
        let q = c as usize;
        if q % UPDATE_GROUPS != g {
            continue;
        }
        let slot = q / UPDATE_GROUPS;
        let s = &mut s_all[slot * m * mp..(slot + 1) * m * mp];
        rp[..m].copy_from_slice(&r[i * m..(i + 1) * m]);
        for (a, srow) in s.chunks_exact_mut(mp).enumerate() {
            let ra = rp[a];
            // Columns from the 4-block holding `a` on: `s[a][b] += r_a * r_b` for every
            // b >= a (entries b < a of that block are never read).
            let from = a / 4 * 4;
            for (sv, rv) in srow[from..]
                .chunks_exact_mut(4)
                .zip(rp[from..].chunks_exact(4))
            {
                for l in 0..4 {
                    sv[l] += ra * rv[l];
                }
            }
        }
        let b = biggest[slot];
        if b == usize::MAX || norm2[i] > norm2[b] {
            biggest[slot] = i;
        }
    }
    (s_all, biggest)
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
        let p = |n_codes| KMeansParams {
            n_codes,
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
                n_codes: 3,
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
                n_codes: 4,
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
                n_codes: 2,
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
            n_codes: 37,
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
                n_codes: 10,
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
    fn init_never_picks_a_direction_twice_while_others_remain() {
        // 40 directions, each repeated 30 times with different gains: exact D^2 sampling
        // (including the lazily applied centres) gives every direction exactly once.
        let m = 7;
        let dirs = random_residuals(40, m, 21);
        let r = Array2::from_shape_fn((1200, m), |(i, j)| {
            dirs[[i % 40, j]] * (0.5 + (i / 40) as f64 * 0.01)
        });
        for seed in 0..10 {
            let res = spherical_kmeans(
                r.view(),
                &KMeansParams {
                    n_codes: 40,
                    n_iter: 0,
                    tol: 0.0,
                    seed,
                    init: Init::KMeansPlusPlus,
                },
            )
            .unwrap();
            let mut hit = [false; 40];
            for c in res.centroids.rows() {
                let best = (0..40)
                    .max_by(|&a, &b| {
                        let ca = dirs.row(a).dot(&c).abs() / dirs.row(a).dot(&dirs.row(a)).sqrt();
                        let cb = dirs.row(b).dot(&c).abs() / dirs.row(b).dot(&dirs.row(b)).sqrt();
                        ca.total_cmp(&cb)
                    })
                    .unwrap();
                hit[best] = true;
            }
            assert!(hit.iter().all(|&h| h), "seed {seed}");
            assert!(res.objective[0] < 1e-9 * r.iter().map(|v| v * v).sum::<f64>());
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
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn objective_never_increases_and_is_thread_invariant(
            e in 1usize..400, m in 1usize..10, kfrac in 0.0f64..1.0, seed in 0u64..1000,
        ) {
            let n_codes = 1 + ((e - 1) as f64 * kfrac * 0.3) as usize;
            let r = random_residuals(e, m, seed);
            let p = KMeansParams { n_codes, n_iter: 6, tol: 0.0, seed, init: Init::KMeansPlusPlus };
            let a = run_in_pool(1, &r, &p);
            let b = run_in_pool(2, &r, &p);
            prop_assert_eq!(&a, &b);
            for w in a.objective.windows(2) {
                prop_assert!(w[1] <= w[0], "objective increased: {:?}", a.objective);
            }
            prop_assert!(a.codes.iter().all(|&c| (c as usize) < n_codes));
            let j = objective_of(&r, &a);
            prop_assert!((j - a.objective.last().unwrap()).abs() <= 1e-9 * (1.0 + a.objective[0]));
        }
    }
}
