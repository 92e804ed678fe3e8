"""The artifact schema: what a sharekan artifact holds and how it is written.

- Encoding: a compressed layer / model as named tensors and JSON metadata
  (`layer_tensors`, `layer_codebook`, `layer_metadata`, `model_tensors`, `model_metadata`)
  and back (`layer_fields`: the `CompressedLayer` fields of a stored layer).
- Sealing and writing: the digest of format versions 1 and 2 (`checksum`, `digest`,
  `seal`), the atomic `write` and `save(model, path)`. Reading and `load` are in
  `sharekan.artifact`, which builds the model types from what this module decodes.
- Validation (`validate`), described below.

The compressed types are only named in annotations here: this module sits below
`sharekan.compressed`, whose `save` and `stored_*` methods call it.

What a sharekan artifact may hold is checked field against field on load.

A file written by someone else is untrusted input, and its digest only detects accidents
(anyone can recompute it). `validate` therefore checks every metadata value and every
tensor's dtype and shape against the others, with documented caps and exact integer
arithmetic, *before* the loader unpacks or allocates anything derived from them. Anything
wrong raises `ArtifactError` naming the layer, the field and the values.

Caps (the same in the Rust evaluator and the C++ kernel where they apply):

- spline order k: 0 <= k <= MAX_SPLINE_ORDER (15);
- codebook size K: 1 <= K <= MAX_CODEBOOK_SIZE (65,536), code width bits = ceil(log2 K);
- n_in, n_out: 1 <= n <= MAX_DIM (2**24); edges n_in * n_out <= MAX_EDGES (2**31 - 1);
- codebook width M (coefficients per edge): 1 <= M <= MAX_COEFFS (4,096).

Every per-edge tensor must hold exactly n_in * n_out values, so the memory the loader
allocates is bounded by a small multiple of the file size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import hashlib
import os

import numpy as np

from . import _core
from ._version import __version__
from .config import MAX_CODEBOOK_SIZE, MAX_STAGES
from .entropy import CODEC, encode, pack_metadata, table_json
from .errors import ArtifactError, InvalidInputError
from .layouts import Semantics, TensorInfo, basis_from_dict
from .layouts.adapter import BASE_ACTIVATIONS
from .layouts.basis import BASIS_KINDS

if TYPE_CHECKING:
    from .compressed import CompressedLayer, CompressedModel

FORMAT = "sharekan"
#: The version `save` writes.
FORMAT_VERSION = "2"
#: Every version `read` accepts.
READABLE_VERSIONS = ("1", "2")
#: The metadata key holding the digest (never itself digested).
DIGEST_KEY = "checksum"

MAX_SPLINE_ORDER = 15
MAX_DIM = 1 << 24
MAX_EDGES = (1 << 31) - 1
MAX_COEFFS = 4096

#: Tensor statuses a report may list.
TENSOR_STATUSES = ("compressed", "passthrough", "refused")
#: dtypes a source tensor may be restored to (`decompress`).
SOURCE_DTYPES = frozenset(
    ["float16", "float32", "float64", "bfloat16", "int8", "uint8", "int16", "int32", "int64",
     "bool"]
)
#: Per-edge weight fields: stored as float32 `{name}`, int8 `{name}_q` or packed int4
#: `{name}_q4`, the int forms with a float32 `{name}_scale` of shape (n_out,).
WEIGHT_FIELDS = ("gains", "edge_bias", "base_weight")
#: Layer extras the evaluator reads (float32 vectors of n_in or n_out values).
_EXTRA_LENGTHS = ("norm_weight", "norm_bias", "base_bias")
#: Metadata keys of a layer entry and their JSON types.
_LAYER_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,), "n_in": (int,), "n_out": (int,), "grid_size": (int,),
    "spline_order": (int,), "codebook_size": (int,), "bits": (int,),
    "codebook_group": (str,), "source": (dict,),
}
_SEMANTICS_KEYS = {"base_activation", "input_norm", "post", "conv", "base_bias"}



# ---------------------------------------------------------------------------- encoding


def layer_tensors(layer: CompressedLayer) -> dict[str, np.ndarray]:
    """Tensors `layer` stores (field name -> array), codes packed; codebook excluded."""
    # efficient-kan's default grid is the same for every input: store that row once.
    shared = layer.n_in > 1 and bool((layer.grid == layer.grid[:1]).all())
    out: dict[str, np.ndarray] = {
        "grid": np.ascontiguousarray(layer.grid[:1]) if shared else layer.grid,
    }
    weights: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        "gains": (layer.gains, layer.gain_scale)}
    if layer.edge_bias is not None:
        weights["edge_bias"] = (layer.edge_bias, layer.edge_bias_scale)
    _put_stage(out, "", layer.codes, layer.bits, weights)
    for index, stage in enumerate(layer.stages, start=1):
        prefix = f"s{index}_"
        out.update({prefix + name: array for name, array in _put_codebook(
            stage.codebook, stage.codebook_q, stage.codebook_scale).items()})
        _put_stage(out, prefix, stage.codes, stage.bits, {"gains": (stage.gains, stage.gain_scale)})
    if layer.out_bias is not None:
        out["out_bias"] = layer.out_bias
    if layer.base_weight is not None:
        _put_weight(out, "base_weight", layer.base_weight, layer.base_scale)
    for name, array in layer.extras.items():
        out[f"extra_{name}"] = array
    return out


def layer_codebook(layer: CompressedLayer) -> dict[str, np.ndarray]:
    """The codebook tensors of `layer`'s group (field name -> array)."""
    return _put_codebook(layer.codebook, layer.codebook_q, layer.codebook_scale)


