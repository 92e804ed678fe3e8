//! Gain-shape-bias decomposition and fit (SPEC §2.2-2.5, ARCHITECTURE §2).
//!
//! With `L = chol(R)` for the metric `R`, each coefficient vector `w_e` is whitened to
//! `v_e = L^T w_e`, split into a bias along `u = L^T 1 / ||L^T 1||` and a residual
//! `r_e`, the residuals are clustered by [`spherical_kmeans`], and the result is mapped
//! back to coefficient space: `w^_e = g_e C[q_e] + b_e 1`.

use crate::error::{check_finite, fmt_shape, Error, Result};
use crate::kmeans::{spherical_kmeans, KMeansParams, KMeansResult};
use crate::linalg::{cholesky, dot, mul_lower_transpose, solve_lower_transpose};
use crate::refine::{check_codebook, check_codes, solve_gain_bias};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

/// Relative gain below which an edge is flat (gain 0, any code).
const FLAT_REL: f64 = 1e-12;

/// Whitening of a metric: `R = L L^T`, `u = L^T 1 / ||L^T 1||`.
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    /// Lower Cholesky factor `L` of the metric, `(M, M)`.
    pub l: Array2<f64>,
    /// Unit constant direction `u = L^T 1 / ||L^T 1||` in whitened space, `(M,)`.
    pub u: Array1<f64>,
    /// `||L^T 1|| = sqrt(1^T R 1)`.
    pub ones_norm: f64,
}

/// Result of [`decompose`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decomposition {
    /// Whitened residuals `r_e = v_e - beta_e u`, `(E, M)`.
    pub residuals: Array2<f64>,
    /// Whitened biases `beta_e = <v_e, u>`, `(E,)`.
    pub beta: Array1<f64>,
    /// Gains `gamma_e = ||r_e||`, `(E,)`.
    pub gamma: Array1<f64>,
}

/// Result of [`fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct GsbFit {
    /// Codebook in coefficient space `C[q] = L^{-T} c_q`, `(K, M)`.
    pub codebook: Array2<f64>,
    /// Code of every edge, `E` values in `0..K`.
    pub codes: Vec<u32>,
    /// Gains `g_e = <r_e, c_{q_e}>` (0 for flat edges), `(E,)`.
    pub gains: Array1<f64>,
    /// Coefficient-space biases `b_e = beta_e / ||L^T 1||`, `(E,)`.
    pub biases: Array1<f64>,
    /// The k-means run on the whitened residuals (centroids in whitened space).
    pub kmeans: KMeansResult,
}

/// Cholesky whitening of a metric `(M, M)`.
///
/// # Errors
/// [`Error::Shape`], [`Error::NonFinite`] or [`Error::InvalidValue`] (not symmetric or not
/// positive definite), all naming `metric`.
pub fn whitening(metric: ArrayView2<'_, f64>) -> Result<Whitening> {
    let l = cholesky(metric, "metric")?;
    let m = l.nrows();
    let ls = l
        .as_slice()
        .ok_or_else(|| Error::invalid("metric", "factor not contiguous"))?;
    let mut u = vec![0.0; m];
    mul_lower_transpose(ls, m, &vec![1.0; m], &mut u);
    let ones_norm = dot(&u, &u).sqrt();
    if ones_norm.is_nan() || ones_norm <= 0.0 || !ones_norm.is_finite() {
        return Err(Error::invalid(
            "metric",
            format!(
                "1^T R 1 must be positive and finite, got {}",
                ones_norm * ones_norm
            ),
        ));
    }
    u.iter_mut().for_each(|x| *x /= ones_norm);
    Ok(Whitening {
        l,
        u: Array1::from(u),
        ones_norm,
    })
}

fn check_coeffs(coeffs: ArrayView2<'_, f64>, m: usize) -> Result<()> {
    let (e, mm) = coeffs.dim();
    if e == 0 || mm == 0 || mm != m {
        return Err(Error::shape(
            "coeffs",
            format!("(E, M) with E >= 1 and M = {m} (size of metric)"),
            fmt_shape(&[e, mm]),
        ));
    }
    let c = coeffs.as_standard_layout();
    check_finite("coeffs", c.iter())
}

