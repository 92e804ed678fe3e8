"""Entropy-coded artifacts (format version 3, `sharekan.entropy`): round trips, determinism,
and crafted files (contents edited, digest recomputed) rejected with a specific
ArtifactError before anything large is allocated."""

from __future__ import annotations

import base64
import json
import resource

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sharekan
from kan_fixtures import efficient_kan_state_dict
from sharekan import _core, artifact, entropy, schema
from sharekan.artifact import seal, write
from sharekan.entropy import pack_metadata, unpack_metadata
from sharekan.schema import PACKED_ENTRIES, PACKED_KEY
from sharekan.errors import ArtifactError, InvalidInputError

GB = 1 << 30


def _model(options):
    sd = efficient_kan_state_dict(np.random.default_rng(3), [32, 48, 8], grid_size=5, k=3)
    sd["norm.weight"] = np.linspace(0, 1, 512, dtype=np.float32)  # passthrough, compressible
    return sharekan.compress(sd, codebook_size=16, **options)


@pytest.fixture(scope="module")
def model():
    return _model({"int8": False, "base": "float"})  # float32 weights: the shuffle pays


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("entropy") / "m.sharekan"
    artifact.save(model, path, entropy="zstd")
    return path


def _contents(path):
    """Tensors and metadata as stored, a version-3 header's packed entries unpacked (the
    reader takes them either way)."""
    tensors, metadata = _core.load_safetensors(str(path))
    metadata = dict(metadata)
    if PACKED_KEY in metadata:
        metadata.update(unpack_metadata(metadata.pop(PACKED_KEY), max_bytes=1 << 24))
    return dict(tensors), metadata


def _write(tmp_path, tensors, metadata, name="crafted.sharekan"):
    path = tmp_path / name
    write(path, tensors, seal(tensors, metadata))
    return path


def _table(metadata):
    return json.loads(metadata["entropy"])


def _set_table(metadata, table):
    metadata["entropy"] = json.dumps(table)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("options", [{}, {"int8": False, "base": "float"}, {"share": "model"}])
def test_round_trip(tmp_path, options):
    model = _model(options)
    plain, coded = tmp_path / "plain.sharekan", tmp_path / "coded.sharekan"
    artifact.save(model, plain)
    artifact.save(model, coded, entropy="zstd")
    (t2, m2), (t3, m3) = artifact.read(plain), artifact.read(coded)
    assert m2["format_version"] == "2" and m3["format_version"] == "3"
    assert sorted(t3) == sorted(t2)
    for name in t2:
        assert t3[name].dtype == t2[name].dtype and t3[name].shape == t2[name].shape, name
        np.testing.assert_array_equal(t3[name], t2[name])
        assert t3[name].flags.writeable
    again = sharekan.load(coded)
    x = np.random.default_rng(0).uniform(-1.2, 1.2, size=(6, 32)).astype(np.float32)
    np.testing.assert_array_equal(again.forward(x), model.forward(x))
    for key, value in model.decompress().items():
        np.testing.assert_array_equal(again.decompress()[key], value)


def test_smaller_and_deterministic(tmp_path, model, saved):
    plain = tmp_path / "plain.sharekan"
    artifact.save(model, plain)
    assert saved.stat().st_size < 0.95 * plain.stat().st_size
    again = tmp_path / "again.sharekan"
    artifact.save(model, again, entropy="zstd")
    assert again.read_bytes() == saved.read_bytes()
    table = _table(_contents(saved)[1])
    assert table["layers.0.gains"]["shuffle"] is True
    assert table["passthrough.norm.weight"]["dtype"] == "<f4"


