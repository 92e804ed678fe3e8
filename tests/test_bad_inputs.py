"""SPEC §6 at the public API: each bad input gets its specific exception, naming the tensor
and the values, and the caller's arrays are left unmodified."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import sharekan
from kan_fixtures import efficient_kan_state_dict
from sharekan import errors


@pytest.fixture
def sd(rng):
    return efficient_kan_state_dict(rng, [4, 5, 3], grid_size=4, k=3)


def _expect(sd, exc, match, **kwargs):
    before = copy.deepcopy(sd)
    with pytest.raises(exc, match=match):
        sharekan.compress(sd, **kwargs)
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(sd[key], value)


def test_nan_and_inf_coefficients(sd):
    sd["layers.1.spline_weight"][2, 1, 3] = np.nan
    _expect(sd, errors.NonFiniteError, r"layers\.1\.spline_weight.*\(2, 1, 3\)", codebook_size=4)
    sd["layers.1.spline_weight"][2, 1, 3] = 0.0
    sd["layers.0.base_weight"][0, 0] = np.inf
    _expect(sd, errors.NonFiniteError, r"layers\.0\.base_weight", codebook_size=4)


def test_empty_and_mismatched_shapes(sd):
    _expect({}, errors.ShapeError, "empty")
    bad = dict(sd, **{"layers.0.spline_weight": np.zeros((5, 0, 7), np.float32)})
    _expect(bad, errors.ShapeError, r"layers\.0\.spline_weight.*empty")
    bad = dict(sd, **{"layers.0.base_weight": np.zeros((5, 3), np.float32)})
    _expect(bad, errors.LayoutError, r"layers\.0\.base_weight.*\(5, 4\)")
    bad = dict(sd, **{"layers.0.grid": np.zeros((3, 12), np.float32)})
    _expect(bad, errors.LayoutError, r"layers\.0\.grid")
    bad = dict(sd, **{"layers.0.grid": sd["layers.0.grid"][:, ::-1].copy()})
    _expect(bad, errors.LayoutError, "increase strictly")
    bad = dict(sd, **{"layers.0.spline_scaler": np.ones((4, 5), np.float32)})
    _expect(bad, errors.LayoutError, r"layers\.0\.spline_scaler")


def test_unknown_layout():
    _expect(
        {"fc.weight": np.zeros((3, 4), np.float32)},
        errors.LayoutError,
        r"no KAN layout.*fc\.weight",
    )
    with pytest.raises(errors.LayoutError, match="unknown layout"):
        sharekan.compress({"a": np.zeros(2)}, layout="keras")


def test_codebook_size_bounds(sd):
    _expect(sd, errors.InvalidInputError, "codebook_size=0", codebook_size=0)
    _expect(sd, errors.InvalidInputError, r"layers\.1.*K=16 exceeds its 15 edges", codebook_size=16)


def test_wrong_dtypes(sd):
    bad = dict(sd, **{"layers.0.spline_weight": sd["layers.0.spline_weight"].astype(np.int32)})
    _expect(bad, errors.DTypeError, r"layers\.0\.spline_weight.*int32")
    with pytest.raises(errors.DTypeError, match="expected a numpy array"):
        sharekan.compress({"layers.0.spline_weight": "abc"})
    with pytest.raises(errors.InvalidInputError, match="config"):
        sharekan.compress(sd, config={"codebook_size": 4})


def test_bad_calibration(sd):
    _expect(sd, errors.ShapeError, "calibration", codebook_size=4, calibration=np.zeros((3, 7)))
    _expect(
        sd,
        errors.NonFiniteError,
        "calibration",
        codebook_size=4,
        calibration=np.full((3, 4), np.nan),
    )
    _expect(
        sd,
        errors.InvalidInputError,
        "no KAN layer named",
        codebook_size=4,
        calibration={"layers.9": np.zeros((3, 4))},
    )


def test_forward_rejects_wrong_width(sd):
    model = sharekan.compress(sd, codebook_size=4)
    with pytest.raises(errors.ShapeError, match=r"\(batch, 4\)"):
        model.forward(np.zeros((2, 5), np.float32))
