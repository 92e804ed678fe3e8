"""sharekan.Config: defaults, validation, per-layer overrides, JSON round trip."""

from __future__ import annotations

import pytest

from sharekan import Config
from sharekan.errors import InvalidInputError


def test_defaults_match_the_spec():
    cfg = Config()
    assert (cfg.codebook_size, cfg.share, cfg.metric, cfg.int8, cfg.bias, cfg.base) == (
        256,
        "layer",
        "function",
        True,
        "auto",
        "int8",
    )
    assert (cfg.n_iter, cfg.tol, cfg.init, cfg.seed) == (25, 1e-4, "kmeans++", 0)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"codebook_size": 0}, "codebook_size=0"),
        ({"codebook_size": 70000}, "codebook_size=70000"),
        ({"codebook_size": 2.5}, "codebook_size=2.5"),
        ({"metric": "l1"}, "metric='l1'"),
        ({"bias": "none"}, "bias='none'"),
        ({"share": "global"}, "share='global'"),
        ({"base": "int2"}, "base='int2'"),
        ({"gain_bits": 6}, "gain_bits=6"),
        ({"n_iter": -1}, "n_iter=-1"),
        ({"tol": -0.1}, "tol=-0.1"),
        ({"seed": -3}, "seed=-3"),
        ({"input_range": (1.0, -1.0)}, "input_range"),
        ({"overrides": {"layers.*": {"colour": 1}}}, "colour"),
        ({"overrides": {"layers.*": {"codebook_size": 0}}}, "codebook_size=0"),
    ],
)
def test_bad_fields_raise_named_errors(changes, fragment):
    with pytest.raises(InvalidInputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Config(**changes)


def test_overrides_apply_by_pattern_in_order():
    cfg = Config(
        codebook_size=64,
        overrides={"layers.*": {"codebook_size": 16}, "layers.1": {"bias": "edge", "int8": False}},
    )
    assert cfg.for_layer("head").codebook_size == 64
    first = cfg.for_layer("layers.0")
    assert (first.codebook_size, first.bias, first.int8) == (16, "auto", True)
    second = cfg.for_layer("layers.1")
    assert (second.codebook_size, second.bias, second.int8) == (16, "edge", False)


def test_json_round_trip_and_replace():
    cfg = Config(codebook_size=32, input_range=(-1, 1), overrides={"a*": {"metric": "coefficient"}})
    again = Config.from_dict(__import__("json").loads(cfg.to_json()))
    assert again == cfg
    assert cfg.replace(seed=3).seed == 3
    with pytest.raises(InvalidInputError, match="unknown Config fields"):
        cfg.replace(codebooksize=3)
