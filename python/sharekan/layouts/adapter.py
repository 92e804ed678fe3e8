"""What every checkpoint adapter hands to the compiler, and what it gets back."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidInputError
from .basis import Basis, BSpline


class UnsupportedLayerError(InvalidInputError, NotImplementedError):
    """sharekan can compress, store and decompress this layer, but its evaluator (Rust
    LUTHAM, the PyTorch op and the C++ kernel) does not implement the layer's basis or
    semantics yet. Use `decompress()` and the source library to run it."""


#: Activations of the base branch sharekan knows by name (applied to the raw layer input).
BASE_ACTIVATIONS = ("silu", "gelu", "identity")


@dataclass(frozen=True)
class Semantics:
    """What a layer computes besides sum_i phi_e(x_i) (+ base branch), for the evaluator.

    Attributes:
        base_activation: activation of the base branch on the raw input ("silu", "gelu",
            "identity"), or None when the layer has no base branch.
        input_norm: "layernorm" when the spline branch sees LayerNorm(x) (FastKAN); the
            norm's tensors are passed through.
        post: operations applied to the layer sum (their tensors passed through), e.g.
            ("layernorm",) for TorchKAN (evaluated after the op, see `evaluator_support`),
            ("node_affine",) for pykan with non-identity node scales,
            ("instance_norm", "prelu") for KANConv (not evaluated).
        conv: geometry of a convolution layer (ndim, kernel, groups, channels), or None.
        base_bias: the base branch adds a per-output bias (FastKAN's base_linear.bias;
            passed through; added outside the op by the evaluator).
    """

    base_activation: str | None = "silu"
    input_norm: str | None = None
    post: tuple[str, ...] = ()
    conv: Mapping[str, Any] | None = None
    base_bias: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_activation": self.base_activation,
            "input_norm": self.input_norm,
            "post": list(self.post),
            "conv": dict(self.conv) if self.conv is not None else None,
            "base_bias": self.base_bias,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Semantics:
        if not d:
            return cls()
        return cls(
            base_activation=d.get("base_activation", "silu"),
            input_norm=d.get("input_norm"),
            post=tuple(d.get("post", ())),
            conv=d.get("conv"),
            base_bias=bool(d.get("base_bias", False)),
        )


#: Basis kinds the LUTHAM evaluator runs (the `basis` argument of ARCHITECTURE.md §4).
LUTHAM_BASIS = {"bspline": 0, "rbf": 1, "chebyshev": 2}
#: Base-branch activations the LUTHAM evaluator runs (the `base_act` argument).
LUTHAM_BASE_ACT = {"silu": 0, "gelu": 1}


#: Layer extras the evaluator needs for a LayerNorm (input norm of FastKAN, post-sum norm
#: of TorchKAN) and for a base-branch bias (FastKAN); copies of passed-through tensors
#: stored with the layer (`{layer}.extra_{name}` in the artifact).
NORM_EXTRAS = ("norm_weight", "norm_bias")
BASE_BIAS_EXTRA = "base_bias"


def evaluator_support(
    basis: Basis, semantics: Semantics, has_base: bool,
    extras: Collection[str] = (), info: Mapping[str, Any] | None = None,
) -> str | None:
    """None when sharekan's evaluator computes this layer exactly, else the reason it cannot.

    The LUTHAM op (ARCHITECTURE.md §4) computes B-spline, RBF or Chebyshev(tanh) edges plus
    a SiLU or exact-GELU base branch on the same inputs, per-output scales and one output
    bias. Around it, `CompressedLayer.forward` / `LuthamKANLayer` add: an input LayerNorm
    (FastKAN: the op runs on LayerNorm(x) without its base branch; the base branch
    act(x) @ base + base bias is computed outside the op on the raw x) and a LayerNorm
    after the sum (TorchKAN). Those need the norm's weight and bias (`extras` names
    `norm_weight`, `norm_bias`, unless `info["norm_affine"]` is False) and the base bias
    (`base_bias`) stored with the layer; `info["layernorm_eps"]` is the norm's epsilon."""
    info = info or {}
    extras = set(extras)
    split = semantics.input_norm == "layernorm"
    reasons = []
    if basis.kind not in LUTHAM_BASIS:
        reasons.append(f"basis {basis.describe()} (the evaluator implements "
                       f"{', '.join(LUTHAM_BASIS)})")
    base_acts = BASE_ACTIVATIONS if split else tuple(LUTHAM_BASE_ACT)
    if has_base and semantics.base_activation not in base_acts:
        reasons.append(f"base activation {semantics.base_activation!r} (the evaluator applies "
                       f"{' or '.join(base_acts)})")
    norm_missing = [n for n in NORM_EXTRAS if n not in extras]
    if info.get("norm_affine", True) is False:
        norm_missing = []
    if semantics.input_norm and not split:
        reasons.append(f"{semantics.input_norm} on the spline input (the evaluator implements "
                       "layernorm)")
    elif split and norm_missing:
        reasons.append("layernorm on the spline input, but its "
                       + " and ".join(norm_missing) + " are not stored with the layer "
                       "(an artifact from before sharekan evaluated it: recompress)")
    post = list(semantics.post)
    if post == ["layernorm"]:
        if split:
            reasons.append("a post-sum layernorm together with an input layernorm")
        elif norm_missing:
            reasons.append("post-sum layernorm, but its " + " and ".join(norm_missing)
                           + " are not stored with the layer (an artifact from before sharekan "
                           "evaluated it: recompress)")
    elif post:
        reasons.append("post-sum operations " + ", ".join(post))
    if semantics.conv is not None:
        reasons.append("convolution layer")
    if semantics.base_bias:
        if not split:
            reasons.append("base-branch bias without an input layernorm")
        elif BASE_BIAS_EXTRA not in extras:
            reasons.append("base-branch bias not stored with the layer (an artifact from "
                           "before sharekan evaluated it: recompress)")
    return "; ".join(reasons) if reasons else None


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
        key, shape = str(d["key"]), d["shape"]
        if not isinstance(shape, Iterable):
            raise TypeError(f"tensor info {key!r}: shape {shape!r} is not a sequence")
        return cls(key, tuple(int(v) for v in shape), str(d["dtype"]))


