//! LUTHAM reference evaluator (ARCHITECTURE §4).
//!
//! Two strategies, the same ones as the C++ kernel (`lutham/lutham_kernel.cpp`):
//!
//! - **projection tables** (batches below [`DECODE_MIN_BATCH`] rows): per row and per input
//!   `i`, find the knot span of `x_i` and its `k + 1` non-zero basis values, build the
//!   projection table `P_i[q] = sum_t b_t C[q, j-k+t]` (K floats, one pass over `k + 1`
//!   rows of the transposed codebook, stays in L1), then walk the contiguous row `i` of
//!   codes and gains;
//! - **decoded tiles** (larger batches, tiles of [`BATCH_TILE`] rows): per input `i`,
//!   decode the rows of the dense weight block `W_i` (`M x n_out`, scales folded in) that
//!   the tile touches into a cache-resident buffer, then add `k + 1` spline rows plus the
//!   edge-bias and base rows to each row of the tile: about `(k+3)/(M+1)` of a dense
//!   layer's multiply-adds.
//!
//! Results are deterministic: every output element is computed by the same sequence of
//! IEEE operations whatever the number of threads, the tile a row falls in, the other rows
//! of the batch, or the SIMD path (the hot loops are compiled twice, portable and AVX2,
//! picked at run time; no fused multiply-adds, no reassociation, so both give the same
//! bits). The strategy is chosen by batch size only, so a row's result depends on whether
//! its batch has fewer than [`DECODE_MIN_BATCH`] rows (the two agree to float rounding).
//! Rows (projection tables) or tiles (decoded) run on rayon threads only when there are
//! several of them and enough work; a single row or a single tile (up to [`BATCH_TILE`]
//! rows) stays on the calling thread.
//!
//! The projection-table path computes the basis in f64 from the f32 knots with the
//! divisions of [`crate::bspline::basis_span`]; the decoded-tile path uses per-input knot
//! reciprocals (computed once per call for a shared grid).
//!
//! Memory: besides the output, a call allocates the transposed codebook (`(M + 1) x K`
//! floats, or `(M + 1) x 256` for u8 codes with K < 256 while that stays within
//! [`TABLE_PAD_BYTES`]) and per thread either a projection scratch (`K + M + 3 n_out`
//! floats) or a decoded-tile scratch of at most [`TILE_SCRATCH_MAX_BYTES`], whatever the
//! batch size and thread count: the decoded `(M + 2) x n_out` weight block is processed in
//! column blocks of at most [`DECODE_BLOCK_BYTES`], the tile's inputs are transposed
//! [`TILE_INPUTS`] at a time, and layers with so many basis functions that
//! [`DECODE_MIN_COLS`] columns do not fit the block (M > 32766) use projection tables at
//! every batch size. Column blocks do not change any result. Sizes derived from the
//! inputs are computed with checked arithmetic and allocated fallibly: an impossible
//! request is an [`Error::InvalidValue`], never a panic or an abort.
//!
//! Validation is cheap relative to one row: the grid is checked in f32 in one pass (the
//! detailed error comes from [`validate_grid`] only on failure), code ranges by a min/max
//! scan (skipped for u8 codes when K >= 256), float weights by a branch-free finiteness
//! scan; nothing of size `n_in x n_out` is copied when the inputs are C-contiguous.

use crate::bspline::{check_spline_order, checked_len, try_zeros, validate_grid};
use crate::error::{check_finite_f32, fmt_shape, Error, Result};
use ndarray::{Array, Array2, ArrayView, ArrayView1, ArrayView2, CowArray, Dimension, Ix1, Ix2};
use rayon::prelude::*;

pub use crate::bspline::MAX_SPLINE_ORDER;

/// Batches with at least this many rows use the decoded-tile strategy.
pub const DECODE_MIN_BATCH: usize = 12;
/// Rows per tile of the decoded-tile strategy (bounds scratch memory, keeps a tile's
/// outputs in cache).
pub const BATCH_TILE: usize = 64;
/// Largest decoded weight block of a tile (`(M + 2)` rows times a column block), per
/// thread: wider layers are decoded in column blocks of `DECODE_BLOCK_BYTES / 4 / (M + 2)`
/// outputs (same results: every output element sees the same operations).
pub const DECODE_BLOCK_BYTES: usize = 8 << 20;
/// Narrowest column block of the decoded-tile strategy; layers whose `M + 2` rows do not
/// fit [`DECODE_BLOCK_BYTES`] at this width (or at `n_out`, if smaller) use projection
/// tables at every batch size.
pub const DECODE_MIN_COLS: usize = 64;
/// Inputs of a tile transposed at a time (bounds the transposed copy of the tile's x).
pub const TILE_INPUTS: usize = 4096;
/// Upper bound of one decoded tile's scratch (bytes, per thread): the weight block, the
/// transposed inputs, the scaled gains of one column block and the per-input knots (see
/// [`tile_scratch_bytes`]).
pub const TILE_SCRATCH_MAX_BYTES: usize = 16 << 20;
/// Largest transposed codebook padded to 256 columns for u8 codes with K < 256 (lookups
/// without bounds checks); a larger one (M + 1 > 8192) is not padded.
pub const TABLE_PAD_BYTES: usize = 8 << 20;
/// Rows x inputs x outputs below which a call stays on the calling thread.
const PAR_MIN_WORK: usize = 1 << 20;

/// Integer types accepted as codes (`u8`, `i16`, `i32`, `u32`).
pub trait Code: Copy + Send + Sync + Ord + 'static {
    /// The code as `i64` (for range checks and error messages).
    fn to_i64(self) -> i64;
    /// The code as a table index (called on validated, non-negative codes only).
    #[doc(hidden)]
    fn index(self) -> usize;
    /// True when every value of the type is below 256 (tables are then padded to 256
    /// entries and lookups need no bounds check).
    #[doc(hidden)]
    const BYTE: bool = false;
}

macro_rules! impl_code {
    ($($t:ty),*) => {$(
        impl Code for $t {
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self as i64
            }
            #[inline(always)]
            fn index(self) -> usize {
                self as usize
            }
        }
    )*};
}
impl_code!(i16, i32, u32);

impl Code for u8 {
    #[inline(always)]
    fn to_i64(self) -> i64 {
        self as i64
    }
    #[inline(always)]
    fn index(self) -> usize {
        self as usize
    }
    const BYTE: bool = true;
}

/// Per-edge weights `(n_in, n_out)`: float or int8 (the int8 scale is given separately,
/// per output, in [`LuthamInputs`]).
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    /// Float weights.
    F32(ArrayView2<'a, f32>),
    /// Int8 weights; multiply by the matching per-output scale.
    I8(ArrayView2<'a, i8>),
}

impl Weights<'_> {
    fn dim(&self) -> (usize, usize) {
        match self {
            Weights::F32(v) => v.dim(),
            Weights::I8(v) => v.dim(),
        }
    }
}

/// Basis of the per-edge functions (ARCHITECTURE §4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Basis {
    /// B-splines of order `k` on the knots of `grid` (efficient-kan, pykan).
    BSpline,
    /// Gaussian RBFs `B_m(x) = exp(-((x - c_m) / h)^2)`; `grid` holds the centres `c_m`,
    /// `(n_in or 1, M)` (FastKAN). `h` must be finite and positive.
    Rbf {
        /// Width `h`.
        h: f32,
    },
    /// Chebyshev polynomials `T_m(tanh x)`, `m = 0..M` (ChebyKAN); `grid` is not read.
    Chebyshev,
}

/// Activation of the base branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseAct {
    /// `SiLU(x) = x / (1 + exp(-x))` (efficient-kan, pykan, FastKAN).
    Silu,
    /// Exact GELU `x / 2 * (1 + erf(x / sqrt 2))` (TorchKAN).
    Gelu,
}

/// Inputs of [`lutham_forward`]; names, shapes and meaning as in ARCHITECTURE §4.
#[derive(Debug, Clone, Copy)]
pub struct LuthamInputs<'a, C: Code> {
    /// Inputs `(B, n_in)`.
    pub x: ArrayView2<'a, f32>,
    /// Knots `(n_in, G + 2k + 1)`, strictly increasing rows; or `(1, G + 2k + 1)`: the
    /// same knots for every input.
    pub grid: ArrayView2<'a, f32>,
    /// Spline order `k`.
    pub k: usize,
    /// Dequantised codebook `(K, M)`, `M = G + k`.
    pub codebook: ArrayView2<'a, f32>,
    /// Codes `(n_in, n_out)`, each in `0..K`.
    pub codes: ArrayView2<'a, C>,
    /// Gains `(n_in, n_out)`.
    pub gains: Weights<'a>,
    /// Per-output gain scale `(n_out,)`; `None` means ones.
    pub gain_scale: Option<ArrayView1<'a, f32>>,
    /// Per-edge coefficient-space bias `(n_in, n_out)`, or `None`.
    pub edge_bias: Option<Weights<'a>>,
    /// Per-output edge-bias scale `(n_out,)`; `None` means ones.
    pub edge_bias_scale: Option<ArrayView1<'a, f32>>,
    /// Per-output bias `(n_out,)` (folded biases), or `None`.
    pub out_bias: Option<ArrayView1<'a, f32>>,
    /// Base-branch weights on `SiLU(x)`, `(n_in, n_out)`, or `None`.
    pub base_weight: Option<Weights<'a>>,
    /// Per-output base-weight scale `(n_out,)`; `None` means ones.
    pub base_scale: Option<ArrayView1<'a, f32>>,
    /// Basis kind ([`Basis::BSpline`] for the original efficient-kan layer).
    pub basis: Basis,
    /// Base-branch activation ([`BaseAct::Silu`] for efficient-kan).
    pub base_act: BaseAct,
}

