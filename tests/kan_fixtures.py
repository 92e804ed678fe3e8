"""efficient-kan-layout state_dicts for API tests (numpy, float32, like a saved checkpoint)."""

from __future__ import annotations

import numpy as np


def efficient_kan_state_dict(
    rng: np.random.Generator,
    widths: list[int],
    grid_size: int = 5,
    k: int = 3,
    grid_range: tuple[float, float] = (-1.0, 1.0),
    scaler: bool = True,
    n_shapes: int | None = None,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
    """A random KAN checkpoint; with n_shapes, every edge's coefficients are a gain times one
    of n_shapes prototype curves plus a constant (exactly representable with K = n_shapes)."""
    sd: dict[str, np.ndarray] = {}
    m = grid_size + k
    step = (grid_range[1] - grid_range[0]) / grid_size
    knots = np.arange(-k, grid_size + k + 1) * step + grid_range[0]
    for layer, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        if n_shapes is None:
            spline = rng.normal(scale=0.3, size=(n_out, n_in, m))
        else:
            protos = rng.normal(size=(n_shapes, m))
            which = rng.integers(0, n_shapes, size=(n_out, n_in))
            gains = rng.uniform(0.2, 1.0, size=(n_out, n_in, 1)) * rng.choice(
                [-1, 1], size=(n_out, n_in, 1)
            )
            spline = gains * protos[which] + rng.normal(scale=0.1, size=(n_out, n_in, 1))
        sd[f"layers.{layer}.base_weight"] = rng.normal(scale=0.3, size=(n_out, n_in)).astype(dtype)
        sd[f"layers.{layer}.spline_weight"] = spline.astype(dtype)
        if scaler:
            sd[f"layers.{layer}.spline_scaler"] = (
                np.ones((n_out, n_in))
                if n_shapes is not None
                else rng.uniform(0.5, 1.5, size=(n_out, n_in))
            ).astype(dtype)
        sd[f"layers.{layer}.grid"] = np.tile(knots, (n_in, 1)).astype(dtype)
    return sd


def dense_forward(sd: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """efficient-kan KAN forward in float64 from a state_dict (independent of sharekan)."""
    import oracle

    n_layers = len([key for key in sd if key.endswith(".spline_weight")])
    out = np.asarray(x, dtype=np.float64)
    for layer in range(n_layers):
        p = f"layers.{layer}."
        grid = sd[p + "grid"].astype(np.float64)
        spline = sd[p + "spline_weight"].astype(np.float64)
        if p + "spline_scaler" in sd:
            spline = spline * sd[p + "spline_scaler"].astype(np.float64)[..., None]
        k = grid.shape[1] - spline.shape[2] - 1
        basis = oracle.bspline_basis(out, grid, k)  # (B, n_in, M)
        base = sd[p + "base_weight"].astype(np.float64)
        silu = out / (1.0 + np.exp(-out))
        out = silu @ base.T + np.einsum("bim,oim->bo", basis, spline)
    return out
