"""Classification benchmark: KAN heads on frozen MobileNetV2 features of Fashion-MNIST,
compressed post-training by every method, scored on the full 10k test split; then the
same `kan` head recipe, MLP reference and method table on a second frozen ImageNet
backbone (EfficientNet-Lite0, `VisionConfig.second_backbones`).

Every row reports stored bytes, ratio against the dense FP32 head, accuracy and its change,
top-1 agreement with the dense head and the SQNR of the head's outputs against dense.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sharekan.demo.heads import (
    HeadRecipe,
    cached_head,
    kan_forward,
    load_features,
    module_forward,
)

from . import methods as M
from .backbones import DEFAULT_SIZE, features_tag, get_backbone

#: The paper's K sweep, and the metrics of SPEC §2.2.
SWEEP_KS = (16, 64, 256, 1024, 4096)
SWEEP_METRICS = ("coefficient", "function", "data")


@dataclass(frozen=True)
class VisionConfig:
    """What the classification benchmark runs (defaults: the full benchmark)."""

    size: int = DEFAULT_SIZE
    heads: tuple[str, ...] = ("kan", "kan_spline_first")
    epochs: int = 4
    spline_first_epochs: int = 2
    spline_first_rows: int | None = 20000
    mlp_epochs: int = 8
    codebook_size: int = 256
    sweep_ks: tuple[int, ...] = SWEEP_KS
    sweep_metrics: tuple[str, ...] = SWEEP_METRICS
    sweep_heads: tuple[str, ...] = ("kan", "kan_spline_first")
    #: K values swept on heads other than the first (the metric comparison)
    sweep_ks_other: tuple[int, ...] = (16, 256)
    prune: tuple[float, ...] = (0.1, 0.3, 0.5)
    scalar_bits: tuple[int, ...] = (8, 4)
    calib_rows: int = 2048
    lowbit: bool = True
    seed: int = 0
    #: further frozen backbones (`features.BACKBONES` names): the MLP and the heads in
    #: `second_heads` with the same recipes, method table and sweep as on MobileNetV2
    second_backbones: tuple[str, ...] = ("efficientnet_lite0",)
    second_heads: tuple[str, ...] = ("kan",)
    extra: dict[str, Any] = field(default_factory=dict)


def row(head: str, comp: M.Compressed, dense_bytes: int, dense_logits: np.ndarray,
        dense_acc: float, logits: np.ndarray, labels: np.ndarray, seconds: float,
        **extra: Any) -> dict[str, Any]:
    fid = M.fidelity(dense_logits, logits, labels)
    out = {
        "head": head, "method": comp.method, "bytes": comp.nbytes, "file_bytes": comp.file_bytes,
        "ratio": dense_bytes / comp.nbytes, **fid,
        "delta_accuracy": fid["accuracy"] - dense_acc, "seconds": round(seconds, 2),
    }
    out.update(extra)
    detail = {k: v for k, v in comp.details.items() if k != "model"}
    if detail:
        out["details"] = detail
    return out


def evaluate(head: str, comp: M.Compressed, ctx: dict[str, Any], seconds: float,
             **extra: Any) -> dict[str, Any]:
    logits = comp.forward(ctx["x_test"])
    return row(head, comp, ctx["dense_bytes"], ctx["dense_logits"], ctx["dense_acc"], logits,
               ctx["y_test"], seconds, **extra)


def run_methods(head: str, sd: dict[str, np.ndarray], data: dict[str, np.ndarray],
                cfg: VisionConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """Dense, baselines, SHARe-KAN variants and the K x metric sweep on one head."""
    x_test, y_test = data["x_test"], data["y_test"]
    calib = data["x_train"][: cfg.calib_rows]
    dense_logits = kan_forward(sd, x_test)
    dense_acc = M.fidelity(dense_logits, dense_logits, y_test)["accuracy"]
    ctx = {"x_test": x_test, "y_test": y_test, "dense_logits": dense_logits,
           "dense_acc": dense_acc, "dense_bytes": M.dense_bytes(sd)}
    spline_off = M.fidelity(dense_logits, kan_forward(sd, x_test, spline=False), y_test)
    rows: list[dict[str, Any]] = []

    def add(make: Callable[[], M.Compressed], group: str, **extra: Any) -> M.Compressed:
        started = time.perf_counter()
        comp = make()
        r = evaluate(head, comp, ctx, time.perf_counter() - started, group=group, **extra)
        rows.append(r)
        log(f"  {head:17s} {r['method']:44s} {r['ratio']:6.1f}x acc {r['accuracy']:6.2f} "
            f"({r['delta_accuracy']:+.2f}) agree {r['agreement']:6.2f} % SQNR {r['sqnr_db']:6.2f} dB")
        return comp

    add(lambda: M.dense(sd), "dense")
    for p in cfg.prune:
        add(lambda p=p: M.magnitude_prune(sd, p), "baseline")
    for b in cfg.scalar_bits:
        add(lambda b=b: M.scalar_quant(sd, b), "baseline")
    k = cfg.codebook_size
    sk = dict(calibration=calib, seed=cfg.seed)
    add(lambda: M.sharekan_method(sd, f"SHARe-KAN FP32 codebook K={k}", codebook_size=k,
                                  int8=False, base="float", **sk), "sharekan", K=k)
    for bias in ("edge", "fold", "auto"):
        add(lambda bias=bias: M.sharekan_method(sd, f"SHARe-KAN Int8 K={k} bias={bias}",
                                                codebook_size=k, bias=bias, **sk),
            "sharekan", K=k, bias=bias)
    if cfg.lowbit:
        from .lowbit import base_fold_variants, lowbit_variants

        for label, make in base_fold_variants(sd, calib, seed=cfg.seed):
            add(make, "beyond", label=label)
        for label, make in lowbit_variants(sd, calib, seed=cfg.seed):
            add(make, "beyond", label=label)
    sweep: list[dict[str, Any]] = []
    if head in cfg.sweep_heads:
        ks = cfg.sweep_ks if head == cfg.sweep_heads[0] else cfg.sweep_ks_other
        for metric in cfg.sweep_metrics:
            for kk in ks:
                started = time.perf_counter()
                comp = M.sharekan_method(sd, f"SHARe-KAN Int8 K={kk} {metric}", codebook_size=kk,
                                         metric=metric, keep=kk == 16 and metric == "function", **sk)
                r = evaluate(head, comp, ctx, time.perf_counter() - started, group="sweep",
                             K=kk, metric=metric)
                sweep.append(r)
                if "model" in comp.details:
                    ctx["codebook_example"] = comp.details["model"]
                log(f"  {head:17s} sweep {metric:11s} K={kk:5d} {r['ratio']:6.1f}x "
                    f"acc {r['accuracy']:6.2f} agree {r['agreement']:6.2f} SQNR {r['sqnr_db']:6.2f} dB "
                    f"({r['seconds']:.0f} s)")
    out = {"head": head, "dense_accuracy": dense_acc, "dense_bytes": ctx["dense_bytes"],
           "spline_zeroed": spline_off, "rows": rows, "sweep": sweep}
    if "codebook_example" in ctx:
        model = ctx["codebook_example"]
        out["codebooks"] = {name: layer.codebook.tolist() for name, layer in model.layers.items()}
        out["codebook_grid"] = {name: layer.grid[0].tolist() for name, layer in model.layers.items()}
        out["codebook_k"] = {name: layer.spline_order for name, layer in model.layers.items()}
    return out


def run_backbone(cache: Path, backbone: str, heads: Sequence[str], cfg: VisionConfig,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """MLP reference + the given KAN heads on one backbone's features, every method on each."""
    started = time.perf_counter()
    data = load_features(cache, cfg.size, log, backbone=backbone)
    tag = features_tag(backbone, cfg.size)
    result: dict[str, Any] = {"dataset": "Fashion-MNIST (60k/10k)",
                              "backbone": f"{get_backbone(backbone).label} (frozen)",
                              "input_px": cfg.size, "heads": {}}
    mlp_recipe = HeadRecipe(kind="mlp", epochs=cfg.mlp_epochs, seed=cfg.seed)
    mlp, mlp_sd, mlp_seconds = cached_head(cache, tag, mlp_recipe, data, log)
    mlp_logits = module_forward(mlp, data["x_test"])
    result["mlp"] = {"recipe": mlp_recipe.key(), "bytes": M.dense_bytes(mlp_sd),
                     "accuracy": float(100 * np.mean(mlp_logits.argmax(1) == data["y_test"])),
                     "train_seconds": round(mlp_seconds, 1)}
    log(f"MLP head {result['mlp']['bytes'] / 1e6:.2f} MB: accuracy {result['mlp']['accuracy']:.2f} %")
    for kind in heads:
        epochs = cfg.spline_first_epochs if kind == "kan_spline_first" else cfg.epochs
        rows = cfg.spline_first_rows if kind == "kan_spline_first" else None
        recipe = HeadRecipe(kind=kind, epochs=epochs, seed=cfg.seed, train_rows=rows)
        _, sd, seconds = cached_head(cache, tag, recipe, data, log)
        log(f"{kind} head: {M.dense_bytes(sd) / 1e6:.2f} MB")
        res = run_methods(kind, sd, data, cfg, log)
        res["recipe"] = recipe.key()
        res["train_seconds"] = round(seconds, 1)
        result["heads"][kind] = res
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def run_classification(cache: Path, cfg: VisionConfig = VisionConfig(),
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole classification benchmark; returns a JSON-serialisable record.

    The top level holds the MobileNetV2 run (all `cfg.heads`); `"backbones"` maps each of
    `cfg.second_backbones` to the same record for its `cfg.second_heads`.
    """
    for name in cfg.second_backbones:  # fail before the long MobileNetV2 part, not after
        get_backbone(name).require()
    started = time.perf_counter()
    result = run_backbone(cache, "mobilenetv2", cfg.heads, cfg, log)
    result = {**{k: v for k, v in result.items() if k != "seconds"}, "config": _jsonable(cfg)}
    if cfg.second_backbones:
        result["backbones"] = {}
    for name in cfg.second_backbones:
        log(f"second backbone: {get_backbone(name).label}")
        result["backbones"][name] = run_backbone(cache, name, cfg.second_heads, cfg, log)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _jsonable(cfg: VisionConfig) -> dict[str, Any]:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def quick_config(cfg: VisionConfig = VisionConfig()) -> VisionConfig:
    """A reduced benchmark (one head, short sweep) for smoke runs."""
    return replace(cfg, heads=("kan",), sweep_ks=(16, 256), sweep_metrics=("function",),
                   sweep_heads=("kan",), prune=(0.1,), scalar_bits=(8,))


__all__: Sequence[str] = ["VisionConfig", "run_classification", "run_backbone", "run_methods",
                          "load_features"]
