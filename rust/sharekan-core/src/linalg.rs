//! Small dense linear-algebra helpers (M x M matrices with M around 5..30).
//!
//! Matrices are row-major `&[f64]` slices of length `m * m` unless stated otherwise.
//! These helpers are deliberately simple and sequential: they run on tiny matrices,
//! and their results must not depend on the number of threads.

use crate::error::{fmt_shape, Error, Result};
use ndarray::{Array2, ArrayView2};

/// Dot product of two equally long slices, summed in index order.
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four fixed partial sums (shorter dependency chains); the order is fixed, so the
    // result is deterministic.
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Euclidean norm of a slice.
#[inline]
pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Cholesky factor `L` (lower triangular, `A = L L^T`) of a symmetric positive-definite
/// matrix.
///
/// `arg` names the matrix in error messages.
///
/// # Errors
/// [`Error::Shape`] if `a` is not square or is empty, [`Error::NonFinite`] for NaN/Inf,
/// [`Error::InvalidValue`] if `a` is not symmetric (relative tolerance `1e-10`) or not
/// positive definite (a pivot below `1e-14` times the largest diagonal entry).
pub fn cholesky(a: ArrayView2<'_, f64>, arg: &str) -> Result<Array2<f64>> {
    let (n, m) = a.dim();
    if n != m || n == 0 {
        return Err(Error::shape(
            arg,
            "a non-empty square matrix (M, M)",
            fmt_shape(&[n, m]),
        ));
    }
    let a = a.as_standard_layout();
    let a = a
        .as_slice()
        .ok_or_else(|| Error::invalid(arg, "matrix could not be made contiguous"))?;
    crate::error::check_finite(arg, a.iter())?;
    let scale = a.iter().fold(0.0_f64, |acc, v| acc.max(v.abs()));
    for i in 0..n {
        for j in 0..i {
            let (x, y) = (a[i * n + j], a[j * n + i]);
            if (x - y).abs() > 1e-10 * scale {
                return Err(Error::invalid(
                    arg,
                    format!("matrix is not symmetric: [{i}, {j}] = {x} but [{j}, {i}] = {y}"),
                ));
            }
        }
    }
    let max_diag = (0..n).fold(0.0_f64, |acc, i| acc.max(a[i * n + i]));
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let mut d = a[j * n + j];
        for p in 0..j {
            d -= l[j * n + p] * l[j * n + p];
        }
        if d.is_nan() || d <= 1e-14 * max_diag || max_diag <= 0.0 {
            return Err(Error::invalid(
                arg,
                format!("matrix is not positive definite (pivot {j} is {d:e})"),
            ));
        }
        let d = d.sqrt();
        l[j * n + j] = d;
        for i in (j + 1)..n {
            // Use the lower triangle, symmetrised, so tiny asymmetries do not matter.
            let mut s = 0.5 * (a[i * n + j] + a[j * n + i]);
            for p in 0..j {
                s -= l[i * n + p] * l[j * n + p];
            }
            l[i * n + j] = s / d;
        }
    }
    Array2::from_shape_vec((n, n), l).map_err(|e| Error::invalid(arg, e.to_string()))
}

/// Computes `y = L^T x` for a row-major lower-triangular `l` (n x n).
#[inline]
pub fn mul_lower_transpose(l: &[f64], n: usize, x: &[f64], y: &mut [f64]) {
    for (r, yr) in y.iter_mut().enumerate().take(n) {
        // (L^T)[r][c] = L[c][r], non-zero for c >= r.
        let mut s = 0.0;
        for (c, xc) in x.iter().enumerate().take(n).skip(r) {
            s += l[c * n + r] * xc;
        }
        *yr = s;
    }
}

/// Solves `L^T x = b` in place (`b` becomes `x`) for a row-major lower-triangular `l`.
#[inline]
pub fn solve_lower_transpose(l: &[f64], n: usize, b: &mut [f64]) {
    for r in (0..n).rev() {
        let mut s = b[r];
        for c in (r + 1)..n {
            s -= l[c * n + r] * b[c];
        }
        b[r] = s / l[r * n + r];
    }
}

