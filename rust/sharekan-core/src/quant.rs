//! Symmetric int8 quantisation and LSB-first bit packing of codes.

use crate::error::{check_finite, fmt_shape, Error, Result};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

/// Symmetric int8 quantisation of `x (R, C)`.
///
/// `axis = 0`: one scale per row (`(R,)`); `axis = 1`: one scale per column (`(C,)`).
/// `scale = max|.| / 127` rounded to f32 (0 for an all-zero row/column; the smallest
/// positive f32 where that rounding would underflow to 0), `q = round(x / scale)` clamped
/// to `[-127, 127]`, so `|x - q * scale| <= scale / 2`.
///
/// # Errors
/// [`Error::InvalidValue`] for `axis > 1` or values so large that the scale overflows
/// f32; [`Error::NonFinite`] for NaN/Inf.
pub fn quantize_i8(x: ArrayView2<'_, f64>, axis: usize) -> Result<(Array2<i8>, Array1<f32>)> {
    quantize_sym(x, axis, 8)
}

/// Clip ratios tried (largest first) when fewer than 8 bits are asked for.
const CLIP_RATIOS: [f64; 11] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5];

/// Symmetric quantisation of `x (R, C)` to `bits` (2..=8) signed levels
/// `[-(2^(bits-1) - 1), 2^(bits-1) - 1]`, stored in i8, with one f32 scale per lane.
///
/// With 8 bits this is [`quantize_i8`] (max-abs scale, error `<= scale / 2`). With fewer
/// bits the scale of each lane is the clipped max-abs (ratios 1.0 down to 0.5) with the
/// least squared error: at 4 bits one outlier would otherwise cost every other value most
/// of its resolution. Ties keep the larger ratio, so the result is deterministic.
///
/// # Errors
/// As [`quantize_i8`]; [`Error::InvalidValue`] for `bits` outside 2..=8.
pub fn quantize_sym(
    x: ArrayView2<'_, f64>,
    axis: usize,
    bits: u32,
) -> Result<(Array2<i8>, Array1<f32>)> {
    if axis > 1 {
        return Err(Error::invalid(
            "axis",
            format!("must be 0 (per-row scale) or 1 (per-column scale), got {axis}"),
        ));
    }
    if !(2..=8).contains(&bits) {
        return Err(Error::invalid(
            "bits",
            format!("must be in 2..=8, got {bits}"),
        ));
    }
    if x.is_empty() {
        return Err(Error::shape(
            "x",
            "a non-empty (rows, cols) array",
            fmt_shape(x.shape()),
        ));
    }
    let xs = x.as_standard_layout();
    check_finite("x", xs.iter())?;
    let qmax = ((1i32 << (bits - 1)) - 1) as f64;
    let ratios: &[f64] = if bits == 8 {
        &CLIP_RATIOS[..1]
    } else {
        &CLIP_RATIOS
    };
    let quant = |v: f64, s: f64| -> f64 {
        if s == 0.0 {
            0.0
        } else {
            (v / s).round().clamp(-qmax, qmax)
        }
    };
    // Scales live along `axis`; each comes from the values across the other axis.
    let lanes = x.len_of(Axis(axis));
    let mut scales = Array1::<f32>::zeros(lanes);
    for (idx, lane) in x.axis_iter(Axis(axis)).enumerate() {
        let amax = lane.iter().fold(0.0_f64, |a, &v| a.max(v.abs()));
        let mut best = (f64::INFINITY, 0.0f32);
        for &ratio in ratios {
            let mut s = (amax * ratio / qmax) as f32;
            if !s.is_finite() {
                return Err(Error::invalid(
                    "x",
                    format!("max |x| = {amax:e} along index {idx} of axis {axis} is too large for an f32 scale"),
                ));
            }
            if s == 0.0 && amax > 0.0 {
                s = f32::from_bits(1);
            }
            let err: f64 = lane
                .iter()
                .map(|&v| (v - quant(v, s as f64) * s as f64).powi(2))
                .sum();
            if err < best.0 {
                best = (err, s);
            }
        }
        scales[idx] = best.1;
    }
    let q = Array2::from_shape_fn(x.dim(), |(r, c)| {
        let s = scales[if axis == 0 { r } else { c }] as f64;
        quant(x[[r, c]], s) as i8
    });
    Ok((q, scales))
}

