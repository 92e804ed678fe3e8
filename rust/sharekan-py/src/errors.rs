//! Maps core errors to the exception classes of `sharekan.errors`.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use sharekan_core::Error;

/// Builds an instance of `sharekan.errors.<class>` with `msg`; falls back to ValueError
/// if the Python package cannot be imported (e.g. `_core` used on its own).
pub fn py_error(py: Python<'_>, class: &str, msg: String) -> PyErr {
    let made = py
        .import("sharekan.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1((msg.clone(),)));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(_) => PyValueError::new_err(msg),
    }
}

/// `sharekan.errors.InvalidInputError` with `msg`.
pub fn invalid(py: Python<'_>, msg: &str) -> PyErr {
    py_error(py, "InvalidInputError", msg.to_owned())
}

/// The one mapping from core errors to Python exceptions.
pub fn core_err(py: Python<'_>, err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::InvalidValue { .. } => py_error(py, "InvalidInputError", msg),
        Error::Shape { .. } => py_error(py, "ShapeError", msg),
        Error::NonFinite { .. } => py_error(py, "NonFiniteError", msg),
        Error::CodeOutOfRange { .. } => py_error(py, "CodeRangeError", msg),
        Error::Format(_) => py_error(py, "ArtifactError", msg),
        Error::Io(_) => PyOSError::new_err(msg),
    }
}
