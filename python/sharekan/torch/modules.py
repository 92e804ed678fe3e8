"""Compressed KAN modules for PyTorch: `LuthamLinear`, `LuthamKANLayer`, `compress_`,
save / reload (`load_compressed_` rebuilds both kinds from a saved state_dict).

`LuthamLinear` is the compressed stand-in of one efficient-kan `KANLinear`: it holds the
compressed layer (ARCHITECTURE.md §7) as buffers and computes its forward pass with the
`sharekan::lutham` operator (eager on CPU: the Rust evaluator; on CUDA: the Triton kernel
or the portable torch path; on any other device: the portable path, see `ops.resolve_impl`;
exported: the C++ ExecuTorch kernel). The modules run on whatever device their buffers are
on (`model.to("cuda")`); `compress_` and `load_compressed_` put the new layers on the
device of the layers they replace. The full quantizer round trip:

>>> import torch, sharekan.torch as skt
>>> model = skt.KAN([64, 32, 10], grid_size=10)               # a trained KAN  # doctest: +SKIP
>>> skt.compress_(model, codebook_size=64)                       # in place      # doctest: +SKIP
>>> y = model(x)                                                  # runs LUTHAM   # doctest: +SKIP
>>> torch.save(model.state_dict(), "kan.pt")                     # still compressed
>>> fresh = skt.KAN([64, 32, 10], grid_size=10)                              # doctest: +SKIP
>>> skt.load_compressed_(fresh, torch.load("kan.pt"))            # swaps + loads # doctest: +SKIP
>>> sharekan.export_pte(fresh, (x,), "kan.pte")                  # ExecuTorch    # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compiler import compress
from ..config import Config
from ..errors import InvalidInputError, LayoutError, ShapeError
from ..layouts import UnsupportedLayerError
from . import ops
from .kan import KANLinear

__all__ = ["LuthamKANLayer", "LuthamLinear", "collect_calibration", "compress_", "is_kan_linear", "kan_layer_kind",
           "load_compressed_", "lutham_layers"]

# Buffer names, in the operator's argument order.
BUFFERS = ("grid", "codebook", "codes", "gains", "gain_scale", "edge_bias",
           "edge_bias_scale", "out_bias", "base_weight", "base_scale")
_OPTIONAL = ("gain_scale", "edge_bias", "edge_bias_scale", "out_bias", "base_weight",
             "base_scale")
# LuthamKANLayer's own buffers (besides `kan_params`); the op's are under `lutham.`.
KAN_BUFFERS = ("norm_weight", "norm_bias", "base_weight", "base_scale", "base_bias")
# Base-branch activations of a LuthamKANLayer, indexed by kan_params[3].
KAN_ACTIVATIONS = (None, "silu", "gelu", "identity")


def _tensor(value: Any) -> torch.Tensor:
    if value is None:
        return ops.absent()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().clone()
    arr = np.ascontiguousarray(value)
    if arr.dtype == np.uint32:  # torch has no uint32 arithmetic; codes are < 2^31
        arr = arr.astype(np.int64)
    return torch.from_numpy(arr.copy())


def _code_dtype(codebook_size: int) -> torch.dtype:
    if codebook_size <= 256:
        return torch.uint8
    if codebook_size <= 32768:
        return torch.int16
    return torch.int32


def _module_inputs(inputs: Mapping[str, Any], codebook_size: int) -> tuple[dict[str, Any], int]:
    """(LuthamLinear tensors, k) from `lutham_inputs()` / a `stage_inputs()` entry: k is
    taken out (the module infers it from the grid and codebook widths; 0 unless B-splines)
    and codes narrowed to the smallest integer dtype torch computes with."""
    tensors = dict(inputs)
    k = int(tensors.pop("k"))
    if int(tensors.get("basis", 0)) != 0:
        k = 0
    codes = np.asarray(tensors["codes"])
    if codes.dtype not in (np.uint8, np.int16, np.int32):  # e.g. u32 from the core
        narrow = {torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32}
        tensors["codes"] = codes.astype(narrow[_code_dtype(codebook_size)])
    return tensors, k


def _stage_count(state_dict: Mapping[str, Any], prefix: str) -> int:
    """Residual stages saved under `{prefix}stages.<i>.` (1 + the highest index, so a gap
    is reported as that stage's missing buffers)."""
    pattern = re.compile(re.escape(prefix) + r"stages\.(\d+)\.")
    found = [int(m.group(1)) for m in map(pattern.match, state_dict) if m]
    return max(found, default=-1) + 1


def _refresh_after_load(module: LuthamLinear | LuthamKANLayer, _incompatible: Any) -> None:
    # After the children loaded: a layer's sizes come from (and are checked against) them.
    module._refresh()


class LuthamLinear(nn.Module):
    """One compressed KAN layer evaluated by codebook lookup (`sharekan::lutham`).

    Buffers (input-major, ARCHITECTURE.md §4): `grid` f32 (n_in, G+2k+1), or (1, G+2k+1)
    when every input has the same knots (as `from_compressed` builds it for efficient-kan's
    default grid, so the state_dict and the .pte store the row once), `codebook` f32
    (K, M) (dequantised), `codes` u8/i16/i32 (n_in, n_out), `gains` i8/f32 (n_in, n_out),
    `gain_scale` f32 (n_out,), `edge_bias` i8/f32 (n_in, n_out), `edge_bias_scale`,
    `out_bias`, `base_weight` i8/f32 (n_in, n_out), `base_scale`. An absent optional buffer
    is an empty (0,) float32 tensor, so the state_dict always has the same keys and loads
    into any LuthamLinear (buffers take the shapes and dtypes of the loaded tensors).
    `basis_params` f32 (3,) = (basis, h, base_act) of ARCHITECTURE.md §4: (0, 1, 0) for
    B-splines + SiLU; (1, h, *) RBF centres in `grid` (n_in or 1, M); (2, 1, *) Chebyshev of
    tanh x (`grid` (1, 2), not read); base_act 1 = exact GELU. A state_dict without it loads
    as B-splines + SiLU.

    Residual stages (`sharekan.compress(..., stages=S)`, S > 1): a child `stages`
    (`nn.ModuleList` of S - 1 LuthamLinear with the same basis and grid, their own codebook,
    codes and gains, no bias or base branch: `CompressedLayer.stage_inputs()`); a layer with
    one stage has no such child, so its state_dict keys are those above. Loading a
    state_dict takes the number of stages from its `{prefix}stages.<i>.` keys.

    forward: x (..., n_in) -> (..., n_out) float32: the op on the first stage, plus the op
    on each residual stage in order (float32 sums, as `CompressedLayer.forward`).
    """

    # Registered buffers (declared for type checkers; nn.Module.__getattr__ serves them).
    grid: torch.Tensor
    codebook: torch.Tensor
    codes: torch.Tensor
    gains: torch.Tensor
    gain_scale: torch.Tensor
    edge_bias: torch.Tensor
    edge_bias_scale: torch.Tensor
    out_bias: torch.Tensor
    base_weight: torch.Tensor
    base_scale: torch.Tensor
    basis_params: torch.Tensor
    layer_name: str

    def __init__(self, tensors: Mapping[str, Any],
                 stages: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__()
        for name in BUFFERS:
            self.register_buffer(name, _tensor(tensors.get(name)))
        params = [float(tensors.get("basis", 0)), float(tensors.get("h", 1.0)),
                  float(tensors.get("base_act", 0))]
        self.register_buffer("basis_params", torch.tensor(params, dtype=torch.float32))
        self._set_stages([LuthamLinear(stage) for stage in stages])
        self._refresh()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_compressed(cls, layer: Any) -> LuthamLinear:
        """Build from a `sharekan.CompressedLayer` (uses `layer.lutham_inputs()` and, for
        its residual stages, `layer.stage_inputs()`)."""
        inputs, k = _module_inputs(layer.lutham_inputs(), int(layer.codebook_size))
        stages = [_module_inputs(s, int(stage.codebook_size))[0]
                  for s, stage in zip(layer.stage_inputs(), layer.stages)]
        mod = cls(inputs, stages)
        if mod.spline_order != k:
            raise ShapeError(
                f"layer {getattr(layer, 'name', '?')!r}: grid width {mod.grid.shape[1]} and "
                f"codebook width {mod.codebook.shape[1]} imply k={mod.spline_order}, "
                f"the layer says k={k}"
            )
        mod.layer_name = str(getattr(layer, "name", ""))
        return mod

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], prefix: str = ""
                        ) -> LuthamLinear:
        """Build from the buffers `{prefix}{name}` of a saved state_dict, and those of
        its residual stages `{prefix}stages.<i>.{name}`."""
        stages = [cls._saved_tensors(state_dict, f"{prefix}stages.{i}.")
                  for i in range(_stage_count(state_dict, prefix))]
        return cls(cls._saved_tensors(state_dict, prefix), stages)

    @staticmethod
    def _saved_tensors(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, Any]:
        """The constructor's `tensors` from one op's buffers `{prefix}{name}`."""
        missing = [prefix + n for n in BUFFERS if prefix + n not in state_dict]
        if missing:
            raise LayoutError(f"state_dict lacks LuthamLinear buffers: {missing}")
        tensors: dict[str, Any] = {n: state_dict[prefix + n] for n in BUFFERS}
        if prefix + "basis_params" in state_dict:
            b, h, a = (float(v) for v in state_dict[prefix + "basis_params"])
            tensors.update(basis=int(b), h=h, base_act=int(a))
        return tensors

    # ---- residual stages ---------------------------------------------------------------
    def _residuals(self) -> list[LuthamLinear]:
        """The residual stages' modules, in order (none for a single-stage layer)."""
        return list(getattr(self, "stages", ()))

    def _set_stages(self, modules: list[LuthamLinear]) -> None:
        # No child at all for one stage: the module (repr, graph, keys) is as before stages.
        if modules:
            self.stages = nn.ModuleList(modules)
        elif "stages" in self._modules:
            del self.stages

    # ---- properties -------------------------------------------------------------------------
    def _refresh(self) -> None:
        for name in ("grid", "codebook", "codes", "gains"):
            if getattr(self, name).dim() != 2:
                raise ShapeError(
                    f"LuthamLinear.{name}: expected a 2-D tensor, got shape "
                    f"{tuple(getattr(self, name).shape)}"
                )
        self.in_features = int(self.codes.shape[0])
        self.out_features = int(self.codes.shape[1])
        self.codebook_size = int(self.codebook.shape[0])
        n_coeffs = int(self.codebook.shape[1])
        params = self.basis_params.tolist()
        if len(params) != 3 or int(params[0]) not in (0, 1, 2) or int(params[2]) not in (0, 1):
            raise ShapeError(
                f"LuthamLinear.basis_params: expected (basis in 0..2, h, base_act in 0..1), "
                f"got {params}"
            )
        self.basis, self.h, self.base_act = int(params[0]), float(params[1]), int(params[2])
        if self.basis != 0:
            self.spline_order, self.grid_size = 0, n_coeffs
        else:
            self.spline_order = int(self.grid.shape[1]) - n_coeffs - 1
            self.grid_size = n_coeffs - self.spline_order
            if self.spline_order < 0 or self.grid_size < 1:
                raise ShapeError(
                    f"LuthamLinear: grid width {self.grid.shape[1]} does not fit codebook "
                    f"width {n_coeffs} (need grid width = M + k + 1 with G = M - k >= 1)"
                )
        # a residual stage adds to this layer's output: same sizes and the same basis
        want = (self.in_features, self.out_features, self.basis, self.spline_order,
                self.grid_size)
        for i, stage in enumerate(self._residuals()):
            got = (stage.in_features, stage.out_features, stage.basis, stage.spline_order,
                   stage.grid_size)
            if got != want:
                raise ShapeError(
                    f"LuthamLinear.stages.{i}: (in_features, out_features, basis, "
                    f"spline_order, grid_size) = {got}, the layer's are {want}"
                )

    def extra_repr(self) -> str:
        kind = ("bspline", "rbf", "chebyshev")[self.basis]
        return (f"basis={kind}, in_features={self.in_features}, out_features={self.out_features}, "
                f"grid_size={self.grid_size}, spline_order={self.spline_order}, "
                f"codebook_size={self.codebook_size}, codes={self.codes.dtype}, "
                f"gains={self.gains.dtype}"
                + (f", stages={1 + len(self._residuals())}" if self._residuals() else ""))

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers, the residual stages' included (codes at their in-memory
        width, not bit-packed)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Buffers take the shape and dtype of what is loaded (a layer of another size, an
        # absent optional tensor becoming present, int8 vs float gains).
        if prefix + "basis_params" not in state_dict:  # saved before basis_params existed
            state_dict[prefix + "basis_params"] = torch.tensor([0.0, 1.0, 0.0])
        for name in BUFFERS:
            key = prefix + name
            if key in state_dict:
                src = state_dict[key]
                cur = getattr(self, name)
                if src.shape != cur.shape or src.dtype != cur.dtype:
                    # on the module's device: a layer moved with .to(device) stays there
                    setattr(self, name, torch.empty(src.shape, dtype=src.dtype, device=cur.device))
        # As many residual stages as were saved: new ones are built from their buffers (and
        # then loaded again as children); the sizes are checked in the post hook.
        count = _stage_count(state_dict, prefix)
        kept = self._residuals()[:count]
        added = [LuthamLinear.from_state_dict(state_dict, f"{prefix}stages.{i}.")
                 .to(self.codes.device) for i in range(len(kept), count)]
        self._set_stages(kept + added)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    # ---- forward ----------------------------------------------------------------------------
    def _op(self, x2: torch.Tensor) -> torch.Tensor:
        """This stage's op on x2 (batch, n_in) float32 -> (batch, n_out)."""
        return torch.ops.sharekan.lutham(
            x2, self.grid, self.codebook, self.codes, self.gains, self.gain_scale,
            self.edge_bias, self.edge_bias_scale, self.out_bias, self.base_weight,
            self.base_scale, self.spline_order, self.basis, self.h, self.base_act,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        y = self._op(x2)
        for stage in self._residuals():  # unrolled by torch.export: one op call per stage
            y = y + stage._op(x2)
        return y.reshape(*lead, self.out_features)


class LuthamKANLayer(nn.Module):
    """A compressed layer whose LUTHAM op is wrapped by parts computed around it.

    FastKAN (`split`): y = lutham(LayerNorm(x)) + act(x) @ (base_weight * base_scale) +
    base_bias, the op without its base branch; TorchKAN (`post_norm`):
    y = LayerNorm(lutham(x)). Buffers: `norm_weight`, `norm_bias` f32 (n,) (the LayerNorm's;
    empty when it has no affine), `base_weight` i8/f32 (n_in, n_out), `base_scale` f32
    (n_out,) (ones for float weights), `base_bias` f32 (n_out,) (empty when absent),
    `kan_params` f64 (4,) = (split, post_norm, eps, activation index in `KAN_ACTIVATIONS`),
    so a saved state_dict rebuilds the layer (`from_state_dict`, `load_compressed_`); f64
    keeps the epsilon bit-exact. The op's buffers are in the `lutham` submodule
    (`LuthamLinear`). Exportable with `sharekan.export_pte` (LayerNorm, matmul and SiLU/GELU
    are standard ExecuTorch ops).

    forward: x (..., n_in) -> (..., n_out) float32.
    """

    # Registered buffers (declared for type checkers; nn.Module.__getattr__ serves them).
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    base_weight: torch.Tensor
    base_scale: torch.Tensor
    base_bias: torch.Tensor
    kan_params: torch.Tensor
    layer_name: str

    def __init__(self, lutham: LuthamLinear, *, split: bool, post_norm: bool, eps: float,
                 activation: str | None, tensors: Mapping[str, Any]) -> None:
        super().__init__()
        if activation not in KAN_ACTIVATIONS:
            raise InvalidInputError(f"LuthamKANLayer: activation={activation!r}; expected one "
                                    f"of {list(KAN_ACTIVATIONS)}")
        self.lutham = lutham
        for name in KAN_BUFFERS:
            self.register_buffer(name, _tensor(tensors.get(name)))
        params = [float(bool(split)), float(bool(post_norm)), float(eps),
                  float(KAN_ACTIVATIONS.index(activation))]
        self.register_buffer("kan_params", torch.tensor(params, dtype=torch.float64))
        self._refresh()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], prefix: str = ""
                        ) -> LuthamKANLayer:
        """Build from the buffers `{prefix}{name}` and `{prefix}lutham.{name}` of a saved
        state_dict (one written by a LuthamKANLayer, so `kan_params` is in it).

        Raises:
            LayoutError: a buffer is missing. ShapeError: a buffer's shape does not fit the
            layer (see `__init__`'s buffer list).
        """
        missing = [prefix + n for n in (*KAN_BUFFERS, "kan_params") if prefix + n not in state_dict]
        if missing:
            raise LayoutError(f"state_dict lacks LuthamKANLayer buffers: {missing}")
        params = state_dict[prefix + "kan_params"]
        if tuple(params.shape) != (4,):
            raise ShapeError(f"{prefix}kan_params: expected shape (4,) = (split, post_norm, eps, "
                             f"activation), got {tuple(params.shape)}")
        split, post, eps, act = (float(v) for v in params.to(torch.float64))
        if int(act) != act or not 0 <= int(act) < len(KAN_ACTIVATIONS):
            raise LayoutError(f"{prefix}kan_params: activation index {act} is not one of "
                              f"0..{len(KAN_ACTIVATIONS) - 1} {list(KAN_ACTIVATIONS)}")
        inner = LuthamLinear.from_state_dict(state_dict, prefix + "lutham.")
        return cls(inner, split=bool(split), post_norm=bool(post), eps=eps,
                   activation=KAN_ACTIVATIONS[int(act)],
                   tensors={n: state_dict[prefix + n] for n in KAN_BUFFERS})

    def _refresh(self) -> None:
        split, post, eps, act = self.kan_params.tolist()
        self.split, self.post_norm, self.eps = bool(split), bool(post), float(eps)
        self.activation = KAN_ACTIVATIONS[int(act)]
        self.in_features, self.out_features = self.lutham.in_features, self.lutham.out_features
        self.has_base = self.split and self.base_weight.numel() > 0
        self.has_base_bias = self.base_bias.numel() > 0
        self.has_affine = self.norm_weight.numel() > 0
        normed = self.in_features if self.split else self.out_features
        want = {"norm_weight": (normed,), "norm_bias": (normed,),
                "base_weight": (self.in_features, self.out_features),
                "base_scale": (self.out_features,), "base_bias": (self.out_features,)}
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape and got != (0,):
                raise ShapeError(f"LuthamKANLayer.{name}: expected shape {shape} (or empty (0,)) "
                                 f"for a layer {self.in_features} -> {self.out_features}, got {got}")
        if self.has_affine and self.norm_bias.numel() == 0:
            raise ShapeError(f"LuthamKANLayer.norm_bias: empty, but norm_weight has shape "
                             f"{tuple(self.norm_weight.shape)}")
        if self.has_base and self.base_scale.numel() == 0:
            raise ShapeError(f"LuthamKANLayer.base_scale: empty, but base_weight has shape "
                             f"{tuple(self.base_weight.shape)}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # As LuthamLinear: buffers take the shape and dtype of what is loaded.
        for name in (*KAN_BUFFERS, "kan_params"):
            key = prefix + name
            if key in state_dict:
                src, cur = state_dict[key], getattr(self, name)
                if src.shape != cur.shape or src.dtype != cur.dtype:
                    setattr(self, name, torch.empty(src.shape, dtype=src.dtype, device=cur.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        # _refresh runs in a post hook: the `lutham` child (which gives the sizes) loads after this

    @classmethod
    def from_compressed(cls, layer: Any) -> nn.Module:
        """The module running `layer` (a `sharekan.CompressedLayer`): a `LuthamKANLayer`
        for layers with an input or post-sum LayerNorm, else a plain `LuthamLinear`."""
        inner = LuthamLinear.from_compressed(layer)  # checks evaluator support
        split = bool(layer.split_base)
        post = tuple(layer.semantics.post) == ("layernorm",)
        if not (split or post):
            return inner
        base = layer.base_weight if split else None
        scale = layer.base_scale
        if base is not None and scale is None:
            scale = np.ones(layer.n_out, dtype=np.float32)
        tensors = {
            "norm_weight": layer.extras.get("norm_weight"),
            "norm_bias": layer.extras.get("norm_bias"),
            "base_weight": base,
            "base_scale": scale if base is not None else None,
            "base_bias": layer.extras.get("base_bias") if split else None,
        }
        mod = cls(inner, split=split, post_norm=post,
                  eps=float(layer.layout_info.get("layernorm_eps", 1e-5)),
                  activation=layer.semantics.base_activation, tensors=tensors)
        mod.layer_name = str(getattr(layer, "name", ""))
        return mod

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        if self.has_affine:
            return torch.nn.functional.layer_norm(v, (v.shape[-1],), self.norm_weight,
                                                  self.norm_bias, self.eps)
        return torch.nn.functional.layer_norm(v, (v.shape[-1],), None, None, self.eps)

    def extra_repr(self) -> str:
        return (f"split={self.split}, post_norm={self.post_norm}, eps={self.eps}, "
                f"activation={self.activation}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if not self.split:
            y = self.lutham(x)
        else:
            y = self.lutham(self._norm(x))
            if self.has_base:
                if self.activation == "silu":
                    a = torch.nn.functional.silu(x)
                elif self.activation == "gelu":
                    a = torch.nn.functional.gelu(x)
                else:
                    a = x
                w = self.base_weight.to(torch.float32) * self.base_scale[None, :]
                y = y + a @ w
            if self.has_base_bias:
                y = y + self.base_bias
        if self.post_norm:
            y = self._norm(y)
        return y


def is_kan_linear(module: nn.Module) -> bool:
    """True for efficient-kan-layout layers: `KANLinear` or any module with
    `spline_weight`, `base_weight`, `grid` and `spline_order` attributes."""
    if isinstance(module, LuthamLinear):
        return False
    if isinstance(module, KANLinear):
        return True
    return all(hasattr(module, a) for a in ("spline_weight", "base_weight", "grid",
                                             "spline_order"))


def kan_layer_kind(module: nn.Module) -> str | None:
    """The KAN library whose layer `module` is (sharekan layout name), or None.

    Recognised by parameter names, so the libraries need not be importable: efficient-kan
    `KANLinear` (and sharekan's), pykan `KANLayer`, FastKAN `FastKANLayer`, ChebyKAN
    `ChebyKANLayer`, TorchKAN `KAN` (the whole model holds its layers' parameters),
    torch-conv-kan `KANConvNDLayer` and `KAGNConvNDLayer`."""
    if isinstance(module, LuthamLinear):
        return None
    if is_kan_linear(module):
        return "efficient-kan"
    has = lambda *names: all(hasattr(module, n) for n in names)  # noqa: E731
    if has("coef", "scale_sp", "scale_base", "mask", "grid"):
        return "pykan"
    if has("spline_linear", "rbf", "layernorm"):
        return "fastkan"
    if has("cheby_coeffs"):
        return "chebykan"
    if has("spline_weights", "base_weights", "spline_scalers") and hasattr(module, "grid_0"):
        return "torchkan"
    if has("poly_weights", "beta_weights", "base_conv"):
        return "torch-conv-kagn"
    if has("spline_conv", "base_conv"):
        return "torch-conv-kan"
    return None


def _layer_name(name: str) -> str:
    return name or "layer"


def collect_calibration(model: nn.Module, x: Any, *, batch_size: int | None = None
                        ) -> dict[str, np.ndarray]:
    """Per-layer calibration inputs of every recognised KAN layer, by forward hooks.

    Runs `model(x)` once (in batches of `batch_size` rows when given) under `torch.no_grad()`
    and records the input of each KAN layer (see `kan_layer_kind`) under the layer name the
    checkpoint adapter uses, so the result can be passed as
    `sharekan.compress(model.state_dict(), calibration=...)` (e.g. with metric="data").

    Args:
        model: a torch module containing KAN layers.
        x: its input (a tensor or array).

    Returns:
        {layer name: float64 array}: (rows, n_in) for dense layers, (rows, C, *spatial)
        for conv layers.

    Example:
        >>> calib = skt.collect_calibration(model, x_train[:512])       # doctest: +SKIP
        >>> sharekan.compress(model.state_dict(), metric="data", calibration=calib)  # doctest: +SKIP
    """
    found: dict[str, list[torch.Tensor]] = {}
    handles = []

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            found.setdefault(name, []).append(inputs[0].detach().to("cpu", torch.float64))
        return hook

    def record_output(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            found.setdefault(name, []).append(output.detach().to("cpu", torch.float64))
        return hook

    selected: list[str] = []
    for name, mod in model.named_modules():
        kind = kan_layer_kind(mod)
        if kind is None or any(name.startswith(p + ".") for p in selected if p):
            continue
        selected.append(name)
        prefix = f"{name}." if name else ""
        if kind == "torchkan":  # one module, layers inside: layer l sees layer_norms[l-1]'s output
            handles.append(mod.register_forward_pre_hook(record(f"{prefix}layers.0")))
            for index, norm in enumerate(mod.layer_norms):  # type: ignore[union-attr, arg-type]
                if index + 1 < len(mod.spline_weights):  # type: ignore[arg-type]
                    handles.append(norm.register_forward_hook(record_output(f"{prefix}layers.{index + 1}")))
        else:
            handles.append(mod.register_forward_pre_hook(record(_layer_name(name))))
    if not handles:
        raise InvalidInputError(f"collect_calibration: no KAN layer recognised in {type(model).__name__}")
    inputs = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    try:
        with torch.no_grad():
            step = batch_size or len(inputs)
            for start in range(0, len(inputs), step):
                model(inputs[start:start + step])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts).numpy() for name, parts in found.items()}


def lutham_layers(model: nn.Module) -> dict[str, LuthamLinear]:
    """Name -> LuthamLinear for every compressed layer in `model` (a layer's residual
    stages are part of it, not layers of their own)."""
    found: dict[str, LuthamLinear] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LuthamLinear) and not any(
                outer == "" or name.startswith(outer + ".") for outer in found):
            found[name] = mod
    return found


def _device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module without)."""
    for t in (*module.parameters(recurse=True), *module.buffers(recurse=True)):
        return t.device
    return torch.device("cpu")


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _kan_modules(model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None
                 ) -> list[tuple[str, nn.Module]]:
    found: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if kan_layer_kind(mod) is not None and (filter_fn is None or filter_fn(mod, name)):
            # nested KAN layers inside an already selected one are not separate layers
            if any(name.startswith(p + ".") for p, _ in found if p):
                continue
            found.append((name, mod))
    return found


def compress_(model: nn.Module, config: Config | None = None,
              filter_fn: Callable[[nn.Module, str], bool] | None = None,
              **overrides: Any) -> nn.Module:
    """Compress every KAN layer of `model` in place.

    Collects the layers' tensors into one state_dict (keys `{module name}.{tensor}`), runs
    `sharekan.compress(state_dict, config, **overrides)` (so a `share="model"` codebook
    spans all of them) and swaps each layer for a `LuthamLinear`.

    Layers of every library sharekan reads are recognised (`kan_layer_kind`). Only layers
    the LUTHAM evaluator computes exactly can be swapped in place (efficient-kan layers
    become `LuthamLinear`, FastKAN layers `LuthamKANLayer`); for any other recognised layer
    (pykan's KANLayer, whose MultKAN consumes per-edge activations; TorchKAN, whose one
    module holds every layer (run `LuthamKANLayer.from_compressed` per layer); conv layers;
    ChebyKAN, whose layers the evaluator does run, is compressed with
    `sharekan.compress(state_dict)` and run as `LuthamLinear.from_compressed(layer)`)
    nothing is swapped and UnsupportedLayerError says why. Compress those with
    `sharekan.compress(state_dict)` and run `decompress()` in the source library.

    Args:
        model: a module containing KANLinear-like layers (or one such layer).
        config: a `sharekan.Config` (default: the defaults).
        filter_fn: optional `(module, fqn) -> bool` choosing which KAN layers to compress
            (torchao's `quantize_` order; fqn is the module's name in `model`, "" for
            `model` itself).
        **overrides: Config fields, e.g. `codebook_size=64`.

    Returns:
        `model` (with layers swapped), or the new LuthamLinear when `model` itself is a
        KAN layer. The `sharekan.CompressedModel` is kept as `returned._sharekan_compressed`
        (its `.report` lists errors and sizes).

    Raises:
        InvalidInputError: the model has no KAN layer. Errors of `sharekan.compress`.
    """
    targets = _kan_modules(model, filter_fn)
    if not targets:
        raise InvalidInputError(
            f"compress_: no efficient-kan-layout KAN layer (KANLinear, or a module with "
            f"spline_weight/base_weight/grid/spline_order) and no pykan, FastKAN, ChebyKAN, "
            f"TorchKAN or torch-conv-kan layer found in {type(model).__name__}"
        )
    kinds = {name: kan_layer_kind(mod) for name, mod in targets}
    refused = [f"{name or type(model).__name__} ({kind})" for name, kind in kinds.items()
               if kind not in ("efficient-kan", "fastkan")]
    if refused:
        raise UnsupportedLayerError(
            "compress_: sharekan's LUTHAM evaluator cannot run these KAN layers exactly, so "
            f"nothing was swapped: {', '.join(refused)}. It implements B-spline edges with a "
            "SiLU base branch (efficient-kan) and FastKAN layers (LuthamKANLayer); pykan's "
            "KANLayer must also return per-edge "
            "activations to MultKAN. Compress their state_dict with sharekan.compress() and "
            "load decompress() into the library's module."
        )
    state: dict[str, np.ndarray] = {}
    for name, mod in targets:
        for key, value in mod.state_dict().items():
            state[f"{name}.{key}" if name else key] = value.detach().cpu().numpy()
    compressed = compress(state, config, **overrides)
    result: nn.Module = model
    for name, old in targets:
        layer = compressed.layers[name or "layer"]
        new = (LuthamKANLayer.from_compressed(layer) if kinds[name] == "fastkan"
               else LuthamLinear.from_compressed(layer))
        new = new.to(_device_of(old))  # a model on CUDA gets its compressed layers there
        if name:
            _set_submodule(model, name, new)
        else:
            result = new
    object.__setattr__(result, "_sharekan_compressed", compressed)
    return result


def load_compressed_(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                     strict: bool = True) -> nn.Module:
    """Load a state_dict saved from a compressed model into `model`, in place.

    Every submodule whose prefix has compressed-layer buffers in `state_dict` is rebuilt
    from them: a `LuthamKANLayer` where `{prefix}kan_params` or `{prefix}lutham.*` keys are
    saved (FastKAN layers swapped by `compress_`, or any LuthamKANLayer), else a
    `LuthamLinear` where `{prefix}codes` is saved (efficient-kan layers). The submodule may
    be a KAN layer of the uncompressed architecture (`kan_layer_kind`) or an existing
    LuthamLinear / LuthamKANLayer of any size. Then `model.load_state_dict(state_dict,
    strict)` loads the rest, so the rebuilt model runs the same buffers through the same op
    as the model that was saved.

    Args:
        model: the uncompressed (or compressed) architecture.
        state_dict: `{key: tensor}` from a compressed model's `state_dict()`.
        strict: passed to `load_state_dict` for everything else.

    Returns:
        `model`, or the new layer when `model` itself is the layer.

    Raises:
        LayoutError: a compressed layer's buffer is missing from `state_dict` (named).
        ShapeError: a buffer's shape does not fit its layer. RuntimeError (torch's): strict
        loading of the other keys failed.

    Example:
        >>> fresh = FastKAN([4, 6, 3])                                  # doctest: +SKIP
        >>> skt.load_compressed_(fresh, torch.load("fastkan_compressed.pt"))  # doctest: +SKIP
    """
    result: nn.Module = model
    rebuilt: list[str] = []
    for name, mod in list(model.named_modules()):
        if any(name.startswith(p + ".") for p in rebuilt) or (rebuilt and rebuilt[0] == ""):
            continue  # inside a module already rebuilt
        prefix = f"{name}." if name else ""
        candidate = (kan_layer_kind(mod) is not None
                     or isinstance(mod, (LuthamLinear, LuthamKANLayer)))
        if not candidate:
            continue
        new: nn.Module
        if prefix + "kan_params" in state_dict or any(
                k.startswith(prefix + "lutham.") for k in state_dict):
            new = LuthamKANLayer.from_state_dict(state_dict, prefix)
        elif prefix + "codes" in state_dict:
            new = LuthamLinear.from_state_dict(state_dict, prefix)
        else:
            continue
        new = new.to(_device_of(mod))
        rebuilt.append(name)
        if name:
            _set_submodule(model, name, new)
        else:
            result = new
    result.load_state_dict(dict(state_dict), strict=strict)
    return result
