"""Structured mutations, deterministic in a `random.Random`.

- artifact cases: an attacker edits a real artifact's header metadata (the JSON of
  `layers`, `config`, `report`, `passthrough`, `key_order` and the plain fields) and
  tensors (drop, rename, add, cast, reinterpret, reshape, special values, swap between
  layers), then recomputes the digest (`sharekan.artifact.seal`);
- header cases: the safetensors header itself (dtype strings, shapes, data_offsets,
  non-string metadata, duplicate keys, invalid JSON) for the parser;
- raw cases: byte-level damage of a sealed file (bit flips, interesting bytes,
  truncation, the header length field, inserted / deleted bytes);
- direct cases: the arguments of `_core.lutham_forward`, `unpack_codes`, `unpack_nibbles`
  taken from a real layer, then mutated (shapes, dtypes, layouts, k, basis, h, base_act,
  grids, codes out of range, sizes).

Every mutation returns a short description; the case's descriptions go into the crash
sidecar.
"""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any

import numpy as np

import _safetensors  # noqa: F401 (the serialize hook patched by the mutators)

INTS = [0, -1, -3, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 257,
        2**15, 2**16, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**40, 2**53 + 1, 2**62, 2**63 - 1,
        2**63, 2**64, -2**31, -2**63, 10**30]
FLOATS = [0.0, -0.0, 0.5, -1.5, 1e-45, 1e-300, 1e-7, 1e38, 3.5e38, 1e308, math.inf, -math.inf,
          math.nan]
STRINGS = ["", "x", "3", "-1", "NaN", "bspline", "rbf", "chebyshev", "gram", "silu", "gelu",
           "identity", "layernorm", "instance_norm", "prelu", "node_affine", "efficient-kan",
           "fastkan", "chebykan", "torchkan", "pykan", "torch-conv-kan", "generic", "layers.0",
           "layers.1", "codebooks", "..", "layers.0.codes", "float32", "float64", "int8",
           "uint8", "bfloat16", "object", "<f4", "bits", "refused", "passed", "\u0000", "\u00e9\u4e2d"]
DEEP = "__FUZZ_DEEP__"
LONG = "__FUZZ_LONG__"
OTHERS: list[Any] = [None, True, False, [], [1], [[]], {}, {"kind": "rbf"}, [2**40, 2**40],
                     DEEP, LONG]

#: metadata keys holding JSON
JSON_KEYS = ("layers", "config", "report", "passthrough", "key_order")
#: fields a mutation of the `layers` JSON aims at most of the time
LAYER_FIELDS = ("n_in", "n_out", "grid_size", "spline_order", "codebook_size", "bits",
                "codebook_group", "name", "basis", "kind", "h", "k", "degree", "semantics",
                "base_activation", "input_norm", "post", "conv", "base_bias", "layout_info",
                "layernorm_eps", "norm_affine", "mask", "source", "shape", "dtype", "key",
                "kernel", "groups", "taps", "in_per_group", "out_per_group", "ndim",
                "grid_range", "denominator")

TENSOR_FIELDS = ("codes", "grid", "gains", "gains_q", "gains_q4", "gains_scale", "edge_bias",
                 "edge_bias_q", "edge_bias_q4", "edge_bias_scale", "out_bias", "base_weight",
                 "base_weight_q", "base_weight_q4", "base_scale", "base_weight_scale",
                 "extra_norm_weight", "extra_norm_bias", "extra_base_bias", "codebook",
                 "codebook_q", "codebook_scale")

NP_DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32",
             "uint32", "int64", "uint64", "bool"]


# ----------------------------------------------------------------------------- JSON values
def _paths(value: Any, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    out = [prefix] if prefix else []
    if depth > 6:
        return out
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value[:8]):
            out += _paths(v, prefix + (i,), depth + 1)
    return out


def _get(root: Any, path: tuple) -> Any:
    for p in path:
        root = root[p]
    return root


