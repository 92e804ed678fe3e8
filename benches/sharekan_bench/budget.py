"""Byte budgets on the classification head: single-stage configurations against residual
stages under `Config(target_bytes_per_edge=...)`, scored on the full Fashion-MNIST test
split, and what each residual stage costs LUTHAM at run time.

The head is the demo's trained KAN 1280 -> 256 -> 10 (G = 10, k = 3) on frozen
MobileNetV2 features (the demo's cache; trained once when missing), compressed with the
demo's calibration rows (2,048 training features; base branch folded, biases folded where
inputs stay inside the grid). Every row reports:

- `bytes`: the artifact's tensor bytes (`CompressedModel.nbytes`; later stages stored
  sparse where a budget leaves edges out) and `ratio` = dense FP32 bytes / bytes;
- `coded_bytes`: the same tensors zstd-coded as `save(path, entropy="zstd")` stores them
  (`sharekan.entropy.sizes`, metadata excluded) and `coded_ratio`;
- accuracy change (points), top-1 agreement with the dense head (%), logits SQNR (dB).

The targets of issue 14 are checked on both ratios: >= 60x at <= 0.3 points of accuracy
lost and >= 99 % agreement.

Stage cost: the head compressed with 1, 2 and 3 stages (K = 256, no budget) run by the Rust
evaluator (`CompressedModel.forward`) and by the C++ kernel in a .pte (ExecuTorch runtime,
one `sharekan::lutham` call per stage), calls interleaved, medians, at batch 1 and 256.

Run:  PYTHONPATH=benches python -m sharekan_bench budget [--quick]
Writes benches/results/budget.json and benches/results/budget.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import sharekan
from sharekan.demo.data import cache_dir
from sharekan.demo.heads import HeadRecipe, cached_head, kan_forward, load_features
from sharekan.demo.run import CALIB_ROWS, DEMO_CONFIG
from sharekan.entropy import sizes
from sharekan_bench import methods as M
from sharekan_bench import report

HERE = Path(__file__).resolve().parents[1]  # benches/
TARGET_RATIO, MAX_LOSS, MIN_AGREEMENT = 60.0, 0.3, 99.0

#: (label, Config fields over DEMO_CONFIG); every row is one `sharekan.compress` call
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("demo: K=256", {}),
    ("K=64 gain4", {"codebook_size": 64, "gain_bits": 4}),
    ("K=16 gain4", {"codebook_size": 16, "gain_bits": 4}),
    ("K=16 gain4 output", {"codebook_size": 16, "gain_bits": 4, "metric": "output"}),
    ("K=16 gain4 compensate", {"codebook_size": 16, "gain_bits": 4, "compensate": True}),
    ("K=8 gain4 compensate", {"codebook_size": 8, "gain_bits": 4, "compensate": True}),
    ("K=256 3 stages", {"stages": 3}),
    ("K=16 gain4 + stages, 1.1 B/edge", {"codebook_size": 16, "gain_bits": 4, "stages": 3,
                                         "target_bytes_per_edge": 1.1}),
] + [
    (f"K=16 gain4 + K=256 stage, {b} B/edge, layer 1 K=256 gain8",
     {"codebook_size": 16, "gain_bits": 4, "stages": 2, "stage_codebook_size": 256,
      "target_bytes_per_edge": b,
      "overrides": {"layers.1": {"codebook_size": 256, "gain_bits": 8}}})
    for b in (0.95, 1.0, 1.05, 1.1)
] + [
    ("K=256 + stages, drop edges, 0.8 B/edge", {"stages": 3, "target_bytes_per_edge": 0.8,
                                                "drop_edges": True}),
]
QUICK = ("demo: K=256", "K=16 gain4", "K=16 gain4 + K=256 stage, 1.0 B/edge, layer 1 K=256 gain8")


def _head() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    cache = cache_dir()
    data = load_features(cache, 64, print)
    _, sd, _ = cached_head(cache, "fmnist_mobilenetv2_64px", HeadRecipe(kind="kan"), data, print)
    return dict(sd), data


def sweep(sd: dict[str, np.ndarray], data: dict[str, np.ndarray], labels: tuple[str, ...]
          ) -> list[dict[str, Any]]:
    x_test, y_test = data["x_test"], data["y_test"]
    calib = data["x_train"][:CALIB_ROWS]
    dense_logits = kan_forward(sd, x_test)
    dense_acc = M.fidelity(dense_logits, dense_logits, y_test)["accuracy"]
    dense_bytes = M.dense_bytes(sd)
    rows = []
    for label, extra in CONFIGS:
        if label not in labels:
            continue
        config = {**DEMO_CONFIG, **extra}
        t0 = time.perf_counter()
        model = sharekan.compress(sd, calibration=calib, **config)
        seconds = time.perf_counter() - t0
        coded = sizes(model.stored_tensors())["stored"]
        fid = M.fidelity(dense_logits, model.forward(x_test), y_test)
        row = {"label": label, "config": config, "bytes": int(model.nbytes),
               "coded_bytes": int(coded), "ratio": dense_bytes / model.nbytes,
               "coded_ratio": dense_bytes / coded,
               "delta_accuracy": fid["accuracy"] - dense_acc, "agreement": fid["agreement"],
               "sqnr_db": fid["sqnr_db"], "seconds": round(seconds, 1),
               "stages": {name: [int((layer.gains != 0).sum())]
                          + [int(s.active().sum()) for s in layer.stages]
                          for name, layer in model.layers.items()}}
        row["fidelity_ok"] = (row["delta_accuracy"] >= -MAX_LOSS
                              and row["agreement"] >= MIN_AGREEMENT)
        rows.append(row)
        print(f"{label:48s} {row['ratio']:5.1f}x (coded {row['coded_ratio']:5.1f}x) "
              f"{row['delta_accuracy']:+.2f} pt, agree {row['agreement']:.2f} %, "
              f"SQNR {row['sqnr_db']:.1f} dB, {seconds:.0f} s", flush=True)
    return rows


def stage_cost(sd: dict[str, np.ndarray], data: dict[str, np.ndarray], rounds: int
               ) -> list[dict[str, Any]]:
    """Median call times of 1, 2, 3 stages: Rust evaluator and the C++ kernel .pte."""
    import torch
    from executorch.runtime import Runtime

    from sharekan import lutham
    from sharekan.export import export_pte
    from sharekan.torch import KAN, LuthamLinear

    lutham.load_library()
    runtime = Runtime.get()
    calib = data["x_train"][:CALIB_ROWS]
    work = Path(tempfile.mkdtemp(prefix="bench_budget_"))
    fns: dict[tuple[int, str, int], Any] = {}
    inputs = {b: data["x_test"][:b].astype(np.float32) for b in (1, 256)}
    for stages in (1, 2, 3):
        model = sharekan.compress(sd, calibration=calib, **{**DEMO_CONFIG, "stages": stages})
        module = KAN([1280, 256, 10], grid_size=10, spline_order=3)
        module.layers = torch.nn.ModuleList(LuthamLinear.from_compressed(layer)
                                            for layer in model.layers.values())
        path = export_pte(module.eval(), (torch.zeros(2, 1280),), work / f"s{stages}.pte",
                          max_batch=256)
        method = runtime.load_program(str(path)).load_method("forward")
        for b, x in inputs.items():
            xt = torch.from_numpy(x)
            fns[(stages, "rust", b)] = lambda m=model, x=x: m.forward(x)
            fns[(stages, "pte", b)] = lambda m=method, xt=xt: m.execute([xt])
    for fn in fns.values():  # warm-up
        fn()
    times: dict[tuple[int, str, int], list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    out = []
    for (stages, impl, b), ts in times.items():
        base = statistics.median(times[(1, impl, b)])
        out.append({"stages": stages, "impl": impl, "batch": b,
                    "us": statistics.median(ts) * 1e6, "vs_one_stage": statistics.median(ts) / base})
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Byte budgets on the classification head", "",
             f"Demo head 1280-256-10, dense FP32 {res['dense_bytes']:,} bytes, dense accuracy "
             f"{res['dense_accuracy']:.2f} %. Target: >= {TARGET_RATIO:.0f}x at <= {MAX_LOSS} "
             f"points lost and >= {MIN_AGREEMENT:.0f} % top-1 agreement.", ""]
    lines += report.md_table(
        ["config", "bytes", "ratio", "zstd-coded bytes", "coded ratio", "d acc (pt)",
         "agreement (%)", "SQNR (dB)", "fidelity ok", "edges coded per stage (layer 0)"],
        [[r["label"], f"{r['bytes']:,}", f"{r['ratio']:.1f}x", f"{r['coded_bytes']:,}",
          f"{r['coded_ratio']:.1f}x", f"{r['delta_accuracy']:+.2f}", f"{r['agreement']:.2f}",
          f"{r['sqnr_db']:.1f}", "yes" if r["fidelity_ok"] else "no",
          " / ".join(f"{n:,}" for n in r["stages"]["layers.0"])] for r in res["rows"]],
        "lrrrrrrrll")
    ok = [r for r in res["rows"] if r["fidelity_ok"]]
    lines.append("")
    for key, name in (("ratio", "artifact tensor bytes"), ("coded_ratio", "zstd-coded bytes")):
        best = max(ok, key=lambda r: r[key]) if ok else None
        verdict = ("none meets the fidelity targets" if best is None else
                   f"best {best[key]:.1f}x ({best['label']}): target "
                   f"{'met' if best[key] >= TARGET_RATIO else 'missed'}")
        lines.append(f"- On {name}: {verdict}.")
    if res.get("stage_cost"):
        lines += ["", "## LUTHAM cost per stage (default threads, medians of interleaved calls; "
                  "each stage is one more `sharekan::lutham` call)", ""]
        lines += report.md_table(
            ["implementation", "batch", "stages", "us per call", "x one stage"],
            [[r["impl"], r["batch"], r["stages"], f"{r['us']:.0f}", f"{r['vs_one_stage']:.2f}"]
             for r in sorted(res["stage_cost"], key=lambda r: (r["impl"], r["batch"], r["stages"]))],
            "lrrrr")
    lines += ["", f"Command: `{res['environment']['command']}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three configurations, few rounds")
    ap.add_argument("--no-stage-cost", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    sd, data = _head()
    labels = QUICK if args.quick else tuple(label for label, _ in CONFIGS)
    dense_logits = kan_forward(sd, data["x_test"])
    res: dict[str, Any] = {
        "dense_bytes": M.dense_bytes(sd),
        "dense_accuracy": M.fidelity(dense_logits, dense_logits, data["y_test"])["accuracy"],
        "rows": sweep(sd, data, labels),
    }
    if not args.no_stage_cost:
        res["stage_cost"] = stage_cost(sd, data, rounds=5 if args.quick else 30)
    res["environment"] = report.environment(
        ("cpu", "processor"), "cpu_model", "logical_cpus",
        ("load_average_at_end", "load_average"), "torch", "python", "executorch", "sharekan",
        command="PYTHONPATH=benches python -m sharekan_bench budget"
                + (" --quick" if args.quick else ""))
    md = markdown(res)
    report.write_record(args.out / "budget", json.loads(json.dumps(res, default=str)), md)
    print(md)


if __name__ == "__main__":
    main()
