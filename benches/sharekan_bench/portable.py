"""Portable export: the demo head as a stock-op .pte (no custom kernel), with and without
XNNPACK, and as ONNX, against the custom-kernel LUTHAM .pte and the dense programs.

KAN head 1280 -> 256 -> 10, G = 10, k = 3, K = 256, Int8 (the head of
benches/sharekan_bench/lutham.py: first layer's bias folded, per-edge int8 biases in the
second). Every program is exported with a dynamic batch up to 64 and run in this process,
calls interleaved round-robin (medians), at batch 1 and 64:

- LUTHAM .pte: `export_pte(kernel="lutham")`, ExecuTorch Python runtime + the C++ kernel
- portable .pte: `export_pte(kernel="portable", strategy=...)` for "gather" and "decode",
  each also lowered to XNNPACK (`delegate="xnnpack"`)
- dense .pte (efficient-kan module, float32 weights), and lowered to XNNPACK
- ONNX Runtime (CPU provider): `export_onnx` of the compressed head (strategy "auto") and
  torch.onnx of the dense head

Run:  PYTHONPATH=benches python -m sharekan_bench portable [--threads 1] [--quick]
Writes benches/results/portable.json and benches/results/portable.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sharekan
from sharekan import lutham
from sharekan.export import export_onnx, export_pte
from sharekan.torch import KAN, compress_, lutham_layers, stock
from sharekan_bench import report

HERE = Path(__file__).resolve().parents[1]  # benches/
WIDTHS = [1280, 256, 10]
GRID_SIZE, SPLINE_ORDER, CODEBOOK_SIZE = 10, 3, 256
MAX_BATCH = 64

#: column key -> label, in table order
LABELS = {
    "lutham_pte": "LUTHAM .pte (custom kernel)",
    "portable_gather_pte": "portable .pte, gather",
    "portable_decode_pte": "portable .pte, decode",
    "portable_gather_xnnpack_pte": "portable .pte, gather + XNNPACK",
    "portable_decode_xnnpack_pte": "portable .pte, decode + XNNPACK",
    "dense_pte": "dense .pte",
    "dense_xnnpack_pte": "dense .pte + XNNPACK",
    "portable_onnx": "portable ONNX (ONNX Runtime)",
    "dense_onnx": "dense ONNX (ONNX Runtime)",
}


def _interleaved(fns: dict[str, Any], rounds: int, warmup: int = 3) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) * 1e6 for name, ts in times.items()}


def _dense_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(model.eval(), (example,), dynamo=True, input_names=["x0"],
                                output_names=["y"], dynamic_shapes=({0: batch},))
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
    path.write_bytes(proto.SerializeToString())
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads and ONNX Runtime intra-op threads")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    import onnxruntime as ort  # noqa: PLC0415 - the `onnx` extra
    from executorch.runtime import Runtime  # noqa: PLC0415

    dense = KAN(WIDTHS, grid_size=GRID_SIZE, spline_order=SPLINE_ORDER).eval()
    config = sharekan.Config(codebook_size=CODEBOOK_SIZE, int8=True, base="int8",
                             bias="edge", overrides={"layers.0": {"bias": "fold"}})
    model = compress_(copy.deepcopy(dense), config).eval()
    lutham.load_library()
    runtime = Runtime.get()
    work = Path(tempfile.mkdtemp(prefix="bench_portable_"))
    example = torch.zeros(2, WIDTHS[0])

    paths: dict[str, Path] = {}
    export_s: dict[str, float] = {}

    def timed(name: str, fn: Any) -> None:
        t0 = time.perf_counter()
        paths[name] = fn()
        export_s[name] = time.perf_counter() - t0
        print(f"exported {name}: {paths[name].stat().st_size:,} bytes, "
              f"{export_s[name]:.1f} s", flush=True)

    timed("lutham_pte", lambda: export_pte(model, (example,), work / "lutham.pte",
                                           max_batch=MAX_BATCH))
    for strategy in ("gather", "decode"):
        for delegate in (None, "xnnpack"):
            name = f"portable_{strategy}{'_xnnpack' if delegate else ''}_pte"
            timed(name, lambda s=strategy, d=delegate, n=name: export_pte(
                model, (example,), work / f"{n}.pte", kernel="portable", strategy=s,
                delegate=d, max_batch=MAX_BATCH))
    timed("dense_pte", lambda: export_pte(dense, (example,), work / "dense.pte",
                                          max_batch=MAX_BATCH))
    timed("dense_xnnpack_pte", lambda: export_pte(dense, (example,), work / "dense_xnn.pte",
                                                  delegate="xnnpack", max_batch=MAX_BATCH))
    timed("portable_onnx", lambda: export_onnx(model, (example,), work / "portable.onnx",
                                               max_batch=MAX_BATCH))
    timed("dense_onnx", lambda: _dense_onnx(dense, example, work / "dense.onnx"))

    methods = {name: runtime.load_program(str(p)).load_method("forward")
               for name, p in paths.items() if name.endswith("_pte")}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for name, p in paths.items() if name.endswith("_onnx")}

    def call(name: str, x: torch.Tensor) -> np.ndarray:
        if name in methods:
            return methods[name].execute([x])[0].numpy()
        return sessions[name].run(None, {"x0": x.numpy()})[0]

    rows, agreement = [], {}
    for batch, rounds in ((1, 10 if args.quick else 100), (64, 3 if args.quick else 20)):
        x = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(batch, WIDTHS[0])).astype(np.float32))
        with torch.no_grad():
            eager = model(x).numpy()
            eager_dense = dense(x).numpy()
        y_kernel = call("lutham_pte", x)
        agreement[batch] = {
            name: {"max_abs_vs_lutham_pte": float(np.abs(call(name, x) - y_kernel).max()),
                   "max_abs_vs_eager": float(np.abs(call(name, x) - eager).max())}
            for name in paths if not name.startswith("dense")}
        agreement[batch].update({
            name: {"max_abs_vs_dense_eager": float(np.abs(call(name, x) - eager_dense).max())}
            for name in paths if name.startswith("dense")})
        timings = _interleaved({name: (lambda n=name, x=x: call(n, x)) for name in paths},
                               rounds)
        rows.append({"batch": batch, "rounds": rounds, "median_us": timings})
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.0f} us" for k, v in timings.items()),
              flush=True)

    sizes = {name: p.stat().st_size for name, p in paths.items()}
    layers = {name: {"n_in": mod.in_features, "n_out": mod.out_features,
                     "codes": str(mod.codes.dtype), "gains": str(mod.gains.dtype),
                     "auto_strategy_at_max_batch": stock.choose_strategy(
                         mod.in_features, mod.out_features, int(mod.codebook.shape[1]),
                         mod.codebook_size, MAX_BATCH)}
              for name, mod in lutham_layers(model).items()}
    result = {
        "model": {"widths": WIDTHS, "grid_size": GRID_SIZE, "spline_order": SPLINE_ORDER,
                  "codebook_size": CODEBOOK_SIZE, "config": config.to_dict(),
                  "weights": "seeded random (torch.manual_seed(0)), efficient-kan init",
                  "max_batch": MAX_BATCH},
        "file_bytes": sizes,
        "size_ratio_vs_lutham_pte": {n: s / sizes["lutham_pte"] for n, s in sizes.items()},
        "export_seconds": export_s,
        "layers": layers,
        "latency": rows,
        "agreement": agreement,
        "environment": report.environment(
            ("cpu", "processor"), "cpu_model", "logical_cpus",
            ("load_average_at_end", "load_average"), "torch", "torch_threads", "python",
            "executorch", "sharekan", onnxruntime=ort.__version__,
            command=f"PYTHONPATH=benches python -m sharekan_bench portable --threads "
                    f"{args.threads}{' --quick' if args.quick else ''}"),
    }
    md = _markdown(result)
    report.write_record(args.out / "portable", result, md)
    print(md)


def _markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    lines = [
        "# Portable export benchmark (benches/sharekan_bench/portable.py)",
        "",
        f"KAN head {' -> '.join(map(str, r['model']['widths']))}, G = {r['model']['grid_size']}, "
        f"k = {r['model']['spline_order']}, K = {r['model']['codebook_size']}, Int8 (first "
        "layer bias folded, second per-edge), every program with a dynamic batch up to "
        f"{r['model']['max_batch']}. Median latency in microseconds of interleaved calls in one "
        f"process, {env.get('torch_threads', '?')} thread(s), CPU {env.get('cpu_model', '?')} "
        f"({env.get('logical_cpus', '?')} logical CPUs, shared with other work; load average "
        f"at end {', '.join(f'{v:.1f}' for v in env.get('load_average_at_end', []))}). "
        f"Command: `{env['command']}`.",
        "",
    ]
    lat = {row["batch"]: row["median_us"] for row in r["latency"]}
    agree = r["agreement"]
    big = max(agree, key=int)
    lines += report.md_table(
        ["program", "bytes", "x LUTHAM .pte", "batch 1 (us)", "batch 64 (us)",
         f"max abs vs LUTHAM .pte (batch {big})"],
        [[label, f"{r['file_bytes'][key]:,}", f"{r['size_ratio_vs_lutham_pte'][key]:.2f}",
          f"{lat[1][key]:.0f}", f"{lat[64][key]:.0f}",
          (f"{agree[big][key]['max_abs_vs_lutham_pte']:.1e}" if key in agree[big]
           and "max_abs_vs_lutham_pte" in agree[big][key] else "(dense)")]
         for key, label in LABELS.items() if key in r["file_bytes"]],
        align="lrrrrr")
    auto = ", ".join(f"{name} -> {v['auto_strategy_at_max_batch']}"
                     for name, v in r["layers"].items())
    lines += [
        "",
        "The portable programs hold no custom operator: they run in a stock ExecuTorch "
        "runtime (tests/test_export_portable.py runs one in a fresh interpreter that never "
        "imports sharekan). Their tensors are the compressed layer's (uint8 codes, int8 "
        "gains, biases and base weights, float32 scales, codebook and grid), decoded in the "
        "graph on every call. `strategy=\"auto\"` (the default) picks per layer from the "
        f"memory planned at max_batch = {r['model']['max_batch']}: {auto}; the ONNX export "
        "used it.",
        "",
        "Dense programs' agreement is against the dense eager head (max abs): " + "; ".join(
            f"{LABELS[k]} {v['max_abs_vs_dense_eager']:.1e}" for k, v in agree[big].items()
            if "max_abs_vs_dense_eager" in v) + ".",
        "",
        "Export time (s): " + ", ".join(f"{LABELS[k]} {v:.0f}" for k, v in
                                        r["export_seconds"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
