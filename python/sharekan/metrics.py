"""The metric R (M x M) each layer's fit minimises: "coefficient" (identity), "function"
(the basis Gram over its domain) or "data" (calibration inputs), ARCHITECTURE §2. The
per-edge "output" metric is in `sharekan.refine`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import InvalidInputError
from .layouts import LayerSource

#: Ridge added to a data metric (relative to its mean eigenvalue) so basis functions that
#: calibration never reaches still get a small, well-conditioned weight.
DATA_METRIC_RIDGE = 1e-3


def function_metric(source: LayerSource) -> np.ndarray:
    """(M, M) Gram matrix of the basis over its domain, averaged over inputs."""
    return source.basis.gram()


def data_metric(source: LayerSource, x: np.ndarray) -> np.ndarray:
    """(M, M) mean of B(x_i) B(x_i)^T over calibration rows and inputs, plus a small ridge."""
    basis = source.basis.values(source.basis_inputs(x))  # (rows, n_in, M)
    flat = basis.reshape(-1, basis.shape[-1])
    gram = flat.T @ flat / flat.shape[0]
    ridge = DATA_METRIC_RIDGE * max(np.trace(gram) / gram.shape[0], 1e-12)
    return gram + ridge * np.eye(gram.shape[0])


def layer_metric(source: LayerSource, metric: str, calib: Mapping[str, np.ndarray]) -> np.ndarray:
    if metric == "coefficient":
        return np.eye(source.n_coeffs)
    if metric == "function":
        return function_metric(source)
    if source.name not in calib:
        raise InvalidInputError(
            f"layer {source.name!r}: metric='data' needs calibration inputs "
            "(pass calibration=<model inputs> or {layer name: inputs})"
        )
    return data_metric(source, calib[source.name])