/// Whitens and splits coefficient vectors `coeffs (E, M)` into bias and residual.
///
/// # Errors
/// [`Error::Shape`] if `coeffs` is empty or its M differs from the metric's,
/// [`Error::NonFinite`] for NaN/Inf coefficients.
pub fn decompose(coeffs: ArrayView2<'_, f64>, white: &Whitening) -> Result<Decomposition> {
    let m = white.l.nrows();
    check_coeffs(coeffs, m)?;
    let e = coeffs.nrows();
    let c = coeffs.as_standard_layout();
    let c = c
        .as_slice()
        .ok_or_else(|| Error::invalid("coeffs", "could not be made contiguous"))?;
    let ls = white
        .l
        .as_slice()
        .ok_or_else(|| Error::invalid("metric", "factor not contiguous"))?;
    let u = white.u.as_slice().unwrap_or(&[]);
    let mut residuals = vec![0.0; e * m];
    let mut beta = vec![0.0; e];
    let mut gamma = vec![0.0; e];
    residuals
        .par_chunks_mut(m)
        .zip(beta.par_iter_mut())
        .zip(gamma.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((r, b), g))| {
            mul_lower_transpose(ls, m, &c[i * m..(i + 1) * m], r);
            let bv = dot(r, u);
            for (rj, uj) in r.iter_mut().zip(u) {
                *rj -= bv * uj;
            }
            *b = bv;
            *g = dot(r, r).sqrt();
        });
    Ok(Decomposition {
        residuals: Array2::from_shape_vec((e, m), residuals)
            .map_err(|err| Error::invalid("coeffs", err.to_string()))?,
        beta: Array1::from(beta),
        gamma: Array1::from(gamma),
    })
}

/// Fits a shared codebook to `coeffs (E, M)` under `metric (M, M)`.
///
/// Decompose, spherical k-means on the whitened residuals, then back to coefficient
/// space (`C[q] = L^{-T} c_q`, `g_e = <r_e, c_{q_e}>`, `b_e = beta_e / ||L^T 1||`).
/// Flat edges (`gamma_e <= 1e-12 max gamma`) get gain 0.
///
/// # Errors
/// Those of [`whitening`], [`decompose`] and [`spherical_kmeans`].
pub fn fit(
    coeffs: ArrayView2<'_, f64>,
    metric: ArrayView2<'_, f64>,
    params: &KMeansParams,
) -> Result<GsbFit> {
    let white = whitening(metric)?;
    let dec = decompose(coeffs, &white)?;
    let km = spherical_kmeans(dec.residuals.view(), params)?;
    let m = white.l.nrows();
    let e = coeffs.nrows();
    let ls = white
        .l
        .as_slice()
        .ok_or_else(|| Error::invalid("metric", "factor not contiguous"))?;
    let mut codebook = km.centroids.clone();
    for mut row in codebook.rows_mut() {
        let mut v = row.to_vec();
        solve_lower_transpose(ls, m, &mut v);
        row.assign(&ArrayView1::from(&v));
    }
    let max_gamma = dec.gamma.iter().fold(0.0_f64, |a, &b| a.max(b));
    let gains = Array1::from_shape_fn(e, |i| {
        let g = dec.gamma[i];
        if g == 0.0 || g <= FLAT_REL * max_gamma {
            0.0
        } else {
            let q = km.codes[i] as usize;
            dec.residuals.row(i).dot(&km.centroids.row(q))
        }
    });
    let biases = dec.beta.mapv(|b| b / white.ones_norm);
    Ok(GsbFit {
        codebook,
        codes: km.codes.clone(),
        gains,
        biases,
        kmeans: km,
    })
}

fn check_codebook_codes(
    codebook: ArrayView2<'_, f64>,
    codes: &[u32],
    e: usize,
    m: usize,
) -> Result<()> {
    check_codebook(codebook, m)?;
    check_codes(codes, e, codebook.nrows())
}

/// Joint least-squares refit of gains and biases for fixed codes.
///
/// For each edge, `(g_e, b_e)` minimise `(w_e - g C[q_e] - b 1)^T R (w_e - g C[q_e] - b 1)`
/// (a 2x2 system). When `C[q_e]` is zero or parallel to the all-ones vector the system is
/// degenerate; then `g_e = 0` and `b_e` is the best constant.
///
/// # Errors
/// Metric errors of [`whitening`]; [`Error::Shape`] / [`Error::NonFinite`] for `coeffs`,
/// `codebook` and `codes`; [`Error::CodeOutOfRange`] for codes `>= K`.
pub fn refit_gain_bias(
    coeffs: ArrayView2<'_, f64>,
    metric: ArrayView2<'_, f64>,
    codebook: ArrayView2<'_, f64>,
    codes: &[u32],
) -> Result<(Array1<f64>, Array1<f64>)> {
    // Validates symmetry and positive definiteness.
    let _ = cholesky(metric, "metric")?;
    let m = metric.nrows();
    check_coeffs(coeffs, m)?;
    let e = coeffs.nrows();
    check_codebook_codes(codebook, codes, e, m)?;
    let r = metric.to_owned();
    let r = (&r + &r.t()) * 0.5;
    let ones = Array1::<f64>::ones(m);
    let r1 = r.dot(&ones);
    let d = ones.dot(&r1);
    let rc = codebook.dot(&r); // (K, M): row q = R C_q (R symmetric)
    let a: Vec<f64> = (0..codebook.nrows())
        .map(|q| codebook.row(q).dot(&rc.row(q)))
        .collect();
    let c: Vec<f64> = (0..codebook.nrows()).map(|q| rc.row(q).sum()).collect();
    let mut gains = Array1::<f64>::zeros(e);
    let mut biases = Array1::<f64>::zeros(e);
    for i in 0..e {
        let w = coeffs.row(i);
        let q = codes[i] as usize;
        let p = rc.row(q).dot(&w);
        let s = r1.dot(&w);
        (gains[i], biases[i]) = solve_gain_bias(a[q], c[q], d, p, s);
    }
    Ok((gains, biases))
}