impl<'a, C: Code> LuthamInputs<'a, C> {
    /// The same inputs with codes of another integer type.
    pub fn with_codes<D: Code>(self, codes: ArrayView2<'a, D>) -> LuthamInputs<'a, D> {
        LuthamInputs {
            x: self.x,
            grid: self.grid,
            k: self.k,
            codebook: self.codebook,
            codes,
            gains: self.gains,
            gain_scale: self.gain_scale,
            edge_bias: self.edge_bias,
            edge_bias_scale: self.edge_bias_scale,
            out_bias: self.out_bias,
            base_weight: self.base_weight,
            base_scale: self.base_scale,
            basis: self.basis,
            base_act: self.base_act,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validated, contiguous data.

/// Borrows a view if it is already in standard (C) layout, otherwise copies it (an
/// allocation that fails is an [`Error::InvalidValue`] naming `arg`).
fn contiguous<'a, A: Clone, D: Dimension>(
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

fn as_slice<'s, A, D: Dimension>(a: &'s CowArray<'_, A, D>) -> &'s [A] {
    // Standard layout by construction (see `contiguous`).
    a.as_slice().unwrap_or(&[])
}

/// Contiguous borrowed-or-owned weights.
enum WeightData<'a> {
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

    fn slice(&self) -> WSlice<'_> {
        match self {
            WeightData::F32(a) => WSlice::F32(as_slice(a)),
            WeightData::I8(a) => WSlice::I8(as_slice(a)),
        }
    }
}

/// A contiguous `(n_in, n_out)` weight matrix (or one row of it).
#[derive(Clone, Copy)]
enum WSlice<'s> {
    F32(&'s [f32]),
    I8(&'s [i8]),
}

impl<'s> WSlice<'s> {
    #[inline(always)]
    fn range(self, lo: usize, hi: usize) -> WSlice<'s> {
        match self {
            WSlice::F32(s) => WSlice::F32(&s[lo..hi]),
            WSlice::I8(s) => WSlice::I8(&s[lo..hi]),
        }
    }
}

/// Element types of weight rows.
trait Elem: Copy {
    fn f(self) -> f32;
}
impl Elem for f32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self
    }
}
impl Elem for i8 {
    #[inline(always)]
    fn f(self) -> f32 {
        self as f32
    }
}

/// Everything the hot loops read: validated, contiguous, plain slices.
struct Plan<'s, C: Code> {
    n_in: usize,
    n_out: usize,
    k: usize,
    m: usize,
    kc: usize,
    /// Row length of `ct`: K, or 256 for u8 codes with K < 256 (zero padding) unless the
    /// padded table would exceed [`TABLE_PAD_BYTES`].
    kt: usize,
    ng: usize,
    /// `(1 or n_in, ng)` knots.
    grid: &'s [f32],
    shared_grid: bool,
    /// The shared grid row prepared for decoded tiles (`None` unless the grid is shared
    /// and the batch uses decoded tiles).
    shared_knots: Option<Knots>,
    /// Column-block width of decoded tiles; `None`: this call uses projection tables.
    decode_cols: Option<usize>,
    /// Codebook transposed to `(M + 1, kt)`; row M and the padding columns are zero.
    ct: Vec<f32>,
    codes: &'s [C],
    gains: WSlice<'s>,
    edge_bias: Option<WSlice<'s>>,
    base_weight: Option<WSlice<'s>>,
    gain_scale: Option<&'s [f32]>,
    edge_bias_scale: Option<&'s [f32]>,
    out_bias: Option<&'s [f32]>,
    base_scale: Option<&'s [f32]>,
    basis: Basis,
    base_act: BaseAct,
}