def interesting(rng: random.Random, old: Any) -> Any:
    """A replacement for a JSON value: type-aware neighbours most of the time."""
    r = rng.random()
    if isinstance(old, bool) and r < 0.5:
        return rng.choice([not old, 0, 1, "true", None])
    if isinstance(old, int) and not isinstance(old, bool) and r < 0.6:
        return rng.choice([old + 1, old - 1, -old, old * 2, old * 1000, old // 2, 0,
                           float(old) + 0.5, str(old), old + 2**32, rng.choice(INTS)])
    if isinstance(old, float) and r < 0.6:
        return rng.choice(FLOATS + [old * 1e30, -old, 0.0, int(old) if math.isfinite(old) else 0])
    if isinstance(old, str) and r < 0.5:
        return rng.choice(STRINGS + [old + "x", old.upper(), old * 50])
    if isinstance(old, list) and r < 0.6:
        choice = rng.randrange(6)
        if choice == 0:
            return []
        if choice == 1:
            return old[:-1]
        if choice == 2:
            return old + (old[-1:] if old else [0]) * rng.choice([1, 3])
        if choice == 3:
            return list(reversed(old))
        if choice == 4:
            return old + [2**40]
        return {"0": old}
    if isinstance(old, dict) and r < 0.6:
        new = dict(old)
        if new and rng.random() < 0.5:
            new.pop(rng.choice(list(new)))
        else:
            new[rng.choice(["kind", "h", "k", "degree", "x", "layernorm_eps", "conv", "post",
                            "norm_affine", "split", "mask"])] = rng.choice(INTS + FLOATS + STRINGS)
        return new
    pool = rng.randrange(4)
    if pool == 0:
        return rng.choice(INTS)
    if pool == 1:
        return rng.choice(FLOATS)
    if pool == 2:
        return rng.choice(STRINGS)
    return rng.choice(OTHERS)


def dumps(value: Any) -> str:
    text = json.dumps(value)  # NaN / Infinity tokens on purpose (Python's json reads them)
    text = text.replace(json.dumps(DEEP), "[" * 200_000 + "]" * 200_000)
    text = text.replace(json.dumps(LONG), json.dumps("A" * 1_000_000))
    return text


def mutate_json(rng: random.Random, value: Any, targeted: tuple[str, ...] = ()) -> tuple[Any, str]:
    """(mutated copy, description) of a parsed JSON value."""
    value = copy.deepcopy(value)
    paths = _paths(value)
    if not paths:
        new = interesting(rng, value)
        return new, f"whole={new!r:.60}"
    aimed = [p for p in paths if p and p[-1] in targeted]
    path = rng.choice(aimed) if aimed and rng.random() < 0.75 else rng.choice(paths)
    parent = _get(value, path[:-1])
    key = path[-1]
    op = rng.random()
    if op < 0.12:  # remove
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
        return value, f"del {'/'.join(map(str, path))}"
    if op < 0.18 and isinstance(parent, list):  # duplicate element
        parent.insert(key, copy.deepcopy(parent[key]))
        return value, f"dup {'/'.join(map(str, path))}"
    new = interesting(rng, parent[key])
    parent[key] = new
    return value, f"set {'/'.join(map(str, path))}={new!r:.60}"


