//! Fused f32 score + top-2 kernel of the k-means assignment step.
//!
//! For each edge row `r` (M f32 values) it computes `|<r, c_q>|` for every codeword in f32
//! and keeps the largest value, its index and the second largest value (over the other
//! codewords). Nothing of size E x K is materialised. The kernel is runtime-dispatched
//! (AVX2 + FMA on x86-64, a portable loop elsewhere); the f32 values may differ between
//! the two paths in the last bits, which the caller's rounding margins absorb: the
//! assignment's final decisions are made in f64 and do not depend on the path taken.

/// Codewords per step of the kernel (the codebook is zero-padded to a multiple).
const QSTEP: usize = 4;
/// Edges per block of the kernel (two 8-lane vectors).
const EBLOCK: usize = 16;

/// Best and second best `|score|` of one edge.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Top2 {
    /// Largest `|<r, c_q>|` (f32).
    pub best: f32,
    /// Its codeword index (the lowest one on exact ties).
    pub index: u32,
    /// Largest `|<r, c_j>|` over `j != index` (`-1` if K = 1 and no padding).
    pub second: f32,
}

/// Codebook `(Kp, M)` f32, row-major (`Kp` = K rounded up to 4, zero rows as padding).
///
/// Every score is the same f32 chain on every path: `s = fma(r_j, c_j, s)` for
/// `j = 0..M` from `s = 0`, so results do not depend on the CPU.
#[derive(Debug, Clone)]
pub(super) struct Codebook32 {
    c: Vec<f32>,
    m: usize,
    n_codes: usize,
    kp: usize,
}

impl Codebook32 {
    pub(super) fn new(m: usize, n_codes: usize) -> Self {
        let kp = n_codes.div_ceil(QSTEP) * QSTEP;
        Codebook32 {
            c: vec![0.0; kp * m],
            m,
            n_codes,
            kp,
        }
    }

    /// Refreshes from row-major f64 centroids `(K', M)`, `K' <= K` (the rest: zero).
    pub(super) fn set(&mut self, cent: &[f64]) {
        let n = cent.len().min(self.c.len());
        for (d, &s) in self.c[..n].iter_mut().zip(cent) {
            *d = s as f32;
        }
        self.c[n..].fill(0.0);
    }

    /// Uses only the first `n_codes` codewords from now on (<= the capacity given to new).
    pub(super) fn truncate(&mut self, n_codes: usize) {
        let kp = n_codes.div_ceil(QSTEP) * QSTEP;
        if kp * self.m <= self.c.len() {
            self.n_codes = n_codes;
            self.kp = kp;
        }
    }

