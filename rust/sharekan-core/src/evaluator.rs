//! LUTHAM reference evaluator (ARCHITECTURE §4).
//!
//! Per input row and per input `i`: find the knot span of `x_i` and its `k + 1` non-zero
//! basis values once, build the projection table `P_i[q] = sum_t b_t C[q, j-k+t]` (K
//! floats, stays in L1), then walk the contiguous row of codes and gains of input `i`.
//! Rows of a batch are independent and run in parallel; the result does not depend on
//! the number of threads.

use crate::bspline::{basis_span, validate_grid};
use crate::error::{check_finite_f32, fmt_shape, Error, Result};
use ndarray::{Array2, ArrayView, ArrayView1, ArrayView2, Axis, CowArray, Dimension, Ix1, Ix2};
use rayon::prelude::*;

/// Integer types accepted as codes (`u8`, `i16`, `i32`, `u32`).
pub trait Code: Copy + Send + Sync + 'static {
    /// The code as `i64` (for range checks and error messages).
    fn to_i64(self) -> i64;
}

macro_rules! impl_code {
    ($($t:ty),*) => {$(
        impl Code for $t {
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self as i64
            }
        }
    )*};
}
impl_code!(u8, i16, i32, u32);

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

/// Inputs of [`lutham_forward`]; names, shapes and meaning as in ARCHITECTURE §4.
#[derive(Debug, Clone, Copy)]
pub struct LuthamInputs<'a, C: Code> {
    /// Inputs `(B, n_in)`.
    pub x: ArrayView2<'a, f32>,
    /// Knots `(n_in, G + 2k + 1)`, strictly increasing rows.
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
        }
    }
}

