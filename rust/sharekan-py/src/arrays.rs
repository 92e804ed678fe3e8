//! Checked, zero-copy access to NumPy arrays, and raw tensors for safetensors files.

use numpy::{
    Element, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyReadonlyArray3, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use sharekan_core::artifact::{DType, Tensor};

use crate::errors::{invalid, py_error};

/// Describes `obj` for error messages: "ndarray float32 (3, 4)" or its Python type.
fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => format!("ndarray of dtype {} and shape {:?}", a.dtype(), a.shape()),
        Err(_) => obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "an unknown object".to_owned()),
    }
}

fn check_layout(
    py: Python<'_>,
    a: &Bound<'_, PyUntypedArray>,
    name: &str,
    ndim: usize,
) -> PyResult<()> {
    if a.ndim() != ndim {
        return Err(py_error(
            py,
            "ShapeError",
            format!(
                "{name}: expected a {ndim}-D array, got shape {:?}",
                a.shape()
            ),
        ));
    }
    if !a.is_c_contiguous() {
        return Err(py_error(
            py,
            "InvalidInputError",
            format!("{name}: array must be C-contiguous (use numpy.ascontiguousarray)"),
        ));
    }
    Ok(())
}

fn typed<'py, T: Element, D: ndarray::Dimension>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
) -> PyResult<Bound<'py, numpy::PyArray<T, D>>> {
    let py = obj.py();
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
        py_error(
            py,
            "DTypeError",
            format!("{name}: expected a numpy array, got {}", describe(obj)),
        )
    })?;
    check_layout(py, untyped, name, ndim)?;
    obj.cast::<numpy::PyArray<T, D>>().cloned().map_err(|_| {
        let want = T::get_dtype(py);
        py_error(
            py,
            "DTypeError",
            format!("{name}: expected dtype {want}, got {}", describe(obj)),
        )
    })
}

/// The elements of a checked 1-D view as a slice (`array1` already requires C order; a
/// view that still is not contiguous becomes an InvalidInputError, never a panic).
pub(crate) fn slice1<'a, T: Element>(
    py: Python<'_>,
    a: &'a PyReadonlyArray1<'_, T>,
    name: &str,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| invalid(py, &format!("{name}: must be C-contiguous")))
}

/// A read-only 1-D view of `obj` with dtype `T`, C-contiguous.
pub fn array1<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, T>> {
    Ok(typed::<T, ndarray::Ix1>(obj, name, 1)?.readonly())
}

/// A read-only 2-D view of `obj` with dtype `T`, C-contiguous.
pub fn array2<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray2<'py, T>> {
    Ok(typed::<T, ndarray::Ix2>(obj, name, 2)?.readonly())
}

/// A read-only 3-D view of `obj` with dtype `T`, C-contiguous.
pub fn array3<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray3<'py, T>> {
    Ok(typed::<T, ndarray::Ix3>(obj, name, 3)?.readonly())
}

/// Whether `obj` is a numpy array of dtype `T`.
pub fn is_dtype<T: Element>(obj: &Bound<'_, PyAny>) -> bool {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => a.dtype().is_equiv_to(&T::get_dtype(obj.py())),
        Err(_) => false,
    }
}

fn safetensors_dtype(name: &str, numpy_name: &str) -> Result<DType, String> {
    Ok(match numpy_name {
        "bool" => DType::Bool,
        "uint8" => DType::U8,
        "int8" => DType::I8,
        "int16" => DType::I16,
        "uint16" => DType::U16,
        "int32" => DType::I32,
        "uint32" => DType::U32,
        "int64" => DType::I64,
        "uint64" => DType::U64,
        "float16" => DType::F16,
        "float32" => DType::F32,
        "float64" => DType::F64,
        other => return Err(format!("tensor {name:?}: dtype {other} cannot be stored")),
    })
}

fn numpy_name(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::Bool => "bool",
        DType::U8 => "uint8",
        DType::I8 => "int8",
        DType::I16 => "int16",
        DType::U16 => "uint16",
        DType::I32 => "int32",
        DType::U32 => "uint32",
        DType::I64 => "int64",
        DType::U64 => "uint64",
        DType::F16 => "float16",
        DType::F32 => "float32",
        DType::F64 => "float64",
        _ => return None,
    })
}

/// Copies a C-contiguous numpy array into an owned little-endian tensor record.
pub fn tensor_bytes(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let py = obj.py();
    let a = obj.cast::<PyUntypedArray>().map_err(|_| {
        py_error(
            py,
            "DTypeError",
            format!(
                "tensor {name:?}: expected a numpy array, got {}",
                describe(obj)
            ),
        )
    })?;
    if !a.is_c_contiguous() {
        return Err(py_error(
            py,
            "InvalidInputError",
            format!("tensor {name:?}: array must be C-contiguous"),
        ));
    }
    if !a.dtype().is_native_byteorder().unwrap_or(true) || cfg!(target_endian = "big") {
        return Err(py_error(
            py,
            "DTypeError",
            format!("tensor {name:?}: byte order must be little-endian"),
        ));
    }
    let dtype_name: String = a.dtype().getattr("name")?.extract()?;
    let dtype = safetensors_dtype(name, &dtype_name).map_err(|m| py_error(py, "DTypeError", m))?;
    let data: Vec<u8> = obj.call_method0("tobytes")?.extract()?;
    Tensor::new(dtype, a.shape().to_vec(), data).map_err(|e| crate::errors::core_err(py, e))
}

/// A new numpy array holding a copy of the tensor's bytes.
pub fn tensor_to_numpy<'py>(
    py: Python<'py>,
    name: &str,
    t: &Tensor,
) -> PyResult<Bound<'py, PyAny>> {
    let dtype = numpy_name(t.dtype).ok_or_else(|| {
        py_error(
            py,
            "ArtifactError",
            format!("tensor {name:?}: unsupported dtype {:?}", t.dtype),
        )
    })?;
    let np = py.import("numpy")?;
    let bytes = pyo3::types::PyBytes::new(py, &t.data);
    let flat = np.call_method1("frombuffer", (bytes, dtype))?;
    let shaped = flat.call_method1("reshape", (t.shape.clone(),))?;
    // frombuffer views an immutable bytes object: return a writable copy.
    shaped.call_method0("copy")
}
