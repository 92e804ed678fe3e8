"""What one fuzz case runs, what counts as a crash, and the sandbox that runs it.

Targets (each stage's outcome is recorded; a stage that raises an acceptable error does not
stop the next one, a crash stops the case):

- `run_artifact(path, exec_seed)`: `sharekan.load(path)`, then `model.forward(x)` for a
  few inputs x (random normal * 3 so many are outside the grid, NaN / +-Inf / 1e38 entries,
  an empty batch), `model.decompress()`, and per layer `layer.forward(x)` and
  `sharekan._core.lutham_forward(x, **layer.lutham_inputs())`.
- `run_direct(call)`: one `sharekan._core` call (`lutham_forward`, `unpack_codes`,
  `unpack_nibbles`) with the (mutated) arguments of `call` (see `DirectCall`).

Acceptable outcome: success, or an exception that is an instance of
`sharekan.errors.ShareKanError` or `OSError`. Anything else is a crash: another exception
type (pyo3's PanicException is a BaseException), a signal, running out of the address-space
cap (MemoryError or an aborted allocation), or the per-case time limit.

`Sandbox.run(fn, *args)` forks a child (the parent has numpy and sharekan imported, so a
case costs a fork, not an interpreter start), caps its address space with
`RLIMIT_AS`, arms `faulthandler` (fatal signals and the time limit dump the Python stack
to the child's stderr, which is captured) and reads the verdict back through a pipe.
The parent must not run rayon-parallel Rust code before forking (a forked child would
inherit a thread pool without its threads); it only reads and writes files.
"""

from __future__ import annotations

import faulthandler
import json
import os
import pickle
import re
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

import sharekan
from sharekan import _core
from sharekan.errors import ShareKanError

SHAREKAN_DIR = str(Path(sharekan.__file__).resolve().parent)
ACCEPTABLE = (ShareKanError, OSError)


# ----------------------------------------------------------------------------- verdicts
def _frame_of(exc: BaseException, fallback: str) -> str:
    """The innermost traceback frame inside the sharekan package ("compressed.py:from_stored"),
    with "> _core.name" when that frame's line calls into the Rust extension (the error came
    out of it); `fallback` (the called entry point) when the exception comes straight from
    the harness's call."""
    frames = traceback.extract_tb(exc.__traceback__)
    for pos, fr in enumerate(reversed(frames)):
        if os.path.realpath(fr.filename).startswith(SHAREKAN_DIR):
            rel = os.path.relpath(os.path.realpath(fr.filename), SHAREKAN_DIR)
            callee = re.search(r"_core\.(\w+)\(", fr.line or "") if pos == 0 else None
            return f"{rel}:{fr.name}" + (f">_core.{callee.group(1)}" if callee else "")
    return fallback


_RUST_FRAME = re.compile(r"^\s*\d+: ((?:sharekan_core|_core)::[\w:]+)", re.M)


_PANIC_AT = re.compile(r"panicked at ([^\s:]+):(\d+)")


def _panic_location(stderr: str) -> str | None:
    """"file.rs:line" of a Rust panic; for a panic inside the standard library (capacity
    overflow, slice index) the innermost sharekan frame of the backtrace is added."""
    m = _PANIC_AT.search(stderr)
    if not m:
        return None
    where = f"{m.group(1).split('/src/')[-1]}:{m.group(2)}"
    if "sharekan" not in m.group(1):
        rust = _RUST_FRAME.search(stderr, m.end())
        if rust:
            where = f"{rust.group(1)}({where})"
    return where


@dataclass
class Verdict:
    ok: bool
    signature: str | None = None  # None when ok
    stage: str | None = None
    exc_type: str | None = None
    message: str = ""
    stages: list[tuple[str, str]] = field(default_factory=list)  # (stage, "ok" / error type)
    stderr_tail: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class _Crash(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.signature)
        self.verdict = verdict