/// Packs int4 values (`-8..=7`) two per byte, low nibble first.
///
/// # Errors
/// [`Error::InvalidValue`] naming the index of the first value outside `-8..=7`.
pub fn pack_nibbles(values: &[i8]) -> Result<Vec<u8>> {
    if let Some(index) = values.iter().position(|v| !(-8..=7).contains(v)) {
        return Err(Error::invalid(
            "values",
            format!(
                "value {} at index {index} does not fit in 4 bits (-8..=7)",
                values[index]
            ),
        ));
    }
    Ok(values
        .chunks(2)
        .map(|pair| {
            let lo = (pair[0] as u8) & 0x0f;
            let hi = pair.get(1).map_or(0, |&v| (v as u8) & 0x0f);
            lo | (hi << 4)
        })
        .collect())
}

/// Unpacks `n` int4 values packed by [`pack_nibbles`].
///
/// # Errors
/// [`Error::Shape`] when `packed` holds fewer than `ceil(n / 2)` bytes.
pub fn unpack_nibbles(packed: &[u8], n: usize) -> Result<Vec<i8>> {
    let need = n.div_ceil(2);
    if packed.len() < need {
        return Err(Error::shape(
            "packed",
            format!("at least {need} bytes for {n} int4 values"),
            fmt_shape(&[packed.len()]),
        ));
    }
    // sign-extend each nibble: shift it to the top of an i8, then arithmetic-shift back
    Ok((0..n)
        .map(|i| {
            let byte = packed[i / 2];
            let nibble = if i % 2 == 0 { byte << 4 } else { byte & 0xf0 };
            (nibble as i8) >> 4
        })
        .collect())
}

/// Dequantises `q (R, C)` with the scales of [`quantize_i8`] (`axis` as there).
///
/// # Errors
/// [`Error::InvalidValue`] for `axis > 1`, [`Error::Shape`] for a scale vector of the
/// wrong length.
pub fn dequantize_i8(
    q: ArrayView2<'_, i8>,
    scale: ArrayView1<'_, f32>,
    axis: usize,
) -> Result<Array2<f64>> {
    if axis > 1 {
        return Err(Error::invalid(
            "axis",
            format!("must be 0 or 1, got {axis}"),
        ));
    }
    let n = q.len_of(Axis(axis));
    if scale.len() != n {
        return Err(Error::shape(
            "scale",
            fmt_shape(&[n]),
            fmt_shape(&[scale.len()]),
        ));
    }
    Ok(Array2::from_shape_fn(q.dim(), |(r, c)| {
        q[[r, c]] as f64 * scale[if axis == 0 { r } else { c }] as f64
    }))
}

/// Bits per code for a codebook of `n_codes` words: `ceil(log2 n_codes)`, 0 when `n_codes <= 1`.
pub fn bits_for(n_codes: usize) -> u32 {
    if n_codes <= 1 {
        0
    } else {
        usize::BITS - (n_codes - 1).leading_zeros()
    }
}

/// Number of bytes that `n` codes of `bits` bits occupy: `ceil(n * bits / 8)`.
///
/// # Errors
/// [`Error::InvalidValue`] on overflow.
pub fn packed_len(n: usize, bits: u32) -> Result<usize> {
    n.checked_mul(bits as usize)
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| Error::invalid("n", format!("{n} codes of {bits} bits overflow usize")))
}

/// Packs codes into an LSB-first bit stream of `bits` bits per code
/// (bit `p = e * bits + b` of the stream is bit `p % 8` of byte `p / 8`).
///
/// # Errors
/// [`Error::InvalidValue`] for `bits > 32`; [`Error::CodeOutOfRange`] for a code
/// `>= 2^bits`.
pub fn pack_codes(codes: &[u32], bits: u32) -> Result<Vec<u8>> {
    if bits > 32 {
        return Err(Error::invalid("bits", format!("must be <= 32, got {bits}")));
    }
    let limit: u64 = 1u64 << bits;
    if let Some(index) = codes.iter().position(|&c| c as u64 >= limit) {
        return Err(Error::CodeOutOfRange {
            arg: "codes".into(),
            index,
            code: codes[index] as i64,
            n_codes: limit as usize,
        });
    }
    let mut out = vec![0u8; packed_len(codes.len(), bits)?];
    if bits == 0 {
        return Ok(out);
    }
    let mut acc: u64 = 0;
    let mut nacc: u32 = 0;
    let mut pos = 0usize;
    for &c in codes {
        acc |= (c as u64) << nacc;
        nacc += bits;
        while nacc >= 8 {
            out[pos] = acc as u8;
            pos += 1;
            acc >>= 8;
            nacc -= 8;
        }
    }
    if nacc > 0 {
        out[pos] = acc as u8;
    }
    Ok(out)
}

