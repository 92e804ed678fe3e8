//! Input checks of [`lutham_forward`](super::lutham_forward): shapes, the spline-order
//! cap, the grid (finite, strictly increasing, and the knot-spacing rule of the C++
//! kernel: every knot difference of the recursion and its reciprocal finite in f32),
//! finiteness of floats, code ranges; and the contiguous (borrowed or copied) views the
//! hot loops read. Kept apart so that every error of a call, and its order, is visible in
//! one place, and so that it mirrors the kernel's validation file.

use super::{Basis, Code, LuthamInputs, WSlice, Weights};
use crate::bspline::{check_spline_order, checked_len, validate_grid};
use crate::error::{check_finite_f32, fmt_shape, Error, Result};
use ndarray::{Array, ArrayView, ArrayView1, CowArray, Dimension, Ix1, Ix2};

/// Borrows a view if it is already in standard (C) layout, otherwise copies it (an
/// allocation that fails is an [`Error::InvalidValue`] naming `arg`).
pub(super) fn contiguous<'a, A: Clone, D: Dimension>(
    arg: &str,
    v: ArrayView<'a, A, D>,
) -> Result<CowArray<'a, A, D>> {
    if v.is_standard_layout() {
        return Ok(CowArray::from(v));
    }
    let mut data = Vec::new();
    data.try_reserve_exact(v.len()).map_err(|_| {
        Error::invalid(
            arg,
            format!("cannot allocate a contiguous copy of {} elements", v.len()),
        )
    })?;
    data.extend(v.iter().cloned());
    Array::from_shape_vec(v.raw_dim(), data)
        .map(CowArray::from)
        .map_err(|e| Error::invalid(arg, format!("contiguous copy: {e}")))
}

pub(super) fn as_slice<'s, A, D: Dimension>(a: &'s CowArray<'_, A, D>) -> &'s [A] {
    // Standard layout by construction (see `contiguous`).
    a.as_slice().unwrap_or(&[])
}

/// Contiguous borrowed-or-owned weights.
pub(super) enum WeightData<'a> {
    F32(CowArray<'a, f32, Ix2>),
    I8(CowArray<'a, i8, Ix2>),
}

impl<'a> WeightData<'a> {
    fn new(arg: &str, w: &Weights<'a>) -> Result<Self> {
        Ok(match *w {
            Weights::F32(v) => WeightData::F32(contiguous(arg, v)?),
            Weights::I8(v) => WeightData::I8(contiguous(arg, v)?),
        })
    }

    pub(super) fn slice(&self) -> WSlice<'_> {
        match self {
            WeightData::F32(a) => WSlice::F32(as_slice(a)),
            WeightData::I8(a) => WSlice::I8(as_slice(a)),
        }
    }
}

/// `NonFinite` for the first non-finite value; a branch-free scan first.
fn check_finite_slice(arg: &str, v: &[f32]) -> Result<()> {
    if v.iter().fold(true, |ok, x| ok & x.is_finite()) {
        return Ok(());
    }
    check_finite_f32(arg, v)
}

/// Float weights must be finite (int8 weights always are).
fn check_weights_finite(arg: &str, w: &WeightData<'_>) -> Result<()> {
    match w.slice() {
        WSlice::F32(v) => check_finite_slice(arg, v),
        WSlice::I8(_) => Ok(()),
    }
}

fn check_edge_shape(arg: &str, got: (usize, usize), n_in: usize, n_out: usize) -> Result<()> {
    if got != (n_in, n_out) {
        return Err(Error::shape(
            arg,
            format!("(n_in, n_out) = ({n_in}, {n_out})"),
            fmt_shape(&[got.0, got.1]),
        ));
    }
    Ok(())
}

fn check_out_vec<'a>(
    arg: &str,
    v: Option<ArrayView1<'a, f32>>,
    n_out: usize,
) -> Result<Option<CowArray<'a, f32, Ix1>>> {
    match v {
        None => Ok(None),
        Some(v) => {
            if v.len() != n_out {
                return Err(Error::shape(
                    arg,
                    format!("(n_out,) = ({n_out},)"),
                    fmt_shape(&[v.len()]),
                ));
            }
            let v = contiguous(arg, v)?;
            check_finite_slice(arg, as_slice(&v))?;
            Ok(Some(v))
        }
    }
}

