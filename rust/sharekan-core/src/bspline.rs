//! B-spline bases with exactly the semantics of efficient-kan's `b_splines`.
//!
//! A knot row `grid[i]` has `G + 2k + 1` strictly increasing entries and defines
//! `M = G + k` B-splines of order `k`. Spans are half-open (`grid[j] <= x < grid[j+1]`);
//! every basis function is zero outside `[grid[0], grid[G + 2k])`.
//!
//! The spline order is capped at [`MAX_SPLINE_ORDER`] (the cost and the scratch of the
//! recursion grow with `k^2`; the C++ kernel has the same cap), and a knot row must have
//! a finite range and spacings with finite reciprocals, so that the recursion's divisions
//! cannot overflow.

use crate::error::{check_finite, fmt_shape, Error, Result};
use ndarray::{Array2, Array3, ArrayView2};

/// Largest accepted spline order `k` (the C++ kernel's `kMaxSplineOrder`). Real layers use
/// k <= 5; the bound keeps per-call work and scratch (`O(k^2)` per input) small.
pub const MAX_SPLINE_ORDER: usize = 15;

/// [`Error::InvalidValue`] for `k > MAX_SPLINE_ORDER`.
pub fn check_spline_order(k: usize) -> Result<()> {
    if k > MAX_SPLINE_ORDER {
        return Err(Error::invalid(
            "k",
            format!("spline order k = {k} exceeds the maximum {MAX_SPLINE_ORDER}"),
        ));
    }
    Ok(())
}

/// A `Vec` of `n` default (zero) values, or [`Error::InvalidValue`] naming `what` when
/// the allocation cannot be made (instead of aborting the process).
pub(crate) fn try_zeros<T: Clone + Default>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::invalid(
            what,
            format!(
                "cannot allocate {n} values of {} bytes",
                std::mem::size_of::<T>()
            ),
        )
    })?;
    v.resize(n, T::default());
    Ok(v)
}

/// Product of `dims`, or [`Error::InvalidValue`] naming `arg` when it overflows `usize`
/// or the array would exceed `isize::MAX` bytes of `elem` bytes each; `what` describes
/// the array in the message, e.g. "output (B, n_out) =".
pub(crate) fn checked_len(arg: &str, what: &str, dims: &[usize], elem: usize) -> Result<usize> {
    let overflow = || {
        Error::invalid(
            arg,
            format!(
                "{what} {} overflows: more than isize::MAX bytes",
                fmt_shape(dims)
            ),
        )
    };
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    match n.checked_mul(elem.max(1)) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(n),
        _ => Err(overflow()),
    }
}