def _put_codebook(book: np.ndarray, book_q: np.ndarray | None,
                  scale: np.ndarray | None) -> dict[str, np.ndarray]:
    """A codebook's stored tensors: `codebook_q` + `codebook_scale` (int8), or `codebook`."""
    if book_q is not None:
        assert scale is not None
        return {"codebook_q": book_q, "codebook_scale": scale}
    return {"codebook": book}


def _get_codebook(tensors: Mapping[str, np.ndarray], prefix: str = ""
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Inverse of `_put_codebook` (fields under `prefix`): (evaluated f32 codebook, int8
    codebook, scales)."""
    if prefix + "codebook_q" in tensors:
        book_q, scale = tensors[prefix + "codebook_q"], tensors[prefix + "codebook_scale"]
        return (book_q.astype(np.float32) * scale[:, None]).astype(np.float32), book_q, scale
    return tensors[prefix + "codebook"], None, None


def layer_metadata(layer: CompressedLayer) -> dict[str, Any]:
    """JSON-serialisable parameters needed to rebuild `layer` from its stored tensors."""
    return {
        "name": layer.name,
        "n_in": layer.n_in,
        "n_out": layer.n_out,
        "grid_size": layer.grid_size,
        "spline_order": layer.spline_order,
        "codebook_size": layer.codebook_size,
        "bits": layer.bits,
        "codebook_group": layer.codebook_group,
        "source": {role: info.to_dict() for role, info in layer.source.items()},
        "basis": layer.basis.to_dict() if layer.basis is not None else {"kind": "bspline"},
        "semantics": layer.semantics.to_dict(),
        "layout_info": dict(layer.layout_info),
        **({"stages": [{"codebook_size": st.codebook_size, "bits": st.bits}
                       for st in layer.stages]} if layer.stages else {}),
    }


def layer_fields(
    meta: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    codebook: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """The `CompressedLayer` fields of a stored layer (inverse of `layer_tensors` +
    `layer_codebook` + `layer_metadata`)."""
    n_in, n_out = int(meta["n_in"]), int(meta["n_out"])
    where = f"layer {meta['name']!r}"
    codes, got = _get_stage(tensors, "", where, int(meta["bits"]), int(meta["codebook_size"]),
                            (n_in, n_out), ("gains", "edge_bias"))
    gains, gain_scale = got["gains"]
    edge_bias, edge_bias_scale = got["edge_bias"]
    base, base_scale = _get_weight(tensors, "base_weight", (n_in, n_out))
    stages = []
    for index, entry in enumerate(meta.get("stages") or [], start=1):
        prefix = f"s{index}_"
        k, bits = int(entry["codebook_size"]), int(entry["bits"])
        stage_codes, stage_got = _get_stage(tensors, prefix, f"{where} stage {index + 1}", bits,
                                            k, (n_in, n_out), ("gains",))
        stage_gains, stage_scale = stage_got["gains"]
        assert stage_gains is not None
        stage_book, sq, ss = _get_codebook(tensors, prefix)
        stages.append(dict(  # ResidualStage fields (built by CompressedLayer.from_stored)
            codebook_size=k, bits=bits, codebook=stage_book, codebook_q=sq, codebook_scale=ss,
            codes=stage_codes, gains=stage_gains,
            gain_scale=stage_scale if stage_scale is not None else np.ones(n_out, np.float32),
        ))
    book, cq, cs = _get_codebook(codebook)
    if gain_scale is None:
        gain_scale = np.ones(n_out, dtype=np.float32)
    grid = np.ascontiguousarray(
        np.broadcast_to(tensors["grid"], (n_in, tensors["grid"].shape[-1]))
    )
    basis_meta = dict(meta.get("basis") or {"kind": "bspline"})
    if basis_meta.get("kind", "bspline") == "bspline":
        basis_meta.setdefault("k", int(meta["spline_order"]))
    return {
        "name": str(meta["name"]),
        "n_in": n_in,
        "n_out": n_out,
        "grid_size": int(meta["grid_size"]),
        "spline_order": int(meta["spline_order"]),
        "codebook_size": int(meta["codebook_size"]),
        "bits": int(meta["bits"]),
        "codebook_group": str(meta["codebook_group"]),
        "grid": grid,
        "codebook": book,
        "codebook_q": cq,
        "codebook_scale": cs,
        "codes": codes,
        "gains": gains,
        "gain_scale": gain_scale,
        "edge_bias": edge_bias,
        "edge_bias_scale": edge_bias_scale,
        "out_bias": tensors.get("out_bias"),
        "base_weight": base,
        "base_scale": base_scale,
        "source": {r: TensorInfo.from_dict(i) for r, i in meta["source"].items()},
        "basis": basis_from_dict(basis_meta, grid),
        "semantics": Semantics.from_dict(meta.get("semantics")),
        "layout_info": dict(meta.get("layout_info") or {}),
        "extras": {k[len("extra_"):]: v for k, v in tensors.items() if k.startswith("extra_")},
        "stages": tuple(stages),
    }


def _put_weight(
    out: dict[str, np.ndarray], name: str, values: np.ndarray, scale: np.ndarray | None
) -> None:
    if values.dtype == np.int8:
        assert scale is not None
        if values.size and -8 <= int(values.min()) and int(values.max()) <= 7:
            # 4-bit values (Config gain_bits=4 / base="int4"): two per byte, lossless
            out[f"{name}_q4"] = _core.pack_nibbles(np.ascontiguousarray(values.reshape(-1)))
        else:
            out[f"{name}_q"] = values
        out[f"{name}_scale"] = scale
    else:
        out[name] = values


def _get_weight(
    tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if f"{name}_q" in tensors:
        return tensors[f"{name}_q"], tensors[f"{name}_scale"]
    if f"{name}_q4" in tensors:
        values = _core.unpack_nibbles(tensors[f"{name}_q4"], math.prod(shape))
        return values.reshape(shape), tensors[f"{name}_scale"]
    return tensors.get(name), None


def _sparse_mask(codes: np.ndarray, weights: Mapping[str, tuple[np.ndarray, Any]]) -> np.ndarray | None:
    """The edges a stage stores (a non-zero weight), when storing only those pays and
    loses nothing (every other edge has code 0); else None."""
    active = np.zeros(codes.size, dtype=bool)
    for values, _ in weights.values():
        active |= np.asarray(values != 0).reshape(-1)
    if active.size == 0 or active.mean() > 15 / 16:
        return None
    if codes.reshape(-1)[~active].any():
        return None
    return active


def _put_stage(out: dict[str, np.ndarray], prefix: str, codes: np.ndarray, bits: int,
               weights: Mapping[str, tuple[np.ndarray, Any]]) -> None:
    """One stage's codes and per-edge weights, dense or (when most edges are left out)
    sparse: `{prefix}active` (one bit per edge, little-endian bit order) and the codes and
    weights of the active edges only, in edge order."""
    flat = codes.reshape(-1)
    active = _sparse_mask(codes, weights)
    if active is not None:
        out[prefix + "active"] = np.packbits(active, bitorder="little")
        flat = flat[active]
    out[prefix + "codes"] = _core.pack_codes(np.ascontiguousarray(flat, dtype=np.uint32), bits)
    for name, (values, scale) in weights.items():
        kept = values.reshape(-1)[active] if active is not None else values
        _put_weight(out, prefix + name, np.ascontiguousarray(kept), scale)


def _get_stage(tensors: Mapping[str, np.ndarray], prefix: str, where: str, bits: int, k: int,
               shape: tuple[int, int], names: tuple[str, ...]
               ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray | None, np.ndarray | None]]]:
    """Inverse of `_put_stage`: dense (n_in, n_out) codes and {name: (values, scale)}."""
    edges = shape[0] * shape[1]
    active = None
    if prefix + "active" in tensors:
        active = np.unpackbits(tensors[prefix + "active"], count=edges,
                               bitorder="little").astype(bool)
    count = edges if active is None else int(active.sum())
    stored = _core.unpack_codes(tensors[prefix + "codes"], bits, count)
    if stored.size and int(stored.max()) >= k:
        raise ArtifactError(f"{where}: stored code {int(stored.max())} >= K = {k}")
    codes = stored
    if active is not None:
        codes = np.zeros(edges, dtype=stored.dtype)
        codes[active] = stored
    out: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
    for name in names:
        values, scale = _get_weight(tensors, prefix + name, (count,))
        if values is not None:
            if active is not None:
                dense = np.zeros(edges, dtype=values.dtype)
                dense[active] = values.reshape(-1)
                values = dense
            values = values.reshape(shape)
        out[name] = (values, scale)
    return codes.reshape(shape), out


def model_tensors(model: CompressedModel) -> dict[str, np.ndarray]:
    """Every tensor of `model`'s artifact by its artifact name (codebooks once per group)."""
    out: dict[str, np.ndarray] = {}
    for layer in model.layers.values():
        for field_name, array in layer_tensors(layer).items():
            out[f"{layer.name}.{field_name}"] = array
        for field_name, array in layer_codebook(layer).items():
            out[f"codebooks.{layer.codebook_group}.{field_name}"] = array
    for key, array in model.passthrough.items():
        out[f"passthrough.{key}"] = array
    return out


def model_metadata(model: CompressedModel) -> dict[str, str]:
    """The header metadata of `model`'s artifact, without the digest."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sharekan_version": __version__,
        "source_layout": model.source_layout,
        "config": model.config.to_json(),
        "seed": str(model.config.seed),
        "layers": json.dumps([layer_metadata(layer) for layer in model.layers.values()]),
        "passthrough": json.dumps(sorted(model.passthrough)),
        "key_order": json.dumps(model.key_order),
        "report": model.report.to_json(indent=None, timings=False),
    }


# ---------------------------------------------------------------------------- sealing, writing


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


#: The version `save(..., entropy="zstd")` writes: version 2 with entropy-coded tensors.
ENTROPY_VERSION = "3"
#: The metadata entry holding the entropy table (JSON; `sharekan.entropy`).
ENTROPY_KEY = "entropy"
#: What `save`'s `entropy` accepts (None: a plain version-2 file).
ENTROPY_CODECS = (None, CODEC)
#: The metadata entry of a version-3 file holding the entries below, zstd-coded
#: (`sharekan.entropy.pack_metadata`).
PACKED_KEY = "packed"
PACKED_ENTRIES = ("layers", "report", "key_order", "config", "passthrough", ENTROPY_KEY)


def save(model: CompressedModel, path: str | os.PathLike[str], *,
         entropy: str | None = None) -> None:
    """Write `model` to `path` atomically (a temporary file, then renamed): a plain
    version-2 artifact (`entropy=None`), or with `entropy="zstd"` a version-3 one whose
    tensors are zstd-coded where that pays. Loading gives the same model either way.

    Raises:
        InvalidInputError: `entropy` is not one of `ENTROPY_CODECS`.
    """
    if entropy not in ENTROPY_CODECS or isinstance(entropy, bool):
        raise InvalidInputError(f"entropy={entropy!r}: expected one of {list(ENTROPY_CODECS)}")
    tensors = {k: np.ascontiguousarray(v) for k, v in model_tensors(model).items()}
    metadata = model_metadata(model)
    if entropy is not None:
        tensors, table = encode(tensors)
        metadata["format_version"] = ENTROPY_VERSION
        metadata[ENTROPY_KEY] = table_json(table)
        # the large JSON entries travel zstd-coded in one entry (read unpacks them)
        metadata[PACKED_KEY] = pack_metadata({k: metadata.pop(k) for k in PACKED_ENTRIES})
    # the digest covers the stored (encoded) bytes: a damaged blob fails it before decoding
    write(path, tensors, seal(tensors, metadata))


# ---------------------------------------------------------------------------- validation

def _fail(where: str, detail: str) -> ArtifactError:
    return ArtifactError(f"{where}: {detail}")


def _int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise _fail(where, f"{value} is outside [{lo}, {hi}]")
    return value


def _positive_float(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"expected a number, got {value!r}")
    v = float(value)
    # the evaluators use it as float32: it must stay finite and non-zero there, as must 1/v
    with np.errstate(over="ignore", divide="ignore"):
        v32 = np.float32(v) if math.isfinite(v) else np.float32(np.inf)
        ok = math.isfinite(v) and v > 0 and np.isfinite(v32) and v32 > 0 and np.isfinite(
            np.float32(1.0) / v32)
    if not ok:
        raise _fail(where, f"expected a finite number > 0 (also as float32), got {value!r}")
    return v


def parse_json(metadata: Mapping[str, str], key: str, kind: type) -> Any:
    """The metadata entry `key` parsed as JSON and checked to be a `kind`."""
    if key not in metadata:
        raise _fail("metadata", f"missing entry {key!r}")
    try:
        value = json.loads(metadata[key])
    except (ValueError, TypeError, RecursionError) as exc:
        raise _fail(f"metadata[{key!r}]", f"not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        raise _fail(f"metadata[{key!r}]", f"expected a JSON {kind.__name__}, got "
                    f"{type(value).__name__}")
    return value


def _tensor(tensors: Mapping[str, np.ndarray], name: str, dtype: str,
            shapes: list[tuple[int, ...]], finite: bool = False) -> np.ndarray:
    if name not in tensors:
        raise _fail(f"tensor {name!r}", "missing")
    array = tensors[name]
    if array.dtype != np.dtype(dtype):
        raise _fail(f"tensor {name!r}", f"expected dtype {dtype}, got {array.dtype}")
    if tuple(array.shape) not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise _fail(f"tensor {name!r}", f"expected shape {want}, got {tuple(array.shape)}")
    if finite and array.size and not np.isfinite(array).all():
        raise _fail(f"tensor {name!r}", "holds NaN or Inf")
    return array


def _check_weight(tensors: Mapping[str, np.ndarray], prefix: str, name: str,
                  n_edges: int, edge_shape: tuple[int, ...], n_out: int) -> bool:
    """Checks the stored form of a per-edge weight; False when absent."""
    forms = [f for f in (name, f"{name}_q", f"{name}_q4") if prefix + f in tensors]
    if not forms:
        if prefix + f"{name}_scale" in tensors:
            raise _fail(f"tensor {prefix}{name}_scale", f"present without {prefix}{name}")
        return False
    if len(forms) > 1:
        raise _fail(f"layer {prefix[:-1]!r}", f"{name} is stored twice ({', '.join(forms)})")
    form = forms[0]
    if form == name:
        _tensor(tensors, prefix + name, "float32", [edge_shape], finite=True)
        if prefix + f"{name}_scale" in tensors:
            raise _fail(f"tensor {prefix}{name}_scale", "present with float32 values")
        return True
    if form.endswith("_q4"):
        _tensor(tensors, prefix + form, "uint8", [((n_edges + 1) // 2,)])
    else:
        _tensor(tensors, prefix + form, "int8", [edge_shape])
    _tensor(tensors, prefix + f"{name}_scale", "float32", [(n_out,)], finite=True)
    return True


def _check_basis(where: str, meta: Mapping[str, Any], grid_size: int, k: int,
                 m: int) -> tuple[str, int]:
    """The basis kind and the width of its stored `grid` rows."""
    basis = meta.get("basis", {"kind": "bspline"})
    if not isinstance(basis, dict):
        raise _fail(f"{where} basis", f"expected an object, got {basis!r}")
    kind = basis.get("kind", "bspline")
    if kind not in BASIS_KINDS:
        raise _fail(f"{where} basis", f"unknown kind {kind!r}; known: {list(BASIS_KINDS)}")
    if kind == "bspline":
        if "k" in basis and basis["k"] != k:
            raise _fail(f"{where} basis", f"k={basis['k']!r} differs from spline_order={k}")
        if grid_size < 1 or m != grid_size + k:
            raise _fail(where, f"codebook width M={m} must equal grid_size + spline_order = "
                        f"{grid_size} + {k} with grid_size >= 1")
        return kind, grid_size + 2 * k + 1
    if k != 0:
        raise _fail(where, f"spline_order={k} for a {kind} basis (expected 0)")
    if kind == "rbf":
        _positive_float(f"{where} basis h", basis.get("h"))
        if m < 2:
            raise _fail(where, f"an RBF basis needs M >= 2 centres, got {m}")
        return kind, m
    degree = _int(f"{where} basis degree", basis.get("degree"), 0, MAX_COEFFS - 1)
    if m != degree + 1:
        raise _fail(where, f"codebook width M={m} must equal degree + 1 = {degree + 1}")
    if kind == "gram":
        weights = basis.get("beta_weights")
        if not isinstance(weights, list) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
            for w in weights
        ):
            raise _fail(f"{where} basis beta_weights", "expected a list of finite numbers")
    return kind, -1  # Chebyshev / Gram: any grid row width (the grid is not read)


def _check_semantics(where: str, sem: Any) -> None:
    if sem is None:
        return
    if not isinstance(sem, dict) or not set(sem) <= _SEMANTICS_KEYS:
        raise _fail(f"{where} semantics", f"expected an object with keys among "
                    f"{sorted(_SEMANTICS_KEYS)}, got {sem!r}")
    act = sem.get("base_activation", "silu")
    if act is not None and act not in BASE_ACTIVATIONS:
        raise _fail(f"{where} semantics", f"base_activation {act!r}; expected one of "
                    f"{list(BASE_ACTIVATIONS)} or null")
    if sem.get("input_norm") not in (None, "layernorm"):
        raise _fail(f"{where} semantics", f"input_norm {sem.get('input_norm')!r}")
    post = sem.get("post", [])
    if not isinstance(post, list) or not all(isinstance(p, str) for p in post):
        raise _fail(f"{where} semantics", f"post {post!r}: expected a list of names")
    if sem.get("conv") is not None and not isinstance(sem["conv"], dict):
        raise _fail(f"{where} semantics", f"conv {sem['conv']!r}: expected an object or null")
    if not isinstance(sem.get("base_bias", False), bool):
        raise _fail(f"{where} semantics", f"base_bias {sem['base_bias']!r}: expected a boolean")


def _check_layout_info(where: str, info: Any) -> None:
    if info is None:
        return
    if not isinstance(info, dict):
        raise _fail(f"{where} layout_info", f"expected an object, got {info!r}")
    if "layernorm_eps" in info:
        _positive_float(f"{where} layout_info layernorm_eps", info["layernorm_eps"])
    if not isinstance(info.get("norm_affine", True), bool):
        raise _fail(f"{where} layout_info", f"norm_affine {info['norm_affine']!r}")


def _check_source(where: str, source: Mapping[str, Any], cap: int) -> list[str]:
    keys = []
    for role, entry in source.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise _fail(f"{where} source {role!r}", f"expected {{key, shape, dtype}}, got {entry!r}")
        shape = entry.get("shape")
        if not isinstance(shape, list) or len(shape) > 8:
            raise _fail(f"{where} source {role!r}", f"shape {shape!r}: expected a list of <= 8 sizes")
        numel = 1
        for d in shape:
            numel *= _int(f"{where} source {role!r} shape", d, 0, MAX_EDGES)
        if numel > cap:  # decompress allocates it: no more than the layer can fill
            raise _fail(f"{where} source {role!r}",
                        f"shape {shape} holds {numel} values, more than the layer's {cap}")
        if not isinstance(entry.get("dtype"), str) or entry["dtype"] not in SOURCE_DTYPES:
            raise _fail(f"{where} source {role!r}", f"dtype {entry.get('dtype')!r}; expected "
                        f"one of {sorted(SOURCE_DTYPES)}")
        keys.append(entry["key"])
    return keys


def _check_codebook(tensors: Mapping[str, np.ndarray], prefix: str, k: int, m: int) -> None:
    """A (K, M) codebook stored as f32 `codebook` or int8 `codebook_q` with f32 scales (one
    per codeword or one for all), under `prefix`."""
    if prefix + "codebook" in tensors:
        _tensor(tensors, prefix + "codebook", "float32", [(k, m)], finite=True)
    else:
        _tensor(tensors, prefix + "codebook_q", "int8", [(k, m)])
        _tensor(tensors, prefix + "codebook_scale", "float32", [(k,), (1,)], finite=True)


def _check_stage(tensors: Mapping[str, np.ndarray], prefix: str, stage: str, where: str,
                 n_edges: int, edge: tuple[int, int], bits: int, names: tuple[str, ...]
                 ) -> dict[str, bool]:
    """Checks one stage's codes and per-edge weights (`_put_stage`), dense or sparse;
    returns which of `names` are stored. Its gains are required."""
    n_out = edge[1]
    count: int = n_edges
    shape: tuple[int, ...] = edge
    if prefix + stage + "active" in tensors:
        mask = _tensor(tensors, prefix + stage + "active", "uint8", [((n_edges + 7) // 8,)])
        flags = np.unpackbits(mask, bitorder="little")
        if flags[n_edges:].any():
            raise _fail(f"tensor {prefix}{stage}active", "bits set past the last edge")
        count = int(flags[:n_edges].sum())
        shape = (count,)
    _tensor(tensors, prefix + stage + "codes", "uint8", [((count * bits + 7) // 8,)])
    present = {name: _check_weight(tensors, prefix, stage + name, count, shape, n_out)
               for name in names}
    if not present["gains"]:
        raise _fail(where, f"no {stage}gains tensor ({stage}gains, {stage}gains_q or "
                    f"{stage}gains_q4)")
    return present


def _check_stages(tensors: Mapping[str, np.ndarray], prefix: str, where: str, stages: Any,
                  n_edges: int, edge: tuple[int, int], m: int) -> set[str]:
    """Checks the residual stages a layer declares; returns their tensor field names."""
    if stages is None:
        return set()
    if not isinstance(stages, list) or len(stages) > MAX_STAGES - 1:
        raise _fail(f"{where} stages", f"expected a list of at most {MAX_STAGES - 1} "
                    f"entries, got {stages!r:.80}")
    fields: set[str] = set()
    for index, entry in enumerate(stages, start=1):
        at = f"{where} stage {index + 1}"
        if not isinstance(entry, dict) or set(entry) != {"codebook_size", "bits"}:
            raise _fail(at, f"expected {{codebook_size, bits}}, got {entry!r:.80}")
        k = _int(f"{at} codebook_size", entry["codebook_size"], 1, MAX_CODEBOOK_SIZE)
        bits = _core.bits_for(k)
        if entry["bits"] != bits:
            raise _fail(at, f"bits={entry['bits']!r} but a {k}-word codebook needs {bits}")
        stage = f"s{index}_"
        if prefix + stage + "codebook" in tensors and prefix + stage + "codebook_q" in tensors:
            raise _fail(at, "stores both codebook and codebook_q")
        _check_codebook(tensors, prefix + stage, k, m)
        _check_stage(tensors, prefix, stage, at, n_edges, edge, bits, ("gains",))
        fields |= {stage + f for f in ("codebook", "codebook_q", "codebook_scale", "codes",
                                       "active", "gains", "gains_q", "gains_q4",
                                       "gains_scale")}
    return fields


def validate_layer(meta: Any, tensors: Mapping[str, np.ndarray]) -> set[str]:
    """Checks one layer entry of the `layers` metadata against its tensors; returns the
    names of the tensors it owns (its codebook group's excluded)."""
    if not isinstance(meta, dict):
        raise _fail("metadata 'layers'", f"expected objects, got {meta!r}")
    for key, kinds in _LAYER_KEYS.items():
        if key not in meta:
            raise _fail("metadata 'layers'", f"a layer entry lacks {key!r}")
        if not isinstance(meta[key], kinds) or isinstance(meta[key], bool):
            raise _fail("metadata 'layers'", f"{key}={meta[key]!r} has the wrong type")
    name = meta["name"]
    where = f"layer {name!r}"
    n_in = _int(f"{where} n_in", meta["n_in"], 1, MAX_DIM)
    n_out = _int(f"{where} n_out", meta["n_out"], 1, MAX_DIM)
    n_edges = n_in * n_out
    if n_edges > MAX_EDGES:
        raise _fail(where, f"n_in * n_out = {n_edges} edges exceeds {MAX_EDGES}")
    k = _int(f"{where} spline_order", meta["spline_order"], 0, MAX_SPLINE_ORDER)
    grid_size = _int(f"{where} grid_size", meta["grid_size"], 0, MAX_COEFFS)
    K = _int(f"{where} codebook_size", meta["codebook_size"], 1, MAX_CODEBOOK_SIZE)
    bits = _core.bits_for(K)
    if meta["bits"] != bits:
        raise _fail(where, f"bits={meta['bits']!r} but a {K}-word codebook needs {bits}")

    prefix = f"{name}."
    book = f"codebooks.{meta['codebook_group']}."
    if book + "codebook" in tensors:
        if book + "codebook_q" in tensors:
            raise _fail(where, f"codebook group {meta['codebook_group']!r} stores both "
                        "codebook and codebook_q")
        shape = tuple(tensors[book + "codebook"].shape)
    elif book + "codebook_q" in tensors:
        shape = tuple(tensors[book + "codebook_q"].shape)
    else:
        raise _fail(where, f"codebook group {meta['codebook_group']!r} has no codebook tensor")
    if len(shape) != 2 or shape[0] != K or not 1 <= shape[1] <= MAX_COEFFS:
        raise _fail(where, f"codebook shape {shape}; expected ({K}, M) with 1 <= M <= {MAX_COEFFS}")
    m = shape[1]
    _check_codebook(tensors, book, K, m)

    kind, width = _check_basis(where, meta, grid_size, k, m)
    rows = [(1,), (n_in,)]
    if width >= 0:
        grid = _tensor(tensors, prefix + "grid", "float32", [(r[0], width) for r in rows],
                       finite=True)
    else:  # not read by the basis: any row width up to the largest a layout writes
        stored = tensors.get(prefix + "grid")
        cols = stored.shape[-1] if stored is not None and stored.ndim == 2 else 1
        grid = _tensor(tensors, prefix + "grid", "float32", [(r[0], cols) for r in rows])
        if cols > 2 * MAX_COEFFS + 1:
            raise _fail(f"tensor {prefix}grid", f"{cols} columns is too wide")
    if kind == "bspline" and grid.size and not (np.diff(grid.astype(np.float64), axis=1) > 0).all():
        raise _fail(f"tensor {prefix}grid", "knots are not strictly increasing in every row")
    _check_semantics(where, meta.get("semantics"))
    input_norm = (meta.get("semantics") or {}).get("input_norm") == "layernorm"
    _check_layout_info(where, meta.get("layout_info"))

    edge = (n_in, n_out)
    present = _check_stage(tensors, prefix, "", where, n_edges, edge, bits, ("gains", "edge_bias"))
    has_edge_bias = present["edge_bias"]
    _check_weight(tensors, prefix, "base_weight", n_edges, edge, n_out)
    stage_fields = _check_stages(tensors, prefix, where, meta.get("stages"), n_edges, edge, m)
    if prefix + "out_bias" in tensors:
        _tensor(tensors, prefix + "out_bias", "float32", [(n_out,)], finite=True)
    elif not has_edge_bias:
        raise _fail(where, "neither edge_bias nor out_bias is stored")

    owned = {n for n in tensors if n.startswith(prefix) and "." not in n[len(prefix):]}
    known = {"codes", "active", "grid", "out_bias"} | {
        f"{w}{s}" for w in WEIGHT_FIELDS for s in ("", "_q", "_q4", "_scale")
    } | stage_fields
    for tensor_name in sorted(owned):
        field = tensor_name[len(prefix):]
        if field in known:
            continue
        if not field.startswith("extra_"):
            raise _fail(f"tensor {tensor_name!r}", f"unknown field {field!r} of {where}")
        extra = field[len("extra_"):]
        if extra in _EXTRA_LENGTHS:
            # a norm on the spline input (FastKAN) spans the inputs, a post-sum norm
            # (TorchKAN) and the base bias the outputs
            length = n_in if extra != "base_bias" and input_norm else n_out
            _tensor(tensors, tensor_name, "float32", [(length,)], finite=True)
        elif tensors[tensor_name].size > n_edges + 8:  # layout-specific (pykan's mask)
            raise _fail(f"tensor {tensor_name!r}", f"{tensors[tensor_name].size} values; a "
                        f"layer extra holds at most one per edge ({n_edges})")

    cap = n_edges * (m + 1) + n_in * max(grid.shape[1], 1) + n_in + n_out
    source = meta["source"]
    _check_source(where, source, cap)
    return owned


def validate(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Checks an artifact's metadata and tensors against each other (see the module
    docstring). Raises ArtifactError on the first inconsistency."""
    layers = parse_json(metadata, "layers", list)
    passthrough = parse_json(metadata, "passthrough", list)
    key_order = parse_json(metadata, "key_order", list)
    report = parse_json(metadata, "report", dict)
    config = parse_json(metadata, "config", dict)
    if not isinstance(config.get("overrides", {}), dict):
        raise _fail("metadata 'config'", f"overrides {config['overrides']!r}: expected an object")
    if not isinstance(metadata.get("source_layout"), str):
        raise _fail("metadata", "missing entry 'source_layout'")

    claimed: set[str] = set()
    names: set[str] = set()
    source_keys: list[str] = []
    for meta in layers:
        claimed |= validate_layer(meta, tensors)
        if meta["name"] in names:
            raise _fail("metadata 'layers'", f"layer {meta['name']!r} appears twice")
        names.add(meta["name"])
        source_keys += [e["key"] for e in meta["source"].values()]
        group = f"codebooks.{meta['codebook_group']}."
        claimed |= {n for n in tensors if n.startswith(group) and "." not in n[len(group):]}
    for key in passthrough:
        if not isinstance(key, str) or f"passthrough.{key}" not in tensors:
            raise _fail("metadata 'passthrough'", f"{key!r} has no tensor passthrough.{key}")
        claimed.add(f"passthrough.{key}")
    unclaimed = sorted(set(tensors) - claimed)
    if unclaimed:
        raise _fail("artifact", f"tensors no layer or passthrough entry claims: {unclaimed[:4]}")
    if not all(isinstance(k, str) for k in key_order) or len(set(key_order)) != len(key_order):
        raise _fail("metadata 'key_order'", "expected distinct key names")
    if set(key_order) != set(source_keys) | set(passthrough):
        missing = sorted(set(source_keys) | set(passthrough) - set(key_order))
        extra = sorted(set(key_order) - set(source_keys) - set(passthrough))
        raise _fail("metadata 'key_order'", f"does not list the stored keys (missing "
                    f"{missing[:4]}, unknown {extra[:4]})")
    entries = report.get("tensors")
    if not isinstance(entries, list):
        raise _fail("metadata 'report'", "no tensor list")
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("status") not in TENSOR_STATUSES:
            raise _fail("metadata 'report'", f"tensor entry {entry!r}: status must be one of "
                        f"{list(TENSOR_STATUSES)}")
        stored_as = "compressed" if entry.get("key") in source_keys else "passthrough"
        if entry.get("key") not in key_order:
            raise _fail("metadata 'report'", f"tensor {entry.get('key')!r} is not in key_order")
        if (entry["status"] == "compressed") != (stored_as == "compressed"):
            raise _fail("metadata 'report'", f"tensor {entry['key']!r} is listed as "
                        f"{entry['status']} but stored {stored_as}")