@dataclass(frozen=True)
class LayerSource:
    """One KAN layer read from a checkpoint, in the compiler's canonical form.

    Attributes:
        name: layer name (the key prefix, e.g. "layers.0").
        coeffs: (n_in, n_out, M) float64 coefficients, per-edge scalers folded in.
        grid: (n_in, W) float64 basis array stored with the layer: B-spline knots
            (W = G + 2k + 1), RBF centres (W = M), or the t-domain [-1, 1] of tanh bases.
        spline_order: k for B-splines, 0 for other bases.
        base_weight: (n_in, n_out) float64 base-branch weights, or None.
        tensors: role -> original tensor info ("spline_weight", "grid", ...).
        basis: the edge basis; None means B-splines of order `spline_order` on `grid`.
        semantics: what else the layer computes (base activation, norms, conv), see
            `Semantics`; decides whether the LUTHAM evaluator can run it.
        extras: small arrays the adapter needs to rebuild the original tensors (stored in
            the artifact as `{layer}.extra_{name}`), e.g. pykan's mask when not all ones.
        info: JSON parameters the adapter needs to rebuild (edge layout, conv shape, ...).
        aux: arrays the compiler needs to evaluate the dense layer (e.g. FastKAN's
            LayerNorm weight and bias); they are passed-through state_dict tensors.
    """

    name: str
    coeffs: np.ndarray
    grid: np.ndarray
    spline_order: int
    base_weight: np.ndarray | None
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    basis: Basis = None  # type: ignore[assignment]  # set in __post_init__ when None
    semantics: Semantics = field(default_factory=Semantics)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.basis is None:
            object.__setattr__(self, "basis", BSpline(self.grid, self.spline_order))

    @classmethod
    def with_basis(
        cls, name: str, coeffs: np.ndarray, basis: Basis, base_weight: np.ndarray | None,
        tensors: dict[str, TensorInfo], **fields: Any,
    ) -> LayerSource:
        """A layer on any basis; `grid` and `spline_order` are taken from the basis."""
        grid = basis.grid_array(int(coeffs.shape[0]))
        return cls(name, coeffs, grid, basis.spline_order, base_weight, tensors, basis=basis,
                   **fields)

    def unsupported_reason(self) -> str | None:
        """Why the LUTHAM evaluator cannot run this layer, or None."""
        return evaluator_support(self.basis, self.semantics, self.base_weight is not None,
                                 self.extras, self.info)

    def basis_inputs(self, x: np.ndarray) -> np.ndarray:
        """The values each input's basis sees, (rows, n_in) float64, from the layer's
        inputs x: (batch, n_in) for dense layers, (batch, C, *spatial) for conv layers."""
        x = np.asarray(x, dtype=np.float64)
        if self.semantics.conv is not None:
            conv = self.semantics.conv
            groups, chans, taps = int(conv["groups"]), int(conv["in_per_group"]), int(conv["taps"])
            if x.ndim < 2 or x.shape[1] != groups * chans:
                raise InvalidInputError(
                    f"layer {self.name!r}: conv inputs must be (batch, {groups * chans}, ...), "
                    f"got {x.shape}"
                )
            flat = np.moveaxis(x, 1, -1).reshape(-1, groups * chans)  # (rows, g*C)
            return np.ascontiguousarray(np.repeat(flat, taps, axis=1))  # rows (g, c, tap)
        if self.semantics.input_norm == "layernorm":
            mean = x.mean(axis=1, keepdims=True)
            var = x.var(axis=1, keepdims=True)
            eps = float(self.info.get("layernorm_eps", 1e-5))
            out = (x - mean) / np.sqrt(var + eps)
            if "ln_weight" in self.aux:
                out = out * self.aux["ln_weight"] + self.aux["ln_bias"]
            return out
        return x

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
        info: Mapping[str, Any],
        extras: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Original tensors of one layer from decoded (n_in, n_out, M) coefficients.

        `info` and `extras` are the layer's `LayerSource.info` / `.extras` as stored, so a
        default-constructed adapter can rebuild any layer it extracted."""
        ...