/// Borrows a view if it is already in standard (C) layout, otherwise copies it.
fn contiguous<A: Clone, D: Dimension>(v: ArrayView<'_, A, D>) -> CowArray<'_, A, D> {
    if v.is_standard_layout() {
        CowArray::from(v)
    } else {
        CowArray::from(v.as_standard_layout().into_owned())
    }
}

/// Contiguous borrowed-or-owned weights.
enum WeightData<'a> {
    F32(CowArray<'a, f32, Ix2>),
    I8(CowArray<'a, i8, Ix2>),
}

impl<'a> WeightData<'a> {
    fn new(w: &Weights<'a>) -> Self {
        match *w {
            Weights::F32(v) => WeightData::F32(contiguous(v)),
            Weights::I8(v) => WeightData::I8(contiguous(v)),
        }
    }

    fn row(&self, i: usize, n_out: usize) -> WeightRow<'_> {
        match self {
            WeightData::F32(a) => {
                WeightRow::F32(&a.as_slice().unwrap_or(&[])[i * n_out..(i + 1) * n_out])
            }
            WeightData::I8(a) => {
                WeightRow::I8(&a.as_slice().unwrap_or(&[])[i * n_out..(i + 1) * n_out])
            }
        }
    }
}

enum WeightRow<'a> {
    F32(&'a [f32]),
    I8(&'a [i8]),
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

#[inline]
fn gather_axpy<W: Elem, C: Code>(acc: &mut [f32], w: &[W], codes: &[C], p: &[f32]) {
    for ((a, &g), &c) in acc.iter_mut().zip(w).zip(codes) {
        *a += g.f() * p[c.to_i64() as usize];
    }
}

#[inline]
fn axpy<W: Elem>(acc: &mut [f32], w: &[W], s: f32) {
    for (a, &g) in acc.iter_mut().zip(w) {
        *a += g.f() * s;
    }
}

#[inline]
fn row_axpy(acc: &mut [f32], w: &WeightRow<'_>, s: f32) {
    match w {
        WeightRow::F32(r) => axpy(acc, r, s),
        WeightRow::I8(r) => axpy(acc, r, s),
    }
}

/// Everything a row needs, validated and contiguous.
struct Ctx<'a, C: Code> {
    n_in: usize,
    n_out: usize,
    k: usize,
    m: usize,
    kc: usize,
    ng: usize,
    grid: Vec<f64>,
    /// Codebook transposed to `(M, K)`.
    cbt: Vec<f32>,
    codes: CowArray<'a, C, Ix2>,
    gains: WeightData<'a>,
    edge_bias: Option<WeightData<'a>>,
    base_weight: Option<WeightData<'a>>,
    gain_scale: Option<CowArray<'a, f32, Ix1>>,
    edge_bias_scale: Option<CowArray<'a, f32, Ix1>>,
    out_bias: Option<CowArray<'a, f32, Ix1>>,
    base_scale: Option<CowArray<'a, f32, Ix1>>,
}

struct Scratch {
    p: Vec<f32>,
    b: Vec<f64>,
    acc_g: Vec<f32>,
    acc_b: Vec<f32>,
    acc_w: Vec<f32>,
}

impl<C: Code> Ctx<'_, C> {
    fn scratch(&self) -> Scratch {
        Scratch {
            p: vec![0.0; self.kc],
            b: vec![0.0; self.k + 1],
            acc_g: vec![0.0; self.n_out],
            acc_b: vec![0.0; self.n_out],
            acc_w: vec![0.0; self.n_out],
        }
    }

    fn forward_row(&self, x: &[f32], s: &mut Scratch, y: &mut [f32]) {
        let (n_out, k, m, kc) = (self.n_out, self.k, self.m, self.kc);
        s.acc_g.fill(0.0);
        s.acc_b.fill(0.0);
        s.acc_w.fill(0.0);
        let codes = self.codes.as_slice().unwrap_or(&[]);
        for (i, &xi32) in x.iter().enumerate().take(self.n_in) {
            let xi = xi32 as f64;
            let grid_row = &self.grid[i * self.ng..(i + 1) * self.ng];
            if let Some(j) = basis_span(grid_row, k, xi, &mut s.b) {
                s.p.fill(0.0);
                let mut sum_b = 0.0f32;
                for t in 0..=k {
                    let idx = j as isize - k as isize + t as isize;
                    if idx < 0 || idx as usize >= m {
                        continue;
                    }
                    let bt = s.b[t] as f32;
                    sum_b += bt;
                    let col = &self.cbt[idx as usize * kc..(idx as usize + 1) * kc];
                    for (pq, &cq) in s.p.iter_mut().zip(col) {
                        *pq += bt * cq;
                    }
                }
                let code_row = &codes[i * n_out..(i + 1) * n_out];
                match self.gains.row(i, n_out) {
                    WeightRow::F32(g) => gather_axpy(&mut s.acc_g, g, code_row, &s.p),
                    WeightRow::I8(g) => gather_axpy(&mut s.acc_g, g, code_row, &s.p),
                }
                if let Some(eb) = &self.edge_bias {
                    row_axpy(&mut s.acc_b, &eb.row(i, n_out), sum_b);
                }
            }
            if let Some(bw) = &self.base_weight {
                let silu = (xi / (1.0 + (-xi).exp())) as f32;
                row_axpy(&mut s.acc_w, &bw.row(i, n_out), silu);
            }
        }
        let scale = |v: &Option<CowArray<'_, f32, Ix1>>, o: usize| v.as_ref().map_or(1.0, |a| a[o]);
        for (o, yo) in y.iter_mut().enumerate().take(n_out) {
            let mut v = scale(&self.gain_scale, o) * s.acc_g[o];
            if self.edge_bias.is_some() {
                v += scale(&self.edge_bias_scale, o) * s.acc_b[o];
            }
            if self.base_weight.is_some() {
                v += scale(&self.base_scale, o) * s.acc_w[o];
            }
            if let Some(ob) = &self.out_bias {
                v += ob[o];
            }
            *yo = v;
        }
    }
}

/// Float weights must be finite (int8 weights always are).
fn check_weights_finite(arg: &str, w: &Weights<'_>) -> Result<()> {
    match w {
        Weights::F32(v) => check_finite_f32(arg, v.as_standard_layout().iter()),
        Weights::I8(_) => Ok(()),
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
            let v = contiguous(v);
            check_finite_f32(arg, v.iter())?;
            Ok(Some(v))
        }
    }
}

