//! PyO3 bindings of `sharekan-core`, built by maturin into `sharekan._core`.
//!
//! Only array conversion, GIL release and error mapping live here: every array is checked
//! for dtype, dimensionality and C order, read zero-copy, and the core runs with the GIL
//! released (through `errors::run_core`, which also turns a panic into an exception).
//! Core errors become the exception classes of `sharekan.errors`.

mod arrays;
mod errors;
mod evaluator;
mod refine;

use std::collections::{BTreeMap, HashMap};

use ndarray::Array1;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArray3};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sharekan_core::{artifact, bspline, gsb, kmeans, quant};

use arrays::{array1, array2, slice1};
use errors::{int_arg, invalid, run_core};

/// A non-negative integer argument as usize, or InvalidInputError naming it.
pub(crate) fn count(py: Python<'_>, value: i64, name: &str) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| {
        invalid(
            py,
            &format!("{name}: expected a non-negative integer, got {value}"),
        )
    })
}

fn bits_arg(py: Python<'_>, bits: i64) -> PyResult<u32> {
    u32::try_from(bits).map_err(|_| invalid(py, &format!("bits: expected 0..=32, got {bits}")))
}

fn kmeans_params(n_codes: usize, n_iter: usize, tol: f64, seed: u64) -> kmeans::KMeansParams {
    kmeans::KMeansParams {
        n_codes,
        n_iter,
        tol,
        seed,
        init: kmeans::Init::KMeansPlusPlus,
    }
}

/// B-spline basis values, efficient-kan semantics: (B, n_in) x (n_in, G+2k+1) -> (B, n_in, G+k).
#[pyfunction]
fn bspline_basis<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    grid: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray3<f64>>> {
    let k = count(py, int_arg(k, "k")?, "k")?;
    let x = array2::<f64>(x, "x")?;
    let grid = array2::<f64>(grid, "grid")?;
    let (x, grid) = (x.as_array(), grid.as_array());
    let out = run_core(py, "bspline_basis", || bspline::basis_dense(x, grid, k))?;
    Ok(out.into_pyarray(py))
}

/// Function metric: (M, M) Gram matrix of the basis over the grid range, averaged over inputs.
#[pyfunction]
fn bspline_gram<'py>(
    py: Python<'py>,
    grid: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let k = count(py, int_arg(k, "k")?, "k")?;
    let grid = array2::<f64>(grid, "grid")?;
    let grid = grid.as_array();
    let out = run_core(py, "bspline_gram", || bspline::gram(grid, k))?;
    Ok(out.into_pyarray(py))
}

/// Weighted sign-invariant spherical k-means over residuals (E, M).
#[pyfunction]
fn spherical_kmeans<'py>(
    py: Python<'py>,
    residuals: &Bound<'py, PyAny>,
    n_codes: i64,
    n_iter: i64,
    tol: f64,
    seed: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let residuals = array2::<f64>(residuals, "residuals")?;
    let view = residuals.as_array();
    let params = kmeans_params(
        count(py, n_codes, "n_codes")?,
        count(py, n_iter, "n_iter")?,
        tol,
        seed,
    );
    let res = run_core(py, "spherical_kmeans", || {
        kmeans::spherical_kmeans(view, &params)
    })?;
    let out = PyDict::new(py);
    out.set_item("centroids", res.centroids.into_pyarray(py))?;
    out.set_item("codes", Array1::from(res.codes).into_pyarray(py))?;
    out.set_item("objective", Array1::from(res.objective).into_pyarray(py))?;
    out.set_item("iterations", res.iterations)?;
    out.set_item("converged", res.converged)?;
    out.set_item("reseeds", res.reseeds)?;
    Ok(out)
}

