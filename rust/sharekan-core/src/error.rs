//! The single error type of the core crate.
//!
//! Every public function validates what it reads and reports bad input through
//! [`Error`]; nothing panics on user input. Messages name the argument and the
//! offending values so that the bindings can forward them unchanged.

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in `sharekan_core`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An argument has a value outside its domain (K = 0, K > E, a grid that is not
    /// strictly increasing, a metric that is not symmetric positive definite, ...).
    #[error("invalid value for `{arg}`: {detail}")]
    InvalidValue {
        /// Name of the offending argument.
        arg: String,
        /// What is wrong, with the offending values.
        detail: String,
    },
    /// An argument has the wrong shape or length.
    #[error("wrong shape for `{arg}`: expected {expected}, got {got}")]
    Shape {
        /// Name of the offending argument.
        arg: String,
        /// The shape that was expected, e.g. `(E, M) = (12, 8)`.
        expected: String,
        /// The shape that was given, e.g. `(12, 7)`.
        got: String,
    },
    /// An argument holds NaN or an infinity.
    #[error("non-finite value in `{arg}` at flat (row-major) index {index}")]
    NonFinite {
        /// Name of the offending argument.
        arg: String,
        /// Row-major flat index of the first non-finite element.
        index: usize,
    },
    /// A code is negative or not below the codebook size (or `2^bits` when packing).
    #[error("code out of range in `{arg}` at flat (row-major) index {index}: code {code} is not in [0, {n_codes})")]
    CodeOutOfRange {
        /// Name of the offending argument.
        arg: String,
        /// Row-major flat index of the first offending code.
        index: usize,
        /// The offending code value.
        code: i64,
        /// The exclusive upper bound the code must respect.
        n_codes: usize,
    },
    /// A serialized artifact is truncated, corrupt or not in the expected format.
    #[error("format error: {0}")]
    Format(String),
    /// An operating-system level I/O failure (file not found, permission denied, ...).
    #[error("I/O error: {0}")]
    Io(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidValue`].
    pub fn invalid(arg: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::InvalidValue {
            arg: arg.into(),
            detail: detail.into(),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(
        arg: impl Into<String>,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Self {
        Error::Shape {
            arg: arg.into(),
            expected: expected.into(),
            got: got.into(),
        }
    }

    /// Shorthand for [`Error::NonFinite`].
    pub fn non_finite(arg: impl Into<String>, index: usize) -> Self {
        Error::NonFinite {
            arg: arg.into(),
            index,
        }
    }
}

/// Formats a shape as `(a, b, c)`.
pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}

/// Returns `NonFinite` for the first non-finite value of `values` (row-major order).
pub(crate) fn check_finite<'a, I>(arg: &str, values: I) -> Result<()>
where
    I: IntoIterator<Item = &'a f64>,
{
    match values.into_iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::non_finite(arg, index)),
        None => Ok(()),
    }
}

/// Like [`check_finite`] for `f32` values.
pub(crate) fn check_finite_f32<'a, I>(arg: &str, values: I) -> Result<()>
where
    I: IntoIterator<Item = &'a f32>,
{
    match values.into_iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::non_finite(arg, index)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_argument_and_values() {
        let e = Error::CodeOutOfRange {
            arg: "codes".into(),
            index: 7,
            code: 300,
            n_codes: 256,
        };
        let s = e.to_string();
        assert!(s.contains("codes") && s.contains("300") && s.contains("256") && s.contains('7'));
        let e = Error::shape("coeffs", "(E, M) = (4, 8)", "(4, 7)");
        assert!(e.to_string().contains("coeffs"));
        assert_eq!(fmt_shape(&[3]), "(3,)");
        assert_eq!(fmt_shape(&[3, 4]), "(3, 4)");
        assert_eq!(
            check_finite("x", [1.0, f64::NAN].iter()),
            Err(Error::non_finite("x", 1))
        );
    }
}
