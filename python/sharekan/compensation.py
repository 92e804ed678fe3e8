"""`compensate=True` (ARCHITECTURE.md §2): sequential error compensation over the chain of
layers. In forward order, each compiled layer's gains, base weights and biases are refit
(codes and codebook fixed) on the compressed model's activations against the dense layer on
the dense activations (`refine.compensate_output`, the per-output ridge least squares), then
stored quantised again (`scalars.store_scalars`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .compressed import CompressedLayer
from .config import Config
from .dense import dense_layer_forward, spline_forward
from .layouts import LayerSource
from .refine import compensate_output
from .report import LayerReport
from .scalars import store_scalars


def _compressed_forward(source: LayerSource, layer: CompressedLayer, x: np.ndarray) -> np.ndarray:
    """The compressed layer on x (batch, n_in) -> (batch, n_out) float64 (LUTHAM where it runs)."""
    if layer.unsupported_reason() is None:
        return layer.forward(x).astype(np.float64)
    return dense_layer_forward(source, x, layer.decoded_coeffs(), layer.base_weights())


def _stages_output(source: LayerSource, layer: CompressedLayer, x: np.ndarray) -> np.ndarray | float:
    """What the layer's residual stages add to its output on x (batch, n_in), float64."""
    if not layer.stages:
        return 0.0
    return spline_forward(source, x, np.sum([stage.coeffs() for stage in layer.stages], axis=0))


def compensate_layers(
    sources: list[LayerSource],
    compiled: dict[str, tuple[CompressedLayer, dict[str, Any], Callable[..., LayerReport]]],
    cfg: Config,
    x: np.ndarray,
    sensitivities: Mapping[str, np.ndarray],
) -> None:
    """compensate=True: in forward order, refit each layer's gains, base weights and biases
    (codes and codebook fixed) so that on the compressed model's activations it matches the
    dense layer on the dense activations, weighted by the output sensitivities, with the
    layer's residual stages (if any) held fixed; then store them quantised as the compiler
    does (`store_scalars`). Replaces the entries of `compiled`."""
    dense_x, comp_x = x, x
    for source in sources:
        layer, extra, make_report = compiled[source.name]
        target = dense_layer_forward(source, dense_x)
        lcfg = cfg.for_layer(source.name)
        if lcfg.compensate:
            started = time.perf_counter()
            folded = layer.edge_bias is None
            bias0 = layer.out_bias.astype(np.float64) if folded else layer.edge_biases()  # type: ignore[union-attr]
            # residual stages stay fixed: the first stage's scalars fit what they leave
            gains, base, bias = compensate_output(
                source,
                comp_x,
                target - _stages_output(source, layer, comp_x),
                sensitivities[source.name],
                layer.codebook.astype(np.float64)[layer.codes],
                layer.edge_gains(),
                layer.base_weights(),
                bias0,
                folded,
            )
            stored = store_scalars(lcfg, gains, bias, folded, base)
            layer = dataclasses.replace(layer, **stored)
            extra = dict(extra)
            if folded:  # the report measures per-edge biases: spread the change over inputs
                extra["prefold_biases"] = extra["prefold_biases"] + (bias - bias0) / source.n_in
            else:
                extra["prefold_biases"] = layer.edge_biases()
            extra["seconds"] += time.perf_counter() - started
            compiled[source.name] = (layer, extra, make_report)
        comp_x = _compressed_forward(source, layer, comp_x)
        dense_x = target
