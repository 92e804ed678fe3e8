"""Fuzz sharekan's artifact loader and evaluator entry points (see tests/fuzz/README.md).

    .venv/bin/python tests/fuzz/fuzz_artifacts.py --seconds 300 [--seed N] [--workers 1]
    .venv/bin/python tests/fuzz/fuzz_artifacts.py --cases 150 --seed 0 --no-save
    .venv/bin/python tests/fuzz/fuzz_artifacts.py --replay tests/fuzz/corpus tests/fuzz/crashes

Each case is run in a forked child with an address-space cap (--mem-mb) and a time
limit (--timeout); see _harness.py for what a case runs and what counts as a crash.
New crash signatures are saved under --crashes (the input plus a JSON sidecar).
"""

from __future__ import annotations

import os

# one thread per library (the parent forks; a forked child must not inherit thread pools
# it cannot use, and the machine's cores are shared)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ["RUST_BACKTRACE"] = "1"  # Rust frames name an aborted allocation's site

import argparse  # noqa: E402
import collections  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import _mutators as M  # noqa: E402
import _safetensors  # noqa: E402
import sharekan  # noqa: E402
from _harness import DirectCall, Sandbox, Verdict, exec_inputs, run_artifact, run_direct  # noqa: E402
from sharekan import _core  # noqa: E402
from sharekan.artifact import seal  # noqa: E402

KINDS = {"artifact": 0.55, "header": 0.08, "raw": 0.12, "direct": 0.25}


@dataclass
class Seed:
    name: str
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]
    blob: bytes
    directs: list[DirectCall] = field(default_factory=list)


def _direct_templates(path: Path, tensors: dict[str, np.ndarray]) -> list[DirectCall]:
    """lutham_forward / unpack_codes / unpack_nibbles calls taken from a real artifact (the
    parent only unpacks codes here: no rayon-parallel code before forking)."""
    out: list[DirectCall] = []
    try:
        model = sharekan.load(str(path))
    except Exception:  # noqa: BLE001 - a seed that does not load gives no templates
        return out
    for layer in model.layers.values():
        n = int(layer.n_in) * int(layer.n_out)
        out.append(DirectCall("unpack_codes", {"packed": tensors[f"{layer.name}.codes"]},
                              {"bits": int(layer.bits), "n": n}, positional=["packed", "bits", "n"]))
        for fld in ("gains", "edge_bias", "base_weight"):
            key = f"{layer.name}.{fld}_q4"
            if key in tensors:
                out.append(DirectCall("unpack_nibbles", {"packed": tensors[key]}, {"n": n},
                                      positional=["packed", "n"]))
        try:
            inputs = layer.lutham_inputs()
        except sharekan.errors.ShareKanError:
            continue
        arrays = {"x": exec_inputs(layer.n_in, 0)[0]}
        scalars: dict[str, Any] = {}
        for k, v in inputs.items():
            if isinstance(v, np.ndarray):
                arrays[k] = np.ascontiguousarray(v)
            else:
                scalars[k] = v
        out.append(DirectCall("lutham_forward", arrays, scalars, positional=["x"]))
    if not any(c.func == "unpack_nibbles" for c in out):
        packed = _core.pack_nibbles(np.array([-8, 7, 0, 3, -1], dtype=np.int8))
        out.append(DirectCall("unpack_nibbles", {"packed": packed}, {"n": 5},
                              positional=["packed", "n"]))
    return out


def load_seeds(corpus: Path) -> list[Seed]:
    seeds = []
    for path in sorted(corpus.glob("*.safetensors")):
        tensors, metadata = _core.load_safetensors(str(path))
        seeds.append(Seed(path.stem, dict(tensors), dict(metadata), path.read_bytes(),
                          _direct_templates(path, tensors)))
    if not seeds:
        raise SystemExit(f"no seed artifacts in {corpus}")
    return seeds


