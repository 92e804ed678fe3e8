//! Bindings of `sharekan_core::refine`: Lloyd refinement under per-edge metrics.
//!
//! Arrays are checked (dtype, ndim, C order) and read zero-copy; the core re-checks shapes,
//! finiteness and code ranges and runs with the GIL released.

use ndarray::Array1;
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sharekan_core::refine;

use crate::arrays::{array1, array2, array3, slice1};
use crate::count;
use crate::errors::run_core;

/// Per-edge (gain, bias): metrics (E, M, M), coeffs (E, M), codebook (K, M), codes u32 (E,).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn edge_gain_bias<'py>(
    py: Python<'py>,
    metrics: &Bound<'py, PyAny>,
    coeffs: &Bound<'py, PyAny>,
    codebook: &Bound<'py, PyAny>,
    codes: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>)> {
    let metrics = array3::<f64>(metrics, "metrics")?;
    let coeffs = array2::<f64>(coeffs, "coeffs")?;
    let codebook = array2::<f64>(codebook, "codebook")?;
    let codes = array1::<u32>(codes, "codes")?;
    let (rv, cv, bv) = (metrics.as_array(), coeffs.as_array(), codebook.as_array());
    let codes = slice1(py, &codes, "codes")?;
    let (g, b) = run_core(py, "edge_gain_bias", || {
        refine::edge_gain_bias(rv, cv, bv, codes)
    })?;
    Ok((g.into_pyarray(py), b.into_pyarray(py)))
}

/// Reassignment under per-edge metrics (keeps a code unless another is strictly better).
#[pyfunction]
pub fn refine_assign<'py>(
    py: Python<'py>,
    metrics: &Bound<'py, PyAny>,
    coeffs: &Bound<'py, PyAny>,
    codebook: &Bound<'py, PyAny>,
    codes: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<u32>>> {
    let metrics = array3::<f64>(metrics, "metrics")?;
    let coeffs = array2::<f64>(coeffs, "coeffs")?;
    let codebook = array2::<f64>(codebook, "codebook")?;
    let codes = array1::<u32>(codes, "codes")?;
    let (rv, cv, bv) = (metrics.as_array(), coeffs.as_array(), codebook.as_array());
    let codes = slice1(py, &codes, "codes")?;
    let out = run_core(py, "assign", || refine::assign(rv, cv, bv, codes))?;
    Ok(Array1::from(out).into_pyarray(py))
}

/// Codeword update for fixed codes, gains and biases -> codebook (K, M).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn refine_update<'py>(
    py: Python<'py>,
    metrics: &Bound<'py, PyAny>,
    coeffs: &Bound<'py, PyAny>,
    codebook: &Bound<'py, PyAny>,
    codes: &Bound<'py, PyAny>,
    gains: &Bound<'py, PyAny>,
    biases: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let metrics = array3::<f64>(metrics, "metrics")?;
    let coeffs = array2::<f64>(coeffs, "coeffs")?;
    let codebook = array2::<f64>(codebook, "codebook")?;
    let codes = array1::<u32>(codes, "codes")?;
    let gains = array1::<f64>(gains, "gains")?;
    let biases = array1::<f64>(biases, "biases")?;
    let (rv, cv, bv) = (metrics.as_array(), coeffs.as_array(), codebook.as_array());
    let (gv, biv) = (gains.as_array(), biases.as_array());
    let codes = slice1(py, &codes, "codes")?;
    let out = run_core(py, "update", || refine::update(rv, cv, bv, codes, gv, biv))?;
    Ok(out.into_pyarray(py))
}

/// The per-edge-metric objective sum_e (w - g C[q] - b 1)^T R_e (...).
#[pyfunction]
pub fn refine_objective(
    py: Python<'_>,
    metrics: &Bound<'_, PyAny>,
    coeffs: &Bound<'_, PyAny>,
    codebook: &Bound<'_, PyAny>,
    codes: &Bound<'_, PyAny>,
    gains: &Bound<'_, PyAny>,
    biases: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    let metrics = array3::<f64>(metrics, "metrics")?;
    let coeffs = array2::<f64>(coeffs, "coeffs")?;
    let codebook = array2::<f64>(codebook, "codebook")?;
    let codes = array1::<u32>(codes, "codes")?;
    let gains = array1::<f64>(gains, "gains")?;
    let biases = array1::<f64>(biases, "biases")?;
    let (rv, cv, bv) = (metrics.as_array(), coeffs.as_array(), codebook.as_array());
    let (gv, biv) = (gains.as_array(), biases.as_array());
    let codes = slice1(py, &codes, "codes")?;
    run_core(py, "objective", || {
        refine::objective(rv, cv, bv, codes, gv, biv)
    })
}

/// Lloyd iterations under per-edge metrics -> {codebook f64[K,M], codes u32[E], objective f64[T]}.
#[pyfunction]
pub fn lloyd_refine<'py>(
    py: Python<'py>,
    metrics: &Bound<'py, PyAny>,
    coeffs: &Bound<'py, PyAny>,
    codebook: &Bound<'py, PyAny>,
    codes: &Bound<'py, PyAny>,
    n_iter: i64,
) -> PyResult<Bound<'py, PyDict>> {
    let n_iter = count(py, n_iter, "n_iter")?;
    let metrics = array3::<f64>(metrics, "metrics")?;
    let coeffs = array2::<f64>(coeffs, "coeffs")?;
    let codebook = array2::<f64>(codebook, "codebook")?;
    let codes = array1::<u32>(codes, "codes")?;
    let (rv, cv, bv) = (metrics.as_array(), coeffs.as_array(), codebook.as_array());
    let codes = slice1(py, &codes, "codes")?;
    let res = run_core(py, "lloyd_refine", || {
        refine::lloyd_refine(rv, cv, bv, codes, n_iter)
    })?;
    let out = PyDict::new(py);
    out.set_item("codebook", res.codebook.into_pyarray(py))?;
    out.set_item("codes", Array1::from(res.codes).into_pyarray(py))?;
    out.set_item("objective", Array1::from(res.objective).into_pyarray(py))?;
    Ok(out)
}
