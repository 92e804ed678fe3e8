"""Every input the artifact fuzzer keeps (tests/fuzz/corpus: seed artifacts; tests/fuzz/crashes:
inputs that once crashed) must now load and evaluate, or be refused with a
`sharekan.errors.ShareKanError` (or OSError), never crash: no other exception type, no
signal, no allocation past the address-space cap, no time-out. Plus a short deterministic
fuzz run. Both run tests/fuzz/fuzz_artifacts.py in a subprocess, each case in a forked
child with the memory cap (see tests/fuzz/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
SCRIPT = FUZZ / "fuzz_artifacts.py"
INPUTS = sorted(
    p for folder in (FUZZ / "corpus", FUZZ / "crashes") if folder.is_dir()
    for p in folder.iterdir() if p.suffix in (".safetensors", ".npz")
)


def _run(args: list[str], out: Path, timeout: float) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if not out.exists():
        raise AssertionError(f"fuzz harness failed (rc {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict:
    """Outcome of every corpus / crash input, from one replay subprocess."""
    if not INPUTS:
        return {}
    out = tmp_path_factory.mktemp("fuzz") / "replay.json"
    return _run(["--replay", *map(str, INPUTS)], out, timeout=60 + 15 * len(INPUTS))["files"]


def test_the_corpus_is_there():
    assert any(p.parent.name == "corpus" for p in INPUTS), "tests/fuzz/corpus is empty"


@pytest.mark.parametrize("path", INPUTS, ids=[f"{p.parent.name}/{p.name}" for p in INPUTS])
def test_fuzz_input_is_handled(path, replayed):
    result = replayed[str(path)]
    side = path.with_suffix(".json")
    what = json.loads(side.read_text()).get("mutations") if side.exists() else "seed artifact"
    assert result["ok"], (
        f"{path.name}: {result['signature']} at stage {result['stage']}: {result['message']}\n"
        f"mutations: {what}\n{result['stderr_tail']}"
    )
    if path.parent.name == "corpus":  # a seed must load and evaluate
        assert result["stages"] and result["stages"][0] == ["load", "ok"], result["stages"]


def test_fuzz_smoke(tmp_path):
    """150 deterministic mutations (seed 0): none may crash."""
    summary = _run(["--cases", "150", "--seed", "0", "--no-save", "--timeout", "10"],
                   tmp_path / "smoke.json", timeout=120)
    assert summary["executions"] == 150
    crashes = {sig: {k: info[k] for k in ("case_index", "kind", "seed_file", "mutations",
                                          "stage", "message")}
               for sig, info in summary["crashes"].items()}
    assert not crashes, json.dumps(crashes, indent=1)
