"""Compile benchmark: sharekan's spherical k-means against scikit-learn and faiss.

One KAN layer of 1280 -> 256 (327,680 edges), G = 10, k = 3 (M = 13), K = 256, 25
iterations, with coefficients of a TRAINED head: a KAN 1280 -> 256 -> 10 trained (seeded,
cached under benches/.cache/) on fixed random-projection features of Fashion-MNIST
(Debian package `dataset-fashion-mnist`), see `trained_head`.

All methods cluster the SAME vectors, the shapes of the whitened residuals of the layer
under the default `function` metric (SPEC §2.2-2.3):

- sharekan: `sharekan._core.spherical_kmeans(residuals)` (pure k-means time) and
  `sharekan._core.gsb_fit(coeffs, metric)` (whole layer fit: whitening, decomposition,
  k-means, map back); `sharekan.compress` end to end when it exists.
- scikit-learn `KMeans(n_init=1, max_iter=25, tol=0, init="k-means++")` and faiss
  `Kmeans(niter=25, max_points_per_centroid >= E / K)`, which are Euclidean and not
  sign-invariant, get the sign-canonicalised unit shapes s_e (largest-|.| component made
  positive) with sample weights gamma_e^2 (both support weights).

Every result is scored by this script with the same float64 objective
J = sum_e gamma_e^2 (1 - <s_e, c_q>^2) (SPEC §2.4) using the method's own codes and its
centroids normalised (optimal gains g_e = <r_e, c_q>), and again after re-choosing each
edge's code as argmax_q |<s_e, c_q>| (what the decoder can do for free with those
centroids).

Then the layer is compressed at K = 16, 256, 4096 and the compression ratio and the
coefficient / function SQNR are reported.

Run (from the repository root, after `maturin develop --release`):
    PYTHONPATH=benches .venv/bin/python -m sharekan_bench kmeans            # writes benches/results/kmeans.{json,md}
    PYTHONPATH=benches .venv/bin/python -m sharekan_bench kmeans --repeats 1 --sweep-ks 16,256   # quicker
"""

from __future__ import annotations

import argparse
import os
import sys


def _early_threads() -> int:
    """Read --threads before numpy/torch/faiss load their thread pools."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            threads = int(sys.argv[i + 1])
        elif arg.startswith("--threads="):
            threads = int(arg.split("=", 1)[1])
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    return int(threads or 1)


THREADS = _early_threads()

import gzip  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT / "python"))

from sharekan_bench import report  # noqa: E402

CACHE = ROOT / "benches" / ".cache"
RESULTS = ROOT / "benches" / "results"
FMNIST = Path("/usr/share/datasets/fashion-mnist")

#: Recipe of the trained head (changing any value retrains; it is part of the cache key).
HEAD_RECIPE: dict[str, object] = {
    "data": "fashion-mnist (Debian dataset-fashion-mnist), first n_train train images",
    "features": "x/255 standardised per pixel -> fixed Gaussian projection 784x1280 "
    "(numpy default_rng(seed), /sqrt(784)) -> standardised per feature -> tanh",
    "n_train": 60000,
    "widths": [1280, 256, 10],
    "grid_size": 10,
    "spline_order": 3,
    "epochs": 5,
    "batch_size": 256,
    "lr": 1e-3,
    "optimizer": "Adam",
    "seed": 0,
}
LAYER = "layers.0"


# --------------------------------------------------------------------------- data + head
def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def fashion_features(n_train: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random-projection features of Fashion-MNIST in (-1, 1).

    Returns:
        train_x (n_train, 1280) f32, train_y (n_train,) i64, test_x (10000, 1280) f32,
        test_y (10000,) i64.
    """
    if not FMNIST.exists():
        raise SystemExit(
            f"{FMNIST} not found: install the Debian package with "
            "`apt-get install -y dataset-fashion-mnist`"
        )
    tr_x = _read_idx(FMNIST / "train-images-idx3-ubyte.gz", 16).reshape(-1, 784)[:n_train]
    tr_y = _read_idx(FMNIST / "train-labels-idx1-ubyte.gz", 8)[:n_train].astype(np.int64)
    te_x = _read_idx(FMNIST / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784)
    te_y = _read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    tr_x = tr_x.astype(np.float32) / 255.0
    te_x = te_x.astype(np.float32) / 255.0
    mean, std = tr_x.mean(0), tr_x.std(0) + 1e-3
    rng = np.random.default_rng(seed)
    proj = (rng.standard_normal((784, 1280)) / np.sqrt(784)).astype(np.float32)
    tr_z = ((tr_x - mean) / std) @ proj  # (n_train, 1280)
    te_z = ((te_x - mean) / std) @ proj  # (10000, 1280)
    zm, zs = tr_z.mean(0), tr_z.std(0) + 1e-6
    return (
        np.tanh((tr_z - zm) / zs).astype(np.float32),
        tr_y,
        np.tanh((te_z - zm) / zs).astype(np.float32),
        te_y,
    )


