"""Multi-head benchmark: N task heads on one frozen backbone, stored with per-layer or
cross-head shared codebooks.

Tasks are cheap and distinct: the 45 one-vs-one class pairs of Fashion-MNIST plus 5
one-vs-rest tasks (classes 0-4), 50 in all. Each head is a KAN 1280 -> 8 -> 2 (G = 10,
k = 3), trained (seeded, cached) on the training images of its task. For N = 1, 5, 10, 50
the first N heads are merged into one state_dict (`head{n}.layers.{l}.*`) and compressed
with `share="layer"` (one codebook per layer per head) or `share="model"` (one codebook
shared by every layer of every head), each with the compiler's options: plain Int8,
`base="fold"` (first-layer SiLU base branch folded into the splines) and that with
`gain_bits=4`, and byte budgets (`BUDGET_VARIANTS`: residual stages under
`target_bytes_per_edge`); storage is the size of the saved artifact, with the tensor bytes
and their zstd-coded size next to it. Fidelity
(accuracy, agreement, output SQNR vs the dense head) is measured on each task's test images
for a sample of heads.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import methods as M
from sharekan.demo.heads import HeadRecipe, head_state_dict, kan_forward, train_head


def tasks(n: int = 50) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(name, positive classes, negative classes) of the first n tasks."""
    out = []
    for a in range(10):
        for b in range(a + 1, 10):
            out.append((f"{a}v{b}", (a,), (b,)))
    for a in range(5):
        out.append((f"{a}vrest", (a,), tuple(c for c in range(10) if c != a)))
    return out[:n]


@dataclass(frozen=True)
class MultiHeadConfig:
    ns: tuple[int, ...] = (1, 5, 10, 50)
    hidden: int = 8
    epochs: int = 2
    max_train: int = 6000
    codebook_sizes: tuple[int, ...] = (16, 256)
    sample_heads: int = 5
    seed: int = 0
    variants: tuple[tuple[str, dict[str, Any]], ...] = ()

    def __post_init__(self) -> None:
        if not self.variants:
            object.__setattr__(self, "variants", VARIANTS)


def _task_data(data: dict[str, np.ndarray], pos, neg, split: str, limit: int | None, seed: int):
    y = data[f"y_{split}"]
    keep = np.flatnonzero(np.isin(y, pos + neg))
    if limit is not None and len(keep) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(keep, limit, replace=False))
    return data[f"x_{split}"][keep], np.isin(y[keep], pos).astype(np.int64)


def train_heads(cache: Path, data: dict[str, np.ndarray], cfg: MultiHeadConfig, n: int,
                log: Callable[[str], None]) -> list[dict[str, np.ndarray]]:
    out = []
    for i, (name, pos, neg) in enumerate(tasks(n)):
        recipe = HeadRecipe(kind="kan", widths=(data["x_train"].shape[1], cfg.hidden, 2),
                            epochs=cfg.epochs,
                            seed=cfg.seed + i)
        path = cache / "multihead" / f"{name}_{recipe.key()}_n{cfg.max_train}.npz"
        if path.exists():
            with np.load(path) as z:
                out.append({k: z[k] for k in z.files})
            continue
        x, y = _task_data(data, pos, neg, "train", cfg.max_train, cfg.seed + i)
        model = train_head(recipe, x, y, log=lambda s: None)
        sd = head_state_dict(model, recipe)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **sd)
        out.append(sd)
        if (i + 1) % 10 == 0:
            log(f"  trained {i + 1}/{n} task heads")
    return out


def merge(heads: list[dict[str, np.ndarray]], transform=None) -> dict[str, np.ndarray]:
    merged = {}
    for i, sd in enumerate(heads):
        sd = transform(sd) if transform else sd
        merged.update({f"head{i}.{k}": v for k, v in sd.items()})
    return merged


def head_forward(model: Any, i: int, x: np.ndarray) -> np.ndarray:
    h = x
    for name, layer in model.layers.items():
        if name.startswith(f"head{i}."):
            h = layer.forward(h)
    return h


# (name, compiler options): every variant is a plain `sharekan.compress` call
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("int8", {}),
    ("fold", {"base": "fold"}),
    ("fold+gain4", {"base": "fold", "gain_bits": 4}),
)
#: Byte budgets (issue 14): the sweep's K codes every edge, the budget (mean zstd-coded
#: spline bytes per edge) decides which edges get a residual stage. Stage codebooks are per
#: layer even with share="model" (it shares the first stage's codebook only), so each head
#: pays for its own: small stage codebooks. Budgets below a K's floor are skipped.
BUDGET_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = tuple(
    (f"fold+gain4+stage{sk}@{b:g}",
     {"base": "fold", "gain_bits": 4, "stages": 2, "stage_codebook_size": sk, "target_bytes_per_edge": b})
    for sk, budgets in ((16, (1.05, 1.1, 1.2)),)
    for b in budgets
)
VARIANTS = VARIANTS + BUDGET_VARIANTS


