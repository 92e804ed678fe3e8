//! B-spline bases with exactly the semantics of efficient-kan's `b_splines`.
//!
//! A knot row `grid[i]` has `G + 2k + 1` strictly increasing entries and defines
//! `M = G + k` B-splines of order `k`. Spans are half-open (`grid[j] <= x < grid[j+1]`);
//! every basis function is zero outside `[grid[0], grid[G + 2k])`.

use crate::error::{check_finite, fmt_shape, Error, Result};
use ndarray::{Array2, Array3, ArrayView2, Axis};

/// Checks a knot matrix `(n_in, G + 2k + 1)` and returns `G`.
///
/// # Errors
/// [`Error::Shape`] if a row is shorter than `2k + 2` knots (G < 1) or there are no rows,
/// [`Error::NonFinite`] for NaN/Inf knots, [`Error::InvalidValue`] if a row is not
/// strictly increasing.
pub fn validate_grid(grid: ArrayView2<'_, f64>, k: usize) -> Result<usize> {
    let (n_in, ng) = grid.dim();
    let min_ng = 2 * k + 2;
    if ng < min_ng || n_in == 0 {
        return Err(Error::shape(
            "grid",
            format!("(n_in >= 1, G + 2k + 1) with G >= 1 and k = {k}, i.e. at least {min_ng} knots per row"),
            fmt_shape(&[n_in, ng]),
        ));
    }
    check_finite("grid", grid.iter())?;
    for (i, row) in grid.axis_iter(Axis(0)).enumerate() {
        for j in 1..ng {
            if row[j].partial_cmp(&row[j - 1]) != Some(std::cmp::Ordering::Greater) {
                return Err(Error::invalid(
                    "grid",
                    format!(
                        "row {i} is not strictly increasing: grid[{i}][{}] = {} >= grid[{i}][{j}] = {}",
                        j - 1,
                        row[j - 1],
                        row[j]
                    ),
                ));
            }
        }
    }
    Ok(ng - 2 * k - 1)
}

/// Span and non-zero basis values at `x` for one knot row.
///
/// Finds `j` with `grid_row[j] <= x < grid_row[j + 1]` and writes
/// `out[t] = B_{j-k+t}(x)` for `t = 0..=k` (zero where `j - k + t` is not a valid basis
/// index `0 <= j-k+t < M`). Uses the local Cox-de Boor recursion over the `k + 1`
/// non-zero functions, with the same arithmetic as the full recursion of
/// [`basis_dense`], so both agree to rounding.
///
/// Returns `None` when `x` is outside `[grid_row[0], grid_row[last])`, is NaN, or when
/// the lengths are inconsistent (`out.len() < k + 1` or fewer than `2k + 2` knots).
/// The knot row is assumed valid (see [`validate_grid`]).
#[inline]
pub fn basis_span(grid_row: &[f64], k: usize, x: f64, out: &mut [f64]) -> Option<usize> {
    let ng = grid_row.len();
    if out.len() < k + 1 || ng < 2 * k + 2 {
        return None;
    }
    // Number of knots <= x; NaN compares false everywhere, giving 0.
    let p = grid_row.partition_point(|&g| g <= x);
    if p == 0 || p == ng {
        return None;
    }
    let j = p - 1;
    let out = &mut out[..=k];
    out.fill(0.0);
    out[0] = 1.0;
    let g = grid_row;
    for d in 1..=k {
        // Level d holds indices m = j - d + t, t = 0..=d; valid while 0 <= m <= ng - 2 - d.
        for t in (0..=d).rev() {
            let m = j as isize - d as isize + t as isize;
            let value = if m < 0 || m as usize > ng - 2 - d {
                0.0
            } else {
                let m = m as usize;
                let lower = if t >= 1 { out[t - 1] } else { 0.0 };
                let upper = if t < d { out[t] } else { 0.0 };
                (x - g[m]) / (g[m + d] - g[m]) * lower
                    + (g[m + d + 1] - x) / (g[m + d + 1] - g[m + 1]) * upper
            };
            out[t] = value;
        }
    }
    Some(j)
}

