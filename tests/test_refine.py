"""metric="output" and compensate=True (python/sharekan/refine.py): sensitivities against
torch autograd, the per-edge least squares against NumPy lstsq, the Lloyd refinement's
objective, the Rust refinement against the NumPy reference (tests/oracle.py refine_*), the
compensation solve, end-to-end fidelity, determinism and bad options."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import sharekan
from kan_fixtures import dense_forward, efficient_kan_state_dict
import oracle
from sharekan import _core, refine
from sharekan.errors import CodeRangeError, InvalidInputError, NonFiniteError, ShapeError
from sharekan.layouts import detect_layout


def _sources(sd):
    return detect_layout(sd).extract(sd).layers


def _sqnr(want, got):
    return 10 * np.log10(np.sum(want**2) / np.sum((want - got) ** 2))


def test_output_sensitivities_match_autograd(rng):
    torch = pytest.importorskip("torch")
    from sharekan.torch import bspline_basis

    sd = efficient_kan_state_dict(rng, [3, 5, 4, 2], grid_size=5, k=3)
    x = rng.uniform(-0.9, 0.9, size=(7, 3))
    got = refine.output_sensitivities(_sources(sd), x)

    # independent: torch autograd through a float64 efficient-kan forward, one output at a time
    def forward(h):
        hs = []
        for layer in range(3):
            p = f"layers.{layer}."
            spline = torch.from_numpy(
                sd[p + "spline_weight"].astype(np.float64) * sd[p + "spline_scaler"][..., None]
            )
            basis = bspline_basis(h, torch.from_numpy(sd[p + "grid"].astype(np.float64)), 3)
            h = torch.nn.functional.silu(h) @ torch.from_numpy(sd[p + "base_weight"].astype(np.float64)).T
            h = h + torch.einsum("bim,oim->bo", basis, spline)
            h.retain_grad()
            hs.append(h)
        return hs

    want = [np.zeros((7, n)) for n in (5, 4, 2)]
    for j in range(2):
        xt = torch.from_numpy(x).requires_grad_(True)
        hs = forward(xt)
        hs[-1][:, j].sum().backward()
        for layer in range(3):
            want[layer] += hs[layer].grad.numpy() ** 2
    for layer in range(3):
        np.testing.assert_allclose(got[f"layers.{layer}"], want[layer], rtol=1e-5, atol=1e-9)


def test_edge_gain_bias_matches_lstsq(rng):
    e, m, k = 9, 6, 3
    a = rng.normal(size=(e, m, m))
    metrics = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(m)
    coeffs = rng.normal(size=(e, m))
    book = rng.normal(size=(k, m))
    codes = rng.integers(0, k, size=e)
    gains, biases = refine.edge_gain_bias(metrics, coeffs, book, codes)
    for i in range(e):
        chol = np.linalg.cholesky(metrics[i])  # R = L L^T: ||L^T v||^2 = v^T R v
        design = chol.T @ np.stack([book[codes[i]], np.ones(m)], axis=1)
        sol, *_ = np.linalg.lstsq(design, chol.T @ coeffs[i], rcond=None)
        np.testing.assert_allclose([gains[i], biases[i]], sol, rtol=1e-8, atol=1e-10)


def test_lloyd_refine_never_increases_the_objective(rng):
    e, m, k = 60, 7, 4
    a = rng.normal(size=(e, m, m))
    metrics = a @ a.transpose(0, 2, 1) / m + 0.05 * np.eye(m)
    coeffs = rng.normal(size=(e, m))
    book = rng.normal(size=(k, m))
    codes = rng.integers(0, k, size=e)
    new_book, new_codes, history = refine.lloyd_refine(metrics, coeffs, book, codes, n_iter=6)
    assert new_book.shape == (k, m) and new_codes.dtype == np.uint32
    assert all(b <= a_ + 1e-12 for a_, b in zip(history, history[1:]))
    assert history[-1] < history[0]
    # the returned state has the last objective
    g, b = refine.edge_gain_bias(metrics, coeffs, new_book, new_codes.astype(np.int64))
    diff = coeffs - g[:, None] * new_book[new_codes] - b[:, None]
    assert np.einsum("em,eml,el->", diff, metrics, diff) == pytest.approx(history[-1])


def _refine_case(seed, e, m, k, degenerate):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(e, m, m))
    metrics = a @ a.transpose(0, 2, 1) / m + 0.05 * np.eye(m)
    coeffs = rng.normal(size=(e, m))
    book = rng.normal(size=(k, m))
    # codes use only the first half of the codebook: the rest starts as empty clusters
    codes = rng.integers(0, max(1, k // 2), size=e)
    if degenerate:
        coeffs[::3] = 0.0  # zero-norm edges
        book[0] = 0.0  # zero codeword
        if k > 2:
            book[-1] = 1.3  # parallel to the ones vector
            book[-2] = book[1]  # duplicate codeword: ties go to the lowest index
    return metrics, coeffs, book, codes


# (E, M, K): ordinary, K = 1, K = E, K > E, a bench-like middle layer
_REFINE_SHAPES = [(60, 7, 4), (40, 5, 1), (12, 6, 12), (9, 4, 20), (1024, 13, 64)]


@pytest.mark.parametrize("degenerate", [False, True])
@pytest.mark.parametrize("e,m,k", _REFINE_SHAPES)
def test_rust_refine_matches_numpy_reference(e, m, k, degenerate):
    for seed in range(3):
        metrics, coeffs, book, codes = _refine_case(seed, e, m, k, degenerate)
        c32 = codes.astype(np.uint32)
        g_ref, b_ref = oracle.refine_edge_gain_bias(metrics, coeffs, book, codes)
        g, b = refine.edge_gain_bias(metrics, coeffs, book, codes)
        np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b, b_ref, rtol=1e-9, atol=1e-12)
        new = _core.refine_assign(metrics, coeffs, book, c32)
        np.testing.assert_array_equal(new, oracle.refine_assign(metrics, coeffs, book, codes))
        zero = ~coeffs.any(axis=1)
        np.testing.assert_array_equal(new[zero], codes[zero])  # nothing to explain: kept
        np.testing.assert_allclose(
            _core.refine_update(metrics, coeffs, book, c32, g_ref, b_ref),
            oracle.refine_update(metrics, coeffs, book, codes, g_ref, b_ref),
            rtol=1e-9, atol=1e-12,
        )
        want = oracle.refine_objective(metrics, coeffs, book, codes, g_ref, b_ref)
        assert _core.refine_objective(metrics, coeffs, book, c32, g_ref, b_ref) == pytest.approx(want, rel=1e-12)

        book_ref, codes_ref, hist_ref = oracle.refine_lloyd(metrics, coeffs, book, codes, n_iter=8)
        new_book, new_codes, hist = refine.lloyd_refine(metrics, coeffs, book, codes, n_iter=8)
        assert new_codes.dtype == np.uint32 and new_book.shape == (k, m)
        _assert_same_lloyd_run(metrics, coeffs, (new_book, new_codes, hist),
                               (book_ref, codes_ref, hist_ref))


def _assert_same_lloyd_run(metrics, coeffs, got, ref):
    """Two Lloyd runs agree: same objective trajectory (to tolerance) while it is above the
    rounding floor, then the same codes and codebook. Once the objective reaches the floor
    (an exact fit, e.g. K >= E) whether a step still "improves" is decided by rounding,
    which differs between CPUs and BLAS builds: there both runs must only have reached it."""
    (book, codes, hist), (book_ref, codes_ref, hist_ref) = got, ref
    floor = 1e-10 * hist_ref[0]

    def above(h):
        return next((i for i, v in enumerate(h) if v <= floor), len(h))

    n = above(hist_ref)
    assert above(hist) == n, (hist, hist_ref)
    np.testing.assert_allclose(hist[:n], hist_ref[:n], rtol=1e-9, atol=1e-12 * hist_ref[0])
    if n == len(hist_ref) and n == len(hist):
        np.testing.assert_array_equal(codes, codes_ref)
        np.testing.assert_allclose(book, book_ref, rtol=1e-9, atol=1e-12)
        return
    for b, c in ((book, codes), (book_ref, codes_ref)):
        g, bias = refine.edge_gain_bias(metrics, coeffs, b, c)
        assert oracle.refine_objective(metrics, coeffs, b, c, g, bias) <= floor


def test_constant_edges_stay_exact_under_lloyd():
    # A constant edge is explained exactly by its bias with any code: the codes tie
    # mathematically and rounding picks among them (so neither implementation's choice is
    # compared with the other's), but the reconstruction stays exact and the objective
    # never increases.
    metrics, coeffs, book, codes = _refine_case(5, 40, 6, 5, True)
    coeffs[1::4] = 0.7
    new_book, new_codes, hist = refine.lloyd_refine(metrics, coeffs, book, codes)
    assert all(b <= a for a, b in zip(hist, hist[1:]))
    g, b = refine.edge_gain_bias(metrics, coeffs, new_book, new_codes)
    recon = g[:, None] * new_book[new_codes] + b[:, None]
    np.testing.assert_allclose(recon[1::4], coeffs[1::4], atol=1e-9)


def test_refine_bad_inputs_raise_typed_errors():
    metrics, coeffs, book, codes = _refine_case(0, 10, 4, 3, False)
    with pytest.raises(CodeRangeError, match="negative"):
        refine.lloyd_refine(metrics, coeffs, book, np.where(np.arange(10) == 4, -1, codes))
    with pytest.raises(CodeRangeError, match="codes"):
        refine.edge_gain_bias(metrics, coeffs, book, np.full(10, 3))
    with pytest.raises(ShapeError, match="coeffs"):
        refine.lloyd_refine(metrics, coeffs[:9], book, codes)
    with pytest.raises(ShapeError, match="metrics"):
        refine.lloyd_refine(metrics[:, :3], coeffs, book, codes)
    with pytest.raises(ShapeError, match="codebook"):
        refine.edge_gain_bias(metrics, coeffs, book[:, :3], codes)
    with pytest.raises(ShapeError, match="codes"):
        refine.edge_gain_bias(metrics, coeffs, book, codes[:5])
    bad = metrics.copy()
    bad[2, 1, 1] = np.nan
    with pytest.raises(NonFiniteError, match="metrics"):
        refine.lloyd_refine(bad, coeffs, book, codes)
    with pytest.raises(InvalidInputError, match="n_iter"):
        refine.lloyd_refine(metrics, coeffs, book, codes, n_iter=-1)
    with pytest.raises(InvalidInputError, match="codes"):
        refine.lloyd_refine(metrics, coeffs, book, codes.astype(np.float64))


def test_compensate_output_solves_the_weighted_ridge_problem(rng):
    sd = efficient_kan_state_dict(rng, [4, 3], grid_size=5, k=3)
    (source,) = _sources(sd)
    x = rng.uniform(-0.9, 0.9, size=(50, 4))
    target = rng.normal(size=(50, 3))
    weights = rng.uniform(0.5, 2.0, size=(50, 3))
    shapes = rng.normal(size=(4, 3, source.n_coeffs))
    g0, a0, b0 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=3)
    g, a, b = refine.compensate_output(source, x, target, weights, shapes, g0, a0, b0, True)
    basis = oracle.bspline_basis(x, source.grid, 3)
    silu = x / (1 + np.exp(-x))
    for o in range(3):
        design = np.concatenate([np.einsum("rim,im->ri", basis, shapes[:, o]), silu, np.ones((50, 1))], 1)
        theta0 = np.concatenate([g0[:, o], a0[:, o], b0[o : o + 1]])
        sw = np.sqrt(weights[:, o])[:, None]
        lam = refine.COMPENSATE_RIDGE * np.trace((design * sw).T @ (design * sw)) / len(theta0)
        # ridge as extra rows: sqrt(lam) (theta - theta0)
        big = np.concatenate([design * sw, np.sqrt(lam) * np.eye(len(theta0))])
        rhs = np.concatenate([target[:, o] * sw[:, 0], np.sqrt(lam) * theta0])
        want, *_ = np.linalg.lstsq(big, rhs, rcond=None)
        np.testing.assert_allclose(np.concatenate([g[:, o], a[:, o], [b[o]]]), want, rtol=1e-6, atol=1e-9)


def test_output_metric_and_compensation_improve_fidelity():
    rng = np.random.default_rng(1)
    # 24 prototype shapes (+ noise-free gains/constants), K = 8: lossy but structured
    sd = efficient_kan_state_dict(rng, [3, 16, 16, 1], grid_size=6, k=3, n_shapes=24)
    for key in [key for key in sd if key.endswith("spline_weight")]:
        sd[key] = sd[key] * 0.3  # keep the hidden activations near the grid
    calib = rng.uniform(-1, 1, size=(400, 3)).astype(np.float32)
    x = rng.uniform(-1, 1, size=(300, 3))
    want = dense_forward(sd, x)
    sqnr = {}
    for metric, comp in (("data", False), ("output", False), ("output", True)):
        model = sharekan.compress(sd, calibration=calib, codebook_size=8, metric=metric, compensate=comp)
        sqnr[metric, comp] = _sqnr(want, model.forward(x.astype(np.float32)))
        assert model.config.compensate is comp
        assert [r.metric for r in model.report.layers] == [metric] * 3
    assert sqnr["output", False] > sqnr["data", False]
    assert sqnr["output", True] > sqnr["output", False] + 1.0


def test_compensated_model_round_trips_and_matches_decompressed(rng, tmp_path):
    sd = efficient_kan_state_dict(rng, [3, 8, 2], grid_size=5, k=3)
    calib = rng.uniform(-1, 1, size=(200, 3))
    model = sharekan.compress(sd, calibration=calib, codebook_size=6, metric="output",
                              compensate=True, gain_bits=4)
    path = str(tmp_path / "m.sharekan")
    model.save(path)
    loaded = sharekan.load(path)
    x = rng.uniform(-1, 1, size=(20, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    np.testing.assert_allclose(model.forward(x), dense_forward(model.decompress(), x), rtol=1e-4, atol=1e-4)
    assert loaded.config.compensate and loaded.config.metric == "output"


def test_bad_options_and_missing_calibration(rng):
    sd = efficient_kan_state_dict(rng, [3, 4, 2], grid_size=5, k=3)
    with pytest.raises(InvalidInputError, match="compensate"):
        sharekan.Config(compensate="yes")
    with pytest.raises(InvalidInputError, match="metric"):
        sharekan.Config(metric="outputs")
    with pytest.raises(InvalidInputError, match="compensate"):
        sharekan.Config(overrides={"layers.0": {"compensate": 1}})
    for kw in ({"metric": "output"}, {"compensate": True}):
        with pytest.raises(InvalidInputError, match="calibration"):
            sharekan.compress(sd, codebook_size=4, **kw)
        per_layer = {"layers.0": rng.uniform(-1, 1, size=(10, 3))}
        with pytest.raises(InvalidInputError, match="model inputs"):
            sharekan.compress(sd, codebook_size=4, calibration=per_layer, **kw)


_HASH_SCRIPT = """
import sys, hashlib
sys.path.insert(0, {tests!r})
import numpy as np, sharekan
from kan_fixtures import efficient_kan_state_dict
sd = efficient_kan_state_dict(np.random.default_rng(3), [5, 12, 2], grid_size=5, k=3)
x = np.random.default_rng(4).uniform(-1, 1, size=(128, 5))
model = sharekan.compress(sd, calibration=x, codebook_size=8, metric="output", compensate=True)
model.save({path!r})
print(hashlib.sha256(open({path!r}, 'rb').read()).hexdigest())
"""


def test_same_bytes_for_any_thread_count(tmp_path):
    digests = set()
    for threads in ("1", "2"):
        path = str(tmp_path / f"model{threads}.sharekan")
        env = dict(os.environ, RAYON_NUM_THREADS=threads, OMP_NUM_THREADS=threads,
                   OPENBLAS_NUM_THREADS=threads)
        script = _HASH_SCRIPT.format(tests=os.path.dirname(__file__), path=path)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
