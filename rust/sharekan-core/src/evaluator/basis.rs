//! Basis values: B-spline knot spans and the `k + 1` local values (per row for the
//! projection-table path, per tile with padded f64 knots and reciprocals for the
//! decoded-tile path), the dense RBF and Chebyshev bases, and the base-branch
//! activations (SiLU, exact GELU through an f64 `erf`). Everything here is computed in
//! f64 and rounded to f32 once, identically on every path.

use super::{BaseAct, Basis, Code, Plan};

impl<C: Code> Plan<'_, C> {
    /// Base-branch activation of `x`.
    #[inline(always)]
    pub(super) fn act(&self, x: f32) -> f32 {
        match self.base_act {
            BaseAct::Silu => silu(x),
            BaseAct::Gelu => gelu(x),
        }
    }

    /// Dense basis values `b[m] = B_m(x_i)`, `m = 0..M` (RBF or Chebyshev), in f64 then
    /// rounded to f32. NaN in, NaN out.
    #[inline(always)]
    pub(super) fn dense_basis(&self, i: usize, x: f32, b: &mut [f32]) {
        let xf = x as f64;
        match self.basis {
            Basis::Rbf { h } => {
                let h = h as f64;
                for (v, &c) in b.iter_mut().zip(self.grid_row(i)) {
                    let d = (xf - c as f64) / h;
                    *v = (-(d * d)).exp() as f32;
                }
            }
            Basis::Chebyshev => {
                let t = xf.tanh();
                let (mut t0, mut t1) = (1.0f64, t);
                for (m, v) in b.iter_mut().enumerate() {
                    *v = match m {
                        0 => 1.0,
                        1 => t as f32,
                        _ => {
                            let t2 = 2.0 * t * t1 - t0;
                            t0 = t1;
                            t1 = t2;
                            t2 as f32
                        }
                    };
                }
            }
            Basis::BSpline => unreachable!("dense_basis is only called for dense bases"),
        }
    }
}

/// A knot row in f64, padded with `k` extra knots on each side, and its reciprocals, so
/// that the basis triangle needs no range checks.
///
/// `gp[p + k] = g[p]`; the padding continues the first and last knot gaps (strictly
/// increasing). `ip[(d - 1) * stride + p] = 1 / (gp[p + d] - gp[p])`. Basis functions on
/// padded knots never feed the valid ones (`0 <= index < M` at every level), and the
/// invalid ones are dropped, so the padding does not change any result.
pub(super) struct Knots {
    k: usize,
    ng: usize,
    gp: Vec<f64>,
    ip: Vec<f64>,
}

impl Knots {
    pub(super) fn new(ng: usize, k: usize) -> Self {
        let stride = ng + 2 * k;
        Knots {
            k,
            ng,
            gp: vec![0.0; stride],
            ip: vec![0.0; k * stride],
        }
    }

    pub(super) fn set(&mut self, g: &[f32]) {
        let (k, ng) = (self.k, self.ng);
        let stride = ng + 2 * k;
        for (a, &v) in self.gp[k..k + ng].iter_mut().zip(g) {
            *a = v as f64;
        }
        let h0 = g[1] as f64 - g[0] as f64;
        let h1 = g[ng - 1] as f64 - g[ng - 2] as f64;
        for p in 0..k {
            self.gp[p] = g[0] as f64 - (k - p) as f64 * h0;
            self.gp[k + ng + p] = g[ng - 1] as f64 + (p + 1) as f64 * h1;
        }
        for d in 1..=k {
            let row = &mut self.ip[(d - 1) * stride..d * stride];
            for (p, r) in row.iter_mut().enumerate() {
                *r = if p + d < stride {
                    1.0 / (self.gp[p + d] - self.gp[p])
                } else {
                    0.0
                };
            }
        }
    }

    /// Span `j` of `x` (`g[j] <= x < g[j+1]`) and `b[t] = B_{j-k+t}(x)`, `t = 0..=k`
    /// (zero-padded values at invalid indices are not zeroed here); `None` outside
    /// `[g[0], g[last])` or for NaN. `KO > 0`: compile-time order (straight-line code).
    #[inline(always)]
    fn basis<const KO: usize>(&self, x: f64, b: &mut [f64]) -> Option<usize> {
        let (k, ng) = (if KO > 0 { KO } else { self.k }, self.ng);
        let g = &self.gp[k..k + ng];
        if !(x >= g[0] && x < g[ng - 1]) {
            return None;
        }
        let j = if ng <= 64 {
            // Number of interior knots <= x (vectorised count).
            g[1..ng - 1]
                .iter()
                .fold(0usize, |c, &v| c + (v <= x) as usize)
        } else {
            g.partition_point(|&v| v <= x) - 1
        };
        let stride = ng + 2 * k;
        let gw = &self.gp[j..j + 2 * k + 2];
        b[0] = 1.0;
        for d in 1..k + 1 {
            let iw = &self.ip[(d - 1) * stride + j..(d - 1) * stride + j + k + 1];
            for t in (0..d + 1).rev() {
                // Basis index j - d + t, padded position j + k - d + t (window offset).
                let p = k - d + t;
                let mut v = 0.0;
                if t >= 1 {
                    v += (x - gw[p]) * iw[p] * b[t - 1];
                }
                if t < d {
                    v += (gw[p + d + 1] - x) * iw[p + 1] * b[t];
                }
                b[t] = v;
            }
        }
        Some(j)
    }
}

