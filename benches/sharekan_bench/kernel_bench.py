"""Build and drive `lutham/kernel_bench` (the dense KAN baseline kernel and LUTHAM .pte
programs timed side by side in one C++ process; file formats in lutham/kernel_bench.cpp).

Built like `sharekan.lutham.build_runner` builds the runner: the flags of
lutham/build_flags.txt (the kernel's optimisation flags, since the baseline kernel is
compiled into this program), the executorch wheel's headers, and the same libraries as the
runner (libsharekan_lutham from `sharekan.lutham.build_library()`,
executorch_kernels_optimized, executorch, executorch_threadpool; plus the wheel's XNNPACK
backend when present, so XNNPACK-lowered programs run too). The binary goes to
lutham/build/kernel_bench-<key>/ (key: the sources, flags, library and compiler).

>>> from sharekan_bench import kernel_bench as kb
>>> exe = kb.build()                                  # doctest: +SKIP
>>> kb.write_dense_model("head.bin", kb.dense_layers(kan.state_dict()))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sharekan import lutham

REPO = Path(__file__).resolve().parents[2]
SOURCE = "kernel_bench.cpp"
MATRIX_MAGIC = b"SKXF32\0\0"
MODEL_MAGIC = b"SKDKAN01"


def _compiler_version(cxx: str) -> str:
    res = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    return res.stdout.splitlines()[0] if res.stdout else cxx


def build(force: bool = False) -> Path:
    """Compile kernel_bench (cached by a key over its inputs); returns the executable."""
    src_dir = lutham.kernel_source()
    info = lutham.executorch_info()
    fs = lutham.build_flags(src_dir)
    kernel_lib = lutham.build_library()
    cxx = os.environ.get("CXX", "g++")
    includes = [f"-I{p}" for p in info["include_dirs"]]
    flags = [*fs["LUTHAM_STD"], *fs["LUTHAM_DEFINES"], *fs["LUTHAM_WARNINGS"], *includes,
             *fs["LUTHAM_KERNEL_OPT"]]
    lib_dir = str(info["lib_dir"])
    kdir = str(kernel_lib.parent)
    libs = fs.get("LUTHAM_KERNEL_LIBS", ["-lexecutorch_threadpool", "-lexecutorch"])
    if "-lexecutorch_threadpool" not in libs:
        libs = ["-lexecutorch_threadpool", *libs]
    xnn = ["-lexecutorch_backend_xnnpack"] if (Path(lib_dir) / "libexecutorch_backend_xnnpack.so").is_file() else []
    link = [f"-L{lib_dir}", f"-L{kdir}", "-Wl,--no-as-needed", "-lsharekan_lutham",
            "-lexecutorch_kernels_optimized", *xnn, *libs, "-Wl,--as-needed",
            f"-Wl,-rpath,{lib_dir}", f"-Wl,-rpath,{kdir}"]
    h = hashlib.sha256()
    for path in [src_dir / SOURCE, *sorted(src_dir.glob("baseline/*.h")),
                 *sorted(src_dir.glob("kernel/*.h")), src_dir / "build_flags.txt"]:
        h.update(str(path.relative_to(src_dir)).encode() + b"\0" + path.read_bytes())
    for part in [*flags, *link, str(kernel_lib), _compiler_version(cxx)]:
        h.update(part.encode() + b"\0")
    out_dir = src_dir / "build" / f"kernel_bench-{h.hexdigest()[:16]}"
    exe = out_dir / "kernel_bench"
    if exe.is_file() and not force:
        return exe
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".kernel_bench.")
    os.close(fd)
    try:
        cmd = [cxx, *flags, str(src_dir / SOURCE), *link, "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            raise RuntimeError(f"building kernel_bench failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return exe


# ---- files ------------------------------------------------------------------------------

def write_matrix(path: str | os.PathLike[str], x: np.ndarray) -> Path:
    """X.bin: float32 (rows, cols)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(MATRIX_MAGIC + np.array(x.shape, dtype="<i8").tobytes() + x.astype("<f4").tobytes())
    return path


