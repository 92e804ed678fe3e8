"""Type stubs of the Rust extension `sharekan._core` (see ARCHITECTURE.md §5).

Every array argument must be C-contiguous with the dtype shown; the public Python API
coerces inputs before calling these. Errors are raised as `sharekan.errors` classes.
"""

from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
U32 = npt.NDArray[np.uint32]

class KMeansOut(TypedDict):
    centroids: F64
    codes: U32
    objective: F64
    iterations: int
    converged: bool
    reseeds: int

class LloydOut(TypedDict):
    codebook: F64
    codes: U32
    objective: F64

class GsbFitOut(TypedDict):
    codebook: F64
    codes: U32
    gains: F64
    biases: F64
    objective: F64
    iterations: int
    converged: bool
    reseeds: int

def bspline_basis(x: F64, grid: F64, k: int) -> F64: ...
def bspline_gram(grid: F64, k: int) -> F64: ...
def spherical_kmeans(residuals: F64, k: int, n_iter: int, tol: float, seed: int) -> KMeansOut: ...
def gsb_fit(coeffs: F64, metric: F64, k: int, n_iter: int, tol: float, seed: int) -> GsbFitOut: ...
def refit_gain_bias(coeffs: F64, metric: F64, codebook: F64, codes: U32) -> tuple[F64, F64]: ...
def edge_gain_bias(metrics: F64, coeffs: F64, codebook: F64, codes: U32) -> tuple[F64, F64]: ...
def refine_assign(metrics: F64, coeffs: F64, codebook: F64, codes: U32) -> U32: ...
def refine_update(metrics: F64, coeffs: F64, codebook: F64, codes: U32, gains: F64, biases: F64) -> F64: ...
def refine_objective(metrics: F64, coeffs: F64, codebook: F64, codes: U32, gains: F64, biases: F64) -> float: ...
def lloyd_refine(metrics: F64, coeffs: F64, codebook: F64, codes: U32, n_iter: int) -> LloydOut: ...
def quantize_i8(x: F64, axis: int) -> tuple[npt.NDArray[np.int8], F32]: ...
def quantize_sym(x: F64, axis: int, bits: int) -> tuple[npt.NDArray[np.int8], F32]: ...
def pack_nibbles(values: npt.NDArray[np.int8]) -> npt.NDArray[np.uint8]: ...
def unpack_nibbles(packed: npt.NDArray[np.uint8], n: int) -> npt.NDArray[np.int8]: ...
def bits_for(k: int) -> int: ...
def pack_codes(codes: U32, bits: int) -> npt.NDArray[np.uint8]: ...
def unpack_codes(packed: npt.NDArray[np.uint8], bits: int, n: int) -> U32: ...
def lutham_forward(
    x: F32,
    grid: F32,
    k: int,
    codebook: F32,
    codes: npt.NDArray[Any],
    gains: npt.NDArray[Any],
    gain_scale: F32 | None = None,
    edge_bias: npt.NDArray[Any] | None = None,
    edge_bias_scale: F32 | None = None,
    out_bias: F32 | None = None,
    base_weight: npt.NDArray[Any] | None = None,
    base_scale: F32 | None = None,
    basis: int | None = 0,
    h: float | None = 1.0,
    base_act: int | None = 0,
) -> F32: ...
def save_safetensors(path: str, tensors: dict[str, npt.NDArray[Any]], metadata: dict[str, str]) -> None: ...
def load_safetensors(path: str) -> tuple[dict[str, npt.NDArray[Any]], dict[str, str]]: ...
