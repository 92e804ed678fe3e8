"""Type stubs of the Rust extension `sharekan._core` (see ARCHITECTURE.md §5).

Every array argument must be C-contiguous with the dtype shown; the public Python API
coerces inputs before calling these. Errors are raised as `sharekan.errors` classes.
"""

from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

__all__ = [
    "bspline_basis",
    "bspline_gram",
    "spherical_kmeans",
    "gsb_fit",
    "refit_gain_bias",
    "edge_gain_bias",
    "refine_assign",
    "refine_update",
    "refine_objective",
    "lloyd_refine",
    "quantize_i8",
    "quantize_sym",
    "pack_nibbles",
    "unpack_nibbles",
    "bits_for",
    "pack_codes",
    "unpack_codes",
    "lutham_forward",
    "save_safetensors",
    "load_safetensors",
]

_F64 = npt.NDArray[np.float64]
_F32 = npt.NDArray[np.float32]
_U32 = npt.NDArray[np.uint32]

class _KMeansOut(TypedDict):
    centroids: _F64
    codes: _U32
    objective: _F64
    iterations: int
    converged: bool
    reseeds: int

class _LloydOut(TypedDict):
    codebook: _F64
    codes: _U32
    objective: _F64

class _GsbFitOut(TypedDict):
    codebook: _F64
    codes: _U32
    gains: _F64
    biases: _F64
    objective: _F64
    iterations: int
    converged: bool
    reseeds: int

def bspline_basis(x: _F64, grid: _F64, k: int) -> _F64: ...
def bspline_gram(grid: _F64, k: int) -> _F64: ...
def spherical_kmeans(residuals: _F64, n_codes: int, n_iter: int, tol: float, seed: int) -> _KMeansOut: ...
def gsb_fit(coeffs: _F64, metric: _F64, n_codes: int, n_iter: int, tol: float, seed: int) -> _GsbFitOut: ...
def refit_gain_bias(coeffs: _F64, metric: _F64, codebook: _F64, codes: _U32) -> tuple[_F64, _F64]: ...
def edge_gain_bias(metrics: _F64, coeffs: _F64, codebook: _F64, codes: _U32) -> tuple[_F64, _F64]: ...
def refine_assign(metrics: _F64, coeffs: _F64, codebook: _F64, codes: _U32) -> _U32: ...
def refine_update(metrics: _F64, coeffs: _F64, codebook: _F64, codes: _U32, gains: _F64, biases: _F64) -> _F64: ...
def refine_objective(metrics: _F64, coeffs: _F64, codebook: _F64, codes: _U32, gains: _F64, biases: _F64) -> float: ...
def lloyd_refine(metrics: _F64, coeffs: _F64, codebook: _F64, codes: _U32, n_iter: int) -> _LloydOut: ...
def quantize_i8(x: _F64, axis: int) -> tuple[npt.NDArray[np.int8], _F32]: ...
def quantize_sym(x: _F64, axis: int, bits: int) -> tuple[npt.NDArray[np.int8], _F32]: ...
def pack_nibbles(values: npt.NDArray[np.int8]) -> npt.NDArray[np.uint8]: ...
def unpack_nibbles(packed: npt.NDArray[np.uint8], n: int) -> npt.NDArray[np.int8]: ...
def bits_for(n_codes: int) -> int: ...
def pack_codes(codes: _U32, bits: int) -> npt.NDArray[np.uint8]: ...
def unpack_codes(packed: npt.NDArray[np.uint8], bits: int, n: int) -> _U32: ...
def lutham_forward(
    x: _F32,
    grid: _F32,
    k: int,
    codebook: _F32,
    codes: npt.NDArray[Any],
    gains: npt.NDArray[Any],
    gain_scale: _F32 | None = None,
    edge_bias: npt.NDArray[Any] | None = None,
    edge_bias_scale: _F32 | None = None,
    out_bias: _F32 | None = None,
    base_weight: npt.NDArray[Any] | None = None,
    base_scale: _F32 | None = None,
    basis: int | None = None,  # None: 0 (B-spline)
    h: float | None = None,  # None: 1.0
    base_act: int | None = None,  # None: 0 (SiLU)
) -> _F32: ...
def save_safetensors(path: str, tensors: dict[str, npt.NDArray[Any]], metadata: dict[str, str]) -> None: ...
def load_safetensors(path: str) -> tuple[dict[str, npt.NDArray[Any]], dict[str, str]]: ...