/// Evaluates a compressed KAN layer: `y (B, n_out)` from `x (B, n_in)` (ARCHITECTURE §4).
///
/// Equals efficient-kan's `linear(SiLU(x), base_weight) + linear(B(x), w^)` with the
/// decoded coefficients `w^_e = g_e C[q_e] + b_e 1`. Inputs outside the grid (or NaN)
/// contribute no spline term; the base branch still applies (`SiLU(NaN) = NaN`).
///
/// # Errors
/// [`Error::Shape`] for inconsistent shapes, grid errors of
/// [`crate::bspline::validate_grid`], [`Error::NonFinite`] for a non-finite codebook,
/// [`Error::CodeOutOfRange`] for a code outside `0..K`, [`Error::InvalidValue`] for a
/// scale given without its weights.
pub fn lutham_forward<C: Code>(inp: &LuthamInputs<'_, C>) -> Result<Array2<f32>> {
    let k = inp.k;
    let grid64 = inp.grid.mapv(|v| v as f64);
    let g_intervals = validate_grid(grid64.view(), k)?;
    let (n_in, ng) = grid64.dim();
    let m = g_intervals + k;
    let (b, xn) = inp.x.dim();
    if xn != n_in {
        return Err(Error::shape(
            "x",
            format!("(B, n_in) with n_in = {n_in} (rows of grid)"),
            fmt_shape(&[b, xn]),
        ));
    }
    let (kc, cm) = inp.codebook.dim();
    if kc == 0 || cm != m {
        return Err(Error::shape(
            "codebook",
            format!("(K, M) with K >= 1 and M = G + k = {m}"),
            fmt_shape(&[kc, cm]),
        ));
    }
    let cb = inp.codebook.as_standard_layout();
    check_finite_f32("codebook", cb.iter())?;
    let (cn_in, n_out) = inp.codes.dim();
    check_edge_shape("codes", (cn_in, n_out), n_in, n_out)?;
    let codes = contiguous(inp.codes);
    let code_slice = codes
        .as_slice()
        .ok_or_else(|| Error::invalid("codes", "could not be made contiguous"))?;
    let kc64 = kc as i64;
    if let Some((index, c)) = code_slice
        .iter()
        .enumerate()
        .find(|(_, c)| !(0..kc64).contains(&c.to_i64()))
    {
        return Err(Error::CodeOutOfRange {
            arg: "codes".into(),
            index,
            code: c.to_i64(),
            k: kc,
        });
    }
    check_edge_shape("gains", inp.gains.dim(), n_in, n_out)?;
    check_weights_finite("gains", &inp.gains)?;
    if let Some(w) = &inp.edge_bias {
        check_edge_shape("edge_bias", w.dim(), n_in, n_out)?;
        check_weights_finite("edge_bias", w)?;
    } else if inp.edge_bias_scale.is_some() {
        return Err(Error::invalid("edge_bias_scale", "given without edge_bias"));
    }
    if let Some(w) = &inp.base_weight {
        check_edge_shape("base_weight", w.dim(), n_in, n_out)?;
        check_weights_finite("base_weight", w)?;
    } else if inp.base_scale.is_some() {
        return Err(Error::invalid("base_scale", "given without base_weight"));
    }
    let mut cbt = vec![0.0f32; m * kc];
    for (q, row) in cb.axis_iter(Axis(0)).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            cbt[j * kc + q] = v;
        }
    }
    let ctx = Ctx {
        n_in,
        n_out,
        k,
        m,
        kc,
        ng,
        grid: grid64.iter().copied().collect(),
        cbt,
        codes,
        gains: WeightData::new(&inp.gains),
        edge_bias: inp.edge_bias.as_ref().map(WeightData::new),
        base_weight: inp.base_weight.as_ref().map(WeightData::new),
        gain_scale: check_out_vec("gain_scale", inp.gain_scale, n_out)?,
        edge_bias_scale: check_out_vec("edge_bias_scale", inp.edge_bias_scale, n_out)?,
        out_bias: check_out_vec("out_bias", inp.out_bias, n_out)?,
        base_scale: check_out_vec("base_scale", inp.base_scale, n_out)?,
    };
    let x = inp.x.as_standard_layout();
    let xs = x.as_slice().unwrap_or(&[]);
    let mut y = Array2::<f32>::zeros((b, n_out));
    if n_out == 0 || b == 0 {
        return Ok(y);
    }
    let ys = y
        .as_slice_mut()
        .ok_or_else(|| Error::invalid("y", "output not contiguous"))?;
    if b == 1 {
        let mut s = ctx.scratch();
        ctx.forward_row(&xs[..n_in], &mut s, ys);
    } else {
        ys.par_chunks_mut(n_out)
            .zip(xs.par_chunks(n_in))
            .for_each_init(|| ctx.scratch(), |s, (yr, xr)| ctx.forward_row(xr, s, yr));
    }
    Ok(y)
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
        };
        let y = lutham_forward(&inp).unwrap();
        assert_eq!(y.dim(), (33, 4));
        let w32 = cb.mapv(|v| v as f64);
        assert_close(&y, &dense_ref(&l, &x, &w32, true, Some(&ob)), 1e-5);
        let _ = e;
        // Batch of one row equals the corresponding row of the batch.
        let x1 = x.slice(ndarray::s![3..4, ..]).to_owned();
        let y1 = lutham_forward(&LuthamInputs {
            x: x1.view(),
            ..inp
        })
        .unwrap();
        assert_eq!(y1.row(0), y.row(3));
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
            }).unwrap();
            let r = dense_ref(&l, &x, &cb.mapv(|v| v as f64), true, None);
            for (a, bb) in y.iter().zip(r.iter()) {
                prop_assert!((*a as f64 - bb).abs() <= 1e-5 * (1.0 + bb.abs()));
            }
        }
    }
}
