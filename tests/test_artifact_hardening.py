"""Crafted artifacts: contents edited and the digest recomputed, as an attacker would.

Every case must fail with a specific ArtifactError before anything is allocated from the
edited values, and a file whose digest was not recomputed must fail the digest check,
whatever part of the header was edited (format version 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sharekan
from kan_fixtures import efficient_kan_state_dict
from sharekan import _core
from sharekan.artifact import seal, write
from sharekan.errors import ArtifactError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(7)
    sd = efficient_kan_state_dict(rng, [6, 5, 3], grid_size=5, k=3)
    model = sharekan.compress(sd, codebook_size=8, bias="edge")
    path = tmp_path_factory.mktemp("art") / "m.sharekan"
    model.save(path)
    return path, model


def _contents(path):
    tensors, metadata = _core.load_safetensors(str(path))
    return dict(tensors), dict(metadata)


def _edit_layer(metadata, index=0, **fields):
    layers = json.loads(metadata["layers"])
    layers[index].update(fields)
    metadata["layers"] = json.dumps(layers)


def _write(tmp_path, tensors, metadata, reseal=True, name="crafted.sharekan"):
    path = tmp_path / name
    write(path, tensors, seal(tensors, metadata) if reseal else metadata)
    return path


def _load_fails(tmp_path, tensors, metadata, match, reseal=True):
    path = _write(tmp_path, tensors, metadata, reseal)
    with pytest.raises(ArtifactError, match=match):
        sharekan.load(path)


def test_resealed_unchanged_artifact_loads(saved, tmp_path):
    path, model = saved
    tensors, metadata = _contents(path)
    again = sharekan.load(_write(tmp_path, tensors, metadata))
    x = np.linspace(-1, 1, 18, dtype=np.float32).reshape(3, 6)
    np.testing.assert_array_equal(again.forward(x), model.forward(x))


@pytest.mark.parametrize(
    "fields, match",
    [
        # 4 TiB of codes asked for: refused before any allocation
        ({"bits": 0, "n_in": 1 << 20, "n_out": 1 << 20}, "edges exceeds"),
        ({"bits": 0, "codebook_size": 5}, "bits=0 but a 5-word codebook needs 3"),
        ({"codebook_size": 2**40}, "codebook_size: 1099511627776 is outside"),
        ({"grid_size": -3}, "grid_size: -3 is outside"),
        ({"spline_order": 16384}, "spline_order: 16384 is outside"),
        ({"spline_order": 2**63}, "spline_order"),
        ({"n_in": 0}, "n_in: 0 is outside"),
        ({"n_in": True}, "wrong type"),
        ({"n_out": 6}, "expected shape"),
        ({"codebook_size": 16, "bits": 4}, "codebook shape"),
        ({"basis": {"kind": "rbf", "h": 1.0}}, "spline_order=3 for a rbf basis"),
        ({"basis": {"kind": "bspline", "k": 2}}, "differs from spline_order"),
        ({"semantics": {"base_activation": "relu"}}, "base_activation 'relu'"),
        ({"semantics": {"input_norm": "batchnorm"}}, "input_norm"),
        ({"layout_info": {"layernorm_eps": -1.0}}, "layernorm_eps"),
        ({"layout_info": {"layernorm_eps": float("nan")}}, "layernorm_eps"),
        ({"source": {"spline_weight": {"key": "layers.0.spline_weight",
                                        "shape": [1 << 20, 1 << 20], "dtype": "float32"}}},
         "more than the layer"),
        ({"source": {"spline_weight": {"key": "layers.0.spline_weight",
                                        "shape": [5, 6, 8], "dtype": "object"}}}, "dtype"),
        ({"codebook_group": "nowhere"}, "no codebook tensor"),
    ],
)
def test_inconsistent_layer_metadata(saved, tmp_path, fields, match):
    tensors, metadata = _contents(saved[0])
    _edit_layer(metadata, **fields)
    _load_fails(tmp_path, tensors, metadata, match)


def test_rbf_width_checked(tmp_path):
    torch = pytest.importorskip("torch")
    from fixtures_kan_libraries import FastKAN

    torch.manual_seed(0)
    model = sharekan.compress(FastKAN([4, 3]).state_dict(), codebook_size=4)
    model.save(tmp_path / "f.sharekan")
    for h in (0.0, -1.0, float("nan"), 1e-45, 1e39):
        tensors, metadata = _contents(tmp_path / "f.sharekan")
        layer = json.loads(metadata["layers"])[0]
        _edit_layer(metadata, basis=dict(layer["basis"], h=h))
        _load_fails(tmp_path, tensors, metadata, "basis h")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.pop("layers.0.codes"), "codes.*missing"),
        (lambda t: t.update({"layers.0.codes": t["layers.0.codes"][:-1]}), "codes.*shape"),
        (lambda t: t.update({"layers.0.grid": t["layers.0.grid"].astype(np.float64)}), "dtype"),
        (lambda t: t.update({"layers.0.grid": t["layers.0.grid"][:, ::-1].copy()}),
         "strictly increasing"),
        (lambda t: t.update({"layers.0.grid": np.full_like(t["layers.0.grid"], np.inf)}),
         "NaN or Inf"),
        (lambda t: t.update({"codebooks.layers.0.codebook_scale":
                             np.full_like(t["codebooks.layers.0.codebook_scale"], np.nan)}),
         "NaN or Inf"),
        (lambda t: t.update({"layers.0.gains": np.zeros((6, 5), np.float32)}), "stored twice"),
        (lambda t: t.pop("layers.0.gains_scale"), "gains_scale.*missing"),
        (lambda t: t.update({"layers.0.bogus": np.zeros(3, np.float32)}), "unknown field"),
        (lambda t: t.update({"stray": np.zeros(3, np.float32)}), "claims"),
        (lambda t: t.update({"layers.0.extra_norm_weight": np.zeros(7, np.float32)}),
         "extra_norm_weight.*shape"),
    ],
)
def test_inconsistent_tensors(saved, tmp_path, edit, match):
    tensors, metadata = _contents(saved[0])
    edit(tensors)
    _load_fails(tmp_path, tensors, metadata, match)


def test_inconsistent_model_metadata(saved, tmp_path):
    path = saved[0]
    tensors, metadata = _contents(path)
    metadata["key_order"] = json.dumps(json.loads(metadata["key_order"])[1:])
    _load_fails(tmp_path, tensors, metadata, "key_order")
    for status in ("bogus", "passthrough"):
        tensors, metadata = _contents(path)
        report = json.loads(metadata["report"])
        report["tensors"][0]["status"] = status
        metadata["report"] = json.dumps(report)
        _load_fails(tmp_path, tensors, metadata, "status|listed as")
    tensors, metadata = _contents(path)
    metadata["layers"] = "[{"
    _load_fails(tmp_path, tensors, metadata, "not valid JSON")
    tensors, metadata = _contents(path)
    metadata["layers"] = json.dumps(json.loads(metadata["layers"]) * 2)
    _load_fails(tmp_path, tensors, metadata, "appears twice")


@pytest.mark.parametrize("key", ["layers", "report", "config", "source_layout", "key_order"])
def test_metadata_edits_without_new_digest_are_detected(saved, tmp_path, key):
    tensors, metadata = _contents(saved[0])
    metadata[key] = metadata[key].replace("3", "4", 1) if "3" in metadata[key] else metadata[key] + " "
    _load_fails(tmp_path, tensors, metadata, "metadata and tensor data checksum", reseal=False)


def test_semantics_edit_is_covered_by_the_digest(saved, tmp_path):
    # a valid but different base activation would change outputs silently: version 2
    # digests it, so only someone who recomputes the digest on purpose can change it
    tensors, metadata = _contents(saved[0])
    _edit_layer(metadata, semantics={"base_activation": "gelu"})
    _load_fails(tmp_path, tensors, metadata, "checksum mismatch", reseal=False)


def test_format_version_1_still_loads(saved, tmp_path):
    path, model = saved
    tensors, metadata = _contents(path)
    metadata["format_version"] = "1"
    old = _write(tmp_path, tensors, metadata)  # sealed with the tensors-only checksum
    assert _core.load_safetensors(str(old))[1]["checksum"] == sharekan.artifact.checksum(tensors)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(sharekan.load(old).forward(x), model.forward(x))
    # version 1 does not cover the metadata, but its values are still validated
    _edit_layer(metadata, bits=0)
    _load_fails(tmp_path, tensors, metadata, "bits=0")
    metadata["format_version"] = "4"
    _load_fails(tmp_path, tensors, metadata, "version '4' is not supported")


def test_unpack_codes_refuses_impossible_count():
    with pytest.raises(sharekan.errors.InvalidInputError, match="cannot allocate"):
        _core.unpack_codes(np.zeros(0, np.uint8), 0, 2**62)


def test_source_description_must_match_rebuilt_tensors(saved, tmp_path):
    tensors, metadata = _contents(saved[0])
    layer = json.loads(metadata["layers"])[0]
    source = layer["source"]
    source["spline_weight"] = dict(source["spline_weight"], shape=[6, 5, 8])  # (n_out, n_in, M) swapped
    _edit_layer(metadata, source=source)
    model = sharekan.load(_write(tmp_path, tensors, metadata))  # bounded: loads
    with pytest.raises(ArtifactError, match="rebuilds as"):
        model.decompress()