def test_plain_save_unchanged(tmp_path, model):
    ours, theirs = tmp_path / "ours.sharekan", tmp_path / "schema.sharekan"
    artifact.save(model, ours)
    schema.save(model, theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    metadata = _contents(ours)[1]
    assert metadata["format_version"] == "2" and "entropy" not in metadata


@pytest.mark.parametrize("bad", ["gzip", "", "ZSTD", True, 3])
def test_unknown_entropy_option(tmp_path, model, bad):
    with pytest.raises(InvalidInputError, match="entropy="):
        artifact.save(model, tmp_path / "m.sharekan", entropy=bad)
    assert not (tmp_path / "m.sharekan").exists()


def test_digest_covers_stored_bytes(tmp_path, saved):
    tensors, metadata = _contents(saved)
    blob = tensors["layers.0.gains"].copy()
    blob[len(blob) // 2] ^= 0x55
    tensors["layers.0.gains"] = blob
    path = tmp_path / "flipped.sharekan"
    write(path, tensors, metadata)  # not resealed
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        sharekan.load(path)


# ---------------------------------------------------------------------------- the codec alone

_dtypes = st.sampled_from(["|u1", "|i1", "<i2", "<u2", "<f2", "<i4", "<u4", "<f4", "<i8", "<f8"])


@given(
    arrays=st.lists(
        _dtypes.flatmap(lambda d: hnp.arrays(
            np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=20),
            elements=st.integers(0, 3) if np.dtype(d).kind in "iu" else None,
        )),
        min_size=1, max_size=4,
    ),
    repeat=st.integers(1, 50),
)
def test_codec_round_trip(arrays, repeat):
    # `repeat` tiles the array so some are worth encoding
    tensors = {f"t{i}": np.tile(a, repeat) if a.ndim else a for i, a in enumerate(arrays)}
    before = {k: v.copy() for k, v in tensors.items()}
    stored, table = entropy.encode(tensors, level=3)
    again = entropy.encode(tensors, level=3)
    assert again[1] == table and all(again[0][k].tobytes() == stored[k].tobytes() for k in stored)
    decoded = entropy.decode(stored, json.loads(entropy.table_json(table)), max_bytes=GB)
    for name, array in tensors.items():
        assert array.tobytes() == before[name].tobytes()  # inputs untouched
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
        assert decoded[name].tobytes() == array.tobytes()  # NaN payloads included
        if name in table:
            assert stored[name].dtype == np.uint8 and stored[name].nbytes < array.nbytes


def test_codec_leaves_some_tensors_raw():
    tensors = {
        "bool": np.zeros(10_000, dtype=bool),  # not an encodable dtype
        "empty": np.zeros((0, 5), dtype=np.float32),
        "noise": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8),
        "zeros": np.zeros(1 << 20, dtype=np.uint8),  # would expand > MAX_EXPANSION x
        "ramp": np.arange(5000, dtype=np.float32),
    }
    stored, table = entropy.encode(tensors)
    assert set(table) == {"ramp"}
    for name in ("bool", "empty", "noise", "zeros"):
        assert stored[name] is tensors[name] or np.array_equal(stored[name], tensors[name])
    report = entropy.sizes(tensors)
    assert report["tensors"]["ramp"]["stored"] == stored["ramp"].nbytes
    assert report["raw"] == sum(t.nbytes for t in tensors.values())
    assert report["stored"] == sum(s.nbytes for s in stored.values()) < report["raw"]
    with pytest.raises(ArtifactError, match="bound"):
        entropy.decode(stored, table, max_bytes=5000 * 4 - 1)
    with pytest.raises(InvalidInputError, match="level"):
        entropy.encode(tensors, level=0)


# ---------------------------------------------------------------------------- crafted files


def _frame_with_size(data: bytes, declared: int) -> bytes:
    """A zstd frame of `data` whose header claims `declared` bytes (same field width)."""
    frame = bytearray(zstandard.ZstdCompressor(level=1).compress(data))
    fhd = frame[4]
    single, dict_flag, fcs_flag = (fhd >> 5) & 1, fhd & 3, fhd >> 6
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    value = declared - 256 if width == 2 else declared
    frame[pos:pos + width] = value.to_bytes(width, "little")
    return bytes(frame)


