"""The LUTHAM kernel cross-built for aarch64 Linux (lutham/cross/build_aarch64.sh: Debian's
aarch64-linux-gnu-g++ against the executorch aarch64 wheel's runtime) and run under
qemu-user agrees with the x86-64 kernel: the same .pte files, exported here, and the same
inputs through `lutham_runner` on both. Cases cover every kernel path: projection tables
(batch 1) and decoded tiles (from the kernel's cost-model row count, below 30 rows for
every case here; 300 rows = two tiles), u8 / i16 / i32 codes, int8 / f32 gains,
per-edge biases, B-spline orders 0 / 1 / 3 / 5 (fixed and generic), RBF and Chebyshev bases
with SiLU and GELU base branches, and the 1280-256-10 demo head (G = 10, k = 3, K = 256,
int8). Only correctness: emulated timings mean nothing.

Needs `bash .ci/setup_aarch64` (apt-get install g++-aarch64-linux-gnu qemu-user, and the
executorch aarch64 wheel unpacked into ~/.cache/sharekan/aarch64); skipped without it.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch.runtime")

from conftest import grid_inputs, random_layer  # noqa: E402
from test_lutham_kernel import (  # noqa: E402
    RawLutham,
    _parse_runner_output,
    _write_runner_input,
    dense_layer,
)

import sharekan  # noqa: E402
from sharekan import lutham  # noqa: E402
from sharekan.errors import LuthamBuildError  # noqa: E402
from sharekan.export import export_pte  # noqa: E402

CROSS_CXX = os.environ.get("CROSS_CXX", "aarch64-linux-gnu-g++")
SYSROOT = os.environ.get("QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu")
SETUP = "bash .ci/setup_aarch64 (apt-get install g++-aarch64-linux-gnu qemu-user make + the " \
        "executorch manylinux_2_28_aarch64 wheel)"
# the target on the demo head; the random layers (outputs up to ~100) get the
# same bound relative to their largest output
MAX_ABS_DIFF = 1e-5


def _executorch_root() -> Path:
    if os.environ.get("EXECUTORCH_ROOT"):
        return Path(os.environ["EXECUTORCH_ROOT"])
    from importlib import metadata  # noqa: PLC0415

    base = os.environ.get("SHAREKAN_AARCH64_EXECUTORCH") or str(
        Path.home() / ".cache/sharekan/aarch64" / f"executorch-{metadata.version('executorch')}")
    return Path(base) / "executorch"


def _missing() -> str | None:
    for tool in (CROSS_CXX, "qemu-aarch64", "make"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not (_executorch_root() / "lib" / "libexecutorch.so").is_file():
        return f"no executorch aarch64 runtime at {_executorch_root()}"
    if not Path(SYSROOT, "lib").is_dir():
        return f"no aarch64 sysroot at {SYSROOT}"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None,
                                reason=f"aarch64 check not set up ({_missing()}): run {SETUP}")


@pytest.fixture(scope="module")
def aarch64_build(tmp_path_factory) -> Path:
    # the kernel source the x86 runner is built from ($SHAREKAN_LUTHAM_SOURCE or lutham/)
    script = lutham.kernel_source() / "cross" / "build_aarch64.sh"
    if not script.is_file():
        pytest.skip(f"{script} not found (not a source checkout)")
    out = tmp_path_factory.mktemp("build-aarch64")
    res = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True,
                         timeout=900, env={**os.environ, "EXECUTORCH_ROOT": str(_executorch_root())})
    assert res.returncode == 0, res.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def x86_runner() -> Path:
    try:
        return lutham.build_runner()
    except LuthamBuildError as exc:
        pytest.skip(f"x86 LUTHAM runner unavailable: {exc}")


def _run(cmd: list[str], pte: Path, x: np.ndarray, workdir: Path) -> np.ndarray:
    inp = workdir / f"in_{x.shape[0]}.txt"
    _write_runner_input(inp, x)
    res = subprocess.run([*cmd, str(pte), str(inp)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, f"{cmd[0]}: exit {res.returncode}\n{res.stderr[-3000:]}"
    (y,) = _parse_runner_output(res.stdout)
    return y


def _compare(aarch64_build: Path, x86_runner: Path, pte: Path, xs, workdir: Path,
             scale_rel: bool) -> list[tuple[int, float, float]]:
    """Runs every input on both runners; returns (batch, max abs diff, max |y|) per input."""
    et_lib = _executorch_root() / "lib"
    qemu = ["qemu-aarch64", "-L", SYSROOT, "-E", f"LD_LIBRARY_PATH={et_lib}:{aarch64_build}",
            str(aarch64_build / "lutham_runner")]
    rows = []
    for x in xs:
        want = _run([str(x86_runner)], pte, x, workdir)
        got = _run(qemu, pte, x, workdir)
        assert got.shape == want.shape
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        finite = np.isfinite(want)
        np.testing.assert_array_equal(got[~finite], want[~finite])
        diff = float(np.abs(got[finite] - want[finite]).max(initial=0.0))
        peak = float(np.abs(want[finite]).max(initial=0.0))
        bound = MAX_ABS_DIFF * (max(1.0, peak) if scale_rel else 1.0)
        assert diff <= bound, f"batch {x.shape[0]}: max abs diff {diff:.3g} > {bound:.3g}"
        rows.append((x.shape[0], diff, peak))
    return rows


def _export_raw(layer: dict, path: Path, n_in: int) -> Path:
    kw = dict(layer)
    k = kw.pop("k")
    return export_pte(RawLutham(kw, k).eval(), (torch.zeros(2, n_in),), path)


# 1: projection tables; 30: decoded tiles (kernel/lutham.h decode_min_batch is 3 to 26 rows
# for these B-spline layers); 300: two 256-row tiles; dense bases always use tables
BATCHES = (1, 7, 30, 300)

LAYER_CASES = {
    # name: (code dtype, K, weight kind, edge bias, out bias, base, k, G, uniform grid)
    "bspline-u8-K256-int8-k3-edgebias": (np.uint8, 256, "int8", True, True, True, 3, 10, True),
    "bspline-u8-K37-f32-k3": (np.uint8, 37, "f32", False, True, True, 3, 5, False),
    "bspline-i16-K300-int8-k2-edgebias": (np.int16, 300, "int8", True, False, True, 2, 4, False),
    "bspline-i32-K5-f32-k1-edgebias": (np.int32, 5, "f32", True, True, False, 1, 7, False),
    "bspline-i16-K64-int8-k5-generic": (np.int16, 64, "int8", False, False, False, 5, 3, True),
    "bspline-u8-K40-int8-k0": (np.uint8, 40, "int8", True, True, True, 0, 6, False),
}

DENSE_CASES = {
    # name: (basis, shared centres, code dtype, K, weight kind, edge bias, base, base_act, M)
    "rbf-u8-K37-f32-edgebias": (1, False, np.uint8, 37, "f32", True, True, 0, 8),
    "rbf-i16-K300-int8": (1, True, np.int16, 300, "int8", False, True, 0, 5),
    "cheb-u8-K16-f32-gelu": (2, True, np.uint8, 16, "f32", False, True, 1, 6),
    "cheb-i32-K5-int8-edgebias": (2, True, np.int32, 5, "int8", True, True, 0, 4),
}


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_aarch64_bspline_layer_matches_x86(aarch64_build, x86_runner, tmp_path, name):
    code_dtype, n_codes, kind, eb, ob, base, k, g, uniform = LAYER_CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    n_in, n_out = 19, 45  # n_out: a 32-wide vector block, an 8-wide one and a scalar tail
    layer = random_layer(rng, n_in, n_out, g, k, n_codes, code_dtype=code_dtype,
                         weight_kind=kind, with_edge_bias=eb, with_out_bias=ob,
                         with_base=base, uniform=uniform)
    pte = _export_raw(layer, tmp_path / "layer.pte", n_in)
    xs = [grid_inputs(rng, layer["grid"], b, outside=0.3).astype(np.float32) for b in BATCHES]
    xs[-1][3, :2] = [np.nan, np.inf]
    rows = _compare(aarch64_build, x86_runner, pte, xs, tmp_path, scale_rel=True)
    print(f"\n{name}: " + ", ".join(f"B={b} max|diff|={d:.3g} (max|y|={p:.3g})"
                                    for b, d, p in rows))


@pytest.mark.parametrize("name", list(DENSE_CASES))
def test_aarch64_dense_basis_layer_matches_x86(aarch64_build, x86_runner, tmp_path, name):
    basis, shared, code_dtype, n_codes, kind, eb, base, act, m = DENSE_CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    n_in, n_out = 13, 45
    layer = dense_layer(rng, n_in, n_out, m, n_codes, basis, shared=shared,
                        code_dtype=code_dtype, weight_kind=kind, with_edge_bias=eb,
                        with_base=base, base_act=act)
    pte = _export_raw(layer, tmp_path / "dense.pte", n_in)
    xs = [rng.normal(scale=1.5, size=(b, n_in)).astype(np.float32) for b in BATCHES]
    xs[-1][1, :3] = [np.inf, -np.inf, 40.0]
    rows = _compare(aarch64_build, x86_runner, pte, xs, tmp_path, scale_rel=True)
    print(f"\n{name}: " + ", ".join(f"B={b} max|diff|={d:.3g} (max|y|={p:.3g})"
                                    for b, d, p in rows))


def test_aarch64_kernel_check_fails_cleanly(aarch64_build, tmp_path):
    """A failed kernel check on aarch64: the runner exits 3 with InvalidArgument (0x12) and the
    kernel's message, as on x86 (a wrong input width; a non-finite codebook value)."""
    rng = np.random.default_rng(5)
    layer = random_layer(rng, 9, 5, 4, 3, 16, code_dtype=np.uint8, weight_kind="int8")
    layer["codebook"][2, 1] = np.inf
    pte = _export_raw(layer, tmp_path / "bad.pte", 9)
    et_lib = _executorch_root() / "lib"
    qemu = ["qemu-aarch64", "-L", SYSROOT, "-E", f"LD_LIBRARY_PATH={et_lib}:{aarch64_build}",
            str(aarch64_build / "lutham_runner")]
    for x, message in ((np.zeros((2, 8), np.float32), "lutham:"),
                       (np.zeros((2, 9), np.float32), "codebook")):
        _write_runner_input(tmp_path / "in.txt", x)
        res = subprocess.run([*qemu, str(pte), str(tmp_path / "in.txt")], capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 3 and "0x12" in res.stderr and message in res.stderr, \
            (res.returncode, res.stderr[-2000:])


@pytest.fixture(scope="module")
def demo_head(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """The demo-size head 1280 -> 256 -> 10 (G = 10, k = 3), compressed like
    benches/sharekan_bench/lutham.py (K = 256, int8; bias folded in layer 0, per-edge in
    layer 1), as a .pte, and inputs at batch 1, 11, 12 (projection tables in layer 0, whose
    cost model decodes from 18 rows) and 64 (decoded tiles)."""
    from sharekan.torch import KAN, compress_  # noqa: PLC0415

    torch.manual_seed(0)
    dense = KAN([1280, 256, 10], grid_size=10, spline_order=3).eval()
    config = sharekan.Config(codebook_size=256, int8=True, base="int8", bias="edge",
                             overrides={"layers.0": {"bias": "fold"}})
    model = compress_(copy.deepcopy(dense), config).eval()
    pte = export_pte(model, (torch.zeros(2, 1280),),
                     tmp_path_factory.mktemp("demo") / "demo_head.pte", max_batch=64)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1.0, 1.0, size=(b, 1280)).astype(np.float32) for b in (1, 11, 12, 64)]
    xs[-1][5] *= 1.5  # one row partly outside the grid [-1, 1]
    return pte, xs


