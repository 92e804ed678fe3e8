"""`python -m sharekan_bench`: run the benchmarks and write results (JSON, Markdown, PNG)
under benches/results/. Run from the repository root with `PYTHONPATH=benches`.

The vision-KAN benchmark (options below; results vision*.{json,md,png}):

    python -m sharekan_bench all           # every benchmark below -> benches/results/vision*
    python -m sharekan_bench vision        # classification only (MobileNetV2 + EfficientNet-Lite0)
    python -m sharekan_bench regression    # formula regression only
    python -m sharekan_bench multihead     # N = 1, 5, 10, 50 task heads, shared codebooks
    python -m sharekan_bench detection     # generated VOC-20 set, mAP@0.5, shifted sets
    python -m sharekan_bench transfer      # classification heads on shifted Fashion-MNIST
    python -m sharekan_bench demo          # the end-to-end demo (same as `sharekan demo`)
    python -m sharekan_bench report        # rebuild vision.md + plots from the saved JSONs

Options: --cache-dir DIR (default $SHAREKAN_CACHE_DIR or ~/.cache/sharekan/bench),
--out DIR (default benches/results), --quick (one head, short sweep), --threads N,
--second-backbone NAME (classification: the second frozen backbone, default
efficientnet_lite0; `none` runs MobileNetV2 only).

The compiler and kernel benchmarks (each with its own options: `... NAME --help`):

    python -m sharekan_bench kmeans        # k-means vs scikit-learn / faiss -> kmeans.{json,md}
    python -m sharekan_bench lutham        # LUTHAM vs dense KAN, eager and .pte -> lutham.*
    python -m sharekan_bench gpu           # LUTHAM on a GPU (Triton, portable) -> gpu.*
    python -m sharekan_bench layouts       # every checkpoint layout at K = 256 -> layouts.*
    python -m sharekan_bench refine        # Lloyd refinement, Rust vs NumPy -> refine.*
    python -m sharekan_bench compensate    # compensate=True on the wide head -> compensate.*
    python -m sharekan_bench portable      # stock-op .pte (+XNNPACK), ONNX vs LUTHAM/dense -> portable.*
    python -m sharekan_bench ratedistortion  # sharekan vs faiss quantizers at equal bytes/edge -> ratedistortion.*
    python -m sharekan_bench budget_targets  # issue 14: detection head, 50 heads under byte budgets -> budget_targets.*
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
import platform
import sys
import time
from pathlib import Path
from typing import Any

#: benches/results, wherever the command runs from
RESULTS = Path(__file__).resolve().parents[1] / "results"
#: The compiler and kernel benchmarks: `sharekan_bench.<name>.main(argv)`, own options.
MODULES = ("kmeans", "lutham", "gpu", "layouts", "refine", "compensate", "portable", "ratedistortion", "budget",
           "budget_targets")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sharekan_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="all", choices=("all", "vision", "regression", "multihead", "detection", "transfer", "demo", "report"))
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch/rayon threads (default: all cores)")
    p.add_argument("--second-backbone", default="efficientnet_lite0",
                   help="classification (vision/all): second frozen backbone for the `kan` head "
                        "and the MLP (efficientnet_lite0, or none)")
    return p


def _environment(threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    import sharekan

    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False, timeout=5).stdout.strip() or None
    except OSError:
        commit = None
    return {"sharekan": sharekan.__version__, "git_commit": commit, "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "threads": threads, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in MODULES:
        import importlib

        # imported only now: `kmeans` sets its thread counts before NumPy loads
        importlib.import_module(f"{__package__}.{argv[0]}").main(argv[1:])
        return 0
    args = _parser().parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    from sharekan.demo.data import cache_dir

    cache = cache_dir(args.cache_dir)

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.what == "demo":
        from sharekan.demo import run_demo

        run_demo(cache_dir=str(cache), quick=args.quick)
        return 0
    from . import report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m sharekan_bench " + " ".join(argv)
    env = _environment(threads)
    md = [f"# Vision-KAN benchmark (sharekan {env['sharekan']})", "",
          f"Command: `{command.strip()}` (cache: features and trained heads under the cache dir). "
          f"Machine: {env['platform']}, {env['cpu_count']} CPUs, {threads} threads, torch {env['torch']}.",
          "Sizes: `bytes` = stored tensor bytes (sharekan: `CompressedModel.nbytes`; baselines: "
          "an honest packed count, see `benches/sharekan_bench/methods.py`); ratio = dense FP32 "
          "state_dict bytes / bytes. SQNR and agreement are against the dense head's outputs on "
          "the test split.", ""]
    started = time.perf_counter()
    # each section: its JSON file, its Markdown renderer and its plots (if any)
    sections = {"vision": ("vision_classification.json", report.classification_markdown,
                           report.plot_classification),
                "regression": ("vision_regression.json", report.regression_markdown,
                               report.plot_regression),
                "multihead": ("vision_multihead.json", report.multihead_markdown, None),
                "detection": ("vision_detection.json", report.detection_markdown, None),
                "transfer": ("vision_transfer.json", report.transfer_markdown, None)}

    def record(section: str, res: dict[str, Any]) -> None:
        """Stamp a fresh result, save its JSON, add its Markdown, draw its plots."""
        fname, render, plot = sections[section]
        res["environment"] = env
        res["command"] = command
        report.write_json(res, out / fname)
        md.append(render(res))
        if plot is not None:
            plot(res, out)

    if args.what == "report":
        import json

        for fname, render, plot in sections.values():
            if (out / fname).exists():
                res = json.loads((out / fname).read_text(), parse_constant=float)
                res = _floats(res)
                md.append(f"Recorded by: `{res.get('command', '?')}`\n")
                md.append(render(res))
                if plot is not None:
                    plot(res, out)
        (out / "vision.md").write_text("\n".join(md) + "\n")
        log(f"wrote {out / 'vision.md'}")
        return 0
    if args.what in ("all", "vision"):
        from .vision import VisionConfig, quick_config, run_classification

        cfg = quick_config() if args.quick else VisionConfig()
        second = () if args.second_backbone in ("", "none") else (args.second_backbone,)
        cfg = replace(cfg, second_backbones=second)
        record("vision", run_classification(cache, cfg, log))
    if args.what in ("all", "regression"):
        from .regression import RegressionConfig, run_regression

        rcfg = RegressionConfig()
        formulas = None
        if args.quick:
            from .regression import FORMULAS

            formulas = (next(iter(FORMULAS)),)
            rcfg = RegressionConfig(ks=(16, 64), metrics=("data",))
        log("regression:")
        record("regression", run_regression(cache, rcfg, log, formulas))
    if args.what in ("all", "multihead"):
        from .multihead import MultiHeadConfig, quick, run_multihead
        from sharekan.demo.heads import load_features

        log("multi-head:")
        mcfg = quick() if args.quick else MultiHeadConfig()
        record("multihead", run_multihead(cache, load_features(cache, 64, log), mcfg, log))
    if args.what in ("all", "detection"):
        from .detection import DetConfig, quick_config as det_quick, run_detection

        log("detection (generated VOC-20):")
        record("detection", run_detection(cache, det_quick() if args.quick else DetConfig(), log))
    if args.what in ("all", "transfer"):
        from .transfer import TransferConfig, run_transfer

        log("transfer (shifted Fashion-MNIST):")
        tcfg = TransferConfig(n=500, ks=(16,), heads=("kan",)) if args.quick else TransferConfig()
        record("transfer", run_transfer(cache, tcfg, log))
    md.append(f"Total wall time: {time.perf_counter() - started:.0f} s.")
    name = "vision.md" if args.what == "all" else f"vision_{args.what}.md"
    (out / name).write_text("\n".join(md) + "\n")
    log(f"wrote {out / name}")
    return 0


def _floats(obj: Any) -> Any:
    """JSON "inf" / "-inf" strings (written for infinite SQNR) back to floats."""
    if isinstance(obj, dict):
        return {k: _floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_floats(v) for v in obj]
    if obj in ("inf", "-inf"):
        return float(obj)
    return obj


if __name__ == "__main__":
    sys.exit(main())