/// Solves `L x = b` in place (`b` becomes `x`) for a row-major lower-triangular `l`.
#[inline]
pub fn solve_lower(l: &[f64], n: usize, b: &mut [f64]) {
    for r in 0..n {
        let mut s = b[r];
        for c in 0..r {
            s -= l[r * n + c] * b[c];
        }
        b[r] = s / l[r * n + r];
    }
}

/// `y = S x` for a row-major symmetric `s` (n x n).
#[inline]
pub fn sym_mul(s: &[f64], n: usize, x: &[f64], y: &mut [f64]) {
    for (r, yr) in y.iter_mut().enumerate().take(n) {
        *yr = dot(&s[r * n..(r + 1) * n], x);
    }
}

/// Rayleigh quotient `x^T S x` of a unit vector `x` (`scratch` has length n).
#[inline]
pub fn rayleigh(s: &[f64], n: usize, x: &[f64], scratch: &mut [f64]) -> f64 {
    sym_mul(s, n, x, scratch);
    dot(x, scratch)
}

/// Top eigenvector of a symmetric positive semi-definite `s` by power iteration.
///
/// Starts from `v` (which must be non-zero; it is normalised first) and overwrites it with
/// the iterate. Stops after `max_iter` steps or when the largest component change falls
/// below `1e-13`. Returns `false` (leaving `v` unspecified) if an iterate becomes zero,
/// i.e. the start is in the null space of `s`. `scratch` has length n.
pub fn power_iteration(
    s: &[f64],
    n: usize,
    v: &mut [f64],
    scratch: &mut [f64],
    max_iter: usize,
) -> bool {
    let nv = norm(v);
    if nv.is_nan() || nv <= 0.0 || !nv.is_finite() {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= nv);
    for _ in 0..max_iter {
        sym_mul(s, n, v, scratch);
        let nw = norm(scratch);
        if nw.is_nan() || nw <= 0.0 || !nw.is_finite() {
            return false;
        }
        let mut change = 0.0_f64;
        for (vi, wi) in v.iter_mut().zip(scratch.iter()) {
            let w = wi / nw;
            change = change.max((w - *vi).abs());
            *vi = w;
        }
        if change < 1e-13 {
            break;
        }
    }
    true
}

/// Fixes the sign of `v` so that its largest-magnitude component (lowest index on ties)
/// is positive.
#[inline]
pub fn fix_sign(v: &mut [f64]) {
    let mut best = 0usize;
    let mut best_abs = -1.0_f64;
    for (i, x) in v.iter().enumerate() {
        if x.abs() > best_abs {
            best_abs = x.abs();
            best = i;
        }
    }
    if !v.is_empty() && v[best] < 0.0 {
        v.iter_mut().for_each(|x| *x = -*x);
    }
}