def run_multihead(cache: Path, data: dict[str, np.ndarray], cfg: MultiHeadConfig = MultiHeadConfig(),
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    import sharekan
    from sharekan.entropy import sizes
    from sharekan.errors import InvalidInputError

    started = time.perf_counter()
    heads = train_heads(cache, data, cfg, max(cfg.ns), log)
    calibs = [_task_data(data, pos, neg, "train", 512, cfg.seed)[0] for _, pos, neg in tasks(max(cfg.ns))]
    tests = [_task_data(data, pos, neg, "test", None, 0) for _, pos, neg in tasks(min(max(cfg.ns), cfg.sample_heads))]
    refs = [kan_forward(heads[i], x) for i, (x, _) in enumerate(tests)]
    rows = []
    for n in cfg.ns:
        dense_bytes = sum(M.dense_bytes(sd) for sd in heads[:n])
        merged = merge(heads[:n])
        # calibration of each head's first layer (its inputs: the task's training features);
        # it also tells bias="auto" / base="fold" that these inputs stay inside the grid
        calib = {f"head{i}.layers.0": calibs[i] for i in range(n)}
        for variant, opts in cfg.variants:
            for share in ("layer", "model"):
                for k in cfg.codebook_sizes:
                    # the output layers have hidden * 2 edges: no codebook may be larger
                    edges_1 = cfg.hidden * 2
                    cap: dict[str, int] = {}
                    if share == "layer" and k > edges_1:
                        cap["codebook_size"] = edges_1
                    if opts.get("stages", 1) > 1 and (opts.get("stage_codebook_size") or k) > edges_1:
                        cap["stage_codebook_size"] = edges_1  # per layer even with share="model"
                    over = {f"head{i}.layers.1": cap for i in range(n)} if cap else {}
                    t = time.perf_counter()
                    try:
                        model = sharekan.compress(merged, calibration=calib, codebook_size=k,
                                                  share=share, seed=cfg.seed, overrides=over, **opts)
                    except InvalidInputError as e:
                        if opts.get("target_bytes_per_edge") is None:
                            raise
                        log(f"  N={n:2d} share={share:5s} K={k:4d} {variant}: skipped: {e}")  # below the floor
                        continue
                    coded = sizes(model.stored_tensors())["stored"]
                    with tempfile.TemporaryDirectory() as tmp:
                        path = os.path.join(tmp, "heads.sharekan")
                        model.save(path)
                        file_bytes = os.path.getsize(path)
                        model.save(path, entropy="zstd")
                        coded_file_bytes = os.path.getsize(path)
                    fids = []
                    for i, ((x, y), ref) in enumerate(zip(tests[:n], refs)):
                        fids.append(M.fidelity(ref, head_forward(model, i, x), y)
                                    | {"dense_accuracy": M.fidelity(ref, ref, y)["accuracy"]})
                    r = {"heads": n, "share": share, "K": k, "variant": variant, "options": opts,
                         "base_folded": opts.get("base") == "fold",
                         "dense_bytes": dense_bytes, "bytes": int(model.nbytes), "file_bytes": file_bytes,
                         "ratio": dense_bytes / file_bytes,
                         # tensor bytes and their zstd-coded size, metadata excluded (the
                         # classification and detection benches' measure); the file adds
                         # per-layer metadata, which 50 small heads pay 100 times
                         "tensor_ratio": dense_bytes / model.nbytes,
                         "coded_bytes": int(coded), "coded_ratio": dense_bytes / coded,
                         "coded_file_bytes": coded_file_bytes,
                         "coded_file_ratio": dense_bytes / coded_file_bytes,
                         "agreement": float(np.mean([f["agreement"] for f in fids])),
                         "min_agreement": float(np.min([f["agreement"] for f in fids])),
                         "sqnr_db": float(np.mean([f["sqnr_db"] for f in fids])),
                         "delta_accuracy": float(np.mean([f["accuracy"] - f["dense_accuracy"] for f in fids])),
                         "sampled_heads": len(fids), "seconds": round(time.perf_counter() - t, 1)}
                    rows.append(r)
                    log(f"  N={n:2d} share={share:5s} K={k:4d} {variant:10s} "
                        f"{file_bytes:>10,d} B {r['ratio']:5.1f}x (tensors {r['tensor_ratio']:5.1f}x, "
                        f"coded {r['coded_ratio']:5.1f}x) agree {r['agreement']:6.2f} "
                        f"SQNR {r['sqnr_db']:5.1f} dB")
    conf = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}
    conf["variants"] = [[name, opts] for name, opts in cfg.variants]
    return {"config": conf, "tasks": [t[0] for t in tasks(max(cfg.ns))], "rows": rows,
            "seconds": round(time.perf_counter() - started, 1)}


def quick(cfg: MultiHeadConfig = MultiHeadConfig()) -> MultiHeadConfig:
    return replace(cfg, ns=(1, 5), codebook_sizes=(16,))
