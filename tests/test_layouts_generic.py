"""The generic layout (user-described tensor, edge layout and basis) and the basis metrics."""

from __future__ import annotations

import numpy as np
import pytest

import sharekan
from sharekan.layouts import RBF, BSpline, Chebyshev, GenericLayer, GenericLayout, Gram, uniform_knots


def test_chebyshev_gram_matches_closed_form():
    # (1/2) * integral_{-1}^{1} T_i T_j dt for T_0 = 1, T_1 = t, T_2 = 2t^2 - 1
    want = np.array([[1, 0, -1 / 3], [0, 1 / 3, 0], [-1 / 3, 0, 7 / 15]])
    np.testing.assert_allclose(Chebyshev(2).gram(), want, atol=1e-12)


@pytest.mark.parametrize("basis", [RBF(np.linspace(-2, 2, 6), 0.8), Gram(3, (0.0, 0.1, -0.2, 0.3))])
def test_quadrature_gram_matches_dense_sampling(basis):
    if isinstance(basis, RBF):
        pts = np.linspace(-2, 2, 200_001)[:, None]
    else:  # uniform in t = tanh(x)
        pts = np.arctanh(np.linspace(-1 + 1e-12, 1 - 1e-12, 200_001))[:, None]
    b = basis.values(pts)[:, 0, :]
    dense = np.trapezoid(b[:, :, None] * b[:, None, :], dx=1.0, axis=0) / (len(pts) - 1)
    np.testing.assert_allclose(basis.gram(), dense, rtol=1e-6, atol=1e-9)


def test_bspline_basis_is_the_core_metric():
    grid = uniform_knots(5, 3)[None, :].repeat(4, axis=0)
    assert BSpline(grid, 3).n_coeffs == 8 and BSpline(grid, 3).partition_of_unity


@pytest.mark.parametrize(
    "edges, shape_of",
    [
        ("in,out,coef", lambda i, o, m: (i, o, m)),
        ("out,in,coef", lambda i, o, m: (o, i, m)),
        ("out,in*coef", lambda i, o, m: (o, i * m)),
        ("out,coef*in", lambda i, o, m: (o, m * i)),  # degree-major, strided per edge
        ("coef,out*in", lambda i, o, m: (m, o * i)),
    ],
)
def test_edge_layouts_round_trip_exactly(edges, shape_of):
    rng = np.random.default_rng(0)
    n_in, n_out, m = 5, 4, 6
    sd = {"head.w": rng.normal(size=shape_of(n_in, n_out, m)).astype(np.float32),
          "head.temperature": np.ones(1, dtype=np.float32)}
    layout = GenericLayout([GenericLayer("head.w", basis=Chebyshev(m - 1), edges=edges, n_in=n_in)])
    model = sharekan.compress(sd, layout=layout, codebook_size=20, int8=False, bias="edge")
    assert model.source_layout == "generic"
    np.testing.assert_allclose(model.decompress()["head.w"], sd["head.w"], rtol=1e-5, atol=1e-6)
    assert {t.key: t.status for t in model.report.tensors}["head.temperature"] == "passthrough"


def test_generic_by_name_with_options_matches_the_chebykan_adapter():
    rng = np.random.default_rng(1)
    sd = {"layers.0.cheby_coeffs": rng.normal(size=(6, 5, 4)).astype(np.float32)}
    auto = sharekan.compress(sd, codebook_size=8)
    generic = sharekan.compress(sd, codebook_size=8, layout="generic", layout_options={
        "layers": [{"key": "layers.0.cheby_coeffs", "edges": "in,out,coef",
                    "basis": {"kind": "chebyshev", "degree": 3}, "name": "layers.0"}]})
    np.testing.assert_array_equal(auto.decompress()["layers.0.cheby_coeffs"],
                                  generic.decompress()["layers.0.cheby_coeffs"])


def test_generic_bspline_with_base_runs_on_the_evaluator():
    rng = np.random.default_rng(2)
    n_in, n_out = 6, 5
    sd = {"w": rng.normal(size=(n_out, n_in * 8)).astype(np.float32),
          "b": rng.normal(size=(n_out, n_in)).astype(np.float32)}
    layer = GenericLayer("w", edges="out,in*coef", base_key="b",
                         basis={"kind": "bspline", "grid_size": 5, "k": 3, "grid_range": (-1, 1)})
    model = sharekan.compress(sd, layout=GenericLayout([layer]), codebook_size=30, int8=False,
                              base="float", bias="edge")
    x = rng.uniform(-1.5, 1.5, size=(9, n_in))
    # the same checkpoint in efficient-kan layout gives the same function
    sd_ek = {"l.spline_weight": sd["w"].reshape(n_out, n_in, 8), "l.base_weight": sd["b"],
             "l.grid": np.tile(uniform_knots(5, 3), (n_in, 1)).astype(np.float32)}
    ref = sharekan.compress(sd_ek, codebook_size=30, int8=False, base="float", bias="edge")
    np.testing.assert_allclose(model.forward(x), ref.forward(x), rtol=1e-5, atol=1e-5)


def test_generic_errors_name_the_problem():
    sd = {"w": np.zeros((4, 7), dtype=np.float32)}
    with pytest.raises(sharekan.errors.LayoutError, match="does not fit"):
        sharekan.compress(sd, layout=GenericLayout(key="w", edges="out,in*coef", basis=Chebyshev(2)))
    with pytest.raises(sharekan.errors.InvalidInputError, match="exactly once"):
        GenericLayer("w", edges="out,in", basis=Chebyshev(2))
    with pytest.raises(sharekan.errors.InvalidInputError, match="needs the layers"):
        sharekan.compress(sd, layout="generic")
    with pytest.raises(sharekan.errors.LayoutError, match="GenericLayout"):
        sharekan.compress({"mystery": np.zeros((3, 3), dtype=np.float32)})