/// Checks the knots `(1 or n_in, ng)`, `ng >= 2k + 2`, `k <= MAX_SPLINE_ORDER`, in f32:
/// finite, strictly increasing rows (on failure [`validate_grid`] gives the detailed
/// error), and, for `k >= 1`, every knot difference of the recursion, `grid[j + d] -
/// grid[j]` for `d = 1..=k`, finite with a finite reciprocal in f32 (the arithmetic of the
/// C++ kernel's `check_knot_spacing`, which divides in f32; same messages, same first
/// offending pair: `d` ascending, then `j`). Differences grow with `d` (rounding is
/// monotone), so the fast path checks `1 / (grid[j + 1] - grid[j])` and `grid[j + k] -
/// grid[j]` only; the exhaustive scan runs on failure.
fn check_grid(grid: &CowArray<'_, f32, Ix2>, k: usize) -> Result<()> {
    let ng = grid.ncols();
    let rows = || as_slice(grid).chunks_exact(ng);
    let ok = rows().all(|g| {
        g[0].is_finite()
            && g[ng - 1].is_finite()
            && g.windows(2).fold(true, |ok, w| ok & (w[0] < w[1]))
    });
    if !ok {
        validate_grid(grid.mapv(|v| v as f64).view(), k)?;
        return Err(Error::invalid(
            "grid",
            "rows must be finite and strictly increasing",
        ));
    }
    if k == 0 {
        return Ok(());
    }
    // Fast check: every 1 / (g[j + 1] - g[j]) and every g[j + k] - g[j] finite.
    let fine = |g: &[f32]| {
        let spacing = g
            .windows(2)
            .fold(true, |ok, w| ok & (1.0 / (w[1] - w[0])).is_finite());
        let range = g
            .iter()
            .zip(&g[k..])
            .fold(true, |ok, (a, b)| ok & (b - a).is_finite());
        spacing & range
    };
    for (i, g) in rows().enumerate() {
        if fine(g) {
            continue;
        }
        // The first offending pair in the C++ kernel's order (d ascending, then j), and
        // its message.
        for d in 1..=k {
            for j in 0..ng - d {
                let diff = g[j + d] - g[j];
                if !diff.is_finite() {
                    return Err(Error::invalid(
                        "grid",
                        format!(
                            "row {i}: knot range too wide for float32: grid[{i}][{}] - \
                             grid[{i}][{j}] = {:e} - {:e} overflows (k = {k})",
                            j + d,
                            g[j + d],
                            g[j]
                        ),
                    ));
                }
                if !(1.0 / diff).is_finite() {
                    return Err(Error::invalid(
                        "grid",
                        format!(
                            "row {i}: knot spacing too small for float32: 1 / (grid[{i}][{}] - \
                             grid[{i}][{j}]) = 1 / ({:e} - {:e}) is not finite (k = {k})",
                            j + d,
                            g[j + d],
                            g[j]
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// First code outside `0..kc` (flat index, value), by a min/max scan first.
fn find_bad_code<C: Code>(codes: &[C], kc: usize) -> Option<(usize, i64)> {
    if codes.is_empty() || (C::BYTE && kc >= 256) {
        return None;
    }
    let (lo, hi) = codes
        .iter()
        .fold((codes[0], codes[0]), |(lo, hi), &c| (lo.min(c), hi.max(c)));
    let kc64 = kc as i64;
    if lo.to_i64() >= 0 && hi.to_i64() < kc64 {
        return None;
    }
    codes
        .iter()
        .enumerate()
        .find(|(_, c)| !(0..kc64).contains(&c.to_i64()))
        .map(|(index, c)| (index, c.to_i64()))
}

/// The inputs of one call, checked and contiguous (what [`check_inputs`] returns).
pub(super) struct Checked<'a, C: Code> {
    /// Spline order (0 for dense bases).
    pub(super) k: usize,
    pub(super) n_in: usize,
    pub(super) n_out: usize,
    /// Rows of `x`.
    pub(super) b: usize,
    /// Elements of the output `(B, n_out)`.
    pub(super) out_len: usize,
    pub(super) grid_rows: usize,
    pub(super) ng: usize,
    pub(super) m: usize,
    /// Codebook size K.
    pub(super) kc: usize,
    pub(super) grid: CowArray<'a, f32, Ix2>,
    pub(super) cb: CowArray<'a, f32, Ix2>,
    pub(super) codes: CowArray<'a, C, Ix2>,
    pub(super) gains: WeightData<'a>,
    pub(super) edge_bias: Option<WeightData<'a>>,
    pub(super) base_weight: Option<WeightData<'a>>,
    pub(super) gain_scale: Option<CowArray<'a, f32, Ix1>>,
    pub(super) edge_bias_scale: Option<CowArray<'a, f32, Ix1>>,
    pub(super) out_bias: Option<CowArray<'a, f32, Ix1>>,
    pub(super) base_scale: Option<CowArray<'a, f32, Ix1>>,
}

/// Every check of [`lutham_forward`](super::lutham_forward), in the order its errors are
/// documented there: spline order, output size, grid, `x`, codebook, codes, weights,
/// scales.
pub(super) fn check_inputs<'a, C: Code>(inp: &LuthamInputs<'a, C>) -> Result<Checked<'a, C>> {
    // The spline order is read by B-splines only.
    let k = if inp.basis == Basis::BSpline {
        check_spline_order(inp.k)?;
        inp.k
    } else {
        0
    };
    let (n_in, n_out) = inp.codes.dim();
    let (b, xn) = inp.x.dim();
    let out_len = checked_len("x", "output (B, n_out) =", &[b, n_out], 4)?;
    let (grid_rows, ng) = inp.grid.dim();
    let grid = contiguous("grid", inp.grid)?;
    let m = match inp.basis {
        Basis::BSpline => {
            let min_ng = 2 * k + 2;
            if n_in == 0 || (grid_rows != n_in && grid_rows != 1) || ng < min_ng {
                return Err(Error::shape(
                    "grid",
                    format!(
                        "(n_in, G + 2k + 1) or (1, G + 2k + 1) with n_in = {n_in} >= 1 (rows \
                         of codes), G >= 1 and k = {k}, i.e. at least {min_ng} knots per row"
                    ),
                    fmt_shape(&[grid_rows, ng]),
                ));
            }
            check_grid(&grid, k)?;
            ng - k - 1
        }
        Basis::Rbf { h } => {
            // The C++ kernel divides by h in f32: 1/h must be finite too.
            if !(h.is_finite() && h > 0.0 && (1.0 / h).is_finite()) {
                return Err(Error::invalid(
                    "h",
                    format!(
                        "RBF width must be finite and > 0 with a finite float32 reciprocal, \
                         got {h:e}"
                    ),
                ));
            }
            let m = inp.codebook.ncols();
            if n_in == 0 || (grid_rows != n_in && grid_rows != 1) || ng != m || m == 0 {
                return Err(Error::shape(
                    "grid",
                    format!(
                        "RBF centres (n_in, M) or (1, M) with n_in = {n_in} >= 1 (rows of \
                         codes) and M = {m} >= 1 (codebook width)"
                    ),
                    fmt_shape(&[grid_rows, ng]),
                ));
            }
            check_finite_slice("grid", as_slice(&grid))?;
            m
        }
        Basis::Chebyshev => {
            let m = inp.codebook.ncols();
            if n_in == 0 || m == 0 {
                return Err(Error::shape(
                    "codebook",
                    format!("(K, M) with M = degree + 1 >= 1 and n_in = {n_in} >= 1"),
                    fmt_shape(&[inp.codebook.nrows(), m]),
                ));
            }
            m
        }
    };
    if xn != n_in {
        return Err(Error::shape(
            "x",
            format!("(B, n_in) with n_in = {n_in} (rows of codes)"),
            fmt_shape(&[b, xn]),
        ));
    }
    let (kc, cm) = inp.codebook.dim();
    if kc == 0 || cm != m {
        return Err(Error::shape(
            "codebook",
            format!(
                "(K, M) with K >= 1 and M = {m} (G + k for B-splines, the number of RBF centres)"
            ),
            fmt_shape(&[kc, cm]),
        ));
    }
    let cb = contiguous("codebook", inp.codebook)?;
    check_finite_slice("codebook", as_slice(&cb))?;
    let codes = contiguous("codes", inp.codes)?;
    let code_slice = as_slice(&codes);
    if let Some((index, code)) = find_bad_code(code_slice, kc) {
        return Err(Error::CodeOutOfRange {
            arg: "codes".into(),
            index,
            code,
            n_codes: kc,
        });
    }
    check_edge_shape("gains", inp.gains.dim(), n_in, n_out)?;
    let gains = WeightData::new("gains", &inp.gains)?;
    check_weights_finite("gains", &gains)?;
    let edge_bias = match &inp.edge_bias {
        Some(w) => {
            check_edge_shape("edge_bias", w.dim(), n_in, n_out)?;
            let w = WeightData::new("edge_bias", w)?;
            check_weights_finite("edge_bias", &w)?;
            Some(w)
        }
        None if inp.edge_bias_scale.is_some() => {
            return Err(Error::invalid("edge_bias_scale", "given without edge_bias"));
        }
        None => None,
    };
    let base_weight = match &inp.base_weight {
        Some(w) => {
            check_edge_shape("base_weight", w.dim(), n_in, n_out)?;
            let w = WeightData::new("base_weight", w)?;
            check_weights_finite("base_weight", &w)?;
            Some(w)
        }
        None if inp.base_scale.is_some() => {
            return Err(Error::invalid("base_scale", "given without base_weight"));
        }
        None => None,
    };
    let gain_scale = check_out_vec("gain_scale", inp.gain_scale, n_out)?;
    let edge_bias_scale = check_out_vec("edge_bias_scale", inp.edge_bias_scale, n_out)?;
    let out_bias = check_out_vec("out_bias", inp.out_bias, n_out)?;
    let base_scale = check_out_vec("base_scale", inp.base_scale, n_out)?;
    Ok(Checked {
        k,
        n_in,
        n_out,
        b,
        out_len,
        grid_rows,
        ng,
        m,
        kc,
        grid,
        cb,
        codes,
        gains,
        edge_bias,
        base_weight,
        gain_scale,
        edge_bias_scale,
        out_bias,
        base_scale,
    })
}