def quantize_columns(spline: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Int8 per output column: spline (n_out, n_in, M), base (n_out, n_in) float ->
    (spline_q int8, base_q int8, scale f32 (n_out,)), one symmetric scale per output over all
    its weights (max |w| / 127; 0 for an all-zero column)."""
    n_out = spline.shape[0]
    amax = np.maximum(np.abs(spline).reshape(n_out, -1).max(axis=1), np.abs(base).max(axis=1))
    scale = (amax / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float64)
    sq = np.clip(np.rint(spline / safe[:, None, None]), -127, 127).astype(np.int8)
    bq = np.clip(np.rint(base / safe[:, None]), -127, 127).astype(np.int8)
    return sq, bq, scale


def dense_layers(state_dict: Mapping[str, Any], *, int8: bool = False,
                 spline_order: int | None = None) -> list[dict[str, Any]]:
    """The layers of an efficient-kan-layout state_dict (`layers.{l}.base_weight`,
    `spline_weight`, optional `spline_scaler`, `grid`) as kernel_bench layers: scaler folded
    into the spline weights (float32), or int8 with per-column scales (`quantize_columns`).
    Each dict: n_in, n_out, M, k, grid (rows, M + k + 1), and spline/base (float) or
    spline_q/base_q/scale (int8), bias None."""
    sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
          for k, v in state_dict.items()}
    out = []
    li = 0
    while f"layers.{li}.spline_weight" in sd:
        p = f"layers.{li}."
        spline = sd[p + "spline_weight"].astype(np.float64)  # (n_out, n_in, M)
        if p + "spline_scaler" in sd:
            spline = spline * sd[p + "spline_scaler"].astype(np.float64)[:, :, None]
        base = sd[p + "base_weight"].astype(np.float64)  # (n_out, n_in)
        grid = sd[p + "grid"].astype(np.float32)  # (n_in, G + 2k + 1)
        n_out, n_in, M = spline.shape
        k = spline_order if spline_order is not None else grid.shape[1] - M - 1
        if np.all(grid == grid[:1]):
            grid = grid[:1]
        layer: dict[str, Any] = {"n_in": n_in, "n_out": n_out, "M": M, "k": k, "grid": grid,
                                 "bias": None}
        if int8:
            layer["spline_q"], layer["base_q"], layer["scale"] = quantize_columns(spline, base)
        else:
            layer["spline"] = spline.astype(np.float32)
            layer["base"] = base.astype(np.float32)
        out.append(layer)
        li += 1
    if not out:
        raise ValueError("no efficient-kan layers (layers.{l}.spline_weight) in the state_dict")
    return out


def dequantized_state_dict(layers: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """An efficient-kan state_dict (float32, no scaler) holding exactly the weights the
    kernel evaluates for `layers` (int8 ones dequantised)."""
    sd: dict[str, np.ndarray] = {}
    for li, layer in enumerate(layers):
        if "spline_q" in layer:
            s = layer["scale"].astype(np.float32)
            spline = layer["spline_q"].astype(np.float32) * s[:, None, None]
            base = layer["base_q"].astype(np.float32) * s[:, None]
        else:
            spline, base = layer["spline"], layer["base"]
        grid = np.broadcast_to(layer["grid"], (layer["n_in"], layer["grid"].shape[1]))
        sd[f"layers.{li}.spline_weight"] = np.ascontiguousarray(spline, dtype=np.float32)
        sd[f"layers.{li}.spline_scaler"] = np.ones((layer["n_out"], layer["n_in"]), np.float32)
        sd[f"layers.{li}.base_weight"] = np.ascontiguousarray(base, dtype=np.float32)
        sd[f"layers.{li}.grid"] = np.ascontiguousarray(grid, dtype=np.float32)
    return sd


def write_dense_model(path: str | os.PathLike[str], layers: Sequence[Mapping[str, Any]]) -> Path:
    """MODEL.bin from `dense_layers` output."""
    path = Path(path)
    parts = [MODEL_MAGIC, np.array([len(layers)], "<i8").tobytes()]
    for layer in layers:
        int8 = "spline_q" in layer
        bias = layer.get("bias")
        grid = np.ascontiguousarray(layer["grid"], "<f4")
        head = [layer["n_in"], layer["n_out"], layer["M"], layer["k"], grid.shape[0], int(int8),
                int(bias is not None)]
        parts += [np.array(head, "<i8").tobytes(), grid.tobytes()]
        if int8:
            parts += [np.ascontiguousarray(layer["spline_q"], np.int8).tobytes(),
                      np.ascontiguousarray(layer["base_q"], np.int8).tobytes(),
                      np.ascontiguousarray(layer["scale"], "<f4").tobytes()]
        else:
            parts += [np.ascontiguousarray(layer["spline"], "<f4").tobytes(),
                      np.ascontiguousarray(layer["base"], "<f4").tobytes()]
        if bias is not None:
            parts.append(np.ascontiguousarray(bias, "<f4").tobytes())
    path.write_bytes(b"".join(parts))
    return path


# ---- running ------------------------------------------------------------------------------

def run_json(exe: Path, args: Sequence[str], timeout: float = 3600) -> list[dict[str, Any]]:
    """Runs kernel_bench and returns its JSON lines (raises with stderr on failure)."""
    res = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"kernel_bench {' '.join(map(str, args))} failed "
                           f"(exit {res.returncode}):\n{res.stderr[-3000:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def check(exe: Path, model: Path, x: Path, threads: int = 0) -> np.ndarray:
    """The baseline's outputs for X.bin (`--check`), float32 (rows, n_out)."""
    res = subprocess.run([str(exe), "--check", str(model), str(x), "--threads", str(threads)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"kernel_bench --check failed (exit {res.returncode}): {res.stderr}")
    lines = res.stdout.splitlines()
    rows, cols = map(int, lines[0].split()[1:3])
    return np.array([[float(v) for v in ln.split()] for ln in lines[1:1 + rows]],
                    dtype=np.float32).reshape(rows, cols)