def _reference_kan():  # type: ignore[no-untyped-def]
    """sharekan/torch/kan.py's KAN, loaded by path (it needs torch only, not sharekan._core)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sharekan_reference_kan", ROOT / "python" / "sharekan" / "torch" / "kan.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.KAN


def trained_head() -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The trained 1280 -> 256 -> 10 KAN head (efficient-kan state_dict), cached.

    Returns:
        arrays: the state_dict (float32, efficient-kan keys) plus "data.test_x" (1000, 1280)
            f32 held-out features (inputs of layers.0); info: recipe, accuracy, time.
    """
    key = hashlib.sha256(json.dumps(HEAD_RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    path = CACHE / f"fmnist_kan_head_{key}.npz"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        return arrays, json.loads(info_path.read_text())

    import torch
    from torch.nn import functional as F

    KAN = _reference_kan()
    r = HEAD_RECIPE
    seed = int(r["seed"])  # type: ignore[arg-type]
    print(f"training the KAN head once (cached at {path}) ...", flush=True)
    tr_x, tr_y, te_x, te_y = fashion_features(int(r["n_train"]), seed)  # type: ignore[arg-type]
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    model = KAN(list(r["widths"]), grid_size=int(r["grid_size"]),  # type: ignore[arg-type]
                spline_order=int(r["spline_order"]))  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=float(r["lr"]))  # type: ignore[arg-type]
    xt, yt = torch.from_numpy(tr_x), torch.from_numpy(tr_y)
    gen = torch.Generator().manual_seed(seed)
    bs = int(r["batch_size"])  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for epoch in range(int(r["epochs"])):  # type: ignore[arg-type]
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for s in range(0, len(xt), bs):
            idx = perm[s : s + bs]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1}: loss {total / len(xt):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    state = {k: v.detach().numpy().copy().astype(np.float32)
             for k, v in model.state_dict().items()}

    def accuracy() -> float:
        with torch.no_grad():
            logits = torch.cat([model(torch.from_numpy(te_x[i : i + 1000]))
                                for i in range(0, len(te_x), 1000)])
        return float((logits.argmax(1) == torch.from_numpy(te_y)).float().mean())

    acc = accuracy()
    with torch.no_grad():  # ablation: how much the spline path matters
        for layer in model.layers:
            layer.spline_weight.zero_()
    acc_no_spline = accuracy()
    info = {"recipe": r, "test_accuracy": acc, "test_accuracy_spline_path_zeroed": acc_no_spline,
            "train_seconds": round(train_s, 1), "torch_threads": THREADS,
            "cache_file": str(path.relative_to(ROOT))}
    CACHE.mkdir(parents=True, exist_ok=True)
    # 1000 held-out feature rows: inputs of the benchmarked layer, for output SQNR
    np.savez(path, **state, **{"data.test_x": te_x[:1000]})
    info_path.write_text(json.dumps(info, indent=1))
    print(f"  test accuracy {acc:.4f} (spline path zeroed: {acc_no_spline:.4f})", flush=True)
    state["data.test_x"] = te_x[:1000]
    return state, info


# --------------------------------------------------------------------------- the layer
def layer_coeffs(state: dict[str, np.ndarray], layer: str = LAYER) -> dict[str, np.ndarray]:
    """Folded coefficients of one efficient-kan layer, input-major (ARCHITECTURE §1).

    Returns:
        coeffs (E, M) f64 with E = n_in * n_out, edge e = i * n_out + o; grid (n_in, NG) f64;
        base (n_in, n_out) f64; and the layer's raw arrays under their state_dict names.
    """
    spline = state[f"{layer}.spline_weight"].astype(np.float64)  # (n_out, n_in, M)
    scaler = state[f"{layer}.spline_scaler"].astype(np.float64)  # (n_out, n_in)
    folded = (spline * scaler[..., None]).transpose(1, 0, 2)  # (n_in, n_out, M)
    n_in, n_out, m = folded.shape
    return {
        "coeffs": np.ascontiguousarray(folded.reshape(n_in * n_out, m)),
        "grid": state[f"{layer}.grid"].astype(np.float64),
        "base": state[f"{layer}.base_weight"].astype(np.float64).T.copy(),
        "n_in": n_in, "n_out": n_out, "M": m,  # type: ignore[dict-item]
    }


def bspline_basis_np(x: np.ndarray, grid: np.ndarray, k: int) -> np.ndarray:
    """efficient-kan's recursion in NumPy: x (B, n_in), grid (n_in, NG) -> (B, n_in, M)."""
    x = x[..., None]
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).astype(x.dtype)
    for p in range(1, k + 1):
        left = (x - grid[:, : -(p + 1)]) / (grid[:, p:-1] - grid[:, : -(p + 1)])
        right = (grid[:, p + 1 :] - x) / (grid[:, p + 1 :] - grid[:, 1:(-p)])
        bases = left * bases[:, :, :-1] + right * bases[:, :, 1:]
    return bases


def function_gram_np(grid: np.ndarray, k: int) -> np.ndarray:
    """The `function` metric (ARCHITECTURE §2) by Gauss-Legendre, exact for splines."""
    g = grid.shape[1] - 2 * k - 1
    nodes, weights = np.polynomial.legendre.leggauss(k + 1)
    rows, counts = np.unique(grid, axis=0, return_counts=True)
    total = np.zeros((g + k, g + k))
    for row, count in zip(rows, counts):
        a, b = row[k], row[g + k]
        lo, hi = row[k : g + k], row[k + 1 : g + k + 1]  # the G intervals inside [a, b]
        xs = (0.5 * (hi - lo)[:, None] * nodes + 0.5 * (hi + lo)[:, None]).ravel()
        ws = (0.5 * (hi - lo)[:, None] * weights).ravel()
        basis = bspline_basis_np(xs[:, None], row[None, :], k)[:, 0, :]  # (P, M)
        total += count * (basis.T * ws) @ basis / (b - a)
    return total / grid.shape[0]


