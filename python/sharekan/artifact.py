"""The sharekan artifact: a safetensors file of plain tensors (codes bit-packed into uint8)
whose header metadata names the format, version, source layout, per-layer parameters,
config, report and a SHA-256 checksum of the tensor data (SPEC §5)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from .errors import ArtifactError

if TYPE_CHECKING:
    from .compressed import CompressedModel

FORMAT = "sharekan"
FORMAT_VERSION = "1"


def checksum(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


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
        "checksum": checksum(tensors),
    }
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        _core.save_safetensors(tmp, tensors, metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a sharekan artifact, verified (format, version, checksum)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such artifact: {path!r}")
    tensors, metadata = _core.load_safetensors(path)
    if metadata.get("format") != FORMAT:
        raise ArtifactError(
            f"{path!r} is a safetensors file but not a sharekan artifact "
            f"(format={metadata.get('format')!r})"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path!r}: format version {metadata.get('format_version')!r} is not supported "
            f"(this sharekan reads version {FORMAT_VERSION})"
        )
    expected, actual = metadata.get("checksum"), checksum(tensors)
    if expected != actual:
        raise ArtifactError(
            f"{path!r}: tensor data checksum mismatch (stored {expected}, computed {actual}); "
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
    except ArtifactError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(
            f"{os.fspath(path)!r}: inconsistent artifact contents: {exc!r}"
        ) from None


def _fields(tensors: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {
        k[len(prefix) :]: v
        for k, v in tensors.items()
        if k.startswith(prefix) and "." not in k[len(prefix) :]
    }
