"""Physical lower bounds of one forward call, per path (benches/sharekan_bench/lutham.py).

Machine figures come from `kernel_bench --machine` for the thread setting: FMA peak
(`fma_gflops`, 12 independent 8-lane FMA chains), streaming read bandwidth of buffers of
16 KiB / 256 KiB / 4 MiB / 16 MiB / 256 MiB per thread (`read_gbs`: L1, L2, L3, L3, DRAM on
this CPU), the rate of LUTHAM's gather-accumulate `acc[o] += g[o] * P[code[o]]` on
L1-resident data (`lookup_gps`) and of its decode `w[m][o] = g[o] * C[m][code[o]]`
(`decode_gps`; both compiled like the kernel, vectorised with AVX2 gathers where GCC does). A bound is max(compute time, memory time, gather time),
each a count divided by its measured rate; measured / bound says how far a path is from
what this machine can do with that many operations and bytes.

Counts per call (batch B, per layer; E = n_in * n_out edges, n_out padded to 8 where the
kernel pads):

- dense baseline (lutham/baseline/dense_kan.h): FLOPs 2 B E (k+2) (k+1 spline rows and the
  base row per edge and row); bytes: the weight rows the batch touches (per input the union
  over rows of the k+1-row windows, plus the base row; n_out values each, 4 bytes FP32 or 1
  byte int8), read once per 64-row tile, from the level that holds the whole weight set
  (L2 <= 512 KiB, L3 <= 32 MiB, else DRAM); the basis evaluation is not counted.
- LUTHAM projection path (batches below the kernel's decode_min_batch(layer), its cost model
  read from lutham/kernel/common.h): per row, per input,
  a K-entry table from k+1 codebook rows (2 K (k+1) FLOPs), then per edge one lookup
  (gather-accumulate) and, when stored, the edge-bias and base-weight FMAs (2 FLOPs each);
  bytes: the per-edge stream (code, gain, edge bias, base weight: 1 byte each in int8, 2-4
  for wider codes) once per row, from the level that holds the layer's LUTHAM data.
- LUTHAM decoded path (from decode_min_batch rows): per tile of kDecodeTile rows, the
  touched weight rows decoded (E x rows touched weights, 2 FLOPs each: gain and edge bias;
  no gather term, since the kernel may read the codebook without one table read per weight),
  then the dense FLOPs 2 B E (k+2) as the baseline; bytes: the per-edge stream once per
  tile. `decode_gps` (the plain decode loop's rate) is recorded, not used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

L2_BYTES = 512 * 1024
L3_BYTES = 32 * 1024 * 1024


def kernel_constants(src: Path) -> dict[str, int]:
    """The LUTHAM kernel's strategy constants from lutham/kernel/common.h: kDecodeMinBatch,
    the decoded tile (kDecodeTile, formerly kBatchTile) and the cost model of
    decode_min_batch (kDecodeCostD, kTableCostA, kLookupCostBE); absent ones are left out."""
    text = (src / "kernel" / "common.h").read_text()
    out: dict[str, int] = {}
    for name in ("kDecodeMinBatch", "kDecodeTile", "kBatchTile", "kDecodeCostD", "kTableCostA",
                 "kLookupCostBE"):
        m = re.search(rf"\b{name}\s*=\s*(\d+)", text)
        if m:
            out[name] = int(m.group(1))
    return out


def decode_min_batch(layer: LayerInfo, consts: dict[str, int]) -> int:
    """Rows from which the kernel decodes tiles (lutham.h decode_min_batch's cost model when
    common.h has it, else kDecodeMinBatch)."""
    lo = consts.get("kDecodeMinBatch", 12)
    if not all(n in consts for n in ("kDecodeCostD", "kTableCostA", "kLookupCostBE")):
        return lo
    decode = consts["kDecodeCostD"] * layer.n_out * layer.M
    per_row = consts["kTableCostA"] * layer.K * (layer.k + 1) + consts["kLookupCostBE"] * layer.n_out
    return max(lo, -(-decode // per_row))


def bandwidth(machine: dict[str, Any], nbytes: float) -> tuple[str, float]:
    """(level, bytes/s) of the cache level that holds a working set of nbytes."""
    bw = {int(k): v * 1e9 for k, v in machine["read_gbs"].items()}
    sizes = sorted(bw)
    if nbytes <= L2_BYTES:
        return "L2", bw[sizes[1]]
    if nbytes <= L3_BYTES:
        return "L3", bw[sizes[3]] if len(sizes) > 3 else bw[sizes[-2]]
    return "DRAM", bw[sizes[-1]]


@dataclass
class LayerInfo:
    n_in: int
    n_out: int
    M: int
    k: int
    K: int
    grid: np.ndarray            # (n_in or 1, M + k + 1)
    edge_bytes: int             # LUTHAM bytes per edge (codes + gains + edge bias + base)
    lutham_bytes: int           # the layer's LUTHAM data (per-edge + codebook + scales)


def windows(layer: LayerInfo, x: np.ndarray) -> np.ndarray:
    """(B, n_in) window start of each (row, input) as the baseline kernel reads it."""
    g = np.broadcast_to(layer.grid, (layer.n_in, layer.grid.shape[1]))
    inside = (x >= g[:, 0]) & (x < g[:, -1])
    j = np.empty(x.shape, dtype=np.int64)
    for i in range(layer.n_in):
        j[:, i] = np.searchsorted(g[i], x[:, i], side="right") - 1
    start = np.clip(j - layer.k, 0, layer.M - layer.k - 1)
    return np.where(inside, start, 0)


def touched_rows(layer: LayerInfo, x: np.ndarray) -> int:
    """Sum over inputs of the weight rows the B rows of x touch (windows' union + base)."""
    s = windows(layer, x)
    total = 0
    for i in range(layer.n_in):
        rows = np.zeros(layer.M, dtype=bool)
        for st in np.unique(s[:, i]):
            rows[st:st + layer.k + 1] = True
        total += int(rows.sum()) + 1
    return total


def layer_bounds(layer: LayerInfo, x: np.ndarray, machine: dict[str, Any],
                 consts: dict[str, int]) -> dict[str, dict[str, float]]:
    """Bounds (seconds) and counts of one layer on inputs x (B, n_in)."""
    B = x.shape[0]
    E = layer.n_in * layer.n_out
    ld = (layer.n_out + 7) // 8 * 8
    flops_peak = machine["fma_gflops"] * 1e9
    lookups = machine["lookup_gps"] * 1e9
    tile = 64
    out: dict[str, dict[str, float]] = {}
    dense_flops = 2.0 * B * E * (layer.k + 2)
    rows = sum(touched_rows(layer, x[t:t + tile]) for t in range(0, B, tile))
    for name, wb in (("dense_f32", 4), ("dense_i8", 1)):
        total = layer.n_in * (layer.M + 1) * ld * wb
        level, bw = bandwidth(machine, total)
        nbytes = rows * ld * wb
        out[name] = {"flops": dense_flops, "bytes": nbytes, "level": level, "gathers": 0.0,
                     "t_compute": dense_flops / flops_peak, "t_memory": nbytes / bw,
                     "t_gather": 0.0}
    level, bw = bandwidth(machine, layer.lutham_bytes)
    if B < decode_min_batch(layer, consts):
        flops = B * (2.0 * layer.n_in * layer.K * (layer.k + 1) + 2.0 * E * 2)
        gathers = float(B * E)
        nbytes = float(B * E * layer.edge_bytes)
        path = "projection"
    else:
        bt = consts.get("kDecodeTile", consts.get("kBatchTile", 64))
        decoded_rows = sum(touched_rows(layer, x[t:t + bt]) - layer.n_in for t in range(0, B, bt))
        decoded = float(decoded_rows * layer.n_out)
        # a decoded weight costs at least a multiply and an add (gain, edge bias); how it
        # reads the codebook (table reads, or rows transposed in registers) is the kernel's
        # choice, so no gather term: the bound stays a lower bound for any decode scheme
        gathers = 0.0
        flops = dense_flops + 2.0 * decoded
        nbytes = float(((B + bt - 1) // bt) * E * layer.edge_bytes)
        path = "decoded"
    out["lutham"] = {"flops": flops, "bytes": nbytes, "level": level, "gathers": gathers,
                     "t_compute": flops / flops_peak, "t_memory": nbytes / bw,
                     "t_gather": gathers / lookups, "path": path,
                     "decoded_weights": decoded if path == "decoded" else 0.0}
    for v in out.values():
        v["t_bound"] = max(v["t_compute"], v["t_memory"], v["t_gather"])
    return out


def head_bounds(layers: list[LayerInfo], activations: list[np.ndarray], machine: dict[str, Any],
                consts: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per path: the sum over layers of the bounds (us) and counts; `limit` names the term
    that dominates the head's bound."""
    total: dict[str, dict[str, Any]] = {}
    for layer, x in zip(layers, activations):
        for path, v in layer_bounds(layer, x, machine, consts).items():
            t = total.setdefault(path, {"flops": 0.0, "bytes": 0.0, "gathers": 0.0,
                                        "t_compute": 0.0, "t_memory": 0.0, "t_gather": 0.0,
                                        "t_bound": 0.0, "levels": [], "paths": []})
            for key in ("flops", "bytes", "gathers", "t_compute", "t_memory", "t_gather",
                        "t_bound"):
                t[key] += v[key]
            t["levels"].append(v["level"])
            if "path" in v:
                t["paths"].append(v["path"])
    for t in total.values():
        terms = {"compute": t["t_compute"], "memory": t["t_memory"], "gathers": t["t_gather"]}
        t["limit"] = max(terms, key=terms.get)
        t["bound_us"] = t.pop("t_bound") * 1e6
        for key in ("t_compute", "t_memory", "t_gather"):
            t[key.replace("t_", "") + "_us"] = t.pop(key) * 1e6
    return total
