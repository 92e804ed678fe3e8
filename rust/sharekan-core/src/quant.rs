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
    if axis > 1 {
        return Err(Error::invalid(
            "axis",
            format!("must be 0 (per-row scale) or 1 (per-column scale), got {axis}"),
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
    // Scales live along `axis`; each is the max over the other axis.
    let lanes = x.len_of(Axis(axis));
    let mut scales = Array1::<f32>::zeros(lanes);
    for (idx, lane) in x.axis_iter(Axis(axis)).enumerate() {
        let amax = lane.iter().fold(0.0_f64, |a, &v| a.max(v.abs()));
        let mut s = (amax / 127.0) as f32;
        if !s.is_finite() {
            return Err(Error::invalid(
                "x",
                format!("max |x| = {amax:e} along index {idx} of axis {axis} is too large for an f32 scale"),
            ));
        }
        if s == 0.0 && amax > 0.0 {
            s = f32::from_bits(1);
        }
        scales[idx] = s;
    }
    let q = Array2::from_shape_fn(x.dim(), |(r, c)| {
        let s = scales[if axis == 0 { r } else { c }] as f64;
        if s == 0.0 {
            0
        } else {
            (x[[r, c]] / s).round().clamp(-127.0, 127.0) as i8
        }
    });
    Ok((q, scales))
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

/// Bits per code for a codebook of size `k`: `ceil(log2 k)`, 0 when `k <= 1`.
pub fn bits_for(k: usize) -> u32 {
    if k <= 1 {
        0
    } else {
        usize::BITS - (k - 1).leading_zeros()
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
            k: limit as usize,
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
    let mut out = Vec::with_capacity(n);
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
                k: 4,
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
