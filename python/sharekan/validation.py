"""Input validation and coercion, done once at the public boundary.

Arrays leave here as fresh C-contiguous NumPy arrays of the requested dtype, so the caller's
objects are never mutated and the Rust core only sees the layouts it accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import DTypeError, InvalidInputError, NonFiniteError, ShapeError

FLOAT_KINDS = "f"


def to_numpy(value: Any, name: str) -> np.ndarray:
    """A NumPy view of `value` (numpy array or torch tensor); never copies torch CPU data."""
    if isinstance(value, np.ndarray):
        return value
    # torch tensors (and anything with the same protocol) without importing torch
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        tensor = value.detach().cpu()
        if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":
            tensor = tensor.float()
        try:
            return tensor.numpy()
        except TypeError as exc:  # e.g. quantized or complex tensors
            raise DTypeError(
                f"tensor {name!r}: cannot convert dtype {tensor.dtype}: {exc}"
            ) from None
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise DTypeError(
        f"tensor {name!r}: expected a numpy array or torch tensor, got {type(value).__name__}"
    )


def as_state_dict(state_dict: Any) -> dict[str, np.ndarray]:
    """Validate a mapping of names to arrays/tensors; returns name -> NumPy array (views)."""
    if not isinstance(state_dict, Mapping):
        raise InvalidInputError(
            f"state_dict: expected a mapping of names to arrays, got {type(state_dict).__name__}"
        )
    if not state_dict:
        raise ShapeError("state_dict is empty: nothing to compress")
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"state_dict key {key!r} is not a string")
        out[key] = to_numpy(value, key)
    return out


def float_array(
    array: np.ndarray,
    name: str,
    *,
    ndim: int | None = None,
    dtype: Any = np.float64,
    finite: bool = True,
) -> np.ndarray:
    """A non-empty, C-contiguous copy of a floating-point array, finite unless `finite=False`."""
    if array.dtype.kind not in FLOAT_KINDS:
        raise DTypeError(
            f"tensor {name!r}: dtype {array.dtype} is not a floating-point type "
            "(expected float16/32/64)"
        )
    if ndim is not None and array.ndim != ndim:
        raise ShapeError(f"tensor {name!r}: expected {ndim} dimensions, got shape {array.shape}")
    if array.size == 0:
        raise ShapeError(f"tensor {name!r}: empty array of shape {array.shape}")
    out = np.array(array, dtype=dtype, order="C", copy=True)
    if finite:
        check_finite(out, name)
    return out


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise NonFiniteError naming the first NaN/Inf entry of `array`."""
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise NonFiniteError(
            f"tensor {name!r}: {int(bad.sum())} non-finite value(s); first at index {index}: "
            f"{array[index]!r}"
        )