/// Checks a knot matrix `(n_in, G + 2k + 1)` and returns `G`.
///
/// # Errors
/// [`Error::InvalidValue`] for `k > MAX_SPLINE_ORDER` (checked first); [`Error::Shape`] if
/// a row is shorter than `2k + 2` knots (G < 1) or there are no rows; [`Error::NonFinite`]
/// for NaN/Inf knots; [`Error::InvalidValue`] if a row is not strictly increasing, if its
/// range `grid[i][last] - grid[i][0]` overflows, or if a spacing `grid[i][j+1] -
/// grid[i][j]` is so small that its reciprocal overflows ("knot spacing too small").
pub fn validate_grid(grid: ArrayView2<'_, f64>, k: usize) -> Result<usize> {
    check_spline_order(k)?;
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
    for (i, row) in grid.rows().into_iter().enumerate() {
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
        // Every difference of the recursion lies between one spacing and the range.
        let range = row[ng - 1] - row[0];
        if !range.is_finite() {
            return Err(Error::invalid(
                "grid",
                format!(
                    "knot range too wide: grid[{i}][{}] - grid[{i}][0] = {:e} - {:e} overflows",
                    ng - 1,
                    row[ng - 1],
                    row[0]
                ),
            ));
        }
        for j in 1..ng {
            let d = row[j] - row[j - 1];
            if !(1.0 / d).is_finite() {
                return Err(Error::invalid(
                    "grid",
                    format!(
                        "knot spacing too small: grid[{i}][{j}] - grid[{i}][{}] = {d:e} has no \
                         finite reciprocal",
                        j - 1
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
/// the arguments are inconsistent (`k > MAX_SPLINE_ORDER`, `out.len() < k + 1` or fewer
/// than `2k + 2` knots). The knot row is assumed valid (see [`validate_grid`]).
#[inline]
pub fn basis_span(grid_row: &[f64], k: usize, x: f64, out: &mut [f64]) -> Option<usize> {
    let ng = grid_row.len();
    if k > MAX_SPLINE_ORDER || out.len() < k + 1 || ng < 2 * k + 2 {
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
/// Inputs outside `[grid[i][0], grid[i][last])` give zero rows without running the
/// recursion (it gives zeros there too, unless `x - grid` overflows).
///
/// # Errors
/// Grid and `k` errors of [`validate_grid`]; [`Error::Shape`] if `x` has a different number
/// of columns than `grid` has rows; [`Error::NonFinite`] for NaN/Inf in `x` (efficient-kan
/// would return NaN rows there); [`Error::InvalidValue`] if the `(B, n_in, M)` output
/// overflows or cannot be allocated.
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
    let len = checked_len(
        "x",
        "output (B, n_in, M) =",
        &[b, n_in, m],
        std::mem::size_of::<f64>(),
    )?;
    let mut out = try_zeros::<f64>(len, "x")?;
    let mut bases = vec![0.0; ng - 1];
    let grid_std = grid.as_standard_layout();
    for r in 0..b {
        for i in 0..n_in {
            let xv = x[[r, i]];
            let g = grid_std.row(i);
            if !(xv >= g[0] && xv < g[ng - 1]) {
                continue;
            }
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
            let at = (r * n_in + i) * m;
            out[at..at + m].copy_from_slice(&bases[..m]);
        }
    }
    Array3::from_shape_vec((b, n_in, m), out)
        .map_err(|e| Error::invalid("x", format!("output shape: {e}")))
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
/// Integrates exactly with `k + 1` Gauss-Legendre nodes on each knot interval. The matrix
/// is banded (`|p - q| <= k`); the per-input scratch holds the band only.
///
/// # Errors
/// Grid and `k` errors of [`validate_grid`]; [`Error::InvalidValue`] if the `(M, M)`
/// output overflows or cannot be allocated.
pub fn gram(grid: ArrayView2<'_, f64>, k: usize) -> Result<Array2<f64>> {
    let g_intervals = validate_grid(grid, k)?;
    let m = g_intervals + k;
    let (n_in, ng) = grid.dim();
    let len = checked_len(
        "grid",
        "output (M, M) =",
        &[m, m],
        std::mem::size_of::<f64>(),
    )?;
    let mut total = try_zeros::<f64>(len, "grid")?;
    let (nodes, weights) = gauss_legendre(k + 1);
    // local[p * bw + (q + k - p)] = entry (p, q) of one input's integral, |p - q| <= k.
    let bw = 2 * k + 1;
    let mut local = vec![0.0f64; m * bw];
    let mut b = vec![0.0; k + 1];
    let flat: Vec<f64> = grid.iter().copied().collect();
    for row in flat.chunks_exact(ng) {
        let (a, bnd) = (row[k], row[g_intervals + k]);
        local.fill(0.0);
        for j in k..(g_intervals + k) {
            let (lo, hi) = (row[j], row[j + 1]);
            let half = 0.5 * (hi - lo);
            // hi + lo may overflow for huge knots; halving first gives the same bits otherwise.
            let sum = hi + lo;
            let mid = if sum.is_finite() {
                0.5 * sum
            } else {
                0.5 * hi + 0.5 * lo
            };
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
                        // q - p + k = s - t + k in 0..=2k.
                        local[p as usize * bw + s + k - t] += wq * b[t] * b[s];
                    }
                }
            }
        }
        let scale = 1.0 / (bnd - a);
        for p in 0..m {
            let band = &local[p * bw..(p + 1) * bw];
            for q in p.saturating_sub(k)..(p + k + 1).min(m) {
                total[p * m + q] += scale * band[q + k - p];
            }
        }
    }
    // Entries off the band stay exactly zero.
    let n = n_in as f64;
    for p in 0..m {
        for q in p.saturating_sub(k)..(p + k + 1).min(m) {
            total[p * m + q] /= n;
        }
    }
    // Exact symmetry (the two triangles are summed in different orders).
    for p in 0..m {
        for q in p.saturating_sub(k)..p {
            let v = 0.5 * (total[p * m + q] + total[q * m + p]);
            total[p * m + q] = v;
            total[q * m + p] = v;
        }
    }
    Array2::from_shape_vec((m, m), total)
        .map_err(|e| Error::invalid("grid", format!("output shape: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1, Axis};
    use proptest::prelude::*;

    fn is_invalid(r: &Result<impl std::fmt::Debug>, arg: &str, needle: &str) -> bool {
        matches!(r, Err(Error::InvalidValue { arg: a, detail }) if a == arg && detail.contains(needle))
    }

    #[test]
    fn spline_order_is_capped_before_any_allocation() {
        let grid = uniform_grid(1, 3, 2, -1.0, 1.0);
        let x = array![[0.0]];
        let mut out = [0.0; 4];
        for k in [MAX_SPLINE_ORDER + 1, 16384, usize::MAX / 2, usize::MAX] {
            // A tiny grid: the order is refused before the knot count (2k + 2 would overflow).
            assert!(
                is_invalid(
                    &validate_grid(grid.view(), k),
                    "k",
                    "exceeds the maximum 15"
                ),
                "{k}"
            );
            assert!(
                is_invalid(&basis_dense(x.view(), grid.view(), k), "k", "maximum"),
                "{k}"
            );
            assert!(is_invalid(&gram(grid.view(), k), "k", "maximum"), "{k}");
            assert!(basis_span(grid.row(0).as_slice().unwrap(), k, 0.0, &mut out).is_none());
        }
        // A consistent grid for k = 16 is refused as well.
        let g16 = uniform_grid(1, 2, 16, -1.0, 1.0);
        assert!(is_invalid(&gram(g16.view(), 16), "k", "maximum"));
        let mut out = vec![0.0; 17];
        assert!(basis_span(g16.row(0).as_slice().unwrap(), 16, 0.0, &mut out).is_none());
    }

    #[test]
    fn largest_order_works() {
        let k = MAX_SPLINE_ORDER;
        let grid = uniform_grid(2, 3, k, -1.0, 1.0);
        let xs = Array1::linspace(-0.99, 0.99, 9);
        let x = Array2::from_shape_fn((9, 2), |(r, _)| xs[r]);
        let b = basis_dense(x.view(), grid.view(), k).unwrap();
        assert_eq!(b.dim(), (9, 2, 3 + k));
        for r in 0..9 {
            let s: f64 = b.slice(ndarray::s![r, 0, ..]).sum();
            assert!((s - 1.0).abs() < 1e-10, "{s}");
        }
        let r = gram(grid.view(), k).unwrap();
        assert_eq!(r.dim(), (3 + k, 3 + k));
        // integral of (sum_m B_m)^2 over [a, b] / (b - a) = 1
        assert!((r.sum() - 1.0).abs() < 1e-9, "{}", r.sum());
        // (The edge functions barely reach [a, b]: R is badly conditioned at this order.)
        assert!((0..3 + k).all(|p| r[[p, p]] > 0.0 && r.row(p) == r.column(p)));
    }

    #[test]
    fn extreme_grids_are_refused() {
        // Spacing with no finite reciprocal (subnormal).
        let mut row = vec![0.0, 1e-320, 1.0, 2.0, 3.0, 4.0];
        let tiny = Array2::from_shape_vec((1, 6), row.clone()).unwrap();
        for k in [0, 1, 2] {
            assert!(is_invalid(
                &validate_grid(tiny.view(), k),
                "grid",
                "knot spacing too small"
            ));
        }
        // A range that overflows although every knot is finite.
        row = vec![-1.5e308, -1e308, 0.0, 1e308, 1.5e308, 1.7e308];
        let huge = Array2::from_shape_vec((1, 6), row).unwrap();
        assert!(is_invalid(
            &validate_grid(huge.view(), 1),
            "grid",
            "knot range too wide"
        ));
        assert!(is_invalid(
            &gram(huge.view(), 1),
            "grid",
            "knot range too wide"
        ));
        // Huge knots of one sign are fine (hi + lo would overflow in the quadrature).
        let big = Array2::from_shape_fn((1, 8), |(_, j)| 1e308 + j as f64 * 1e307);
        let r = gram(big.view(), 2).unwrap();
        assert!(r.iter().all(|v| v.is_finite()));
        assert!((r.sum() - 1.0).abs() < 1e-9);
        // Far-away inputs give zero rows, not NaN (x - grid would overflow).
        let wide = Array2::from_shape_fn((1, 8), |(_, j)| -1e308 + j as f64 * 1e307);
        let x = array![[1.7e308], [-1.7e308]];
        let b = basis_dense(x.view(), wide.view(), 2).unwrap();
        assert!(b.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn allocation_sizes_are_checked() {
        assert!(checked_len("x", "output =", &[usize::MAX / 2, 3], 8).is_err());
        assert!(checked_len("x", "output =", &[1 << 31, 1 << 31], 8).is_err());
        assert_eq!(checked_len("x", "output =", &[3, 0, usize::MAX], 8), Ok(0));
        assert_eq!(checked_len("x", "output =", &[3, 4], 8), Ok(12));
        let e = try_zeros::<f64>(usize::MAX / 4, "grid").unwrap_err();
        assert!(e.to_string().contains("cannot allocate"), "{e}");
    }

    /// The banded accumulation gives the same bits as the dense one it replaced.
    fn gram_dense(grid: ArrayView2<'_, f64>, k: usize) -> Array2<f64> {
        let g = validate_grid(grid, k).unwrap();
        let m = g + k;
        let (nodes, weights) = gauss_legendre(k + 1);
        let mut total = Array2::<f64>::zeros((m, m));
        let mut b = vec![0.0; k + 1];
        for row in grid.rows() {
            let row = row.to_vec();
            let mut local = Array2::<f64>::zeros((m, m));
            for j in k..(g + k) {
                let (lo, hi) = (row[j], row[j + 1]);
                let (half, mid) = (0.5 * (hi - lo), 0.5 * (hi + lo));
                for (z, w) in nodes.iter().zip(&weights) {
                    let Some(span) = basis_span(&row, k, mid + half * z, &mut b) else {
                        continue;
                    };
                    for t in 0..=k {
                        for s in 0..=k {
                            let (p, q) = (
                                (span + t) as isize - k as isize,
                                (span + s) as isize - k as isize,
                            );
                            if p >= 0 && q >= 0 && (p as usize) < m && (q as usize) < m {
                                local[[p as usize, q as usize]] += w * half * b[t] * b[s];
                            }
                        }
                    }
                }
            }
            total.scaled_add(1.0 / (row[g + k] - row[k]), &local);
        }
        total /= grid.nrows() as f64;
        for p in 0..m {
            for q in 0..p {
                let v = 0.5 * (total[[p, q]] + total[[q, p]]);
                total[[p, q]] = v;
                total[[q, p]] = v;
            }
        }
        total
    }

    #[test]
    fn banded_gram_is_bit_identical_to_dense() {
        for k in 0..=4 {
            let mut grid = uniform_grid(3, 5, k, -1.0, 2.0);
            for j in 0..grid.ncols() {
                grid[[1, j]] = (j as f64 * 0.37).powf(1.3) - 1.0;
            }
            let r = gram(grid.view(), k).unwrap();
            let d = gram_dense(grid.view(), k);
            for (a, b) in r.iter().zip(d.iter()) {
                assert_eq!(a.to_bits(), b.to_bits(), "k={k}");
            }
        }
    }

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