class Stages:
    """Runs a case's stages, records outcomes, turns an unacceptable exception into a crash."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def __call__(self, stage: str, entry: str, fn: Callable[..., Any], *args: Any,
                 **kwargs: Any) -> tuple[bool, Any]:
        # for the parent, should the stage kill the process (signal, time-out)
        os.write(2, f"\n@@STAGE {stage} {entry}\n".encode())
        try:
            out = fn(*args, **kwargs)
        except ACCEPTABLE as exc:
            self.log.append((stage, type(exc).__name__))
            return False, exc
        except BaseException as exc:  # noqa: BLE001 - that is the point
            name = type(exc).__name__
            frame = _frame_of(exc, entry)
            self.log.append((stage, name))
            raise _Crash(Verdict(
                ok=False, signature=f"{name}@{frame}", stage=stage, exc_type=name,
                message=f"{exc!s}"[:500], stages=list(self.log),
                stderr_tail="".join(traceback.format_exception(exc))[-3000:],
            )) from None
        self.log.append((stage, "ok"))
        return True, out


# ----------------------------------------------------------------------------- inputs
def _width(value: Any) -> int:
    try:
        return int(value)
    except Exception:  # noqa: BLE001 - a mutated attribute; the call sees a wrong shape
        return 4


def exec_inputs(n_in: Any, exec_seed: int) -> list[np.ndarray]:
    """The x batches every artifact case evaluates (deterministic in exec_seed). A width the
    harness cannot allocate (a mutated n_in) is clamped: the call then sees a wrong shape."""
    n_in = _width(n_in)
    n_in = n_in if 0 <= n_in <= 4096 else 4
    rng = np.random.default_rng(exec_seed)
    xs = [(rng.normal(size=(int(rng.integers(1, 4)), n_in)) * 3).astype(np.float32)]
    odd = (rng.normal(size=(3, n_in)) * 3).astype(np.float32)
    flat = odd.reshape(-1)
    specials = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-45, 0.0], dtype=np.float32)
    idx = rng.choice(flat.size, size=min(flat.size, 4), replace=False)
    flat[idx] = rng.choice(specials, size=idx.size)
    xs.append(odd)
    xs.append(np.zeros((0, n_in), dtype=np.float32))
    return xs


def run_artifact(path: str, exec_seed: int = 0) -> Verdict:
    """Load an artifact and exercise every entry point on it."""
    st = Stages()
    t0 = time.perf_counter()
    try:
        ok, model = st("load", "sharekan.load", sharekan.load, path)
        if ok:
            layers = list(model.layers.values())
            n_in = layers[0].n_in if layers else 1
            for i, x in enumerate(exec_inputs(n_in, exec_seed)):
                st(f"model.forward[{i}]", "CompressedModel.forward", model.forward, x)
            st("decompress", "CompressedModel.decompress", model.decompress)
            for layer in layers:
                x = exec_inputs(layer.n_in, exec_seed + 1)[1]
                st(f"layer.forward[{layer.name}]", "CompressedLayer.forward", layer.forward, x)
                ok_in, inputs = st(f"lutham_inputs[{layer.name}]", "CompressedLayer.lutham_inputs",
                                   layer.lutham_inputs)
                if ok_in:
                    st(f"lutham_forward[{layer.name}]", "_core.lutham_forward",
                       _core.lutham_forward, x, **inputs)
    except _Crash as crash:
        crash.verdict.seconds = time.perf_counter() - t0
        return crash.verdict
    return Verdict(ok=True, stages=st.log, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- direct calls
DIRECT_FUNCS = ("lutham_forward", "unpack_codes", "unpack_nibbles")


@dataclass
class DirectCall:
    """One `sharekan._core` call: array arguments, scalar / None arguments, and layout
    transforms applied to arrays at call time ("fortran": Fortran order, "strided": every
    other element of a doubled last axis, both not C-contiguous)."""

    func: str
    arrays: dict[str, np.ndarray]
    scalars: dict[str, Any]
    transforms: dict[str, str] = field(default_factory=dict)
    positional: list[str] = field(default_factory=list)  # argument names passed positionally

    def materialise(self) -> tuple[list[Any], dict[str, Any]]:
        values: dict[str, Any] = dict(self.scalars)
        for name, a in self.arrays.items():
            how = self.transforms.get(name)
            if how == "fortran":
                a = np.asfortranarray(a)
            elif how == "strided" and a.ndim >= 1:
                a = np.repeat(a, 2, axis=-1)[..., ::2]
            values[name] = a
        args = [values.pop(n) for n in self.positional if n in values]
        return args, values

    def save(self, stem: Path, extra: dict[str, Any]) -> tuple[Path, Path]:
        npz = stem.with_suffix(".npz")
        np.savez(npz, **self.arrays)
        side = stem.with_suffix(".json")
        side.write_text(json.dumps({
            **extra, "target": "direct", "func": self.func, "scalars": self.scalars,
            "transforms": self.transforms, "positional": self.positional,
        }, indent=1, default=repr))
        return npz, side

    @classmethod
    def load(cls, npz: Path) -> DirectCall:
        side = json.loads(npz.with_suffix(".json").read_text())
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return cls(func=side["func"], arrays=arrays, scalars=side["scalars"],
                   transforms=side.get("transforms", {}), positional=side.get("positional", []))


def run_direct(call: DirectCall) -> Verdict:
    st = Stages()
    t0 = time.perf_counter()
    try:
        args, kwargs = call.materialise()
        fn = getattr(_core, call.func)
        st(call.func, f"_core.{call.func}", fn, *args, **kwargs)
    except _Crash as crash:
        crash.verdict.seconds = time.perf_counter() - t0
        return crash.verdict
    return Verdict(ok=True, stages=st.log, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- sandbox
_SIGNAMES = {int(s): s.name for s in reversed(list(signal.Signals))}
_SIGNAMES[int(signal.SIGABRT)] = "SIGABRT"
_STAGE = re.compile(r"@@STAGE (\S+) (\S+)")


def _innermost_python_frame(stderr: str) -> str | None:
    """From a faulthandler dump ("File "...", line N in func", most recent call first),
    the first frame inside sharekan, else the first frame."""
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', stderr)
    for fname, _line, func in frames:
        if os.path.realpath(fname).startswith(SHAREKAN_DIR):
            return f"{os.path.relpath(os.path.realpath(fname), SHAREKAN_DIR)}:{func}"
    if frames:
        return f"{os.path.basename(frames[0][0])}:{frames[0][2]}"
    return None


class Sandbox:
    """Fork-per-case executor with an address-space cap and a time limit."""

    def __init__(self, mem_mb: int = 2048, timeout: float = 10.0) -> None:
        self.mem_bytes = int(mem_mb) << 20
        self.timeout = float(timeout)
        self._err = tempfile.TemporaryFile()

    def run(self, fn: Callable[..., Verdict], *args: Any) -> Verdict:
        sys.stdout.flush()
        sys.stderr.flush()
        self._err.seek(0)
        self._err.truncate()
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(r)
                os.dup2(self._err.fileno(), 2)
                os.dup2(self._err.fileno(), 1)
                resource.setrlimit(resource.RLIMIT_AS, (self.mem_bytes, self.mem_bytes))
                faulthandler.enable(file=sys.stderr, all_threads=True)
                faulthandler.dump_traceback_later(self.timeout, exit=True)
                verdict = fn(*args)
                payload = pickle.dumps(verdict.to_dict())
                view = memoryview(payload)
                while view:
                    view = view[os.write(w, view):]
            except BaseException:  # noqa: BLE001 - harness failure in the child
                try:
                    traceback.print_exc()
                finally:
                    code = 3
            os._exit(code)
        os.close(w)
        chunks: list[bytes] = []
        deadline = t0 + self.timeout + 5.0
        killed = False
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        seconds = time.perf_counter() - t0
        self._err.seek(0)
        stderr = self._err.read().decode("utf-8", "replace")
        stderr_clean = re.sub(r"\n?@@STAGE [^\n]*\n", "\n", stderr)
        if chunks and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            try:
                d = pickle.loads(b"".join(chunks))
                verdict = Verdict(**d)
                verdict.seconds = seconds
                if not verdict.ok:
                    loc = _panic_location(stderr)
                    if verdict.exc_type == "PanicException" and loc:
                        verdict.signature = f"PanicException@{loc}"
                    verdict.stderr_tail = (stderr_clean[-2000:] + "\n" + verdict.stderr_tail)[-4000:]
                return verdict
            except Exception:  # noqa: BLE001 - fall through: a harness problem
                pass
        stages = _STAGE.findall(stderr)
        stage, entry = stages[-1] if stages else (None, "?")
        frame = _innermost_python_frame(stderr)
        if frame is None or frame.startswith("_harness.py"):
            frame = entry
        if killed or "Timeout (" in stderr:
            kind = "TIMEOUT"
        elif os.WIFSIGNALED(status):
            kind = _SIGNAMES.get(os.WTERMSIG(status), f"signal{os.WTERMSIG(status)}")
            if "memory allocation of" in stderr:
                kind += "(alloc-failed)"
                rust = _RUST_FRAME.search(stderr)
                if rust:
                    frame = rust.group(1)
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3:
            kind = "HARNESS-ERROR"
        else:
            kind = f"exit{os.WEXITSTATUS(status) if os.WIFEXITED(status) else '?'}"
        loc = _panic_location(stderr)
        sig = f"{kind}@{loc or frame}"
        return Verdict(ok=False, signature=sig, stage=stage, exc_type=kind,
                       message=stderr_clean.strip()[:500], stderr_tail=stderr_clean[-4000:],
                       seconds=seconds)
