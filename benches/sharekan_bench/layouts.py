"""Compression ratio and output error at K = 256 for every KAN library sharekan reads.

For each library a small model (every layer >= 256 edges) is built and trained briefly on a
seeded synthetic regression task, its state_dict is compressed with sharekan's defaults
(K = 256, int8, function metric, bias="auto") and with metric="data" on calibration
inputs collected by forward hooks, the decompressed state_dict is loaded back into the
library's module with strict=True, and the library's own outputs are compared with the
dense original on held-out inputs. pykan is the real PyPI package; the other libraries are
the layout-exact fixtures of tests/fixtures_kan_libraries.py (TorchKAN's PyPI release
ships no code). Where sharekan's LUTHAM evaluator supports the layers, its output is also
compared with the library's output on the decompressed weights.

    PYTHONPATH=benches .venv/bin/python -m sharekan_bench layouts      # writes benches/results/layouts.{json,md}
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benches/
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import sharekan  # noqa: E402
from fixtures_kan_libraries import (  # noqa: E402
    ChebyKAN,
    ConvNet,
    FastKAN,
    KAGNConv2DLayer,
    KANConv2DLayer,
    TorchKAN,
)
from sharekan.torch import KAN, collect_calibration  # noqa: E402
from sharekan_bench import report  # noqa: E402

K = 256
STEPS = 40


def _pykan(width):
    import kan

    return lambda: kan.KAN(width=width, grid=5, k=3, seed=0, auto_save=False, device="cpu",
                           symbolic_enabled=False)


def cases():
    dense_in = lambda g, n: torch.rand(n, 32, generator=g) * 2 - 1  # noqa: E731
    gauss_in = lambda g, n: torch.randn(n, 32, generator=g)  # noqa: E731
    conv_in = lambda g, n: torch.rand(n // 16, 8, 8, 8, generator=g) * 2 - 1  # noqa: E731
    conv_gauss = lambda g, n: torch.randn(n // 16, 8, 8, 8, generator=g)  # noqa: E731
    out = {
        "efficient-kan": (lambda: KAN([32, 32, 10], grid_size=5), dense_in, "fixture (sharekan.torch.KAN)"),
        "fastkan": (lambda: FastKAN([32, 32, 10]), gauss_in, "fixture"),
        "chebykan": (lambda: ChebyKAN([32, 32, 10], degree=4), gauss_in, "fixture"),
        "torchkan": (lambda: TorchKAN([32, 32, 10]), dense_in, "fixture (PyPI wheel is empty)"),
        "torch-conv-kan": (lambda: ConvNet(KANConv2DLayer, [8, 8, 8]), conv_in, "fixture"),
        "torch-conv-kagn": (lambda: ConvNet(KAGNConv2DLayer, [8, 8, 8], degree=3), conv_gauss, "fixture"),
    }
    try:
        import kan  # noqa: F401

        out["pykan"] = (_pykan([32, 16, 16]), dense_in, "real pykan 0.2.8, update_grid_from_samples")
    except ImportError:
        pass
    return out


def train(model, x, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = model(x)
        flat = x.reshape(len(x), -1)
        proj = torch.randn(flat.shape[1], y[0].numel(), generator=gen) / flat.shape[1] ** 0.5
        target = torch.sin(3 * flat @ proj).reshape(y.shape)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(STEPS):
        if step == STEPS // 2 and hasattr(model, "update_grid_from_samples"):
            model.update_grid_from_samples(x)
        opt.zero_grad()
        ((model(x) - target) ** 2).mean().backward()
        opt.step()
    return model.eval()


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def sqnr(err):
    return float("inf") if err == 0 else -20 * np.log10(err)


def run_case(name, make, inputs, source):
    torch.manual_seed(0)
    model = make()
    g = torch.Generator().manual_seed(1)
    x_train, x_test = inputs(g, 512), inputs(g, 256)
    started = time.perf_counter()
    train(model, x_train)
    train_s = time.perf_counter() - started
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    with torch.no_grad():
        dense = model(x_test).double().numpy()
    calib = collect_calibration(model, x_train)
    row = {"library": name, "source": source, "train_s": round(train_s, 1)}
    for metric in ("function", "data"):
        started = time.perf_counter()
        compressed = sharekan.compress(sd, codebook_size=K, metric=metric,
                                       calibration=calib if metric == "data" else None)
        seconds = time.perf_counter() - started
        fresh = make()
        fresh.load_state_dict({k: torch.from_numpy(v) for k, v in compressed.decompress().items()}, strict=True)
        with torch.no_grad():
            approx = fresh.eval()(x_test).double().numpy()
        err = rel_err(approx, dense)
        layers = compressed.report.layers
        entry = {
            "ratio_vs_fp32": compressed.report.ratio,
            "ratio_layers_vs_fp32": sum(r.bytes_dense_fp32 for r in layers) / sum(r.bytes_compressed for r in layers),
            "bytes_dense_fp32": compressed.report.bytes_dense_fp32,
            "bytes_compressed": compressed.report.bytes_compressed,
            "output_rel_err": err,
            "output_sqnr_db": sqnr(err),
            "compress_s": round(seconds, 2),
        }
        if all(r.evaluator == "lutham" for r in layers):
            lut = compressed.forward(x_test.numpy())
            entry["evaluator_vs_library_max_abs"] = float(np.abs(lut - approx).max())
        row[metric] = entry
    row["edges_per_layer"] = [r.edges for r in layers]
    row["basis"] = layers[0].basis
    row["evaluator"] = "lutham" if all(r.evaluator == "lutham" for r in layers) else layers[0].evaluator
    row["tensors"] = {s: sum(t.status == s for t in compressed.report.tensors)
                      for s in ("compressed", "passthrough", "refused")}
    return row


def markdown(rows):
    lines = [
        f"# Compression by library at K = {K} (int8, bias auto)",
        "",
        "Output error: relative L2 of the library's own forward pass on the decompressed "
        "state_dict (strict load) against the dense model, on 256 held-out inputs. "
        "'ratio' counts every stored byte of the state_dict (passthrough included) against "
        "fp32; 'layers' only the KAN layers. 'evaluator': the largest difference between "
        "sharekan's LUTHAM evaluator (`CompressedModel.forward`, the Rust evaluator; the "
        "C++ kernel computes the same, tests/test_lutham_kernel.py) and the library's "
        "forward on the decompressed weights, or why the evaluator refuses the layers "
        "(reason of the first layer).",
        "",
    ]

    def cells(r):
        f, d = r["function"], r["data"]
        ev = (f"LUTHAM, max abs diff {f['evaluator_vs_library_max_abs']:.1e}"
              if "evaluator_vs_library_max_abs" in f else f"refused: {r['evaluator']}")
        return [r["library"], r["source"], r["basis"], ", ".join(map(str, r["edges_per_layer"])),
                f"{f['ratio_vs_fp32']:.1f}x", f"{f['ratio_layers_vs_fp32']:.1f}x", f"{f['output_rel_err']:.4f}",
                f"{f['output_sqnr_db']:.1f}", f"{d['output_rel_err']:.4f}", f"{d['output_sqnr_db']:.1f}", ev]

    lines += report.md_table(
        ["library", "model source", "basis", "edges/layer", "ratio", "ratio (layers)", "err (function metric)",
         "SQNR dB", "err (data metric)", "SQNR dB", "evaluator"], [cells(r) for r in rows])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(HERE) / "results",
                    help="folder for layouts.json and layouts.md (default benches/results)")
    ap.add_argument("--only", default=None,
                    help="comma-separated libraries to run (default all; a smoke run names one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    only = None if args.only is None else set(args.only.split(","))
    for name, (make, inputs, source) in cases().items():
        if only is not None and name not in only:
            continue
        row = run_case(name, make, inputs, source)
        print(f"{name}: ratio {row['function']['ratio_vs_fp32']:.1f}x, err {row['function']['output_rel_err']:.4f} "
              f"(data metric {row['data']['output_rel_err']:.4f})", flush=True)
        rows.append(row)
    meta = report.environment("python", "torch", "sharekan", command="PYTHONPATH=benches python -m sharekan_bench layouts")
    meta = {"K": K, "train_steps": STEPS, **meta}
    md = markdown(rows)
    report.write_record(args.out / "layouts", {"meta": meta, "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
