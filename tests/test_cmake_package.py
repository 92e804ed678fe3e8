"""The LUTHAM CMake package: lutham/CMakeLists.txt configures, builds and installs into a
prefix; lutham/examples/app finds it with find_package(sharekan_lutham) and builds the
runner as an application (with --as-needed, so the registration-only library must be kept
by the package's link options), a shared library that links the kernel too, and a program
that checks the operator is registered once. The app runs a LUTHAM .pte and agrees with
the NumPy oracle and the installed runner. Needs cmake >= 3.28 (`pip install cmake`, in
the `test` extra).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch.runtime")

import oracle  # noqa: E402
from conftest import grid_inputs, random_layer  # noqa: E402
from test_lutham_kernel import RawLutham, _parse_runner_output, _write_runner_input  # noqa: E402

from sharekan import lutham  # noqa: E402
from sharekan.errors import LuthamBuildError  # noqa: E402
from sharekan.export import export_pte  # noqa: E402

CMAKE_MIN = (3, 28)


def _cmake() -> str | None:
    """A cmake >= 3.28: on PATH, else beside this Python (the venv's pip-installed one)."""
    for cand in (shutil.which("cmake"), str(Path(sys.executable).parent / "cmake")):
        if not cand or not os.access(cand, os.X_OK):
            continue
        res = subprocess.run([cand, "--version"], capture_output=True, text=True)
        m = re.search(r"version (\d+)\.(\d+)", res.stdout)
        if m and (int(m.group(1)), int(m.group(2))) >= CMAKE_MIN:
            return cand
    return None


CMAKE = _cmake()
pytestmark = [
    pytest.mark.skipif(CMAKE is None,
                       reason="cmake >= 3.28 not found: pip install 'cmake>=3.28' (test extra)"),
    # CMake's default generator (Unix Makefiles)
    pytest.mark.skipif(shutil.which("make") is None, reason="make not found: apt-get install make"),
]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Configure + build + install lutham/ into a prefix, then build the example app
    against that prefix (consumer links with --as-needed, Ubuntu's default)."""
    try:
        src = lutham.kernel_source()
        et_cmake = lutham.executorch_info()["lib_dir"] / "cmake"
    except LuthamBuildError as exc:
        pytest.skip(f"LUTHAM sources or executorch unavailable: {exc}")
    if not (src / "CMakeLists.txt").is_file():
        pytest.skip(f"{src} has no CMakeLists.txt (not a source checkout)")
    root = tmp_path_factory.mktemp("cmake_package")
    build, prefix, app = root / "build", root / "prefix", root / "app"
    _run([CMAKE, "-S", str(src), "-B", str(build), f"-DCMAKE_PREFIX_PATH={et_cmake}",
          f"-DCMAKE_INSTALL_PREFIX={prefix}"])
    _run([CMAKE, "--build", str(build), "-j2"])
    _run([CMAKE, "--install", str(build)])
    _run([CMAKE, "-S", str(src / "examples" / "app"), "-B", str(app),
          f"-DCMAKE_PREFIX_PATH={prefix};{et_cmake}",
          "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed",
          "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--as-needed"])
    _run([CMAKE, "--build", str(app), "-j2"])
    return {"prefix": prefix, "app": app}


def test_install_tree(installed):
    prefix = installed["prefix"]
    for rel in ("lib/libsharekan_lutham.so", "bin/lutham_runner",
                "include/sharekan_lutham/kernel/lutham.h",
                "lib/cmake/sharekan_lutham/sharekan_lutham-config.cmake",
                "lib/cmake/sharekan_lutham/sharekan_lutham-config-version.cmake",
                "lib/cmake/sharekan_lutham/sharekan_lutham-targets.cmake"):
        assert (prefix / rel).is_file(), rel
    config = (prefix / "lib/cmake/sharekan_lutham/sharekan_lutham-config.cmake").read_text()
    assert "--no-as-needed" in config  # the registration-only library stays linked


def test_example_app_runs_lutham_pte(installed, tmp_path):
    """The runner built through find_package (linked with --as-needed) and the installed
    runner run a LUTHAM program: same values, and the oracle's within float32 error."""
    rng = np.random.default_rng(7)
    n_in = 17
    layer = random_layer(rng, n_in, 9, 6, 3, 40, code_dtype=np.uint8, weight_kind="int8")
    kw = dict(layer)
    k = kw.pop("k")
    pte = export_pte(RawLutham(kw, k).eval(), (torch.zeros(2, n_in),), tmp_path / "l.pte")
    for batch in (3, 20):  # projection and decoded strategies
        x = grid_inputs(rng, layer["grid"], batch).astype(np.float32)
        _write_runner_input(tmp_path / "in.txt", x)
        outs = []
        for exe in (installed["app"] / "lutham_app", installed["prefix"] / "bin/lutham_runner"):
            res = _run([str(exe), str(pte), str(tmp_path / "in.txt")])
            outs.append(_parse_runner_output(res.stdout)[0])
        np.testing.assert_array_equal(outs[0], outs[1])
        want = oracle.lutham_dense(x, **layer)
        np.testing.assert_allclose(outs[0], want, atol=2e-5 * (np.abs(want).max() + 1e-6),
                                   rtol=1e-4)


def test_registered_once_when_linked_twice_and_dlopened(installed, tmp_path):
    """App + a shared library both link sharekan::lutham, then the same file is dlopen()ed
    by its path and through a symlink: one object, one registration, no abort."""
    lib = installed["prefix"] / "lib" / "libsharekan_lutham.so"
    link = tmp_path / "libalias.so"
    link.symlink_to(lib)
    res = _run([str(installed["app"] / "lutham_registered_once"), str(lib), str(link)])
    assert "registered 1 time(s)" in res.stdout


def test_second_copy_of_the_library_aborts(installed, tmp_path):
    """What the package guards against: ExecuTorch 1.5 aborts the process when a second
    copy of the library (another file) registers sharekan::lutham.out again."""
    copy = tmp_path / "libsharekan_lutham_copy.so"
    shutil.copy(installed["prefix"] / "lib" / "libsharekan_lutham.so", copy)
    res = subprocess.run([str(installed["app"] / "lutham_registered_once"), str(copy)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGABRT, (res.returncode, res.stderr)
    assert "Re-registering sharekan::lutham.out" in res.stderr
