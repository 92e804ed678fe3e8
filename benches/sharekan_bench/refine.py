"""Lloyd refinement under per-edge metrics (`metric="output"`): Rust against the NumPy
reference it replaced.

- sharekan: `sharekan.refine.lloyd_refine` (Rust, `sharekan_core::refine`);
- baseline "numpy": `tests/oracle.py::refine_lloyd`, the vectorised NumPy code that
  `sharekan.refine` ran before (einsum blocks, `numpy.linalg.solve`).

Cases (8 Lloyd iterations at most, the compiler's REFINE_ITERS):

- `regression middle layer`: the per-edge metrics, coefficients and start codebook the
  compiler passes for the 32 -> 32 middle layer (E = 1024, M = 13, K = 64) of the regression
  bench's first formula (`python -m sharekan_bench regression` trains and caches the KAN; the
  case is skipped without it), compressed with K = 64/64/32, metric="output", compensate;
- `synthetic`: E = 20,000, M = 13, K = 256, metrics `mean_r s_r B_r B_r^T + 1e-3 I` of random
  basis samples, random-walk coefficients, start codebook from `gsb_fit` on the mean metric.

Repeats are interleaved round-robin; medians of wall seconds. Both must give the same codes
(checked and recorded).

Run (from the repository root, after `maturin develop --release`):
    PYTHONPATH=benches .venv/bin/python -m sharekan_bench refine            # writes benches/results/refine.{json,md}
    RAYON_NUM_THREADS=1 PYTHONPATH=benches .venv/bin/python -m sharekan_bench refine --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT / "tests"))

import oracle  # noqa: E402

import sharekan  # noqa: E402
from sharekan import _core, refine  # noqa: E402
from sharekan_bench import report  # noqa: E402


def regression_middle_layer() -> tuple[np.ndarray, ...] | None:
    """The compiler's lloyd_refine arguments for the regression KAN's middle layer."""
    import sharekan.compiler as compiler
    from sharekan_bench import regression as R
    from sharekan.demo.data import cache_dir

    cfg = R.RegressionConfig()
    name = next(iter(R.FORMULAS))
    key = (f"reg_{R.hash_name(name)}_{'-'.join(map(str, cfg.hidden))}_G{cfg.grid_size}"
           f"_s{cfg.steps}_lr{cfg.lr:g}_n{cfg.n_train}_seed{cfg.seed}.npz")
    path = cache_dir(None) / "regression" / key
    if not path.exists():
        return None
    with np.load(path) as z:
        sd = {k: z[k] for k in z.files}
    calls: list[tuple[np.ndarray, ...]] = []
    original = compiler.lloyd_refine

    def spy(metrics, coeffs, book, codes, *args, **kwargs):
        calls.append((metrics.copy(), coeffs.copy(), np.array(book), np.array(codes)))
        return original(metrics, coeffs, book, codes, *args, **kwargs)

    compiler.lloyd_refine = spy
    try:
        calib = R.make_data(name, cfg)["x_train"][: cfg.n_calibration]
        prefixes = sorted({k.rsplit(".", 1)[0] for k in sd if k.endswith("spline_weight")})
        overrides = {p: {"codebook_size": k} for p, k in zip(prefixes, (64, 64, 32))}
        sharekan.compress(sd, calibration=calib, codebook_size=64, metric="output",
                          compensate=True, overrides=overrides, seed=cfg.seed)
    finally:
        compiler.lloyd_refine = original
    return calls[1]


def synthetic(e: int = 20000, m: int = 13, k: int = 256, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(e, 24, m))  # (E, samples, M) basis values
    s = rng.uniform(0.2, 2.0, size=(e, 24, 1))  # sensitivities
    metrics = np.einsum("erm,erl->eml", b * s, b) / 24 + 1e-3 * np.eye(m)
    coeffs = np.cumsum(rng.normal(size=(e, m)), axis=1)
    fit = _core.gsb_fit(coeffs, metrics.mean(axis=0), k, 25, 1e-4, 0)
    return metrics, coeffs, fit["codebook"], fit["codes"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benches" / "results"))
    args = p.parse_args(argv)
    cases = {}
    middle = regression_middle_layer()
    if middle is None:
        print("regression KAN not cached (run `python -m sharekan_bench regression`): middle layer skipped")
    else:
        cases["regression middle layer"] = middle
    cases["synthetic"] = synthetic()
    methods = {"numpy": oracle.refine_lloyd, "sharekan": refine.lloyd_refine}
    results = []
    for label, case in cases.items():
        times: dict[str, list[float]] = {name: [] for name in methods}
        outs = {}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t = time.perf_counter()
                outs[name] = fn(*case)
                times[name].append(time.perf_counter() - t)
        (bn, cn, hn), (bs, cs, hs) = outs["numpy"], outs["sharekan"]
        row = {
            "case": label, "E": int(case[1].shape[0]), "M": int(case[1].shape[1]), "K": int(case[2].shape[0]),
            "iterations": len(hs) - 1,
            "numpy_s": statistics.median(times["numpy"]), "sharekan_s": statistics.median(times["sharekan"]),
            "all_s": times, "same_codes": bool(np.array_equal(cn, cs)),
            "codebook_max_rel_diff": float(np.abs(bn - bs).max() / np.abs(bn).max()),
            "objective_numpy": hn[-1], "objective_sharekan": hs[-1],
        }
        row["speedup"] = row["numpy_s"] / row["sharekan_s"]
        results.append(row)
        print(f"{label}: E={row['E']} M={row['M']} K={row['K']} iterations={row['iterations']}: "
              f"numpy {row['numpy_s'] * 1e3:.1f} ms, sharekan {row['sharekan_s'] * 1e3:.1f} ms "
              f"({row['speedup']:.1f}x); same codes {row['same_codes']}")
    env = report.environment(("threads", "rayon_threads"), ("cpu_count", "logical_cpus"), "machine", "numpy",
                             "load_average", command=" ".join(sys.argv), repeats=args.repeats)
    record = {"environment": env, "results": results}
    report.write_record(Path(args.out) / "refine", record, markdown(record))


def markdown(record: dict) -> str:
    env, results = record["environment"], record["results"]
    lines = ["# Lloyd refinement under per-edge metrics: Rust vs the NumPy reference", "",
             f"Median wall time of {env['repeats']} interleaved repeats; rayon threads {env['threads']}, "
             f"{env['cpu_count']} CPUs, load average {env['load_average'][0]:.1f} at the end; "
             f"`{env['command']}`.", ""]
    lines += report.md_table(
        ["case", "E", "M", "K", "iterations", "NumPy (ms)", "sharekan (ms)", "speed-up", "same codes"],
        [[r["case"], r["E"], r["M"], r["K"], r["iterations"], f"{r['numpy_s'] * 1e3:.1f}",
          f"{r['sharekan_s'] * 1e3:.1f}", f"{r['speedup']:.1f}x", r["same_codes"]] for r in results])
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
