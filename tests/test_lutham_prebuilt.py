"""The wheel's prebuilt LUTHAM kernel (`sharekan/_lutham_prebuilt/`): `load_library()` uses it
only when the platform, the installed executorch and the packaged kernel sources are the ones
it was built for, builds from source otherwise, and, when neither is possible, raises a
`LuthamBuildError` naming both fixes. The decisions are tested on a fake prebuilt directory
(no compiler needed); `build_prebuilt` is tested for what makes the library portable (rpath,
symbol versions) where a compiler and executorch exist. The wheel itself is checked end to end
in a clean venv without compilers by .ci/wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sharekan import lutham
from sharekan.errors import LuthamBuildError


@pytest.fixture
def prebuilt(monkeypatch, tmp_path) -> Path:
    """A fake prebuilt directory matching this installation (executorch 1.5.1, this platform,
    the checkout's kernel sources)."""
    monkeypatch.delenv("SHAREKAN_LUTHAM_PREBUILT", raising=False)
    monkeypatch.delenv("SHAREKAN_LUTHAM_SANITIZE", raising=False)
    d = tmp_path / "_lutham_prebuilt"
    d.mkdir()
    (d / lutham.LIBRARY_NAME).write_bytes(b"\x7fELF not really")
    info = {"platform": lutham._platform_tag(), "executorch": "1.5.1",
            "sources": lutham._sources_digest(lutham.kernel_source()),
            "library": lutham.LIBRARY_NAME}
    (d / lutham.PREBUILT_INFO).write_text(json.dumps(info))
    monkeypatch.setattr(lutham, "PREBUILT_DIR", d)
    monkeypatch.setattr(lutham, "_installed_executorch_version", lambda: "1.5.1")
    return d


def _edit_info(d: Path, **changes) -> None:
    info = json.loads((d / lutham.PREBUILT_INFO).read_text())
    info.update(changes)
    (d / lutham.PREBUILT_INFO).write_text(json.dumps(info))


def test_matching_prebuilt_is_used_without_a_compiler(prebuilt, monkeypatch):
    def no_compiler():
        raise AssertionError("the compiler must not be needed")

    monkeypatch.setattr(lutham, "_compiler", no_compiler)
    assert lutham.prebuilt_library() == (prebuilt / lutham.LIBRARY_NAME, "")
    assert lutham._default_library() == prebuilt / lutham.LIBRARY_NAME


@pytest.mark.parametrize("change, reason", [
    ({"executorch": "1.4.0"}, "built against executorch 1.4.0, but 1.5.1 is installed"),
    ({"platform": "linux-aarch64"}, "built for linux-aarch64"),
    ({"sources": "0" * 20}, "kernel sources differ"),
])
def test_mismatched_prebuilt_is_refused(prebuilt, change, reason):
    _edit_info(prebuilt, **change)
    path, why_not = lutham.prebuilt_library()
    assert path is None and reason in why_not


def test_prebuilt_refusals_without_info_or_library_or_when_disabled(prebuilt, monkeypatch):
    monkeypatch.setenv("SHAREKAN_LUTHAM_PREBUILT", "0")
    assert lutham.prebuilt_library() == (None, "SHAREKAN_LUTHAM_PREBUILT=0 disables it")
    monkeypatch.delenv("SHAREKAN_LUTHAM_PREBUILT")
    (prebuilt / lutham.LIBRARY_NAME).unlink()
    assert "missing" in lutham.prebuilt_library()[1]
    (prebuilt / lutham.PREBUILT_INFO).write_text("{not json")
    path, why_not = lutham.prebuilt_library()
    assert path is None and "has none" in why_not
    monkeypatch.setattr(lutham, "_installed_executorch_version", lambda: None)
    (prebuilt / lutham.PREBUILT_INFO).unlink()
    assert lutham.prebuilt_library()[0] is None


def test_no_executorch_is_a_mismatch(prebuilt, monkeypatch):
    monkeypatch.setattr(lutham, "_installed_executorch_version", lambda: None)
    path, why_not = lutham.prebuilt_library()
    assert path is None and "no executorch is installed" in why_not


def test_mismatch_without_compiler_names_both_fixes(prebuilt, monkeypatch):
    monkeypatch.setattr(lutham, "_installed_executorch_version", lambda: "9.9")

    def no_compiler():
        raise LuthamBuildError("no C++ compiler found (tried $CXX, c++, g++, clang++)")

    monkeypatch.setattr(lutham, "_compiler", no_compiler)
    with pytest.raises(LuthamBuildError) as err:
        lutham._default_library()
    text = str(err.value)
    assert "built against executorch 1.5.1, but 9.9 is installed" in text
    assert "no C++ compiler found" in text
    assert "pip install 'executorch==1.5.1'" in text and "install a C++ compiler" in text


def test_mismatch_with_a_failing_compile_names_only_the_executorch_fix(prebuilt, monkeypatch):
    monkeypatch.setattr(lutham, "_installed_executorch_version", lambda: "9.9")
    monkeypatch.setattr(lutham, "_compiler", lambda: "/usr/bin/c++")

    def failing_build(sanitize=False):
        raise LuthamBuildError("building the LUTHAM kernel library failed (exit 1)")

    monkeypatch.setattr(lutham, "build_library", failing_build)
    with pytest.raises(LuthamBuildError, match="failed \\(exit 1\\)") as err:
        lutham._default_library()
    assert "pip install 'executorch==1.5.1'" in str(err.value)
    assert "C++ compiler" not in str(err.value)


def test_mismatch_with_compiler_builds_from_source(prebuilt, monkeypatch, tmp_path):
    _edit_info(prebuilt, executorch="1.4.0")
    built = tmp_path / "cache" / lutham.LIBRARY_NAME
    built.parent.mkdir(mode=0o700)
    built.write_bytes(b"")
    os.chmod(built, 0o644)
    monkeypatch.setattr(lutham, "build_library", lambda sanitize=False: built)
    assert lutham._default_library() == built.resolve()


def test_sanitize_never_uses_the_prebuilt(prebuilt, monkeypatch, tmp_path):
    monkeypatch.setenv("SHAREKAN_LUTHAM_SANITIZE", "1")
    calls = []

    def build(sanitize=False):
        calls.append(sanitize)
        raise LuthamBuildError("no compiler")

    monkeypatch.setattr(lutham, "build_library", build)
    with pytest.raises(LuthamBuildError, match="^no compiler$"):
        lutham._default_library()
    assert calls == [True]


def test_kernel_source_has_the_packaged_layout():
    # the wheel's sharekan/_lutham_src/ is this symlink in a checkout (pyproject's include)
    packaged = Path(lutham.__file__).resolve().parent / "_lutham_src"
    assert packaged.is_symlink()
    assert (packaged / lutham.KERNEL_SOURCE).resolve() == \
        (lutham.kernel_source() / lutham.KERNEL_SOURCE).resolve()


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump")
def test_build_prebuilt_is_portable(tmp_path):
    try:
        lib = lutham.build_prebuilt(tmp_path)
    except LuthamBuildError as exc:
        pytest.skip(f"cannot build the kernel here: {exc}")
    info = json.loads((tmp_path / lutham.PREBUILT_INFO).read_text())
    assert info["executorch"] == lutham.executorch_info()["version"]
    assert info["sources"] == lutham._sources_digest(lutham.kernel_source())
    dyn = subprocess.run(["objdump", "-p", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    assert "$ORIGIN/../../executorch/lib" in dyn
    assert "/site-packages/" not in dyn  # no path of this machine
    # here the rpath finds no executorch (tmp_path/../../executorch): load_library preloads
    # the installed executorch's libraries by path and loads it (in a child: it registers the op)
    code = f"from sharekan import lutham; print(lutham.load_library({str(lib)!r}))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == str(lib.resolve()), res.stderr
    if lutham._platform_tag() == "linux-x86_64":
        syms = subprocess.run(["objdump", "-T", str(lib)], capture_output=True, text=True,
                              check=True).stdout
        glibc = {tuple(int(p) for p in v.split(".")) for v in
                 re.findall(r"\(GLIBC_([0-9.]+)\)", syms)}
        assert max(glibc) <= (2, 17), sorted(glibc)
