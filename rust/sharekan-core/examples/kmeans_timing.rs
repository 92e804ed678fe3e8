//! Times `spherical_kmeans` (default: random residuals, E = 327,680, M = 13, K = 256,
//! 25 iterations) and one batch-1 LUTHAM evaluation of a 1280 -> 256 layer.
//!
//! Run with
//! `cargo run --release -p sharekan-core --example kmeans_timing [threads] [K] [n_iter] [reps] [residuals.f64]`
//! where `residuals.f64` is an optional raw little-endian f64 file of shape (E, 13).
//! Prints the median time of the k-means++ initialisation (`n_iter = 0`) and of the whole
//! run over `reps` repetitions, and a hash of the result (to compare builds bit for bit).
//! This prints measurements; it asserts nothing.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sharekan_core::evaluator::{lutham_forward, BaseAct, Basis, LuthamInputs, Weights};
use sharekan_core::kmeans::{spherical_kmeans, KMeansParams, KMeansResult};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Instant;

fn digest(res: &KMeansResult) -> u64 {
    let mut h = DefaultHasher::new();
    res.codes.hash(&mut h);
    for v in res.centroids.iter().chain(&res.objective) {
        v.to_bits().hash(&mut h);
    }
    res.iterations.hash(&mut h);
    res.reseeds.hash(&mut h);
    h.finish()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let threads = arg(1, 2);
    let n_codes = arg(2, 256);
    let n_iter = arg(3, 25);
    let reps = arg(4, 3).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let m = 13usize;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let r = match args.get(5) {
        Some(path) => {
            let bytes = std::fs::read(path).expect("residuals file");
            let vals: Vec<f64> = bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            Array2::from_shape_vec((vals.len() / m, m), vals).expect("(E, 13)")
        }
        None => Array2::from_shape_fn((327_680, m), |_| rng.random::<f64>() * 2.0 - 1.0),
    };
    let e = r.nrows();
    let run = |n_iter: usize| {
        let params = KMeansParams {
            n_codes,
            n_iter,
            tol: 0.0,
            seed: 0,
            ..KMeansParams::default()
        };
        let t = Instant::now();
        let res = pool
            .install(|| spherical_kmeans(r.view(), &params))
            .expect("kmeans");
        (t.elapsed().as_secs_f64(), res)
    };
    let mut t_init = Vec::new();
    let mut t_all = Vec::new();
    let mut last = None;
    for _ in 0..reps {
        t_init.push(run(0).0);
        let (dt, res) = run(n_iter);
        t_all.push(dt);
        last = Some(res);
    }
    let res = last.expect("one run");
    let (ti, ta) = (median(t_init.clone()), median(t_all.clone()));
    println!(
        "spherical_kmeans E={e} M={m} K={n_codes} iterations={} threads={threads}: total {ta:.3} s \
         (runs {t_all:.3?}), init {ti:.3} s, per iter {:.4} s, J {:.6e} -> {:.6e}, reseeds {}, \
         digest {:016x}",
        res.iterations,
        (ta - ti) / res.iterations.max(1) as f64,
        res.objective[0],
        res.objective.last().copied().unwrap_or(f64::NAN),
        res.reseeds,
        digest(&res)
    );

    // Batch-1 LUTHAM, 1280 -> 256, G = 10, k = 3.
    let (n_in, n_out, g, order) = (1280usize, 256usize, 10usize, 3usize);
    let ng = g + 2 * order + 1;
    let grid = Array2::from_shape_fn((n_in, ng), |(_, j)| -1.0 + (j as f32 - order as f32) * 0.2);
    let codebook = Array2::from_shape_fn((256, g + order), |_| rng.random::<f32>() - 0.5);
    let codes = Array2::from_shape_fn((n_in, n_out), |_| rng.random::<u8>());
    let gains = Array2::from_shape_fn((n_in, n_out), |_| rng.random::<i8>());
    let scale = ndarray::Array1::from_elem(n_out, 0.01f32);
    let x = Array2::from_shape_fn((1, n_in), |_| rng.random::<f32>() * 2.0 - 1.0);
    let inp = LuthamInputs {
        x: x.view(),
        grid: grid.view(),
        k: order,
        codebook: codebook.view(),
        codes: codes.view(),
        gains: Weights::I8(gains.view()),
        gain_scale: Some(scale.view()),
        edge_bias: None,
        edge_bias_scale: None,
        out_bias: None,
        base_weight: None,
        base_scale: None,
        basis: Basis::BSpline,
        base_act: BaseAct::Silu,
    };
    let reps = 200;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(lutham_forward(&inp).expect("forward"));
    }
    println!(
        "lutham_forward batch 1, {n_in} -> {n_out}, K=256: {:.1} us per call",
        t.elapsed().as_secs_f64() / reps as f64 * 1e6
    );
}
