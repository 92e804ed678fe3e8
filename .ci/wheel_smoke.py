"""Run by .ci/wheel inside the clean venv (sharekan from the release wheel, no cargo and no C++
compiler on PATH): compress -> export_pte -> run the .pte through the wheel's prebuilt LUTHAM
kernel in the ExecuTorch runtime, against eager PyTorch; then the error raised when the prebuilt
kernel does not match the installed executorch and nothing can compile a new one.

Usage: python .ci/wheel_smoke.py WORK_DIR
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import torch

import sharekan
from sharekan import lutham
from sharekan.errors import LuthamBuildError
from sharekan.torch import KAN, compress_


def step(text: str) -> None:
    print(f"-- {text}", flush=True)


def main(work: Path) -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    package = Path(sharekan.__file__).resolve().parent
    step(f"sharekan {sharekan.__version__} from {package}")
    assert package == site / "sharekan", f"sharekan not imported from the clean venv: {package}"
    missing_tools = [t for t in ("cargo", "rustc", "c++", "g++", "gcc", "cc", "clang++", "clang")
                     if shutil.which(t)]
    assert not missing_tools, f"compilers on PATH: {missing_tools}"
    step("no cargo, rustc, c++, g++, gcc, cc, clang on PATH")
    src = lutham.kernel_source()
    assert src == package / "_lutham_src", src
    step(f"kernel sources: {src}")
    prebuilt, why_not = lutham.prebuilt_library()
    assert prebuilt is not None, why_not
    step(f"prebuilt kernel: {prebuilt}")
    ldd = subprocess.run(["ldd", str(prebuilt)], capture_output=True, text=True, check=True).stdout
    print(ldd.rstrip())
    assert "not found" not in ldd
    # the rpath $ORIGIN/../../executorch/lib finds the executorch installed beside sharekan
    for name in ("libexecutorch.so", "libexecutorch_threadpool.so"):
        line = next((ln for ln in ldd.splitlines() if ln.split()[0] == name), None)
        if line is None and name != "libexecutorch.so":
            continue
        assert line is not None, ldd
        found = Path(line.split("=>")[1].split()[0])
        assert found.parent == package / "_lutham_prebuilt/../../executorch/lib", line
        assert found.resolve() == (site / "executorch/lib" / name).resolve(), line

    # the error when the prebuilt library cannot be used and nothing can build one
    real_version = lutham._installed_executorch_version
    lutham._installed_executorch_version = lambda: "0.0.0"  # type: ignore[assignment]
    try:
        lutham._default_library()
    except LuthamBuildError as exc:
        message = str(exc)
    else:
        raise AssertionError("no LuthamBuildError with a mismatched executorch and no compiler")
    finally:
        lutham._installed_executorch_version = real_version  # type: ignore[assignment]
    assert "pip install 'executorch==" in message and "C++ compiler" in message, message
    step("mismatched executorch, no compiler -> LuthamBuildError:\n   "
         + message.replace("\n", "\n   "))

    # compress -> export -> run through the kernel
    torch.manual_seed(0)
    model = KAN([16, 12, 4], grid_size=6, spline_order=3).eval()
    compress_(model, codebook_size=16, bias="edge")
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1.5, 1.5, (9, 16)).astype(np.float32))
    with torch.no_grad():
        want = model(x).numpy()
    pte = sharekan.export_pte(model, (x[:1],), work / "kan.pte")
    step(f"exported {pte} ({pte.stat().st_size} bytes)")
    loaded = lutham.load_library()
    assert loaded == prebuilt.resolve(), (loaded, prebuilt)
    step(f"load_library() -> {loaded}")
    from executorch.runtime import Runtime

    got = Runtime.get().load_program(str(pte)).load_method("forward").execute([x])[0].numpy()
    diff = float(np.abs(got - want).max())
    step(f".pte through the kernel vs eager, batch 9: max abs diff {diff:.3g}")
    assert diff <= 1e-5 * max(1.0, float(np.abs(want).max())), diff

    # the command line (the bundled model, no torch needed)
    cli = subprocess.run([str(Path(sys.executable).parent / "sharekan"), "compress"],
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    step("sharekan compress (bundled model): " + cli.stdout.strip().splitlines()[-1])
    print("wheel-smoke: 1 passed, 0 failed")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