def whiten(coeffs: np.ndarray, metric: np.ndarray) -> dict[str, np.ndarray]:
    """SPEC §2.2-2.3: v = L^T w, u = L^T 1/||L^T 1||, beta, residual r, gain gamma, shape s."""
    chol = np.linalg.cholesky(metric)  # lower, R = L L^T
    v = coeffs @ chol  # (E, M): rows are (L^T w_e)^T
    lt1 = np.ones(metric.shape[0]) @ chol
    u = lt1 / np.linalg.norm(lt1)
    beta = v @ u
    res = v - beta[:, None] * u  # (E, M)
    gamma = np.linalg.norm(res, axis=1)
    flat = gamma <= 1e-12 * gamma.max()
    shapes = np.where(flat[:, None], 0.0, res / np.where(flat, 1.0, gamma)[:, None])
    # sign canonicalisation for the Euclidean baselines: largest-|.| component positive
    top = np.abs(shapes).argmax(axis=1)
    sign = np.where(shapes[np.arange(len(shapes)), top] < 0, -1.0, 1.0)
    return {"chol": chol, "u": u, "beta": beta, "residuals": np.ascontiguousarray(res),
            "gamma": gamma, "shapes_canon": np.ascontiguousarray(shapes * sign[:, None]),
            "norm_lt1": np.linalg.norm(lt1)}


# --------------------------------------------------------------------------- scoring
def best_codes(res: np.ndarray, centroids: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """argmax_q |<r_e, c_q>| in float64, ties to the lowest index."""
    out = np.empty(len(res), dtype=np.int64)
    for s in range(0, len(res), chunk):
        out[s : s + chunk] = np.abs(res[s : s + chunk] @ centroids.T).argmax(axis=1)
    return out


def score(res: np.ndarray, u: np.ndarray, centroids: np.ndarray, codes: np.ndarray) -> dict:
    """Objective J = sum gamma^2 (1 - <s, c_q>^2) of one method's result, float64.

    Centroids are projected off u and normalised (the decoder stores unit shapes; gains
    g_e = <r_e, c_q> are then optimal). `J_own` keeps the method's codes, `J_reassigned`
    re-chooses each code as argmax |<s_e, c_q>| over the same centroids.
    """
    c = np.asarray(centroids, dtype=np.float64)
    c = c - np.outer(c @ u, u)
    n = np.linalg.norm(c, axis=1)
    c = c / np.where(n > 0, n, 1.0)[:, None]
    codes = np.asarray(codes, dtype=np.int64)
    energy = float(np.einsum("em,em->", res, res))
    proj = np.einsum("em,em->e", res, c[codes])
    j_own = energy - float(proj @ proj)
    best = best_codes(res, c)
    proj_b = np.einsum("em,em->e", res, c[best])
    j_re = energy - float(proj_b @ proj_b)
    return {"J_own": j_own, "J_reassigned": j_re, "J_own_rel": j_own / energy,
            "J_reassigned_rel": j_re / energy, "energy": energy,
            "codes_used": len(np.unique(codes)), "codes_changed_by_reassign":
            int((best != codes).sum())}


# --------------------------------------------------------------------------- methods
def numpy_spherical_kmeans(res: np.ndarray, k: int, n_iter: int, seed: int) -> dict:
    """A plain NumPy weighted sign-invariant spherical k-means (SPEC §2.4), for reference.

    Not sharekan: a straightforward vectorised prototype (k-means++ D^2 init, argmax |score|
    assignment in float64, eigh update, reseed empty clusters from the largest errors).
    """
    e, m = res.shape
    rng = np.random.default_rng(seed)
    g2 = np.einsum("em,em->e", res, res)
    cent = np.zeros((k, m))
    p = g2 / g2.sum()
    first = rng.choice(e, p=p)
    cent[0] = res[first] / np.sqrt(g2[first])
    dist = g2 - (res @ cent[0]) ** 2
    for q in range(1, k):
        d = np.maximum(dist, 0.0)
        if d.sum() <= 0:
            break
        pick = int(np.searchsorted(np.cumsum(d), rng.random() * d.sum(), side="right"))
        pick = min(pick, e - 1)
        cent[q] = res[pick] / np.sqrt(g2[pick])
        dist = np.minimum(dist, g2 - (res @ cent[q]) ** 2)
    codes = best_codes(res, cent)
    objective = []
    for _ in range(n_iter):
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(k + 1))
        scatter = np.zeros((k, m, m))
        for q in range(k):
            block = res[order[bounds[q] : bounds[q + 1]]]
            scatter[q] = block.T @ block
        _vals, vecs = np.linalg.eigh(scatter)
        new = vecs[:, :, -1]  # (K, M) top eigenvectors
        empty = bounds[1:] == bounds[:-1]
        if empty.any():
            err = g2 - np.einsum("em,em->e", res, cent[codes]) ** 2
            worst = np.argsort(-err, kind="stable")[: int(empty.sum())]
            new[empty] = res[worst] / np.sqrt(g2[worst])[:, None]
        cent = new
        codes = best_codes(res, cent)
        objective.append(float(g2.sum() - (np.einsum("em,em->e", res, cent[codes]) ** 2).sum()))
    return {"centroids": cent, "codes": codes, "objective": objective}


def have_core() -> bool:
    try:
        from sharekan import _core
    except ImportError:
        return False
    return hasattr(_core, "spherical_kmeans")


