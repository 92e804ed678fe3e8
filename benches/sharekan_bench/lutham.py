"""LUTHAM against the dense KAN head: latency at batch 1 and 64, and .pte file sizes.

KAN head 1280 -> 256 -> 10, G = 10, k = 3 (efficient-kan layout, seeded random weights),
compressed with K = 256, Int8 (codebook, gains, per-edge biases and base weights int8;
bias folded in the first layer, whose inputs stay inside the grid; per-edge biases in the
second). Measured side by side in one process, calls interleaved round-robin so that load
from other processes hits every variant alike:

- dense PyTorch eager (`sharekan.torch.KAN`)
- dense .pte (ExecuTorch Python runtime), and the same lowered to the XNNPACK delegate
- LUTHAM eager (`LuthamLinear`, the Rust evaluator through `torch.ops.sharekan.lutham`)
- LUTHAM .pte (ExecuTorch Python runtime + the C++ kernel)
and, without Python, both .pte files in the standalone `lutham_runner` (linked with
ExecuTorch's optimized CPU kernels).

Run:  PYTHONPATH=benches python -m sharekan_bench lutham [--threads 1] [--quick]
Writes benches/results/lutham.json and benches/results/lutham.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import sharekan
from sharekan import lutham
from sharekan.export import export_pte
from sharekan.torch import KAN, compress_, lutham_layers
from sharekan_bench import report

HERE = Path(__file__).resolve().parents[1]  # benches/
WIDTHS = [1280, 256, 10]
GRID_SIZE, SPLINE_ORDER, CODEBOOK_SIZE = 10, 3, 256


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _interleaved(fns: dict[str, callable], rounds: int, warmup: int = 3) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: _median_us(ts) for name, ts in times.items()}


def _runner_us(runner: Path, pte: Path, x: np.ndarray, repeat: int, workdir: Path) -> float:
    inp = workdir / f"in_{x.shape[0]}.txt"
    with open(inp, "w") as fh:
        fh.write(f"tensor f32 2 {x.shape[0]} {x.shape[1]}\n")
        fh.write(" ".join(f"{v:.9g}" for v in x.reshape(-1)) + "\n")
    res = subprocess.run([str(runner), str(pte), str(inp), "--repeat", str(repeat)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"runner failed: {res.stderr[-2000:]}")
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("timing")][-1]
    fields = dict(kv.split("=") for kv in line.split()[1:])
    return float(fields["median_us"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    dense = KAN(WIDTHS, grid_size=GRID_SIZE, spline_order=SPLINE_ORDER).eval()
    model = copy.deepcopy(dense)
    config = sharekan.Config(codebook_size=CODEBOOK_SIZE, int8=True, base="int8",
                             bias="edge", overrides={"layers.0": {"bias": "fold"}})
    t0 = time.perf_counter()
    model = compress_(model, config).eval()
    compress_s = time.perf_counter() - t0

    lutham.load_library()
    from executorch.runtime import Runtime  # noqa: PLC0415

    runtime = Runtime.get()
    work = Path(tempfile.mkdtemp(prefix="bench_lutham_"))
    example = torch.zeros(2, WIDTHS[0])
    dense_pte = export_pte(dense, (example,), work / "dense.pte", max_batch=64)
    lutham_pte = export_pte(model, (example,), work / "lutham.pte", max_batch=64)
    dense_xnn_pte = _export_xnnpack(dense, example, work / "dense_xnnpack.pte")
    dense_m = runtime.load_program(str(dense_pte)).load_method("forward")
    dense_xnn_m = runtime.load_program(str(dense_xnn_pte)).load_method("forward")
    lutham_m = runtime.load_program(str(lutham_pte)).load_method("forward")
    runner = lutham.build_runner()

    rows = []
    agreement = {}
    for batch, rounds in ((1, 20 if args.quick else 200), (64, 5 if args.quick else 40)):
        x_np = rng.uniform(-1.0, 1.0, size=(batch, WIDTHS[0])).astype(np.float32)
        x = torch.from_numpy(x_np)
        with torch.no_grad():
            y_dense = dense(x).numpy()
            y_eager = model(x).numpy()
        y_pte = lutham_m.execute([x])[0].numpy()
        y_dense_pte = dense_m.execute([x])[0].numpy()
        agreement[batch] = {
            "lutham_pte_vs_eager_max_abs": float(np.abs(y_pte - y_eager).max()),
            "dense_pte_vs_eager_max_abs": float(np.abs(y_dense_pte - y_dense).max()),
            "lutham_vs_dense_rel_l2": float(np.linalg.norm(y_eager - y_dense)
                                            / np.linalg.norm(y_dense)),
        }

        def eager_dense(x=x):
            with torch.no_grad():
                dense(x)

        def eager_lutham(x=x):
            with torch.no_grad():
                model(x)

        timings = _interleaved({
            "dense_eager": eager_dense,
            "dense_pte": lambda x=x: dense_m.execute([x]),
            "dense_xnnpack_pte": lambda x=x: dense_xnn_m.execute([x]),
            "lutham_eager": eager_lutham,
            "lutham_pte": lambda x=x: lutham_m.execute([x]),
        }, rounds)
        repeat = rounds if batch == 1 else max(rounds, 20)
        timings["dense_pte_runner"] = _runner_us(runner, dense_pte, x_np, repeat, work)
        timings["lutham_pte_runner"] = _runner_us(runner, lutham_pte, x_np, repeat, work)
        rows.append({"batch": batch, "rounds": rounds, "median_us": timings})
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.0f} us" for k, v in timings.items()),
              flush=True)

    # the same head with per-edge int8 biases in both layers (no folding anywhere)
    edge_model = compress_(copy.deepcopy(dense), config.replace(overrides={})).eval()
    edge_pte = export_pte(edge_model, (example,), work / "lutham_edge.pte", max_batch=64)
    sizes = {"dense_pte": dense_pte.stat().st_size,
             "dense_xnnpack_pte": dense_xnn_pte.stat().st_size,
             "lutham_pte": lutham_pte.stat().st_size,
             "lutham_pte_all_edge_bias": edge_pte.stat().st_size}
    layers = {name: {"nbytes_buffers": mod.nbytes, "codes": str(mod.codes.dtype),
                     "gains": str(mod.gains.dtype),
                     "edge_bias": "absent" if mod.edge_bias.numel() == 0 else str(mod.edge_bias.dtype),
                     "base_weight": str(mod.base_weight.dtype)}
              for name, mod in lutham_layers(model).items()}
    b1 = rows[0]["median_us"]
    b64 = rows[1]["median_us"]
    result = {
        "model": {"widths": WIDTHS, "grid_size": GRID_SIZE, "spline_order": SPLINE_ORDER,
                  "codebook_size": CODEBOOK_SIZE, "config": config.to_dict(),
                  "weights": "seeded random (torch.manual_seed(0)), efficient-kan init"},
        "compress_seconds": compress_s,
        "pte_bytes": sizes,
        "size_ratio_dense_over_lutham": sizes["dense_pte"] / sizes["lutham_pte"],
        "layers": layers,
        "latency": rows,
        "speedup_lutham_pte_vs_dense_pte": {
            "batch1": b1["dense_pte"] / b1["lutham_pte"],
            "batch64": b64["dense_pte"] / b64["lutham_pte"],
            "batch1_vs_xnnpack": b1["dense_xnnpack_pte"] / b1["lutham_pte"],
            "batch64_vs_xnnpack": b64["dense_xnnpack_pte"] / b64["lutham_pte"],
            "batch1_runner": b1["dense_pte_runner"] / b1["lutham_pte_runner"],
            "batch64_runner": b64["dense_pte_runner"] / b64["lutham_pte_runner"],
        },
        "agreement": agreement,
        "environment": report.environment(
            ("cpu", "processor"), "cpu_model", "logical_cpus", ("load_average_at_end", "load_average"),
            "torch", "torch_threads", "python", "executorch", "sharekan",
            kernel_build="g++ -O3 (portable; hot loops cloned for x86-64-v3)"),
    }
    md = _markdown(result)
    report.write_record(args.out / "lutham", result, md)
    print(md)


def _export_xnnpack(model, example, path: Path) -> Path:
    """Dense .pte lowered to ExecuTorch's XNNPACK delegate (its recommended CPU backend)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (  # noqa: PLC0415
        XnnpackPartitioner,
    )
    from executorch.exir import to_edge_transform_and_lower  # noqa: PLC0415

    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(prog.buffer)
    return path


