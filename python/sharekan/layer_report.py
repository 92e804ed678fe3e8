"""The per-layer compression report: `build_layer_report` measures a compiled
`CompressedLayer` against its dense `LayerSource` and fills a `report.LayerReport`.
(It lives apart from `sharekan.report`, which `sharekan.compressed` imports.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .compressed import CompressedLayer
from .config import Config
from .dense import dense_evaluable, dense_layer_forward
from .folding import fraction_outside_grid
from .layouts import LayerSource
from .metrics import function_metric
from .report import LayerReport

#: Points per knot interval where max |d phi| is measured.
DPHI_POINTS_PER_INTERVAL = 8


def build_layer_report(
    source: LayerSource,
    layer: CompressedLayer,
    cfg: Config,
    flat_gain: np.ndarray,
    extra: dict[str, Any],
    *,
    function_gram: np.ndarray | None,
    with_codebook: bool,
    calib: Mapping[str, np.ndarray],
    seconds: float,
    kmeans_iterations: int,
    kmeans_converged: bool,
    objective: list[float],
) -> LayerReport:
    """The LayerReport of a compiled layer against its dense source: coefficient and
    function errors, max |d phi|, bytes, codebook use, the k-means outcome and, with
    calibration inputs for the layer, the output SQNR and the inputs outside the grid."""
    w = source.coeffs
    # Folded biases are measured per edge before folding; folding is exact inside the grid.
    w_hat = layer.decoded_coeffs()  # every stage
    if layer.edge_bias is None:
        w_hat += (extra["prefold_biases"] - layer.edge_biases())[..., None]
    diff = (w - w_hat).reshape(-1, w.shape[-1])
    flat_w = w.reshape(-1, w.shape[-1])
    gram = function_gram if function_gram is not None else function_metric(source)
    func_num = float(np.sum((diff @ gram) * diff))
    func_den = float(np.sum((flat_w @ gram) * flat_w))
    tensor_bytes = {f: int(a.nbytes) for f, a in layer.stored_tensors().items()}
    if with_codebook:
        tensor_bytes.update({f: int(a.nbytes) for f, a in layer.stored_codebook().items()})
    infos = source.tensors.values()
    live = np.abs(flat_gain) > 0
    used = np.unique(layer.codes.reshape(-1)[live]).size
    output_sqnr = outside = None
    if source.name in calib:
        x = calib[source.name]
        outside = fraction_outside_grid(source, x)
        approx = None
        if layer.unsupported_reason() is None:
            approx = layer.forward(x).astype(np.float64)  # the LUTHAM evaluator
        elif dense_evaluable(source) is None:  # the dense layer on the decoded coefficients
            approx = dense_layer_forward(source, x, layer.decoded_coeffs(), layer.base_weights())
        if approx is not None:
            dense = dense_layer_forward(source, x)
            err = np.linalg.norm(dense - approx) / max(float(np.linalg.norm(dense)), 1e-300)
            output_sqnr = -20.0 * np.log10(err) if err > 0 else float("inf")
    return LayerReport(
        name=source.name,
        n_in=source.n_in,
        n_out=source.n_out,
        edges=source.n_in * source.n_out,
        n_coeffs=source.n_coeffs,
        grid_size=source.grid_size,
        spline_order=source.spline_order,
        codebook_size=layer.codebook_size,
        bits=layer.bits,
        metric=cfg.metric,
        int8=cfg.int8,
        bias=extra["bias_mode"],
        base=cfg.base if source.base_weight is not None else "none",
        codebook_group=layer.codebook_group,
        bytes_dense_fp32=sum(4 * int(np.prod(i.shape)) for i in infos),
        bytes_source=sum(np.dtype(i.dtype).itemsize * int(np.prod(i.shape)) for i in infos),
        bytes_compressed=sum(tensor_bytes.values()),
        tensor_bytes=tensor_bytes,
        coeff_rel_err=float(np.linalg.norm(diff) / max(float(np.linalg.norm(flat_w)), 1e-300)),
        func_rel_err=float(np.sqrt(func_num / func_den)) if func_den > 0 else 0.0,
        max_abs_dphi=_max_abs_dphi(source, w - w_hat),
        codebook_utilisation=used / layer.codebook_size,
        kmeans_iterations=kmeans_iterations,
        kmeans_converged=kmeans_converged,
        objective=objective,
        seconds=seconds,
        output_sqnr_db=None if output_sqnr is None else float(output_sqnr),
        frac_inputs_outside_grid=outside,
        basis=source.basis.describe(),
        evaluator=layer.unsupported_reason() or "lutham",
    )


def _max_abs_dphi(source: LayerSource, diff: np.ndarray) -> float:
    """max over edges and sample points inside the basis domain of |phi - phi_hat|."""
    pts = source.basis.sample_points(DPHI_POINTS_PER_INTERVAL, source.n_in)  # (P, n_in)
    basis = source.basis.values(pts)  # (P, n_in, M)
    worst = 0.0
    chunk = max(1, 4_000_000 // max(1, pts.shape[0] * source.n_out))
    for start in range(0, source.n_in, chunk):
        sl = slice(start, start + chunk)
        # per input: (P, M) @ (M, n_out)
        dphi = np.matmul(basis[:, sl].transpose(1, 0, 2), diff[sl].transpose(0, 2, 1))
        worst = max(worst, float(np.abs(dphi).max()))
    return worst
