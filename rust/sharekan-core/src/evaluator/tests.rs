//! Unit tests of the evaluator: against a dense f64 reference (B-splines through
//! [`crate::bspline::basis_dense`], RBF, Chebyshev), the two strategies against each
//! other, thread-count and SIMD-path invariance, validation messages, and the scratch and
//! size bounds.

use super::decoded::{block_cols, FORCE_DECODE_COLS, FORCE_TILE_INPUTS};
use super::simd::FORCE_PORTABLE;
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
            n_codes: 8,
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
            n_codes: 6,
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
    let vec = |rng: &mut ChaCha8Rng| Array1::from_shape_fn(n_out, |_| rng.random::<f32>() * 0.02);
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
    // Large enough for the parallel paths (rows of projection tables; tiles: 103 rows are
    // one tile per thread, at least DECODE_MIN_BATCH rows each, 130 rows several).
    let (n_in, n_out, g, k) = (64, 160, 6, 3);
    let l = layer(n_in, n_out, g, k, 21);
    let e = edge_layer(n_in, n_out, g + k, 256, 22);
    for b in [8, 103, 130] {
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
            let (s0, s1, s2, ob) = (v(&e.scales[0]), v(&e.scales[1]), v(&e.scales[2]), v(&e.ob));
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
