//! Maps core errors to the exception classes of `sharekan.errors`, converts scalar
//! arguments without letting Python's OverflowError through, and runs core calls with the
//! GIL released behind a panic backstop.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyOSError, PyOverflowError, PyValueError};
use pyo3::prelude::*;
use sharekan_core::Error;

/// Builds an instance of `sharekan.errors.<class>` with `msg`; falls back to ValueError
/// if the Python package cannot be imported (e.g. `_core` used on its own).
pub fn py_error(py: Python<'_>, class: &str, msg: String) -> PyErr {
    py_error_first(py, &[class], msg)
}

/// Like [`py_error`] with the first of `classes` that `sharekan.errors` defines.
fn py_error_first(py: Python<'_>, classes: &[&str], msg: String) -> PyErr {
    let made = py.import("sharekan.errors").and_then(|m| {
        let mut found = Err(PyValueError::new_err("no class"));
        for class in classes {
            found = m.getattr(*class);
            if found.is_ok() {
                break;
            }
        }
        found.and_then(|cls| cls.call1((msg.clone(),)))
    });
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

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "panic with a non-text payload"
    }
}

/// Runs `f` (a core call named `what`) with the GIL released. Core errors map through
/// [`core_err`]; a panic (a bug: the core validates its inputs) is caught here instead of
/// reaching Python as pyo3's PanicException (a BaseException that `except Exception` does
/// not catch) and becomes `sharekan.errors.InternalError` when the package defines it,
/// else `InvalidInputError`, with "internal error in <what>: <panic message>".
pub fn run_core<T, F>(py: Python<'_>, what: &str, f: F) -> PyResult<T>
where
    F: FnOnce() -> sharekan_core::Result<T> + Send,
    T: Send,
{
    // The closure's captures are only read, and dropped on unwind: nothing observes a
    // half-updated state afterwards.
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(core_err(py, e)),
        Err(payload) => Err(py_error_first(
            py,
            &["InternalError", "InvalidInputError"],
            format!(
                "internal error in {what}: {} (a bug in sharekan, please report it)",
                panic_text(payload.as_ref())
            ),
        )),
    }
}

/// `str(obj)`, cut to 40 characters (a huge int has thousands of digits).
fn short(obj: &Bound<'_, PyAny>) -> String {
    let s = obj.to_string();
    match s.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s,
    }
}

/// An integer argument as i64; an int outside the i64 range is an InvalidInputError
/// naming the argument (not Python's OverflowError); other types keep pyo3's TypeError.
pub fn int_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    let py = obj.py();
    obj.extract::<i64>().map_err(|e| {
        if e.is_instance_of::<PyOverflowError>(py) {
            invalid(
                py,
                &format!(
                    "{name}: expected an integer in the signed 64-bit range, got {}",
                    short(obj)
                ),
            )
        } else {
            e
        }
    })
}

/// A float argument; a value that overflows float64 (e.g. a huge int) is an
/// InvalidInputError naming the argument; other types keep pyo3's TypeError.
pub fn float_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    let py = obj.py();
    obj.extract::<f64>().map_err(|e| {
        if e.is_instance_of::<PyOverflowError>(py) {
            invalid(
                py,
                &format!("{name}: expected a float64 value, got {} ({e})", short(obj)),
            )
        } else {
            e
        }
    })
}