@dataclass
class Case:
    index: int
    kind: str
    seed_name: str
    mutations: list[str]
    blob: bytes | None = None
    call: DirectCall | None = None
    exec_seed: int = 0
    parts: tuple[dict, dict] | None = None  # (tensors, metadata) of a structured case


class Fuzzer:
    def __init__(self, seeds: list[Seed], fuzz_seed: int, kinds: dict[str, float]) -> None:
        self.seeds = seeds
        self.fuzz_seed = fuzz_seed
        self.kinds = kinds
        self.pool: list[tuple[str, dict, dict]] = []  # mutated artifacts that loaded
        self.seen_paths: set[tuple] = set()

    def make(self, index: int) -> Case:
        rng = random.Random(f"{self.fuzz_seed}:{index}")
        nprng = np.random.default_rng([self.fuzz_seed & 0xFFFFFFFF, index])
        kind = rng.choices(list(self.kinds), list(self.kinds.values()))[0]
        seed = rng.choice(self.seeds)
        case = Case(index, kind, seed.name, [], exec_seed=index % 997)
        if kind == "direct":
            templates = [t for s in self.seeds for t in s.directs]
            tpl = rng.choice(templates)
            call = DirectCall(tpl.func, dict(tpl.arrays), dict(tpl.scalars), {},
                              list(tpl.positional))
            case.mutations = [f"func={tpl.func}"] + M.mutate_direct(rng, nprng, call)
            case.call = call
            return case
        if kind == "artifact" and self.pool and rng.random() < 0.3:
            base_name, tensors, metadata = rng.choice(self.pool)
            case.seed_name = base_name
            case.mutations.append("from pool")
        else:
            tensors, metadata = seed.tensors, seed.metadata
        tensors = dict(tensors)
        metadata = dict(metadata)
        if kind == "artifact":
            for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
                if rng.random() < 0.55:
                    case.mutations.append(M.mutate_metadata(rng, metadata))
                else:
                    case.mutations.append(M.mutate_tensors(rng, tensors, nprng))
            case.parts = (tensors, metadata)
            case.blob = _safetensors.serialize(tensors, seal(tensors, metadata))
        elif kind == "header":
            hook, log = M.header_hook(rng)
            case.blob = _safetensors.serialize(tensors, seal(tensors, metadata), hook)
            case.mutations += log
        else:
            blob = seed.blob
            for _ in range(rng.choice([1, 1, 2, 3])):
                blob, what = M.raw_mutate(rng, blob)
                case.mutations.append(what)
            case.blob = blob
        return case

    def feedback(self, case: Case, verdict: Verdict) -> None:
        """Keep mutated artifacts that load and reach a new combination of stage outcomes
        as bases for further mutation (in memory only)."""
        if case.parts is None or not verdict.ok:
            return
        path = tuple(v for _, v in verdict.stages)
        if path and path[0] == "ok" and path not in self.seen_paths:
            self.seen_paths.add(path)
            if len(self.pool) < 300:
                self.pool.append((case.seed_name, case.parts[0], case.parts[1]))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60]


def save_crash(crashes: Path, case: Case, verdict: Verdict, fuzz_seed: int) -> Path:
    crashes.mkdir(parents=True, exist_ok=True)
    sig = verdict.signature or "?"
    content = case.blob if case.blob is not None else repr(
        (case.call.func, case.call.scalars, case.mutations)).encode()
    stem = crashes / f"{_slug(sig)}-{hashlib.sha1(content).hexdigest()[:8]}"
    extra = {
        "signature": sig, "kind": case.kind, "seed_file": case.seed_name,
        "mutations": case.mutations, "fuzz_seed": fuzz_seed, "case_index": case.index,
        "stage": verdict.stage, "exc_type": verdict.exc_type, "message": verdict.message,
        "stages": verdict.stages, "stderr_tail": verdict.stderr_tail[-2500:],
    }
    if case.call is not None:
        case.call.save(stem, extra)
        return stem.with_suffix(".npz")
    stem.with_suffix(".safetensors").write_bytes(case.blob or b"")
    stem.with_suffix(".json").write_text(json.dumps(
        {**extra, "target": "artifact", "exec_seed": case.exec_seed}, indent=1, default=repr))
    return stem.with_suffix(".safetensors")