/// Full basis matrix: `x (B, n_in)`, `grid (n_in, G + 2k + 1)` -> `(B, n_in, M)`.
///
/// Implements efficient-kan's `b_splines` recursion literally (degree-0 indicators on
/// half-open spans, then `k` rounds of Cox-de Boor on the whole knot row).
///
/// # Errors
/// Grid errors of [`validate_grid`]; [`Error::Shape`] if `x` has a different number of
/// columns than `grid` has rows; [`Error::NonFinite`] for NaN/Inf in `x` (efficient-kan
/// would return NaN rows there).
pub fn basis_dense(
    x: ArrayView2<'_, f64>,
    grid: ArrayView2<'_, f64>,
    k: usize,
) -> Result<Array3<f64>> {
    let g_intervals = validate_grid(grid, k)?;
    let (b, n_in) = x.dim();
    if n_in != grid.nrows() {
        return Err(Error::shape(
            "x",
            format!("(B, n_in) with n_in = {} (rows of grid)", grid.nrows()),
            fmt_shape(&[b, n_in]),
        ));
    }
    check_finite("x", x.iter())?;
    let m = g_intervals + k;
    let ng = grid.ncols();
    let mut out = Array3::<f64>::zeros((b, n_in, m));
    let mut bases = vec![0.0; ng - 1];
    let grid_std = grid.as_standard_layout();
    for r in 0..b {
        for i in 0..n_in {
            let xv = x[[r, i]];
            let g = grid_std.row(i);
            for (j, bj) in bases.iter_mut().enumerate() {
                *bj = if xv >= g[j] && xv < g[j + 1] {
                    1.0
                } else {
                    0.0
                };
            }
            for d in 1..=k {
                // New length ng - 1 - d; entries read old bases[m] and bases[m + 1].
                for mm in 0..(ng - 1 - d) {
                    bases[mm] = (xv - g[mm]) / (g[mm + d] - g[mm]) * bases[mm]
                        + (g[mm + d + 1] - xv) / (g[mm + d + 1] - g[mm + 1]) * bases[mm + 1];
                }
            }
            for (mm, v) in bases.iter().take(m).enumerate() {
                out[[r, i, mm]] = *v;
            }
        }
    }
    Ok(out)
}

/// Gauss-Legendre nodes and weights on `[-1, 1]` with `n >= 1` points (Newton on P_n).
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (mut p0, mut p1) = (1.0_f64, z);
            if n == 1 {
                p1 = z;
                p0 = 1.0;
            } else {
                for l in 2..=n {
                    let p2 = ((2 * l - 1) as f64 * z * p1 - (l - 1) as f64 * p0) / l as f64;
                    p0 = p1;
                    p1 = p2;
                }
            }
            // p1 = P_n(z), p0 = P_{n-1}(z)
            dp = n as f64 * (z * p1 - p0) / (z * z - 1.0);
            let dz = p1 / dp;
            z -= dz;
            if dz.abs() < 1e-16 {
                break;
            }
        }
        nodes[i] = -z;
        nodes[n - 1 - i] = z;
        let w = 2.0 / ((1.0 - z * z) * dp * dp);
        weights[i] = w;
        weights[n - 1 - i] = w;
    }
    (nodes, weights)
}

