"""pykan (PyPI `pykan`, 0.2.x) checkpoints: `MultKAN` / `KAN` and single `KANLayer`s.

Per layer `l` (prefix `act_fun.{l}` in a MultKAN): `coef` (n_in, n_out, M), `grid`
(n_in, G+2k+1) per input (adaptive after `update_grid_from_samples`), `scale_sp`,
`scale_base`, `mask` (n_in, n_out). The layer computes (pykan `KANLayer.forward`)

    y_o = sum_i mask[i,o] * (scale_base[i,o] * b(x_i) + scale_sp[i,o] * sum_m coef[i,o,m] B_m(x_i))

with b = SiLU by default (`base_fun` is not in the state_dict: `base_activation=` option).
sharekan's layer form folds `scale_sp * mask` into the coefficients and `scale_base * mask`
into the base weights, which is exact. A MultKAN adds, per layer, `subnode_scale_{l}`,
`subnode_bias_{l}` (n_out), `node_scale_{l}`, `node_bias_{l}` (n_nodes) and a symbolic
branch `symbolic_fun.{l}.mask` (n_out, n_in) / `.affine` (n_out, n_in, 4) whose function
*names* live only in pykan's `{ckpt}_config.yml`. Those tensors are stored unchanged; a
layer whose affines are not the identity, whose width has multiplication nodes, or whose
symbolic branch is active cannot be run by sharekan's evaluator (it says why), and active
symbolic tensors are listed as "refused" in the report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _core
from ..errors import InvalidInputError, LayoutError
from ._common import check_knots, ledger, natural_key, prefix_key, tensor
from .adapter import BASE_ACTIVATIONS, Extraction, LayerSource, Semantics, TensorInfo

NAME = "pykan"
_COEF = re.compile(r"^(?:(?P<prefix>.*)\.)?coef$")
_ROLES = ("coef", "grid", "scale_sp", "scale_base", "mask")
_ACT_FUN = re.compile(r"^(?P<model>(?:.*\.)?)act_fun\.(?P<layer>\d+)$")


def layer_prefixes(sd: Mapping[str, np.ndarray]) -> list[str]:
    out = []
    for key in sd:
        match = _COEF.match(key)
        if match:
            prefix = match.group("prefix") or ""
            if all(prefix_key(prefix, r) in sd for r in _ROLES):
                out.append(prefix)
    return sorted(out, key=natural_key)


class PykanLayout:
    """Adapter for pykan `MultKAN` / `KANLayer` state_dicts.

    Args:
        base_activation: pykan's `base_fun` ("silu", pykan's default, "gelu" or
            "identity"); it is not stored in the state_dict.
    """

    name = NAME

    def __init__(self, base_activation: str = "silu") -> None:
        if base_activation not in BASE_ACTIVATIONS:
            raise InvalidInputError(
                f"pykan base_activation={base_activation!r}; expected one of {list(BASE_ACTIVATIONS)}"
            )
        self.base_activation = base_activation

    def detect(self, state_dict: Mapping[str, np.ndarray]) -> bool:
        return bool(layer_prefixes(state_dict))

    def extract(self, state_dict: Mapping[str, np.ndarray]) -> Extraction:
        layers = []
        special: dict[str, tuple[str, str]] = {}
        for prefix in layer_prefixes(state_dict):
            layer, notes = self._layer(state_dict, prefix)
            layers.append(layer)
            special.update(notes)
        return ledger(NAME, layers, state_dict, special)

    def _layer(
        self, sd: Mapping[str, np.ndarray], prefix: str
    ) -> tuple[LayerSource, dict[str, tuple[str, str]]]:
        key = lambda role: prefix_key(prefix, role)  # noqa: E731
        coef_raw = sd[key("coef")]
        if coef_raw.ndim != 3:
            raise LayoutError(f"tensor {key('coef')!r}: expected (n_in, n_out, M), got {coef_raw.shape}")
        n_in, n_out, m = (int(d) for d in coef_raw.shape)
        coef = tensor(sd, key("coef"))
        grid_raw = sd[key("grid")]
        if grid_raw.ndim != 2 or grid_raw.shape[0] != n_in:
            raise LayoutError(
                f"tensor {key('grid')!r}: expected ({n_in}, G + 2k + 1) to match "
                f"{key('coef')!r} {tuple(coef_raw.shape)}, got {tuple(grid_raw.shape)}"
            )
        k = int(grid_raw.shape[1]) - m - 1
        if k < 0 or m - k < 1:
            raise LayoutError(
                f"tensor {key('grid')!r}: {grid_raw.shape[1]} knots do not fit M = {m} "
                "coefficients (need G + 2k + 1 knots with M = G + k)"
            )
        grid = tensor(sd, key("grid"))
        check_knots(grid, key("grid"))
        scale_sp = tensor(sd, key("scale_sp"), (n_in, n_out), "pykan scale_sp [in, out]")
        scale_base = tensor(sd, key("scale_base"), (n_in, n_out), "pykan scale_base [in, out]")
        mask = tensor(sd, key("mask"), (n_in, n_out), "pykan mask [in, out]")
        coeffs = coef * (scale_sp * mask)[..., None]  # (n_in, n_out, M)
        base = scale_base * mask
        tensors = {r: TensorInfo.of(key(r), sd[key(r)]) for r in _ROLES}

        extras: dict[str, np.ndarray] = {}
        info: dict[str, Any] = {}
        if (mask == 1).all():
            info["mask"] = "ones"
        elif np.isin(mask, (0.0, 1.0)).all():
            info["mask"] = "bits"
            extras["mask_bits"] = _core.pack_codes(
                np.ascontiguousarray(mask.reshape(-1), dtype=np.uint32), 1
            )
        else:
            info["mask"] = "values"
            extras["mask"] = np.ascontiguousarray(sd[key("mask")])

        post: list[str] = []
        notes: dict[str, tuple[str, str]] = {}
        match = _ACT_FUN.match(prefix)
        if match:
            model, index = match.group("model"), match.group("layer")
            post += _model_parts(sd, model, index, n_in, n_out, notes)
        semantics = Semantics(base_activation=self.base_activation, post=tuple(post))
        layer = LayerSource(
            prefix or "layer", coeffs, grid, k, base, tensors,
            semantics=semantics, extras=extras, info=info,
        )
        return layer, notes

    def rebuild(
        self,
        source: Mapping[str, TensorInfo],
        coeffs: np.ndarray,
        base_weight: np.ndarray | None,
        grid: np.ndarray,
        info: Mapping[str, Any] | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        info, extras = info or {}, extras or {}
        n_in, n_out, _ = coeffs.shape
        mode = info.get("mask", "ones")
        if mode == "ones":
            mask = np.ones((n_in, n_out))
        elif mode == "bits":
            bits = _core.unpack_codes(extras["mask_bits"], 1, n_in * n_out)
            mask = bits.reshape(n_in, n_out).astype(np.float64)
        else:
            mask = extras["mask"].astype(np.float64)
        live = mask != 0
        safe = np.where(live, mask, 1.0)
        # mask * scale_sp * coef must equal the decoded coefficients: scale_sp = 1 on live
        # edges (0 on masked ones, as pykan initialises it), coef = decoded / mask.
        coef = np.where(live[..., None], coeffs / safe[..., None], 0.0)
        scale_sp = live.astype(np.float64)
        base = base_weight if base_weight is not None else np.zeros((n_in, n_out))
        scale_base = np.where(live, base / safe, 0.0)
        values = {"coef": coef, "grid": grid, "scale_sp": scale_sp, "scale_base": scale_base,
                  "mask": mask}
        return {
            source[r].key: np.ascontiguousarray(values[r]).astype(source[r].dtype)
            for r in _ROLES
        }


def _model_parts(
    sd: Mapping[str, np.ndarray], model: str, index: str, n_in: int, n_out: int,
    notes: dict[str, tuple[str, str]],
) -> list[str]:
    """Checks a MultKAN's per-layer affines and symbolic branch; returns the post-sum
    operations sharekan's evaluator would have to apply (empty when they are identities)."""
    post: list[str] = []
    affine_ok = True
    for name, identity in (("subnode_scale", 1.0), ("subnode_bias", 0.0),
                           ("node_scale", 1.0), ("node_bias", 0.0)):
        key = f"{model}{name}_{index}"
        if key not in sd:
            continue
        value = np.asarray(sd[key], dtype=np.float64)
        if name.startswith("subnode") and value.shape != (n_out,):
            raise LayoutError(f"tensor {key!r}: expected shape ({n_out},), got {value.shape}")
        if name.startswith("node") and value.shape[0] != n_out:
            if "multiplication nodes" not in post:
                post.append("multiplication nodes")
        if not (value == identity).all():
            affine_ok = False
        notes[key] = ("passthrough", f"MultKAN {name} of layer {index}; stored unchanged"
                      + ("" if (value == identity).all() else " (not the identity)"))
    if not affine_ok:
        post.append("node_affine")
    mask_key, affine_key = f"{model}symbolic_fun.{index}.mask", f"{model}symbolic_fun.{index}.affine"
    if mask_key in sd:
        smask = np.asarray(sd[mask_key], dtype=np.float64)
        active = int(np.count_nonzero(smask))
        if active:
            post.append("symbolic branch")
            reason = (
                f"symbolic branch of layer {index} is active on {active} edge(s); the symbolic "
                "functions are named only in pykan's *_config.yml, not in the state_dict: stored "
                "unchanged, not evaluated by sharekan"
            )
            notes[mask_key] = ("refused", reason)
            if affine_key in sd:
                notes[affine_key] = ("refused", reason)
        else:
            reason = f"symbolic branch of layer {index} (inactive: mask all zero); stored unchanged"
            notes[mask_key] = ("passthrough", reason)
            if affine_key in sd:
                notes[affine_key] = ("passthrough", reason)
    return post
