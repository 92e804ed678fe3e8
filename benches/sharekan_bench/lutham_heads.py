"""The KAN heads of the LUTHAM benchmark (benches/sharekan_bench/lutham.py) and their files.

Each head is a dense efficient-kan model (`sharekan.torch.KAN`), its compressed twin
(`LuthamLinear` layers, op `sharekan::lutham`), the inputs it is timed on, and the files the
C++ benchmark reads: the dense model for the baseline kernel (FP32, int8), the LUTHAM .pte
(dynamic batch up to 1024) and, for the extra columns, the dense .pte (generic ExecuTorch
kernels, and lowered to XNNPACK; dynamic batch up to 64). Files are cached under
benches/.cache/lutham/<head key>/ (the .pte files hold no kernel code: a changed LUTHAM kernel
needs no re-export).

Heads:
- `demo`: the demo's head 1280-256-10 (G = 10, k = 3) compressed exactly as `sharekan demo`
  does (`sharekan.demo.run.DEMO_CONFIG`: K = 256, Int8, bias auto, layer 0's base branch
  folded; calibration on the first 2,048 training features). The trained head and the
  features come from the demo's cache when present (~/.cache/sharekan/bench); else
  seeded efficient-kan init weights and tanh(N(0, 1)) inputs (the record says which).
- `demo_edge`: the same dense head compressed without calibration (`compress_`: per-edge
  biases in both layers, int8 base weights).
- `paper`: 2048-512-20 (G = 10, k = 3, K = 256, Int8, per-edge biases): the paper's head
  size, with generated smooth edge functions (`smooth_kan`).
- `multihead`: the first layers of the 50 task heads of the multi-head benchmark
  (1280 -> 8 each) stacked into one 1280 -> 400 layer, one shared codebook (K = 256, Int8,
  per-edge biases), smooth generated weights; the heads' 8 -> 2 second layers (800 edges,
  0.16 % of the edges) are left out.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sharekan_bench import kernel_bench as kb

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "lutham"
MAX_BATCH = 1024
EXTRA_MAX_BATCH = 64


@dataclass(frozen=True)
class HeadSpec:
    name: str
    widths: tuple[int, ...]
    grid_size: int = 10
    spline_order: int = 3
    codebook_size: int = 256
    weights: str = "smooth"  # "demo" (the demo's trained head if cached) | "smooth" | "init"
    compression: str = "edge"  # "demo" (DEMO_CONFIG + calibration) | "edge" (compress_, no calibration)
    seed: int = 0
    description: str = ""
    extras: bool = True  # export the dense .pte (generic, XNNPACK) for the extra columns

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


HEADS = {
    "demo": HeadSpec("demo", (1280, 256, 10), weights="demo", compression="demo",
                     description="demo head 1280-256-10, compressed as `sharekan demo` "
                                 "(K=256, Int8, bias auto + layer 0 base folded, calibrated)"),
    "demo_edge": HeadSpec("demo_edge", (1280, 256, 10), weights="demo", compression="edge",
                          description="demo head 1280-256-10, per-edge biases in both layers "
                                      "(`compress_` without calibration; K=256, Int8)"),
    "paper": HeadSpec("paper", (2048, 512, 20), weights="smooth", compression="edge", seed=1,
                      description="paper-scale head 2048-512-20 (K=256, Int8, per-edge biases), "
                                  "smooth generated edge functions"),
    "multihead": HeadSpec("multihead", (1280, 400), weights="smooth", compression="edge", seed=2,
                          extras=False,
                          description="50 task heads' first layers (1280 -> 8 each) stacked as "
                                      "1280 -> 400, one codebook (K=256, Int8, per-edge biases), "
                                      "smooth generated weights; second layers left out"),
}


def demo_cache() -> Path:
    env = os.environ.get("SHAREKAN_CACHE_DIR")
    return Path(env) / "bench" if env else Path.home() / ".cache" / "sharekan" / "bench"


def smooth_kan(widths, grid_size: int, k: int, seed: int):
    """A KAN whose edge functions are smooth: each edge is a * sin(w x + p) + c * tanh(s (x - m))
    (w in [0.5, 4], s in [1, 6], m in [-0.8, 0.8], random phase) with a log-normal amplitude
    spread, sampled at the B-spline basis' Greville abscissae (the knot averages, which
    reproduce linear functions exactly and smooth ones to O(h^2)); base weights
    kaiming-uniform as efficient-kan initialises them; scaler 1. Amplitudes scale as
    1/sqrt(n_in), so every layer's outputs stay O(1) and inside the next layer's grid."""
    import torch

    from sharekan.torch import KAN

    torch.manual_seed(seed)
    model = KAN(list(widths), grid_size=grid_size, spline_order=k).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for layer in model.layers:
            n_out, n_in, M = layer.spline_weight.shape
            g = layer.grid[0].double().numpy()
            greville = np.array([g[m + 1:m + k + 1].mean() for m in range(M)])  # (M,)
            shape = (n_out, n_in, 1)
            amp = rng.lognormal(0.0, 0.75, size=shape) / np.sqrt(n_in)
            w = rng.uniform(0.5, 4.0, size=shape)
            p = rng.uniform(0.0, 2 * np.pi, size=shape)
            s = rng.uniform(1.0, 6.0, size=shape)
            mid = rng.uniform(-0.8, 0.8, size=shape)
            mix = rng.uniform(0.0, 1.0, size=shape)
            coef = amp * (mix * np.sin(w * greville + p) + (1 - mix) * np.tanh(s * (greville - mid)))
            layer.spline_weight.copy_(torch.from_numpy(coef.astype(np.float32)))
            if hasattr(layer, "spline_scaler"):
                layer.spline_scaler.fill_(1.0)
    return model


def _demo_dense(spec: HeadSpec, log) -> tuple[Any, dict[str, np.ndarray] | None, str]:
    """(dense model, features or None, what the weights are)."""
    import torch

    from sharekan.demo.heads import HeadRecipe, load_features
    from sharekan.torch import KAN

    cache = demo_cache()
    recipe = HeadRecipe(kind="kan")
    path = cache / "heads" / f"fmnist_mobilenetv2_64px_{recipe.key()}.npz"
    feats = [cache / "fmnist_mobilenetv2_64px_train.npy", cache / "fmnist_mobilenetv2_64px_test.npy"]
    model = KAN(list(spec.widths), grid_size=spec.grid_size, spline_order=spec.spline_order).eval()
    if path.exists() and all(f.exists() for f in feats):
        with np.load(path) as z:
            model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files if k != "__seconds"})
        data = load_features(cache, 64, log)
        return model, data, f"the demo's trained head ({path.name}), Fashion-MNIST features"
    torch.manual_seed(spec.seed)
    model = KAN(list(spec.widths), grid_size=spec.grid_size, spline_order=spec.spline_order).eval()
    return model, None, ("seeded efficient-kan init weights (torch.manual_seed(0)); the demo's "
                         "trained head was not cached (run `sharekan demo` once to use it)")


def _compress(spec: HeadSpec, dense, calib: np.ndarray | None):
    import sharekan
    from sharekan.demo.run import DEMO_CONFIG
    from sharekan.torch import KAN, LuthamLinear, compress_

    if spec.compression == "demo":
        if calib is None:
            raise ValueError("compression 'demo' needs calibration features")
        sd = {k: v.detach().numpy() for k, v in dense.state_dict().items()}
        cm = sharekan.compress(sd, calibration=calib, **DEMO_CONFIG)
        comp = KAN(list(spec.widths), grid_size=spec.grid_size, spline_order=spec.spline_order)
        comp.layers = __import__("torch").nn.ModuleList(
            LuthamLinear.from_compressed(layer) for layer in cm.layers.values())
        return comp.eval(), {**DEMO_CONFIG, "calibration_rows": int(calib.shape[0])}
    cfg = sharekan.Config(codebook_size=spec.codebook_size, int8=True, bias="edge", base="int8")
    return compress_(copy.deepcopy(dense), cfg).eval(), cfg.to_dict()


def _export_xnnpack(model, example, path: Path, max_batch: int) -> Path:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(prog.buffer)
    return path


@dataclass
class Head:
    spec: HeadSpec
    dense: Any                      # sharekan.torch.KAN
    compressed: Any                 # the same with LuthamLinear layers
    x: np.ndarray                   # (MAX_BATCH, n_in) float32 timing inputs
    weights: str
    inputs: str
    config: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    compress_seconds: float = 0.0


def build(spec: HeadSpec, log=print, extras: bool = True, cache: Path = CACHE) -> Head:
    """The head, its compressed twin, inputs and files (cached by spec)."""
    import torch

    from sharekan.export import export_pte

    # (no lutham.load_library(): the programs run in kernel_bench, which links the kernel
    # library built from the current sources; export and eager need only the torch op)
    out = cache / spec.key()
    out.mkdir(parents=True, exist_ok=True)
    data = None
    if spec.weights == "demo":
        dense, data, weights = _demo_dense(spec, log)
    else:
        dense = smooth_kan(spec.widths, spec.grid_size, spec.spline_order, spec.seed)
        weights = ("generated smooth edge functions (sin + tanh mixtures, log-normal amplitudes, "
                   f"sampled at the Greville abscissae; seed {spec.seed}); kaiming-uniform base weights")
    rng = np.random.default_rng(spec.seed)
    if data is not None:
        x = np.ascontiguousarray(data["x_test"][:MAX_BATCH], dtype=np.float32)
        inputs = "Fashion-MNIST test features (MobileNetV2, z-score + tanh)"
        calib = np.ascontiguousarray(data["x_train"][:2048], dtype=np.float32)
    else:
        x = np.tanh(rng.normal(size=(MAX_BATCH, spec.widths[0]))).astype(np.float32)
        inputs = "tanh(N(0, 1)) per feature (seeded)"
        calib = np.tanh(rng.normal(size=(2048, spec.widths[0]))).astype(np.float32)
    comp_file = out / "compressed.pt"
    meta_file = out / "meta.json"
    t0 = time.perf_counter()
    if comp_file.exists() and meta_file.exists():
        comp = torch.load(comp_file, weights_only=False).eval()
        meta = json.loads(meta_file.read_text())
        config, compress_seconds = meta["config"], meta["compress_seconds"]
    else:
        log(f"[{spec.name}] compressing ({spec.compression})")
        comp, config = _compress(spec, dense, calib if spec.compression == "demo" else None)
        compress_seconds = time.perf_counter() - t0
        torch.save(comp, comp_file)
        meta_file.write_text(json.dumps({"config": config, "compress_seconds": compress_seconds},
                                        default=str))
    head = Head(spec, dense, comp, x, weights, inputs, config, compress_seconds=compress_seconds)
    example = torch.zeros(2, spec.widths[0])
    f = head.files
    f["x"] = kb.write_matrix(out / "x.bin", x)
    for name, int8 in (("dense_f32", False), ("dense_i8", True)):
        path = out / f"{name}.bin"
        if not path.exists():
            kb.write_dense_model(path, kb.dense_layers(dense.state_dict(), int8=int8))
        f[name] = path
    f["lutham_pte"] = out / "lutham.pte"
    if not f["lutham_pte"].exists():
        log(f"[{spec.name}] exporting LUTHAM .pte")
        export_pte(comp, (example,), f["lutham_pte"], max_batch=MAX_BATCH)
    if extras and spec.extras:
        f["dense_pte"] = out / "dense.pte"
        if not f["dense_pte"].exists():
            log(f"[{spec.name}] exporting dense .pte")
            export_pte(dense, (example,), f["dense_pte"], max_batch=EXTRA_MAX_BATCH)
        f["dense_xnnpack_pte"] = out / "dense_xnnpack.pte"
        if not f["dense_xnnpack_pte"].exists():
            log(f"[{spec.name}] exporting dense .pte (XNNPACK)")
            _export_xnnpack(dense, example, f["dense_xnnpack_pte"], EXTRA_MAX_BATCH)
    return head


def static_programs(head: Head, batch: int, log=print) -> dict[str, Path]:
    """Dense and LUTHAM .pte with a static batch (the memory table: ExecuTorch plans every
    intermediate for the exported shape)."""
    import torch

    from sharekan.export import export_pte

    out = CACHE / head.spec.key()
    paths = {}
    example = torch.zeros(batch, head.spec.widths[0])
    for name, model in (("dense", head.dense), ("lutham", head.compressed)):
        path = out / f"{name}_static_b{batch}.pte"
        if not path.exists():
            log(f"[{head.spec.name}] exporting static {name} .pte, batch {batch}")
            export_pte(model, (example,), path, dynamic_batch=False)
        paths[name] = path
    return paths