    /// Top-2 `|score|` of every row of `rows` (`n x M` f32, row-major) into `out[..n]`.
    pub(super) fn top2(&self, rows: &[f32], out: &mut [Top2]) {
        if self.n_codes == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if self.kp <= i32::MAX as usize
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe { self.top2_avx2(rows, out) };
                return;
            }
        }
        self.top2_portable(rows, out);
    }

    fn top2_portable(&self, rows: &[f32], out: &mut [Top2]) {
        let m = self.m;
        for (row, o) in rows.chunks_exact(m).zip(out.iter_mut()) {
            let mut t = Top2 {
                best: -1.0,
                index: 0,
                second: -1.0,
            };
            for (q, c) in self.c.chunks_exact(m).take(self.kp).enumerate() {
                let mut s = 0.0f32;
                for (&rv, &cv) in row.iter().zip(c) {
                    s = rv.mul_add(cv, s);
                }
                let a = s.abs();
                // Same update as the vector kernel (NaN-free inputs).
                t.second = t.second.max(a.min(t.best));
                if a > t.best {
                    t.best = a;
                    t.index = q as u32;
                }
            }
            *o = t;
        }
    }

    /// AVX2 + FMA kernel: 16 edges (transposed, one per lane) x 4 codewords per step,
    /// per-lane running top-2 with index.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn top2_avx2(&self, rows: &[f32], out: &mut [Top2]) {
        use std::arch::x86_64::*;
        let (m, kp) = (self.m, self.kp);
        let n = (rows.len() / m).min(out.len());
        let cb = self.c.as_ptr();
        let sign = _mm256_set1_ps(-0.0);
        let mut blk = vec![0.0f32; m * EBLOCK];
        let mut e0 = 0;
        while e0 < n {
            let ne = (n - e0).min(EBLOCK);
            for (t, row) in rows[e0 * m..(e0 + ne) * m].chunks_exact(m).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    blk[j * EBLOCK + t] = v;
                }
            }
            for j in 0..m {
                blk[j * EBLOCK + ne..(j + 1) * EBLOCK].fill(0.0);
            }
            let bp = blk.as_ptr();
            let mut b1 = [_mm256_set1_ps(-1.0); 2];
            let mut b2 = [_mm256_set1_ps(-1.0); 2];
            let mut i1 = [_mm256_setzero_ps(); 2];
            let mut q = 0;
            while q < kp {
                let mut acc = [[_mm256_setzero_ps(); 2]; QSTEP];
                for j in 0..m {
                    let r0 = _mm256_loadu_ps(bp.add(j * EBLOCK));
                    let r1 = _mm256_loadu_ps(bp.add(j * EBLOCK + 8));
                    for (u, a) in acc.iter_mut().enumerate() {
                        let c = _mm256_broadcast_ss(&*cb.add((q + u) * m + j));
                        a[0] = _mm256_fmadd_ps(r0, c, a[0]);
                        a[1] = _mm256_fmadd_ps(r1, c, a[1]);
                    }
                }
                for (u, a) in acc.iter().enumerate() {
                    let qi = _mm256_castsi256_ps(_mm256_set1_epi32((q + u) as i32));
                    for h in 0..2 {
                        let v = _mm256_andnot_ps(sign, a[h]);
                        let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(v, b1[h]);
                        b2[h] = _mm256_max_ps(b2[h], _mm256_min_ps(v, b1[h]));
                        b1[h] = _mm256_max_ps(b1[h], v);
                        i1[h] = _mm256_blendv_ps(i1[h], qi, gt);
                    }
                }
                q += QSTEP;
            }
            let mut vb1 = [0.0f32; EBLOCK];
            let mut vb2 = [0.0f32; EBLOCK];
            let mut vi1 = [0i32; EBLOCK];
            for h in 0..2 {
                _mm256_storeu_ps(vb1.as_mut_ptr().add(8 * h), b1[h]);
                _mm256_storeu_ps(vb2.as_mut_ptr().add(8 * h), b2[h]);
                _mm256_storeu_si256(
                    vi1.as_mut_ptr().add(8 * h) as *mut __m256i,
                    _mm256_castps_si256(i1[h]),
                );
            }
            for t in 0..ne {
                out[e0 + t] = Top2 {
                    best: vb1[t],
                    index: vi1[t] as u32,
                    second: vb2[t],
                };
            }
            e0 += EBLOCK;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn kernels_agree_with_a_plain_scan() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for &(m, n_codes, n) in &[
            (13usize, 256usize, 37usize),
            (5, 3, 4),
            (9, 40, 1),
            (1, 17, 3),
        ] {
            let cent: Vec<f64> = (0..n_codes * m)
                .map(|_| rng.random::<f64>() - 0.5)
                .collect();
            let rows: Vec<f32> = (0..n * m).map(|_| rng.random::<f32>() - 0.5).collect();
            let mut cb = Codebook32::new(m, n_codes);
            cb.set(&cent);
            let mut fast = vec![Top2::default(); n];
            let mut slow = vec![Top2::default(); n];
            cb.top2(&rows, &mut fast);
            cb.top2_portable(&rows, &mut slow);
            for (e, (f, s)) in fast.iter().zip(&slow).enumerate() {
                assert_eq!(f.best.to_bits(), s.best.to_bits());
                assert_eq!(f.second.to_bits(), s.second.to_bits());
                assert_eq!(f.index, s.index);
                let row = &rows[e * m..(e + 1) * m];
                let mut sc: Vec<(f64, usize)> = (0..n_codes)
                    .map(|q| {
                        let p: f64 = row
                            .iter()
                            .zip(&cent[q * m..(q + 1) * m])
                            .map(|(&a, &b)| a as f64 * (b as f32) as f64)
                            .sum();
                        (p.abs(), q)
                    })
                    .collect();
                sc.sort_by(|a, b| b.0.total_cmp(&a.0));
                for t in [f, s] {
                    assert!((t.best as f64 - sc[0].0).abs() < 1e-5);
                    assert!((t.index as usize) < n_codes);
                    let second = if n_codes > 1 { sc[1].0 } else { 0.0 };
                    if n_codes > 1 {
                        assert!((t.second as f64 - second).abs() < 1e-5, "{m} {n_codes}");
                    }
                }
                if sc.len() < 2 || sc[0].0 - sc[1].0 > 1e-4 {
                    assert_eq!(f.index as usize, sc[0].1);
                    assert_eq!(s.index as usize, sc[0].1);
                }
            }
        }
    }
}
