"""Rate-distortion of sharekan against faiss vector quantizers on trained KAN layers.

Every quantizer codes the same thing: each edge's M spline coefficients (the layer's scaled
coefficients from `sharekan.layouts`, base branch excluded). Scored per layer at equal
bytes per edge, everything stored counted (codes, codebooks as float32, scales, biases):

- coefficient SQNR = 10 log10(sum c^2 / sum e^2), e = c - c_hat;
- function SQNR = 10 log10(sum c^T G c / sum e^T G e), G the B-spline Gram matrix over the
  grid range (the L2 error of the edge functions, what the layer outputs see);
- function SQNR with constants folded: the same with each edge's error made orthogonal (in
  G) to the constant function first. Inside the grid a per-edge constant sums into one float
  per output (sharekan's `bias="fold"`), so this is the error a folded layer keeps; the
  `fold` rows are compared on it, against faiss rows scored the same way.

faiss (8-bit codebooks, float32 codewords): k-means K = 256, ResidualQuantizer (beam search)
and ProductQuantizer with S = 1..4 codebooks, LocalSearchQuantizer with S = 1, 2, each on the raw
coefficients and on Gram-whitened ones (W = C L, L = cholesky(G), so squared distances are
the function metric; decoded with L^-T). Layers with fewer than SMALL_LAYER edges also get
4-bit codebooks (a 256-word float codebook alone costs more than the budgets there).
Training uses a seeded subsample; all edges are encoded. The order-0 entropy of each code
stream is recorded too (what entropy-coding faiss's codes would give).

sharekan: `SHAREKAN_CONFIGS` rows through `sharekan.compress`; spline bytes = the layer's
`bytes_compressed` minus its base-branch tensors (`base_*`); the "stored" column is the
entropy-coded size of the same tensors where `sharekan.entropy.sizes` exists.

Besides the best faiss row within each budget, every sharekan row is compared with the faiss
mix at its own bytes (`faiss_mix_db`): faiss's grid jumps by about a byte per stage.

Run (from the repository root; ~16 minutes on 2 shared cores, `--quick` ~2.5):
    PYTHONPATH=benches .venv/bin/python -m sharekan_bench ratedistortion [--quick] [--report]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sharekan_bench import report

ROOT = Path(__file__).resolve().parents[2]  # the repository
BUDGETS = (1, 2, 3, 4)
#: a faiss row fits a budget up to this much over it (codebook overhead of a few %)
SLACK = 0.1
TRAIN_EDGES = 65_536
QUICK_TRAIN_EDGES = 32_768
SMALL_LAYER = 65_536
RQ_BEAM = 5
#: LSQ trains ~10x slower than RQ here (its ICM couples all S codebooks) and trails RQ at
#: S = 1, 2 on these layers, so it runs S <= 2 on a smaller training subsample to fit the time
LSQ_STAGES = (1, 2)
LSQ_TRAIN_EDGES = 16_384

#: (label, `sharekan.Config` keyword arguments): one line per sharekan row. Fields this
#: sharekan's Config lacks (e.g. `stages` before it lands) skip the row with a note.
SHAREKAN_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    (f"K={k} g{g} {bias}", {"codebook_size": k, "gain_bits": g, "bias": bias, "metric": "function"})
    for bias in ("edge", "fold") for g in (8, 4) for k in (16, 64, 256, 1024, 4096)
] + [
    # residual stages under a byte budget, run on each layer alone so that the budget (met
    # on the entropy-coded artifact's spline bytes) is that layer's; K per stage by the
    # layer's size (`budget_codebook_size`). Whole edges dropped where that costs the least
    # error per byte
    # (budgets on the coded bytes; the plain artifact stores ~1.2-1.35x more, hence the
    # extra edge budgets that land inside the plain-bytes bins)
    (f"4 stages drop {b} B {bias}", {"bias": bias, "metric": "function", "stages": 4,
                                     "target_bytes_per_edge": b, "drop_edges": True})
    for bias, budgets in (("edge", (0.8, 0.9, 1.45, 1.65, 1.9, 2.5, 2.9, 3.3, 3.9)),
                          ("fold", (0.9, 1.9, 2.9, 3.9)))
    for b in budgets
] + [
    # the default allocation: the first stage (K = 16, 4-bit gains) codes every edge
    (f"K=16 g4 + 3 stages {b} B fold", {"codebook_size": 16, "gain_bits": 4, "bias": "fold",
                                        "metric": "function", "stages": 4,
                                        "target_bytes_per_edge": b})
    for b in (1.9, 2.9, 3.9)
]


def budget_codebook_size(edges: int) -> int:
    """K of a budget row's stages: a K-word codebook costs ~17 K bytes per stage, which a
    small layer cannot carry at 1 B/edge (K = 256 on 2,560 edges: 1.7 B/edge alone)."""
    return 256 if edges >= 65_536 else 64 if edges >= 8_192 else 16


# ----------------------------------------------------------------------------- layers


def classification_head(cache: Path, log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], str]:
    """The demo's trained head 1280-256-10 (efficient-kan state dict) and where it came from."""
    from sharekan._core import load_safetensors

    path = cache / "demo" / "head_dense.safetensors"
    if path.exists():
        return load_safetensors(str(path))[0], f"demo head {path}"
    from sharekan_bench.lutham_heads import HEADS, _demo_dense

    model, _, what = _demo_dense(HEADS["demo"], log)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}, what