/// The `function` metric: mean over inputs of `(1/(b-a)) * integral_a^b B(x) B(x)^T dx`
/// with `a = grid[i][k]`, `b = grid[i][G + k]`; `(M, M)`, symmetric positive definite.
///
/// Integrates exactly with `k + 1` Gauss-Legendre nodes on each knot interval.
///
/// # Errors
/// Grid errors of [`validate_grid`].
pub fn gram(grid: ArrayView2<'_, f64>, k: usize) -> Result<Array2<f64>> {
    let g_intervals = validate_grid(grid, k)?;
    let m = g_intervals + k;
    let n_in = grid.nrows();
    let (nodes, weights) = gauss_legendre(k + 1);
    let mut total = Array2::<f64>::zeros((m, m));
    let mut local = Array2::<f64>::zeros((m, m));
    let mut b = vec![0.0; k + 1];
    let grid_std = grid.as_standard_layout();
    for i in 0..n_in {
        let row = grid_std.row(i);
        let row = row.as_slice().unwrap_or(&[]);
        let (a, bnd) = (row[k], row[g_intervals + k]);
        local.fill(0.0);
        for j in k..(g_intervals + k) {
            let (lo, hi) = (row[j], row[j + 1]);
            let half = 0.5 * (hi - lo);
            let mid = 0.5 * (hi + lo);
            for (z, w) in nodes.iter().zip(&weights) {
                let xq = mid + half * z;
                let Some(span) = basis_span(row, k, xq, &mut b) else {
                    continue;
                };
                let wq = w * half;
                for t in 0..=k {
                    let p = span as isize - k as isize + t as isize;
                    if p < 0 || p as usize >= m {
                        continue;
                    }
                    for s in 0..=k {
                        let q = span as isize - k as isize + s as isize;
                        if q < 0 || q as usize >= m {
                            continue;
                        }
                        local[[p as usize, q as usize]] += wq * b[t] * b[s];
                    }
                }
            }
        }
        total.scaled_add(1.0 / (bnd - a), &local);
    }
    total /= n_in as f64;
    // Exact symmetry (the two triangles are summed in different orders).
    for p in 0..m {
        for q in 0..p {
            let v = 0.5 * (total[[p, q]] + total[[q, p]]);
            total[[p, q]] = v;
            total[[q, p]] = v;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1};
    use proptest::prelude::*;

    fn uniform_grid(n_in: usize, g: usize, k: usize, lo: f64, hi: f64) -> Array2<f64> {
        let h = (hi - lo) / g as f64;
        Array2::from_shape_fn((n_in, g + 2 * k + 1), |(_, j)| {
            lo + (j as f64 - k as f64) * h
        })
    }

    #[test]
    fn gauss_legendre_integrates_polynomials() {
        for n in 1..8 {
            let (x, w) = gauss_legendre(n);
            for deg in 0..(2 * n) {
                let exact = if deg % 2 == 1 {
                    0.0
                } else {
                    2.0 / (deg as f64 + 1.0)
                };
                let got: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(deg as i32)).sum();
                assert!((got - exact).abs() < 1e-13, "n={n} deg={deg}");
            }
        }
    }

    #[test]
    fn known_values_cubic() {
        // Uniform cubic B-spline at the centre of its support is 2/3, at neighbours 1/6.
        let grid = uniform_grid(1, 5, 3, -1.0, 1.0);
        let x = array![[grid[[0, 5]]]];
        let b = basis_dense(x.view(), grid.view(), 3).unwrap();
        let row = b.index_axis(Axis(0), 0).index_axis(Axis(0), 0).to_owned();
        let nz: Vec<f64> = row.iter().copied().filter(|v| *v != 0.0).collect();
        assert_eq!(nz.len(), 3);
        assert!((nz[0] - 1.0 / 6.0).abs() < 1e-14);
        assert!((nz[1] - 2.0 / 3.0).abs() < 1e-14);
        assert!((nz[2] - 1.0 / 6.0).abs() < 1e-14);
    }

    #[test]
    fn outside_grid_is_zero() {
        let grid = uniform_grid(2, 4, 3, -1.0, 1.0);
        let last = grid[[0, grid.ncols() - 1]];
        let x = array![[grid[[0, 0]] - 1e-9, last], [1e9, -1e9]];
        let b = basis_dense(x.view(), grid.view(), 3).unwrap();
        assert!(b.iter().all(|v| *v == 0.0));
        let mut out = [0.0; 4];
        assert!(basis_span(grid.row(0).as_slice().unwrap(), 3, last, &mut out).is_none());
        assert!(basis_span(grid.row(0).as_slice().unwrap(), 3, f64::NAN, &mut out).is_none());
        assert!(basis_span(grid.row(0).as_slice().unwrap(), 3, grid[[0, 0]], &mut out).is_some());
    }

    #[test]
    fn grid_validation() {
        let grid = uniform_grid(1, 1, 2, 0.0, 1.0);
        assert_eq!(validate_grid(grid.view(), 2).unwrap(), 1);
        assert!(matches!(
            validate_grid(grid.view(), 3),
            Err(Error::Shape { .. })
        ));
        let mut bad = grid.clone();
        bad[[0, 2]] = bad[[0, 1]];
        assert!(matches!(
            validate_grid(bad.view(), 2),
            Err(Error::InvalidValue { .. })
        ));
        bad[[0, 2]] = f64::INFINITY;
        assert!(matches!(
            validate_grid(bad.view(), 2),
            Err(Error::NonFinite { index: 2, .. })
        ));
        let x = array![[0.5, 0.5]];
        assert!(matches!(
            basis_dense(x.view(), grid.view(), 2),
            Err(Error::Shape { .. })
        ));
        let x = array![[f64::NAN]];
        assert!(matches!(
            basis_dense(x.view(), grid.view(), 2),
            Err(Error::NonFinite { .. })
        ));
    }

    #[test]
    fn gram_matches_numerical_integration() {
        let mut grid = uniform_grid(2, 4, 2, -1.0, 1.0);
        // Non-uniform second row.
        for j in 0..grid.ncols() {
            grid[[1, j]] = (j as f64 * 0.37).powf(1.3) - 1.0;
        }
        let k = 2;
        let r = gram(grid.view(), k).unwrap();
        let m = 6;
        let mut numeric = Array2::<f64>::zeros((m, m));
        let n = 20000;
        for i in 0..2 {
            let (a, b) = (grid[[i, k]], grid[[i, 4 + k]]);
            let xs = Array1::from_shape_fn(n, |t| a + (b - a) * (t as f64 + 0.5) / n as f64);
            let mut xin = Array2::<f64>::zeros((n, 2));
            xin.column_mut(i).assign(&xs);
            xin.column_mut(1 - i).fill(0.0);
            let bb = basis_dense(xin.view(), grid.view(), k).unwrap();
            let bi = bb.index_axis(Axis(1), i).to_owned(); // (n, M)
            numeric = numeric + bi.t().dot(&bi) / n as f64 / 2.0;
        }
        for (x, y) in r.iter().zip(numeric.iter()) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
        for p in 0..m {
            for q in 0..m {
                assert_eq!(r[[p, q]], r[[q, p]]);
            }
        }
        crate::linalg::cholesky(r.view(), "gram").unwrap();
    }

    proptest! {
        #[test]
        fn span_agrees_with_dense_and_partition_of_unity(
            k in 0usize..5,
            g in 1usize..8,
            steps in proptest::collection::vec(0.05f64..2.0, 30),
            start in -3.0f64..3.0,
            u in proptest::collection::vec(0.0f64..1.0, 16),
        ) {
            let ng = g + 2 * k + 1;
            let mut row = vec![start; ng];
            for j in 1..ng { row[j] = row[j - 1] + steps[j % steps.len()]; }
            let grid = Array2::from_shape_vec((1, ng), row.clone()).unwrap();
            let lo = row[0] - 0.5;
            let hi = row[ng - 1] + 0.5;
            let xs: Vec<f64> = u.iter().map(|t| lo + (hi - lo) * t).chain([row[k], row[g + k] - 1e-12, row[1]]).collect();
            let x = Array2::from_shape_vec((xs.len(), 1), xs.clone()).unwrap();
            let dense = basis_dense(x.view(), grid.view(), k).unwrap();
            let m = g + k;
            let mut out = vec![0.0; k + 1];
            for (r, &xv) in xs.iter().enumerate() {
                let mut from_span = vec![0.0; m];
                if let Some(j) = basis_span(&row, k, xv, &mut out) {
                    for (t, &bt) in out.iter().enumerate() {
                        let p = j as isize - k as isize + t as isize;
                        if p >= 0 && (p as usize) < m { from_span[p as usize] = bt; }
                    }
                }
                for p in 0..m {
                    prop_assert!((from_span[p] - dense[[r, 0, p]]).abs() < 1e-12);
                }
                if xv >= row[k] && xv < row[g + k] {
                    let s: f64 = (0..m).map(|p| dense[[r, 0, p]]).sum();
                    prop_assert!((s - 1.0).abs() < 1e-12, "sum {}", s);
                }
            }
        }
    }
}
