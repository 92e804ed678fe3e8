//! Times `spherical_kmeans` on random residuals (E = 327,680, M = 13, K = 256, 25 iterations)
//! and one batch-1 LUTHAM evaluation of a 1280 -> 256 layer.
//!
//! Run with `cargo run --release -p sharekan-core --example kmeans_timing [threads]`.
//! This prints measurements; it asserts nothing.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sharekan_core::evaluator::{lutham_forward, LuthamInputs, Weights};
use sharekan_core::kmeans::{spherical_kmeans, KMeansParams};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let (e, m, k) = (327_680usize, 13usize, 256usize);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let r = Array2::from_shape_fn((e, m), |_| rng.random::<f64>() * 2.0 - 1.0);
    let params = KMeansParams {
        k,
        n_iter: 25,
        tol: 0.0,
        seed: 0,
        ..KMeansParams::default()
    };
    let t = Instant::now();
    let res = pool
        .install(|| spherical_kmeans(r.view(), &params))
        .expect("kmeans");
    let dt = t.elapsed().as_secs_f64();
    println!(
        "spherical_kmeans E={e} M={m} K={k} iterations={} threads={threads}: {dt:.3} s, J {:.4e} -> {:.4e}, reseeds {}",
        res.iterations,
        res.objective[0],
        res.objective.last().copied().unwrap_or(f64::NAN),
        res.reseeds
    );

    // Batch-1 LUTHAM, 1280 -> 256, G = 10, k = 3.
    let (n_in, n_out, g, order) = (1280usize, 256usize, 10usize, 3usize);
    let ng = g + 2 * order + 1;
    let grid = Array2::from_shape_fn((n_in, ng), |(_, j)| -1.0 + (j as f32 - order as f32) * 0.2);
    let codebook = Array2::from_shape_fn((k, g + order), |_| rng.random::<f32>() - 0.5);
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
    };
    let reps = 200;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(lutham_forward(&inp).expect("forward"));
    }
    println!(
        "lutham_forward batch 1, {n_in} -> {n_out}, K={k}: {:.1} us per call",
        t.elapsed().as_secs_f64() / reps as f64 * 1e6
    );
}
