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
//! Rows (projection tables) or tiles (decoded) run on rayon threads when there is enough
//! work; a batch of a few tiles is cut into one tile per thread (at least
//! [`DECODE_MIN_BATCH`] rows each), a single row stays on the calling thread.
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
//! detailed error comes from [`validate_grid`](crate::bspline::validate_grid) only on
//! failure), code ranges by a min/max scan (skipped for u8 codes when K >= 256), float
//! weights by a branch-free finiteness scan; nothing of size `n_in x n_out` is copied when
//! the inputs are C-contiguous.
//!
//! Files, by strategy (the C++ kernel `lutham/` is split the same way): `validate.rs`
//! (input checks, caps, the knot-spacing rule, contiguous copies), `basis.rs` (B-spline
//! spans and local values, RBF, Chebyshev, activations), `projection.rs` (the
//! projection-table path), `decoded.rs` (the decoded-tile path and its scratch bounds),
//! `simd.rs` (portable and AVX2 builds of both paths, picked at run time), `tests.rs`;
//! this file holds the public API, the plan both paths read and the row/tile scheduler.

mod basis;
mod decoded;
mod projection;
mod simd;
#[cfg(test)]
mod tests;
mod validate;

use crate::bspline::{checked_len, try_zeros};
use crate::error::{Error, Result};
use ndarray::{Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use basis::Knots;
use decoded::decode_cols;
use projection::ProjScratch;
use simd::{decoded_tile, projection_rows};
use validate::{as_slice, check_inputs, contiguous, Checked, WeightData};

pub use crate::bspline::MAX_SPLINE_ORDER;
pub use basis::erf;
pub use decoded::tile_scratch_bytes;

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
// What the hot loops read.

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
}

#[inline(always)]
fn lookup<C: Code>(table: &[f32], c: C) -> f32 {
    if C::BYTE {
        table[c.index() & 255]
    } else {
        table[c.index()]
    }
}

// ---------------------------------------------------------------------------------------
// Scheduling and the entry point.

/// Evaluates all rows: `xs` `(b, n_in)` into `ys` `(b, n_out)` (both row-major).
///
/// Rows (projection tables) or tiles of rows (decoded) run on rayon threads when there
/// are at least two of them and the call has at least [`PAR_MIN_WORK`] row-edges (tiles
/// then hold at most `b / threads` rows, at least [`DECODE_MIN_BATCH`]); a single row stays
/// on the calling thread. Each output element is computed by the same operations either
/// way. `l.decode_cols` picks the strategy.
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
    // tile * n_out <= b * n_out, which the caller checked. With threads, a batch of at most
    // a few tiles is cut into one tile per thread (each decodes the weights itself; every
    // output row is computed the same way whatever the tile it falls in).
    let threads = rayon::current_num_threads().max(1);
    let tile = if parallel {
        BATCH_TILE
            .min(b.div_ceil(threads))
            .max(DECODE_MIN_BATCH.min(b))
    } else {
        BATCH_TILE.min(b)
    };
    if parallel && b > tile {
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
    let Checked {
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
    } = check_inputs(inp)?;
    let code_slice = as_slice(&codes);

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