@pytest.fixture(scope="module")
def bombs():
    """Tiny frames of 1 GB of zeros: one declaring its size, one not."""
    out = {}
    for name, size in (("declared", GB), ("undeclared", None)):
        cctx = zstandard.ZstdCompressor(level=1, write_content_size=size is not None)
        obj = cctx.compressobj(size=size if size is not None else -1)
        chunk = bytes(1 << 22)
        parts = [obj.compress(chunk) for _ in range(GB // len(chunk))]
        out[name] = np.frombuffer(b"".join(parts) + obj.flush(), dtype=np.uint8)
        assert out[name].nbytes < 200_000
    return out


def _gains(tensors):
    return tensors["layers.0.gains"]  # f32 (32, 48): 6144 bytes decoded


def _entry(table, **fields):
    table["layers.0.gains"].update(fields)
    return table


def _case(name, tensors, metadata, bombs):
    """Edit a copy of the saved contents as case `name`; returns the message expected."""
    table = _table(metadata)
    if name == "truncated blob":
        tensors["layers.0.gains"] = _gains(tensors)[:-7]
        return "layers.0.gains.*corrupt zstd frame"
    if name == "another tensor's blob":
        tensors["layers.0.gains"] = tensors["layers.1.gains"]
        return r"layers.0.gains.*declares 1536 bytes; the table accounts for 6144"
    if name == "shape too large":
        _set_table(metadata, _entry(table, shape=[GB // 4]))
        return "layers.0.gains.*over the .*-byte bound"
    if name == "shape beyond cap":
        _set_table(metadata, _entry(table, shape=[1 << 40, 1 << 40]))
        return "layers.0.gains.*over the 2147483648-byte cap"
    if name == "shape too small":
        _set_table(metadata, _entry(table, shape=[32, 47]))
        return "layers.0.gains.*declares 6144 bytes; the table accounts for 6016"
    if name == "bomb declaring 1 GB":
        tensors["layers.0.gains"] = bombs["declared"]
        return f"layers.0.gains.*declares {GB} bytes; the table accounts for 6144"
    if name == "bomb declaring nothing":
        tensors["layers.0.gains"] = bombs["undeclared"]
        return "layers.0.gains.*declares no size"
    if name == "frame producing more than it declares":
        frame = _frame_with_size(bytes(range(256)) * 48, 6144)  # 12288 bytes
        tensors["layers.0.gains"] = np.frombuffer(frame, dtype=np.uint8)
        return "layers.0.gains.*corrupt zstd frame"
    if name == "trailing data":
        tensors["layers.0.gains"] = np.concatenate([_gains(tensors), _gains(tensors)[:9]])
        return "layers.0.gains.*corrupt zstd frame.*unused data"
    if name == "blob not uint8":
        tensors["layers.0.gains"] = _gains(tensors).view(np.int8)
        return "layers.0.gains.*1-D uint8"
    if name == "unknown codec":
        _set_table(metadata, _entry(table, codec="lz4"))
        return "layers.0.gains.*unknown codec 'lz4'"
    if name == "bad dtype":
        _set_table(metadata, _entry(table, dtype="|O"))
        return "layers.0.gains.*dtype '|O' is not one of"
    if name == "bool dtype":
        _set_table(metadata, _entry(table, dtype="|b1", shape=[6144]))
        return "layers.0.gains.*dtype '|b1'"
    if name == "negative shape":
        _set_table(metadata, _entry(table, shape=[-32, -48]))
        return "layers.0.gains.*shape \\[-32, -48\\]"
    if name == "shape of floats":
        _set_table(metadata, _entry(table, shape=[32.0, 48]))
        return "layers.0.gains.*list of at most"
    if name == "shape not a list":
        _set_table(metadata, _entry(table, shape="32x48"))
        return "layers.0.gains.*list of at most"
    if name == "empty shape":
        _set_table(metadata, _entry(table, shape=[0, 48]))
        return "layers.0.gains.*holds no values"
    if name == "shuffle not a bool":
        _set_table(metadata, _entry(table, shuffle=1))
        return "layers.0.gains.*shuffle 1"
    if name == "extra key":
        _set_table(metadata, _entry(table, level=19))
        return "layers.0.gains.*expected an object with exactly"
    if name == "entry not an object":
        table["layers.0.gains"] = "zstd"
        _set_table(metadata, table)
        return "layers.0.gains.*expected an object"
    if name == "non-JSON table":
        metadata["entropy"] = "{'layers.0.gains': zstd"
        return r"metadata\['entropy'\]: not valid JSON"
    if name == "table not an object":
        _set_table(metadata, [table])
        return r"metadata\['entropy'\]: expected a JSON dict"
    if name == "table missing":
        del metadata["entropy"]
        return "missing entry 'entropy'"
    if name == "table naming a missing tensor":
        table["layers.7.gains"] = table["layers.0.gains"]
        _set_table(metadata, table)
        return "layers.7.gains.*does not hold"
    if name == "table omitting a tensor":
        del table["layers.0.gains"]
        _set_table(metadata, table)
        return "layers.0.gains.*expected dtype float32, got uint8"  # validate rejects the blob
    if name == "unknown version":
        metadata["format_version"] = "4"
        return "format version '4' is not supported"
    raise AssertionError(name)


CASES = [
    "truncated blob", "another tensor's blob", "shape too large", "shape beyond cap",
    "shape too small", "bomb declaring 1 GB", "bomb declaring nothing",
    "frame producing more than it declares", "trailing data", "blob not uint8",
    "unknown codec", "bad dtype", "bool dtype", "negative shape", "shape of floats",
    "shape not a list", "empty shape", "shuffle not a bool", "extra key",
    "entry not an object", "non-JSON table", "table not an object", "table missing",
    "table naming a missing tensor", "table omitting a tensor", "unknown version",
]


@pytest.mark.parametrize("case", CASES)
def test_crafted_file_rejected(tmp_path, saved, bombs, case):
    tensors, metadata = _contents(saved)
    match = _case(case, tensors, metadata, bombs)
    path = _write(tmp_path, tensors, metadata)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ArtifactError, match=match):
        sharekan.load(path)
    # no large allocation: the peak grew by far less than the 1 GB the bombs hold
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 128 * 1024


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_byte_flips_in_blobs(tmp_path, saved, data):
    tensors, metadata = _contents(saved)
    name = data.draw(st.sampled_from(sorted(_table(metadata))))
    blob = tensors[name].copy()
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    tensors[name] = blob
    path = _write(tmp_path, tensors, metadata)
    try:
        sharekan.load(path)  # a flip in an entropy-coded payload may still decode
    except ArtifactError:
        pass


# ---------------------------------------------------------------------------- packed header


def test_header_is_packed(saved, model):
    _, stored = _core.load_safetensors(str(saved))
    assert PACKED_KEY in stored and not set(PACKED_ENTRIES) & set(stored)
    _, metadata = artifact.read(saved)
    assert set(PACKED_ENTRIES) <= set(metadata) and PACKED_KEY not in metadata
    assert json.loads(metadata["config"]) == model.config.to_dict()


@pytest.mark.parametrize("edit,match", [
    (lambda v: "x" + v, "decimal byte count"),
    (lambda v: v.replace(":", ";", 1), "<size>:<base64>"),
    (lambda v: v[: len(v) - 8], "base64|zstd"),
    (lambda v: "1" + v, "declares|zstd"),  # size 10x larger than the frame's
    (lambda v: f"{1 << 36}:" + v.partition(":")[2], "outside"),
    (lambda v: "5:" + base64.b64encode(zstandard.ZstdCompressor().compress(b"[1,2]")).decode(),
     "object of strings"),
    (lambda v: "5:" + base64.b64encode(zstandard.ZstdCompressor().compress(b"{oops")).decode(),
     "JSON"),
])
def test_crafted_packed_header(saved, tmp_path, edit, match):
    tensors, stored = _core.load_safetensors(str(saved))
    stored = dict(stored)
    stored[PACKED_KEY] = edit(stored[PACKED_KEY])
    with pytest.raises(ArtifactError, match=match):
        sharekan.load(_write(tmp_path, dict(tensors), stored))


@pytest.mark.parametrize("extra", [{"report": "{}"}, {"surprise": "1"}])
def test_packed_header_cannot_shadow_or_add_entries(saved, tmp_path, extra):
    tensors, stored = _core.load_safetensors(str(saved))
    stored = dict(stored)
    entries = unpack_metadata(stored[PACKED_KEY], max_bytes=1 << 24)
    if "report" in extra:  # packed and plain at once
        stored.update(extra)
    else:
        entries.update(extra)
    stored[PACKED_KEY] = pack_metadata(entries)
    with pytest.raises(ArtifactError, match="packed metadata"):
        sharekan.load(_write(tmp_path, dict(tensors), stored))