/// Decoded coefficients `w^_e = g_e C[q_e] + b_e 1`, `(E, M)`.
///
/// # Errors
/// [`Error::Shape`] for inconsistent lengths, [`Error::CodeOutOfRange`] for codes `>= K`,
/// [`Error::NonFinite`] for a non-finite codebook.
pub fn reconstruct(
    codebook: ArrayView2<'_, f64>,
    codes: &[u32],
    gains: ArrayView1<'_, f64>,
    biases: ArrayView1<'_, f64>,
) -> Result<Array2<f64>> {
    let e = codes.len();
    let m = codebook.ncols();
    check_codebook_codes(codebook, codes, e, m)?;
    if gains.len() != e {
        return Err(Error::shape(
            "gains",
            format!("({e},)"),
            fmt_shape(&[gains.len()]),
        ));
    }
    if biases.len() != e {
        return Err(Error::shape(
            "biases",
            format!("({e},)"),
            fmt_shape(&[biases.len()]),
        ));
    }
    Ok(Array2::from_shape_fn((e, m), |(i, j)| {
        gains[i] * codebook[[codes[i] as usize, j]] + biases[i]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::Init;
    use ndarray::Array2;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(e: usize, m: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((e, m), |_| rng.random::<f64>() * 2.0 - 1.0)
    }

    fn spd(m: usize, seed: u64) -> Array2<f64> {
        let a = random(m, m, seed);
        a.dot(&a.t()) + Array2::<f64>::eye(m) * 0.5
    }

    fn err_in_metric(w: &Array2<f64>, wh: &Array2<f64>, r: &Array2<f64>) -> f64 {
        let d = w - wh;
        (0..d.nrows())
            .map(|i| d.row(i).dot(&r.dot(&d.row(i))))
            .sum()
    }

    #[test]
    fn whitening_maps_constant_direction_back_to_ones() {
        let r = spd(6, 1);
        let w = whitening(r.view()).unwrap();
        let mut v = w.u.to_vec();
        solve_lower_transpose(w.l.as_slice().unwrap(), 6, &mut v);
        // L^{-T} u = 1 / ||L^T 1||
        for x in v {
            assert!((x * w.ones_norm - 1.0).abs() < 1e-10);
        }
    }

    #[test]
    fn fit_errors_are_specific() {
        let c = random(10, 4, 0);
        let bad_metric = Array2::<f64>::zeros((4, 4));
        let p = KMeansParams {
            n_codes: 2,
            ..KMeansParams::default()
        };
        assert!(matches!(
            fit(c.view(), bad_metric.view(), &p),
            Err(Error::InvalidValue { .. })
        ));
        let r = Array2::<f64>::eye(5);
        assert!(matches!(
            fit(c.view(), r.view(), &p),
            Err(Error::Shape { .. })
        ));
        let mut nan = c.clone();
        nan[[1, 1]] = f64::INFINITY;
        assert!(matches!(
            fit(nan.view(), Array2::<f64>::eye(4).view(), &p),
            Err(Error::NonFinite { index: 5, .. })
        ));
        let cb = random(2, 4, 1);
        assert!(matches!(
            refit_gain_bias(
                c.view(),
                Array2::<f64>::eye(4).view(),
                cb.view(),
                &[0; 10].map(|x: u32| x + 2)
            ),
            Err(Error::CodeOutOfRange {
                code: 2,
                n_codes: 2,
                index: 0,
                ..
            })
        ));
    }

    #[test]
    fn refit_is_least_squares_and_handles_degenerate_codes() {
        let m = 5;
        let r = spd(m, 3);
        let w = random(40, m, 4);
        let mut cb = random(3, m, 5);
        cb.row_mut(1).fill(0.0); // zero codeword
        cb.row_mut(2).fill(2.0); // parallel to ones
        let codes: Vec<u32> = (0..40).map(|i| (i % 3) as u32).collect();
        let (g, b) = refit_gain_bias(w.view(), r.view(), cb.view(), &codes).unwrap();
        let wh = reconstruct(cb.view(), &codes, g.view(), b.view()).unwrap();
        let base = err_in_metric(&w, &wh, &r);
        // Perturbing any (g, b) cannot lower the error.
        for i in 0..40 {
            for (dg, db) in [(1e-4, 0.0), (-1e-4, 0.0), (0.0, 1e-4), (0.0, -1e-4)] {
                let mut g2 = g.clone();
                let mut b2 = b.clone();
                g2[i] += dg;
                b2[i] += db;
                let wh2 = reconstruct(cb.view(), &codes, g2.view(), b2.view()).unwrap();
                assert!(err_in_metric(&w, &wh2, &r) >= base - 1e-12);
            }
            if codes[i] != 0 {
                assert_eq!(g[i], 0.0);
            }
        }
    }

    #[test]
    fn fit_refit_agree_when_codewords_orthogonal_to_constant() {
        // Refit of the fitted codes reproduces the fit's gains/biases (fit is already LS).
        let m = 7;
        let r = spd(m, 8);
        let w = random(300, m, 9);
        let p = KMeansParams {
            n_codes: 16,
            n_iter: 10,
            tol: 0.0,
            seed: 2,
            init: Init::KMeansPlusPlus,
        };
        let f = fit(w.view(), r.view(), &p).unwrap();
        let (g, b) = refit_gain_bias(w.view(), r.view(), f.codebook.view(), &f.codes).unwrap();
        for i in 0..300 {
            assert!((g[i] - f.gains[i]).abs() < 1e-8, "{} {}", g[i], f.gains[i]);
            assert!((b[i] - f.biases[i]).abs() < 1e-8);
        }
    }

    #[test]
    fn k_equal_e_with_duplicate_and_flat_edges_is_exact() {
        let base = random(4, 6, 21);
        let mut w = Array2::<f64>::zeros((12, 6));
        for i in 0..12 {
            let src = base.row(i % 4);
            let scale = if i % 5 == 0 { -2.0 } else { 1.0 };
            w.row_mut(i).assign(&(&src * scale));
        }
        w.row_mut(11).fill(0.7); // flat (constant) edge
        let p = KMeansParams {
            n_codes: 12,
            ..KMeansParams::default()
        };
        let f = fit(w.view(), Array2::<f64>::eye(6).view(), &p).unwrap();
        let wh = reconstruct(f.codebook.view(), &f.codes, f.gains.view(), f.biases.view()).unwrap();
        for (a, b) in w.iter().zip(wh.iter()) {
            assert!((a - b).abs() < 1e-10, "{a} vs {b}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn k_equal_e_reconstructs_exactly(e in 1usize..40, m in 2usize..10, seed in 0u64..500, data_metric in any::<bool>()) {
            let w = random(e, m, seed) * 3.0;
            let r = if data_metric { spd(m, seed + 1) } else { Array2::<f64>::eye(m) };
            let p = KMeansParams { n_codes: e, n_iter: 25, tol: 1e-4, seed, init: Init::KMeansPlusPlus };
            let f = fit(w.view(), r.view(), &p).unwrap();
            let wh = reconstruct(f.codebook.view(), &f.codes, f.gains.view(), f.biases.view()).unwrap();
            for (a, b) in w.iter().zip(wh.iter()) {
                prop_assert!((a - b).abs() < 1e-10 * (1.0 + a.abs()) * 10.0, "{} vs {}", a, b);
            }
        }

        #[test]
        fn constant_edges_are_exact_with_any_k(e in 2usize..30, seed in 0u64..100) {
            // Edges that are pure constants: gain 0, exact bias.
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let w = Array2::from_shape_fn((e, 5), |(i, _)| i as f64 - 3.0 + 0.0 * rng.random::<f64>());
            let f = fit(w.view(), Array2::<f64>::eye(5).view(), &KMeansParams { n_codes: 1, ..KMeansParams::default() }).unwrap();
            let wh = reconstruct(f.codebook.view(), &f.codes, f.gains.view(), f.biases.view()).unwrap();
            for (a, b) in w.iter().zip(wh.iter()) {
                prop_assert!((a - b).abs() < 1e-12);
            }
        }
    }
}