def _split(row: dict, init_s: float, init_cpu_s: float | None = None) -> None:
    """Record the initialisation time and the mean time per iteration after it."""
    row["init_median_s"] = init_s
    iters = max(int(row.get("iterations") or 0), 1)
    row["per_iteration_s"] = (row["median_s"] - init_s) / iters
    if init_cpu_s is not None:
        row["init_median_cpu_s"] = init_cpu_s
        row["per_iteration_cpu_s"] = (row["median_cpu_s"] - init_cpu_s) / iters


def run_methods(w: dict, coeffs: np.ndarray, metric: np.ndarray, k: int, n_iter: int,
                seed: int, repeats: int, with_numpy: bool) -> list[dict]:
    """Time every method on the same data and score each result with the same J.

    Repeats are interleaved round-robin (run 1 of every method, then run 2, ...), so a
    load change on the shared machine hits all methods alike; the median is reported.
    """
    res, u, gamma = w["residuals"], w["u"], w["gamma"]
    shapes32 = w["shapes_canon"].astype(np.float32)
    weights = gamma**2
    import faiss
    from sklearn.cluster import KMeans, kmeans_plusplus
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(THREADS)
    # name -> (what is timed, fn () -> output)
    specs: dict[str, tuple[str, object]] = {}
    if have_core():
        from sharekan import _core

        specs["sharekan spherical_kmeans"] = (
            "k-means on whitened residuals (E, M) f64",
            lambda: _core.spherical_kmeans(res, k, n_iter, 0.0, seed))
        # profile: n_iter = 0 runs the k-means++ initialisation and one assignment only
        specs["init: sharekan"] = ("", lambda: _core.spherical_kmeans(res, k, 0, 0.0, seed))
        specs["sharekan gsb_fit"] = (
            "whole layer fit: coeffs (E, M) + metric -> codebook, codes, gains, biases",
            lambda: _core.gsb_fit(coeffs, metric, k, n_iter, 0.0, seed))
    else:
        print("  sharekan._core not importable: sharekan rows skipped", flush=True)

    def sk():  # type: ignore[no-untyped-def]
        with threadpool_limits(THREADS):
            return KMeans(n_clusters=k, n_init=1, max_iter=n_iter, tol=0.0, init="k-means++",
                          random_state=seed, algorithm="lloyd").fit(shapes32,
                                                                   sample_weight=weights)

    def sk_init():  # type: ignore[no-untyped-def]
        with threadpool_limits(THREADS):
            return kmeans_plusplus(shapes32, k, sample_weight=weights, random_state=seed)

    specs["scikit-learn KMeans (lloyd, f32)"] = (
        "fit on sign-canonical unit shapes, sample_weight = gamma^2", sk)
    specs["init: scikit-learn"] = ("", sk_init)

    def faiss_fn(init):  # type: ignore[no-untyped-def]
        def fa():  # type: ignore[no-untyped-def]
            km = faiss.Kmeans(shapes32.shape[1], k, niter=n_iter, seed=seed + 1234,
                              max_points_per_centroid=len(shapes32) // k + 1,
                              min_points_per_centroid=1, verbose=False)
            km.cp.init_method = init
            km.train(shapes32, weights=weights.astype(np.float32))
            _, labels = km.index.search(shapes32, 1)
            return km, labels[:, 0]
        return fa

    for init_name, init in (("random", faiss.ClusteringInitMethod_RANDOM),
                            ("k-means++", faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)):
        specs[f"faiss Kmeans (init {init_name}, f32)"] = (
            "train (all points, weights = gamma^2) + final assignment search",
            faiss_fn(init))

    times: dict[str, list[float]] = {name: [] for name in specs}
    cpu: dict[str, list[float]] = {name: [] for name in specs}
    outputs: dict[str, object] = {}
    for rep in range(repeats):
        for name, (_, fn) in specs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            outputs[name] = fn()  # type: ignore[operator]
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"  run {rep + 1}/{repeats} {name:38s} {times[name][-1]:8.3f} s wall "
                  f"{cpu[name][-1]:8.3f} s CPU", flush=True)

    rows = []

    def add(name: str, centroids, codes, extra=None):  # type: ignore[no-untyped-def]
        t = times[name]
        row = {"method": name, "timed": specs[name][0], "seconds": t,
               "median_s": statistics.median(t), "cpu_seconds": cpu[name],
               "median_cpu_s": statistics.median(cpu[name]), **score(res, u, centroids, codes)}
        row.update(extra or {})
        rows.append(row)
        print(f"  {name:38s} {row['median_s']:8.3f} s  J/energy {row['J_own_rel']:.5f} "
              f"(reassigned {row['J_reassigned_rel']:.5f})", flush=True)

    if "sharekan spherical_kmeans" in outputs:
        out = outputs["sharekan spherical_kmeans"]
        add("sharekan spherical_kmeans", out["centroids"], out["codes"],  # type: ignore[index]
            {"iterations": int(out["iterations"]), "reseeds": int(out["reseeds"]),  # type: ignore[index]
             "objective_reported": float(out["objective"][-1])})  # type: ignore[index]
        _split(rows[-1], statistics.median(times["init: sharekan"]),
               statistics.median(cpu["init: sharekan"]))
        fit = outputs["sharekan gsb_fit"]
        # gsb_fit's codebook is in coefficient space: whiten it back (c = L^T C) to score it
        add("sharekan gsb_fit", fit["codebook"] @ w["chol"], fit["codes"],  # type: ignore[index]
            {"iterations": int(fit["iterations"])})  # type: ignore[index]
    def inertia(centroids, labels) -> float:  # type: ignore[no-untyped-def]
        # the Euclidean methods' own objective, recomputed in f64 on their input
        diff = w["shapes_canon"] - np.asarray(centroids, dtype=np.float64)[np.asarray(labels)]
        return float(weights @ np.einsum("em,em->e", diff, diff))

    km = outputs["scikit-learn KMeans (lloyd, f32)"]
    add("scikit-learn KMeans (lloyd, f32)", km.cluster_centers_, km.labels_,  # type: ignore[attr-defined]
        {"iterations": int(km.n_iter_),  # type: ignore[attr-defined]
         "inertia_weighted": inertia(km.cluster_centers_, km.labels_)})  # type: ignore[attr-defined]
    _split(rows[-1], statistics.median(times["init: scikit-learn"]),
           statistics.median(cpu["init: scikit-learn"]))
    for init_name in ("random", "k-means++"):
        name = f"faiss Kmeans (init {init_name}, f32)"
        fk, labels = outputs[name]  # type: ignore[misc]
        add(name, fk.centroids, labels,
            {"inertia_weighted": inertia(fk.centroids, labels),
             "iterations": len(fk.iteration_stats)})
        stats = [st["time"] for st in fk.iteration_stats]
        if len(stats) > 1:  # faiss records cumulative seconds after each iteration
            # from the last run's own clock: init = time to the end of iteration 1 minus
            # one mean iteration (mixing it with the median of other runs can go negative)
            per_iter = (stats[-1] - stats[0]) / (len(stats) - 1)
            rows[-1]["init_median_s"] = max(stats[0] - per_iter, 0.0)
            rows[-1]["per_iteration_s"] = per_iter

    if with_numpy:
        name = "NumPy spherical k-means (this script)"
        specs[name] = ("reference prototype, float64, one run", None)
        c0, t0 = time.process_time(), time.perf_counter()
        out = numpy_spherical_kmeans(res, k, n_iter, seed)
        times[name] = [time.perf_counter() - t0]
        cpu[name] = [time.process_time() - c0]
        add(name, out["centroids"], out["codes"], {"iterations": n_iter})
    return rows


