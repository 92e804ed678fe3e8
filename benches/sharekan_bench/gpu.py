"""LUTHAM on a GPU: the Triton kernel and the portable torch path against dense KAN heads.

Heads (efficient-kan layout, G = 10, k = 3, compressed with `sharekan.torch.compress_`,
K = 256, Int8: codebook, gains, per-edge biases and base weights int8; first layer's bias
folded, as in benches/sharekan_bench/lutham.py):

- demo: 1280 -> 256 -> 10, seeded random weights (efficient-kan init, torch.manual_seed(0));
- paper: 2048 -> 512 -> 20, smooth coefficients: every edge's spline is a random mix of
  low-frequency sines and a linear trend sampled on its M = 13 coefficients
  (`smooth_coefficients`), so edges share shapes as trained KAN edges do; base weights
  efficient-kan init.

Variants per batch size (1, 4, 16, 64, 256, 1024, 4096), interleaved round-robin:

- lutham_triton: `torch.ops.sharekan.lutham` forced to the Triton kernel (when
  `sharekan.torch.triton_lutham` exists and is available, else recorded as missing);
- lutham_portable: the op forced to the portable path (auto strategy, 256 MiB chunks);
- dense_eager: efficient-kan's formulation in eager torch (Cox-de Boor recursion over all
  knot intervals, scaled spline weights formed per call);
- dense_local_compiled: the dense layer with the local basis (k + 1 cardinal B-spline values
  per input, `sharekan.torch.kan._uniform_basis`) under `torch.compile`.

Latency: CUDA events around each call (perf_counter on CPU), median of the interleaved
rounds. Peak memory: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`
for one call, minus the memory allocated before it. L2 hit rate is not measured: it needs
Nsight Compute (`ncu --metrics lts__t_sector_hit_rate.pct`); torch.profiler does not report it.

Run:  PYTHONPATH=benches python -m sharekan_bench gpu [--device cuda] [--quick]
Writes benches/results/gpu.json, gpu.md (and gpu.png when matplotlib imports). On another
device (e.g. `--device cpu --quick`, a smoke test) the files go to a temporary directory
unless --out is given.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import sharekan
from sharekan.torch import KAN, compress_, lutham_layers, ops
from sharekan.torch.kan import _uniform_basis, bspline_basis_recursion
from sharekan_bench import report

HERE = Path(__file__).resolve().parents[1]  # benches/
GRID_SIZE, SPLINE_ORDER, CODEBOOK_SIZE = 10, 3, 256
HEADS = {"demo": [1280, 256, 10], "paper": [2048, 512, 20]}
BATCHES = [1, 4, 16, 64, 256, 1024, 4096]
QUICK_BATCHES = [1, 16]


def smooth_coefficients(model: KAN, seed: int = 0) -> None:
    """Give every edge a smooth spline: sum of 3 random low-frequency sines + a linear
    trend over its M coefficients, amplitude ~ 1/sqrt(n_in) (a trained layer's scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            n_out, n_in, m = layer.spline_weight.shape
            t = torch.linspace(0.0, 1.0, m)
            freq = torch.rand(n_out, n_in, 3, 1, generator=g) * 2.5 + 0.25
            phase = torch.rand(n_out, n_in, 3, 1, generator=g) * 2 * math.pi
            amp = torch.randn(n_out, n_in, 3, 1, generator=g)
            w = (amp * torch.sin(2 * math.pi * freq * t + phase)).sum(dim=2)
            w += torch.randn(n_out, n_in, 1, generator=g) * (t - 0.5)
            layer.spline_weight.copy_(w / math.sqrt(n_in))
            if layer.enable_standalone_scale_spline:
                layer.spline_scaler.fill_(1.0)


def dense_forward(model: KAN, x: torch.Tensor, local: bool) -> torch.Tensor:
    """The dense head: efficient-kan's recursion (local=False) or the local basis."""
    for layer in model.layers:
        base = F.linear(F.silu(x), layer.base_weight)
        if local:
            basis = _uniform_basis(x, layer.grid, layer.spline_order)
        else:
            basis = bspline_basis_recursion(x, layer.grid, layer.spline_order)
        w = layer.scaled_spline_weight.reshape(layer.out_features, -1)
        x = base + F.linear(basis.reshape(x.shape[0], -1), w)
    return x


class Timer:
    """Per-call latency: CUDA events on a GPU, perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def run(self, fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 3
            ) -> dict[str, float]:
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        self.sync()
        times: dict[str, list[float]] = {n: [] for n in fns}
        for _ in range(rounds):
            if self.cuda:
                events = {}
                for name, fn in fns.items():
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    events[name] = (start, end)
                torch.cuda.synchronize()
                for name, (start, end) in events.items():
                    times[name].append(start.elapsed_time(end) * 1e3)  # ms -> us
            else:
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) * 1e6)
        return {n: statistics.median(ts) for n, ts in times.items()}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra memory of one call above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


def build_head(name: str, widths: list[int]) -> tuple[KAN, torch.nn.Module, dict]:
    torch.manual_seed(0)
    dense = KAN(widths, grid_size=GRID_SIZE, spline_order=SPLINE_ORDER).eval()
    weights = "seeded random (torch.manual_seed(0)), efficient-kan init"
    if name == "paper":
        smooth_coefficients(dense)
        weights = ("smooth splines: 3 random low-frequency sines + linear trend per edge "
                   "(seed 0), efficient-kan base weights")
    config = sharekan.Config(codebook_size=CODEBOOK_SIZE, int8=True, base="int8", bias="edge",
                             overrides={"layers.0": {"bias": "fold"}})
    t0 = time.perf_counter()
    model = compress_(copy.deepcopy(dense), config).eval()
    info = {"widths": widths, "grid_size": GRID_SIZE, "spline_order": SPLINE_ORDER,
            "codebook_size": CODEBOOK_SIZE, "config": config.to_dict(), "weights": weights,
            "compress_seconds": time.perf_counter() - t0,
            "lutham_buffer_bytes": sum(m.nbytes for m in lutham_layers(model).values()),
            "dense_param_bytes": sum(p.numel() * p.element_size() for p in dense.parameters())}
    return dense, model, info


def bench_head(name: str, widths: list[int], device: torch.device, batches: list[int],
               rounds: int) -> dict:
    dense, model, info = build_head(name, widths)
    print(f"{name} {widths}: compressed in {info['compress_seconds']:.1f} s", flush=True)
    reference_cpu = copy.deepcopy(model)  # the Rust evaluator on CPU, for agreement
    dense.to(device)
    model.to(device)
    compiled_local = torch.compile(lambda x: dense_forward(dense, x, local=True))
    have_triton = ops.triton_available()
    timer = Timer(device)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        x_cpu = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(batch, widths[0])).astype(np.float32))
        x = x_cpu.to(device)

        def lutham(impl: str, x=x) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                with torch.no_grad(), ops.use_impl(impl):
                    return model(x)
            return run

        fns: dict[str, Callable[[], object]] = {}
        if have_triton:
            fns["lutham_triton"] = lutham("triton")
        fns["lutham_portable"] = lutham("portable")
        if device.type == "cpu":
            fns["lutham_rust"] = lutham("rust")
        fns["dense_eager"] = lambda x=x: _no_grad(dense_forward, dense, x, False)
        fns["dense_local_compiled"] = lambda x=x: _no_grad(compiled_local, x)
        outputs = {n: fn().float().cpu() for n, fn in fns.items()}  # also compiles
        with torch.no_grad():
            want = reference_cpu(x_cpu)
        agreement = {}
        for n, y in outputs.items():
            ref = outputs["dense_eager"] if n.startswith("dense") else want
            agreement[n] = float((y - ref).norm() / ref.norm())
        memory = {n: peak_bytes(fn, device) for n, fn in fns.items()}
        timings = timer.run(fns, rounds if batch <= 256 else max(5, rounds // 4))
        rows.append({"batch": batch, "median_us": timings, "peak_extra_bytes": memory,
                     "rel_l2_vs_reference": agreement,
                     "lutham_vs_dense_rel_l2": float(
                         (outputs["lutham_portable"] - outputs["dense_eager"]).norm()
                         / outputs["dense_eager"].norm())})
        print(f"  batch {batch}: " + ", ".join(f"{n} {v:.0f} us" for n, v in timings.items()),
              flush=True)
    return {"model": info, "latency": rows,
            "triton": "measured" if have_triton else "missing: sharekan.torch.triton_lutham "
            "not importable or not available on this device"}


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def _markdown(r: dict) -> str:
    env = r["environment"]
    lines = [
        "# LUTHAM on a GPU (benches/sharekan_bench/gpu.py)",
        "",
        f"Device: {env['device_name']}; torch {env['torch']}, triton {env['triton']}. "
        f"Command: `{env['command']}`. Median latency in microseconds "
        f"({'CUDA events' if env['device'] == 'cuda' else 'perf_counter'}); peak = extra "
        "memory of one call (torch.cuda.max_memory_allocated). L2 hit rate: "
        f"{r['l2_hit_rate']}.",
        "",
    ]
    for name, head in r["heads"].items():
        m = head["model"]
        variants = list(head["latency"][0]["median_us"])
        lines += [
            f"## {name}: {' -> '.join(map(str, m['widths']))}, G = {m['grid_size']}, "
            f"k = {m['spline_order']}, K = {m['codebook_size']} Int8",
            "",
            f"Weights: {m['weights']}. Triton: {head['triton']}. LUTHAM buffers "
            f"{m['lutham_buffer_bytes']:,} bytes vs dense parameters {m['dense_param_bytes']:,}.",
            "",
        ]
        lines += report.md_table(
            ["batch", *variants, *(f"peak MiB {v}" for v in variants)],
            [[row["batch"], *(f"{row['median_us'][v]:.0f}" for v in variants),
              *("-" if row["peak_extra_bytes"][v] is None else f"{row['peak_extra_bytes'][v] / 2**20:.1f}"
                for v in variants)] for row in head["latency"]],
            align="r" * (1 + 2 * len(variants)))
        lines += ["", "Relative L2 of each variant against its reference (LUTHAM: the Rust "
                  "evaluator on CPU; dense: dense eager), and compressed vs dense:", ""]
        for row in head["latency"]:
            a = row["rel_l2_vs_reference"]
            lines.append(f"- batch {row['batch']}: " + ", ".join(f"{n} {v:.1e}" for n, v in a.items())
                         + f"; LUTHAM vs dense {row['lutham_vs_dense_rel_l2']:.3f}")
        lines.append("")
    return "\n".join(lines)


def _plot(r: dict, path: Path) -> bool:
    plt = report.pyplot()
    if plt is None:
        return False
    heads = list(r["heads"].items())
    fig, axes = plt.subplots(1, len(heads), figsize=(6 * len(heads), 4), squeeze=False)
    for ax, (name, head) in zip(axes[0], heads):
        batches = [row["batch"] for row in head["latency"]]
        for v in head["latency"][0]["median_us"]:
            ax.plot(batches, [row["median_us"][v] for row in head["latency"]], marker="o", label=v)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="median latency (us)",
               title=f"{name} {'-'.join(map(str, head['model']['widths']))}")
        ax.legend(fontsize=8)
    fig.suptitle(r["environment"]["device_name"])
    report.save_figure(fig, path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help=f"batches {QUICK_BATCHES}, few rounds")
    ap.add_argument("--heads", default="demo,paper", help="comma-separated: demo, paper")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here; run with --device cpu --quick for a smoke test")
    out = args.out
    if out is None:
        out = HERE / "results" if device.type == "cuda" else Path(
            tempfile.mkdtemp(prefix="bench_gpu_"))
    batches = QUICK_BATCHES if args.quick else BATCHES
    rounds = args.rounds or (5 if args.quick else 50)
    heads = {h: bench_head(h, HEADS[h], device, batches, rounds) for h in args.heads.split(",")}
    def device_name() -> str:
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        return report.PROBES["processor"]()

    def triton_version() -> str:
        try:
            return report.PROBES["triton"]()
        except ImportError:
            return "not installed"

    result = {
        "heads": heads,
        "l2_hit_rate": "not measured (needs Nsight Compute: ncu --metrics "
                       "lts__t_sector_hit_rate.pct; torch.profiler does not report it)",
        "environment": report.environment(
            ("device", lambda: device.type), ("device_name", device_name), "torch",
            ("triton", triton_version), "cuda", "python", "sharekan", "logical_cpus",
            "torch_threads", command="python -m sharekan_bench " + " ".join(sys.argv[1:]),
            quick=args.quick, rounds=rounds),
    }
    out.mkdir(parents=True, exist_ok=True)
    md = _markdown(result)
    if _plot(result, out / "gpu.png"):
        md += "\n![latency](gpu.png)\n"
    paths = report.write_record(out / "gpu", result, md)
    print(md)
    print("written: " + ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