/// Full gain-shape-bias fit of coefficients (E, M) under metric (M, M).
#[pyfunction]
fn gsb_fit<'py>(
    py: Python<'py>,
    coeffs: &Bound<'py, PyAny>,
    metric: &Bound<'py, PyAny>,
    n_codes: i64,
    n_iter: i64,
    tol: f64,
    seed: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let coeffs = array2::<f64>(coeffs, "coeffs")?;
    let metric = array2::<f64>(metric, "metric")?;
    let (cv, mv) = (coeffs.as_array(), metric.as_array());
    let params = kmeans_params(
        count(py, n_codes, "n_codes")?,
        count(py, n_iter, "n_iter")?,
        tol,
        seed,
    );
    let fit = run_core(py, "gsb_fit", || gsb::fit(cv, mv, &params))?;
    let out = PyDict::new(py);
    out.set_item("codebook", fit.codebook.into_pyarray(py))?;
    out.set_item("codes", Array1::from(fit.codes).into_pyarray(py))?;
    out.set_item("gains", fit.gains.into_pyarray(py))?;
    out.set_item("biases", fit.biases.into_pyarray(py))?;
    out.set_item(
        "objective",
        Array1::from(fit.kmeans.objective).into_pyarray(py),
    )?;
    out.set_item("iterations", fit.kmeans.iterations)?;
    out.set_item("converged", fit.kmeans.converged)?;
    out.set_item("reseeds", fit.kmeans.reseeds)?;
    Ok(out)
}

/// Joint least-squares (gain, bias) per edge for a fixed codebook and codes.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn refit_gain_bias<'py>(
    py: Python<'py>,
    coeffs: &Bound<'py, PyAny>,
    metric: &Bound<'py, PyAny>,
    codebook: &Bound<'py, PyAny>,
    codes: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>)> {
    let coeffs = array2::<f64>(coeffs, "coeffs")?;
    let metric = array2::<f64>(metric, "metric")?;
    let codebook = array2::<f64>(codebook, "codebook")?;
    let codes = array1::<u32>(codes, "codes")?;
    let (cv, mv, bv) = (coeffs.as_array(), metric.as_array(), codebook.as_array());
    let codes = slice1(py, &codes, "codes")?;
    let (g, b) = run_core(py, "refit_gain_bias", || {
        gsb::refit_gain_bias(cv, mv, bv, codes)
    })?;
    Ok((g.into_pyarray(py), b.into_pyarray(py)))
}

/// Symmetric int8 quantisation with one scale per row (axis=0) or per column (axis=1).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn quantize_i8<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: i64,
) -> PyResult<(Bound<'py, PyArray2<i8>>, Bound<'py, PyArray1<f32>>)> {
    let axis = count(py, axis, "axis")?;
    let x = array2::<f64>(x, "x")?;
    let view = x.as_array();
    let (q, s) = run_core(py, "quantize_i8", || quant::quantize_i8(view, axis))?;
    Ok((q.into_pyarray(py), s.into_pyarray(py)))
}

/// Symmetric quantisation to `bits` (2..=8) signed levels, one scale per row (axis=0) or
/// column (axis=1); fewer than 8 bits pick the least-squares clipping per lane.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn quantize_sym<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    axis: i64,
    bits: i64,
) -> PyResult<(Bound<'py, PyArray2<i8>>, Bound<'py, PyArray1<f32>>)> {
    let axis = count(py, axis, "axis")?;
    let bits = bits_arg(py, bits)?;
    let x = array2::<f64>(x, "x")?;
    let view = x.as_array();
    let (q, s) = run_core(py, "quantize_sym", || quant::quantize_sym(view, axis, bits))?;
    Ok((q.into_pyarray(py), s.into_pyarray(py)))
}

/// Pack int4 values (-8..=7) two per byte, low nibble first.
#[pyfunction]
fn pack_nibbles<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let values = array1::<i8>(values, "values")?;
    let slice = slice1(py, &values, "values")?;
    let packed = run_core(py, "pack_nibbles", || quant::pack_nibbles(slice))?;
    Ok(Array1::from(packed).into_pyarray(py))
}

/// Unpack `n` int4 values packed by `pack_nibbles`.
#[pyfunction]
fn unpack_nibbles<'py>(
    py: Python<'py>,
    packed: &Bound<'py, PyAny>,
    n: i64,
) -> PyResult<Bound<'py, PyArray1<i8>>> {
    let n = count(py, n, "n")?;
    let packed = array1::<u8>(packed, "packed")?;
    let slice = packed
        .as_slice()
        .map_err(|_| invalid(py, "packed: must be C-contiguous"))?;
    let values = run_core(py, "unpack_nibbles", || quant::unpack_nibbles(slice, n))?;
    Ok(Array1::from(values).into_pyarray(py))
}

