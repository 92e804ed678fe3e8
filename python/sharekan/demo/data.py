"""Offline data for the benchmarks: Fashion-MNIST (Debian package) and the cache directory."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

#: Where the Debian package `dataset-fashion-mnist` puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The benchmark cache: `path`, else $SHAREKAN_CACHE_DIR/bench, else ~/.cache/sharekan/bench
    (the same root as the LUTHAM kernel build cache)."""
    if path is None:
        root = os.environ.get("SHAREKAN_CACHE_DIR") or Path.home() / ".cache" / "sharekan"
        path = Path(root) / "bench"
    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The full Fashion-MNIST split.

    Returns:
        {"x_train": uint8 (60000, 28, 28), "y_train": int64 (60000,),
         "x_test": uint8 (10000, 28, 28), "y_test": int64 (10000,)}.

    Raises:
        FileNotFoundError: the Debian package is not installed (the message says how).
    """
    base = Path(root) if root is not None else FASHION_MNIST_DIR
    out = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        images = base / f"{stem}-images-idx3-ubyte.gz"
        labels = base / f"{stem}-labels-idx1-ubyte.gz"
        if not images.exists() or not labels.exists():
            raise FileNotFoundError(
                f"Fashion-MNIST not found under {base}: install the Debian package "
                "(apt-get update && apt-get install -y dataset-fashion-mnist)"
            )
        out[f"x_{split}"] = _read_idx(images, 16).reshape(-1, 28, 28)
        out[f"y_{split}"] = _read_idx(labels, 8).astype(np.int64)
    return out
