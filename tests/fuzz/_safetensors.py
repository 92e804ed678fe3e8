"""A minimal safetensors writer in pure Python, so the fuzzer can write files the library's
own writer would refuse: any dtype string, a shape or data_offsets that disagree with the
data, non-string metadata values, duplicate keys, a wrong header length.

Layout (safetensors spec): u64 little-endian header length N, N bytes of a JSON object
{tensor name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}
padded with spaces to a multiple of 8, then the data buffer (offsets relative to it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

DTYPES: dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}


def build_header(tensors: Mapping[str, np.ndarray],
                 metadata: Mapping[str, Any] | None) -> tuple[dict[str, Any], bytes]:
    """(header dict, data buffer) of a well-formed file for `tensors` in insertion order."""
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        a = np.ascontiguousarray(array)
        raw = a.tobytes()
        header[name] = {"dtype": DTYPES.get(a.dtype.name, a.dtype.name.upper()),
                        "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    return header, b"".join(blobs)


def encode(header: Mapping[str, Any] | str | bytes, data: bytes, *,
           length: int | None = None, pad: bool = True) -> bytes:
    """The file bytes. `header` may be pre-rendered text/bytes (for duplicate keys or
    invalid JSON); `length` overrides the header length field."""
    if isinstance(header, Mapping):
        text = json.dumps(header, separators=(",", ":")).encode()
    elif isinstance(header, str):
        text = header.encode("utf-8", "surrogatepass")
    else:
        text = bytes(header)
    if pad and len(text) % 8:
        text += b" " * (8 - len(text) % 8)
    n = len(text) if length is None else length
    return (n % (1 << 64)).to_bytes(8, "little") + text + data


def serialize(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None,
              header_hook: Callable[[dict[str, Any], bytes], tuple[Any, bytes]] | None = None
              ) -> bytes:
    header, data = build_header(tensors, metadata)
    if header_hook is not None:
        header, data = header_hook(header, data)
    return encode(header, data)
