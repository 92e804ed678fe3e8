//! Pure-Rust core of sharekan (SHARe-KAN compression of Kolmogorov-Arnold Networks).
//!
//! Modules mirror the Python package: [`bspline`] (bases and the function metric),
//! [`gsb`] (gain-shape-bias decomposition and fit), [`kmeans`] (weighted sign-invariant
//! spherical k-means), [`refine`] (Lloyd refinement under per-edge metrics), [`quant`]
//! (int8 and bit packing), [`evaluator`] (the LUTHAM
//! reference evaluator), [`artifact`] (safetensors files) and [`linalg`] (tiny dense
//! helpers). Every public function validates its input and returns [`Error`] instead of
//! panicking; every random choice takes an explicit seed, and results are bit-identical
//! for any number of rayon threads.
#![deny(missing_docs)]

pub mod artifact;
pub mod bspline;
pub mod error;
pub mod evaluator;
pub mod gsb;
pub mod kmeans;
pub mod linalg;
pub mod quant;
pub mod refine;

pub use error::{Error, Result};
pub use evaluator::{lutham_forward, Code, LuthamInputs, Weights};
pub use gsb::{fit, refit_gain_bias, GsbFit};
pub use kmeans::{spherical_kmeans, Init, KMeansParams, KMeansResult};
