"""The generic path: the user names the coefficient tensor, its edge layout and its basis.

>>> from sharekan.layouts import GenericLayout, GenericLayer, Chebyshev
>>> layout = GenericLayout([GenericLayer("head.coeffs", edges="in,out,coef",
...                                      basis=Chebyshev(4))])            # doctest: +SKIP
>>> sharekan.compress(sd, layout=layout)                                    # doctest: +SKIP
>>> sharekan.compress(sd, layout="generic", layout_options={"layers": [
...     {"key": "head.w", "edges": "out,in*coef",
...      "basis": {"kind": "bspline", "grid_size": 5, "k": 3}}]})         # doctest: +SKIP

`edges` names the axes of the coefficient tensor, comma-separated, one entry per
dimension; a dimension holding several axes lists them with "*" in row-major order. The
axes are `in`, `out` and `coef` (M, the basis size). Examples: efficient-kan "out,in,coef",
pykan/ChebyKAN "in,out,coef", FastKAN "out,in*coef", degree-major (strided) "out,coef*in".
An optional base-branch weight `base_key` has layout `base_edges` ("out,in" or "in,out").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError, LayoutError
from ._common import ledger, tensor
from .adapter import BASE_ACTIVATIONS, Extraction, LayerSource, Semantics, TensorInfo
from .basis import Basis, as_basis

NAME = "generic"
_AXES = ("in", "out", "coef")


def parse_edges(spec: str) -> list[list[str]]:
    """"out,in*coef" -> [["out"], ["in", "coef"]]; each axis exactly once."""
    dims = [[a.strip() for a in d.split("*")] for d in spec.split(",")]
    flat = [a for d in dims for a in d]
    if sorted(flat) != sorted(_AXES):
        raise InvalidInputError(
            f"edges={spec!r}: name each of the axes {list(_AXES)} exactly once, "
            "comma-separated per dimension, '*' within a flattened dimension"
        )
    return dims


def _axis_sizes(dims: list[list[str]], shape: tuple[int, ...], m: int, key: str,
                given: Mapping[str, int | None]) -> dict[str, int]:
    if len(dims) != len(shape):
        raise LayoutError(f"tensor {key!r}: shape {shape} has {len(shape)} dims, the edge layout names {len(dims)}")
    sizes = {"coef": m, **{a: int(v) for a, v in given.items() if v is not None}}
    for _ in range(2):  # resolve at most one unknown axis per dimension, twice
        for dim, n in zip(dims, shape):
            unknown = [a for a in dim if a not in sizes]
            known = int(np.prod([sizes[a] for a in dim if a in sizes])) if dim else 1
            if len(unknown) == 1 and known and n % known == 0:
                sizes[unknown[0]] = n // known
    for dim, n in zip(dims, shape):
        if any(a not in sizes for a in dim) or int(np.prod([sizes[a] for a in dim])) != n:
            raise LayoutError(
                f"tensor {key!r}: shape {shape} does not fit the edge layout "
                f"{','.join('*'.join(d) for d in dims)} with coef = M = {m}"
                + ("" if {"in", "out"} <= set(sizes) else "; give n_in (or n_out) when one dimension flattens both")
            )
    return sizes


@dataclass(frozen=True)
class GenericLayer:
    """One user-described KAN layer (see the module docstring)."""

    key: str
    basis: Basis | Mapping[str, Any]
    edges: str = "in,out,coef"
    base_key: str | None = None
    base_edges: str = "out,in"
    base_activation: str = "silu"
    name: str | None = None
    n_in: int | None = None
    n_out: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "basis", as_basis(self.basis))
        parse_edges(self.edges)
        if self.base_edges not in ("out,in", "in,out"):
            raise InvalidInputError(f"base_edges={self.base_edges!r}; expected 'out,in' or 'in,out'")
        if self.base_activation not in BASE_ACTIVATIONS:
            raise InvalidInputError(
                f"base_activation={self.base_activation!r}; expected one of {list(BASE_ACTIVATIONS)}"
            )


class GenericLayout:
    """Adapter for checkpoints described by the user: a list of `GenericLayer`s (or dicts
    with the same fields), or one layer's fields as keyword arguments."""

    name = NAME

    def __init__(self, layers: Sequence[GenericLayer | Mapping[str, Any]] | None = None,
                 **single: Any) -> None:
        items = list(layers or []) + ([single] if single else [])
        self.layers = [i if isinstance(i, GenericLayer) else GenericLayer(**i) for i in items]

    def detect(self, state_dict: Mapping[str, np.ndarray]) -> bool:
        return bool(self.layers) and all(spec.key in state_dict for spec in self.layers)

    def extract(self, state_dict: Mapping[str, np.ndarray]) -> Extraction:
        if not self.layers:
            raise InvalidInputError(
                "layout 'generic' needs the layers described: layout_options={'layers': "
                "[{'key': ..., 'edges': 'in,out,coef', 'basis': {...}}]}"
            )
        return ledger(NAME, [self._layer(state_dict, spec) for spec in self.layers], state_dict)

    def _layer(self, sd: Mapping[str, np.ndarray], spec: GenericLayer) -> LayerSource:
        basis = spec.basis
        assert isinstance(basis, Basis)
        raw = sd.get(spec.key)
        if raw is None:
            raise LayoutError(f"tensor {spec.key!r} (generic layer) is not in the state_dict")
        dims = parse_edges(spec.edges)
        sizes = _axis_sizes(dims, tuple(raw.shape), basis.n_coeffs, spec.key,
                            {"in": spec.n_in, "out": spec.n_out})
        order = [a for d in dims for a in d]
        values = tensor(sd, spec.key).reshape([sizes[a] for a in order])
        coeffs = np.ascontiguousarray(values.transpose([order.index(a) for a in _AXES]))  # (n_in, n_out, M)
        n_in, n_out = sizes["in"], sizes["out"]
        tensors = {"spline_weight": TensorInfo.of(spec.key, raw)}
        base = None
        if spec.base_key is not None:
            want = (n_out, n_in) if spec.base_edges == "out,in" else (n_in, n_out)
            b = tensor(sd, spec.base_key, want, f"base weight [{spec.base_edges}]")
            base = np.ascontiguousarray(b.T if spec.base_edges == "out,in" else b)
            tensors["base_weight"] = TensorInfo.of(spec.base_key, sd[spec.base_key])
        name = spec.name or (spec.key.rsplit(".", 1)[0] if "." in spec.key else spec.key)
        info = {"edges": spec.edges, "axes": {a: sizes[a] for a in _AXES}, "base_edges": spec.base_edges}
        return LayerSource.with_basis(
            name, coeffs, basis, base, tensors,
            semantics=Semantics(base_activation=spec.base_activation if base is not None else None),
            info=info,
        )

    def rebuild(
        self,
        source: Mapping[str, TensorInfo],
        coeffs: np.ndarray,
        base_weight: np.ndarray | None,
        grid: np.ndarray,
        info: Mapping[str, Any] | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        info = info or {}
        order = [a for d in parse_edges(str(info["edges"])) for a in d]
        s = source["spline_weight"]
        values = coeffs.transpose([_AXES.index(a) for a in order]).reshape(s.shape)
        out = {s.key: np.ascontiguousarray(values).astype(s.dtype)}
        if "base_weight" in source and base_weight is not None:
            b = source["base_weight"]
            bw = base_weight.T if info.get("base_edges", "out,in") == "out,in" else base_weight
            out[b.key] = np.ascontiguousarray(bw).astype(b.dtype)
        return out
