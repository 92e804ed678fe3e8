"""Optional entropy coding of an artifact's tensors (format version 3, ARCHITECTURE §6).

`encode` zstd-compresses each tensor into a 1-D uint8 blob and keeps it only where that is
smaller than the raw bytes; multi-byte dtypes are byte-shuffled first (all first bytes,
then all second bytes, ...) when that compresses better. The returned table records, per
encoded tensor, what `decode` needs to restore it: codec, dtype, shape and shuffle.

`decode` reads untrusted input: every table field is checked, the decoded size of every
tensor and of all of them together is bounded before anything is allocated, and a zstd
frame must declare and produce exactly the bytes its table entry accounts for. Every
failure is an `ArtifactError` naming the tensor.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import zstandard

from .errors import ArtifactError, InvalidInputError

CODEC = "zstd"
DEFAULT_LEVEL = 19
#: Largest decoded tensor, and largest decoded total, `decode` accepts.
MAX_DECODED_BYTES = 1 << 31
#: A tensor is kept encoded only if it expands at most this much on decoding, so every
#: file `encode` produces decodes within `MAX_EXPANSION` x its size (the bound readers use).
MAX_EXPANSION = 64
#: dtypes (numpy `dtype.str`) that may be encoded. Bool is left out: decoded bytes other
#: than 0 / 1 would make an invalid bool array; other dtypes are stored raw.
DTYPES = frozenset(
    ["|u1", "|i1", "<u2", "<i2", "<f2", "<u4", "<i4", "<f4", "<u8", "<i8", "<f8"]
)
_ENTRY_KEYS = {"codec", "dtype", "shape", "shuffle"}
_MAX_NDIM = 32  # numpy's own limit is 64; artifacts hold at most 2-D tensors


def encode(
    tensors: Mapping[str, np.ndarray], level: int = DEFAULT_LEVEL
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """(stored tensors, entropy table) for `tensors`; deterministic, inputs untouched.

    Stored tensors have the same names: a zstd blob (1-D uint8) where the table has an
    entry for the name, the tensor itself otherwise.
    """
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
        raise InvalidInputError(f"zstd level {level!r}: expected an integer in [1, 22]")
    # no checksum (the artifact digest covers the blob); content size always written, as
    # `decode` requires it
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    stored: dict[str, np.ndarray] = {}
    table: dict[str, dict[str, Any]] = {}
    budget = MAX_DECODED_BYTES  # decoded total `decode` accepts
    for name in sorted(tensors):
        array = np.asarray(tensors[name], order="C")  # keeps 0-d arrays 0-d
        stored[name] = array
        raw = array.nbytes
        if array.dtype.str not in DTYPES or raw == 0 or raw > budget:
            continue
        blob, shuffle = _smallest(cctx, array)
        entry = {"codec": CODEC, "dtype": array.dtype.str, "shape": list(array.shape),
                 "shuffle": shuffle}
        # kept encoded only where it pays for its table entry too (small tensors rarely
        # do), and within the reader's expansion bound
        cost = len(blob) + len(table_json({name: entry}))
        if cost >= raw or raw > MAX_EXPANSION * len(blob):
            continue
        budget -= raw
        stored[name] = np.frombuffer(blob, dtype=np.uint8)
        table[name] = entry
    return stored, table


def table_json(table: Mapping[str, Any]) -> str:
    """The table as the artifact stores it (canonical: sorted keys, no spaces)."""
    return json.dumps(table, sort_keys=True, separators=(",", ":"))


def _smallest(cctx: zstandard.ZstdCompressor, array: np.ndarray) -> tuple[bytes, bool]:
    """The smaller of the plain and the byte-shuffled frame (plain on a tie)."""
    blob = cctx.compress(array.tobytes())
    if array.dtype.itemsize == 1:
        return blob, False
    shuffled = cctx.compress(_shuffle(array))
    return (shuffled, True) if len(shuffled) < len(blob) else (blob, False)


def _shuffle(array: np.ndarray) -> bytes:
    # byte planes: floats' sign / exponent bytes repeat far more than mantissa bytes
    planes = array.reshape(-1).view(np.uint8).reshape(-1, array.dtype.itemsize)
    return planes.T.tobytes()


def _unshuffle(data: bytes, itemsize: int) -> np.ndarray:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1)
    return np.ascontiguousarray(planes.T)


def decode(
    stored: Mapping[str, np.ndarray], table: Any, *, max_bytes: int
) -> dict[str, np.ndarray]:
    """The tensors `encode` was given, from its output (`stored`, `table`), both
    untrusted. Decoded bytes in all are at most `max_bytes` (and `MAX_DECODED_BYTES`).

    Raises:
        ArtifactError: any table entry, blob or frame that is not exactly what `encode`
            writes, naming the tensor.
    """
    if not isinstance(table, dict):
        raise ArtifactError(f"entropy table: expected a JSON object, got {type(table).__name__}")
    out = dict(stored)
    budget = min(max_bytes, MAX_DECODED_BYTES)
    for name in sorted(table):
        where = f"entropy-coded tensor {name!r}"
        if name not in stored:
            raise ArtifactError(f"{where}: the entropy table names a tensor the artifact "
                                "does not hold")
        dtype, shape, nbytes, shuffle = _check_entry(where, table[name])
        if nbytes > budget:
            raise ArtifactError(f"{where}: decodes to {nbytes} bytes, over the "
                                f"{min(max_bytes, MAX_DECODED_BYTES)}-byte bound for this file")
        budget -= nbytes
        data = _decompress(where, stored[name], nbytes)
        # a writable copy, like the arrays a plain artifact loads into
        if shuffle:
            values = _unshuffle(data, dtype.itemsize)
        else:
            values = np.frombuffer(data, dtype=np.uint8).copy()
        out[name] = values.view(dtype).reshape(shape)
    return out


def _check_entry(where: str, entry: Any) -> tuple[np.dtype[Any], tuple[int, ...], int, bool]:
    """dtype, shape, decoded byte count and shuffle flag of a table entry, checked."""
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        raise ArtifactError(f"{where}: table entry {entry!r}; expected an object with "
                            f"exactly {sorted(_ENTRY_KEYS)}")
    if entry["codec"] != CODEC:
        raise ArtifactError(f"{where}: unknown codec {entry['codec']!r}; expected {CODEC!r}")
    if entry["dtype"] not in DTYPES:
        raise ArtifactError(f"{where}: dtype {entry['dtype']!r} is not one of {sorted(DTYPES)}")
    shape = entry["shape"]
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ArtifactError(f"{where}: shape {shape!r}; expected a list of at most "
                            f"{_MAX_NDIM} non-negative integers")
    if not isinstance(entry["shuffle"], bool):
        raise ArtifactError(f"{where}: shuffle {entry['shuffle']!r}; expected true or false")
    dtype = np.dtype(entry["dtype"])
    nbytes = math.prod(shape) * dtype.itemsize  # exact: Python integers
    if nbytes == 0:
        raise ArtifactError(f"{where}: shape {shape} holds no values; empty tensors are "
                            "never entropy-coded")
    if nbytes > MAX_DECODED_BYTES:
        raise ArtifactError(f"{where}: shape {shape} of {entry['dtype']} is {nbytes} bytes, "
                            f"over the {MAX_DECODED_BYTES}-byte cap")
    return dtype, tuple(shape), nbytes, entry["shuffle"]


def _decompress(where: str, blob: np.ndarray, nbytes: int) -> bytes:
    """The single zstd frame `blob`, which must declare and hold exactly `nbytes`."""
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ArtifactError(f"{where}: stored as {blob.dtype} {blob.shape}; a zstd blob is "
                            "1-D uint8")
    data = np.ascontiguousarray(blob).tobytes()
    try:
        # zstandard allocates whatever the frame header declares: check it first
        declared = zstandard.frame_content_size(data)
        if declared != nbytes:
            shown = "no size" if declared < 0 else f"{declared} bytes"
            raise ArtifactError(f"{where}: the zstd frame declares {shown}; the table "
                                f"accounts for {nbytes}")
        out = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=nbytes, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise ArtifactError(f"{where}: corrupt zstd frame ({exc})") from None
    if len(out) != nbytes:  # libzstd checks this too; cheap to be sure
        raise ArtifactError(f"{where}: the zstd frame holds {len(out)} bytes; expected {nbytes}")
    return out


def sizes(tensors: Mapping[str, np.ndarray], level: int = DEFAULT_LEVEL) -> dict[str, Any]:
    """Raw and stored (entropy-coded, as `encode` keeps them) bytes per tensor and in
    total: {"tensors": {name: {"raw": n, "stored": n}}, "raw": n, "stored": n}."""
    stored, _ = encode(tensors, level)
    per = {
        name: {"raw": int(np.asarray(tensors[name]).nbytes), "stored": int(stored[name].nbytes)}
        for name in sorted(tensors)
    }
    return {
        "tensors": per,
        "raw": sum(e["raw"] for e in per.values()),
        "stored": sum(e["stored"] for e in per.values()),
    }


def pack_metadata(entries: Mapping[str, str], level: int = DEFAULT_LEVEL) -> str:
    """One metadata value holding `entries` (str -> str): their canonical JSON, zstd-coded,
    as `"<JSON bytes>:<base64 frame>"`. Deterministic. A many-layer artifact's header
    (report, layer table, entropy table) is mostly repeated JSON keys: this is where an
    entropy-coded artifact stops paying for them."""
    raw = json.dumps(dict(entries), sort_keys=True, separators=(",", ":")).encode()
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return f"{len(raw)}:" + base64.b64encode(cctx.compress(raw)).decode("ascii")


def unpack_metadata(value: Any, *, max_bytes: int) -> dict[str, str]:
    """The entries `pack_metadata` packed into `value` (untrusted): at most `max_bytes`
    (and `MAX_DECODED_BYTES`) of JSON, checked to be an object of strings.

    Raises:
        ArtifactError: anything but what `pack_metadata` writes."""
    where = "packed metadata"
    if not isinstance(value, str) or ":" not in value:
        raise ArtifactError(f"{where}: expected '<size>:<base64>', got {str(value)[:40]!r}")
    size, _, text = value.partition(":")
    if not (size.isascii() and size.isdigit()) or len(size) > 12:
        raise ArtifactError(f"{where}: size {size[:20]!r} is not a decimal byte count")
    nbytes = int(size)
    if not 0 < nbytes <= min(max_bytes, MAX_DECODED_BYTES):
        raise ArtifactError(f"{where}: declares {nbytes} bytes, outside (0, "
                            f"{min(max_bytes, MAX_DECODED_BYTES)}] for this file")
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArtifactError(f"{where}: not valid base64 ({exc})") from None
    data = _decompress(where, np.frombuffer(blob, dtype=np.uint8), nbytes)
    try:
        entries = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(entries, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in entries.items()):
        raise ArtifactError(f"{where}: expected a JSON object of strings")
    return entries
