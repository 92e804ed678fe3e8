"""Shared fixtures: seeded RNGs, random efficient-kan-style grids and layers.

Factories are session-scoped fixtures returning plain functions, so hypothesis tests can
use them (they take an explicit `numpy.random.Generator`, never global state).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

import oracle

settings.register_profile(
    "sharekan",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "sharekan-stress",
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("SHAREKAN_HYPOTHESIS_PROFILE", "sharekan"))


def random_grid(
    rng: np.random.Generator,
    n_in: int,
    grid_size: int,
    k: int,
    uniform: bool = False,
    dtype=np.float64,
) -> np.ndarray:
    """(n_in, G + 2k + 1) strictly increasing knots.

    uniform=True: efficient-kan's grid (uniform on a random range, k knots beyond each
    end, the same for every input). Otherwise every input gets its own non-uniform grid:
    random positive knot gaps (ratio up to ~8) from a random start.
    """
    n_knots = grid_size + 2 * k + 1
    if uniform:
        lo = rng.uniform(-2.0, 0.0)
        hi = lo + rng.uniform(0.5, 3.0)
        grid = oracle.uniform_grid(n_in, grid_size, k, lo, hi)
    else:
        gaps = rng.uniform(0.25, 2.0, size=(n_in, n_knots - 1)) * rng.uniform(
            0.05, 0.5, size=(n_in, 1)
        )
        start = rng.uniform(-2.0, -0.5, size=(n_in, 1))
        grid = np.concatenate([start, start + np.cumsum(gaps, axis=1)], axis=1)
    return np.ascontiguousarray(grid, dtype=dtype)


def grid_inputs(rng: np.random.Generator, grid: np.ndarray, batch: int, outside: float = 0.3):
    """(batch, n_in) float64 inputs: mostly inside each input's full knot range, a fraction
    `outside` beyond it on either side, plus a few exactly on knots."""
    grid = np.asarray(grid, dtype=np.float64)
    n_in = grid.shape[0]
    lo, hi = grid[:, 0], grid[:, -1]
    width = hi - lo
    x = lo + rng.uniform(-0.3, 1.3, size=(batch, n_in)) * width
    inside = rng.uniform(size=(batch, n_in)) >= outside
    x_in = lo + rng.uniform(0.0, 1.0, size=(batch, n_in)) * width
    x = np.where(inside, x_in, x)
    # a few inputs exactly on a knot (half-open spans matter there)
    on_knot = rng.uniform(size=(batch, n_in)) < 0.05
    knot_idx = rng.integers(0, grid.shape[1], size=(batch, n_in))
    x = np.where(on_knot, grid[np.arange(n_in)[None, :], knot_idx], x)
    return x


def random_coeffs(
    rng: np.random.Generator, n_edges: int, m: int, n_shapes: int | None = None, noise: float = 0.0
) -> np.ndarray:
    """(E, M) coefficients. With n_shapes: each edge is gain * shape + bias + noise with
    shapes drawn from `n_shapes` random prototypes (well separated for small noise)."""
    if n_shapes is None:
        return rng.normal(size=(n_edges, m))
    protos = rng.normal(size=(n_shapes, m))
    which = rng.integers(0, n_shapes, size=n_edges)
    which[:n_shapes] = np.arange(min(n_shapes, n_edges))
    gains = rng.uniform(0.5, 2.0, size=n_edges) * rng.choice([-1.0, 1.0], size=n_edges)
    biases = rng.normal(size=n_edges)
    return gains[:, None] * protos[which] + biases[:, None] + noise * rng.normal(size=(n_edges, m))


def random_layer(
    rng: np.random.Generator,
    n_in: int,
    n_out: int,
    grid_size: int,
    k: int,
    n_codes: int,
    code_dtype=np.int32,
    weight_kind: str = "f32",
    with_edge_bias: bool = True,
    with_out_bias: bool = True,
    with_base: bool = True,
    uniform: bool = False,
) -> dict:
    """Keyword arguments of `sharekan._core.lutham_forward` (minus x), all C-contiguous.

    weight_kind "f32": float gains/biases/base weights, scales all ones or absent;
    "int8": int8 values in [-127, 127] with positive float32 per-output scales.
    """
    m = grid_size + k
    layer: dict = {
        "grid": random_grid(rng, n_in, grid_size, k, uniform=uniform, dtype=np.float32),
        "k": k,
        "codebook": rng.normal(size=(n_codes, m)).astype(np.float32),
        "codes": rng.integers(0, n_codes, size=(n_in, n_out)).astype(code_dtype),
    }

    def weights():
        if weight_kind == "int8":
            vals = rng.integers(-127, 128, size=(n_in, n_out)).astype(np.int8)
            scale = rng.uniform(0.001, 0.02, size=n_out).astype(np.float32)
            return vals, scale
        return rng.normal(size=(n_in, n_out)).astype(np.float32), None

    layer["gains"], layer["gain_scale"] = weights()
    if weight_kind == "f32" and rng.uniform() < 0.5:
        layer["gain_scale"] = rng.uniform(0.5, 2.0, size=n_out).astype(np.float32)
    if with_edge_bias:
        layer["edge_bias"], layer["edge_bias_scale"] = weights()
    if with_out_bias:
        layer["out_bias"] = rng.normal(size=n_out).astype(np.float32)
    if with_base:
        layer["base_weight"], layer["base_scale"] = weights()
    return {key: val for key, val in layer.items() if val is not None}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


@pytest.fixture(scope="session")
def make_grid():
    return random_grid


@pytest.fixture(scope="session")
def make_inputs():
    return grid_inputs


@pytest.fixture(scope="session")
def make_coeffs():
    return random_coeffs


@pytest.fixture(scope="session")
def make_layer():
    return random_layer
