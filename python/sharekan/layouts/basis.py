"""Basis functions of a KAN layer's edges: what a coefficient vector means (SPEC §1).

Every adapter describes its layer's per-input basis B_0..B_{M-1} with one of these frozen
value types, so the compiler can build the metrics of SPEC §2.2 for any library:

=========== ==================================================================== =========
kind        B_m(x) for one input (x: the value the basis sees)                    PoU
=========== ==================================================================== =========
bspline     B-spline of order k on knots grid[i] (efficient-kan recursion,         yes
            half-open spans, zero outside [grid[i][0], grid[i][-1]))
rbf         exp(-((x - centers[i][m]) / h)^2)  (FastKAN)                           no
chebyshev   T_m(tanh x), T_0 = 1, T_1 = t, T_m = 2 t T_{m-1} - T_{m-2} (ChebyKAN)  no
gram        SiLU(P_m(tanh x)), P_0 = 1, P_1 = t,                                   no
            P_m = t P_{m-1} - beta(m-1, m) P_{m-2},
            beta(n, m) = (m+n)(m-n) n^2 / (m^2 / (4n^2 - 1)) * beta_weights[n]
            (torch-conv-kan KAGNConv)
=========== ==================================================================== =========

PoU: the functions sum to one inside the domain, so a constant added to all M coefficients
of an edge is a constant added to its output there and per-edge biases may be folded into
one bias per output (SPEC §2.6). For the other bases the coefficient-space bias b adds
``b * sum_m B_m(x)`` to the edge output; sharekan keeps such biases per edge and decodes in
coefficient space, so decode and decompress stay exact.

Metrics use each basis' *domain*: B-splines [grid[i][k], grid[i][G+k]], RBF
[centers[i][0], centers[i][-1]], and for the tanh-normalised bases the whole line, measured
uniformly in t = tanh(x) over [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _core
from ..errors import InvalidInputError, LayoutError

#: Gauss-Legendre nodes per panel and panels per domain for bases that are not piecewise
#: polynomials (RBF, SiLU of polynomials); polynomials are integrated exactly.
_GL_NODES = 24
_GL_PANELS = 16


def _gauss_legendre(lo: float, hi: float, panels: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights of composite Gauss-Legendre quadrature of (1/(hi-lo)) * integral."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(lo, hi, panels + 1)
    half = 0.5 * np.diff(edges)  # (panels,)
    mid = 0.5 * (edges[:-1] + edges[1:])
    pts = (mid[:, None] + half[:, None] * t[None, :]).reshape(-1)
    wts = (half[:, None] * w[None, :]).reshape(-1) / (hi - lo)
    return pts, wts


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


@dataclass(frozen=True, eq=False)
class Basis:
    """Base class: per-input basis functions of one layer (subclasses define the kind)."""

    kind = "abstract"
    #: Whether sum_m B_m(x) = 1 inside the domain (per-edge biases may then be folded).
    partition_of_unity = False

    @property
    def n_coeffs(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def grid_array(self, n_in: int) -> np.ndarray:
        """(n_in, W) float array stored with the compressed layer as its `grid` tensor."""
        raise NotImplementedError  # pragma: no cover

    def values(self, x: np.ndarray) -> np.ndarray:
        """Basis values: x (batch, n_in) float64 -> (batch, n_in, M) float64."""
        raise NotImplementedError  # pragma: no cover

    def gram(self) -> np.ndarray:
        """(M, M) mean over inputs of (1/|D|) * integral over the domain D of B B^T."""
        raise NotImplementedError  # pragma: no cover

    def sample_points(self, per_interval: int, n_in: int) -> np.ndarray:
        """(P, n_in) points covering each input's domain (for max |d phi|)."""
        raise NotImplementedError  # pragma: no cover

    def outside(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask of x (batch, n_in) values outside the domain."""
        return np.zeros(x.shape, dtype=bool)

    def inside_range(self, lo: float, hi: float) -> bool:
        """Whether every x in [lo, hi] lies inside every input's domain."""
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON parameters (the grid array is stored separately, see `grid_array`)."""
        raise NotImplementedError  # pragma: no cover

    @property
    def grid_size(self) -> int:
        """G for B-splines; M for other bases (reported, stored in the metadata)."""
        return self.n_coeffs

    @property
    def spline_order(self) -> int:
        """k for B-splines; 0 for other bases."""
        return 0

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True, eq=False)
class BSpline(Basis):
    """B-splines of order `k` on per-input knots `grid` (n_in, G + 2k + 1), strictly increasing."""

    grid: np.ndarray
    k: int
    kind = "bspline"
    partition_of_unity = True

    def __post_init__(self) -> None:
        grid = np.ascontiguousarray(self.grid, dtype=np.float64)
        if grid.ndim != 2 or grid.shape[1] < self.k + 2:
            raise LayoutError(
                f"B-spline grid: expected (n_in, G + 2k + 1) with G >= 1 and k = {self.k}, "
                f"got shape {grid.shape}"
            )
        object.__setattr__(self, "grid", grid)

    @property
    def n_coeffs(self) -> int:
        return int(self.grid.shape[1]) - self.k - 1

    @property
    def grid_size(self) -> int:
        return self.n_coeffs - self.k

    @property
    def spline_order(self) -> int:
        return self.k

    def grid_array(self, n_in: int) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(self.grid, (n_in, self.grid.shape[1])))

    def _domain(self) -> tuple[np.ndarray, np.ndarray]:
        return self.grid[:, self.k], self.grid[:, self.grid_size + self.k]

    def values(self, x: np.ndarray) -> np.ndarray:
        grid = self.grid_array(x.shape[1])
        return _core.bspline_basis(np.ascontiguousarray(x, dtype=np.float64), grid, self.k)

    def gram(self) -> np.ndarray:
        return _core.bspline_gram(self.grid, self.k)

    def sample_points(self, per_interval: int, n_in: int) -> np.ndarray:
        t = np.linspace(0.0, 1.0, self.grid_size * per_interval + 1)
        lo, hi = self._domain()
        # the right end is excluded by the half-open spans; step just inside it
        pts = lo[None, :] + np.minimum(t, 1 - 1e-9)[:, None] * (hi - lo)[None, :]
        return np.ascontiguousarray(np.broadcast_to(pts, (len(t), n_in)))

    def outside(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self._domain()
        return (x < lo) | (x > hi)

    def inside_range(self, lo: float, hi: float) -> bool:
        a, b = self._domain()
        return bool((a <= lo).all() and (b >= hi).all())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "k": self.k}

    def describe(self) -> str:
        return f"bspline(G={self.grid_size}, k={self.k})"


@dataclass(frozen=True, eq=False)
class RBF(Basis):
    """Gaussian radial basis exp(-((x - c_m) / h)^2) on centres `centers` (n_in or 1, M)."""

    centers: np.ndarray
    h: float
    kind = "rbf"

    def __post_init__(self) -> None:
        centers = np.asarray(self.centers, dtype=np.float64)
        if centers.ndim == 1:
            centers = centers[None, :]
        if centers.ndim != 2 or centers.shape[1] < 2:
            raise LayoutError(f"RBF centers: expected (n_in, M) with M >= 2, got {centers.shape}")
        if not (math.isfinite(self.h) and self.h > 0):
            raise InvalidInputError(f"RBF width h={self.h!r}: expected a finite number > 0")
        object.__setattr__(self, "centers", np.ascontiguousarray(centers))
        object.__setattr__(self, "h", float(self.h))

    @property
    def n_coeffs(self) -> int:
        return int(self.centers.shape[1])

    def grid_array(self, n_in: int) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(self.centers, (n_in, self.n_coeffs)))

    def values(self, x: np.ndarray) -> np.ndarray:
        c = self.grid_array(x.shape[1])
        return np.exp(-(((x[:, :, None] - c[None, :, :]) / self.h) ** 2))

    def gram(self) -> np.ndarray:
        rows = np.unique(self.centers, axis=0)
        out = np.zeros((self.n_coeffs, self.n_coeffs))
        for row in rows:
            pts, wts = _gauss_legendre(row[0], row[-1], _GL_PANELS, _GL_NODES)
            b = np.exp(-(((pts[:, None] - row[None, :]) / self.h) ** 2))  # (P, M)
            out += (b * wts[:, None]).T @ b
        return out / len(rows)

    def sample_points(self, per_interval: int, n_in: int) -> np.ndarray:
        t = np.linspace(0.0, 1.0, (self.n_coeffs - 1) * per_interval + 1)
        lo, hi = self.centers[:, 0], self.centers[:, -1]
        pts = lo[None, :] + t[:, None] * (hi - lo)[None, :]
        return np.ascontiguousarray(np.broadcast_to(pts, (len(t), n_in)))

    def outside(self, x: np.ndarray) -> np.ndarray:
        return (x < self.centers[:, 0]) | (x > self.centers[:, -1])

    def inside_range(self, lo: float, hi: float) -> bool:
        return bool((self.centers[:, 0] <= lo).all() and (self.centers[:, -1] >= hi).all())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "h": self.h}

    def describe(self) -> str:
        return f"rbf(M={self.n_coeffs}, h={self.h:.4g})"


def _tanh_samples(n: int) -> np.ndarray:
    """Points x whose t = tanh(x) cover (-1, 1) uniformly (ends stepped inside)."""
    t = np.linspace(-1.0, 1.0, n)
    return np.arctanh(np.clip(t, -1 + 1e-9, 1 - 1e-9))


@dataclass(frozen=True, eq=False)
class Chebyshev(Basis):
    """Chebyshev polynomials T_0..T_degree of t = tanh(x) (ChebyKAN); M = degree + 1."""

    degree: int
    kind = "chebyshev"

    def __post_init__(self) -> None:
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 0:
            raise InvalidInputError(f"Chebyshev degree={self.degree!r}: expected an integer >= 0")

    @property
    def n_coeffs(self) -> int:
        return self.degree + 1

    def grid_array(self, n_in: int) -> np.ndarray:
        return np.tile(np.array([-1.0, 1.0]), (n_in, 1))  # the domain of t

    def poly(self, t: np.ndarray) -> np.ndarray:
        out = [np.ones_like(t)]
        if self.degree > 0:
            out.append(t)
        for _ in range(2, self.degree + 1):
            out.append(2.0 * t * out[-1] - out[-2])
        return np.stack(out, axis=-1)

    def values(self, x: np.ndarray) -> np.ndarray:
        return self.poly(np.tanh(x))

    def gram(self) -> np.ndarray:
        pts, wts = _gauss_legendre(-1.0, 1.0, 1, self.degree + 2)  # exact: degree 2d
        b = self.poly(pts)
        return (b * wts[:, None]).T @ b

    def sample_points(self, per_interval: int, n_in: int) -> np.ndarray:
        pts = _tanh_samples(max(2, self.degree) * per_interval * 4 + 1)[:, None]
        return np.ascontiguousarray(np.broadcast_to(pts, (len(pts), n_in)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "degree": self.degree}

    def describe(self) -> str:
        return f"chebyshev(degree={self.degree}, tanh)"


@dataclass(frozen=True, eq=False)
class Gram(Basis):
    """SiLU of Gram polynomials P_0..P_degree of t = tanh(x) (torch-conv-kan KAGNConv)."""

    degree: int
    beta_weights: tuple[float, ...] = field(default=())
    kind = "gram"

    def __post_init__(self) -> None:
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 0:
            raise InvalidInputError(f"Gram degree={self.degree!r}: expected an integer >= 0")
        beta = tuple(float(v) for v in np.asarray(self.beta_weights, dtype=np.float64).reshape(-1))
        if len(beta) != self.degree + 1:
            raise LayoutError(
                f"Gram basis: beta_weights has {len(beta)} values, expected degree + 1 = "
                f"{self.degree + 1}"
            )
        object.__setattr__(self, "beta_weights", beta)

    @property
    def n_coeffs(self) -> int:
        return self.degree + 1

    def grid_array(self, n_in: int) -> np.ndarray:
        return np.tile(np.array([-1.0, 1.0]), (n_in, 1))

    def beta(self, n: int, m: int) -> float:
        return ((m + n) * (m - n) * n**2) / (m**2 / (4.0 * n**2 - 1.0)) * self.beta_weights[n]

    def poly(self, t: np.ndarray) -> np.ndarray:
        p0 = np.ones_like(t)
        out = [p0]
        if self.degree > 0:
            p1 = t
            out.append(p1)
            for i in range(2, self.degree + 1):
                p2 = t * p1 - self.beta(i - 1, i) * p0
                out.append(p2)
                p0, p1 = p1, p2
        return _silu(np.stack(out, axis=-1))

    def values(self, x: np.ndarray) -> np.ndarray:
        return self.poly(np.tanh(x))

    def gram(self) -> np.ndarray:
        pts, wts = _gauss_legendre(-1.0, 1.0, _GL_PANELS, _GL_NODES)
        b = self.poly(pts)
        return (b * wts[:, None]).T @ b

    def sample_points(self, per_interval: int, n_in: int) -> np.ndarray:
        pts = _tanh_samples(max(2, self.degree) * per_interval * 4 + 1)[:, None]
        return np.ascontiguousarray(np.broadcast_to(pts, (len(pts), n_in)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "degree": self.degree, "beta_weights": list(self.beta_weights)}

    def describe(self) -> str:
        return f"gram(degree={self.degree}, tanh, silu)"


BASIS_KINDS = ("bspline", "rbf", "chebyshev", "gram")


def basis_from_dict(meta: Mapping[str, Any], grid: np.ndarray) -> Basis:
    """Inverse of `Basis.to_dict` given the stored `grid` tensor (n_in, W)."""
    kind = meta.get("kind", "bspline")
    if kind == "bspline":
        return BSpline(grid, int(meta["k"]))
    if kind == "rbf":
        return RBF(grid, float(meta["h"]))
    if kind == "chebyshev":
        return Chebyshev(int(meta["degree"]))
    if kind == "gram":
        return Gram(int(meta["degree"]), tuple(meta["beta_weights"]))
    raise LayoutError(f"unknown basis kind {kind!r}; known: {list(BASIS_KINDS)}")


def as_basis(value: Any) -> Basis:
    """A Basis from a Basis or a dict such as {"kind": "chebyshev", "degree": 4},
    {"kind": "bspline", "grid": ..., "k": 3}, {"kind": "rbf", "centers": ..., "h": 0.5},
    {"kind": "bspline", "grid_size": 5, "k": 3, "grid_range": (-1, 1)} (uniform knots)."""
    if isinstance(value, Basis):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"basis: expected a sharekan.layouts Basis or a dict with 'kind', got {value!r}"
        )
    kind = value.get("kind")
    if kind == "bspline":
        k = int(value.get("k", 3))
        if "grid" in value:
            grid = np.asarray(value["grid"], dtype=np.float64)
            return BSpline(grid if grid.ndim == 2 else grid[None, :], k)
        return BSpline(uniform_knots(int(value["grid_size"]), k, value.get("grid_range", (-1, 1)))[None, :], k)
    if kind == "rbf":
        centers = np.asarray(value["centers"], dtype=np.float64)
        h = value.get("h")
        row = centers.reshape(-1, centers.shape[-1])[0]
        return RBF(centers, float(h) if h is not None else float((row[-1] - row[0]) / (len(row) - 1)))
    if kind == "chebyshev":
        return Chebyshev(int(value["degree"]))
    if kind == "gram":
        return Gram(int(value["degree"]), tuple(value.get("beta_weights", ())))
    raise InvalidInputError(f"basis kind {kind!r} unknown; known: {list(BASIS_KINDS)}")


def uniform_knots(grid_size: int, k: int, grid_range: Any = (-1.0, 1.0)) -> np.ndarray:
    """(G + 2k + 1,) knots: uniform on grid_range, extended by k intervals on each side
    (efficient-kan, TorchKAN and torch-conv-kan KANConv defaults)."""
    lo, hi = (float(v) for v in grid_range)
    if grid_size < 1 or k < 0 or not lo < hi:
        raise InvalidInputError(
            f"uniform B-spline grid: need grid_size >= 1, k >= 0, low < high; got "
            f"grid_size={grid_size}, k={k}, grid_range={grid_range!r}"
        )
    step = (hi - lo) / grid_size
    return np.arange(-k, grid_size + k + 1, dtype=np.float64) * step + lo
