"""What every checkpoint adapter hands to the compiler, and what it gets back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """Original key, shape and dtype of one state_dict tensor (restored by decompress)."""

    key: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, key: str, array: np.ndarray) -> TensorInfo:
        return cls(key, tuple(int(d) for d in array.shape), str(array.dtype))

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> TensorInfo:
        return cls(str(d["key"]), tuple(int(v) for v in d["shape"]), str(d["dtype"]))  # type: ignore[union-attr]


@dataclass(frozen=True)
class LayerSource:
    """One KAN layer read from a checkpoint, in the compiler's canonical form.

    Attributes:
        name: layer name (the key prefix, e.g. "layers.0").
        coeffs: (n_in, n_out, M) float64 coefficients, per-edge scalers folded in.
        grid: (n_in, G + 2k + 1) float64 knots.
        spline_order: k.
        base_weight: (n_in, n_out) float64 base-branch weights on SiLU(x), or None.
        tensors: role -> original tensor info ("spline_weight", "grid", ...).
    """

    name: str
    coeffs: np.ndarray
    grid: np.ndarray
    spline_order: int
    base_weight: np.ndarray | None
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def n_in(self) -> int:
        return int(self.coeffs.shape[0])

    @property
    def n_out(self) -> int:
        return int(self.coeffs.shape[1])

    @property
    def n_coeffs(self) -> int:
        return int(self.coeffs.shape[2])

    @property
    def grid_size(self) -> int:
        return self.n_coeffs - self.spline_order


@dataclass(frozen=True)
class TensorEntry:
    """The fate of one state_dict tensor: compressed, passed through or refused."""

    key: str
    status: str  # "compressed" | "passthrough" | "refused"
    reason: str
    layer: str | None = None


@dataclass(frozen=True)
class Extraction:
    """Everything an adapter read from a state_dict."""

    layout: str
    layers: list[LayerSource]
    passthrough: dict[str, np.ndarray]
    entries: list[TensorEntry]


class Layout(Protocol):
    """A checkpoint adapter for one KAN library."""

    name: str

    def detect(self, state_dict: Mapping[str, np.ndarray]) -> bool:
        """True when the state_dict looks like this library's."""
        ...

    def extract(self, state_dict: Mapping[str, np.ndarray]) -> Extraction:
        """Read the layers; raise LayoutError naming the tensor when one is inconsistent."""
        ...

    def rebuild(
        self,
        source: Mapping[str, TensorInfo],
        coeffs: np.ndarray,
        base_weight: np.ndarray | None,
        grid: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Original tensors of one layer from decoded (n_in, n_out, M) coefficients."""
        ...
