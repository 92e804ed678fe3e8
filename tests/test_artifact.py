"""Artifacts: save -> load -> decompress round trip, and damaged files rejected cleanly."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sharekan
from kan_fixtures import efficient_kan_state_dict
from sharekan.errors import ArtifactError


@pytest.fixture
def model(rng):
    sd = efficient_kan_state_dict(rng, [7, 9, 4], grid_size=5, k=3)
    sd["norm.weight"] = np.arange(4, dtype=np.float32)
    return sharekan.compress(sd, codebook_size=16, bias="edge")


@pytest.mark.parametrize(
    "options", [{}, {"int8": False, "base": "float"}, {"bias": "fold"}, {"share": "model"}]
)
def test_save_load_decompress_round_trip(tmp_path, rng, options):
    sd = efficient_kan_state_dict(rng, [7, 9, 4], grid_size=5, k=3)
    sd["norm.weight"] = np.arange(4, dtype=np.float32)
    model = sharekan.compress(sd, codebook_size=16, **options)
    path = tmp_path / "m.sharekan"
    model.save(path)
    again = sharekan.load(path)
    assert again.nbytes == model.nbytes
    assert again.config == model.config
    assert [r.name for r in again.report.layers] == [r.name for r in model.report.layers]
    before, after = model.decompress(), again.decompress()
    assert list(before) == list(after) == list(sd)
    for key in before:
        assert after[key].dtype == sd[key].dtype and after[key].shape == sd[key].shape
        np.testing.assert_array_equal(before[key], after[key])
    x = rng.uniform(-1.2, 1.2, size=(5, 7)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), again.forward(x))
    # the file is not bigger than what the report accounts for, plus a bounded header
    size = path.stat().st_size
    assert model.nbytes < size < model.nbytes + 64 * 1024


def test_header_metadata(tmp_path, model):
    path = tmp_path / "m.sharekan"
    model.save(path)
    tensors, meta = sharekan.artifact.read(path)
    assert meta["format"] == "sharekan" and meta["format_version"] == "2"
    assert meta["source_layout"] == "efficient-kan"
    assert json.loads(meta["config"])["codebook_size"] == 16
    assert len(meta["checksum"]) == 64
    layers = json.loads(meta["layers"])
    assert [m["name"] for m in layers] == ["layers.0", "layers.1"]
    assert tensors["layers.0.codes"].dtype == np.uint8
    assert tensors["layers.0.codes"].size == (7 * 9 * 4 + 7) // 8


def test_truncated_file(tmp_path, model):
    path = tmp_path / "m.sharekan"
    model.save(path)
    data = path.read_bytes()
    for cut in (0, 7, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.sharekan"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtifactError):
            sharekan.load(bad)


def test_bit_flips_are_detected(tmp_path, model):
    path = tmp_path / "m.sharekan"
    model.save(path)
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    rng = np.random.default_rng(0)
    positions = list(rng.integers(8 + header_len, len(data), size=20)) + [
        8 + header_len,
        len(data) - 1,
    ]
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad = tmp_path / "flip.sharekan"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ArtifactError, match="checksum"):
            sharekan.load(bad)
    # a flip inside the JSON header: unparsable, or a changed tensor entry or metadata
    # value, which the format version 2 digest covers
    for pos in (10, 8 + header_len // 2, 8 + header_len - 2):
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        bad = tmp_path / "hflip.sharekan"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ArtifactError):
            sharekan.load(bad)


def test_not_an_artifact(tmp_path):
    missing = tmp_path / "missing.sharekan"
    with pytest.raises(FileNotFoundError):
        sharekan.load(missing)
    other = tmp_path / "plain.safetensors"
    sharekan._core.save_safetensors(str(other), {"a": np.zeros(3, np.float32)}, {"format": "pt"})
    with pytest.raises(ArtifactError, match="not a sharekan artifact"):
        sharekan.load(other)
    junk = tmp_path / "junk.sharekan"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ArtifactError):
        sharekan.load(junk)
