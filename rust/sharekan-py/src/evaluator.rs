//! `lutham_forward`: dtype dispatch (codes u8/i16/i32/u32, weights f32/int8) onto the
//! core's generic evaluator.

use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use sharekan_core::evaluator::{
    lutham_forward as core_forward, BaseAct, Basis, Code, LuthamInputs, Weights,
};

use crate::arrays::{array1, array2, is_dtype};
use crate::errors::{float_arg, int_arg, py_error, run_core};

/// A per-edge weight array as read from Python: float32 or int8.
enum HeldWeights<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    I8(PyReadonlyArray2<'py, i8>),
}

impl HeldWeights<'_> {
    fn view(&self) -> Weights<'_> {
        match self {
            HeldWeights::F32(a) => Weights::F32(a.as_array()),
            HeldWeights::I8(a) => Weights::I8(a.as_array()),
        }
    }
}

fn weights<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<HeldWeights<'py>> {
    if is_dtype::<i8>(obj) {
        Ok(HeldWeights::I8(array2::<i8>(obj, name)?))
    } else if is_dtype::<f32>(obj) {
        Ok(HeldWeights::F32(array2::<f32>(obj, name)?))
    } else {
        Err(py_error(
            obj.py(),
            "DTypeError",
            format!("{name}: expected an int8 or float32 array"),
        ))
    }
}

fn opt_weights<'py>(
    obj: Option<&Bound<'py, PyAny>>,
    name: &str,
) -> PyResult<Option<HeldWeights<'py>>> {
    obj.filter(|o| !o.is_none())
        .map(|o| weights(o, name))
        .transpose()
}

/// An optional argument that is neither absent nor None.
fn given<'a, 'py>(obj: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    obj.filter(|o| !o.is_none())
}

fn opt_vec<'py>(
    obj: Option<&Bound<'py, PyAny>>,
    name: &str,
) -> PyResult<Option<PyReadonlyArray1<'py, f32>>> {
    obj.filter(|o| !o.is_none())
        .map(|o| array1::<f32>(o, name))
        .transpose()
}

/// Everything but the codes, held for the duration of the call.
struct Held<'py> {
    x: PyReadonlyArray2<'py, f32>,
    grid: PyReadonlyArray2<'py, f32>,
    codebook: PyReadonlyArray2<'py, f32>,
    gains: HeldWeights<'py>,
    gain_scale: Option<PyReadonlyArray1<'py, f32>>,
    edge_bias: Option<HeldWeights<'py>>,
    edge_bias_scale: Option<PyReadonlyArray1<'py, f32>>,
    out_bias: Option<PyReadonlyArray1<'py, f32>>,
    base_weight: Option<HeldWeights<'py>>,
    base_scale: Option<PyReadonlyArray1<'py, f32>>,
    basis: Basis,
    base_act: BaseAct,
}

fn run<'py, C: Code + numpy::Element>(
    py: Python<'py>,
    held: &Held<'py>,
    k: usize,
    codes: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let codes = array2::<C>(codes, "codes")?;
    let inputs = LuthamInputs {
        x: held.x.as_array(),
        grid: held.grid.as_array(),
        k,
        codebook: held.codebook.as_array(),
        codes: codes.as_array(),
        gains: held.gains.view(),
        gain_scale: held.gain_scale.as_ref().map(|a| a.as_array()),
        edge_bias: held.edge_bias.as_ref().map(|w| w.view()),
        edge_bias_scale: held.edge_bias_scale.as_ref().map(|a| a.as_array()),
        out_bias: held.out_bias.as_ref().map(|a| a.as_array()),
        base_weight: held.base_weight.as_ref().map(|w| w.view()),
        base_scale: held.base_scale.as_ref().map(|a| a.as_array()),
        basis: held.basis,
        base_act: held.base_act,
    };
    let out = run_core(py, "lutham_forward", || core_forward(&inputs))?;
    Ok(out.into_pyarray(py))
}

/// LUTHAM evaluation of one compressed layer: x (B, n_in) f32 -> (B, n_out) f32.
///
/// `basis`, `h` and `base_act` default to 0, 1.0 and 0 (also when None). Integer and float
/// arguments out of range raise InvalidInputError, not OverflowError.
#[pyfunction]
#[pyo3(signature = (x, grid, k, codebook, codes, gains, gain_scale=None, edge_bias=None,
    edge_bias_scale=None, out_bias=None, base_weight=None, base_scale=None, basis=None, h=None,
    base_act=None))]
#[allow(clippy::too_many_arguments)]
pub fn lutham_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    grid: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    codebook: &Bound<'py, PyAny>,
    codes: &Bound<'py, PyAny>,
    gains: &Bound<'py, PyAny>,
    gain_scale: Option<&Bound<'py, PyAny>>,
    edge_bias: Option<&Bound<'py, PyAny>>,
    edge_bias_scale: Option<&Bound<'py, PyAny>>,
    out_bias: Option<&Bound<'py, PyAny>>,
    base_weight: Option<&Bound<'py, PyAny>>,
    base_scale: Option<&Bound<'py, PyAny>>,
    basis: Option<&Bound<'py, PyAny>>,
    h: Option<&Bound<'py, PyAny>>,
    base_act: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let k = crate::count(py, int_arg(k, "k")?, "k")?;
    let basis = given(basis).map_or(Ok(0), |o| int_arg(o, "basis"))?;
    let h = given(h).map_or(Ok(1.0), |o| float_arg(o, "h"))?;
    let base_act = given(base_act).map_or(Ok(0), |o| int_arg(o, "base_act"))?;
    let basis = match basis {
        0 => Basis::BSpline,
        1 => Basis::Rbf { h: h as f32 },
        2 => Basis::Chebyshev,
        _ => {
            return Err(py_error(
                py,
                "InvalidInputError",
                format!("basis: expected 0 (B-spline), 1 (RBF) or 2 (Chebyshev), got {basis}"),
            ))
        }
    };
    let base_act = match base_act {
        0 => BaseAct::Silu,
        1 => BaseAct::Gelu,
        _ => {
            return Err(py_error(
                py,
                "InvalidInputError",
                format!("base_act: expected 0 (SiLU) or 1 (GELU), got {base_act}"),
            ))
        }
    };
    let held = Held {
        x: array2::<f32>(x, "x")?,
        grid: array2::<f32>(grid, "grid")?,
        codebook: array2::<f32>(codebook, "codebook")?,
        gains: weights(gains, "gains")?,
        gain_scale: opt_vec(gain_scale, "gain_scale")?,
        edge_bias: opt_weights(edge_bias, "edge_bias")?,
        edge_bias_scale: opt_vec(edge_bias_scale, "edge_bias_scale")?,
        out_bias: opt_vec(out_bias, "out_bias")?,
        base_weight: opt_weights(base_weight, "base_weight")?,
        base_scale: opt_vec(base_scale, "base_scale")?,
        basis,
        base_act,
    };
    if is_dtype::<u8>(codes) {
        run::<u8>(py, &held, k, codes)
    } else if is_dtype::<i16>(codes) {
        run::<i16>(py, &held, k, codes)
    } else if is_dtype::<i32>(codes) {
        run::<i32>(py, &held, k, codes)
    } else if is_dtype::<u32>(codes) {
        run::<u32>(py, &held, k, codes)
    } else {
        Err(py_error(
            py,
            "DTypeError",
            "codes: expected a uint8, int16, int32 or uint32 array".to_owned(),
        ))
    }
}