def detection_head(cache: Path, quick: bool, log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], str]:
    """The detection benchmark's trained KAN head (trained once and cached by detection.py)."""
    from sharekan_bench.detection import DetConfig, quick_config, trained_head, voc_sets

    cfg = quick_config() if quick else DetConfig()
    sd, seconds, _, x = trained_head(cache, cfg, voc_sets(cache, cfg, log), log)
    return sd, (f"detection head {x.shape[1]}-{cfg.hidden}-25 (generated VOC-20, {cfg.n_train} images, "
                f"{cfg.epochs} epochs, trained in {seconds:.0f} s)")


def layer_sources(sd: dict[str, np.ndarray]) -> list[Any]:
    from sharekan.layouts import detect_layout

    return detect_layout(sd).extract(sd).layers


# ----------------------------------------------------------------------------- metrics


def errors(c: np.ndarray, c_hat: np.ndarray, gram: np.ndarray) -> dict[str, float]:
    """Coefficient, function and constants-folded function SQNR (dB) of c_hat, both (E, M)."""
    e = c - c_hat
    ge = e @ gram
    one = np.ones(gram.shape[0])
    g1 = gram @ one
    # per-edge constant that a folded output bias absorbs: the G-projection of e on 1
    e_fold = e - np.outer(ge @ one / (one @ g1), one)
    sig_f = float(np.sum((c @ gram) * c))
    return {"coeff_sqnr_db": _db(float(np.sum(c * c)), float(np.sum(e * e))),
            "func_sqnr_db": _db(sig_f, float(np.sum(ge * e))),
            "func_fold_sqnr_db": _db(sig_f, float(np.sum((e_fold @ gram) * e_fold)))}


def _db(signal: float, noise: float) -> float:
    return math.inf if noise <= 0 else 10.0 * math.log10(signal / noise)


def entropy_bits(codes: np.ndarray) -> float:
    """Order-0 empirical entropy in bits per row, summed over the columns (code streams)."""
    total = 0.0
    for col in codes.T:
        p = np.bincount(col).astype(np.float64)
        p = p[p > 0] / len(col)
        total -= float(np.sum(p * np.log2(p)))
    return total


# ----------------------------------------------------------------------------- faiss


@dataclasses.dataclass(frozen=True)
class FaissSpec:
    family: str  # kmeans, RQ, LSQ, PQ
    stages: int
    nbits: int

    @property
    def label(self) -> str:
        return f"{self.family} {self.stages}x{self.nbits}"


def faiss_specs(edges: int, quick: bool) -> list[FaissSpec]:
    stages = (1, 2) if quick else (1, 2, 3, 4)
    bits = (8, 4) if edges < SMALL_LAYER else (8,)
    specs = [FaissSpec("kmeans", 1, b) for b in bits]
    for fam in ("RQ", "LSQ", "PQ"):
        # quick: LSQ 1 x 8 only, its 2 x 8 alone would take a third of the 3 minutes
        lsq = LSQ_STAGES[:1] if quick else LSQ_STAGES
        specs += [FaissSpec(fam, s, b) for b in bits for s in stages if fam != "LSQ" or s in lsq]
    return specs


