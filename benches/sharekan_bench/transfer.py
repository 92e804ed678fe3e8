"""Transfer: compressed classification heads evaluated zero-shot on shifted Fashion-MNIST.

The heads are the classification benchmark's cached `kan` and `kan_spline_first` heads
(trained on the unshifted 60k training features). The shifted test sets (seeded,
regenerated, cached as features only) use the first `n` test images:

- `scale`: each item shrunk to 18 px (of 28) and placed at a random offset;
- `bg`: the item's black background replaced by a random crop of a greyscale photo or
  texture bundled with scikit-image (brick, grass, gravel, camera, moon, coins), at 45 %
  intensity (item pixels kept where brighter).

Retention = the compressed head's accuracy on the shifted set as a percentage of the dense
head's accuracy on that set; agreement and SQNR are against the dense head's outputs there.
The detection benchmark (`detection.py`) reports the same retention for mAP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHIFT_TEXTURES = ("brick", "grass", "gravel", "camera", "moon", "coins")

#: (name, compiler options); one plain `sharekan.compress` call each
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("SHARe-KAN FP32 codebook", {"int8": False, "base": "float"}),
    ("SHARe-KAN Int8", {}),
    ("SHARe-KAN Int8 base=fold", {"base": "fold"}),
    ("SHARe-KAN Int8 base=fold gain_bits=4", {"base": "fold", "gain_bits": 4}),
)


@dataclass(frozen=True)
class TransferConfig:
    n: int = 5000
    size: int = 64
    ks: tuple[int, ...] = (16, 256)
    heads: tuple[str, ...] = ("kan", "kan_spline_first")
    calib_rows: int = 2048
    seed: int = 0


def shift_images(images: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """uint8 (n, 28, 28) -> shifted uint8 (n, 28, 28)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.zeros_like(images)
    if kind == "scale":
        for i, im in enumerate(images):
            small = np.asarray(Image.fromarray(im).resize((18, 18), Image.BILINEAR))
            y, x = rng.integers(0, 11, 2)
            out[i, y: y + 18, x: x + 18] = small
        return out
    if kind == "bg":
        import skimage.data

        tex = [np.asarray(getattr(skimage.data, n)(), np.float32) for n in SHIFT_TEXTURES]
        for i, im in enumerate(images):
            t = tex[rng.integers(len(tex))]
            side = int(rng.integers(28, 160))
            y, x = rng.integers(0, t.shape[0] - side), rng.integers(0, t.shape[1] - side)
            crop = np.asarray(Image.fromarray(t[y: y + side, x: x + side]).resize((28, 28), Image.BILINEAR))
            out[i] = np.maximum(im.astype(np.float32), 0.45 * crop).clip(0, 255).astype(np.uint8)
        return out
    raise ValueError(kind)


def shifted_features(cache: Path, cfg: TransferConfig, log: Callable[[str], None]) -> dict[str, np.ndarray]:
    from sharekan.demo.data import load_fashion_mnist
    from .backbones import cached, extract, mobilenet_v2_backbone

    fm = load_fashion_mnist()
    imgs = fm["x_test"][: cfg.n]
    out: dict[str, np.ndarray] = {"y": fm["y_test"][: cfg.n]}
    backbone = None
    for kind in ("scale", "bg"):
        path = cache / "transfer" / f"fmnist_{kind}_mobilenetv2_{cfg.size}px_n{cfg.n}_seed{cfg.seed}.npy"

        def compute(kind: str = kind) -> np.ndarray:
            nonlocal backbone
            backbone = backbone or mobilenet_v2_backbone()
            return extract(shift_images(imgs, kind, cfg.seed), cfg.size, backbone=backbone)

        out[kind] = cached(path, compute, log)
    return out


def run_transfer(cache: Path, cfg: TransferConfig = TransferConfig(),
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    import sharekan

    from . import methods as M
    from sharekan.demo.heads import FeatureNorm, HeadRecipe, kan_forward
    from .backbones import fashion_mnist_features
    from sharekan.demo.heads import cached_head
    from .vision import VisionConfig

    started = time.perf_counter()
    feats = fashion_mnist_features(cache, cfg.size, log)
    norm = FeatureNorm(feats["f_train"])
    data = {"x_train": norm(feats["f_train"]), "y_train": feats["y_train"]}
    shifted = shifted_features(cache, cfg, log)
    sets = {"test": (norm(feats["f_test"][: cfg.n]), feats["y_test"][: cfg.n]),
            "scale": (norm(shifted["scale"]), shifted["y"]), "bg": (norm(shifted["bg"]), shifted["y"])}
    vc = VisionConfig()
    calib = data["x_train"][: cfg.calib_rows]
    result: dict[str, Any] = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()},
                              "heads": {}}
    for kind in cfg.heads:
        epochs = vc.spline_first_epochs if kind == "kan_spline_first" else vc.epochs
        rows_n = vc.spline_first_rows if kind == "kan_spline_first" else None
        recipe = HeadRecipe(kind=kind, epochs=epochs, seed=cfg.seed, train_rows=rows_n)
        _, sd, _ = cached_head(cache, f"fmnist_mobilenetv2_{cfg.size}px", recipe, data, log)
        dense_bytes = M.dense_bytes(sd)
        dense = {s: kan_forward(sd, x) for s, (x, _) in sets.items()}
        dense_acc = {s: float(100 * np.mean(dense[s].argmax(1) == y)) for s, (_, y) in sets.items()}
        rows = [{"method": "dense FP32", "K": None, "ratio": 1.0,
                 **{f"acc_{s}": a for s, a in dense_acc.items()},
                 **{f"retention_{s}": 100.0 for s in sets}}]
        log(f"{kind}: dense accuracy " + ", ".join(f"{s} {a:.2f}" for s, a in dense_acc.items()))
        for k in cfg.ks:
            for name, opts in VARIANTS:
                model = sharekan.compress(sd, calibration=calib, codebook_size=k, seed=cfg.seed, **opts)
                r = {"method": name, "options": opts, "K": k, "bytes": int(model.nbytes),
                     "ratio": dense_bytes / model.nbytes}
                for s, (x, y) in sets.items():
                    f = M.fidelity(dense[s], np.asarray(model.forward(x), np.float32), y)
                    r[f"acc_{s}"] = f["accuracy"]
                    r[f"agreement_{s}"] = f["agreement"]
                    r[f"sqnr_{s}"] = f["sqnr_db"]
                    r[f"retention_{s}"] = 100.0 * f["accuracy"] / dense_acc[s]
                rows.append(r)
                log(f"  K={k:4d} {name:38s} {r['ratio']:5.1f}x acc test {r['acc_test']:.2f} "
                    f"retention scale {r['retention_scale']:.2f} bg {r['retention_bg']:.2f}")
        result["heads"][kind] = {"recipe": recipe.key(), "dense_bytes": dense_bytes, "rows": rows}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
