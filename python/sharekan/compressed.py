"""Compressed KAN layers and models: the data types, decoding and the forward pass (Rust
LUTHAM evaluator). Their stored form (tensors and metadata of an artifact) is defined in
`sharekan.schema`; the methods here that store or rebuild a layer delegate to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core
from . import schema
from .config import Config
from .dense import base_activation, code_dtype, dequant
from .errors import ArtifactError, ShapeError, ShareKanError
from .layouts import (
    Basis,
    BSpline,
    Semantics,
    TensorInfo,
    UnsupportedLayerError,
    evaluator_support,
    get_layout,
)
from .layouts.adapter import LUTHAM_BASE_ACT, LUTHAM_BASIS
from .report import Report
from .validation import float_array, to_numpy


@dataclass(frozen=True, eq=False)
class ResidualStage:
    """One residual gain-shape stage of a layer (stage 2, 3, ...): it quantizes what the
    stages before it left. Its coefficients of edge (i, o) are
    ``gains[i,o]*gain_scale[o] * codebook[codes[i,o]]``: no bias (every stage's constant
    part is refit into the first stage's bias). An edge the stage leaves out has gain 0
    and code 0. The codebook is the stage's own (one per layer and stage)."""

    codebook_size: int
    bits: int
    codebook: np.ndarray  # (K, M) float32 as evaluated (int8-rounded when codebook_q is set)
    codebook_q: np.ndarray | None
    codebook_scale: np.ndarray | None
    codes: np.ndarray  # (n_in, n_out)
    gains: np.ndarray  # (n_in, n_out) int8 (with gain_scale) or float32
    gain_scale: np.ndarray  # (n_out,) float32

    def coeffs(self) -> np.ndarray:
        """(n_in, n_out, M) float64 coefficients this stage adds."""
        gains = dequant(self.gains, self.gain_scale)
        assert gains is not None
        return gains[..., None] * self.codebook.astype(np.float64)[self.codes]

    def active(self) -> np.ndarray:
        """(n_in, n_out) bool: the edges this stage codes (non-zero gain)."""
        return np.asarray(self.gains != 0)


@dataclass(frozen=True, eq=False)
class CompressedLayer:
    """One compressed KAN layer. Per-edge arrays are input-major (n_in, n_out).

    Decoded coefficients of edge (i, o):
    ``gains[i,o]*gain_scale[o] * codebook[codes[i,o]] + bias[i,o] * 1`` where the bias is
    ``edge_bias[i,o]*edge_bias_scale[o]`` (per-edge mode) or ``out_bias[o] / n_in`` spread
    over the inputs (folded mode: exact while inputs stay inside the grid), plus what each
    residual stage in `stages` adds (`ResidualStage`). An edge with gain 0 in a stage is
    not coded by it (code 0): a byte budget leaves low-energy edges out of later stages,
    or out of every stage.
    """

    name: str
    n_in: int
    n_out: int
    grid_size: int
    spline_order: int
    codebook_size: int
    bits: int
    codebook_group: str
    grid: np.ndarray
    codebook: np.ndarray
    codebook_q: np.ndarray | None
    codebook_scale: np.ndarray | None
    codes: np.ndarray
    gains: np.ndarray
    gain_scale: np.ndarray
    edge_bias: np.ndarray | None
    edge_bias_scale: np.ndarray | None
    out_bias: np.ndarray | None
    base_weight: np.ndarray | None
    base_scale: np.ndarray | None
    source: Mapping[str, TensorInfo] = field(default_factory=dict)
    #: The edge basis (None: B-splines of order `spline_order` on `grid`).
    basis: Basis | None = None
    #: What else the layer computes (base activation, norms, conv), see `Semantics`.
    semantics: Semantics = field(default_factory=Semantics)
    #: JSON parameters the source adapter needs to rebuild the original tensors.
    layout_info: Mapping[str, Any] = field(default_factory=dict)
    #: Small arrays the source adapter needs to rebuild (stored as `extra_{name}`).
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: Residual gain-shape stages after the first (empty: single-stage).
    stages: tuple[ResidualStage, ...] = ()

    def __post_init__(self) -> None:
        if self.basis is None:
            object.__setattr__(self, "basis", BSpline(self.grid, self.spline_order))

    @property
    def n_coeffs(self) -> int:
        return int(self.codebook.shape[1])

    def unsupported_reason(self) -> str | None:
        """Why the LUTHAM evaluator cannot run this layer exactly, or None when it can."""
        assert self.basis is not None
        return evaluator_support(self.basis, self.semantics, self.base_weight is not None,
                                 self.extras, self.layout_info)

    def check_evaluator_support(self) -> None:
        """Raise UnsupportedLayerError (an InvalidInputError) naming the layer and the
        parts the evaluator does not implement; never approximate silently."""
        reason = self.unsupported_reason()
        if reason is not None:
            raise UnsupportedLayerError(
                f"layer {self.name!r}: sharekan's LUTHAM evaluator "
                f"cannot run it exactly: {reason}. The layer is compressed, saved and "
                "decompressed exactly as stored; run `decompress()` in the source library."
            )

    @property
    def bias_mode(self) -> str:
        return "edge" if self.edge_bias is not None else "fold"

    def edge_gains(self) -> np.ndarray:
        """(n_in, n_out) float64 gains."""
        out = dequant(self.gains, self.gain_scale)
        assert out is not None
        return out

    def edge_biases(self) -> np.ndarray:
        """(n_in, n_out) float64 coefficient-space biases (folded ones spread over inputs)."""
        if self.edge_bias is not None:
            out = dequant(self.edge_bias, self.edge_bias_scale)
            assert out is not None
            return out
        assert self.out_bias is not None
        return np.broadcast_to(
            self.out_bias.astype(np.float64) / self.n_in, (self.n_in, self.n_out)
        ).copy()

    def base_weights(self) -> np.ndarray | None:
        """(n_in, n_out) float64 base-branch weights, or None."""
        return dequant(self.base_weight, self.base_scale)

    def decoded_coeffs(self) -> np.ndarray:
        """(n_in, n_out, M) float64 decoded spline coefficients."""
        shapes = self.codebook.astype(np.float64)[self.codes]  # (n_in, n_out, M)
        out = self.edge_gains()[..., None] * shapes + self.edge_biases()[..., None]
        for stage in self.stages:
            out += stage.coeffs()
        return out

    def stage_inputs(self) -> list[dict[str, Any]]:
        """`lutham_inputs()` of each residual stage: the same basis and grid with the
        stage's codebook, codes and gains, and no bias or base branch. A layer's spline
        part is the sum of `lutham(x, **lutham_inputs())` and `lutham(x, **s)` for every
        `s` here: one projection table per stage."""
        return self._stage_inputs(self.lutham_inputs())

    def _stage_inputs(self, first: Mapping[str, Any]) -> list[dict[str, Any]]:
        """`stage_inputs()` from the first stage's `lutham_inputs()`."""
        none = dict.fromkeys(("edge_bias", "edge_bias_scale", "out_bias", "base_weight",
                              "base_scale"))
        return [
            {**first, **none, "codebook": stage.codebook,
             "codes": stage.codes.astype(code_dtype(stage.codebook_size)),
             "gains": stage.gains, "gain_scale": stage.gain_scale}
            for stage in self.stages
        ]

    def _spline(self, u: np.ndarray) -> np.ndarray:
        """Every stage of the LUTHAM op on u (batch, n_in) f32, summed in stage order."""
        first = self.lutham_inputs()
        y = _core.lutham_forward(u, **first)
        for inputs in self._stage_inputs(first):
            y = y + _core.lutham_forward(u, **inputs)
        return np.asarray(y, dtype=np.float32)

    def lutham_inputs(self) -> dict[str, Any]:
        """Keyword arguments of `sharekan._core.lutham_forward` (all but `x`).

        B-splines: `grid` is (1, G + 2k + 1) when every input has the same knots, else
        (n_in, G + 2k + 1). RBF (`basis=1`, width `h`): `grid` holds the centres, (1, M)
        when shared, else (n_in, M). Chebyshev (`basis=2`): `grid` is zeros (1, 2) (not
        read). `base_act` is 0 (SiLU) or 1 (exact GELU). For a layer with an input
        LayerNorm (FastKAN, `split_base`) these are the op's inputs on u = LayerNorm(x)
        without the base branch; `forward` adds the rest (see `evaluator_support`).

        Raises:
            UnsupportedLayerError: the evaluator does not implement this layer's basis or
                semantics (see `unsupported_reason`)."""
        self.check_evaluator_support()
        assert self.basis is not None
        kind = LUTHAM_BASIS[self.basis.kind]
        h = 1.0
        if kind == 2:
            grid = np.zeros((1, 2), dtype=np.float32)
        else:
            grid = np.ascontiguousarray(self.grid, dtype=np.float32)
            if grid.shape[0] > 1 and bool((grid == grid[:1]).all()):
                # the same knots / centres for every input (efficient-kan's default grid,
                # FastKAN's shared centres): pass the row once; every LUTHAM
                # implementation accepts it
                grid = np.ascontiguousarray(grid[:1])
            if kind == 1:
                h = float(np.float32(self.basis.h))  # type: ignore[attr-defined]
        act = self.semantics.base_activation if self.base_weight is not None else None
        base_weight, base_scale = self.base_weight, self.base_scale
        if self.split_base:  # FastKAN: the op sees LayerNorm(x); the base branch is outside
            base_weight = base_scale = act = None
        return {
            "grid": grid,
            "k": self.spline_order if kind == 0 else 0,
            "codebook": self.codebook,
            "codes": self.codes.astype(code_dtype(self.codebook_size)),
            "gains": self.gains,
            "gain_scale": self.gain_scale,
            "edge_bias": self.edge_bias,
            "edge_bias_scale": self.edge_bias_scale,
            "out_bias": self.out_bias,
            "base_weight": base_weight,
            "base_scale": base_scale,
            "basis": kind,
            "h": h,
            "base_act": LUTHAM_BASE_ACT.get(act or "silu", 0),
        }

    @property
    def split_base(self) -> bool:
        """True when the op runs on LayerNorm(x) and the base branch is computed outside it
        (FastKAN: act(x) @ base + base bias on the raw x)."""
        return self.semantics.input_norm == "layernorm"

    def _norm(self, x: np.ndarray) -> np.ndarray:
        """LayerNorm over the last axis with the layer's stored weight/bias/eps, in float32
        (as torch computes it)."""
        eps = np.float32(self.layout_info.get("layernorm_eps", 1e-5))
        mean = x.mean(axis=-1, keepdims=True, dtype=np.float32)
        var = np.square(x - mean).mean(axis=-1, keepdims=True, dtype=np.float32)
        out = (x - mean) / np.sqrt(var + eps)
        if "norm_weight" in self.extras:
            out = out * self.extras["norm_weight"].astype(np.float32) + self.extras[
                "norm_bias"].astype(np.float32)
        return out.astype(np.float32)

    def forward(self, x: Any) -> np.ndarray:
        """Evaluate the layer on x (batch, n_in) with the Rust LUTHAM evaluator -> (batch, n_out) f32.

        FastKAN (`split_base`): LUTHAM(LayerNorm(x)) + act(x) @ base + base bias, the base
        weights dequantised with their per-output scales; TorchKAN (post "layernorm"):
        LayerNorm(LUTHAM(x)). Both norms use the stored `norm_weight` / `norm_bias` extras
        and `layout_info["layernorm_eps"]`."""
        arr = float_array(to_numpy(x, "x"), "x", dtype=np.float32, finite=False)
        if arr.ndim != 2 or arr.shape[1] != self.n_in:
            raise ShapeError(f"x: expected shape (batch, {self.n_in}), got {arr.shape}")
        if not self.split_base:
            y = self._spline(arr)
        else:
            y = self._spline(np.ascontiguousarray(self._norm(arr)))
            base = self.base_weights()
            if base is not None:
                act = base_activation(self.semantics.base_activation, arr.astype(np.float64))
                y = (y + act @ base).astype(np.float32)
            if "base_bias" in self.extras:
                y = (y + self.extras["base_bias"].astype(np.float32)).astype(np.float32)
        if self.semantics.post == ("layernorm",):
            y = self._norm(np.asarray(y, dtype=np.float32))
        return np.asarray(y, dtype=np.float32)

    def stored_tensors(self) -> dict[str, np.ndarray]:
        """Tensors this layer stores (field name -> array), codes packed; codebook excluded
        (`schema.layer_tensors`)."""
        return schema.layer_tensors(self)

    def stored_codebook(self) -> dict[str, np.ndarray]:
        """The codebook tensors of this layer's group (field name -> array)."""
        return schema.layer_codebook(self)

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable parameters needed to rebuild the layer from stored tensors."""
        return schema.layer_metadata(self)

    @classmethod
    def from_stored(
        cls,
        meta: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray],
        codebook: Mapping[str, np.ndarray],
    ) -> CompressedLayer:
        """Inverse of `stored_tensors` + `stored_codebook` + `metadata`."""
        fields = schema.layer_fields(meta, tensors, codebook)
        fields["stages"] = tuple(ResidualStage(**stage) for stage in fields["stages"])
        return cls(**fields)


@dataclass(eq=False)
class CompressedModel:
    """The result of `sharekan.compress`: compressed layers plus passed-through tensors.

    Attributes:
        layers: layer name -> CompressedLayer, in forward order.
        passthrough: original key -> array for tensors stored unchanged.
        source_layout: the adapter that read the checkpoint (e.g. "efficient-kan").
        config: the Config used.
        report: per-layer and total figures (see `Report`).
        key_order: original state_dict keys, in order (decompress restores it).
    """

    layers: dict[str, CompressedLayer]
    passthrough: dict[str, np.ndarray]
    source_layout: str
    config: Config
    report: Report
    key_order: list[str]

    def __iter__(self) -> Iterator[CompressedLayer]:
        return iter(self.layers.values())

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor (codebooks counted once per group), no metadata."""
        return sum(int(a.nbytes) for a in self.stored_tensors().values())

    def stored_tensors(self) -> dict[str, np.ndarray]:
        """Every tensor of the artifact by its artifact name (`schema.model_tensors`)."""
        return schema.model_tensors(self)

    def forward(self, x: Any) -> np.ndarray:
        """Run every layer in order with the Rust LUTHAM evaluator: (batch, n_in) -> (batch, n_out) f32.

        Raises:
            UnsupportedLayerError: a layer's basis or semantics is not implemented by the
                evaluator, or the model stores tensors sharekan refused (their meaning is
                not in the state_dict, e.g. pykan's active symbolic functions).
        """
        for layer in self.layers.values():
            layer.check_evaluator_support()
        refused = [t.key for t in self.report.tensors if t.status == "refused"]
        if refused:
            raise UnsupportedLayerError(
                f"the model has tensors sharekan refused ({', '.join(refused[:4])}"
                f"{' ...' if len(refused) > 4 else ''}); see the report for the reasons"
            )
        out = x
        for layer in self.layers.values():
            out = layer.forward(out)
        return np.asarray(out)

    def decompress(self) -> dict[str, np.ndarray]:
        """A state_dict with the original keys, shapes and dtypes (decoded coefficients).

        Per-edge scalers come back as ones (they are folded into the coefficients); the
        forward pass of the rebuilt model equals the compressed model's.
        """
        layout = get_layout(self.source_layout)
        tensors: dict[str, np.ndarray] = dict(self.passthrough)
        for layer in self.layers.values():
            try:
                rebuilt = layout.rebuild(
                    layer.source,
                    layer.decoded_coeffs(),
                    layer.base_weights(),
                    layer.grid,
                    layer.layout_info,
                    layer.extras,
                )
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                if isinstance(exc, ShareKanError):
                    raise
                raise ArtifactError(
                    f"layer {layer.name!r}: its stored description does not match its "
                    f"tensors ({exc!r})") from None
            for info in layer.source.values():
                got = rebuilt.get(info.key)
                if got is not None and (got.shape != tuple(info.shape) or str(got.dtype) != info.dtype):
                    raise ArtifactError(
                        f"layer {layer.name!r}: {info.key!r} rebuilds as {got.dtype} "
                        f"{got.shape}, but the source is described as {info.dtype} "
                        f"{tuple(info.shape)}")
            tensors.update(rebuilt)
        missing = [key for key in self.key_order if key not in tensors]
        if missing:
            raise ArtifactError(f"key_order names keys nothing rebuilds: {missing[:4]}")
        return {key: tensors[key] for key in self.key_order}

    def save(self, path: str, *, entropy: str | None = None) -> None:
        """Write a safetensors artifact (see `sharekan.load`); `entropy="zstd"` codes its
        tensors (format version 3, decoded at load; the runtime form is unchanged)."""
        schema.save(self, path, entropy=entropy)

    def replace_report(self, report: Report) -> CompressedModel:
        return dataclasses.replace(self, report=report)
