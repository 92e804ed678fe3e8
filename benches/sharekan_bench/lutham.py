"""LUTHAM against an equally engineered dense KAN kernel: latency, physical bounds, memory.

The headline baseline is the dense KAN baseline kernel (lutham/baseline/dense_kan.h: local
B-spline basis with LUTHAM's own basis functions, input-major weights with the base row
next to the spline rows, register-blocked AVX2/FMA micro-kernel, LUTHAM's build flags and
threading), in FP32 and in int8 with per-output-channel scales. It and the LUTHAM .pte
(through the ExecuTorch Module API, linked like lutham_runner) run in one C++ process,
`lutham/kernel_bench` (benches/sharekan_bench/kernel_bench.py), calls interleaved
round-robin: per round each variant runs twice back to back; the second call ("warm", the
variant's own data as cached as its previous call left it, what a process running only this
model sees) gives the medians in the tables, the first ("cold", after the other variants
ran) is recorded too. Extra columns, never the headline: dense .pte with ExecuTorch's
generic kernels and lowered to XNNPACK (same process, against the FP32 baseline, at a few
batch sizes), and PyTorch eager (dense `sharekan.torch.KAN`, local basis on efficient-kan's
uniform grid; and LUTHAM eager through the Rust evaluator), timed in this Python process.

Heads (benches/sharekan_bench/lutham_heads.py): the demo head 1280-256-10 (compressed as
`sharekan demo` does, and with per-edge biases everywhere), a paper-scale head 2048-512-20
and the 50-head set's stacked first layers (1280 -> 400); batch 1, 4, 16, 64, 256, 1024;
1 thread (ExecuTorch's threadpool off, NoThreadPoolGuard; a one-thread Parallel for the
baseline) and all cores (the runtime's threadpool for both).

Per head, batch and path, a physical bound (benches/sharekan_bench/lutham_bounds.py) from
this machine's measured FMA peak, read bandwidth per cache level and lookup rate
(`kernel_bench --machine`), and measured / bound. Memory: planned (non-constant) buffer
bytes and constant (segment) bytes of static-batch .pte programs (batch 1 and 256), the peak
RSS of `lutham_runner` running them, and the peak RSS growth of an eager forward at batch
256 (dense `KAN` vs the `LuthamLinear` model), each in a fresh subprocess.

Run:  PYTHONPATH=benches python -m sharekan_bench lutham [--quick] [--heads demo,paper]
Writes benches/results/lutham.json, lutham.md and lutham_<head>.png (--quick: under
benches/.cache/lutham/quick/ unless --out is given).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sharekan_bench import kernel_bench as kb
from sharekan_bench import lutham_bounds as LB
from sharekan_bench import lutham_heads as LH
from sharekan_bench import report

HERE = Path(__file__).resolve().parents[1]  # benches/
BATCHES = (1, 4, 16, 64, 256, 1024)
EXTRA_BATCHES = (1, 16, 64)
THREADS = ("1", "all")
#: issue 11's targets (measured in this benchmark, never in tests)
TARGETS = {"paper_b1_1t": 4.0, "demo_b1": 1.5, "demo_b64_b256": 1.0, "threads_b64": 1.7,
           "memory_paper_b256": 88.0}

COLUMNS = {  # key -> header
    "dense_f32": "dense FP32 (baseline)",
    "dense_i8": "dense int8",
    "lutham_pte": "LUTHAM .pte",
    "dense_eager": "torch eager dense",
    "lutham_eager": "LUTHAM eager",
    "dense_pte": "dense .pte",
    "dense_xnnpack_pte": "dense .pte XNNPACK",
}


def _threads_flag(t: str) -> str:
    return "1" if t == "1" else "0"


# ---- timing -------------------------------------------------------------------------------

def kernel_timings(exe: Path, head: LH.Head, threads: str, batches, seconds: float,
                   extras: bool) -> tuple[dict[int, dict[str, dict]], int]:
    """kernel_bench --bench: {batch: {variant: record}}, and its peak RSS."""
    f = head.files
    out: dict[int, dict[str, dict]] = {}
    peak = 0
    runs = [(batches, ["--pte", f"lutham_pte={f['lutham_pte']}", "--dense",
                       f"dense_f32={f['dense_f32']}", "--dense", f"dense_i8={f['dense_i8']}"])]
    if extras and "dense_pte" in f:
        eb = [b for b in EXTRA_BATCHES if b in batches] or [batches[0]]
        runs.append((eb, ["--pte", f"dense_pte={f['dense_pte']}", "--pte",
                          f"dense_xnnpack_pte={f['dense_xnnpack_pte']}", "--dense",
                          f"dense_f32_extra={f['dense_f32']}"]))
    for bs, variants in runs:
        recs = kb.run_json(exe, ["--bench", "--input", f["x"], "--batches",
                                 ",".join(map(str, bs)), "--threads", _threads_flag(threads),
                                 "--seconds", str(seconds), *variants])
        for r in recs:
            if "batch" in r:
                out.setdefault(r["batch"], {})[r["name"]] = r
            elif "peak_rss_bytes" in r:
                peak = max(peak, r["peak_rss_bytes"])
    return out, peak


def eager_timings(head: LH.Head, threads: str, batches, seconds: float) -> dict[int, dict[str, float]]:
    """Median us of torch eager dense and LUTHAM eager, interleaved round-robin."""
    import torch

    torch.set_num_threads(1 if threads == "1" else (os.cpu_count() or 1))
    out: dict[int, dict[str, float]] = {}
    for b in batches:
        x = torch.from_numpy(head.x[:b].copy())
        fns = {"dense_eager": head.dense, "lutham_eager": head.compressed}
        times: dict[str, list[float]] = {k: [] for k in fns}
        with torch.inference_mode():
            t0 = time.perf_counter()
            for fn in fns.values():
                fn(x)
            one = max(time.perf_counter() - t0, 1e-6)
            rounds = int(min(200, max(3, seconds / one)))
            for _ in range(rounds):
                for name, fn in fns.items():
                    t = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - t)
        out[b] = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    return out


# ---- bounds -------------------------------------------------------------------------------

def layer_infos(head: LH.Head) -> list[LB.LayerInfo]:
    from sharekan.torch import lutham_layers

    infos = []
    for mod in lutham_layers(head.compressed).values():
        n_in, n_out = mod.codes.shape
        K, M = mod.codebook.shape
        per_edge = sum(t.element_size() for t in (mod.codes, mod.gains, mod.edge_bias, mod.base_weight)
                       if t.numel() == n_in * n_out)
        total = sum(b.numel() * b.element_size() for b in mod.buffers())
        infos.append(LB.LayerInfo(n_in=n_in, n_out=n_out, M=M, k=int(mod.spline_order), K=K,
                                  grid=mod.grid.numpy().astype(np.float64),
                                  edge_bytes=per_edge, lutham_bytes=total))
    return infos


def activations(head: LH.Head, batch: int) -> list[np.ndarray]:
    import torch

    xs = [head.x[:batch].astype(np.float64)]
    h = torch.from_numpy(head.x[:batch].copy())
    with torch.no_grad():
        for layer in list(head.dense.layers)[:-1]:
            h = layer(h)
            xs.append(h.numpy().astype(np.float64))
    return xs


# ---- memory -------------------------------------------------------------------------------

def _runner_rss(runner: Path, pte: Path, x: np.ndarray, work: Path) -> int:
    """Peak RSS (bytes) of lutham_runner running pte on x: VmHWM of /proc/<pid>/status, read
    until the process exits (it runs the method --repeat times so it lives long enough to be
    sampled after its first run; VmHWM never decreases). wait4's rusage is not used: in this
    sandbox it reports the parent's figure."""
    inp = work / f"in_{x.shape[0]}_{x.shape[1]}.txt"
    if not inp.exists():
        with open(inp, "w") as fh:
            fh.write(f"tensor f32 2 {x.shape[0]} {x.shape[1]}\n")
            fh.write(" ".join(f"{v:.9g}" for v in x.reshape(-1)) + "\n")
    repeat = 200 if x.shape[0] == 1 else 20
    proc = subprocess.Popen([str(runner), str(pte), str(inp), "--repeat", str(repeat)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.002)
    if proc.returncode != 0:
        raise RuntimeError(f"lutham_runner {pte} failed ({proc.returncode})")
    if peak == 0:
        raise RuntimeError(f"lutham_runner {pte} exited before its memory could be read")
    return peak


_EAGER_MEMORY = r"""
import gc, json, sys
import numpy as np, torch
import sharekan.torch  # registers sharekan::lutham
torch.set_num_threads(1)
model = torch.load(sys.argv[1], weights_only=False).eval()
x = torch.from_numpy(np.load(sys.argv[2]))
def status():
    d = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith("Vm"))
    return {k: int(v.split()[0]) * 1024 for k, v in d.items()}
with torch.inference_mode():
    model(x[:1]); model(x[:1])
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")   # reset the peak (VmHWM) to the current RSS
    before = status()["VmRSS"]
    model(x)
    print(json.dumps({"rss_before": before, "peak": status()["VmHWM"]}))
"""


def eager_memory(model, x: np.ndarray, work: Path, name: str) -> dict[str, int]:
    """Peak RSS growth of one eager forward on x, in a fresh process (the model loaded and
    warmed at batch 1 first; VmHWM reset through /proc/self/clear_refs just before)."""
    import torch

    mpath, xpath = work / f"{name}.pt", work / f"{name}_x.npy"
    torch.save(model, mpath)
    np.save(xpath, x)
    res = subprocess.run([sys.executable, "-c", _EAGER_MEMORY, str(mpath), str(xpath)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"eager memory of {name} failed: {res.stderr[-2000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {"rss_before": r["rss_before"], "peak": r["peak"], "growth": r["peak"] - r["rss_before"]}


def memory_table(exe: Path, heads: dict[str, LH.Head], batches=(1, 256), log=print) -> dict[str, Any]:
    from sharekan import lutham

    runner = lutham.build_runner()
    work = Path(tempfile.mkdtemp(prefix="bench_lutham_mem_"))
    rows = []
    for hname, head in heads.items():
        for b in batches:
            progs = LH.static_programs(head, b, log)
            meta = {r["program"]: r for r in kb.run_json(exe, ["--meta", *map(str, progs.values())])
                    if "program" in r}
            for kind, path in progs.items():
                m = meta[str(path)]
                rows.append({"head": hname, "program": kind, "batch": b,
                             "file_bytes": m["file_bytes"], "planned_bytes": m["planned_bytes"],
                             "constant_bytes": m["segment_bytes"],
                             "runner_peak_rss": _runner_rss(runner, path, head.x[:b], work)})
    eager = {}
    for hname, head in heads.items():
        x = head.x[:256]
        eager[hname] = {"dense": eager_memory(head.dense, x, work, f"{hname}_dense"),
                        "lutham": eager_memory(head.compressed, x, work, f"{hname}_lutham")}
    return {"programs": rows, "eager_b256": eager}


# ---- the run ------------------------------------------------------------------------------

def run_timings(exe: Path, head: LH.Head, batches, seconds: float, extras: bool, threads_list,
                log=print) -> dict[str, Any]:
    """Raw timings per thread setting: kernel_bench records, eager medians, peak RSS."""
    out: dict[str, Any] = {}
    for t in threads_list:
        log(f"[{head.spec.name}] threads {t}: kernel_bench")
        kt, peak = kernel_timings(exe, head, t, batches, seconds, extras)
        log(f"[{head.spec.name}] threads {t}: eager")
        et = eager_timings(head, t, batches, seconds / 2)
        out[t] = {"kernel": kt, "eager": et, "peak_rss": peak}
    return out


def summarise(head: LH.Head, timings: dict[str, Any], machine: dict[str, Any],
              consts: dict[str, int], batches, log=print) -> dict[str, Any]:
    """Table rows, bounds and crossover of one head."""
    infos = layer_infos(head)
    res: dict[str, Any] = {
        "description": head.spec.description, "widths": list(head.spec.widths),
        "grid_size": head.spec.grid_size, "spline_order": head.spec.spline_order,
        "codebook_size": head.spec.codebook_size, "weights": head.weights, "inputs": head.inputs,
        "config": head.config, "compress_seconds": head.compress_seconds,
        "bytes": {"dense_f32_weights": os.path.getsize(head.files["dense_f32"]),
                  "lutham_pte": os.path.getsize(head.files["lutham_pte"]),
                  "lutham_layers": int(sum(i.lutham_bytes for i in infos))},
        "latency": {}, "bounds": {}, "kernel_bench_peak_rss": {}, "crossover": {},
    }
    acts = {b: activations(head, b) for b in batches}
    for t, tm in timings.items():
        rows = []
        bounds = {}
        for b in batches:
            row: dict[str, Any] = {"batch": b}
            for name, rec in tm["kernel"].get(b, {}).items():
                row[name] = rec["median_us"]
                row[name + "_cold"] = rec["cold_median_us"]
            row.update(tm["eager"].get(b, {}))
            bnd = LB.head_bounds(infos, acts[b], machine[t], consts)
            bounds[b] = bnd
            row["speed_lutham_vs_dense_f32"] = row["dense_f32"] / row["lutham_pte"]
            row["speed_lutham_vs_dense_i8"] = row["dense_i8"] / row["lutham_pte"]
            if "dense_f32_extra" in row:
                for extra in ("dense_pte", "dense_xnnpack_pte"):
                    row[f"{extra}_over_dense_f32"] = row[extra] / row["dense_f32_extra"]
            for path, col in (("dense_f32", "dense_f32"), ("dense_i8", "dense_i8"),
                              ("lutham", "lutham_pte")):
                row[f"{col}_over_bound"] = row[col] / bnd[path]["bound_us"]
            rows.append(row)
            log(f"[{head.spec.name}] t={t} b={b}: dense {row['dense_f32']:.0f} us, int8 "
                f"{row['dense_i8']:.0f} us, LUTHAM {row['lutham_pte']:.0f} us "
                f"({row['speed_lutham_vs_dense_f32']:.2f}x)")
        res["latency"][t] = rows
        res["bounds"][t] = {str(b): v for b, v in bounds.items()}
        res["kernel_bench_peak_rss"][t] = tm["peak_rss"]
        # crossover: the smallest batch from which dense FP32 is faster at every larger batch
        cross = None
        for r in reversed(rows):
            if r["dense_f32"] < r["lutham_pte"]:
                cross = r["batch"]
            else:
                break
        res["crossover"][t] = cross
    return res


def _best(a: dict[str, Any], b: dict[str, Any] | None) -> dict[str, Any]:
    if not b:
        return a
    return {"threads": a["threads"], "fma_gflops": max(a["fma_gflops"], b["fma_gflops"]),
            "read_gbs": {k: max(v, b["read_gbs"].get(k, 0.0)) for k, v in a["read_gbs"].items()},
            "lookup_gps": max(a["lookup_gps"], b["lookup_gps"]),
            "decode_gps": max(a.get("decode_gps", 0.0), b.get("decode_gps", 0.0))}


def machine_figures(exe: Path, threads_list, previous: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """kernel_bench --machine per thread setting; with `previous`, the element-wise best of
    both (the machine is shared: a rate measured while others run is a lower estimate)."""
    out = {}
    for t in threads_list:
        recs = kb.run_json(exe, ["--machine", "--threads", _threads_flag(t)])
        out[t] = _best(next(r for r in recs if "fma_gflops" in r), (previous or {}).get(t))
    return out


def best_machine(machine: dict[str, Any]) -> dict[str, Any]:
    """The element-wise best of this run's figures and every earlier run's on this machine
    (benches/.cache/lutham/machine_best.json, keyed by CPU model and count): a capability,
    which a shared machine's single measurement underestimates."""
    key = f"{report.PROBES['cpu_model']()}|{os.cpu_count()}"
    path = LH.CACHE / "machine_best.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    best = {t: _best(v, saved.get(key, {}).get(t)) for t, v in machine.items()}
    saved[key] = best
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1))
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: demo head, batches 1 and 64")
    ap.add_argument("--heads", default=None, help=f"comma-separated subset of {','.join(LH.HEADS)}")
    ap.add_argument("--seconds", type=float, default=None, help="timing budget per batch size")
    ap.add_argument("--no-extras", action="store_true", help="skip the dense .pte columns")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory table")
    ap.add_argument("--reuse-memory", action="store_true",
                    help="copy the memory table from the existing lutham.json instead of "
                         "measuring it (it does not depend on the kernel's speed)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    quick = args.quick
    names = args.heads.split(",") if args.heads else (["demo"] if quick else list(LH.HEADS))
    batches = (1, 64) if quick else BATCHES
    seconds = args.seconds if args.seconds is not None else (0.3 if quick else 2.0)
    extras = not args.no_extras
    started = time.perf_counter()
    load_start = os.getloadavg()

    exe = kb.build()
    from sharekan import lutham

    consts = LB.kernel_constants(lutham.kernel_source())
    machine = machine_figures(exe, THREADS)
    heads = {n: LH.build(LH.HEADS[n], extras=extras) for n in names}
    timings = {n: run_timings(exe, h, batches, seconds, extras, THREADS) for n, h in heads.items()}
    # measured again after the timings; the bounds use the best of both measurements
    machine_run = machine_figures(exe, THREADS, machine)
    machine = best_machine(machine_run)
    print(f"machine: {json.dumps(machine)}", flush=True)
    results = {n: summarise(h, timings[n], machine, consts, batches) for n, h in heads.items()}
    memory = None
    previous = args.out / "lutham.json"
    if args.reuse_memory and previous.exists():
        memory = json.loads(previous.read_text()).get("memory")
        if memory is not None:
            memory = {**memory, "reused_from": f"an earlier run ({previous.name})"}
    elif not args.no_memory:
        mem_heads = {n: heads[n] for n in ("demo", "paper") if n in heads}
        memory = memory_table(exe, mem_heads, batches=(1, 256) if not quick else (1,))
    record = {
        "heads": results, "machine": machine, "machine_this_run": machine_run,
        "kernel_constants": consts,
        "memory": memory, "batches": list(batches), "seconds_per_batch": seconds,
        "quick": quick, "targets": TARGETS,
        "environment": report.environment(
            "cpu_model", "logical_cpus", ("load_average_at_start", lambda: load_start),
            ("load_average_at_end", "load_average"), "torch", "python", "executorch",
            "sharekan", "git_commit",
            kernel_build="lutham/build_flags.txt LUTHAM_KERNEL_OPT (-O3, hot loops cloned for "
                         "x86-64-v3); kernel_bench links libsharekan_lutham like lutham_runner",
            wall_seconds=round(time.perf_counter() - started, 1)),
    }
    md = markdown(record)
    # a smoke run never overwrites the recorded results: it goes to benches/.cache/lutham/quick
    out = args.out if not quick or args.out != HERE / "results" else LH.CACHE / "quick"
    out.mkdir(parents=True, exist_ok=True)
    report.write_record(out / "lutham", record, md)
    plots(record, out, "lutham")
    print(md)


# ---- report -------------------------------------------------------------------------------

def _us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 10000 else f"{v:.0f}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    m = r["machine"]
    lines = [
        "# LUTHAM vs the dense KAN baseline kernel (benches/sharekan_bench/lutham.py)",
        "",
        f"CPU {env.get('cpu_model')} ({env.get('logical_cpus')} logical CPUs, shared with other "
        f"work: load average {', '.join(f'{v:.1f}' for v in env['load_average_at_start'])} at "
        f"start, {', '.join(f'{v:.1f}' for v in env['load_average_at_end'])} at end); git "
        f"{env.get('git_commit')}. Medians of interleaved runs in one process "
        "(`lutham/kernel_bench`), microseconds unless marked ms; every variant's warm call "
        "(second of two back-to-back calls per round; the cold first calls are in the JSON). "
        "Speed = dense FP32 time / LUTHAM time (> 1: LUTHAM faster).",
        "",
        "Machine (kernel_bench --machine, the best figures measured on this machine so far, "
        "this run's in the JSON): " + "; ".join(
            f"{t} thread{'s' if t != '1' else ''}: FMA peak {v['fma_gflops']:.0f} GFLOP/s, read "
            + ", ".join(f"{int(k) // 1024} KiB {g:.0f} GB/s" for k, g in v["read_gbs"].items())
            + f", lookups {v['lookup_gps']:.2f} G/s, decodes {v.get('decode_gps', 0):.2f} G/s"
            for t, v in m.items()) + ".",
        "",
        f"LUTHAM kernel constants read from lutham/kernel/common.h: {r['kernel_constants']} "
        "(projection tables below decode_min_batch rows, per layer, decoded tiles from "
        "there; the bound columns name the path of each layer).",
        "",
    ]
    for name, h in r["heads"].items():
        lines += [f"## {name}: {h['description']}", "",
                  f"Weights: {h['weights']}. Inputs: {h['inputs']}. Sizes: dense FP32 model file "
                  f"{h['bytes']['dense_f32_weights']:,} bytes, LUTHAM .pte "
                  f"{h['bytes']['lutham_pte']:,} bytes.", ""]
        for t, rows in h["latency"].items():
            lost = [str(row["batch"]) for row in rows if row["dense_f32"] < row["lutham_pte"]]
            lines.append(f"**{t} thread{'s' if t != '1' else ''}** (crossover: "
                         + (f"dense FP32 faster from batch {h['crossover'][t]} on"
                            if h["crossover"][t] else "none")
                         + (f"; dense FP32 faster at batch {', '.join(lost)}" if lost
                            else "; LUTHAM faster at every batch") + ")")
            lines.append("")
            hdr = ["batch", COLUMNS["dense_f32"], COLUMNS["dense_i8"], COLUMNS["lutham_pte"],
                   "speed vs FP32", "speed vs int8", "bound FP32 (meas./bound)",
                   "bound LUTHAM (meas./bound, limit)", COLUMNS["dense_eager"],
                   COLUMNS["lutham_eager"], COLUMNS["dense_pte"], COLUMNS["dense_xnnpack_pte"]]
            body = []
            for row in rows:
                b = h["bounds"][t][str(row["batch"])]
                body.append([
                    row["batch"], _us(row["dense_f32"]), _us(row["dense_i8"]), _us(row["lutham_pte"]),
                    f"**{row['speed_lutham_vs_dense_f32']:.2f}x**",
                    _ratio(row["speed_lutham_vs_dense_i8"]),
                    f"{_us(b['dense_f32']['bound_us'])} ({row['dense_f32_over_bound']:.1f}, "
                    f"{b['dense_f32']['limit']}, {'/'.join(b['dense_f32']['levels'])})",
                    f"{_us(b['lutham']['bound_us'])} ({row['lutham_pte_over_bound']:.1f}, "
                    f"{b['lutham']['limit']}, {'/'.join(b['lutham']['paths'])})",
                    _us(row.get("dense_eager")), _us(row.get("lutham_eager")),
                    _us(row.get("dense_pte")), _us(row.get("dense_xnnpack_pte")),
                ])
            lines += report.md_table(hdr, body, align="r" * len(hdr))
            lines.append("")
        lines += _why(name, h)
    lines += _memory_md(r.get("memory"))
    lines += _targets_md(r)
    lines += [
        "## How the bounds are computed",
        "",
        *(LB.__doc__ or "").strip().splitlines()[2:],
        "",
        "The dense .pte columns are measured in a second kernel_bench process against the FP32 "
        "baseline at the same batch sizes (JSON: `*_over_dense_f32`), eager columns in the "
        "Python process; neither is a headline figure.",
        "",
    ]
    return "\n".join(lines)


def _why(name: str, h: dict[str, Any]) -> list[str]:
    """Where dense FP32 beats LUTHAM, and whether the bounds say it must."""
    out = []
    for t, rows in h["latency"].items():
        lost = [r for r in rows if r["dense_f32"] < r["lutham_pte"]]
        if not lost:
            continue
        parts = []
        for r in lost:
            b = h["bounds"][t][str(r["batch"])]
            bd, bl = b["dense_f32"], b["lutham"]
            if bl["bound_us"] > bd["bound_us"]:
                why = (f"physics: LUTHAM's bound is {bl['bound_us'] / bd['bound_us']:.2f}x the "
                       f"dense one ({_us(bl['bound_us'])}, {bl['limit']}: "
                       f"{bl['flops'] / 1e6:.0f} MFLOP incl. decode, {bl['gathers'] / 1e6:.1f} M "
                       f"lookups, {'/'.join(bl['paths'])}; dense {_us(bd['bound_us'])}, "
                       f"{bd['limit']}: {bd['flops'] / 1e6:.0f} MFLOP, {bd['bytes'] / 1e6:.1f} MB)")
            else:
                why = (f"not physics: LUTHAM's bound ({_us(bl['bound_us'])}, {bl['limit']}, "
                       f"{'/'.join(bl['paths'])}) is at or below the dense one "
                       f"({_us(bd['bound_us'])}, {bd['limit']}); LUTHAM runs at "
                       f"{r['lutham_pte_over_bound']:.1f}x its bound, dense at "
                       f"{r['dense_f32_over_bound']:.1f}x")
            parts.append(f"batch {r['batch']} ({r['speed_lutham_vs_dense_f32']:.2f}x): {why}")
        out.append(f"Dense FP32 faster ({t} thread{'s' if t != '1' else ''}): " + "; ".join(parts)
                   + ".")
    return out + [""] if out else []


def _memory_md(mem: dict[str, Any] | None) -> list[str]:
    if not mem:
        return []
    lines = ["## Runtime memory", "",
             "Static-batch programs (ExecuTorch plans every intermediate for the exported batch). "
             "Planned = the method's memory-planned (non-constant) buffers "
             "(MethodMeta::memory_planned_buffer_size); constant = the program's segment data "
             "(constant tensors); peak RSS = `lutham_runner` running the program (VmHWM from "
             "/proc/<pid>/status sampled until it exits; includes the runtime libraries and the "
             "parsed input text).", ""]
    rows = mem["programs"]
    body = []
    for r in rows:
        body.append([r["head"], r["program"], r["batch"], f"{r['planned_bytes']:,}",
                     f"{r['constant_bytes']:,}", f"{r['planned_bytes'] + r['constant_bytes']:,}",
                     f"{r['runner_peak_rss'] / 1e6:.1f} MB"])
    lines += report.md_table(["head", "program", "batch", "planned bytes", "constant bytes",
                              "planned + constant", "runner peak RSS"], body, align="llrrrrr")
    lines.append("")
    ratios = []
    for head in sorted({r["head"] for r in rows}):
        for b in sorted({r["batch"] for r in rows}):
            d = [r for r in rows if r["head"] == head and r["batch"] == b and r["program"] == "dense"]
            lu = [r for r in rows if r["head"] == head and r["batch"] == b and r["program"] == "lutham"]
            if d and lu:
                pd = d[0]["planned_bytes"] + d[0]["constant_bytes"]
                pl = lu[0]["planned_bytes"] + lu[0]["constant_bytes"]
                ratios.append(f"{head} batch {b}: planned + constant {pd / pl:.1f}x smaller, "
                              f"runner peak RSS {d[0]['runner_peak_rss'] / lu[0]['runner_peak_rss']:.1f}x")
    lines += ["Dense / LUTHAM: " + "; ".join(ratios) + ".", ""]
    lines += ["Eager PyTorch forward at batch 256 (fresh process, 1 thread, peak RSS growth over "
              "the warmed model: VmHWM reset via /proc/self/clear_refs):", ""]
    body = [[h, f"{v['dense']['growth'] / 1e6:.1f} MB", f"{v['lutham']['growth'] / 1e6:.1f} MB",
             f"{v['dense']['rss_before'] / 1e6:.0f} MB", f"{v['lutham']['rss_before'] / 1e6:.0f} MB"]
            for h, v in mem["eager_b256"].items()]
    lines += report.md_table(["head", "dense KAN peak growth", "LuthamLinear peak growth",
                              "dense RSS before", "LUTHAM RSS before"], body, align="lrrrr")
    return lines + [""]


def _find(r: dict[str, Any], head: str, t: str, batch: int) -> dict[str, Any] | None:
    h = r["heads"].get(head)
    if not h or t not in h["latency"]:
        return None
    return next((row for row in h["latency"][t] if row["batch"] == batch), None)


def _targets_md(r: dict[str, Any]) -> list[str]:
    T = r["targets"]
    out = ["## Issue 11 targets (this run)", ""]

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**missed**")

    row = _find(r, "paper", "1", 1)
    v = row["speed_lutham_vs_dense_f32"] if row else None
    out.append(f"- Paper-scale head, batch 1, 1 thread, LUTHAM >= {T['paper_b1_1t']}x the dense "
               f"FP32 baseline: {_ratio(v)}: {verdict(None if v is None else v >= T['paper_b1_1t'])}.")
    for head in ("demo", "demo_edge"):
        for t in THREADS:
            parts = []
            for b, goal in ((1, T["demo_b1"]), (64, T["demo_b64_b256"]), (256, T["demo_b64_b256"])):
                row = _find(r, head, t, b)
                if row:
                    s = row["speed_lutham_vs_dense_f32"]
                    parts.append(f"batch {b} {s:.2f}x (>= {goal}: {verdict(s >= goal)})")
            if parts:
                out.append(f"- {head}, {t} thread(s): " + "; ".join(parts) + ".")
    for head in r["heads"]:
        a = _find(r, head, "1", 64)
        b = _find(r, head, "all", 64)
        if a and b:
            s = a["lutham_pte"] / b["lutham_pte"]
            out.append(f"- {head}, batch 64, all cores vs 1 thread (LUTHAM .pte): {s:.2f}x "
                       f"(>= {T['threads_b64']}x: {verdict(s >= T['threads_b64'])}; dense FP32 "
                       f"baseline {a['dense_f32'] / b['dense_f32']:.2f}x).")
    mem = r.get("memory")
    if mem:
        d = [x for x in mem["programs"] if x["head"] == "paper" and x["batch"] == 256]
        if len(d) == 2:
            dn = next(x for x in d if x["program"] == "dense")
            lu = next(x for x in d if x["program"] == "lutham")
            ratio = (dn["planned_bytes"] + dn["constant_bytes"]) / (lu["planned_bytes"] + lu["constant_bytes"])
            out.append(f"- Paper-scale head, batch 256: planned + constant bytes dense / LUTHAM "
                       f"{ratio:.1f}x (>= {T['memory_paper_b256']}x: "
                       f"{verdict(ratio >= T['memory_paper_b256'])}).")
    return out + [""]


def plots(r: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    plt = report.pyplot()
    if plt is None:
        return []
    paths = []
    styles = {"dense_f32": ("C0", "o", "-"), "dense_i8": ("C1", "s", "-"),
              "lutham_pte": ("C3", "D", "-"), "dense_eager": ("C2", "^", ":"),
              "lutham_eager": ("C4", "v", ":"), "dense_pte": ("C5", "x", ":"),
              "dense_xnnpack_pte": ("C6", "+", ":")}
    for name, h in r["heads"].items():
        ts = list(h["latency"])
        fig, axes = plt.subplots(1, len(ts), figsize=(6.5 * len(ts), 5), squeeze=False)
        for ax, t in zip(axes[0], ts):
            rows = h["latency"][t]
            for col, (c, mk, ls) in styles.items():
                pts = [(row["batch"], row[col]) for row in rows if row.get(col) is not None]
                if pts:
                    ax.plot(*zip(*pts), color=c, marker=mk, ls=ls, label=COLUMNS[col])
            for path, c in (("dense_f32", "C0"), ("lutham", "C3")):
                pts = [(row["batch"], h["bounds"][t][str(row["batch"])][path]["bound_us"])
                       for row in rows]
                ax.plot(*zip(*pts), color=c, ls="--", lw=1,
                        label=f"bound {'dense FP32' if path == 'dense_f32' else 'LUTHAM'}")
            if h["crossover"][t]:
                ax.axvline(h["crossover"][t], color="grey", lw=0.8, ls="-.")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("batch")
            ax.set_ylabel("latency per call (us)")
            ax.set_title(f"{name}, {t} thread{'s' if t != '1' else ''}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(h["description"], fontsize=9)
        paths.append(report.save_figure(fig, out_dir / f"{stem}_{name}.png"))
    return paths


if __name__ == "__main__":
    main()