# --------------------------------------------------------------------------- K sweep
def bytes_accounting(e: int, n_in: int, n_out: int, m: int, ng: int, k: int) -> dict:
    """Own storage accounting of one layer (ARCHITECTURE §6 tensors), in bytes."""
    bits = 0 if k == 1 else int(np.ceil(np.log2(k)))
    codes = (e * bits + 7) // 8
    grid = 4 * n_in * ng
    dense = 4 * (e * m + e + e) + grid  # spline_weight + spline_scaler + base_weight + grid
    int8_edge = codes + k * m + 4 * k + (e + 4 * n_out) * 3 + grid  # gains, edge bias, base
    int8_fold = codes + k * m + 4 * k + (e + 4 * n_out) * 2 + 4 * n_out + grid
    float32 = codes + 4 * k * m + 4 * e * 3 + grid
    return {"bits": bits, "bytes_dense_fp32": dense, "bytes_int8_edge_bias": int8_edge,
            "bytes_int8_folded_bias": int8_fold, "bytes_float32_gsb": float32}


def sqnrs(coeffs: np.ndarray, decoded: np.ndarray, metric: np.ndarray) -> dict:
    """Coefficient and function SQNR (dB) of decoded coefficients, over the whole layer."""
    diff = coeffs - decoded
    coef = 10 * np.log10(np.einsum("em,em->", coeffs, coeffs) / np.einsum("em,em->", diff, diff))
    func = 10 * np.log10(np.einsum("em,mn,en->", coeffs, metric, coeffs)
                         / np.einsum("em,mn,en->", diff, metric, diff))
    return {"coeff_sqnr_db": float(coef), "func_sqnr_db": float(func)}


def output_sqnr(layer: dict, coeffs_hat: np.ndarray, base_hat: np.ndarray, x: np.ndarray,
                k: int) -> float:
    """SQNR (dB) of the layer's outputs on held-out inputs x (B, n_in), dense NumPy forward."""
    basis = bspline_basis_np(x.astype(np.float64), layer["grid"], k)  # (B, n_in, M)
    flat = basis.reshape(len(x), -1)  # (B, n_in * M), index i * M + m
    silu = x / (1 + np.exp(-x.astype(np.float64)))
    n_in, n_out, m = layer["n_in"], layer["n_out"], layer["M"]

    def fwd(c: np.ndarray, b: np.ndarray) -> np.ndarray:
        w = c.reshape(n_in, n_out, m).transpose(0, 2, 1).reshape(n_in * m, n_out)
        return flat @ w + silu @ b

    y = fwd(layer["coeffs"], layer["base"])
    d = y - fwd(coeffs_hat, base_hat)
    return float(10 * np.log10((y * y).sum() / (d * d).sum()))