def known_signatures(crashes: Path) -> set[str]:
    out = set()
    for side in crashes.glob("*.json"):
        try:
            out.add(json.loads(side.read_text())["signature"])
        except (ValueError, KeyError, OSError):
            pass
    return out


def fuzz_loop(args: argparse.Namespace, worker: int, workers: int) -> dict[str, Any]:
    seeds = load_seeds(Path(args.corpus))
    kinds = {k: v for k, v in KINDS.items() if k in args.kinds.split(",")}
    fuzzer = Fuzzer(seeds, args.seed, kinds)
    sandbox = Sandbox(args.mem_mb, args.timeout)
    crashes = Path(args.crashes)
    known = known_signatures(crashes) if not args.no_save else set()
    found: dict[str, dict[str, Any]] = {}
    outcomes: collections.Counter[str] = collections.Counter()
    per_kind: collections.Counter[str] = collections.Counter()
    workdir = Path(tempfile.mkdtemp(prefix="sharekan-fuzz-",
                                    dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    case_file = workdir / "case.safetensors"
    t0 = time.monotonic()
    executions = 0
    index = worker
    try:
        while True:
            if args.seconds is not None and time.monotonic() - t0 >= args.seconds:
                break
            if args.cases is not None and executions >= args.cases:
                break
            try:
                case = fuzzer.make(index)
            except Exception as exc:  # noqa: BLE001 - a mutation the writer cannot encode
                outcomes[f"unbuildable:{type(exc).__name__}"] += 1
                index += workers
                continue
            index += workers
            per_kind[case.kind] += 1
            if case.call is not None:
                verdict = sandbox.run(run_direct, case.call)
            else:
                case_file.write_bytes(case.blob or b"")
                verdict = sandbox.run(run_artifact, str(case_file), case.exec_seed)
            executions += 1
            if args.verbose:
                print(f"case {case.index} {case.kind} {case.seed_name}: "
                      f"{'; '.join(case.mutations)[:160]} -> "
                      f"{'ok' if verdict.ok else verdict.signature} {verdict.stages[-1:]}",
                      flush=True)
            if verdict.ok:
                errors = [v for _, v in verdict.stages if v != "ok"]
                outcomes[f"rejected:{errors[0]}" if errors else "ok"] += 1
                fuzzer.feedback(case, verdict)
                continue
            sig = verdict.signature or "?"
            outcomes["CRASH"] += 1
            if sig in found:
                found[sig]["count"] += 1
                continue
            saved = None
            if not args.no_save and sig not in known:
                saved = str(save_crash(crashes, case, verdict, args.seed))
            found[sig] = {"count": 1, "kind": case.kind, "seed_file": case.seed_name,
                          "case_index": case.index, "mutations": case.mutations,
                          "stage": verdict.stage, "message": verdict.message[:300],
                          "saved": saved, "after_s": round(time.monotonic() - t0, 1)}
            print(f"[{time.monotonic() - t0:7.1f}s] NEW CRASH {sig} "
                      f"(case {case.index}, {case.kind}, {case.seed_name}: "
                      f"{'; '.join(case.mutations)[:200]})" + (f" -> {saved}" if saved else ""),
                      flush=True)
    finally:
        for p in workdir.iterdir():
            p.unlink()
        workdir.rmdir()
    return {"executions": executions, "seconds": round(time.monotonic() - t0, 1),
            "outcomes": dict(outcomes), "kinds": dict(per_kind), "crashes": found}


def replay(args: argparse.Namespace) -> dict[str, Any]:
    sandbox = Sandbox(args.mem_mb, args.timeout)
    files: list[Path] = []
    for p in map(Path, args.replay):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix in (".safetensors", ".npz"))
        elif p.exists():
            files.append(p)
    results = {}
    for path in files:
        side = path.with_suffix(".json")
        meta = json.loads(side.read_text()) if side.exists() else {}
        if path.suffix == ".npz":
            verdict = sandbox.run(run_direct, DirectCall.load(path))
        else:
            verdict = sandbox.run(run_artifact, str(path), int(meta.get("exec_seed", 0)))
        results[str(path)] = {"ok": verdict.ok, "signature": verdict.signature,
                              "stage": verdict.stage, "stages": verdict.stages,
                              "message": verdict.message[:500],
                              "stderr_tail": verdict.stderr_tail[-1500:]}
        status = "ok " if verdict.ok else "CRASH"
        detail = "" if verdict.ok else f" {verdict.signature}: {verdict.message[:150]!r}"
        print(f"{status} {path}{detail}", flush=True)
    return {"files": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="run this long")
    parser.add_argument("--cases", type=int, default=None, help="run this many cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--corpus", default=str(HERE / "corpus"))
    parser.add_argument("--crashes", default=str(HERE / "crashes"))
    parser.add_argument("--no-save", action="store_true", help="do not write crash files")
    parser.add_argument("--mem-mb", type=int, default=2048, help="RLIMIT_AS of each case")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--replay", nargs="+", help="run these files / folders once each")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    if args.replay:
        summary = replay(args)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1, default=repr))
        bad = [f for f, r in summary["files"].items() if not r["ok"]]
        print(f"replayed {len(summary['files'])} files, {len(bad)} crash")
        return 1 if bad else 0

    if args.seconds is None and args.cases is None:
        args.seconds = 60.0
    if args.workers <= 1:
        summary = fuzz_loop(args, 0, 1)
    else:  # forked loops over interleaved case indices, merged at the end
        outs = []
        pids = []
        for w in range(args.workers):
            out = tempfile.NamedTemporaryFile(suffix=".json", delete=False)
            outs.append(out.name)
            pid = os.fork()
            if pid == 0:
                try:
                    Path(out.name).write_text(json.dumps(fuzz_loop(args, w, args.workers),
                                                         default=repr))
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        summary = {"executions": 0, "seconds": 0.0, "outcomes": collections.Counter(),
                   "kinds": collections.Counter(), "crashes": {}}
        for name in outs:
            part = json.loads(Path(name).read_text())
            os.unlink(name)
            summary["executions"] += part["executions"]
            summary["seconds"] = max(summary["seconds"], part["seconds"])
            summary["outcomes"].update(part["outcomes"])
            summary["kinds"].update(part["kinds"])
            for sig, info in part["crashes"].items():
                if sig in summary["crashes"]:
                    summary["crashes"][sig]["count"] += info["count"]
                else:
                    summary["crashes"][sig] = info
        summary["outcomes"] = dict(summary["outcomes"])
        summary["kinds"] = dict(summary["kinds"])

    rate = summary["executions"] / max(summary["seconds"], 1e-9) * 60
    print(f"\nexecutions: {summary['executions']} in {summary['seconds']} s "
          f"({rate:.0f}/min), seed {args.seed}, workers {args.workers}")
    print(f"cases by kind: {summary['kinds']}")
    outcomes = sorted(summary["outcomes"].items(), key=lambda kv: -kv[1])
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes))
    print(f"distinct crash signatures: {len(summary['crashes'])}")
    for sig, info in sorted(summary["crashes"].items(), key=lambda kv: -kv[1]["count"]):
        print(f"  {info['count']:5d}  {sig}  [{info['kind']}, stage {info['stage']}] "
              f"{info['message'][:120]!r}")
        if info.get("saved"):
            print(f"         saved: {info['saved']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=repr))
    return 1 if summary["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
