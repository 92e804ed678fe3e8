"""The sharekan artifact: a safetensors file of plain tensors (codes bit-packed into uint8)
whose header metadata names the format, version, source layout, per-layer parameters,
config, report and a SHA-256 digest (ARCHITECTURE §6).

Format version 2 (written since 0.1): the digest covers every metadata entry as well as
the tensors. Version 1 (digest over the tensors only) is still read. The digest detects
corruption, not tampering (anyone can recompute it), so `load` also validates every
field against every other before allocating anything (`sharekan.schema`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from .errors import ArtifactError, ShareKanError
from .schema import validate

if TYPE_CHECKING:
    from .compressed import CompressedModel

FORMAT = "sharekan"
#: The version `save` writes.
FORMAT_VERSION = "2"
#: Every version `read` accepts.
READABLE_VERSIONS = ("1", "2")
#: The metadata key holding the digest (never itself digested).
DIGEST_KEY = "checksum"


def _update_tensors(digest: Any, tensors: Mapping[str, np.ndarray]) -> None:
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())


def checksum(tensors: Mapping[str, np.ndarray]) -> str:
    """Format version 1 digest: SHA-256 over names, dtypes, shapes and bytes of the
    tensors, in sorted name order (the metadata is not covered)."""
    digest = hashlib.sha256()
    _update_tensors(digest, tensors)
    return digest.hexdigest()


def digest(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> str:
    """Format version 2 digest: SHA-256 over every metadata entry but the digest itself
    (sorted by key, each key and value length-prefixed so no two headers collide), then
    the tensors as in version 1."""
    h = hashlib.sha256(b"sharekan-artifact-v2\0")
    for key in sorted(metadata):
        if key == DIGEST_KEY:
            continue
        for part in (key.encode(), str(metadata[key]).encode()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    _update_tensors(h, tensors)
    return h.hexdigest()


def seal(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> dict[str, str]:
    """`metadata` with the digest its `format_version` calls for (a copy)."""
    out = dict(metadata)
    if out.get("format_version") == "1":
        out[DIGEST_KEY] = checksum(tensors)
    else:
        out[DIGEST_KEY] = digest(tensors, out)
    return out


def write(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray],
          metadata: Mapping[str, str]) -> None:
    """Write tensors and (already sealed) metadata atomically: a temporary file in the
    same directory, then renamed over `path`."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        _core.save_safetensors(tmp, dict(tensors), dict(metadata))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(model: CompressedModel, path: str | os.PathLike[str]) -> None:
    """Write `model` to `path` (written to a temporary file, then renamed)."""
    from . import __version__

    tensors = {k: np.ascontiguousarray(v) for k, v in model.stored_tensors().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sharekan_version": __version__,
        "source_layout": model.source_layout,
        "config": model.config.to_json(),
        "seed": str(model.config.seed),
        "layers": json.dumps([layer.metadata() for layer in model.layers.values()]),
        "passthrough": json.dumps(sorted(model.passthrough)),
        "key_order": json.dumps(model.key_order),
        "report": model.report.to_json(indent=None, timings=False),
    }
    write(path, tensors, seal(tensors, metadata))


def read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a sharekan artifact, verified (format, version, checksum)."""
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
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{path!r}: format version {version!r} is not supported "
            f"(this sharekan reads versions {', '.join(READABLE_VERSIONS)})"
        )
    expected, actual = metadata.get(DIGEST_KEY), seal(tensors, metadata)[DIGEST_KEY]
    if expected != actual:
        covered = "tensor data" if version == "1" else "metadata and tensor data"
        raise ArtifactError(
            f"{path!r}: {covered} checksum mismatch (stored {expected}, computed {actual}); "
            "the file is corrupted"
        )
    return tensors, metadata


def load(path: str | os.PathLike[str]) -> CompressedModel:
    """Load a CompressedModel saved with `CompressedModel.save`.

    Raises:
        FileNotFoundError: no file at `path`.
        ArtifactError: not a sharekan artifact, unsupported version, truncated or corrupted.
    """
    from .compressed import CompressedLayer, CompressedModel
    from .config import Config
    from .report import Report

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
