"""Build and load the LUTHAM ExecuTorch kernel library (`sharekan::lutham.out`).

The kernel (`lutham/lutham_executorch.cpp`, the ExecuTorch adapter over the runtime-neutral
headers `lutham/kernel/*.h`) is compiled on first use with the system C++ compiler, with
the flags of `lutham/build_flags.txt` (shared with the Makefile and CMakeLists.txt), against the installed `executorch` wheel (headers in `executorch/include`, linked
to the wheel's shared `libexecutorch.so`, which holds the operator registry the Python
runtime uses). The result is cached under

    $SHAREKAN_CACHE_DIR/lutham/<key>/libsharekan_lutham.so
    (default ~/.cache/sharekan, or $XDG_CACHE_HOME/sharekan)

where `<key>` hashes the kernel sources (the adapter, every kernel header and
build_flags.txt), the compiler flags, the compiler's version and the
executorch version, so a changed source or a new executorch never reuses a stale build.
If that directory cannot be created or written, the cache falls back to
`<tempdir>/sharekan-lutham-<uid>`.

The library is loaded into the process and the runner is executed, so the cache is private:
its directories are created with mode 0700 and, like the cached library and runner, must be
real (not symlinks), owned by the current user and not writable by group or others; no
directory above them may be world-writable without the sticky bit. Anything else raises
`LuthamBuildError` instead of being used. Lock and temporary files are never opened through
a symlink. Paths given explicitly (`build_library(out_dir=...)`, `load_library(path=...)`)
are the caller's choice and are not checked beyond that.

>>> from sharekan import lutham
>>> path = lutham.load_library()      # doctest: +SKIP
>>> runner = lutham.build_runner()    # doctest: +SKIP

Loading registers the operator into ExecuTorch's registry. Two different libraries
registering the same operator abort the process (uncatchable), so `load_library` loads one
build per process and refuses to load a second, different one.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TypedDict

from .errors import LuthamBuildError

__all__ = [
    "KERNEL_SOURCE",
    "LIBRARY_NAME",
    "RUNNER_NAME",
    "build_flags",
    "PREBUILT_DIR",
    "build_library",
    "build_prebuilt",
    "build_runner",
    "cache_dir",
    "executorch_info",
    "kernel_source",
    "load_library",
    "loaded_library",
    "prebuilt_library",
]

LIBRARY_NAME = "libsharekan_lutham.so"
RUNNER_NAME = "lutham_runner"

# The ExecuTorch adapter (the library's one translation unit), the runtime-neutral kernel
# headers it includes, and the build flags shared with the Makefile and CMakeLists.txt.
KERNEL_SOURCE = "lutham_executorch.cpp"
_KERNEL_HEADERS = "kernel/*.h"
_FLAGS_FILE = "build_flags.txt"
# the flag sets of build_flags.txt that the builds below use
_FLAG_SETS = ("LUTHAM_STD", "LUTHAM_DEFINES", "LUTHAM_WARNINGS", "LUTHAM_KERNEL_LIBS",
              "LUTHAM_KERNEL_OPT", "LUTHAM_RUNNER_OPT", "LUTHAM_SANITIZE_FLAGS",
              "LUTHAM_SANITIZE_KERNEL_FLAGS")

# where a wheel keeps the kernel sources and the prebuilt library, inside the package
_PACKAGED_SOURCE = "_lutham_src"
PREBUILT_DIR = Path(__file__).resolve().parent / "_lutham_prebuilt"
PREBUILT_INFO = "BUILD_INFO.json"

_lock = threading.Lock()
_loaded: Path | None = None
_loaded_handle: ctypes.CDLL | None = None


def kernel_source() -> Path:
    """Directory holding `lutham_executorch.cpp`, `kernel/`, `build_flags.txt`, `runner.cpp`.

    Looked up in `$SHAREKAN_LUTHAM_SOURCE`, then in the source tree (`<repo>/lutham`, for
    editable installs), then inside the package (`sharekan/_lutham_src/`, where a wheel puts
    them: pyproject's maturin `include` through the symlink python/sharekan/_lutham_src).

    Raises:
        LuthamBuildError: the kernel source cannot be found.
    """
    candidates = []
    env = os.environ.get("SHAREKAN_LUTHAM_SOURCE")
    if env:
        candidates.append(Path(env))
    here = Path(__file__).resolve().parent
    candidates += [here.parent.parent / "lutham", here / _PACKAGED_SOURCE]
    for cand in candidates:
        if (cand / KERNEL_SOURCE).is_file():
            return cand
    raise LuthamBuildError(
        f"LUTHAM kernel source {KERNEL_SOURCE} not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + " (set SHAREKAN_LUTHAM_SOURCE to the lutham/ directory)"
    )


class ExecutorchInfo(TypedDict):
    """What `executorch_info` returns."""

    version: str
    root: Path
    include_dirs: list[Path]
    lib_dir: Path


def executorch_info() -> ExecutorchInfo:
    """Paths and version of the installed executorch wheel.

    Returns:
        dict with `version` (str), `root` (Path), `include_dirs` (list[Path]), `lib_dir` (Path).

    Raises:
        LuthamBuildError: executorch is not installed or lacks headers / libexecutorch.so.
    """
    try:
        import executorch  # noqa: PLC0415
    except ImportError as exc:
        raise LuthamBuildError(
            "executorch is not installed; install the extra: pip install 'sharekan[executorch]' "
            "(executorch==1.5.1 with torch==2.13.0)"
        ) from exc
    root = Path(list(executorch.__path__)[0])
    try:
        et_version = metadata.version("executorch")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        et_version = "unknown"
    include = root / "include"
    lib_dir = root / "lib"
    if not (include / "executorch").is_dir() or not (lib_dir / "libexecutorch.so").is_file():
        raise LuthamBuildError(
            f"executorch {et_version} at {root} ships no C++ headers or libexecutorch.so; "
            "the LUTHAM kernel needs the executorch>=1.5 wheel's runtime"
        )
    return {
        "version": et_version,
        "root": root,
        "include_dirs": [include, include / "executorch/runtime/core/portable_type/c10"],
        "lib_dir": lib_dir,
    }


def _compiler() -> str:
    cxx = os.environ.get("CXX")
    if cxx:
        found = shutil.which(cxx)
        if not found:
            raise LuthamBuildError(f"C++ compiler CXX={cxx!r} not found on PATH")
        return found
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    raise LuthamBuildError(
        "no C++ compiler found (tried $CXX, c++, g++, clang++); install one, e.g. "
        "`apt-get install g++`, to build the LUTHAM kernel"
    )


def _compiler_version(cxx: str) -> str:
    try:
        res = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LuthamBuildError(f"cannot run the C++ compiler {cxx}: {exc}") from exc
    return res.stdout.splitlines()[0] if res.stdout else cxx


def cache_dir() -> Path:
    """Root of the LUTHAM build cache (`$SHAREKAN_CACHE_DIR/lutham` or ~/.cache/sharekan/lutham)."""
    env = os.environ.get("SHAREKAN_CACHE_DIR")
    if env:
        return Path(env) / "lutham"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "sharekan" / "lutham"


_FIX_HINT = ("set SHAREKAN_CACHE_DIR to a directory only you can write, or remove the "
             "offending path (the cache is rebuilt on next use)")


def _check_private_dir(path: Path) -> None:
    """Raise unless `path` is a real directory owned by us that no one else can write."""
    what = f"LUTHAM kernel cache directory {path}"
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise LuthamBuildError(f"{what} is not usable: {exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise LuthamBuildError(f"{what} is a symlink; refusing to follow it (whoever controls "
                               f"the link controls the library loaded from it); {_FIX_HINT}")
    if not stat.S_ISDIR(st.st_mode):
        raise LuthamBuildError(f"{what} is not a directory; {_FIX_HINT}")
    _check_owner_and_mode(path, st, what, "chmod 700")


def _check_private_file(path: Path, what: str) -> None:
    """Raise unless `path` is a regular file (not a symlink) owned by us, not writable by others."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise LuthamBuildError(f"{what} {path} is not usable: {exc}") from exc
    what = f"{what} {path}"
    if stat.S_ISLNK(st.st_mode):
        raise LuthamBuildError(f"{what} is a symlink; refusing to load or run it; "
                               f"delete it (it is rebuilt on next use)")
    if not stat.S_ISREG(st.st_mode):
        raise LuthamBuildError(f"{what} is not a regular file; delete it (it is rebuilt on "
                               "next use)")
    _check_owner_and_mode(path, st, what, "chmod go-w")


def _check_owner_and_mode(path: Path, st: os.stat_result, what: str, chmod: str) -> None:
    uid = os.getuid()
    if st.st_uid != uid:
        raise LuthamBuildError(f"{what} is owned by uid {st.st_uid}, not by the current user "
                               f"(uid {uid}); refusing to use it; {_FIX_HINT}")
    if st.st_mode & 0o022:
        raise LuthamBuildError(
            f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"refusing to use it; run `{chmod} {path}` if you trust its contents, or "
            f"{_FIX_HINT}")


def _check_ancestors(path: Path) -> None:
    """Raise if a directory above `path` lets other users replace it: world-writable
    without the sticky bit (/tmp, 1777, is fine: others cannot rename our entries)."""
    for parent in Path(os.path.realpath(path)).parents:
        st = os.stat(parent)
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise LuthamBuildError(
                f"{parent}, above the LUTHAM kernel cache {path}, is world-writable without "
                f"the sticky bit (mode {stat.S_IMODE(st.st_mode):04o}): any local user could "
                f"swap the cache and plant the library load_library() loads; {_FIX_HINT}")


def _make_private_dir(path: Path) -> Path:
    """Create `path` with mode 0700 (an existing one must pass the same checks)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LuthamBuildError(
            f"cannot create LUTHAM kernel cache directory {path}: {exc}") from exc
    _check_private_dir(path)
    return path


def _create_dirs(path: Path) -> None:
    # missing components get 0700 (pathlib's parents=True would use the umask's default)
    missing = []
    for cand in (path, *path.parents):
        if os.path.lexists(cand):
            break
        missing.append(cand)
    for cand in reversed(missing):
        try:
            os.mkdir(cand, 0o700)
        except FileExistsError:
            pass


def _cache_root(root: Path) -> Path:
    """`root` as a private directory, or `<tempdir>/sharekan-lutham-<uid>` if `root` cannot
    be created or written. A `root` that exists but fails the checks raises instead: falling
    back would hide the problem."""
    try:
        _create_dirs(root)
        usable = os.path.isdir(root) or os.path.islink(root)
    except OSError:
        usable = False
    if usable:
        _check_private_dir(root)
        _check_ancestors(root)
        if os.access(root, os.W_OK):
            return root
    # /tmp is shared: only a directory we created, or one that passes the checks, is used
    fallback = Path(tempfile.gettempdir()) / f"sharekan-lutham-{os.getuid()}"
    _check_ancestors(fallback)
    return _make_private_dir(fallback)


# O_NONBLOCK: a FIFO planted at the path must not hang the open (no effect on regular files)
_NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """os.open that refuses a symlink at `path` (O_NOFOLLOW) and anything but a regular file."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        hint = " (it is a symlink; remove it)" if os.path.islink(path) else ""
        raise LuthamBuildError(f"cannot open {path}{hint}: {exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LuthamBuildError(f"{path} is not a regular file; remove it")
    return fd


def _read_key(path: Path) -> str | None:
    """Text of a key file, or None if it is missing, a symlink or not a regular file (the
    caller then rebuilds and replaces it)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "r") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read()


def _write_key(path: Path, text: str) -> None:
    # a fresh mkstemp file (O_EXCL, 0600) renamed over `path`: never writes through a link
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _strip_group_other_write(path: Path) -> None:
    # a linker may replace its output file with a new one of the umask's mode (0775 under
    # umask 002), which the checks on cached files would then refuse
    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~0o022)


def build_flags(src_dir: Path) -> dict[str, list[str]]:
    """The flag sets of `lutham/build_flags.txt` (`LUTHAM_NAME = flag flag ...` lines).

    Raises:
        LuthamBuildError: the file is missing or lacks a flag set the build uses.
    """
    path = src_dir / _FLAGS_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise LuthamBuildError(f"LUTHAM build flags {path} not readable: {exc}") from exc
    flags: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and line.startswith("LUTHAM_"):
            flags[name.strip()] = value.split()
    missing = [n for n in _FLAG_SETS if n not in flags]
    if missing:
        raise LuthamBuildError(f"LUTHAM build flags {path} lacks {', '.join(missing)}")
    return flags


def _common_flags(info: ExecutorchInfo, flags: dict[str, list[str]]) -> list[str]:
    includes = [f"-I{p}" for p in info["include_dirs"]]
    return [*flags["LUTHAM_STD"], *flags["LUTHAM_DEFINES"], *flags["LUTHAM_WARNINGS"],
            *includes]


def _source_parts(src_dir: Path, names: Sequence[str]) -> list[bytes]:
    """Name and bytes of each file (globs expanded, sorted), for a build key."""
    parts: list[bytes] = []
    for name in names:
        paths = sorted(src_dir.glob(name)) if "*" in name else [src_dir / name]
        for path in paths:
            try:
                parts += [path.relative_to(src_dir).as_posix().encode(), path.read_bytes()]
            except OSError as exc:
                raise LuthamBuildError(f"LUTHAM source {path} not readable: {exc}") from exc
    return parts


def _build_key(parts: Sequence[str | bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


@contextmanager
def _file_lock(path: Path):
    fd = _open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _run_compiler(cmd: list[str], what: str) -> None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LuthamBuildError(f"building {what} failed to start: {exc}") from exc
    if res.returncode != 0:
        raise LuthamBuildError(
            f"building {what} failed (exit {res.returncode})\ncommand: {' '.join(cmd)}\n"
            f"{res.stderr[-4000:]}"
        )


def build_library(out_dir: str | os.PathLike[str] | None = None, *, sanitize: bool = False,
                  force: bool = False) -> Path:
    """Compile the kernel library (once; later calls return the cached file).

    Args:
        out_dir: where to put `libsharekan_lutham.so`; default: the keyed cache directory.
        sanitize: build with AddressSanitizer + UndefinedBehaviorSanitizer (for tests; the
            process that loads it needs libasan preloaded). `load_library()` loads this
            build when SHAREKAN_LUTHAM_SANITIZE=1.
        force: rebuild even if the file exists.

    Returns:
        Path of the shared library.

    Raises:
        LuthamBuildError: no compiler, no executorch, missing source, or a compile error.
    """
    src_dir = kernel_source()
    source = src_dir / KERNEL_SOURCE
    info = executorch_info()
    cxx = _compiler()
    fs = build_flags(src_dir)
    opt = ([*fs["LUTHAM_SANITIZE_FLAGS"], *fs["LUTHAM_SANITIZE_KERNEL_FLAGS"]] if sanitize
           else fs["LUTHAM_KERNEL_OPT"])
    flags = [*_common_flags(info, fs), "-fPIC", *opt]
    lib_dir = str(info["lib_dir"])
    link = ["-shared", f"-L{lib_dir}", *fs["LUTHAM_KERNEL_LIBS"], f"-Wl,-rpath,{lib_dir}"]
    # every file the library's translation unit includes from lutham/ is part of its key
    sources = _source_parts(src_dir, [KERNEL_SOURCE, _KERNEL_HEADERS, _FLAGS_FILE])
    key = _build_key([*sources, str(info["version"]), lib_dir, _compiler_version(cxx),
                      *flags, *link])
    cached = out_dir is None
    if out_dir is None:
        target_dir = _make_private_dir(_cache_root(cache_dir()) / key)
    else:
        target_dir = Path(out_dir)
        target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / LIBRARY_NAME
    with _file_lock(target_dir / ".lock"):
        if cached and not force and os.path.lexists(target):
            _check_private_file(target, "cached LUTHAM kernel library")
            return target
        if not cached and target.is_file() and not force:
            return target
        # mkstemp: O_EXCL | O_NOFOLLOW, so a name planted in the directory is never reused
        fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=".libsharekan_lutham.",
                                        suffix=".so")
        os.close(fd)
        tmp_path = Path(tmp_name)
        try:
            _run_compiler([cxx, *flags, str(source), *link, "-o", str(tmp_path)],
                          "the LUTHAM kernel library")
            _strip_group_other_write(tmp_path)
            os.replace(tmp_path, target)
        finally:
            tmp_path.unlink(missing_ok=True)
    return target


def build_runner(out_dir: str | os.PathLike[str] | None = None, *,
                 sanitize: bool | None = None, force: bool = False) -> Path:
    """Compile the standalone runner `lutham_runner` (no Python at run time).

    It links the kernel library (built by `build_library` with the same `sanitize`) and
    ExecuTorch's optimized CPU kernels, so it runs dense and LUTHAM `.pte` files alike:
    `lutham_runner model.pte input.txt` (format documented in lutham/runner.cpp).

    Returns:
        Path of the executable.

    Raises:
        LuthamBuildError: as `build_library`.
    """
    if sanitize is None:
        sanitize = _sanitize_from_env()
    src_dir = kernel_source()
    source = src_dir / "runner.cpp"
    if not source.is_file():
        raise LuthamBuildError(f"runner source {source} not found")
    kernel_lib = build_library(out_dir, sanitize=sanitize)
    info = executorch_info()
    cxx = _compiler()
    fs = build_flags(src_dir)
    flags = [*_common_flags(info, fs),
             *fs["LUTHAM_SANITIZE_FLAGS" if sanitize else "LUTHAM_RUNNER_OPT"]]
    lib_dir = str(info["lib_dir"])
    kdir = str(kernel_lib.parent)
    link = [f"-L{lib_dir}", f"-L{kdir}", "-Wl,--no-as-needed", "-lsharekan_lutham",
            "-lexecutorch_kernels_optimized", *fs["LUTHAM_KERNEL_LIBS"], "-Wl,--as-needed",
            f"-Wl,-rpath,{lib_dir}", f"-Wl,-rpath,{kdir}"]
    target = kernel_lib.parent / RUNNER_NAME
    key_file = kernel_lib.parent / (RUNNER_NAME + ".key")
    # every file the runner's translation unit includes from lutham/ is part of its key
    sources = _source_parts(src_dir, ["runner.cpp", "*.h", _FLAGS_FILE])
    key = _build_key([*sources, *flags, *link, _compiler_version(cxx)])
    cached = out_dir is None
    with _file_lock(kernel_lib.parent / ".lock"):
        if not force and os.path.lexists(target) and _read_key(key_file) == key:
            if cached:  # it is executed: same checks as the library
                _check_private_file(target, "cached LUTHAM runner")
                return target
            if target.is_file():
                return target
        fd, tmp_name = tempfile.mkstemp(dir=kernel_lib.parent, prefix=f".{RUNNER_NAME}.",
                                        suffix=".tmp")
        os.close(fd)
        tmp_path = Path(tmp_name)
        try:
            _run_compiler([cxx, *flags, str(source), *link, "-o", str(tmp_path)],
                          "the LUTHAM runner")
            _strip_group_other_write(tmp_path)
            os.replace(tmp_path, target)
            _write_key(key_file, key)
        finally:
            tmp_path.unlink(missing_ok=True)
    return target


# -- the prebuilt library of a wheel ---------------------------------------------------------
#
# scripts/release compiles the kernel library into PREBUILT_DIR before it
# builds the wheel, against the pinned executorch, and records what it was built for in
# PREBUILT_INFO. load_library() loads it, with no compiler, when this process's platform,
# installed executorch version and packaged kernel sources are exactly those; otherwise it
# builds from the sources as before. The files are part of the installed package (same trust
# as its Python code), so the private-cache checks do not apply to them.

# glibc gave exp/log/pow (2.29) and expf/logf/powf (2.27) new symbol versions; binding them to
# each architecture's first glibc version keeps the prebuilt library loadable on glibc >= 2.17,
# the wheel's manylinux2014 tag (same results: the old versions only differ in errno handling)
_GLIBC_BASE_VERSION = {"x86_64": "GLIBC_2.2.5", "aarch64": "GLIBC_2.17"}


def _glibc_compat(base: str) -> str:
    return "".join(f'__asm__(".symver {name},{name}@{base}");\n' for name in
                   ("exp", "log", "pow", "exp2", "log2", "expf", "logf", "powf", "exp2f", "log2f"))


# the installed executorch's lib dir, from sharekan/_lutham_prebuilt/ in site-packages
_PREBUILT_RPATH = "$ORIGIN/../../executorch/lib"


def _platform_tag() -> str:
    return f"{sys.platform}-{platform.machine()}"


def _sources_digest(src_dir: Path) -> str:
    """Digest of the files the kernel library is compiled from (as in build_library's key)."""
    return _build_key(_source_parts(src_dir, [KERNEL_SOURCE, _KERNEL_HEADERS, _FLAGS_FILE]))


def _installed_executorch_version() -> str | None:
    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError:
        return None


def prebuilt_library() -> tuple[Path | None, str]:
    """The kernel library prebuilt into this wheel, if this installation can load it.

    It can when the platform, the installed executorch version and the packaged kernel
    sources are those it was built for (`sharekan/_lutham_prebuilt/BUILD_INFO.json`), and
    `SHAREKAN_LUTHAM_PREBUILT` is not `0`.

    Returns:
        `(path, "")`, or `(None, reason)` saying why it cannot be used.
    """
    if os.environ.get("SHAREKAN_LUTHAM_PREBUILT", "") == "0":
        return None, "SHAREKAN_LUTHAM_PREBUILT=0 disables it"
    lib = PREBUILT_DIR / LIBRARY_NAME
    info = _prebuilt_info()
    if info is None:
        return None, ("this installation has none (a source checkout, or a wheel not built "
                      "by scripts/release)")
    if not lib.is_file():
        return None, f"{lib} is missing"
    if info.get("platform") != _platform_tag():
        return None, f"it was built for {info.get('platform')}, this is {_platform_tag()}"
    installed = _installed_executorch_version()
    if info.get("executorch") != installed:
        return None, (f"it was built against executorch {info.get('executorch')}, "
                      f"but {'no executorch' if installed is None else installed} is installed")
    try:
        digest = _sources_digest(kernel_source())
    except LuthamBuildError as exc:
        return None, f"its sources cannot be checked: {exc}"
    if info.get("sources") != digest:
        return None, ("the kernel sources differ from the ones it was built from "
                      "(SHAREKAN_LUTHAM_SOURCE, or a stale build)")
    return lib, ""


def build_prebuilt(out_dir: str | os.PathLike[str] | None = None, *,
                   cross: tuple[str, str | os.PathLike[str], str] | None = None) -> Path:
    """Compile the kernel library for a wheel (scripts/release).

    Same source and flags as `build_library`, but independent of this machine: its rpath is
    `$ORIGIN/../../executorch/lib` (executorch installed beside sharekan in site-packages)
    and (x86_64, aarch64) libm's symbols are bound to their oldest versions, so it needs nothing
    newer than glibc 2.17 and GLIBCXX_3.4. Writes `libsharekan_lutham.so` and
    `BUILD_INFO.json` (platform, executorch version, digest of the sources, compiler).
    (The standalone runner is not prebuilt: its glibc start-up code and std::string need
    glibc 2.34 here, beyond the wheel's tag; `build_runner()` compiles it.)

    Args:
        out_dir: default `sharekan/_lutham_prebuilt` beside this module (what the wheel ships).
        cross: `(cxx, executorch_root, machine)` to cross-compile, e.g.
            `("aarch64-linux-gnu-g++", "<unpacked aarch64 wheel>/executorch", "aarch64")`;
            the runtime must be the installed executorch's version (that is what is recorded).

    Returns:
        Path of the library.

    Raises:
        LuthamBuildError: as `build_library`.
    """
    out = Path(out_dir) if out_dir is not None else PREBUILT_DIR
    out.mkdir(parents=True, exist_ok=True)
    src_dir = kernel_source()
    info = executorch_info()
    machine = platform.machine()
    if cross is None:
        cxx = _compiler()
    else:
        cxx_name, et_root, machine = cross
        found = shutil.which(cxx_name)
        if found is None:
            raise LuthamBuildError(f"cross compiler {cxx_name!r} not found on PATH")
        cxx, root = found, Path(et_root)
        include = root / "include"
        info = {"version": info["version"], "root": root, "lib_dir": root / "lib",
                "include_dirs": [include, include / "executorch/runtime/core/portable_type/c10"]}
    fs = build_flags(src_dir)
    common = _common_flags(info, fs)
    with tempfile.TemporaryDirectory() as tmp:
        compat: list[str] = []
        if machine in _GLIBC_BASE_VERSION:
            header = Path(tmp) / "glibc_compat.h"
            header.write_text(_glibc_compat(_GLIBC_BASE_VERSION[machine]))
            compat = ["-include", str(header)]
        lib_dir = f"-L{info['lib_dir']}"
        libs = fs.get("LUTHAM_KERNEL_LIBS", ["-lexecutorch"])
        lib = out / LIBRARY_NAME
        _run_compiler([cxx, *common, "-fPIC", *fs["LUTHAM_KERNEL_OPT"], *compat,
                       str(src_dir / KERNEL_SOURCE), "-shared", lib_dir, *libs,
                       f"-Wl,-rpath,{_PREBUILT_RPATH}", "-o", str(lib)],
                      "the prebuilt LUTHAM kernel library")
    record = {"platform": f"{sys.platform}-{machine}", "executorch": info["version"],
              "sources": _sources_digest(src_dir), "compiler": _compiler_version(cxx),
              "library": LIBRARY_NAME}
    (out / PREBUILT_INFO).write_text(json.dumps(record, indent=1) + "\n")
    return lib


def _default_library() -> Path:
    """What `load_library()` loads: the wheel's prebuilt library when usable, else the build
    cache's (compiled on first use)."""
    sanitize = _sanitize_from_env()
    prebuilt, why_not = (None, "SHAREKAN_LUTHAM_SANITIZE=1") if sanitize else prebuilt_library()
    if prebuilt is not None:
        return prebuilt
    try:
        built = build_library(sanitize=sanitize)
    except LuthamBuildError as exc:
        info = _prebuilt_info()
        if info is None or sanitize or _installed_executorch_version() is None:
            raise  # no prebuilt library to offer, or no executorch (the message says so)
        fix = (f"install the executorch this wheel was built for "
               f"(pip install 'executorch=={info.get('executorch')}')")
        try:
            _compiler()
        except LuthamBuildError:
            fix += (", or install a C++ compiler (e.g. apt-get install g++) so the kernel is "
                    "compiled for the installed executorch")
        raise LuthamBuildError(
            f"the LUTHAM kernel library can neither be loaded prebuilt nor built: the one in "
            f"this wheel cannot be used ({why_not}), and building it from source failed: "
            f"{exc}\nFix: {fix}") from exc
    # checked before resolve(), which would follow a planted symlink
    _check_private_file(built, "cached LUTHAM kernel library")
    return built.resolve()


def _prebuilt_info() -> dict | None:
    try:
        info = json.loads((PREBUILT_DIR / PREBUILT_INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _dlopen(target: Path) -> ctypes.CDLL:
    mode = getattr(os, "RTLD_NOW", 2)
    try:
        return ctypes.CDLL(str(target), mode=mode)
    except OSError as exc:
        if "libexecutorch" not in str(exc):
            raise
    # a prebuilt library whose rpath misses executorch (installed in another site directory
    # than sharekan): load the installed executorch's runtime libraries by path first, so the
    # kernel's dependencies resolve to them (the dynamic loader matches them by name)
    lib_dir = executorch_info()["lib_dir"]
    for name in ("libexecutorch.so", "libexecutorch_threadpool.so"):
        if (lib_dir / name).is_file():
            ctypes.CDLL(str(lib_dir / name), mode=mode | ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(target), mode=mode)


def _sanitize_from_env() -> bool:
    # SHAREKAN_LUTHAM_SANITIZE=1: load / run the ASan+UBSan builds (the Python process
    # then needs libasan preloaded; see lutham/SANITIZERS.md).
    return os.environ.get("SHAREKAN_LUTHAM_SANITIZE", "") == "1"


def loaded_library() -> Path | None:
    """Path of the kernel library loaded into this process, or None."""
    return _loaded


def load_library(path: str | os.PathLike[str] | None = None) -> Path:
    """Load the kernel library into this process, once (building it first if needed).

    The library is the one prebuilt into the wheel when `prebuilt_library()` can use it (the
    installed executorch is the version it was built against; no compiler needed), else the
    build cache's, compiled on first use with the C++ compiler.

    After this, ExecuTorch programs using `sharekan::lutham.out` load and run in this
    process (`executorch.runtime.Runtime.get().load_program(...)`).

    Args:
        path: a library to load instead (the caller's choice: not checked).

    Returns:
        Path of the loaded library.

    Raises:
        LuthamBuildError: the build fails (with no usable prebuilt library the message names
            both and the fix), or a different library was already loaded in this process
            (registering the operator twice would abort the process).
    """
    global _loaded, _loaded_handle
    with _lock:
        target = Path(path).resolve() if path is not None else _default_library()
        if _loaded is not None:
            if _loaded != target:
                raise LuthamBuildError(
                    f"a LUTHAM kernel library is already loaded in this process ({_loaded}); "
                    f"refusing to load {target}: a second registration of "
                    "sharekan::lutham.out would abort the process"
                )
            return _loaded
        if not target.is_file():
            raise LuthamBuildError(f"LUTHAM kernel library {target} does not exist")
        try:
            _loaded_handle = _dlopen(target)
        except OSError as exc:
            raise LuthamBuildError(f"cannot load LUTHAM kernel library {target}: {exc}") from exc
        _loaded = target
        return target


if __name__ == "__main__":  # python -m sharekan.lutham [--runner] [--sanitize]
    san = "--sanitize" in sys.argv
    print(build_runner(sanitize=san) if "--runner" in sys.argv else build_library(sanitize=san))
