"""`sharekan.export_pte`: the quantizer round trip compress -> run -> save -> reload -> run
-> export -> run (.pte in the ExecuTorch runtime and in the standalone runner), and the
dense model's export for comparison."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch.runtime")
pytest.importorskip("sharekan._core")

from sharekan import lutham  # noqa: E402
from sharekan.errors import InvalidInputError, LuthamBuildError  # noqa: E402
from sharekan.export import export_pte  # noqa: E402
from sharekan.torch import KAN, compress_, load_compressed_, lutham_layers  # noqa: E402

WIDTHS = [16, 8, 3]


@pytest.fixture(scope="module")
def runtime():
    try:
        lutham.load_library()
    except LuthamBuildError as exc:
        pytest.skip(f"LUTHAM kernel library unavailable: {exc}")
    from executorch.runtime import Runtime

    return Runtime.get()


def _kan(seed: int) -> KAN:
    torch.manual_seed(seed)
    model = KAN(WIDTHS, grid_size=6, spline_order=3)
    with torch.no_grad():
        for layer in model.layers:
            layer.spline_weight.mul_(20.0)
    return model.eval()


def _x(seed: int, batch: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-1.5, 1.5, size=(batch, WIDTHS[0])).astype(np.float32))


def _run_runner(runner, pte, x: np.ndarray, tmp_path) -> np.ndarray:
    inp = tmp_path / "x.txt"
    inp.write_text(f"tensor f32 2 {x.shape[0]} {x.shape[1]}\n"
                   + " ".join(f"{v:.9g}" for v in x.reshape(-1)) + "\n")
    res = subprocess.run([str(runner), str(pte), str(inp)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    head = lines[0].split()
    shape = (int(head[4]), int(head[5]))
    return np.array(" ".join(lines[1:]).split(), dtype=np.float32).reshape(shape)


def test_quantizer_round_trip(runtime, tmp_path):
    # compress (per-edge biases: the decompressed dense model then matches everywhere,
    # inputs outside the grid included)
    model = compress_(_kan(0), codebook_size=16, bias="edge")
    assert len(lutham_layers(model)) == 2
    dense = KAN(WIDTHS, grid_size=6, spline_order=3)
    dense.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32))
                           for k, v in model._sharekan_compressed.decompress().items()})
    dense.eval()
    # run
    x = _x(1, 5)
    with torch.no_grad():
        y = model(x)
    # save (still compressed: uint8 codes, int8 gains)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    # reload into the uncompressed architecture
    reloaded = load_compressed_(KAN(WIDTHS, grid_size=6, spline_order=3),
                                torch.load(tmp_path / "model.pt")).eval()
    # run again: identical
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), y, rtol=0, atol=0)
    # export (traced with the quantized op) from a batch-1 example: batch stays dynamic
    pte = export_pte(reloaded, (x[:1],), tmp_path / "model.pte")
    method = runtime.load_program(str(pte)).load_method("forward")
    runner = lutham.build_runner()
    for batch in (1, 4, 9, 64):
        xb = _x(batch, batch)
        with torch.no_grad():
            want = reloaded(xb).numpy()
            want_dense = dense(xb).numpy()
        got = method.execute([xb])[0].numpy()
        np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=1e-4)
        np.testing.assert_allclose(got, want_dense, atol=2e-5 * np.abs(want).max(), rtol=1e-4)
        from_runner = _run_runner(runner, pte, xb.numpy(), tmp_path)
        np.testing.assert_array_equal(from_runner, got)


def test_dense_export_matches_eager_and_is_larger(runtime, tmp_path):
    dense = _kan(2)
    x = _x(3, 7)
    pte = export_pte(dense, (x,), tmp_path / "dense.pte")
    got = runtime.load_program(str(pte)).load_method("forward").execute([x])[0].numpy()
    with torch.no_grad():
        want = dense(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=1e-4)
    small = export_pte(compress_(_kan(2), codebook_size=4, bias="fold"), (x,),
                       tmp_path / "small.pte")
    assert small.stat().st_size < pte.stat().st_size


def test_static_export_and_errors(runtime, tmp_path):
    model = compress_(_kan(4), codebook_size=8)
    x = _x(5, 3)
    pte = export_pte(model, (x,), tmp_path / "static.pte", dynamic_batch=False)
    got = runtime.load_program(str(pte)).load_method("forward").execute([x])[0]
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(InvalidInputError):
        export_pte(model, (), tmp_path / "none.pte")
    with pytest.raises(InvalidInputError):
        export_pte(model, (torch.tensor(1.0),), tmp_path / "scalar.pte")