def sweep(state: dict, layer: dict, metric: np.ndarray, ks: list[int], n_iter: int,
          seed: int, calib_x: np.ndarray) -> list[dict]:
    """Compress the layer at each K: ratio and SQNRs (sharekan.compress when available)."""
    spline_k = layer["grid"].shape[1] - layer["M"] - 1
    e, m = layer["coeffs"].shape
    rows = []
    try:
        import sharekan

        compress = sharekan.compress
    except (ImportError, AttributeError):
        compress = None
    for k in ks:
        row: dict = {"K": k, **bytes_accounting(e, layer["n_in"], layer["n_out"], m,
                                                 layer["grid"].shape[1], k)}
        if have_core():
            from sharekan import _core

            t0 = time.perf_counter()
            fit = _core.gsb_fit(layer["coeffs"], metric, k, n_iter, 0.0, seed)
            row["gsb_fit_s"] = time.perf_counter() - t0
            decoded = (fit["gains"][:, None] * fit["codebook"][fit["codes"]]
                       + fit["biases"][:, None])
            row["float32_gsb"] = {"ratio": row["bytes_dense_fp32"] / row["bytes_float32_gsb"],
                                  **sqnrs(layer["coeffs"], decoded, metric),
                                  "output_sqnr_db": output_sqnr(layer, decoded, layer["base"],
                                                                calib_x, spline_k)}
        if compress is not None:
            sd = {key: v for key, v in state.items() if key.startswith(LAYER + ".")}
            t0 = time.perf_counter()
            model = compress(sd, codebook_size=k, n_iter=n_iter, seed=seed,
                             calibration={LAYER: calib_x})
            row["compress_s"] = time.perf_counter() - t0
            rep = model.report.layers[0]
            back = layer_coeffs(model.decompress())
            row["sharekan_compress"] = {
                "bias": rep.bias, "int8": rep.int8, "base": rep.base,
                "bytes_compressed": rep.bytes_compressed, "bytes_dense_fp32": rep.bytes_dense_fp32,
                "ratio": rep.ratio, "report_coeff_sqnr_db": rep.coeff_sqnr_db,
                "report_func_sqnr_db": rep.func_sqnr_db, "report_output_sqnr_db":
                rep.output_sqnr_db, "frac_inputs_outside_grid": rep.frac_inputs_outside_grid,
                "codebook_utilisation": rep.codebook_utilisation,
                "tensor_bytes": rep.tensor_bytes, "model_nbytes": int(model.nbytes),
                **{f"own_{key}": v for key, v in
                   sqnrs(layer["coeffs"], back["coeffs"], metric).items()},
                "own_output_sqnr_db": output_sqnr(layer, back["coeffs"], back["base"],
                                                  calib_x, spline_k),
            }
        elif not have_core() and k <= 256:
            out = numpy_spherical_kmeans(WHITE["residuals"], k, n_iter, seed)
            c = out["centroids"]
            gains = np.einsum("em,em->e", WHITE["residuals"], c[out["codes"]])
            decoded_white = gains[:, None] * c[out["codes"]] + np.outer(WHITE["beta"], WHITE["u"])
            decoded = np.linalg.solve(WHITE["chol"].T, decoded_white.T).T  # L^T w = v
            row["float32_gsb"] = {
                "source": "NumPy reference k-means of this script (sharekan._core missing)",
                "ratio": row["bytes_dense_fp32"] / row["bytes_float32_gsb"],
                **sqnrs(layer["coeffs"], decoded, metric),
                "output_sqnr_db": output_sqnr(layer, decoded, layer["base"], calib_x, spline_k)}
        print(f"  K={k}: {json.dumps({a: b for a, b in row.items() if not isinstance(b, dict)})}",
              flush=True)
        rows.append(row)
    return rows


WHITE: dict = {}


# --------------------------------------------------------------------------- report
def machine_info() -> dict:
    return report.environment(
        "platform", "python", ("cpu", "cpu_model"), "logical_cpus", "affinity_cpus",
        ("threads_used", lambda: THREADS), ("loadavg_at_start", "load_average"), "numpy",
        "scikit-learn", "faiss", "sharekan", "git_commit")


def _f(x: object, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)  # type: ignore[arg-type]