/// Basis values of one input for the rows `xs` of a tile: `coef[r]` (`k + 1` values, zero
/// at invalid indices), `first[r] = span - k` (`-k - 1`: outside the grid), `s_sum[r]`
/// (sum of the valid values). Returns the range of basis indices touched (empty: lo > hi).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_basis<const KO: usize>(
    kn: &Knots,
    m: usize,
    xs: &[f32],
    coef: &mut [f32],
    first: &mut [isize],
    s_sum: &mut [f32],
    scratch: &mut [f64],
) -> (usize, usize) {
    let kk = if KO > 0 { KO } else { kn.k };
    let mut local = [0.0f64; 4];
    let b: &mut [f64] = if KO > 0 && KO < 4 {
        &mut local
    } else {
        scratch
    };
    let (mut m_lo, mut m_hi) = (m, 0usize);
    for (r, &x) in xs.iter().enumerate() {
        let cr = &mut coef[r * (kk + 1)..(r + 1) * (kk + 1)];
        let Some(j) = kn.basis::<KO>(x as f64, b) else {
            cr.fill(0.0);
            first[r] = -(kk as isize) - 1;
            s_sum[r] = 0.0;
            continue;
        };
        let f = j as isize - kk as isize;
        let mut sum = 0.0f32;
        for t in 0..kk + 1 {
            let mi = f + t as isize;
            let v = if mi >= 0 && (mi as usize) < m {
                b[t] as f32
            } else {
                0.0
            };
            cr[t] = v;
            sum += v;
        }
        // 0 <= j <= m + k - 1: the valid indices max(f, 0)..=min(j, m - 1) exist.
        m_lo = m_lo.min(f.max(0) as usize);
        m_hi = m_hi.max(j.min(m - 1));
        first[r] = f;
        s_sum[r] = sum;
    }
    (m_lo, m_hi)
}

/// Span `j` of `x` (`g[j] <= x < g[j+1]`) and `b[t] = B_{j-k+t}(x)`, `t = 0..=k`, in f64
/// from f32 knots, with the arithmetic of [`crate::bspline::basis_span`]; `None` outside
/// `[g[0], g[last])` or for NaN.
#[inline(always)]
pub(super) fn basis_at(g: &[f32], k: usize, x: f32, b: &mut [f64]) -> Option<usize> {
    let ng = g.len();
    if !(x >= g[0] && x < g[ng - 1]) {
        return None;
    }
    // Branch-free search, invariant g[j] <= x < g[j + n].
    let mut j = 0usize;
    let mut n = ng - 1;
    while n > 1 {
        let half = n / 2;
        j = if g[j + half] <= x { j + half } else { j };
        n -= half;
    }
    let xf = x as f64;
    let b = &mut b[..=k];
    b[0] = 1.0;
    for d in 1..k + 1 {
        // Level d holds m = j - d + t, t = 0..=d; valid while 0 <= m <= ng - 2 - d.
        for t in (0..d + 1).rev() {
            let mi = j as isize - d as isize + t as isize;
            b[t] = if mi < 0 || mi as usize > ng - 2 - d {
                0.0
            } else {
                let mi = mi as usize;
                let gm = g[mi] as f64;
                let gm1 = g[mi + 1] as f64;
                let gmd = g[mi + d] as f64;
                let gmd1 = g[mi + d + 1] as f64;
                let lower = if t >= 1 { b[t - 1] } else { 0.0 };
                let upper = if t < d { b[t] } else { 0.0 };
                (xf - gm) / (gmd - gm) * lower + (gmd1 - xf) / (gmd1 - gm1) * upper
            };
        }
    }
    Some(j)
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

/// `erf(x)` in f64: `2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (2n+1)!!` (positive terms,
/// no cancellation; relative error a few ulp) for `|x| < 6`, `sign(x)` beyond
/// (`erfc(6) < 3e-17`).
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let ax = x.abs();
    if ax >= 6.0 {
        return x.signum();
    }
    let x2 = ax * ax;
    let (mut term, mut sum) = (ax, ax);
    for n in 1..400 {
        term *= 2.0 * x2 / (2 * n + 1) as f64;
        sum += term;
        if term <= sum * 1e-17 {
            break;
        }
    }
    let r = (2.0 / std::f64::consts::PI.sqrt()) * (-x2).exp() * sum;
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// Exact GELU `x / 2 * (1 + erf(x / sqrt 2))`, in f64, rounded to f32.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
}