def _markdown(r: dict) -> str:
    lines = [
        "# LUTHAM benchmark (benches/sharekan_bench/lutham.py)",
        "",
        f"KAN head {' -> '.join(map(str, r['model']['widths']))}, G = {r['model']['grid_size']}, "
        f"k = {r['model']['spline_order']}, K = {r['model']['codebook_size']}, Int8 "
        "(first layer bias folded, second per-edge). Median latency in microseconds, "
        f"torch threads = {r['environment']['torch_threads']}, CPU {r['environment']['cpu_model']} "
        f"({r['environment']['logical_cpus']} logical CPUs, shared; load average at end "
        f"{', '.join(f'{v:.1f}' for v in r['environment']['load_average_at_end'])}).",
        "",
    ]
    columns = {"dense_eager": "dense eager", "dense_pte": "dense .pte",
               "dense_xnnpack_pte": "dense .pte (XNNPACK)", "lutham_eager": "LUTHAM eager",
               "lutham_pte": "LUTHAM .pte", "dense_pte_runner": "dense .pte (C++ runner)",
               "lutham_pte_runner": "LUTHAM .pte (C++ runner)"}
    lines += report.md_table(
        ["batch", *columns.values()],
        [[row["batch"], *(f"{row['median_us'][c]:.0f}" for c in columns)] for row in r["latency"]],
        align="r" * (1 + len(columns)))
    s = r["speedup_lutham_pte_vs_dense_pte"]
    lines += [
        "",
        f"LUTHAM .pte vs dense .pte: {s['batch1']:.1f}x faster at batch 1, "
        f"{s['batch64']:.1f}x at batch 64 (Python runtime); in the C++ runner "
        f"{s['batch1_runner']:.1f}x and {s['batch64_runner']:.1f}x. Against the dense .pte "
        f"lowered to XNNPACK: {s['batch1_vs_xnnpack']:.1f}x at batch 1, "
        f"{s['batch64_vs_xnnpack']:.1f}x at batch 64.",
        "",
        "Columns: eager = PyTorch (LUTHAM eager runs the Rust evaluator through "
        "`torch.ops.sharekan.lutham`); .pte = ExecuTorch Python runtime (portable/optimized "
        "CPU kernels, or the XNNPACK delegate); C++ runner = `lutham_runner`, no Python, "
        "linked with ExecuTorch's optimized CPU kernels.",
        "",
        *report.md_table(["file", "bytes"], [
            ["dense .pte", f"{r['pte_bytes']['dense_pte']:,}"],
            ["dense .pte (XNNPACK)", f"{r['pte_bytes']['dense_xnnpack_pte']:,}"],
            ["LUTHAM .pte", f"{r['pte_bytes']['lutham_pte']:,}"],
            ["LUTHAM .pte, per-edge biases in both layers",
             f"{r['pte_bytes']['lutham_pte_all_edge_bias']:,}"]], align="lr"),
        "",
        f"Size ratio dense / LUTHAM: {r['size_ratio_dense_over_lutham']:.1f}x "
        f"({r['pte_bytes']['dense_pte'] / r['pte_bytes']['lutham_pte_all_edge_bias']:.1f}x "
        "with per-edge biases in both layers). "
        f"Compression took {r['compress_seconds']:.1f} s.",
        "",
        "Agreement (max |difference|, relative L2 of compressed vs dense outputs):",
        "",
    ]
    for batch, a in r["agreement"].items():
        lines.append(
            f"- batch {batch}: LUTHAM .pte vs LUTHAM eager {a['lutham_pte_vs_eager_max_abs']:.2e}; "
            f"dense .pte vs dense eager {a['dense_pte_vs_eager_max_abs']:.2e}; "
            f"compressed vs dense rel. L2 {a['lutham_vs_dense_rel_l2']:.3f}"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
