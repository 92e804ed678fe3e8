"""Knot grids at the edge of the float32 rule (ARCHITECTURE §4), shared by the Rust
evaluator's and the C++ kernel's tests so both are held to the same cases: for k >= 1 every
`t[a+r] - t[a]` (1 <= r <= k) and its reciprocal must be finite in float32, the first
offending pair reported in (row, r, a) order."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from conftest import random_layer

N_IN, N_OUT, K = 3, 4, 3
ROW = np.linspace(-1.0, 1.0, 12)


def rows(grid, n_in: int = N_IN) -> np.ndarray:
    """(n_in, n_knots) C-contiguous float32 knots from one row (repeated) or n_in rows."""
    return np.ascontiguousarray(np.broadcast_to(grid, (n_in, np.shape(grid)[-1])), np.float32)


def grid_layer(rng, grid, k: int = K) -> dict:
    """A layer on the given knots; no base branch (SiLU of x ~ 1e38 times the base weights
    would overflow float32 by itself)."""
    grid = rows(grid)
    layer = random_layer(rng, N_IN, N_OUT, grid.shape[1] - 2 * k - 1, k, 8,
                         code_dtype=np.uint8, weight_kind="int8", with_base=False)
    layer["grid"] = grid
    return layer


class BadGrid(NamedTuple):
    name: str
    grid: np.ndarray
    kind: str  # "spacing" (1/d overflows) or "range" (d overflows)
    row: int
    hi: int  # knot index a + r
    lo: int  # knot index a


def invalid_grids() -> list[BadGrid]:
    """k = 3 grids on ROW's 12 knots that break the rule, with the first offending pair."""
    one_gap = rows(ROW).astype(np.float64)
    one_gap[2] = np.concatenate([[-1.0, -0.5, -0.25, 0.0, 1e-39], np.linspace(0.1, 1.0, 7)])
    wide = rows(ROW).astype(np.float64)
    wide[1] = [-3e38, -2.9e38, -2.8e38, -1e37, 1e37, 2.8e38, 2.9e38, 3e38, 3.1e38, 3.2e38,
               3.3e38, 3.4e38]
    return [
        BadGrid("subnormal_everywhere", np.arange(12) * 1e-39, "spacing", 0, 1, 0),
        BadGrid("one_gap_in_row_2", one_gap, "spacing", 2, 4, 3),
        BadGrid("span_overflows", wide, "range", 1, 5, 2),
    ]


#: k = 3 grids just inside the rule: finite outputs equal to the references.
VALID_ROWS = {"plain": ROW, "tiny": np.linspace(-5, 5, 12) * 1e-30,
              "huge": np.linspace(-1e38, 1e38, 12)}
