"""The sharekan artifact: a safetensors file of plain tensors (codes bit-packed into uint8)
whose header metadata names the format, version, source layout, per-layer parameters,
config, report and a SHA-256 digest (ARCHITECTURE §6).

Format version 2 (written since 0.1): the digest covers every metadata entry as well as
the tensors. Version 1 (digest over the tensors only) is still read. The digest detects
corruption, not tampering (anyone can recompute it), so `load` also validates every
field against every other before allocating anything (`sharekan.schema`).

Format version 3 is version 2 with its tensors entropy-coded (`save(..., entropy="zstd")`,
`sharekan.entropy`): the metadata entry `entropy` lists the encoded tensors, and the
digest covers the stored (encoded) bytes, so corruption is caught before anything is
decompressed. `read` decodes them, within `MAX_EXPANSION` (64) x the file size in all
(at most 2 GiB), and returns the runtime tensors, the same as version 2 would hold.

This module reads artifacts (`read`, `load`) and is the public face of the format:
`save` (plain or entropy-coded) is defined here; `write`, `seal`, `digest`, `checksum`
and the version-2 constants are defined in `sharekan.schema` (below the compressed types,
whose `save` method uses them) and re-exported here."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core
from .compressed import CompressedLayer, CompressedModel
from .config import Config
from .entropy import MAX_EXPANSION, decode, unpack_metadata
from .errors import ArtifactError, ShareKanError
from .report import Report
from .schema import (
    DIGEST_KEY,
    ENTROPY_CODECS,
    ENTROPY_KEY,
    ENTROPY_VERSION,
    FORMAT,
    PACKED_ENTRIES,
    PACKED_KEY,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    checksum,
    digest,
    parse_json,
    save,
    seal,
    validate,
    write,
)

__all__ = [
    "DIGEST_KEY",
    "ENTROPY_CODECS",
    "ENTROPY_KEY",
    "ENTROPY_VERSION",
    "FORMAT",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "checksum",
    "digest",
    "load",
    "read",
    "save",
    "seal",
    "write",
]

def read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a sharekan artifact, verified (format, version, checksum).

    A version-3 file's tensors are returned decoded (its metadata as stored: the digest
    covers the encoded tensors); they may decode to at most `MAX_EXPANSION` x the file
    size in all, and 2 GiB (`sharekan.entropy.MAX_DECODED_BYTES`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such artifact: {path!r}")
    try:
        tensors, metadata = _core.load_safetensors(path)
    except ShareKanError:
        raise
    except ValueError as exc:  # e.g. NumPy refusing a tensor the header describes
        raise ArtifactError(f"{path!r}: unreadable tensor: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise ArtifactError(
            f"{path!r} is a safetensors file but not a sharekan artifact "
            f"(format={metadata.get('format')!r})"
        )
    version = metadata.get("format_version")
    readable = (*READABLE_VERSIONS, ENTROPY_VERSION)
    if version not in readable:
        raise ArtifactError(
            f"{path!r}: format version {version!r} is not supported "
            f"(this sharekan reads versions {', '.join(readable)})"
        )
    expected, actual = metadata.get(DIGEST_KEY), seal(tensors, metadata)[DIGEST_KEY]
    if expected != actual:
        covered = "tensor data" if version == "1" else "metadata and tensor data"
        raise ArtifactError(
            f"{path!r}: {covered} checksum mismatch (stored {expected}, computed {actual}); "
            "the file is corrupted"
        )
    if version == ENTROPY_VERSION:
        try:
            metadata = _unpacked(metadata, MAX_EXPANSION * os.path.getsize(path))
            table = parse_json(metadata, ENTROPY_KEY, dict)
            tensors = decode(tensors, table, max_bytes=MAX_EXPANSION * os.path.getsize(path))
        except ArtifactError as exc:
            raise ArtifactError(f"{path!r}: {exc}") from None
    return tensors, metadata


def _unpacked(metadata: dict[str, str], max_bytes: int) -> dict[str, str]:
    """A version-3 header with its packed entries (`schema.PACKED_KEY`) unpacked in place."""
    if PACKED_KEY not in metadata:
        return metadata
    entries = unpack_metadata(metadata[PACKED_KEY], max_bytes=max_bytes)
    unknown = sorted(set(entries) - set(PACKED_ENTRIES))
    if unknown:
        raise ArtifactError(f"packed metadata: unexpected entries {unknown[:4]}")
    clash = sorted(set(entries) & set(metadata))
    if clash:
        raise ArtifactError(f"packed metadata: {clash[:4]} stored both packed and plain")
    return {**{k: v for k, v in metadata.items() if k != PACKED_KEY}, **entries}


def load(path: str | os.PathLike[str]) -> CompressedModel:
    """Load a CompressedModel saved with `CompressedModel.save`.

    Raises:
        FileNotFoundError: no file at `path`.
        ArtifactError: not a sharekan artifact, unsupported version, truncated or corrupted.
    """
    tensors, metadata = read(path)
    try:
        validate(tensors, metadata)
    except ArtifactError as exc:
        raise ArtifactError(f"{os.fspath(path)!r}: {exc}") from None
    try:
        layers_meta: list[dict[str, Any]] = json.loads(metadata["layers"])
        layers = {}
        for meta in layers_meta:
            name, group = meta["name"], meta["codebook_group"]
            own = _fields(tensors, f"{name}.")
            book = _fields(tensors, f"codebooks.{group}.")
            layers[name] = CompressedLayer.from_stored(meta, own, book)
        passthrough = {k: tensors[f"passthrough.{k}"] for k in json.loads(metadata["passthrough"])}
        return CompressedModel(
            layers=layers,
            passthrough=passthrough,
            source_layout=metadata["source_layout"],
            config=Config.from_dict(json.loads(metadata["config"])),
            report=Report.from_dict(json.loads(metadata["report"])),
            key_order=json.loads(metadata["key_order"]),
        )
    except ShareKanError as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"{os.fspath(path)!r}: {exc}") from None
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ArtifactError(
            f"{os.fspath(path)!r}: inconsistent artifact contents: {exc!r}"
        ) from None


def _fields(tensors: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {
        k[len(prefix) :]: v
        for k, v in tensors.items()
        if k.startswith(prefix) and "." not in k[len(prefix) :]
    }