def faiss_quantize(spec: FaissSpec, x: np.ndarray, train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(decoded (E, M) float64, code streams (E, S) int, codebook floats) of one quantizer."""
    import faiss

    x32 = np.ascontiguousarray(x, dtype=np.float32)
    t32 = np.ascontiguousarray(train, dtype=np.float32)
    d = x.shape[1]
    k = 1 << spec.nbits
    if spec.family == "kmeans":
        km: Any = faiss.Kmeans(d, k, niter=25, seed=seed, verbose=False)
        km.train(t32)
        _, labels = km.index.search(x32, 1)
        return km.centroids[labels[:, 0]].astype(np.float64), labels.astype(np.int64), k * d
    q: Any  # faiss's stubs type each quantizer apart; they share train / compute_codes / decode
    if spec.family == "PQ":
        dp = -(-d // spec.stages) * spec.stages  # zero columns so the sub-vectors split evenly
        x32 = np.pad(x32, ((0, 0), (0, dp - d)))
        t32 = np.pad(t32, ((0, 0), (0, dp - d)))
        q = faiss.ProductQuantizer(dp, spec.stages, spec.nbits)
        q.cp.seed = seed
        floats = k * dp
    elif spec.family == "RQ":
        q = faiss.ResidualQuantizer(d, spec.stages, spec.nbits)
        q.max_beam_size = RQ_BEAM
        q.cp.seed = seed
        floats = spec.stages * k * d
    elif spec.family == "LSQ":
        q = faiss.LocalSearchQuantizer(d, spec.stages, spec.nbits)
        q.random_seed = seed
        floats = spec.stages * k * d
    else:
        raise ValueError(spec.family)
    q.train(t32)
    packed = q.compute_codes(x32)
    decoded = q.decode(packed)[:, :d].astype(np.float64)
    return decoded, unpack_codes(packed, spec.stages, spec.nbits), floats


def unpack_codes(packed: np.ndarray, stages: int, nbits: int) -> np.ndarray:
    """faiss's bit-packed codes (LSB first, `BitstringWriter`) -> (E, stages) indices."""
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : stages * nbits]
    return bits.reshape(len(packed), stages, nbits).astype(np.int64) @ (1 << np.arange(nbits))


