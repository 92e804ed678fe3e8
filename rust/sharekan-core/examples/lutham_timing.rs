//! Times `lutham_forward` on the first layer of the benchmark head (1280 -> 256, G = 10,
//! k = 3, K = 256, u8 codes, int8 gains and base weights with per-output scales, out_bias;
//! shared (1, NG) uniform grid or the same grid repeated per input) at batch 1, 8, 64 and
//! 256, with a rayon pool of 1 thread and one of `threads` threads, calls interleaved
//! round-robin so that load from other processes hits every variant alike.
//!
//! Run with
//! `cargo run --release -p sharekan-core --example lutham_timing [threads] [rounds]`.
//! Prints the median and minimum wall time per call, the median CPU time of the pool
//! thread that ran the call (all of the work with 1 thread; Linux only), and checks that
//! every variant gives the same bits; it asserts nothing else.

use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sharekan_core::evaluator::{lutham_forward, BaseAct, Basis, LuthamInputs, Weights};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds this thread has run on a CPU (Linux; 0 elsewhere).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let threads = arg(1, 2);
    let rounds = arg(2, 20);
    let (n_in, n_out, g, k, kc) = (1280usize, 256usize, 10usize, 3usize, 256usize);
    let m = g + k;
    let ng = g + 2 * k + 1;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let h = 2.0 / g as f32;
    let row: Vec<f32> = (0..ng).map(|j| -1.0 + (j as f32 - k as f32) * h).collect();
    let shared = Array2::from_shape_vec((1, ng), row.clone()).unwrap();
    let full = Array2::from_shape_fn((n_in, ng), |(_, j)| row[j]);
    let codebook = Array2::from_shape_fn((kc, m), |_| rng.random::<f32>() * 2.0 - 1.0);
    let codes = Array2::from_shape_fn((n_in, n_out), |_| rng.random_range(0..kc) as u8);
    let i8s = |rng: &mut ChaCha8Rng| {
        Array2::from_shape_fn((n_in, n_out), |_| rng.random_range(-127i32..=127) as i8)
    };
    let gains = i8s(&mut rng);
    let base = i8s(&mut rng);
    let scale = |rng: &mut ChaCha8Rng| Array1::from_shape_fn(n_out, |_| rng.random::<f32>() * 0.01);
    let (gs, bs) = (scale(&mut rng), scale(&mut rng));
    let ob = Array1::from_shape_fn(n_out, |_| rng.random::<f32>() - 0.5);
    let pools: Vec<(usize, rayon::ThreadPool)> = [1, threads]
        .into_iter()
        .map(|t| {
            (
                t,
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    for batch in [1usize, 8, 64, 256] {
        let x = Array2::from_shape_fn((batch, n_in), |_| rng.random::<f32>() * 2.0 - 1.0);
        let with_full = LuthamInputs {
            x: x.view(),
            grid: full.view(),
            k,
            codebook: codebook.view(),
            codes: codes.view(),
            gains: Weights::I8(gains.view()),
            gain_scale: Some(gs.view()),
            edge_bias: None,
            edge_bias_scale: None,
            out_bias: Some(ob.view()),
            base_weight: Some(Weights::I8(base.view())),
            base_scale: Some(bs.view()),
            basis: Basis::BSpline,
            base_act: BaseAct::Silu,
        };
        let with_shared = LuthamInputs {
            grid: shared.view(),
            ..with_full
        };
        let variants: Vec<(String, &rayon::ThreadPool, LuthamInputs<'_, u8>)> = pools
            .iter()
            .flat_map(|(t, p)| {
                [
                    (format!("{t} thr, shared grid"), p, with_shared),
                    (format!("{t} thr, full grid"), p, with_full),
                ]
            })
            .collect();
        let reference = lutham_forward(&with_full).unwrap();
        let mut times = vec![Vec::new(); variants.len()];
        let mut cpu = vec![Vec::new(); variants.len()];
        let reps = if batch >= 64 { rounds } else { rounds * 10 };
        for _ in 0..reps {
            for (v, (_, pool, inputs)) in variants.iter().enumerate() {
                let t0 = Instant::now();
                let (y, c) = pool.install(|| {
                    let c0 = thread_cpu_ns();
                    let y = lutham_forward(inputs).unwrap();
                    (y, thread_cpu_ns() - c0)
                });
                times[v].push(t0.elapsed().as_secs_f64() * 1e6);
                cpu[v].push(c as f64 * 1e-3);
                assert_eq!(y, reference, "results differ between variants");
            }
        }
        for (((name, _, _), t), c) in variants.iter().zip(times).zip(cpu) {
            let min = t.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "batch {batch:4} {name:22} median {:7.0} us  min {:7.0} us  pool-thread CPU {:7.0} us",
                median(t),
                min,
                median(c)
            );
        }
    }
}
