"""The `sharekan` command line: compress (default and given checkpoint), inspect, decompress."""

from __future__ import annotations

import json

import numpy as np

from kan_fixtures import efficient_kan_state_dict
from sharekan import _core
from sharekan.cli import main


def test_compress_default_prints_report_and_accuracy(capsys, tmp_path):
    out = tmp_path / "default.sharekan"
    assert main(["compress", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "embedded default" in text and "layers.0" in text and "total" in text
    assert "top-1 agreement" in text
    assert out.exists()


def test_compress_inspect_decompress(capsys, tmp_path, rng):
    sd = efficient_kan_state_dict(rng, [6, 5, 2], grid_size=4, k=3)
    ckpt = tmp_path / "kan.safetensors"
    _core.save_safetensors(str(ckpt), sd, {"format": "pt"})
    art = tmp_path / "kan.sharekan"
    assert main(["compress", str(ckpt), "-o", str(art), "-k", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("\nsaved")[0])
    assert report["layers"][0]["codebook_size"] == 8
    assert main(["inspect", str(art)]) == 0
    assert "checksum" in capsys.readouterr().out
    for suffix in (".safetensors", ".npz"):
        dec = tmp_path / f"dec{suffix}"
        assert main(["decompress", str(art), "-o", str(dec)]) == 0
        if suffix == ".npz":
            with np.load(dec) as data:
                assert sorted(data.files) == sorted(sd)
        else:
            tensors, _ = _core.load_safetensors(str(dec))
            assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in sd.items()}


def test_errors_exit_2_with_message(capsys, tmp_path):
    assert main(["inspect", str(tmp_path / "nope.sharekan")]) == 2
    assert "no such artifact" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, w=np.zeros(3))
    assert main(["compress", str(bad)]) == 2
    assert "no KAN layout" in capsys.readouterr().err


def test_export_lutham_and_dense_pte_agree(capsys, tmp_path):
    import pytest

    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch")
    from executorch.runtime import Runtime

    import sharekan
    from sharekan import lutham

    art = tmp_path / "default.sharekan"
    assert main(["compress", "-o", str(art)]) == 0
    lut, dense, portable = tmp_path / "lut.pte", tmp_path / "dense.pte", tmp_path / "p.pte"
    assert main(["export", str(art), "-o", str(lut)]) == 0
    assert main(["export", str(art), "-o", str(dense), "--dense"]) == 0
    assert "LUTHAM ExecuTorch program" in capsys.readouterr().out
    assert main(["export", str(art), "-o", str(portable), "--portable", "--max-batch", "8"]) == 0
    assert "portable LUTHAM" in capsys.readouterr().out
    assert main(["export", str(art), "-o", str(portable), "--portable", "--dense"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert lut.stat().st_size * 4 < dense.stat().st_size
    assert portable.stat().st_size < dense.stat().st_size  # size target: test_export_portable
    lutham.load_library()
    x = np.random.default_rng(3).uniform(-1, 1, size=(5, 64)).astype(np.float32)
    want = sharekan.load(art).forward(x)
    for path in (lut, dense, portable):
        method = Runtime.get().load_program(str(path)).load_method("forward")
        got = method.execute([torch.from_numpy(x)])[0].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