/// Solves `A x = b` in place by LU with partial pivoting (row-major `a`, n x n, is
/// overwritten by its factors, `b` becomes `x`), like LAPACK's `gesv`: the pivot is the
/// first largest `|.|` in its column. Returns `false` (leaving `b` unspecified) when a
/// pivot is exactly zero or not a number; the solution may still be non-finite for
/// nearly singular or huge systems.
pub fn solve_lu(a: &mut [f64], n: usize, b: &mut [f64]) -> bool {
    if a.len() < n * n || b.len() < n {
        return false;
    }
    for col in 0..n {
        let mut piv = col;
        let mut piv_abs = a[col * n + col].abs();
        for r in (col + 1)..n {
            let v = a[r * n + col].abs();
            if v > piv_abs {
                piv = r;
                piv_abs = v;
            }
        }
        if piv_abs.is_nan() || piv_abs == 0.0 {
            return false;
        }
        if piv != col {
            for j in 0..n {
                a.swap(col * n + j, piv * n + j);
            }
            b.swap(col, piv);
        }
        let p = a[col * n + col];
        for r in (col + 1)..n {
            let f = a[r * n + col] / p;
            if f != 0.0 {
                for j in (col + 1)..n {
                    a[r * n + j] -= f * a[col * n + j];
                }
                b[r] -= f * b[col];
            }
            a[r * n + col] = f;
        }
    }
    for r in (0..n).rev() {
        let mut s = b[r];
        for c in (r + 1)..n {
            s -= a[r * n + c] * b[c];
        }
        b[r] = s / a[r * n + r];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn lu_solves_and_reports_singular() {
        // needs a row swap: zero leading pivot
        let mut a = vec![0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 2.0, 0.0, 3.0];
        let orig = a.clone();
        let x_true = [1.0, -2.0, 0.5];
        let mut b: Vec<f64> = (0..3)
            .map(|r| dot(&orig[r * 3..r * 3 + 3], &x_true))
            .collect();
        assert!(solve_lu(&mut a, 3, &mut b));
        for (x, y) in b.iter().zip(&x_true) {
            assert!((x - y).abs() < 1e-12);
        }
        let mut s = vec![1.0, 2.0, 2.0, 4.0];
        assert!(!solve_lu(&mut s, 2, &mut [1.0, 1.0]));
        assert!(!solve_lu(&mut [1.0], 2, &mut [1.0, 1.0]));
    }

    #[test]
    fn cholesky_reconstructs() {
        let a = array![[4.0, 2.0, 0.4], [2.0, 5.0, 1.0], [0.4, 1.0, 3.0]];
        let l = cholesky(a.view(), "a").unwrap();
        let r = l.dot(&l.t());
        for (x, y) in r.iter().zip(a.iter()) {
            assert!((x - y).abs() < 1e-12);
        }
        let ls = l.as_slice().unwrap();
        let mut b = vec![1.0, 2.0, 3.0];
        let orig = b.clone();
        solve_lower_transpose(ls, 3, &mut b);
        let mut back = vec![0.0; 3];
        mul_lower_transpose(ls, 3, &b, &mut back);
        for (x, y) in back.iter().zip(&orig) {
            assert!((x - y).abs() < 1e-12);
        }
        let mut c = orig.clone();
        solve_lower(ls, 3, &mut c);
        let lc = l.dot(&ndarray::Array1::from(c));
        for (x, y) in lc.iter().zip(&orig) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    #[test]
    fn cholesky_rejects_bad_input() {
        assert!(matches!(
            cholesky(array![[1.0, 2.0], [2.0, 1.0]].view(), "m"),
            Err(Error::InvalidValue { .. })
        ));
        assert!(matches!(
            cholesky(array![[1.0, 0.5], [0.0, 1.0]].view(), "m"),
            Err(Error::InvalidValue { .. })
        ));
        assert!(matches!(
            cholesky(array![[1.0, f64::NAN], [f64::NAN, 1.0]].view(), "m"),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            cholesky(Array2::<f64>::zeros((2, 3)).view(), "m"),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            cholesky(Array2::<f64>::zeros((2, 2)).view(), "m"),
            Err(Error::InvalidValue { .. })
        ));
    }

    #[test]
    fn power_iteration_finds_top_eigenvector() {
        let s = [3.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 1.0];
        let mut v = vec![1.0, 1.0, 1.0];
        let mut scratch = vec![0.0; 3];
        assert!(power_iteration(&s, 3, &mut v, &mut scratch, 500));
        let lambda = rayleigh(&s, 3, &v, &mut scratch);
        let expected = (5.0 + 5.0_f64.sqrt()) / 2.0;
        assert!((lambda - expected).abs() < 1e-10);
        let mut w = vec![-1.0, 0.5, -0.2];
        fix_sign(&mut w);
        assert_eq!(w, vec![1.0, -0.5, 0.2]);
        let mut z = vec![0.0; 3];
        assert!(!power_iteration(&s, 3, &mut z, &mut scratch, 5));
    }
}