impl<C: Code> Plan<'_, C> {
    #[inline(always)]
    fn grid_row(&self, i: usize) -> &[f32] {
        let r = if self.shared_grid { 0 } else { i };
        &self.grid[r * self.ng..(r + 1) * self.ng]
    }

    /// Base-branch activation of `x`.
    #[inline(always)]
    fn act(&self, x: f32) -> f32 {
        match self.base_act {
            BaseAct::Silu => silu(x),
            BaseAct::Gelu => gelu(x),
        }
    }

    /// Dense basis values `b[m] = B_m(x_i)`, `m = 0..M` (RBF or Chebyshev), in f64 then
    /// rounded to f32. NaN in, NaN out.
    #[inline(always)]
    fn dense_basis(&self, i: usize, x: f32, b: &mut [f32]) {
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

// ---------------------------------------------------------------------------------------
// Basis values.

/// A knot row in f64, padded with `k` extra knots on each side, and its reciprocals, so
/// that the basis triangle needs no range checks.
///
/// `gp[p + k] = g[p]`; the padding continues the first and last knot gaps (strictly
/// increasing). `ip[(d - 1) * stride + p] = 1 / (gp[p + d] - gp[p])`. Basis functions on
/// padded knots never feed the valid ones (`0 <= index < M` at every level), and the
/// invalid ones are dropped, so the padding does not change any result.
struct Knots {
    k: usize,
    ng: usize,
    gp: Vec<f64>,
    ip: Vec<f64>,
}

impl Knots {
    fn new(ng: usize, k: usize) -> Self {
        let stride = ng + 2 * k;
        Knots {
            k,
            ng,
            gp: vec![0.0; stride],
            ip: vec![0.0; k * stride],
        }
    }

    fn set(&mut self, g: &[f32]) {
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
fn tile_basis<const KO: usize>(
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
fn basis_at(g: &[f32], k: usize, x: f32, b: &mut [f64]) -> Option<usize> {
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

// ---------------------------------------------------------------------------------------
// Hot loops (inlined into the portable and the AVX2 entry points).

#[inline(always)]
fn lookup<C: Code>(table: &[f32], c: C) -> f32 {
    if C::BYTE {
        table[c.index() & 255]
    } else {
        table[c.index()]
    }
}

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

/// `y[o] += sum_t c_t * w[row_t][o]` for the `(row, c)` terms, `N` at a time in one pass.
#[inline(always)]
fn axpy_terms<const N: usize>(y: &mut [f32], w: &[f32], stride: usize, terms: &[(usize, f32)]) {
    let n = y.len();
    let rows: [&[f32]; N] = std::array::from_fn(|t| &w[terms[t].0 * stride..][..n]);
    let c: [f32; N] = std::array::from_fn(|t| terms[t].1);
    for o in 0..n {
        let mut acc = y[o] + c[0] * rows[0][o];
        for t in 1..N {
            acc += c[t] * rows[t][o];
        }
        y[o] = acc;
    }
}

#[inline(always)]
fn axpy_many(y: &mut [f32], w: &[f32], stride: usize, terms: &[(usize, f32)]) {
    let mut chunks = terms.chunks_exact(6);
    for t in &mut chunks {
        axpy_terms::<6>(y, w, stride, t);
    }
    let t = chunks.remainder();
    match t.len() {
        5 => axpy_terms::<5>(y, w, stride, t),
        4 => axpy_terms::<4>(y, w, stride, t),
        3 => axpy_terms::<3>(y, w, stride, t),
        2 => axpy_terms::<2>(y, w, stride, t),
        1 => axpy_terms::<1>(y, w, stride, t),
        _ => {}
    }
}

/// `w[mm * stride + o] = gg[o] * ct[mm * kt + codes[o]]` for rows `mm` in `m_lo..=m_hi`,
/// `o < gg.len()`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decode_rows<C: Code>(
    w: &mut [f32],
    stride: usize,
    gg: &[f32],
    codes: &[C],
    ct: &[f32],
    kt: usize,
    m_lo: usize,
    m_hi: usize,
) {
    let n = gg.len();
    let codes = &codes[..n];
    let decode = |wr: &mut [f32], table: &[f32]| {
        // A known length of 256 removes the bounds checks of u8 lookups.
        let table = if C::BYTE { &table[..256] } else { table };
        for o in 0..n {
            wr[o] = gg[o] * lookup(table, codes[o]);
        }
    };
    if C::BYTE && kt < 256 {
        // u8 lookups read 256 entries: an unpadded row is copied into a padded one.
        let mut padded = [0.0f32; 256];
        for mm in m_lo..m_hi + 1 {
            padded[..kt].copy_from_slice(&ct[mm * kt..(mm + 1) * kt]);
            decode(&mut w[mm * stride..][..n], &padded);
        }
        return;
    }
    for mm in m_lo..m_hi + 1 {
        decode(&mut w[mm * stride..][..n], &ct[mm * kt..(mm + 1) * kt]);
    }
}

/// `out[o] = scale[o] * e[o]`.
#[inline(always)]
fn scaled_row(out: &mut [f32], e: WSlice<'_>, scale: &[f32]) {
    let n = out.len();
    let scale = &scale[..n];
    match e {
        WSlice::F32(v) => {
            let v = &v[..n];
            for o in 0..n {
                out[o] = scale[o] * v[o];
            }
        }
        WSlice::I8(v) => {
            let v = &v[..n];
            for o in 0..n {
                out[o] = scale[o] * v[o] as f32;
            }
        }
    }
}

// ---- projection-table strategy --------------------------------------------------------

struct ProjScratch {
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
    fn new<C: Code>(l: &Plan<'_, C>) -> Self {
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
fn projection_rows_impl<C: Code>(l: &Plan<'_, C>, xs: &[f32], ys: &mut [f32], s: &mut ProjScratch) {
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

// ---- decoded-tile strategy ------------------------------------------------------------

/// Column-block width of the decoded-tile strategy for `m` basis functions and `n_out >= 1`
/// outputs: as many columns as fit [`DECODE_BLOCK_BYTES`] with `m + 2` rows (a multiple
/// of 16 when below `n_out`), or `None` when fewer than `min(n_out, DECODE_MIN_COLS)` fit.
fn block_cols(m: usize, n_out: usize) -> Option<usize> {
    let rows = m.checked_add(2)?;
    let fit = DECODE_BLOCK_BYTES / std::mem::size_of::<f32>() / rows;
    if fit < n_out.min(DECODE_MIN_COLS) {
        return None;
    }
    Some(if fit >= n_out { n_out } else { fit - fit % 16 })
}

/// [`block_cols`], narrowed by the test hook.
fn decode_cols(m: usize, n_out: usize) -> Option<usize> {
    let nb = block_cols(m, n_out)?;
    #[cfg(test)]
    if let forced @ 1.. = FORCE_DECODE_COLS.load(std::sync::atomic::Ordering::Relaxed) {
        return Some(nb.min(forced));
    }
    Some(nb)
}

/// Test hooks: narrower column blocks / input chunks than the budgets give (results must
/// not change, so concurrent tests are unaffected). 0: off.
#[cfg(test)]
static FORCE_DECODE_COLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[cfg(test)]
static FORCE_TILE_INPUTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Inputs transposed at a time by a decoded tile.
#[inline]
fn tile_inputs(n_in: usize) -> usize {
    #[cfg(test)]
    if let forced @ 1.. = FORCE_TILE_INPUTS.load(std::sync::atomic::Ordering::Relaxed) {
        return n_in.min(forced);
    }
    n_in.min(TILE_INPUTS)
}

/// Bytes of scratch one decoded tile of `bsz` rows allocates (per thread), or `None` when
/// the layer does not use decoded tiles: the `(M + 2) x nb` weight block, the transposed
/// inputs (`min(n_in, TILE_INPUTS) x bsz`), the scaled gains of a block, the per-row basis
/// values and terms, and the per-input knots and reciprocals (`(k + 1) (NG + 2k)` f64)
/// unless the grid is shared. At most [`TILE_SCRATCH_MAX_BYTES`] for `bsz <= BATCH_TILE`
/// and `k <= MAX_SPLINE_ORDER`, whatever `n_in` and `n_out`.
pub fn tile_scratch_bytes(
    n_in: usize,
    n_out: usize,
    m: usize,
    k: usize,
    shared_grid: bool,
    bsz: usize,
) -> Option<usize> {
    let nb = block_cols(m, n_out)?;
    let f32s = (m + 2) * nb + n_in.min(TILE_INPUTS) * bsz + nb + bsz * (k + 1) + 2 * bsz;
    let knots = (k + 1) * (if shared_grid { 2 } else { m + k + 1 } + 2 * k);
    let f64s = k + 1 + knots;
    let other = bsz * std::mem::size_of::<isize>()
        + bsz * (k + 3) * std::mem::size_of::<(usize, f32)>()
        + (bsz + 1) * std::mem::size_of::<usize>();
    Some(f32s * 4 + f64s * 8 + other)
}

/// One tile of rows: `x` `(bsz, n_in)` into `y` `(bsz, n_out)`, decoded weights in column
/// blocks of `nb` outputs (see [`tile_scratch_bytes`] for the scratch it allocates).
#[inline(always)]
fn decoded_tile_impl<C: Code>(l: &Plan<'_, C>, x: &[f32], y: &mut [f32], ones: &[f32], nb: usize) {
    let (n_in, n_out, k, m, kt, ng) = (l.n_in, l.n_out, l.k, l.m, l.kt, l.ng);
    let bsz = x.len() / n_in;
    for yr in y.chunks_exact_mut(n_out) {
        match l.out_bias {
            Some(ob) => yr.copy_from_slice(ob),
            None => yr.fill(0.0),
        }
    }
    // Column reads of x (stride n_in) would thrash a few L1 sets; transpose a chunk of
    // inputs at a time.
    let ni = tile_inputs(n_in);
    let mut xt = vec![0.0f32; ni * bsz];
    // Rows 0..m: decoded spline rows; m: edge-bias row; m + 1: base row; nb columns.
    let (bias_row, base_row) = (m, m + 1);
    let mut w = vec![0.0f32; (m + 2) * nb];
    let mut gg = vec![0.0f32; nb];
    let mut coef = vec![0.0f32; bsz * (k + 1)];
    let mut first = vec![0isize; bsz];
    let mut s_sum = vec![0.0f32; bsz];
    let mut s_silu = vec![0.0f32; bsz];
    let mut b = vec![0.0f64; k + 1];
    // Knots of the current input (a 2-knot placeholder when the grid is shared).
    let mut own = Knots::new(if l.shared_knots.is_some() { 2 } else { ng }, k);
    // Terms of row r: terms[term_end[r]..term_end[r + 1]], the same for every block.
    let mut terms: Vec<(usize, f32)> = Vec::with_capacity(bsz * (k + 3));
    let mut term_end = vec![0usize; bsz + 1];
    let gain_scale = l.gain_scale.unwrap_or(ones);
    let edge_bias_scale = l.edge_bias_scale.unwrap_or(ones);
    let base_scale = l.base_scale.unwrap_or(ones);
    for i0 in (0..n_in).step_by(ni) {
        let i1 = (i0 + ni).min(n_in);
        for r in 0..bsz {
            let xr = &x[r * n_in + i0..r * n_in + i1];
            for (ii, &v) in xr.iter().enumerate() {
                xt[ii * bsz + r] = v;
            }
        }
        for i in i0..i1 {
            let kn = match &l.shared_knots {
                Some(kn) => kn,
                None => {
                    own.set(l.grid_row(i));
                    &own
                }
            };
            let xs = &xt[(i - i0) * bsz..(i - i0 + 1) * bsz];
            let (cf, fi, ss) = (&mut coef[..], &mut first[..], &mut s_sum[..]);
            let (m_lo, m_hi) = match k {
                1 => tile_basis::<1>(kn, m, xs, cf, fi, ss, &mut b),
                2 => tile_basis::<2>(kn, m, xs, cf, fi, ss, &mut b),
                3 => tile_basis::<3>(kn, m, xs, cf, fi, ss, &mut b),
                _ => tile_basis::<0>(kn, m, xs, cf, fi, ss, &mut b),
            };
            if l.base_weight.is_some() {
                for (sv, &xi) in s_silu.iter_mut().zip(xs) {
                    *sv = l.act(xi);
                }
            }
            terms.clear();
            for r in 0..bsz {
                let cr = &coef[r * (k + 1)..(r + 1) * (k + 1)];
                for (t, &c) in cr.iter().enumerate() {
                    let mi = first[r] + t as isize;
                    if mi >= 0 && (mi as usize) < m && c != 0.0 {
                        terms.push((mi as usize, c));
                    }
                }
                if l.edge_bias.is_some() && s_sum[r] != 0.0 {
                    terms.push((bias_row, s_sum[r]));
                }
                if l.base_weight.is_some() {
                    terms.push((base_row, s_silu[r]));
                }
                term_end[r + 1] = terms.len();
            }
            let lo = i * n_out;
            for o0 in (0..n_out).step_by(nb) {
                let o1 = (o0 + nb).min(n_out);
                let wn = o1 - o0;
                let (elo, ehi) = (lo + o0, lo + o1);
                if m_lo <= m_hi {
                    let gg = &mut gg[..wn];
                    scaled_row(gg, l.gains.range(elo, ehi), &gain_scale[o0..o1]);
                    let codes = &l.codes[elo..ehi];
                    decode_rows(&mut w, wn, gg, codes, &l.ct, kt, m_lo, m_hi);
                }
                if let Some(e) = l.edge_bias {
                    let wr = &mut w[bias_row * wn..(bias_row + 1) * wn];
                    scaled_row(wr, e.range(elo, ehi), &edge_bias_scale[o0..o1]);
                }
                if let Some(e) = l.base_weight {
                    let wr = &mut w[base_row * wn..(base_row + 1) * wn];
                    scaled_row(wr, e.range(elo, ehi), &base_scale[o0..o1]);
                }
                for r in 0..bsz {
                    let tr = &terms[term_end[r]..term_end[r + 1]];
                    axpy_many(&mut y[r * n_out + o0..r * n_out + o1], &w, wn, tr);
                }
            }
        }
    }
}

// ---- entry points: portable and AVX2 builds of the same code --------------------------

fn projection_rows_portable<C: Code>(
    l: &Plan<'_, C>,
    xs: &[f32],
    ys: &mut [f32],
    s: &mut ProjScratch,
) {
    projection_rows_impl(l, xs, ys, s)
}

fn decoded_tile_portable<C: Code>(
    l: &Plan<'_, C>,
    x: &[f32],
    y: &mut [f32],
    ones: &[f32],
    nb: usize,
) {
    decoded_tile_impl(l, x, y, ones, nb)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn projection_rows<C: Code>(
        l: &Plan<'_, C>,
        xs: &[f32],
        ys: &mut [f32],
        s: &mut ProjScratch,
    ) {
        projection_rows_impl(l, xs, ys, s)
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn decoded_tile<C: Code>(
        l: &Plan<'_, C>,
        x: &[f32],
        y: &mut [f32],
        ones: &[f32],
        nb: usize,
    ) {
        decoded_tile_impl(l, x, y, ones, nb)
    }
}

#[cfg(test)]
static FORCE_PORTABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the AVX2 build of the hot loops may run (same results as the portable one:
/// no FMA, no reassociation, only wider vectors).
#[inline]
fn use_avx2() -> bool {
    #[cfg(test)]
    if FORCE_PORTABLE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn projection_rows<C: Code>(l: &Plan<'_, C>, xs: &[f32], ys: &mut [f32], s: &mut ProjScratch) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { avx2::projection_rows(l, xs, ys, s) };
        return;
    }
    projection_rows_portable(l, xs, ys, s)
}

fn decoded_tile<C: Code>(l: &Plan<'_, C>, x: &[f32], y: &mut [f32], ones: &[f32], nb: usize) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { avx2::decoded_tile(l, x, y, ones, nb) };
        return;
    }
    decoded_tile_portable(l, x, y, ones, nb)
}

/// Evaluates all rows: `xs` `(b, n_in)` into `ys` `(b, n_out)` (both row-major).
///
/// Rows (projection tables) or tiles of rows (decoded) run on rayon threads when there
/// are at least two of them and the call has at least [`PAR_MIN_WORK`] row-edges; a
/// single row or a single tile stays on the calling thread. Each output element is
/// computed by the same operations either way. `l.decode_cols` picks the strategy.
fn run<C: Code>(l: &Plan<'_, C>, xs: &[f32], ys: &mut [f32], b: usize) {
    let (n_in, n_out) = (l.n_in, l.n_out);
    let parallel = b > 1
        && b.saturating_mul(n_in).saturating_mul(n_out) >= PAR_MIN_WORK
        && rayon::current_num_threads() > 1;
    let Some(nb) = l.decode_cols else {
        if parallel {
            ys.par_chunks_mut(n_out)
                .zip(xs.par_chunks(n_in))
                .for_each_init(
                    || ProjScratch::new(l),
                    |s, (y, x)| projection_rows(l, x, y, s),
                );
        } else {
            projection_rows(l, xs, ys, &mut ProjScratch::new(l));
        }
        return;
    };
    let ones = vec![1.0f32; n_out];
    // tile * n_out <= b * n_out, which the caller checked.
    let tile = BATCH_TILE.min(b);
    if parallel && b > BATCH_TILE {
        ys.par_chunks_mut(tile * n_out)
            .zip(xs.par_chunks(tile * n_in))
            .for_each(|(y, x)| decoded_tile(l, x, y, &ones, nb));
    } else {
        let tiles = ys.chunks_mut(tile * n_out);
        for (y, x) in tiles.zip(xs.chunks(tile * n_in)) {
            decoded_tile(l, x, y, &ones, nb);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation.

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

/// Evaluates a compressed KAN layer: `y (B, n_out)` from `x (B, n_in)` (ARCHITECTURE §4).
///
/// Equals efficient-kan's `linear(SiLU(x), base_weight) + linear(B(x), w^)` with the
/// decoded coefficients `w^_e = g_e C[q_e] + b_e 1`. Inputs outside the grid (or NaN)
/// contribute no spline term; the base branch still applies (`SiLU(NaN) = NaN`). The grid
/// is `(n_in, G + 2k + 1)` or `(1, G + 2k + 1)` (the same knots for every input).
///
/// # Errors
/// [`Error::InvalidValue`] for a B-spline order `k > MAX_SPLINE_ORDER` (checked first,
/// before anything is allocated) or an output `(B, n_out)` larger than `isize::MAX` bytes
/// (checked next); [`Error::Shape`] for inconsistent shapes; grid errors of
/// [`crate::bspline::validate_grid`] and, for `k >= 1`, [`Error::InvalidValue`] when a knot
/// difference of the recursion or its reciprocal is not finite in f32 (see `check_grid`:
/// "knot spacing too small", "knot range too wide"); [`Error::InvalidValue`] for an RBF
/// width `h` that is not finite and > 0 with a finite reciprocal; [`Error::NonFinite`] for
/// a non-finite codebook, scale, bias, RBF centre or float weight;
/// [`Error::CodeOutOfRange`] for a code outside `0..K`; [`Error::InvalidValue`] for a
/// scale given without its weights, or when an allocation (output, transposed codebook,
/// contiguous copy of a strided view) cannot be made.
pub fn lutham_forward<C: Code>(inp: &LuthamInputs<'_, C>) -> Result<Array2<f32>> {
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
            k: kc,
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

    let mut y = try_zeros::<f32>(out_len, "x")?;
    if n_out == 0 || b == 0 {
        return Array2::from_shape_vec((b, n_out), y)
            .map_err(|e| Error::invalid("x", format!("output shape: {e}")));
    }
    // u8 codes index 256-entry rows; pad while the padded table stays small.
    let m1 = m
        .checked_add(1)
        .ok_or_else(|| Error::invalid("codebook", format!("M = {m} overflows")))?;
    let pad = C::BYTE && kc < 256 && m1.saturating_mul(256 * 4) <= TABLE_PAD_BYTES;
    let kt = if pad { 256 } else { kc };
    let ct_len = checked_len("codebook", "transposed codebook (M + 1, K) =", &[m1, kt], 4)?;
    let mut ct = try_zeros::<f32>(ct_len, "codebook")?;
    for (q, row) in as_slice(&cb).chunks_exact(m).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            ct[j * kt + q] = v;
        }
    }
    let grid_s = as_slice(&grid);
    let shared_grid = grid_rows == 1;
    let decode = inp.basis == Basis::BSpline && b >= DECODE_MIN_BATCH;
    let decode_cols = if decode { decode_cols(m, n_out) } else { None };
    let shared_knots = (decode_cols.is_some() && shared_grid).then(|| {
        let mut kn = Knots::new(ng, k);
        kn.set(grid_s);
        kn
    });
    let plan = Plan {
        n_in,
        n_out,
        k,
        m,
        kc,
        kt,
        ng,
        grid: grid_s,
        shared_grid,
        shared_knots,
        decode_cols,
        ct,
        codes: code_slice,
        gains: gains.slice(),
        edge_bias: edge_bias.as_ref().map(WeightData::slice),
        base_weight: base_weight.as_ref().map(WeightData::slice),
        gain_scale: gain_scale.as_ref().map(as_slice),
        edge_bias_scale: edge_bias_scale.as_ref().map(as_slice),
        out_bias: out_bias.as_ref().map(as_slice),
        base_scale: base_scale.as_ref().map(as_slice),
        basis: inp.basis,
        base_act: inp.base_act,
    };
    let x = contiguous("x", inp.x)?;
    run(&plan, as_slice(&x), &mut y, b);
    Array2::from_shape_vec((b, n_out), y)
        .map_err(|e| Error::invalid("x", format!("output shape: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bspline::basis_dense;
    use crate::quant::quantize_i8;
    use ndarray::{Array1, Array2};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    struct Layer {
        grid: Array2<f32>,
        k: usize,
        coeffs: Array2<f64>, // (E, M) input-major
        base: Array2<f32>,   // (n_in, n_out)
        n_in: usize,
        n_out: usize,
    }

    fn layer(n_in: usize, n_out: usize, g: usize, k: usize, seed: u64) -> Layer {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ng = g + 2 * k + 1;
        let mut grid = Array2::<f32>::zeros((n_in, ng));
        for i in 0..n_in {
            let mut v = -1.0f32 - k as f32 * 0.4;
            for j in 0..ng {
                grid[[i, j]] = v;
                v += 0.2 + rng.random::<f32>() * 0.4;
            }
        }
        let m = g + k;
        let coeffs = Array2::from_shape_fn((n_in * n_out, m), |_| rng.random::<f64>() * 2.0 - 1.0);
        let base = Array2::from_shape_fn((n_in, n_out), |_| rng.random::<f32>() - 0.5);
        Layer {
            grid,
            k,
            coeffs,
            base,
            n_in,
            n_out,
        }
    }

    /// Dense efficient-kan style reference in f64.
    fn dense_ref(
        l: &Layer,
        x: &Array2<f32>,
        w: &Array2<f64>,
        base: bool,
        bias: Option<&Array1<f32>>,
    ) -> Array2<f64> {
        let x64 = x.mapv(|v| v as f64);
        let xin = x64.mapv(|v| if v.is_finite() { v } else { 1e30 });
        let bas = basis_dense(xin.view(), l.grid.mapv(|v| v as f64).view(), l.k).unwrap();
        let mut y = Array2::<f64>::zeros((x.nrows(), l.n_out));
        for r in 0..x.nrows() {
            for o in 0..l.n_out {
                let mut acc = 0.0;
                for i in 0..l.n_in {
                    let e = i * l.n_out + o;
                    acc += bas.slice(ndarray::s![r, i, ..]).dot(&w.row(e));
                    if base {
                        let xv = x64[[r, i]];
                        acc += l.base[[i, o]] as f64 * xv / (1.0 + (-xv).exp());
                    }
                }
                if let Some(b) = bias {
                    acc += b[o] as f64;
                }
                y[[r, o]] = acc;
            }
        }
        y
    }

    fn inputs(n: usize, n_in: usize, seed: u64) -> Array2<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, n_in), |_| rng.random::<f32>() * 3.0 - 1.5)
    }

    fn assert_close(y: &Array2<f32>, r: &Array2<f64>, tol: f64) {
        for (a, b) in y.iter().zip(r.iter()) {
            assert!((*a as f64 - b).abs() <= tol * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn k_equal_e_f32_matches_dense_and_is_thread_invariant() {
        let l = layer(5, 4, 6, 3, 1);
        let e = l.n_in * l.n_out;
        let cb = l.coeffs.mapv(|v| v as f32);
        let codes = Array2::from_shape_fn((l.n_in, l.n_out), |(i, o)| (i * l.n_out + o) as u32);
        let gains = Array2::<f32>::ones((l.n_in, l.n_out));
        let ob = Array1::from_shape_fn(l.n_out, |o| o as f32 * 0.1);
        let x = inputs(33, l.n_in, 2);
        let inp = LuthamInputs {
            x: x.view(),
            grid: l.grid.view(),
            k: l.k,
            codebook: cb.view(),
            codes: codes.view(),
            gains: Weights::F32(gains.view()),
            gain_scale: None,
            edge_bias: None,
            edge_bias_scale: None,
            out_bias: Some(ob.view()),
            base_weight: Some(Weights::F32(l.base.view())),
            base_scale: None,
            basis: Basis::BSpline,
            base_act: BaseAct::Silu,
        };
        let y = lutham_forward(&inp).unwrap();
        assert_eq!(y.dim(), (33, 4));
        let w32 = cb.mapv(|v| v as f64);
        assert_close(&y, &dense_ref(&l, &x, &w32, true, Some(&ob)), 1e-5);
        let _ = e;
        // A row's result depends only on the strategy (batch below DECODE_MIN_BATCH or
        // not), never on the other rows or its position: batch of one == row of a batch
        // of 5 (projection tables); row of this batch of 33 == row of a batch of 13 in
        // another position (decoded tiles); both strategies agree to rounding.
        let x1 = x.slice(ndarray::s![3..4, ..]).to_owned();
        let y1 = lutham_forward(&LuthamInputs {
            x: x1.view(),
            ..inp
        })
        .unwrap();
        let x5 = x.slice(ndarray::s![..5, ..]).to_owned();
        let y5 = lutham_forward(&LuthamInputs {
            x: x5.view(),
            ..inp
        })
        .unwrap();
        assert_eq!(y1.row(0), y5.row(3));
        let x13 = x.slice(ndarray::s![3..16;-1, ..]).to_owned();
        let y13 = lutham_forward(&LuthamInputs {
            x: x13.view(),
            ..inp
        })
        .unwrap();
        assert_eq!(y13.row(12), y.row(3));
        for (a, b) in y1.row(0).iter().zip(y.row(3)) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let yt = pool.install(|| lutham_forward(&inp).unwrap());
            assert_eq!(yt, y);
        }
    }

    #[test]
    fn gsb_fit_with_int8_and_edge_bias_matches_dense() {
        let l = layer(6, 5, 5, 3, 7);
        let e = l.n_in * l.n_out;
        let metric = crate::bspline::gram(l.grid.mapv(|v| v as f64).view(), l.k).unwrap();
        let f = crate::gsb::fit(
            l.coeffs.view(),
            metric.view(),
            &crate::kmeans::KMeansParams {
                k: 8,
                n_iter: 10,
                tol: 0.0,
                seed: 0,
                ..Default::default()
            },
        )
        .unwrap();
        let g2 = f
            .gains
            .clone()
            .into_shape_with_order((l.n_in, l.n_out))
            .unwrap();
        let b2 = f
            .biases
            .clone()
            .into_shape_with_order((l.n_in, l.n_out))
            .unwrap();
        let (gq, gs) = quantize_i8(g2.view(), 1).unwrap();
        let (bq, bs) = quantize_i8(b2.view(), 1).unwrap();
        let base64 = l.base.mapv(|v| v as f64);
        let (wq, ws) = quantize_i8(base64.view(), 1).unwrap();
        let cb = f.codebook.mapv(|v| v as f32);
        let codes_u8 = Array2::from_shape_vec(
            (l.n_in, l.n_out),
            f.codes.iter().map(|&c| c as u8).collect(),
        )
        .unwrap();
        let x = inputs(9, l.n_in, 3);
        // Reference with the dequantised values.
        let gd: Vec<f64> = (0..e)
            .map(|ed| gq[[ed / l.n_out, ed % l.n_out]] as f64 * gs[ed % l.n_out] as f64)
            .collect();
        let bd: Vec<f64> = (0..e)
            .map(|ed| bq[[ed / l.n_out, ed % l.n_out]] as f64 * bs[ed % l.n_out] as f64)
            .collect();
        let what = Array2::from_shape_fn((e, l.coeffs.ncols()), |(ed, j)| {
            gd[ed] * cb[[f.codes[ed] as usize, j]] as f64 + bd[ed]
        });
        let lq = Layer {
            base: Array2::from_shape_fn(l.base.dim(), |(i, o)| {
                (wq[[i, o]] as f64 * ws[o] as f64) as f32
            }),
            ..l
        };
        let reference = dense_ref(&lq, &x, &what, true, None);
        let inp = LuthamInputs {
            x: x.view(),
            grid: lq.grid.view(),
            k: lq.k,
            codebook: cb.view(),
            codes: codes_u8.view(),
            gains: Weights::I8(gq.view()),
            gain_scale: Some(gs.view()),
            edge_bias: Some(Weights::I8(bq.view())),
            edge_bias_scale: Some(bs.view()),
            out_bias: None,
            base_weight: Some(Weights::I8(wq.view())),
            base_scale: Some(ws.view()),
            basis: Basis::BSpline,
            base_act: BaseAct::Silu,
        };
        let y = lutham_forward(&inp).unwrap();
        assert_close(&y, &reference, 1e-4);
        // Same result for every code dtype.
        let c16 = codes_u8.mapv(|c| c as i16);
        let c32 = codes_u8.mapv(|c| c as i32);
        let cu32 = codes_u8.mapv(|c| c as u32);
        assert_eq!(lutham_forward(&inp.with_codes(c16.view())).unwrap(), y);
        assert_eq!(lutham_forward(&inp.with_codes(c32.view())).unwrap(), y);
        assert_eq!(lutham_forward(&inp.with_codes(cu32.view())).unwrap(), y);
    }

    #[test]
    fn out_of_range_and_nan_inputs() {
        let l = layer(2, 3, 4, 2, 9);
        let cb = l.coeffs.mapv(|v| v as f32);
        let codes = Array2::from_shape_fn((2, 3), |(i, o)| (i * 3 + o) as i32);
        let gains = Array2::<f32>::ones((2, 3));
        let x = ndarray::array![[100.0f32, -100.0], [f32::NAN, 0.0]];
        let mut inp = LuthamInputs {
            x: x.view(),
            grid: l.grid.view(),
            k: l.k,
            codebook: cb.view(),
            codes: codes.view(),
            gains: Weights::F32(gains.view()),
            gain_scale: None,
            edge_bias: None,
            edge_bias_scale: None,
            out_bias: None,
            base_weight: None,
            base_scale: None,
            basis: Basis::BSpline,
            base_act: BaseAct::Silu,
        };
        let y = lutham_forward(&inp).unwrap();
        assert!(y.row(0).iter().all(|&v| v == 0.0));
        assert!(y.row(1).iter().all(|v| v.is_finite()));
        inp.base_weight = Some(Weights::F32(l.base.view()));
        let y = lutham_forward(&inp).unwrap();
        let expected: Vec<f32> = (0..3).map(|o| l.base[[0, o]] * 100.0).collect();
        for o in 0..3 {
            assert!((y[[0, o]] - expected[o]).abs() < 1e-3);
        }
        assert!(y.row(1).iter().all(|v| v.is_nan()));
    }

    #[test]
    fn validation_errors() {
        let l = layer(2, 3, 4, 2, 9);
        let cb = l.coeffs.mapv(|v| v as f32);
        let mut codes = Array2::from_shape_fn((2, 3), |(i, o)| (i * 3 + o) as i16);
        codes[[1, 2]] = -1;
        let gains = Array2::<f32>::ones((2, 3));
        let x = inputs(2, 2, 0);
        let inp = LuthamInputs {
            x: x.view(),
            grid: l.grid.view(),
            k: l.k,
            codebook: cb.view(),
            codes: codes.view(),
            gains: Weights::F32(gains.view()),
            gain_scale: None,
            edge_bias: None,
            edge_bias_scale: None,
            out_bias: None,
            base_weight: None,
            base_scale: None,
            basis: Basis::BSpline,
            base_act: BaseAct::Silu,
        };
        assert!(matches!(
            lutham_forward(&inp),
            Err(Error::CodeOutOfRange {
                index: 5,
                code: -1,
                k: 6,
                ..
            })
        ));
        let good = codes.mapv(|c| c.max(0));
        let inp = LuthamInputs {
            codes: good.view(),
            ..inp
        };
        let bad_x = inputs(2, 3, 0);
        assert!(matches!(
            lutham_forward(&LuthamInputs {
                x: bad_x.view(),
                ..inp
            }),
            Err(Error::Shape { .. })
        ));
        let bad_gs = Array1::<f32>::ones(4);
        assert!(matches!(
            lutham_forward(&LuthamInputs {
                gain_scale: Some(bad_gs.view()),
                ..inp
            }),
            Err(Error::Shape { .. })
        ));
        let bad_cb = cb.slice(ndarray::s![.., 1..]).to_owned();
        assert!(matches!(
            lutham_forward(&LuthamInputs {
                codebook: bad_cb.view(),
                ..inp
            }),
            Err(Error::Shape { .. })
        ));
        let mut bad_grid = l.grid.clone();
        bad_grid[[1, 3]] = f32::NAN;
        assert!(matches!(
            lutham_forward(&LuthamInputs {
                grid: bad_grid.view(),
                ..inp
            }),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            lutham_forward(&LuthamInputs { k: 9, ..inp }),
            Err(Error::Shape { .. })
        ));
        let s = Array1::<f32>::ones(3);
        assert!(matches!(
            lutham_forward(&LuthamInputs {
                base_scale: Some(s.view()),
                ..inp
            }),
            Err(Error::InvalidValue { .. })
        ));
        let bad_g = Array2::<f32>::ones((3, 2));
        assert!(matches!(
            lutham_forward(&LuthamInputs {
                gains: Weights::F32(bad_g.view()),
                ..inp
            }),
            Err(Error::Shape { .. })
        ));
        // Non-contiguous views work.
        let xt = inputs(2, 2, 0).reversed_axes();
        let y = lutham_forward(&LuthamInputs {
            x: xt.view(),
            ..inp
        })
        .unwrap();
        let xs = xt.as_standard_layout().into_owned();
        let y2 = lutham_forward(&LuthamInputs {
            x: xs.view(),
            ..inp
        })
        .unwrap();
        assert_eq!(y, y2);
        let empty = Array2::<f32>::zeros((0, 2));
        assert_eq!(
            lutham_forward(&LuthamInputs {
                x: empty.view(),
                ..inp
            })
            .unwrap()
            .dim(),
            (0, 3)
        );
    }

    /// A layer whose knots are the same for every input: `(grid row, repeated grid)`.
    fn shared_grid(n_in: usize, g: usize, k: usize) -> (Array2<f32>, Array2<f32>) {
        let ng = g + 2 * k + 1;
        let h = 2.0 / g as f32;
        let row = Array2::from_shape_fn((1, ng), |(_, j)| -1.0 + (j as f32 - k as f32) * h);
        let full = Array2::from_shape_fn((n_in, ng), |(_, j)| row[[0, j]]);
        (row, full)
    }

    /// Every optional term present, int8 weights, `u8` codes.
    struct Edge {
        cb: Array2<f32>,
        codes: Array2<u8>,
        gains: Array2<i8>,
        bias: Array2<i8>,
        base: Array2<i8>,
        scales: [Array1<f32>; 3],
        ob: Array1<f32>,
    }

    fn edge_layer(n_in: usize, n_out: usize, m: usize, kc: usize, seed: u64) -> Edge {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let i8s = |rng: &mut ChaCha8Rng| {
            Array2::from_shape_fn((n_in, n_out), |_| rng.random_range(-127i32..=127) as i8)
        };
        let gains = i8s(&mut rng);
        let bias = i8s(&mut rng);
        let base = i8s(&mut rng);
        let vec =
            |rng: &mut ChaCha8Rng| Array1::from_shape_fn(n_out, |_| rng.random::<f32>() * 0.02);
        let scales = [vec(&mut rng), vec(&mut rng), vec(&mut rng)];
        Edge {
            cb: Array2::from_shape_fn((kc, m), |_| rng.random::<f32>() * 2.0 - 1.0),
            codes: Array2::from_shape_fn((n_in, n_out), |_| rng.random_range(0..kc) as u8),
            gains,
            bias,
            base,
            scales,
            ob: Array1::from_shape_fn(n_out, |_| rng.random::<f32>() - 0.5),
        }
    }

    fn edge_inputs<'a>(
        e: &'a Edge,
        x: &'a Array2<f32>,
        grid: &'a Array2<f32>,
        k: usize,
    ) -> LuthamInputs<'a, u8> {
        LuthamInputs {
            x: x.view(),
            grid: grid.view(),
            k,
            codebook: e.cb.view(),
            codes: e.codes.view(),
            gains: Weights::I8(e.gains.view()),
            gain_scale: Some(e.scales[0].view()),
            edge_bias: Some(Weights::I8(e.bias.view())),
            edge_bias_scale: Some(e.scales[1].view()),
            out_bias: Some(e.ob.view()),
            base_weight: Some(Weights::I8(e.base.view())),
            base_scale: Some(e.scales[2].view()),
            basis: Basis::BSpline,
            base_act: BaseAct::Silu,
        }
    }

    /// Dense f64 reference for RBF / Chebyshev layers built by `edge_layer`.
    fn dense_basis_ref(
        e: &Edge,
        x: &Array2<f32>,
        centres: Option<(&Array2<f32>, f32)>,
        gelu_act: bool,
    ) -> Array2<f64> {
        let (n_in, n_out) = e.codes.dim();
        let m = e.cb.ncols();
        let mut y = Array2::<f64>::zeros((x.nrows(), n_out));
        for r in 0..x.nrows() {
            for i in 0..n_in {
                let xv = x[[r, i]] as f64;
                let b: Vec<f64> = match centres {
                    Some((c, h)) => {
                        let row = if c.nrows() == 1 { 0 } else { i };
                        (0..m)
                            .map(|j| (-((xv - c[[row, j]] as f64) / h as f64).powi(2)).exp())
                            .collect()
                    }
                    None => {
                        let t = xv.tanh();
                        let mut v = vec![1.0, t];
                        while v.len() < m {
                            let n = v.len();
                            v.push(2.0 * t * v[n - 1] - v[n - 2]);
                        }
                        v.truncate(m);
                        v
                    }
                };
                let act = if gelu_act {
                    0.5 * xv * (1.0 + erf(xv / 2f64.sqrt()))
                } else {
                    xv / (1.0 + (-xv).exp())
                };
                for o in 0..n_out {
                    let q = e.codes[[i, o]] as usize;
                    let g = e.gains[[i, o]] as f64 * e.scales[0][o] as f64;
                    let eb = e.bias[[i, o]] as f64 * e.scales[1][o] as f64;
                    let bw = e.base[[i, o]] as f64 * e.scales[2][o] as f64;
                    let mut acc = bw * act;
                    for (j, bj) in b.iter().enumerate() {
                        acc += bj * (g * e.cb[[q, j]] as f64 + eb);
                    }
                    y[[r, o]] += acc;
                }
            }
            for o in 0..n_out {
                y[[r, o]] += e.ob[o] as f64;
            }
        }
        y
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (-2.0, -0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (5.5, 0.999_999_999_999_992_6),
        ] {
            assert!(
                (erf(x) - want).abs() <= 4e-16 * want.abs().max(1e-300) + 1e-300,
                "{x}: {}",
                erf(x)
            );
        }
        assert_eq!(erf(f64::INFINITY), 1.0);
        assert_eq!(erf(-7.0), -1.0);
        assert!(erf(f64::NAN).is_nan());
    }

    #[test]
    fn dense_bases_match_reference_at_every_batch_size() {
        let (n_in, n_out, m) = (6, 5, 7);
        let e = edge_layer(n_in, n_out, m, 20, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let per_input = Array2::from_shape_fn((n_in, m), |_| rng.random::<f32>() * 4.0 - 2.0);
        let shared = per_input.slice(ndarray::s![..1, ..]).to_owned();
        let dummy = Array2::<f32>::zeros((1, 2));
        for b in [1usize, 3, 12, 70] {
            let mut x = inputs(b, n_in, 5 + b as u64).mapv(|v| v * 3.0);
            x[[b - 1, 0]] = 60.0;
            x[[0, 1]] = -40.0;
            for gelu_act in [false, true] {
                let act = if gelu_act {
                    BaseAct::Gelu
                } else {
                    BaseAct::Silu
                };
                for c in [&per_input, &shared] {
                    let inp = LuthamInputs {
                        basis: Basis::Rbf { h: 0.7 },
                        base_act: act,
                        ..edge_inputs(&e, &x, c, 0)
                    };
                    let y = lutham_forward(&inp).unwrap();
                    let r = dense_basis_ref(&e, &x, Some((c, 0.7)), gelu_act);
                    assert_close(&y, &r, 1e-5);
                    // row-wise: a row's result does not depend on the batch
                    let y1 = lutham_forward(&LuthamInputs {
                        x: x.slice(ndarray::s![..1, ..]),
                        ..inp
                    })
                    .unwrap();
                    assert_eq!(y1.row(0), y.row(0));
                }
                let inp = LuthamInputs {
                    basis: Basis::Chebyshev,
                    base_act: act,
                    k: 99, // not read
                    ..edge_inputs(&e, &x, &dummy, 0)
                };
                let y = lutham_forward(&inp).unwrap();
                assert_close(&y, &dense_basis_ref(&e, &x, None, gelu_act), 1e-5);
            }
        }
        // NaN input: NaN row.
        let mut x = inputs(2, n_in, 1);
        x[[1, 2]] = f32::NAN;
        let y = lutham_forward(&LuthamInputs {
            basis: Basis::Chebyshev,
            ..edge_inputs(&e, &x, &dummy, 0)
        })
        .unwrap();
        assert!(y.row(1).iter().all(|v| v.is_nan()) && y.row(0).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn dense_basis_validation() {
        let (n_in, n_out, m) = (4, 3, 5);
        let e = edge_layer(n_in, n_out, m, 6, 1);
        let x = inputs(2, n_in, 0);
        let c = Array2::from_shape_fn((n_in, m), |(i, j)| (i + j) as f32 * 0.1);
        for h in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
            let inp = LuthamInputs {
                basis: Basis::Rbf { h },
                ..edge_inputs(&e, &x, &c, 0)
            };
            assert!(
                matches!(lutham_forward(&inp), Err(Error::InvalidValue { .. })),
                "{h}"
            );
        }
        let narrow = c.slice(ndarray::s![.., ..m - 1]).to_owned();
        let two = c.slice(ndarray::s![..2, ..]).to_owned();
        for g in [&narrow, &two] {
            let inp = LuthamInputs {
                basis: Basis::Rbf { h: 1.0 },
                ..edge_inputs(&e, &x, g, 0)
            };
            assert!(matches!(lutham_forward(&inp), Err(Error::Shape { .. })));
        }
        let mut bad = c.clone();
        bad[[1, 1]] = f32::NAN;
        let inp = LuthamInputs {
            basis: Basis::Rbf { h: 1.0 },
            ..edge_inputs(&e, &x, &bad, 0)
        };
        assert!(matches!(lutham_forward(&inp), Err(Error::NonFinite { .. })));
    }

    #[test]
    fn shared_grid_row_equals_repeated_grid() {
        // (1, NG) means the same knots for every input: bit-identical to the repeated
        // grid, in both strategies, for the unrolled orders and the generic one.
        for k in 0..=5 {
            let (n_in, n_out, g) = (7, 9, 5);
            let (row, full) = shared_grid(n_in, g, k);
            let e = edge_layer(n_in, n_out, g + k, 20, k as u64);
            for b in [1, 5, 12, 70] {
                let mut x = inputs(b, n_in, 10 + k as u64);
                x[[0, 0]] = f32::NAN;
                x[[b - 1, 1]] = 1e6;
                x[[b / 2, 2]] = full[[0, k + 1]]; // on a knot
                let y_full = lutham_forward(&edge_inputs(&e, &x, &full, k)).unwrap();
                let y_row = lutham_forward(&edge_inputs(&e, &x, &row, k)).unwrap();
                assert_eq!(y_full.dim(), (b, n_out));
                // NaN in x gives NaN through the base branch in both.
                for (a, c) in y_row.iter().zip(y_full.iter()) {
                    assert_eq!(a.to_bits(), c.to_bits(), "k={k} b={b}: {a} vs {c}");
                }
            }
        }
        // A grid with 1 < rows != n_in is refused; so is a bad shared row.
        let (row, _) = shared_grid(3, 4, 2);
        let e = edge_layer(3, 2, 6, 4, 0);
        let x = inputs(2, 3, 0);
        let two = ndarray::concatenate![ndarray::Axis(0), row, row];
        assert!(matches!(
            lutham_forward(&edge_inputs(&e, &x, &two, 2)),
            Err(Error::Shape { .. })
        ));
        let mut bad = row.clone();
        bad[[0, 3]] = bad[[0, 2]];
        assert!(matches!(
            lutham_forward(&edge_inputs(&e, &x, &bad, 2)),
            Err(Error::InvalidValue { .. })
        ));
        bad[[0, 3]] = f32::INFINITY;
        assert!(matches!(
            lutham_forward(&edge_inputs(&e, &x, &bad, 2)),
            Err(Error::NonFinite { .. })
        ));
    }

    #[test]
    fn strategies_agree_and_are_thread_and_simd_invariant() {
        // Large enough for the parallel paths (rows of projection tables; tiles).
        let (n_in, n_out, g, k) = (64, 160, 6, 3);
        let l = layer(n_in, n_out, g, k, 21);
        let e = edge_layer(n_in, n_out, g + k, 256, 22);
        for b in [8, 130] {
            let x = inputs(b, n_in, 23);
            let inp = edge_inputs(&e, &x, &l.grid, k);
            let y = lutham_forward(&inp).unwrap();
            for threads in [1, 2, 5] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                assert_eq!(pool.install(|| lutham_forward(&inp).unwrap()), y);
            }
            FORCE_PORTABLE.store(true, std::sync::atomic::Ordering::Relaxed);
            let portable = lutham_forward(&inp);
            FORCE_PORTABLE.store(false, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(portable.unwrap(), y);
            // each row by the other strategy: projection tables one row at a time, or
            // decoded tiles for the row repeated DECODE_MIN_BATCH times
            for r in [0, b / 2, b - 1] {
                let reps = if b < DECODE_MIN_BATCH {
                    DECODE_MIN_BATCH
                } else {
                    1
                };
                let xr = Array2::from_shape_fn((reps, n_in), |(_, i)| x[[r, i]]);
                let yr = lutham_forward(&edge_inputs(&e, &xr, &l.grid, k)).unwrap();
                let scale = y.row(r).iter().fold(0.0f32, |a, v| a.max(v.abs()));
                for (a, c) in yr.row(reps - 1).iter().zip(y.row(r)) {
                    assert!((a - c).abs() <= 2e-5 * (1.0 + scale), "row {r}: {a} vs {c}");
                }
            }
        }
    }

    fn invalid_arg<T: std::fmt::Debug>(r: Result<T>, arg: &str, needle: &str) {
        match r {
            Err(Error::InvalidValue { arg: a, detail }) => {
                assert_eq!(a, arg, "{detail}");
                assert!(detail.contains(needle), "{detail}");
            }
            other => panic!("expected InvalidValue for {arg}, got {other:?}"),
        }
    }

    #[test]
    fn spline_order_cap() {
        let (n_in, n_out) = (2, 3);
        let x = inputs(2, n_in, 0);
        let (row, _) = shared_grid(n_in, 3, 2);
        let e = edge_layer(n_in, n_out, 5, 4, 0);
        // Refused before the grid's shape is read (2k + 2 overflows for the last two).
        for k in [MAX_SPLINE_ORDER + 1, 16384, usize::MAX / 2, usize::MAX] {
            invalid_arg(
                lutham_forward(&edge_inputs(&e, &x, &row, k)),
                "k",
                "exceeds the maximum 15",
            );
        }
        // A consistent layer of order 16 (the size an attacker would use) as well.
        let (row16, _) = shared_grid(n_in, 2, 16);
        let e16 = edge_layer(n_in, n_out, 18, 4, 0);
        invalid_arg(
            lutham_forward(&edge_inputs(&e16, &x, &row16, 16)),
            "k",
            "maximum",
        );
        // Other bases do not read k.
        let dummy = Array2::<f32>::zeros((1, 2));
        let inp = LuthamInputs {
            basis: Basis::Chebyshev,
            ..edge_inputs(&e, &x, &dummy, usize::MAX)
        };
        assert!(lutham_forward(&inp).is_ok());
    }

    #[test]
    fn largest_order_matches_dense_in_both_strategies() {
        let k = MAX_SPLINE_ORDER;
        let l = layer(3, 4, 3, k, 5);
        let cb = l.coeffs.mapv(|v| v as f32);
        let codes = Array2::from_shape_fn((3, 4), |(i, o)| (i * 4 + o) as u16 as i16);
        let gains = Array2::<f32>::ones((3, 4));
        for b in [2, 12, 70] {
            let x = inputs(b, 3, 6).mapv(|v| v * 4.0);
            let y = lutham_forward(&LuthamInputs {
                x: x.view(),
                grid: l.grid.view(),
                k,
                codebook: cb.view(),
                codes: codes.view(),
                gains: Weights::F32(gains.view()),
                gain_scale: None,
                edge_bias: None,
                edge_bias_scale: None,
                out_bias: None,
                base_weight: Some(Weights::F32(l.base.view())),
                base_scale: None,
                basis: Basis::BSpline,
                base_act: BaseAct::Silu,
            })
            .unwrap();
            assert_close(
                &y,
                &dense_ref(&l, &x, &cb.mapv(|v| v as f64), true, None),
                1e-5,
            );
        }
    }

    #[test]
    fn output_size_overflow_is_an_error() {
        // Stride-0 views: huge logical shapes over one element, nothing is read or copied
        // before the output size is refused.
        let one_f = [0.5f32];
        let one_c = [0u8];
        let one_g = [1i8];
        let grid = Array2::from_shape_fn((1, 6), |(_, j)| j as f32);
        let cb = Array2::<f32>::ones((1, 4));
        use ndarray::ShapeBuilder;
        for (b, n_out) in [
            (1usize << 33, 1usize << 33),
            (1 << 31, 1 << 31),
            (usize::MAX / 8, 3),
        ] {
            let x = ArrayView2::from_shape((b, 1).strides((0, 0)), &one_f[..]).unwrap();
            let codes = ArrayView2::from_shape((1, n_out).strides((0, 0)), &one_c[..]).unwrap();
            let gains = ArrayView2::from_shape((1, n_out).strides((0, 0)), &one_g[..]).unwrap();
            let inp = LuthamInputs {
                x,
                grid: grid.view(),
                k: 1,
                codebook: cb.view(),
                codes,
                gains: Weights::I8(gains),
                gain_scale: None,
                edge_bias: None,
                edge_bias_scale: None,
                out_bias: None,
                base_weight: None,
                base_scale: None,
                basis: Basis::BSpline,
                base_act: BaseAct::Silu,
            };
            invalid_arg(lutham_forward(&inp), "x", "output (B, n_out) =");
        }
    }

    #[test]
    fn extreme_grids_are_refused_like_the_kernel() {
        let (n_in, n_out) = (2, 3);
        let e = edge_layer(n_in, n_out, 5, 4, 0);
        let x = inputs(3, n_in, 0);
        // 7 knots, k = 1, M = 5.
        let tiny: Vec<f32> = vec![0.0, 1e-40, 1.0, 2.0, 3.0, 4.0, 5.0];
        let wide: Vec<f32> = vec![-3e38, 1e38, 1.5e38, 2e38, 2.5e38, 3e38, 3.3e38];
        for (row, needle) in [
            (&tiny, "knot spacing too small"),
            (&wide, "knot range too wide"),
        ] {
            let g = Array2::from_shape_vec((1, 7), row.clone()).unwrap();
            invalid_arg(lutham_forward(&edge_inputs(&e, &x, &g, 1)), "grid", needle);
            let full = Array2::from_shape_fn((n_in, 7), |(_, j)| row[j]);
            invalid_arg(
                lutham_forward(&edge_inputs(&e, &x, &full, 1)),
                "grid",
                needle,
            );
        }
        // Adjacent differences finite, grid[j + 2] - grid[j] not: k = 2 refuses, k = 1
        // (which divides by adjacent differences only) accepts.
        let e2 = edge_layer(n_in, n_out, 4, 4, 0);
        let two: Vec<f32> = vec![-3.4e38, -1.5e38, 1.5e38, 2e38, 2.5e38, 3e38, 3.3e38];
        let g = Array2::from_shape_vec((1, 7), two).unwrap();
        invalid_arg(
            lutham_forward(&edge_inputs(&e2, &x, &g, 2)),
            "grid",
            "knot range too wide",
        );
        assert!(lutham_forward(&edge_inputs(&e, &x, &g, 1)).is_ok());
        // k = 0 divides by no knot difference: the same grids are accepted.
        let e0 = edge_layer(n_in, n_out, 6, 4, 0);
        for row in [&tiny, &wide] {
            let g = Array2::from_shape_vec((1, 7), row.clone()).unwrap();
            let y = lutham_forward(&edge_inputs(&e0, &x, &g, 0)).unwrap();
            assert!(y.iter().all(|v| v.is_finite()));
        }
        // Just above the limit: the smallest spacing with a finite f32 reciprocal.
        let ok: Vec<f32> = vec![0.0, 3e-39, 1.0, 2.0, 3.0, 4.0, 5.0];
        let g = Array2::from_shape_vec((1, 7), ok).unwrap();
        assert!(lutham_forward(&edge_inputs(&e, &x, &g, 1)).is_ok());
        // RBF width: finite, > 0, finite reciprocal.
        let c = Array2::from_shape_fn((1, 5), |(_, j)| j as f32);
        for h in [1e-40f32, f32::MIN_POSITIVE / 4.0] {
            let inp = LuthamInputs {
                basis: Basis::Rbf { h },
                ..edge_inputs(&e, &x, &c, 0)
            };
            invalid_arg(lutham_forward(&inp), "h", "reciprocal");
        }
        let inp = LuthamInputs {
            basis: Basis::Rbf { h: 1e-30 },
            ..edge_inputs(&e, &x, &c, 0)
        };
        assert!(lutham_forward(&inp).is_ok());
    }

    #[test]
    fn decoded_scratch_is_bounded() {
        let big = usize::MAX / 16;
        for k in 0..=MAX_SPLINE_ORDER {
            for m in [k.max(1), 13, 100, 1000, 8191, 32766] {
                for n_out in [1, 64, 1000, 1 << 20, big] {
                    for n_in in [1, 5000, big] {
                        for shared in [false, true] {
                            let bytes = tile_scratch_bytes(n_in, n_out, m, k, shared, BATCH_TILE)
                                .unwrap_or_else(|| panic!("m={m} n_out={n_out}"));
                            assert!(bytes <= TILE_SCRATCH_MAX_BYTES, "{bytes} m={m} k={k}");
                        }
                    }
                }
            }
        }
        // Layers whose M + 2 rows do not fit DECODE_MIN_COLS columns use projection tables.
        assert_eq!(block_cols(32767, 1000), None);
        assert_eq!(block_cols(usize::MAX, 1), None);
        assert_eq!(tile_scratch_bytes(1, 1 << 20, 40000, 3, false, 64), None);
        // A narrow layer keeps one block even with large M.
        assert_eq!(block_cols(1 << 20, 1), Some(1));
        assert_eq!(block_cols(13, 256), Some(256));
        let nb = block_cols(13, 1 << 20).unwrap();
        assert!(nb % 16 == 0 && nb * 15 * 4 <= DECODE_BLOCK_BYTES && nb >= DECODE_MIN_COLS);
    }

    /// Column blocks and input chunks change no bit: each output column of a wide layer
    /// equals the same column evaluated alone, for any block width and thread count.
    #[test]
    fn column_blocks_and_input_chunks_do_not_change_results() {
        use std::sync::atomic::Ordering::Relaxed;
        let (n_in, n_out, g, k) = (9, 150, 5, 3);
        let l = layer(n_in, n_out, g, k, 31);
        let e = edge_layer(n_in, n_out, g + k, 40, 32);
        let x = inputs(70, n_in, 33);
        let (_, shared_full) = shared_grid(n_in, g, k);
        let (shared_row, _) = shared_grid(n_in, g, k);
        for grid in [&l.grid, &shared_row, &shared_full] {
            let inp = edge_inputs(&e, &x, grid, k);
            let y = lutham_forward(&inp).unwrap();
            for (cols, chunk) in [(16, 0), (48, 4), (1, 1), (0, 2)] {
                FORCE_DECODE_COLS.store(cols, Relaxed);
                FORCE_TILE_INPUTS.store(chunk, Relaxed);
                let blocked = lutham_forward(&inp);
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(3)
                    .build()
                    .unwrap();
                let threaded = pool.install(|| lutham_forward(&inp));
                FORCE_DECODE_COLS.store(0, Relaxed);
                FORCE_TILE_INPUTS.store(0, Relaxed);
                assert_eq!(blocked.unwrap(), y, "cols={cols} chunk={chunk}");
                assert_eq!(threaded.unwrap(), y, "cols={cols} chunk={chunk}");
            }
            // One column alone (one block of width 1) gives the same bits.
            for o in [0, 17, 149] {
                let col = |a: &Array2<i8>| a.slice(ndarray::s![.., o..o + 1]).to_owned();
                let v = |a: &Array1<f32>| a.slice(ndarray::s![o..o + 1]).to_owned();
                let (gq, bq, wq) = (col(&e.gains), col(&e.bias), col(&e.base));
                let codes = e.codes.slice(ndarray::s![.., o..o + 1]).to_owned();
                let (s0, s1, s2, ob) =
                    (v(&e.scales[0]), v(&e.scales[1]), v(&e.scales[2]), v(&e.ob));
                let one = LuthamInputs {
                    codes: codes.view(),
                    gains: Weights::I8(gq.view()),
                    gain_scale: Some(s0.view()),
                    edge_bias: Some(Weights::I8(bq.view())),
                    edge_bias_scale: Some(s1.view()),
                    out_bias: Some(ob.view()),
                    base_weight: Some(Weights::I8(wq.view())),
                    base_scale: Some(s2.view()),
                    ..inp
                };
                let yo = lutham_forward(&one).unwrap();
                assert_eq!(yo.column(0), y.column(o), "column {o}");
            }
        }
    }

    /// A wide layer really split into column blocks by the budget (no test hook).
    #[test]
    fn wide_layer_uses_bounded_blocks() {
        let (n_in, n_out, g, k) = (2, 150_000, 10, 3);
        let nb = block_cols(g + k, n_out).unwrap();
        assert!(nb < n_out, "{nb}");
        let e = edge_layer(n_in, n_out, g + k, 16, 41);
        let (row, _) = shared_grid(n_in, g, k);
        let x = inputs(DECODE_MIN_BATCH, n_in, 42);
        let y = lutham_forward(&edge_inputs(&e, &x, &row, k)).unwrap();
        // Each row through projection tables (batch of one): equal to rounding.
        for r in [0, DECODE_MIN_BATCH - 1] {
            let y1 = lutham_forward(&edge_inputs(
                &e,
                &x.slice(ndarray::s![r..r + 1, ..]).to_owned(),
                &row,
                k,
            ))
            .unwrap();
            for (a, c) in y1.row(0).iter().zip(y.row(r)) {
                assert!((a - c).abs() <= 1e-5 * (1.0 + c.abs()), "{a} vs {c}");
            }
        }
    }

    #[test]
    fn unpadded_u8_table_for_huge_codebook_width() {
        // M + 1 > 8192: u8 codes do not pad the transposed codebook to 256 columns; the
        // results equal those of i16 codes (never padded) bit for bit, in both strategies.
        let (n_in, n_out, g, k, kc) = (2, 5, 8300, 1, 3);
        let m = g + k;
        assert!((m + 1) * 256 * 4 > TABLE_PAD_BYTES);
        let e = edge_layer(n_in, n_out, m, kc, 51);
        let (row, full) = shared_grid(n_in, g, k);
        for b in [1, 12, 70] {
            let x = inputs(b, n_in, 52);
            for grid in [&row, &full] {
                let inp = edge_inputs(&e, &x, grid, k);
                let y = lutham_forward(&inp).unwrap();
                let c16 = e.codes.mapv(|c| c as i16);
                assert_eq!(
                    lutham_forward(&inp.with_codes(c16.view())).unwrap(),
                    y,
                    "b={b}"
                );
            }
        }
        // Codes >= K are still refused without padding.
        let mut bad = e.codes.clone();
        bad[[1, 4]] = kc as u8;
        let x = inputs(2, n_in, 52);
        let inp = LuthamInputs {
            codes: bad.view(),
            ..edge_inputs(&e, &x, &row, k)
        };
        assert!(matches!(
            lutham_forward(&inp),
            Err(Error::CodeOutOfRange {
                index: 9,
                code: 3,
                ..
            })
        ));
    }

    #[test]
    fn huge_codebook_width_falls_back_to_projection_tables() {
        // M + 2 rows of DECODE_MIN_COLS columns exceed the block budget: a batch of
        // DECODE_MIN_BATCH rows runs through projection tables, row by row, so every row
        // equals its batch-of-one result bit for bit.
        let (n_in, n_out, g, k) = (1, 70, 40_000, 1);
        assert_eq!(block_cols(g + k, n_out), None);
        let e = edge_layer(n_in, n_out, g + k, 4, 61);
        let (row, _) = shared_grid(n_in, g, k);
        let x = inputs(DECODE_MIN_BATCH, n_in, 62);
        let y = lutham_forward(&edge_inputs(&e, &x, &row, k)).unwrap();
        for r in 0..DECODE_MIN_BATCH {
            let xr = x.slice(ndarray::s![r..r + 1, ..]).to_owned();
            let yr = lutham_forward(&edge_inputs(&e, &xr, &row, k)).unwrap();
            assert_eq!(yr.row(0), y.row(r));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn evaluator_equals_dense(n_in in 1usize..6, n_out in 1usize..6, g in 1usize..7, k in 0usize..4, seed in 0u64..1000, b in 1usize..5) {
            let l = layer(n_in, n_out, g, k, seed);
            let cb = l.coeffs.mapv(|v| v as f32);
            let codes = Array2::from_shape_fn((n_in, n_out), |(i, o)| (i * n_out + o) as u32);
            let gains = Array2::<f32>::ones((n_in, n_out));
            let x = inputs(b, n_in, seed + 1);
            let y = lutham_forward(&LuthamInputs {
                x: x.view(), grid: l.grid.view(), k, codebook: cb.view(), codes: codes.view(),
                gains: Weights::F32(gains.view()), gain_scale: None, edge_bias: None,
                edge_bias_scale: None, out_bias: None, base_weight: Some(Weights::F32(l.base.view())), base_scale: None,
                basis: Basis::BSpline,
                base_act: BaseAct::Silu,
            }).unwrap();
            let r = dense_ref(&l, &x, &cb.mapv(|v| v as f64), true, None);
            for (a, bb) in y.iter().zip(r.iter()) {
                prop_assert!((*a as f64 - bb).abs() <= 1e-5 * (1.0 + bb.abs()));
            }
        }

        #[test]
        fn decoded_tiles_equal_dense(n_in in 1usize..6, n_out in 1usize..6, g in 1usize..7, k in 0usize..5, seed in 0u64..1000, b in 12usize..80, shared in proptest::bool::ANY) {
            let mut l = layer(n_in, n_out, g, k, seed);
            let (row, full) = shared_grid(n_in, g, k);
            if shared {
                l.grid = full;
            }
            let cb = l.coeffs.mapv(|v| v as f32);
            let codes = Array2::from_shape_fn((n_in, n_out), |(i, o)| (i * n_out + o) as i16);
            let gains = Array2::<f32>::ones((n_in, n_out));
            let x = inputs(b, n_in, seed + 1);
            let grid = if shared { row } else { l.grid.clone() };
            let y = lutham_forward(&LuthamInputs {
                x: x.view(), grid: grid.view(), k, codebook: cb.view(), codes: codes.view(),
                gains: Weights::F32(gains.view()), gain_scale: None, edge_bias: None,
                edge_bias_scale: None, out_bias: None, base_weight: Some(Weights::F32(l.base.view())), base_scale: None,
                basis: Basis::BSpline,
                base_act: BaseAct::Silu,
            }).unwrap();
            let r = dense_ref(&l, &x, &cb.mapv(|v| v as f64), true, None);
            for (a, bb) in y.iter().zip(r.iter()) {
                prop_assert!((*a as f64 - bb).abs() <= 1e-5 * (1.0 + bb.abs()));
            }
        }
    }
}