# ----------------------------------------------------------------------------- tensors
def special_values(dtype: np.dtype) -> list[Any]:
    if dtype.kind == "f":
        return [np.nan, np.inf, -np.inf, 1e38, -1e38, 3e38, 1e-45, 0.0, -0.0, 65504.0]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return [info.min, info.max, 0, 1, info.max // 2 + 1, 0xFF & info.max]
    return [True, False]


def _random_array(rng: random.Random, nprng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(rng.choice(NP_DTYPES))
    shape = tuple(rng.choice([0, 1, 2, 3, 4, 7, 16]) for _ in range(rng.choice([0, 1, 1, 2, 2, 3])))
    raw = nprng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape) if dtype != np.bool_ else (raw % 2).astype(bool).reshape(shape)


def mutate_array(rng: random.Random, a: np.ndarray, nprng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(mutated copy, description): shape, dtype, reinterpretation or values."""
    a = np.array(a, copy=True)
    op = rng.randrange(12)
    flat = a.reshape(-1)
    if op == 0:  # truncate
        n = rng.choice([0, max(flat.size - 1, 0), flat.size // 2])
        return flat[:n].copy(), f"truncate->{n}"
    if op == 1:  # extend along axis 0
        if a.ndim == 0:
            return np.stack([a, a]), "extend 0-d->(2,)"
        reps = rng.choice([2, 3, 64])
        return np.concatenate([a] * reps, axis=0), f"extend axis0 x{reps}"
    if op == 2:  # reshape, same size
        shapes = [(-1,), (1, -1), (-1, 1), (1, 1, -1)]
        if a.ndim >= 2:
            shapes.append(tuple(reversed(a.shape)))
        shp = rng.choice(shapes)
        try:
            return flat.reshape(shp).copy(), f"reshape {a.shape}->{shp}"
        except ValueError:
            return flat.copy(), "reshape->flat"
    if op == 3:  # transpose / add dim / 0-d
        c = rng.randrange(3)
        if c == 0 and a.ndim >= 2:
            return np.ascontiguousarray(a.T), "transpose"
        if c == 1:
            return a[None].copy(), "add leading dim"
        return np.array(flat[0] if flat.size else 0, dtype=a.dtype), "0-d"
    if op == 4:  # empty
        shp = rng.choice([(0,), (0,) + a.shape[1:], a.shape[:-1] + (0,) if a.ndim else (0,)])
        return np.zeros(shp, dtype=a.dtype), f"empty {shp}"
    if op == 5:  # cast
        dt = rng.choice(NP_DTYPES)
        with np.errstate(all="ignore"):
            return a.astype(dt), f"cast {a.dtype}->{dt}"
    if op == 6:  # reinterpret bytes
        dt = np.dtype(rng.choice(NP_DTYPES))
        if dt != np.bool_ and a.nbytes % dt.itemsize == 0 and a.nbytes:
            return np.frombuffer(a.tobytes(), dtype=dt).copy(), f"view {a.dtype}->{dt}"
        return a.astype(dt) if dt != np.bool_ else a.astype(bool), f"cast {a.dtype}->{dt}"
    if op == 7:  # a grown dimension
        if a.ndim >= 1:
            axis = rng.randrange(a.ndim)
            extra = np.take(a, [0] * rng.choice([1, 5]), axis=axis) if a.shape[axis] else a
            return np.concatenate([a, extra], axis=axis), f"grow axis{axis}"
        return a.reshape(1), "0-d->1"
    if op == 8:  # random bytes of the same shape
        if a.dtype == np.bool_:
            return a, "noop"
        raw = nprng.integers(0, 256, size=a.nbytes, dtype=np.uint8)
        return raw.view(a.dtype).reshape(a.shape).copy(), "random bytes"
    # special values
    if flat.size == 0:
        return np.zeros((3,), dtype=a.dtype), "empty->3 zeros"
    vals = special_values(a.dtype)
    k = rng.choice([1, 1, 2, flat.size])
    idx = nprng.choice(flat.size, size=min(k, flat.size), replace=False)
    v = rng.choice(vals)
    with np.errstate(all="ignore"):
        flat[idx] = v
    return flat.reshape(a.shape), f"set {len(idx)} values={v!r}"


def _layer_prefixes(tensors: dict[str, np.ndarray]) -> list[str]:
    out = sorted({name.rsplit(".", 1)[0] for name in tensors if not name.startswith("passthrough.")})
    return out


def mutate_tensors(rng: random.Random, tensors: dict[str, np.ndarray],
                   nprng: np.random.Generator) -> str:
    """Mutate `tensors` in place; returns the description."""
    names = sorted(tensors)
    if not names:
        tensors["layers.0.codes"] = _random_array(rng, nprng)
        return "add layers.0.codes"
    op = rng.random()
    name = rng.choice(names)
    if op < 0.10:
        del tensors[name]
        return f"drop {name}"
    if op < 0.18:
        prefix, _, fld = name.rpartition(".")
        choices = [f"{prefix}.{f}" for f in TENSOR_FIELDS if f != fld]
        choices += [f"{p}.{fld}" for p in _layer_prefixes(tensors) if p != prefix]
        choices += [name + ".x", name.replace(".", "..", 1), "passthrough." + name]
        new = rng.choice(choices)
        tensors[new] = tensors.pop(name)
        return f"rename {name}->{new}"
    if op < 0.28:  # swap the same field between two prefixes
        prefix, _, fld = name.rpartition(".")
        others = [f"{p}.{fld}" for p in _layer_prefixes(tensors) if f"{p}.{fld}" in tensors
                  and p != prefix]
        if others:
            other = rng.choice(others)
            tensors[name], tensors[other] = tensors[other], tensors[name]
            return f"swap {name}<->{other}"
        other = rng.choice(names)
        tensors[name], tensors[other] = tensors[other], tensors[name]
        return f"swap {name}<->{other}"
    if op < 0.38:  # add a tensor the loader may look for
        prefix = rng.choice(_layer_prefixes(tensors) or ["layers.0"])
        new = f"{prefix}.{rng.choice(TENSOR_FIELDS)}"
        if rng.random() < 0.5 and name in tensors:
            tensors[new] = mutate_array(rng, tensors[name], nprng)[0]
        else:
            tensors[new] = _random_array(rng, nprng)
        return f"add {new} {tensors[new].dtype}{tensors[new].shape}"
    new_value, what = mutate_array(rng, tensors[name], nprng)
    tensors[name] = new_value
    return f"{name}: {what}"


def mutate_metadata(rng: random.Random, metadata: dict[str, str]) -> str:
    """Mutate header metadata in place; returns the description."""
    op = rng.random()
    if op < 0.70:
        keys = [k for k in JSON_KEYS if k in metadata]
        weights = [6 if k == "layers" else 1 for k in keys]
        key = rng.choices(keys, weights)[0] if keys else "layers"
        try:
            value = json.loads(metadata.get(key, "null"))
        except (ValueError, RecursionError):
            value = None
        if key == "layers" and isinstance(value, list) and value and rng.random() < 0.2:
            c = rng.randrange(4)
            i, j = rng.randrange(len(value)), rng.randrange(len(value))
            if c == 0:
                value.pop(i)
                desc = f"layers: drop entry {i}"
            elif c == 1:
                value.insert(i, copy.deepcopy(value[j]))
                desc = f"layers: duplicate entry {j} at {i}"
            elif c == 2:
                value[i], value[j] = value[j], value[i]
                desc = f"layers: swap entries {i},{j}"
            else:
                fld = rng.choice(LAYER_FIELDS[:12])
                if isinstance(value[i], dict) and isinstance(value[j], dict):
                    value[i][fld], value[j][fld] = value[j].get(fld), value[i].get(fld)
                desc = f"layers: swap field {fld} of {i},{j}"
            metadata[key] = dumps(value)
            return desc
        targeted = LAYER_FIELDS if key == "layers" else ("status", "key", "codebook_size",
                                                          "int8", "bias", "base", "gain_bits",
                                                          "codebook_scale", "share", "seed",
                                                          "input_range", "overrides", "tensors")
        new, desc = mutate_json(rng, value, targeted)
        if rng.random() < 0.05 and isinstance(new, dict) and new:  # duplicate key, textual
            k = rng.choice(list(new))
            text = dumps(new)
            metadata[key] = "{" + json.dumps(k) + ": " + dumps(interesting(rng, new[k])) + ", " + text[1:]
            return f"{key}: duplicate key {k!r}"
        metadata[key] = dumps(new)
        return f"{key}: {desc}"
    if op < 0.80:
        key = rng.choice(["format_version", "format_version", "source_layout", "format",
                          "sharekan_version", "seed"])
        new = rng.choice(["1", "2", "0", "3", "-1", "", "2.0", " 2", "1\x00", "999999999999"]
                         if key == "format_version" else STRINGS)
        metadata[key] = new
        return f"meta {key}={new!r}"
    if op < 0.90:
        key = rng.choice(sorted(metadata) or ["layers"])
        metadata.pop(key, None)
        return f"meta drop {key}"
    key = rng.choice(list(JSON_KEYS))
    new = rng.choice(["", "{", "null", "[]", "{}", "0", "NaN", '"x"', "[null]", "[{}]",
                      "[" * 100_000, "[1e999]"])
    metadata[key] = new
    return f"meta {key}={new[:20]!r}"


# ----------------------------------------------------------------------------- safetensors header
def header_hook(rng: random.Random) -> tuple[Any, list[str]]:
    """A `_safetensors.serialize` hook that damages the header structure."""
    log: list[str] = []

    def hook(header: dict[str, Any], data: bytes) -> tuple[Any, bytes]:
        names = [k for k in header if k != "__metadata__"]
        op = rng.randrange(10)
        name = rng.choice(names) if names else None
        entry = header.get(name) if name else None
        if op == 0 and entry:
            new = rng.choice(["F32", "F64", "I8", "U8", "BOOL", "F16", "BF16", "I64", "U64",
                              "F8_E4M3", "F8_E5M2", "X", "", "f32", 5, None])
            entry["dtype"] = new
            log.append(f"hdr {name}.dtype={new!r}")
        elif op == 1 and entry:
            n = int(np.prod(entry["shape"])) if entry["shape"] else 1
            new = rng.choice([[], [0], [-1], [2**32, 2**32], [2**63], [2**64], [1.5], ["3"],
                              [n + 1], None, list(reversed(entry["shape"])), [1] * 100,
                              [2**31, 2**31, 4], [0, 2**62], [n, 0, 2**62],
                              [1] * 99 + [n], [n] + [1] * 64, [1] * 32 + [n]])
            entry["shape"] = new
            log.append(f"hdr {name}.shape={new!r}")
        elif op == 2 and entry:
            b, e = entry["data_offsets"]
            new = rng.choice([[b, e + 1], [e, b], [0, 2**64 - 1], [-1, e], [b, b],
                              [b, len(data) + 8], [len(data), len(data) + (e - b)], [b],
                              None, [float(b), float(e)], [b + 1, e + 1], [0, e - b],
                              [2**63, 2**63 + (e - b)]])
            entry["data_offsets"] = new
            log.append(f"hdr {name}.data_offsets={new!r}")
        elif op == 3 and entry:
            fld = rng.choice(["dtype", "shape", "data_offsets"])
            entry.pop(fld)
            log.append(f"hdr {name} drop {fld}")
        elif op == 4 and name:
            new = rng.choice([[], "x", None, 1, {}, {"dtype": "F32"}])
            header[name] = new
            log.append(f"hdr {name}={new!r}")
        elif op == 5:
            meta = header.get("__metadata__") or {}
            if meta and rng.random() < 0.7:
                k = rng.choice(list(meta))
                new = rng.choice([1, None, [], {}, 1.5, True, ["x"]])
                meta[k] = new
                log.append(f"hdr __metadata__.{k}={new!r}")
            else:
                new = rng.choice([None, [], "x", 1])
                header["__metadata__"] = new
                log.append(f"hdr __metadata__={new!r}")
        elif op == 6 and name:  # duplicate key, different offsets: textual
            text = json.dumps(header, separators=(",", ":"))
            dup = json.dumps({name: {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}})[1:-1]
            log.append(f"hdr duplicate key {name}")
            return "{" + dup + "," + text[1:], data
        elif op == 7:  # text damage
            text = json.dumps(header, separators=(",", ":"))
            c = rng.randrange(6)
            if c == 0:
                text = text[: rng.randrange(len(text))]
            elif c == 1:
                text = text + "garbage"
            elif c == 2:
                text = "\ufeff" + text
            elif c == 3:
                text = "[" + text + "]"
            elif c == 4:
                text = '{"a":' * 100_000 + "1" + "}" * 100_000
            else:
                text = text.replace('"', "'", 1)
            log.append(f"hdr text damage {c}")
            return text, data
        elif op == 8 and name:  # a tensor that points past the data / at nothing
            header["zz.extra"] = {"dtype": "F32", "shape": [2**20],
                                  "data_offsets": [0, 4 * 2**20]}
            log.append("hdr extra tensor past EOF")
        else:  # trailing / missing data
            c = rng.randrange(3)
            if c == 0:
                data = data + b"\0" * rng.choice([1, 7, 8, 4096])
            elif c == 1 and data:
                data = data[: rng.randrange(len(data))]
            else:
                data = b""
            log.append(f"hdr data damage {c}")
        return header, data

    return hook, log


def raw_mutate(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    b = bytearray(blob)
    if len(b) < 2:
        return bytes(b) + bytes(rng.randrange(256) for _ in range(9)), "raw append 9 bytes"
    hlen = int.from_bytes(b[:8], "little") if len(b) >= 8 else 0
    op = rng.randrange(7)
    if op == 0:
        n = rng.choice([1, 1, 2, 8])
        for _ in range(n):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b), f"raw {n} bit flips"
    if op == 1:
        i = rng.randrange(len(b))
        v = rng.choice([0, 0xFF, 0x7F, 0x80, 0x22, 0x5C, 0x7B, 0x7D, 0x2C, 0x39])
        b[i] = v
        return bytes(b), f"raw byte[{i}]={v:#x}"
    if op == 2:
        n = rng.choice([0, 4, 7, 8, 9, rng.randrange(len(b)), len(b) - 1, 8 + hlen,
                        8 + hlen + 1])
        return bytes(b[:n]), f"raw truncate {n}"
    if op == 3:
        new = rng.choice([0, 1, 2, 7, hlen - 1, hlen + 1, hlen + 8, len(b) - 8, len(b),
                          2**31, 2**32, 2**62, 2**63, 2**64 - 1, 100 * 2**20])
        b[:8] = (new % 2**64).to_bytes(8, "little")
        return bytes(b), f"raw header length={new}"
    if op == 4:  # corrupt a digit in the header (offsets, shapes)
        digits = [i for i in range(8, min(8 + hlen, len(b))) if 0x30 <= b[i] <= 0x39]
        if digits:
            i = rng.choice(digits)
            ins = rng.choice([b"9999999999", b"18446744073709551615", b"0", b"-1", b"1e3"])
            b[i:i + 1] = ins
            b[:8] = (hlen + len(ins) - 1).to_bytes(8, "little")
            return bytes(b), f"raw header digit@{i}->{ins.decode()}"
        return bytes(b), "noop"
    if op == 5:
        i = rng.randrange(len(b))
        n = rng.choice([1, 8, 100])
        del b[i:i + n]
        return bytes(b), f"raw delete {n}@{i}"
    i = rng.randrange(len(b))
    ins = bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 64])))
    b[i:i] = ins
    return bytes(b), f"raw insert {len(ins)}@{i}"


# ----------------------------------------------------------------------------- direct calls
K_VALUES = [-1, 0, 1, 2, 3, 4, 5, 7, 30, 64, 2**31, 2**32, 2**62]
BASIS_VALUES = [-1, 0, 1, 2, 3, 4, 255, 2**31, 2**62]
ACT_VALUES = [-1, 0, 1, 2, 3, 2**31, 2**62]
H_VALUES = [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e-45, 1e-38, 1e-20, 1e38, 3.5e38,
            1e308, 0.5, 2.0]
SIZE_VALUES = [0, 1, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -1]
BITS_VALUES = [-1, 0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 255, 256, 2**31, 2**63 - 1]


def mutate_grid(rng: random.Random, g: np.ndarray) -> tuple[np.ndarray, str]:
    g = np.array(g, dtype=np.float32, copy=True)
    if g.size == 0:
        return g, "noop"
    c = rng.randrange(8)
    with np.errstate(all="ignore"):
        if c == 0:
            return np.ascontiguousarray(g[..., ::-1]), "grid reversed"
        if c == 1 and g.shape[-1] > 2:
            j = rng.randrange(1, g.shape[-1] - 1)
            g[..., j] = g[..., j - 1]
            return g, f"grid repeated knot {j}"
        if c == 2:
            g[...] = g.reshape(-1)[0]
            return g, "grid all equal"
        if c == 3:
            return (g * np.float32(1e-30)).astype(np.float32), "grid spacing 1e-30"
        if c == 4:
            return (g * np.float32(1e30)).astype(np.float32), "grid * 1e30"
        if c == 5:
            g[..., 0], g[..., -1] = -3e38, 3e38
            return g, "grid ends +-3e38"
        if c == 6:
            g.reshape(-1)[rng.randrange(g.size)] = rng.choice([np.nan, np.inf, -np.inf])
            return g, "grid non-finite"
        return (np.arange(g.size, dtype=np.float32).reshape(g.shape) * np.float32(1e-45)), \
            "grid denormal spacing"


def mutate_direct(rng: random.Random, nprng: np.random.Generator, call: Any) -> list[str]:
    """Mutate a `_harness.DirectCall` in place (1-3 mutations); returns descriptions."""
    log = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        names = list(call.arrays) + list(call.scalars)
        name = rng.choice(names)
        if call.func == "lutham_forward":
            if rng.random() < 0.3:
                name = rng.choice(["k", "basis", "h", "base_act", "grid", "codes", "x"])
        if name in ("k",):
            call.scalars["k"] = rng.choice(K_VALUES)
            log.append(f"k={call.scalars['k']}")
        elif name == "basis":
            call.scalars["basis"] = rng.choice(BASIS_VALUES)
            log.append(f"basis={call.scalars['basis']}")
        elif name == "base_act":
            call.scalars["base_act"] = rng.choice(ACT_VALUES)
            log.append(f"base_act={call.scalars['base_act']}")
        elif name == "h":
            call.scalars["h"] = rng.choice(H_VALUES)
            log.append(f"h={call.scalars['h']}")
        elif name in ("bits",):
            call.scalars["bits"] = rng.choice(BITS_VALUES)
            log.append(f"bits={call.scalars['bits']}")
        elif name == "n":
            old = call.scalars["n"]
            new = rng.choice(SIZE_VALUES + [old + 1, old * 8 + 1, max(old - 1, 0)])
            call.scalars["n"] = min(new, 2**63 - 1)  # the bindings take i64
            log.append(f"n={call.scalars['n']}")
        elif name in call.scalars and call.scalars[name] is None:  # an absent optional
            call.scalars.pop(name)
            call.arrays[name] = _random_array(rng, nprng) if rng.random() < 0.3 else \
                np.ones(rng.choice([1, 2, 4, 7]), dtype=rng.choice(["float32", "int8"]))
            log.append(f"{name}: None->{call.arrays[name].dtype}{call.arrays[name].shape}")
        elif name in call.arrays:
            a = call.arrays[name]
            c = rng.random()
            if c < 0.1:
                call.arrays.pop(name)
                call.scalars[name] = None
                log.append(f"{name}=None")
            elif c < 0.2:
                call.transforms[name] = rng.choice(["fortran", "strided"])
                log.append(f"{name}: {call.transforms[name]}")
            elif c < 0.4 and name == "grid":
                call.arrays[name], what = mutate_grid(rng, a)
                log.append(what)
            elif c < 0.5 and name == "codes":
                K = call.arrays["codebook"].shape[0] if "codebook" in call.arrays and \
                    call.arrays["codebook"].ndim == 2 else 1
                flat = np.array(a, copy=True).reshape(-1)
                if flat.size:
                    v = rng.choice([K, K + 1, 255, 32767, -1, 2**31 - 1, 65535])
                    with np.errstate(all="ignore"):
                        flat[rng.randrange(flat.size)] = np.array(v).astype(flat.dtype)
                    call.arrays[name] = flat.reshape(a.shape)
                    log.append(f"codes: one code={v} (as {a.dtype})")
                else:
                    call.arrays[name] = a.astype(rng.choice(["uint32", "int64", "uint16"]))
                    log.append("codes: cast")
            else:
                call.arrays[name], what = mutate_array(rng, a, nprng)
                log.append(f"{name}: {what}")
    return log