def run_faiss(name: str, src: Any, train_edges: int, quick: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    c = src.coeffs.reshape(-1, src.coeffs.shape[-1]).astype(np.float64)
    gram = src.basis.gram()
    chol = np.linalg.cholesky(gram)  # G = L L^T
    edges = len(c)
    rng = np.random.default_rng(0)
    rows_t = np.sort(rng.choice(edges, train_edges, replace=False)) if edges > train_edges else np.arange(edges)
    rows = []
    for space in ("raw", "whitened"):
        x = c if space == "raw" else c @ chol  # ||c L||^2 = c^T G c
        for spec in faiss_specs(edges, quick):
            t0 = time.perf_counter()
            train = x[rows_t[:: -(-len(rows_t) // LSQ_TRAIN_EDGES)]] if spec.family == "LSQ" else x[rows_t]
            x_hat, codes, floats = faiss_quantize(spec, x, train, seed=0)
            seconds = time.perf_counter() - t0
            # W = C L  ->  C = W L^-1 (solve L^T C^T = W^T)
            c_hat = x_hat if space == "raw" else np.linalg.solve(chol.T, x_hat.T).T
            code_bits = spec.stages * spec.nbits
            h = entropy_bits(codes)
            row = {"layer": name, "method": "faiss", "family": spec.family, "space": space,
                   "label": f"{spec.label} {space}", "stages": spec.stages, "nbits": spec.nbits,
                   "bytes_per_edge": (code_bits / 8 * edges + 4 * floats) / edges,
                   "code_bits_per_edge": code_bits, "codebook_floats": floats,
                   "entropy_bits_per_edge": h,
                   "entropy_bytes_per_edge": (h / 8 * edges + 4 * floats) / edges,
                   **errors(c, c_hat, gram), "seconds": round(seconds, 2)}
            rows.append(row)
            log(f"  {name} faiss {row['label']:22s} {row['bytes_per_edge']:6.3f} B/edge  "
                f"func {row['func_sqnr_db']:6.2f} dB  coef {row['coeff_sqnr_db']:6.2f} dB  "
                f"H {h:5.2f} bits  ({seconds:.1f} s)")
    return rows


# ----------------------------------------------------------------------------- sharekan


def _entropy_sizes() -> Callable[[dict[str, np.ndarray]], dict[str, Any]] | None:
    """`sharekan.entropy.sizes` where this sharekan has it (entropy-coded artifacts), else None."""
    if importlib.util.find_spec("sharekan.entropy") is None:
        return None
    import sharekan.entropy

    return getattr(sharekan.entropy, "sizes", None) if hasattr(sharekan.entropy, "sizes") else None


def run_sharekan(sd: dict[str, np.ndarray], sources: list[Any], configs: Iterable[tuple[str, dict[str, Any]]],
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    import sharekan

    fields = {f.name for f in dataclasses.fields(sharekan.Config)}
    sizes = _entropy_sizes()
    edges = {s.name: s.n_in * s.n_out for s in sources}
    rows = []
    def runs(label: str, kwargs: dict[str, Any]) -> Iterable[tuple[Any, Any, Any, float, str]]:
        """(source, its compressed layer, its report, seconds, row label) of every reported
        layer."""
        if "target_bytes_per_edge" in kwargs:  # a budget: each layer alone, K by its size
            for src in sources:
                k = budget_codebook_size(edges[src.name])
                own = {key: v for key, v in sd.items() if key.startswith(src.name + ".")}
                cfg = sharekan.Config(**{"codebook_size": k, "stage_codebook_size": k, **kwargs})
                t0 = time.perf_counter()
                model = sharekan.compress(own, cfg)
                yield (src, model.layers[src.name], model.report.layers[0],
                       time.perf_counter() - t0, label.replace("stages", f"stages K={k}", 1))
            return
        k = kwargs.get("codebook_size", 256)
        # K may not exceed a layer's edges: such layers get their largest K and are not reported
        small = {n: {"codebook_size": e} for n, e in edges.items() if e < k}
        cfg = sharekan.Config(**{**kwargs, "overrides": {**small, **kwargs.get("overrides", {})}})
        t0 = time.perf_counter()
        model = sharekan.compress(dict(sd), cfg)
        seconds = time.perf_counter() - t0
        for src, rep in zip(sources, model.report.layers):
            if src.name not in small:
                yield src, model.layers[src.name], rep, seconds, label

    for name, kwargs in configs:
        missing = set(kwargs) - fields
        if missing:
            log(f"  sharekan {name}: skipped, this Config has no {sorted(missing)}")
            continue
        for src, layer, rep, seconds, label in runs(name, kwargs):
            base = {t: b for t, b in rep.tensor_bytes.items() if t.startswith("base_")}
            spline = rep.bytes_compressed - sum(base.values())
            c = src.coeffs.reshape(-1, src.coeffs.shape[-1]).astype(np.float64)
            c_hat = layer.decoded_coeffs().reshape(c.shape)
            stored = None
            if sizes is not None:
                tensors = {**layer.stored_tensors(), **layer.stored_codebook()}
                stored = sizes({t: a for t, a in tensors.items() if not t.startswith("base_")})["stored"]
            row = {"layer": src.name, "method": "sharekan", "family": _family(kwargs), "label": label,
                   "config": kwargs, "bias": rep.bias,
                   "bytes_per_edge": spline / rep.edges, "all_bytes_per_edge": rep.bytes_compressed / rep.edges,
                   "stored_bytes_per_edge": None if stored is None else stored / rep.edges,
                   "tensor_bytes": rep.tensor_bytes, **errors(c, c_hat, src.basis.gram()),
                   "report_func_sqnr_db": rep.func_sqnr_db, "seconds": round(seconds, 2)}
            rows.append(row)
            log(f"  {src.name} sharekan {label:22s} {row['bytes_per_edge']:6.3f} B/edge  "
                f"func {row['func_sqnr_db']:6.2f} dB (folded {row['func_fold_sqnr_db']:6.2f})  "
                f"coef {row['coeff_sqnr_db']:6.2f} dB  ({seconds:.1f} s)")
    return rows


def _family(kwargs: dict[str, Any]) -> str:
    """Plot line of a sharekan row: everything but the codebook size."""
    rest = {k: v for k, v in kwargs.items()
            if k not in ("codebook_size", "metric", "target_bytes_per_edge")}
    return "sharekan " + " ".join(f"{k}={v}" for k, v in rest.items())


# ----------------------------------------------------------------------------- comparison


def compared_metric(row: dict[str, Any]) -> str:
    """Folded sharekan rows are scored with their per-edge constants folded (see module doc)."""
    return "func_fold_sqnr_db" if row.get("bias") == "fold" else "func_sqnr_db"


def best_faiss(rows: list[dict[str, Any]], layer: str, budget: float, metric: str) -> dict[str, Any] | None:
    fits = [r for r in rows if r["method"] == "faiss" and r["layer"] == layer and r["bytes_per_edge"] <= budget + SLACK]
    return max(fits, key=lambda r: r[metric], default=None)


def faiss_mix_db(rows: list[dict[str, Any]], layer: str, metric: str, at: float) -> float | None:
    """SQNR of the best faiss mix at `at` bytes/edge: coding one share of the edges with one
    faiss row and the rest with another reaches every point between them with the noise
    powers mixed linearly, so the faiss frontier is the lower convex hull of (bytes, noise).
    None below the cheapest faiss row."""
    pts = sorted((r["bytes_per_edge"], 10.0 ** (-r[metric] / 10.0)) for r in rows
                 if r["method"] == "faiss" and r["layer"] == layer)
    if not pts or at < pts[0][0]:
        return None
    hull: list[tuple[float, float]] = []
    for p in pts:  # Andrew's monotone chain, lower half
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) <= 0:
            hull.pop()
        hull.append(p)
    hull = hull[: int(np.argmin([n for _, n in hull])) + 1]  # more bytes never have to cost SQNR
    noise = hull[-1][1]
    for (x0, n0), (x1, n1) in zip(hull, hull[1:]):
        if x0 <= at <= x1:
            noise = n0 + (n1 - n0) * (at - x0) / (x1 - x0)
            break
    return -10.0 * math.log10(noise)


def _vs(rows: list[dict[str, Any]], layer: str, r: dict[str, Any], metric: str,
        ref: dict[str, Any] | None) -> dict[str, Any]:
    """A sharekan row against the best faiss row in its budget and the faiss mix at its bytes."""
    mix = faiss_mix_db(rows, layer, metric, r["bytes_per_edge"])
    return {"label": r["label"], "bytes_per_edge": r["bytes_per_edge"], "metric": metric, "sqnr_db": r[metric],
            "margin_db": None if ref is None else r[metric] - ref[metric],
            "faiss_mix_db": mix, "margin_mix_db": None if mix is None else r[metric] - mix}


def budget_tables(rows: list[dict[str, Any]], layer: str, budgets: Iterable[int]) -> list[dict[str, Any]]:
    """Per budget: best faiss (plain and folded metric) and the sharekan rows in that budget's
    bin (B - 1 + SLACK, B + SLACK], each with its margin over the best faiss row and over the
    faiss mix at the row's own bytes."""
    out, lo = [], 0.0
    for b in budgets:
        entry: dict[str, Any] = {"budget": b, "best_faiss": best_faiss(rows, layer, b, "func_sqnr_db"),
                 "best_faiss_fold": best_faiss(rows, layer, b, "func_fold_sqnr_db"), "sharekan": []}
        for r in rows:
            if r["method"] == "sharekan" and r["layer"] == layer and lo < r["bytes_per_edge"] <= b + SLACK:
                metric = compared_metric(r)
                ref = entry["best_faiss_fold" if metric == "func_fold_sqnr_db" else "best_faiss"]
                entry["sharekan"].append(_vs(rows, layer, r, metric, ref))
        # the best sharekan row of each bias mode anywhere within the budget
        for bias, metric in (("edge", "func_sqnr_db"), ("fold", "func_fold_sqnr_db")):
            fits = [r for r in rows if r["method"] == "sharekan" and r["layer"] == layer and r["bias"] == bias
                    and r["bytes_per_edge"] <= b + SLACK]
            best = max(fits, key=lambda r: r[metric], default=None)
            ref = entry["best_faiss_fold" if bias == "fold" else "best_faiss"]
            entry[f"best_sharekan_{bias}"] = None if best is None else _vs(rows, layer, best, metric, ref)
        # on entropy-coded bytes: sharekan's zstd-coded tensors against faiss's codes at their
        # order-0 entropy (both as small as their stored form can be made)
        for bias, metric in (("edge", "func_sqnr_db"), ("fold", "func_fold_sqnr_db")):
            coded = [r for r in rows if r["method"] == "faiss" and r["layer"] == layer
                     and r["entropy_bytes_per_edge"] <= b + SLACK]
            ref = max(coded, key=lambda r: r[metric], default=None)
            fits = [r for r in rows if r["method"] == "sharekan" and r["layer"] == layer
                    and r["bias"] == bias and r.get("stored_bytes_per_edge") is not None
                    and r["stored_bytes_per_edge"] <= b + SLACK]
            best = max(fits, key=lambda r: r[metric], default=None)
            entry[f"coded_{bias}"] = {
                "faiss": None if ref is None else {"label": ref["label"], "sqnr_db": ref[metric],
                                                   "bytes_per_edge": ref["entropy_bytes_per_edge"]},
                "sharekan": None if best is None else {
                    "label": best["label"], "sqnr_db": best[metric],
                    "bytes_per_edge": best["stored_bytes_per_edge"],
                    "margin_db": None if ref is None else best[metric] - ref[metric]}}
        out.append(entry)
        lo = b + SLACK
    return out


# ----------------------------------------------------------------------------- report


def markdown(record: dict[str, Any]) -> str:
    env = record["environment"]
    lines = ["# Rate-distortion: sharekan against faiss vector quantizers", "",
             f"Command: `{record['command']}`. Machine: {env.get('cpu_model', '?')}, "
             f"{env.get('affinity_cpus', '?')} cores (shared), faiss {env.get('faiss', '?')}, "
             f"sharekan {env.get('sharekan', '?')} (commit {env.get('git_commit', '?')}, working tree). "
             f"Wall time {record['seconds']:.0f} s (load average at the end "
             f"{', '.join(f'{v:.1f}' for v in env.get('load_average', []))}).", "",
             "Each edge's M = 13 spline coefficients c (scaled, base branch excluded) are coded; "
             "`B/edge` counts everything stored for them: code bits / 8, codebooks as float32, "
             "scales, gains, biases (sharekan: the layer's `bytes_compressed` minus its `base_*` "
             "tensors, so including the 68-byte grid). Function SQNR = 10 log10(sum c^T G c / "
             "sum e^T G e), G the B-spline Gram matrix over the grid range; `folded` removes each "
             "edge's constant error first (exact for `bias=\"fold\"` inside the grid, where the "
             "constants sum into one float per output): sharekan `fold` rows are compared on it. "
             f"Best faiss = the highest SQNR of all faiss rows with B/edge <= budget + {SLACK}. "
             f"faiss training: a seeded subsample of {record['train_edges']:,} edges (all edges "
             f"encoded; LSQ: S <= {max(record['lsq_stages'])}, every k-th of those edges, at most {LSQ_TRAIN_EDGES:,}, "
             f"as its training is ~10x RQ's); RQ beam {RQ_BEAM}; PQ pads M to a multiple of S with zero columns. "
             "`H` = order-0 entropy of faiss's code streams (bits/edge); `H B/edge` = the bytes "
             "if those codes were entropy coded. sharekan `stored B/edge`: the same tensors "
             "through `sharekan.entropy.sizes` (zstd) where available.", ""]
    lines += ["## Summary: best within each budget", "",
              "Function SQNR dB (B/edge) of the best faiss row and the best sharekan row of each bias "
              "mode with B/edge <= budget + 0.1; `fold` rows and their faiss reference on the folded "
              "metric. margin = sharekan - best faiss row in the budget; `mix` = sharekan - the faiss "
              "mix at the sharekan row's own bytes (two faiss rows time-shared over the edges, noise "
              "powers mixed linearly: the lower convex hull of faiss's (bytes, noise) points). The "
              "mix is the fairer reference where faiss's grid has no row near the sharekan row's bytes "
              "(on the demo's layer 0 an 8-bit stage costs 1.04 B/edge, so S x 8 lands just over S + "
              "0.1 and the best row within 3 B/edge is the 2 x 8 one).", ""]
    lines += report.md_table(
        ["head", "layer", "budget", "best faiss", "sharekan edge", "margin", "mix", "best faiss (folded)",
         "sharekan fold (folded)", "margin", "mix"],
        [[head["name"], layer["name"], b["budget"], _cell(b["best_faiss"], "func_sqnr_db"),
          _cell(b["best_sharekan_edge"]), _margin(b["best_sharekan_edge"]),
          _margin(b["best_sharekan_edge"], "margin_mix_db"),
          _cell(b["best_faiss_fold"], "func_fold_sqnr_db"), _cell(b["best_sharekan_fold"]),
          _margin(b["best_sharekan_fold"]), _margin(b["best_sharekan_fold"], "margin_mix_db")]
         for head in record["heads"] for layer in head["layers"] for b in layer["budgets"]],
        align="llrllrrllrr")
    lines += ["", "## Summary on entropy-coded bytes", "",
              "The same budgets, each side at its smallest stored form: sharekan's tensors "
              "zstd-coded as `save(path, entropy=\"zstd\")` stores them (`stored B/edge`), faiss's "
              "codes at their order-0 entropy (`H B/edge`, a bound no real coder beats) plus its "
              "float32 codebooks. margin = sharekan - faiss.", ""]
    lines += report.md_table(
        ["head", "layer", "budget", "faiss (H B/edge)", "sharekan edge (stored)", "margin",
         "faiss folded (H B/edge)", "sharekan fold (stored, folded)", "margin"],
        [[head["name"], layer["name"], b["budget"]]
         + [cell for bias in ("edge", "fold") for cell in _coded_cells(b.get(f"coded_{bias}"))]
         for head in record["heads"] for layer in head["layers"] for b in layer["budgets"]],
        align="llrllrllr")
    lines.append("")
    for head in record["heads"]:
        lines += [f"## {head['name']}", "", head["what"], ""]
        for layer in head["layers"]:
            lines += [f"### {layer['name']}: {layer['n_in']} x {layer['n_out']} = {layer['edges']:,} edges, "
                      f"M = {layer['n_coeffs']}", ""]
            for t in layer["budgets"]:
                lines += _budget_lines(t)
    lines += ["## All rows", ""]
    for head in record["heads"]:
        for layer in head["layers"]:
            lines += [f"### {head['name']} {layer['name']}", ""]
            lines += report.md_table(
                ["method", "B/edge", "all B/edge", "stored / H B/edge", "H bits", "coef dB", "func dB", "folded dB", "s"],
                [_full_row(r) for r in sorted(layer["rows"], key=lambda r: (r["method"], r["bytes_per_edge"]))],
                align="lrrrrrrrr")
            lines.append("")
    return "\n".join(lines) + "\n"


def _coded_cells(entry: dict[str, Any] | None) -> list[str]:
    if entry is None:
        return ["-", "-", "-"]
    return [_cell(entry["faiss"]), _cell(entry["sharekan"]), _margin(entry["sharekan"])]


def _cell(row: dict[str, Any] | None, metric: str = "sqnr_db") -> str:
    return "-" if row is None else f"{row['label']}: {row[metric]:.2f} ({row['bytes_per_edge']:.2f})"


def _margin(row: dict[str, Any] | None, key: str = "margin_db") -> str:
    return "-" if row is None or row[key] is None else f"{row[key]:+.2f}"


def _budget_lines(t: dict[str, Any]) -> list[str]:
    b, f, ff = t["budget"], t["best_faiss"], t["best_faiss_fold"]
    if f is None:
        head = f"**{b} B/edge**: no faiss row fits (codebooks alone exceed it)."
    else:
        head = (f"**{b} B/edge**: best faiss {f['label']} ({f['bytes_per_edge']:.3f} B/edge) "
                f"{f['func_sqnr_db']:.2f} dB function SQNR; folded metric: {ff['label']} "
                f"{ff['func_fold_sqnr_db']:.2f} dB.")
    rows = [[s["label"], f"{s['bytes_per_edge']:.3f}", "folded" if s["metric"] == "func_fold_sqnr_db" else "function",
             f"{s['sqnr_db']:.2f}", _margin(s), "-" if s["faiss_mix_db"] is None else f"{s['faiss_mix_db']:.2f}",
             _margin(s, "margin_mix_db")]
            for s in sorted(t["sharekan"], key=lambda s: s["bytes_per_edge"])]
    if not rows:
        return [head + " No sharekan row in this bin.", ""]
    return [head, ""] + report.md_table(["sharekan", "B/edge", "metric", "SQNR dB", "margin dB",
                                         "faiss mix dB", "margin vs mix"], rows, align="lrlrrrr") + [""]


def _full_row(r: dict[str, Any]) -> list[str]:
    def f(v: float | None, d: int = 2) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    if r["method"] == "faiss":
        return [f"faiss {r['label']}", f(r["bytes_per_edge"], 3), f(r["bytes_per_edge"], 3),
                f(r["entropy_bytes_per_edge"], 3), f(r["entropy_bits_per_edge"]), f(r["coeff_sqnr_db"]),
                f(r["func_sqnr_db"]), f(r["func_fold_sqnr_db"]), f(r["seconds"], 1)]
    return [f"sharekan {r['label']}", f(r["bytes_per_edge"], 3), f(r["all_bytes_per_edge"], 3),
            f(r["stored_bytes_per_edge"], 3), "-", f(r["coeff_sqnr_db"]), f(r["func_sqnr_db"]),
            f(r["func_fold_sqnr_db"]), f(r["seconds"], 1)]


def plot(head: dict[str, Any], path: Path) -> Path | None:
    """Function SQNR against spline bytes/edge, one panel per layer, one line per family."""
    plt = report.pyplot()
    if plt is None:
        return None
    layers = head["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(9.5 * len(layers), 5.5), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        families: dict[str, list[dict[str, Any]]] = {}
        for r in layer["rows"]:
            key = (f"faiss {r['family']} {r['nbits']}-bit {r['space']}" if r["method"] == "faiss"
                   else _family(r["config"]))
            families.setdefault(key, []).append(r)
        colors = plt.cm.tab20(np.linspace(0, 1, max(len(families), 2)))  # more lines than the default cycle
        for color, (key, rs) in zip(colors, sorted(families.items())):
            rs = sorted(rs, key=lambda r: r["bytes_per_edge"])
            fold = rs[0]["method"] == "sharekan" and rs[0].get("bias") == "fold"
            y = [r[compared_metric(r)] for r in rs]
            style = "--" if key.startswith("faiss") else "-"
            ax.plot([r["bytes_per_edge"] for r in rs], y, style, marker="o", ms=3, color=color,
                    label=key + (" (folded metric)" if fold else ""))
        ax.set_xlim(0, 6)
        ax.set_xlabel("spline bytes / edge (everything stored)")
        ax.set_ylabel("function SQNR dB")
        ax.set_title(f"{head['name']} {layer['name']} ({layer['n_in']} x {layer['n_out']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes
    return report.save_figure(fig, path)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="layer 0 of the classification head, budgets 1 and 2, 32k training edges")
    parser.add_argument("--out", default=None,
                        help="default benches/results (--quick: benches/.cache/ratedistortion/quick)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--report", action="store_true",
                        help="no run: rebuild the tables and plots from the saved ratedistortion.json")
    parser.add_argument("--reuse-faiss", action="store_true",
                        help="rerun the sharekan rows only; the faiss rows come from the saved "
                             "ratedistortion.json (faiss is deterministic given its seed)")
    args = parser.parse_args(argv)
    # a quick run never overwrites the committed full results
    quick_out = ROOT / "benches" / ".cache" / "ratedistortion" / "quick"
    out = Path(args.out) if args.out else (quick_out if args.quick else ROOT / "benches" / "results")
    if args.report:
        saved = json.loads((out / "ratedistortion.json").read_text(), parse_constant=float)
        for head in saved["heads"]:
            for layer in head["layers"]:
                layer["budgets"] = budget_tables(layer["rows"], layer["name"], saved["budgets"])
        write_outputs(saved, out)
        return
    saved_faiss: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if args.reuse_faiss:
        saved = json.loads((out / "ratedistortion.json").read_text(), parse_constant=float)
        saved_faiss = {(head["name"], layer["name"]): [r for r in layer["rows"] if r["method"] == "faiss"]
                       for head in saved["heads"] for layer in head["layers"]}
    import faiss

    from sharekan.demo.data import cache_dir

    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    started = time.perf_counter()
    cache = cache_dir(args.cache_dir)
    train_edges = QUICK_TRAIN_EDGES if args.quick else TRAIN_EDGES
    budgets = (1, 2) if args.quick else BUDGETS
    configs = SHAREKAN_CONFIGS
    if args.quick:  # rows that land in budgets 1 and 2
        configs = [(label, kw) for label, kw in configs if kw.get("codebook_size", 256) in (16, 256)]

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    heads = [("classification", lambda: classification_head(cache, log))]
    if not args.quick:
        heads.append(("detection", lambda: detection_head(cache, False, log)))
    record: dict[str, Any] = {"command": "PYTHONPATH=benches .venv/bin/python -m sharekan_bench ratedistortion"
                              + (" --quick" if args.quick else "")
                              + (" --reuse-faiss" if args.reuse_faiss else ""),
                              "quick": args.quick, "train_edges": train_edges, "budgets": list(budgets),
                              "slack": SLACK, "rq_beam": RQ_BEAM,
                              "lsq_stages": list(LSQ_STAGES[:1] if args.quick else LSQ_STAGES),
                              "lsq_train_edges": LSQ_TRAIN_EDGES, "sharekan_configs": configs, "heads": []}
    for head_name, load in heads:
        sd, what = load()
        sources = layer_sources(sd)
        if args.quick:
            sources = sources[:1]
        log(f"{head_name}: {what}; layers {[s.name for s in sources]}")
        rows = run_sharekan(sd, sources, configs, log)
        layers = []
        for src in sources:
            if args.reuse_faiss:
                rows += saved_faiss[(head_name, src.name)]
            else:
                rows += run_faiss(src.name, src, train_edges, args.quick, log)
            mine = [r for r in rows if r["layer"] == src.name]
            layers.append({"name": src.name, "n_in": src.n_in, "n_out": src.n_out, "edges": src.n_in * src.n_out,
                           "n_coeffs": src.coeffs.shape[-1], "basis": src.basis.describe(),
                           "budgets": budget_tables(mine, src.name, budgets), "rows": mine})
        record["heads"].append({"name": head_name, "what": what, "layers": layers})
    record["seconds"] = time.perf_counter() - started
    record["environment"] = report.environment("cpu_model", "affinity_cpus", "load_average", "platform", "python",
                                               "numpy", "faiss", "sharekan", "git_commit")
    write_outputs(record, out)
    log(f"wrote {out / 'ratedistortion'}.json, .md and plots")


def write_outputs(record: dict[str, Any], out: Path) -> None:
    md = markdown(record)
    report.write_record(out / "ratedistortion", record, md)
    for head in record["heads"]:
        plot(head, out / f"ratedistortion_{head['name']}.png")
    print(md)


if __name__ == "__main__":
    main()