def markdown(result: dict) -> str:
    mi, cfg, head = result["machine"], result["config"], result["head"]
    lines = [
        "# k-means compile benchmark (one 1280 -> 256 KAN layer)", "",
        f"Generated by `{result['command']}` on {result['date']}.", "",
        (f"- Machine: {mi['cpu']}, {mi['affinity_cpus']} CPUs available "
        f"(load average at start {', '.join(f'{v:.2f}' for v in mi['loadavg_at_start'])}; "
        "the machine is shared), "
        f"**{mi['threads_used']} threads** for every library (RAYON_NUM_THREADS, "
        "OMP_NUM_THREADS, threadpoolctl, faiss.omp_set_num_threads)."),
        (f"- Versions: sharekan {mi['sharekan']} (git {mi.get('git_commit', '?')}), numpy "
        f"{mi['numpy']}, scikit-learn {mi['scikit-learn']}, faiss-cpu {mi.get('faiss', '-')}, "
        f"Python {mi['python']}."),
        (f"- Layer: `{LAYER}` of a KAN {head['recipe']['widths']} (G = {cfg['G']}, "
        f"k = {cfg['k']}, M = {cfg['M']}), E = {cfg['E']:,} edges, trained on Fashion-MNIST "
        f"random-projection features ({head['recipe']['n_train']} images, "
        f"{head['recipe']['epochs']} epochs; test accuracy {head['test_accuracy']:.4f}, "
        f"{head['test_accuracy_spline_path_zeroed']:.4f} with the spline path zeroed). "
        f"The coefficients are trained, not init noise: spline_weight std "
        f"{cfg['spline_weight_std']:.4f} against {cfg['spline_weight_std_at_init']:.4f} at "
        f"initialisation; correlation of adjacent coefficients of an edge "
        f"{cfg['adjacent_coefficient_correlation']:.2f}."),
        (f"- Clustered data: the whitened residuals of the layer under the `{cfg['metric']}` "
        f"metric; K = {cfg['K']}, {cfg['n_iter']} iterations, tol = 0, seed {cfg['seed']}; "
        f"times are the median of {cfg['repeats']} runs in one process."),
        ("- J = sum_e gamma_e^2 (1 - <s_e, c_q>^2), float64, computed by this script for "
        "every method from its codes and its normalised centroids (gains <r_e, c_q>, optimal "
        "for the code); 'reassigned' re-chooses each code as argmax |<s_e, c_q>|. J/energy "
        "is J / sum gamma_e^2 (lower is better)."), "",
    ]
    ref = next((r for r in result["methods"] if r["method"] == "sharekan spherical_kmeans"),
               None)
    lines += report.md_table(
        ["method", "what is timed", "median wall s", "runs wall (s)", "median CPU s",
         "init wall s", "per iter wall s", "iterations", "J/energy own codes",
         "J/energy reassigned", "J vs sharekan", "codes used"],
        [[r["method"], r["timed"], f"{r['median_s']:.3f}",
          ", ".join(f"{t:.2f}" for t in r["seconds"]), f"{r['median_cpu_s']:.3f}",
          _f(r.get("init_median_s")), _f(r.get("per_iteration_s")), r.get("iterations", "-"),
          f"{r['J_own_rel']:.5f}", f"{r['J_reassigned_rel']:.5f}",
          "-" if ref is None else f"{r['J_own'] / ref['J_own']:.4f}x", r["codes_used"]]
         for r in result["methods"]],
        align="llrlrrrrrrrr")
    if result.get("speed"):
        lines += ["", "Speed-ups of sharekan's k-means (time of the other / time of sharekan; "
                  "wall, then CPU seconds summed over threads): "
                  + "; ".join(f"{k} {v[0]:.2f}x wall, {v[1]:.2f}x CPU"
                              for k, v in result["speed"].items()) + "."]
    if result.get("verdict"):
        lines += ["", (f"**Target** (issue 2: at least as fast as faiss, 5x faster than "
                  f"scikit-learn, objective no worse): {result['verdict']}")]
    lines += ["", "## Compression of the layer at several K", "",
              ("Dense FP32 = spline_weight + spline_scaler + base_weight + grid. "
              "`sharekan.compress` uses its defaults (int8 codebook, gains, biases, base "
              "weights; bias mode chosen by `bias=\"auto\"` from the calibration inputs: 1,000 "
              "held-out feature rows). Float GSB = `gsb_fit` in float (codes bit-packed, "
              "float32 gains/biases, base weights untouched), own byte accounting. SQNR over "
              "the whole layer: coefficients (plain L2), functions (L2 over the grid range, "
              "the `function` metric) and layer outputs on the calibration rows."), ""]

    def sweep_row(r: dict) -> list:
        c = r.get("sharekan_compress", {})
        g = r.get("float32_gsb", {})
        return [r["K"], r["bits"], _f(r.get("compress_s"), ".2f"), _f(c.get("ratio"), ".2f"),
                c.get("bias", "-"), _f(c.get("own_coeff_sqnr_db"), ".2f"),
                _f(c.get("own_func_sqnr_db"), ".2f"), _f(c.get("own_output_sqnr_db"), ".2f"),
                _f(c.get("codebook_utilisation"), ".3f"), _f(g.get("ratio"), ".2f"),
                f"{_f(g.get('coeff_sqnr_db'), '.2f')} / {_f(g.get('func_sqnr_db'), '.2f')} / "
                f"{_f(g.get('output_sqnr_db'), '.2f')}", _f(r.get("gsb_fit_s"), ".2f")]

    lines += report.md_table(
        ["K", "bits", "compress s", "ratio", "bias", "coeff SQNR dB", "function SQNR dB",
         "output SQNR dB", "codebook use", "float GSB ratio",
         "float coeff / func / output SQNR dB", "gsb_fit s"],
        [sweep_row(r) for r in result["sweep"]], align="rrrrlrrrrrlr")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "Rerun: `" + result["command"] + "` (the trained head is cached under "
              "benches/.cache/; delete it to retrain, 3 to 8 minutes on 2 cores).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="k-means compile benchmark (see module doc)")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--n-iter", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep-ks", default="16,256,4096")
    ap.add_argument("--no-numpy", action="store_true", help="skip the NumPy reference row")
    ap.add_argument("--out", default=str(RESULTS / "kmeans"))
    args = ap.parse_args(argv)

    state, head = trained_head()
    calib_x = state.pop("data.test_x")
    layer = layer_coeffs(state)
    spline_k = layer["grid"].shape[1] - layer["M"] - 1
    metric = function_gram_np(layer["grid"], spline_k)
    notes = []
    if have_core() and hasattr(__import__("sharekan")._core, "bspline_gram"):
        from sharekan import _core

        core_metric = _core.bspline_gram(layer["grid"], spline_k)
        diff = float(np.abs(core_metric - metric).max())
        notes.append(f"function metric: sharekan._core.bspline_gram agrees with this script's "
                     f"Gauss-Legendre Gram to {diff:.2e} (max abs); the core's is used.")
        metric = core_metric
    WHITE.update(whiten(layer["coeffs"], metric))
    sw = state[f"{LAYER}.spline_weight"]
    m = sw.shape[-1]
    grid_size = m - spline_k
    adjacent = np.corrcoef(layer["coeffs"].T)
    coeff_stats = {
        "spline_weight_std": float(sw.std()),
        "spline_weight_std_at_init": 0.1 / grid_size / np.sqrt(3.0),
        "adjacent_coefficient_correlation": float(np.mean(np.diag(adjacent, 1))),
    }
    e, m = layer["coeffs"].shape
    print(f"layer {LAYER}: E={e} M={m}, threads={THREADS}", flush=True)

    methods = run_methods(WHITE, layer["coeffs"], metric, args.k, args.n_iter, args.seed,
                          args.repeats, not args.no_numpy)
    by = {r["method"]: r for r in methods}
    speed, verdict = {}, None
    sk_row = by.get("sharekan spherical_kmeans")
    if sk_row:
        for name, r in by.items():
            if not name.startswith("sharekan"):
                speed[f"vs {name}"] = (r["median_s"] / sk_row["median_s"],
                                       r["median_cpu_s"] / sk_row["median_cpu_s"])
        fa = by["faiss Kmeans (init random, f32)"]
        fa2 = by["faiss Kmeans (init k-means++, f32)"]
        sl = by["scikit-learn KMeans (lloyd, f32)"]

        def meets(key: str) -> str:
            fast_faiss = sk_row[key] <= fa[key]
            fast_faiss_pp = sk_row[key] <= fa2[key]
            fast_sk = sl[key] >= 5 * sk_row[key]
            return (f"as fast as faiss (random init) {'yes' if fast_faiss else 'NO'} "
                    f"({fa[key] / sk_row[key]:.2f}x), as fast as faiss (k-means++ init) "
                    f"{'yes' if fast_faiss_pp else 'NO'} ({fa2[key] / sk_row[key]:.2f}x), "
                    f"5x faster than scikit-learn {'yes' if fast_sk else 'NO'} "
                    f"({sl[key] / sk_row[key]:.1f}x)")

        j_ok = sk_row["J_own"] <= min(fa["J_own"], fa2["J_own"], sl["J_own"]) * (1 + 1e-9)
        verdict = (f"wall time: {meets('median_s')}; CPU time: {meets('median_cpu_s')}; "
                   f"objective no worse than all of them: {'yes' if j_ok else 'NO'} "
                   f"(theirs is {min(fa['J_own'], fa2['J_own'], sl['J_own']) / sk_row['J_own']:.3f}x "
                   "sharekan's at best).")
    energy = float((WHITE["gamma"] ** 2).sum())
    own = [f"{name}: {r[key] / energy:.5f}" for name, r in by.items()
           for key in ("inertia_weighted",) if r.get(key) is not None]
    if own:
        notes.append("Each Euclidean baseline's own objective (weighted inertia "
                     "sum gamma_e^2 ||s_e - c_q||^2, i.e. gain = gamma_e and the raw centroid), "
                     "divided by the same energy: " + "; ".join(own) + ". The J columns "
                     "instead normalise the centroids and use the optimal gain <r_e, c_q>.")
    print("K sweep ...", flush=True)
    sweep_rows = sweep(state, layer, metric, [int(v) for v in args.sweep_ks.split(",") if v],
                       args.n_iter, args.seed, calib_x)
    result = {
        "command": "python -m sharekan_bench " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(), "head": head,
        "config": {"layer": LAYER, "E": e, "M": m, "G": m - spline_k, "k": spline_k,
                   "K": args.k, "n_iter": args.n_iter, "tol": 0.0, "seed": args.seed,
                   "repeats": args.repeats, "metric": "function",
                   "energy_sum_gamma2": float((WHITE["gamma"] ** 2).sum()),
                   "flat_edges": int((WHITE["gamma"] <= 1e-12 * WHITE["gamma"].max()).sum()),
                   **coeff_stats},
        "methods": methods, "speed": speed, "verdict": verdict, "sweep": sweep_rows,
        "notes": notes + [
            ("scikit-learn and faiss are Euclidean and not sign-invariant: they get the unit "
            "shapes s_e flipped so the largest-|.| component is positive, as float32, with "
            "weights gamma_e^2 (sklearn sample_weight; faiss Kmeans.train(weights=...)). "
            "Their own objective (weighted Euclidean inertia) is not J; J is recomputed here."),
            ("faiss: max_points_per_centroid = E // K + 1 so no subsampling; its default init "
            "is random sampling; faiss 1.15 also offers k-means++ (both rows). The faiss "
            "time includes one final index.search for the codes (its train() keeps no labels)."),
            ("scikit-learn: KMeans(n_init=1, init='k-means++' (greedy, 2 + log K local "
            "trials), max_iter=25, tol=0, algorithm='lloyd'); it may stop earlier when the "
            "labels stop changing (see iterations)."),
            ("init s / per iter s: sharekan = spherical_kmeans with n_iter=0 (k-means++ plus "
            "one assignment); scikit-learn = sklearn.cluster.kmeans_plusplus alone; faiss = "
            "from the iteration_stats clock of its last run (init = end of iteration 1 minus "
            "one mean iteration). per iter = (median - init) / iterations for the others."),
            ("sharekan: spherical_kmeans(residuals f64, K, n_iter, tol=0, seed) on the same "
            "residuals; gsb_fit adds whitening, decomposition and the map back to "
            "coefficient space; its codebook is whitened back (c = L^T C) to be scored."),
        ],
    }
    md = markdown(result)
    report.write_record(Path(args.out), result, md)
    print(md)


if __name__ == "__main__":
    main()