/// Unpacks `n` codes of `bits` bits from an LSB-first bit stream (see [`pack_codes`]).
/// Bytes after the first `ceil(n * bits / 8)` are ignored.
///
/// # Errors
/// [`Error::InvalidValue`] for `bits > 32`; [`Error::Shape`] if `packed` is shorter than
/// `ceil(n * bits / 8)` bytes.
pub fn unpack_codes(packed: &[u8], bits: u32, n: usize) -> Result<Vec<u32>> {
    if bits > 32 {
        return Err(Error::invalid("bits", format!("must be <= 32, got {bits}")));
    }
    let need = packed_len(n, bits)?;
    if packed.len() < need {
        return Err(Error::shape(
            "packed",
            format!("at least {need} bytes for {n} codes of {bits} bits"),
            format!("{} bytes", packed.len()),
        ));
    }
    // With bits = 0 (K = 1) nothing bounds `n` by the input's length: an impossible
    // request must be an error, not an allocation failure that aborts the process.
    let mut out = Vec::new();
    out.try_reserve_exact(n)
        .map_err(|_| Error::invalid("n", format!("cannot allocate {n} codes")))?;
    if bits == 0 {
        out.resize(n, 0);
        return Ok(out);
    }
    let mask: u64 = (1u64 << bits) - 1;
    let mut acc: u64 = 0;
    let mut nacc: u32 = 0;
    let mut bytes = packed.iter();
    for _ in 0..n {
        while nacc < bits {
            let b = *bytes.next().unwrap_or(&0);
            acc |= (b as u64) << nacc;
            nacc += 8;
        }
        out.push((acc & mask) as u32);
        acc >>= bits;
        nacc -= bits;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use proptest::prelude::*;

    #[test]
    fn unpack_codes_refuses_impossible_counts() {
        // K = 1 (bits 0) stores no bytes at all, so only the allocation bounds `n`
        assert!(matches!(
            unpack_codes(&[], 0, usize::MAX / 2),
            Err(Error::InvalidValue { .. })
        ));
        assert!(matches!(unpack_codes(&[], 0, 5), Ok(v) if v == vec![0; 5]));
        assert!(matches!(
            unpack_codes(&[0xff], 8, 2),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn bits() {
        assert_eq!(bits_for(0), 0);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(256), 8);
        assert_eq!(bits_for(257), 9);
        assert_eq!(bits_for(1 << 20), 20);
    }

    #[test]
    fn pack_layout_is_lsb_first() {
        assert_eq!(pack_codes(&[1, 2, 3], 2).unwrap(), vec![0b0011_1001]);
        assert_eq!(
            pack_codes(&[5, 6, 7], 3).unwrap(),
            vec![0b1111_0101, 0b0000_0001]
        );
        assert_eq!(pack_codes(&[0, 0], 0).unwrap(), Vec::<u8>::new());
        assert_eq!(unpack_codes(&[], 0, 3).unwrap(), vec![0, 0, 0]);
        assert!(matches!(
            pack_codes(&[0, 4], 2),
            Err(Error::CodeOutOfRange {
                index: 1,
                code: 4,
                n_codes: 4,
                ..
            })
        ));
        assert!(matches!(
            pack_codes(&[1], 0),
            Err(Error::CodeOutOfRange { .. })
        ));
        assert!(matches!(
            pack_codes(&[1], 33),
            Err(Error::InvalidValue { .. })
        ));
        assert!(matches!(unpack_codes(&[0], 3, 3), Err(Error::Shape { .. })));
        assert!(matches!(
            unpack_codes(&[0], 40, 1),
            Err(Error::InvalidValue { .. })
        ));
        assert_eq!(
            unpack_codes(&pack_codes(&[u32::MAX, 7], 32).unwrap(), 32, 2).unwrap(),
            vec![u32::MAX, 7]
        );
    }

    #[test]
    fn quantize_axes_and_errors() {
        let x = array![[1.0, -2.0, 0.0], [0.0, 0.0, 0.0]];
        let (q, s) = quantize_i8(x.view(), 0).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], (2.0f64 / 127.0) as f32);
        assert_eq!(s[1], 0.0);
        assert_eq!(q.row(0).to_vec(), vec![64, -127, 0]);
        let (q1, s1) = quantize_i8(x.view(), 1).unwrap();
        assert_eq!(s1.len(), 3);
        assert_eq!(q1[[0, 0]], 127);
        assert!(matches!(
            quantize_i8(x.view(), 2),
            Err(Error::InvalidValue { .. })
        ));
        let bad = array![[1.0, f64::NAN]];
        assert!(matches!(
            quantize_i8(bad.view(), 0),
            Err(Error::NonFinite { index: 1, .. })
        ));
        let huge = array![[1e300]];
        assert!(matches!(
            quantize_i8(huge.view(), 0),
            Err(Error::InvalidValue { .. })
        ));
        let tiny = array![[1e-300, -5e-301]];
        let (qt, st) = quantize_i8(tiny.view(), 0).unwrap();
        assert!(st[0] > 0.0);
        assert!((tiny[[0, 0]] - qt[[0, 0]] as f64 * st[0] as f64).abs() <= st[0] as f64 / 2.0);
        let deq = dequantize_i8(q.view(), s.view(), 0).unwrap();
        assert!((deq[[0, 1]] + 2.0).abs() < 1e-6);
    }

    proptest! {
        #[test]
        fn int8_error_within_half_scale(
            rows in 1usize..8, cols in 1usize..8, axis in 0usize..2,
            vals in proptest::collection::vec(-1e6f64..1e6, 64), expo in -30i32..30,
        ) {
            let x = Array2::from_shape_fn((rows, cols), |(r, c)| vals[(r * cols + c) % 64] * 10f64.powi(expo));
            let (q, s) = quantize_i8(x.view(), axis).unwrap();
            for r in 0..rows {
                for c in 0..cols {
                    let sc = s[if axis == 0 { r } else { c }] as f64;
                    prop_assert!((x[[r, c]] - q[[r, c]] as f64 * sc).abs() <= sc / 2.0 * (1.0 + 1e-12));
                    prop_assert!(q[[r, c]] >= -127);
                }
            }
        }

        #[test]
        fn pack_round_trip(bits in 0u32..=32, raw in proptest::collection::vec(any::<u32>(), 0..200)) {
            let codes: Vec<u32> = raw.iter().map(|&c| if bits == 32 { c } else { c & ((1u32 << bits) - 1) }).collect();
            let packed = pack_codes(&codes, bits).unwrap();
            prop_assert_eq!(packed.len(), (codes.len() * bits as usize).div_ceil(8));
            prop_assert_eq!(unpack_codes(&packed, bits, codes.len()).unwrap(), codes);
        }
    }
}

#[cfg(test)]
mod low_bit_tests {
    use super::*;
    use ndarray::array;
    use proptest::prelude::*;

    #[test]
    fn eight_bits_is_quantize_i8_semantics() {
        let x = array![[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]];
        let (q, s) = quantize_sym(x.view(), 0, 8).unwrap();
        assert_eq!(s[1], 0.0);
        assert_eq!(q[[0, 1]], -127);
        assert!(quantize_sym(x.view(), 0, 9).is_err());
        assert!(quantize_sym(x.view(), 0, 1).is_err());
    }

    #[test]
    fn four_bits_clips_an_outlier_when_that_helps() {
        // 1000 values spread over [-1, 1] and one at 3: rounding them all at step 3/7
        // costs more than clipping the single outlier.
        let mut row: Vec<f64> = (0..1000).map(|i| -1.0 + 2.0 * i as f64 / 999.0).collect();
        row.push(3.0);
        let x = Array2::from_shape_vec((1, row.len()), row).unwrap();
        let (q, s) = quantize_sym(x.view(), 0, 4).unwrap();
        assert!(q.iter().all(|&v| (-7..=7).contains(&v)));
        assert!((s[0] as f64) < 0.9 * 3.0 / 7.0);
    }

    proptest! {
        #[test]
        fn nibbles_round_trip(values in proptest::collection::vec(-8i8..=7, 0..50)) {
            let packed = pack_nibbles(&values).unwrap();
            prop_assert_eq!(packed.len(), values.len().div_ceil(2));
            prop_assert_eq!(unpack_nibbles(&packed, values.len()).unwrap(), values);
        }

        #[test]
        fn low_bit_error_never_worse_than_max_abs(
            values in proptest::collection::vec(-5.0f64..5.0, 1..40), bits in 2u32..8,
        ) {
            let x = Array2::from_shape_vec((1, values.len()), values.clone()).unwrap();
            let (q, s) = quantize_sym(x.view(), 0, bits).unwrap();
            let qmax = ((1i32 << (bits - 1)) - 1) as f64;
            let amax = values.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let s_max = (amax / qmax) as f32 as f64;
            let err = |scale: f64, qv: &dyn Fn(f64) -> f64| -> f64 {
                values.iter().map(|&v| (v - qv(v) * scale).powi(2)).sum()
            };
            let ours: f64 = values.iter().zip(q.iter()).map(|(&v, &qv)| (v - qv as f64 * s[0] as f64).powi(2)).sum();
            let reference = if s_max == 0.0 { 0.0 } else {
                err(s_max, &|v| (v / s_max).round().clamp(-qmax, qmax))
            };
            prop_assert!(ours <= reference * (1.0 + 1e-12) + 1e-300);
        }
    }

    #[test]
    fn bad_nibbles() {
        assert!(pack_nibbles(&[3, 8]).is_err());
        assert!(unpack_nibbles(&[0u8], 3).is_err());
    }
}