def test_aarch64_demo_head_matches_x86(aarch64_build, x86_runner, demo_head, tmp_path):
    """The issue's target: max abs difference <= 1e-5 on the demo head."""
    pte, xs = demo_head
    rows = _compare(aarch64_build, x86_runner, pte, xs, tmp_path, scale_rel=False)
    print("\ndemo head: " + ", ".join(f"B={b} max|diff|={d:.3g} (max|y|={p:.3g})"
                                      for b, d, p in rows))


def test_aarch64_cmake_package_app(x86_runner, demo_head, tmp_path):
    """The CMake route: lutham/ cross-built with lutham/cmake/aarch64-linux-gnu.cmake against
    the aarch64 wheel's executorch package and installed, then lutham/examples/app built
    through find_package(sharekan_lutham) (--as-needed) for aarch64: under qemu its runner
    matches the x86 runner on the demo head and the operator is registered once."""
    from test_cmake_package import _cmake  # noqa: PLC0415

    cmake = _cmake()
    if cmake is None:
        pytest.skip("cmake >= 3.28 not found: pip install 'cmake>=3.28' (test extra)")
    src = lutham.kernel_source()
    toolchain = src / "cmake" / "aarch64-linux-gnu.cmake"
    et_cmake = _executorch_root() / "lib" / "cmake"
    build, prefix, app = tmp_path / "build", tmp_path / "prefix", tmp_path / "app"
    steps = [
        ["-S", str(src), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={toolchain}",
         f"-DCMAKE_PREFIX_PATH={et_cmake}", f"-DCMAKE_INSTALL_PREFIX={prefix}",
         "-DLUTHAM_BUILD_RUNNER=OFF"],
        ["--build", str(build), "-j2"],
        ["--install", str(build)],
        ["-S", str(src / "examples" / "app"), "-B", str(app),
         f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", f"-DCMAKE_PREFIX_PATH={prefix};{et_cmake}",
         "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed"],
        ["--build", str(app), "-j2"],
    ]
    for step in steps:
        res = subprocess.run([cmake, *step], capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"cmake {' '.join(step)}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    qemu = ["qemu-aarch64", "-L", SYSROOT]
    res = subprocess.run([*qemu, str(app / "lutham_registered_once"),
                          str(prefix / "lib" / "libsharekan_lutham.so")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "registered 1 time(s)" in res.stdout, res.stderr[-2000:]
    pte, xs = demo_head
    for x in (xs[0], xs[-1]):
        want = _run([str(x86_runner)], pte, x, tmp_path)
        got = _run([*qemu, str(app / "lutham_app")], pte, x, tmp_path)
        assert float(np.abs(got - want).max()) <= MAX_ABS_DIFF


def test_aarch64_build_is_aarch64(aarch64_build):
    """The cross-built files are aarch64 ELF objects (a host compiler picked up by mistake
    would pass every comparison above); records their sizes."""
    for name in ("libsharekan_lutham.so", "lutham_runner"):
        path = aarch64_build / name
        head = path.read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
        assert int.from_bytes(head[18:20], "little") == 183  # e_machine EM_AARCH64
        print(f"\n{name}: {path.stat().st_size} bytes")