/// Bits per code for a codebook of `n_codes` words: ceil(log2 n_codes), 0 when it is 1.
#[pyfunction]
fn bits_for(py: Python<'_>, n_codes: i64) -> PyResult<u32> {
    let n_codes = count(py, n_codes, "n_codes")?;
    if n_codes == 0 {
        return Err(invalid(
            py,
            "n_codes: the codebook size must be at least 1, got 0",
        ));
    }
    Ok(quant::bits_for(n_codes))
}

/// Pack codes (E,) u32 into an LSB-first bit stream of `bits` per code.
#[pyfunction]
fn pack_codes<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    bits: i64,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let bits = bits_arg(py, bits)?;
    let codes = array1::<u32>(codes, "codes")?;
    let slice = codes
        .as_slice()
        .map_err(|_| invalid(py, "codes: must be C-contiguous"))?;
    let packed = run_core(py, "pack_codes", || quant::pack_codes(slice, bits))?;
    Ok(Array1::from(packed).into_pyarray(py))
}

/// Unpack `n` codes of `bits` each from an LSB-first bit stream.
#[pyfunction]
fn unpack_codes<'py>(
    py: Python<'py>,
    packed: &Bound<'py, PyAny>,
    bits: i64,
    n: i64,
) -> PyResult<Bound<'py, PyArray1<u32>>> {
    let (bits, n) = (bits_arg(py, bits)?, count(py, n, "n")?);
    let packed = array1::<u8>(packed, "packed")?;
    let slice = packed
        .as_slice()
        .map_err(|_| invalid(py, "packed: must be C-contiguous"))?;
    let codes = run_core(py, "unpack_codes", || quant::unpack_codes(slice, bits, n))?;
    Ok(Array1::from(codes).into_pyarray(py))
}

/// Write tensors (name -> C-contiguous array) and string metadata to a safetensors file.
#[pyfunction]
fn save_safetensors(
    py: Python<'_>,
    path: &str,
    tensors: HashMap<String, Bound<'_, PyAny>>,
    metadata: HashMap<String, String>,
) -> PyResult<()> {
    let mut owned = BTreeMap::new();
    for (name, obj) in tensors {
        let tensor = arrays::tensor_bytes(&name, &obj)?;
        owned.insert(name, tensor);
    }
    let path = path.to_owned();
    run_core(py, "save_safetensors", || {
        artifact::save(&path, &owned, &metadata)
    })
}

/// Read a safetensors file: (name -> array, metadata).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn load_safetensors<'py>(
    py: Python<'py>,
    path: &str,
) -> PyResult<(HashMap<String, Bound<'py, PyAny>>, HashMap<String, String>)> {
    let path = path.to_owned();
    let (tensors, metadata) = run_core(py, "load_safetensors", || artifact::load(&path))?;
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let array = arrays::tensor_to_numpy(py, &name, &t)?;
        out.insert(name, array);
    }
    Ok((out, metadata))
}

/// The `sharekan._core` extension module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(bspline_basis, m)?)?;
    m.add_function(wrap_pyfunction!(bspline_gram, m)?)?;
    m.add_function(wrap_pyfunction!(spherical_kmeans, m)?)?;
    m.add_function(wrap_pyfunction!(gsb_fit, m)?)?;
    m.add_function(wrap_pyfunction!(refit_gain_bias, m)?)?;
    m.add_function(wrap_pyfunction!(refine::edge_gain_bias, m)?)?;
    m.add_function(wrap_pyfunction!(refine::refine_assign, m)?)?;
    m.add_function(wrap_pyfunction!(refine::refine_update, m)?)?;
    m.add_function(wrap_pyfunction!(refine::refine_objective, m)?)?;
    m.add_function(wrap_pyfunction!(refine::lloyd_refine, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_i8, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_sym, m)?)?;
    m.add_function(wrap_pyfunction!(pack_nibbles, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_nibbles, m)?)?;
    m.add_function(wrap_pyfunction!(bits_for, m)?)?;
    m.add_function(wrap_pyfunction!(pack_codes, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_codes, m)?)?;
    m.add_function(wrap_pyfunction!(evaluator::lutham_forward, m)?)?;
    m.add_function(wrap_pyfunction!(save_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(load_safetensors, m)?)?;
    Ok(())
}
