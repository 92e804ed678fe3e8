"""Classification heads trained on cached backbone features (seeded, single process).

The KAN heads are efficient-kan-layout `sharekan.torch.KAN` models, so their state_dicts
go straight into `sharekan.compress`. Every head sees the same normalised features:
z-scored with the training mean and standard deviation, then squashed by tanh so the
first layer's inputs lie inside its spline grid [-1, 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .features import fashion_mnist_features


@dataclass(frozen=True)
class HeadRecipe:
    """How a head is trained. Changing any field changes its cache key."""

    kind: str = "kan"  # "kan" | "kan_spline_first" (layer 0 without base branch) | "mlp"
    widths: tuple[int, ...] = (1280, 256, 10)
    grid_size: int = 10
    spline_order: int = 3
    epochs: int = 4
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    train_rows: int | None = None  # train on the first n rows only (None: all)

    def key(self) -> str:
        w = "-".join(map(str, self.widths))
        rows = f"_n{self.train_rows}" if self.train_rows is not None else ""
        return (f"{self.kind}_{w}_G{self.grid_size}k{self.spline_order}_e{self.epochs}"
                f"_b{self.batch_size}_lr{self.lr:g}_wd{self.weight_decay:g}_s{self.seed}{rows}")


class FeatureNorm:
    """z-score with training statistics, then tanh: (n, d) float -> (n, d) float32 in (-1, 1)."""

    def __init__(self, train: np.ndarray) -> None:
        self.mean = train.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.std = (train.std(axis=0, dtype=np.float64) + 1e-6).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.tanh((x - self.mean) / self.std).astype(np.float32)


def build_head(recipe: HeadRecipe):  # -> torch.nn.Module
    import torch
    from torch import nn

    from ..torch import KAN, KANLinear

    torch.manual_seed(recipe.seed)
    if recipe.kind == "mlp":
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(recipe.widths, recipe.widths[1:])):
            if i:
                layers.append(nn.SiLU())
            layers.append(nn.Linear(a, b))
        return nn.Sequential(*layers)
    model = KAN(list(recipe.widths), grid_size=recipe.grid_size, spline_order=recipe.spline_order)
    if recipe.kind == "kan_spline_first":
        # the first layer has no base branch: its prediction goes through the splines
        first = model.layers[0]
        assert isinstance(first, KANLinear)  # KAN's layers are KANLinear
        with torch.no_grad():
            first.base_weight.zero_()
        first.base_weight.requires_grad_(False)
    elif recipe.kind != "kan":
        raise ValueError(f"unknown head kind {recipe.kind!r}")
    return model


def train_head(recipe: HeadRecipe, x: np.ndarray, y: np.ndarray,
               log: Callable[[str], None] = print):  # -> torch.nn.Module
    """Train a head with Adam and cross-entropy (seeded; shuffles with a fixed generator)."""
    from torch.nn import functional as F

    if recipe.train_rows is not None:
        x, y = x[: recipe.train_rows], y[: recipe.train_rows]
    model = build_head(recipe)
    return fit_minibatches(
        model, x, y, F.cross_entropy, epochs=recipe.epochs, batch_size=recipe.batch_size,
        lr=recipe.lr, seed=recipe.seed, weight_decay=recipe.weight_decay, label=recipe.kind,
        log=log,
    )


def fit_minibatches(model, x: np.ndarray, y: np.ndarray, loss_fn: Callable, *, epochs: int,
                    batch_size: int, lr: float, seed: int, weight_decay: float = 0.0,
                    label: str = "head", log: Callable[[str], None] = print):
    """Adam with a one-cycle schedule over shuffled minibatches (fixed generator), logging
    the mean loss per epoch; returns the model in eval mode."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel per step instead of ~10 passes over the 4M spline coefficients
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        model.train()
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = loss_fn(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"  {label} epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} "
            f"({time.perf_counter() - started:.0f} s)")
    return model.eval()


def head_state_dict(model, recipe: HeadRecipe) -> dict[str, np.ndarray]:
    """float32 numpy state_dict; the spline-first head's unused base_weight is left out."""
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    if recipe.kind == "kan_spline_first":
        sd.pop("layers.0.base_weight")
    return sd


def kan_forward(state_dict: Mapping[str, np.ndarray], x: np.ndarray, *, batch: int = 1024,
                spline: bool = True) -> np.ndarray:
    """Dense efficient-kan forward of a state_dict `layers.{l}.*` on x (n, n_in) -> (n, n_out) f32.

    Missing `base_weight` / `spline_scaler` mean no base branch / unit scalers. With
    `spline=False` the spline path is zeroed (only the base branches remain).
    """
    import torch
    from torch.nn import functional as F

    from ..torch import bspline_basis

    n_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("layers."))
    layers = []
    for i in range(n_layers):
        p = f"layers.{i}."
        w = torch.from_numpy(np.asarray(state_dict[p + "spline_weight"], dtype=np.float32))
        if p + "spline_scaler" in state_dict:
            w = w * torch.from_numpy(np.asarray(state_dict[p + "spline_scaler"], np.float32))[..., None]
        base = state_dict.get(p + "base_weight")
        grid = torch.from_numpy(np.asarray(state_dict[p + "grid"], dtype=np.float32))
        k = grid.shape[1] - w.shape[2] - 1
        layers.append((w.reshape(w.shape[0], -1), None if base is None else
                       torch.from_numpy(np.asarray(base, np.float32)), grid, k))
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            h = torch.from_numpy(np.ascontiguousarray(x[start : start + batch], dtype=np.float32))
            for w, base_w, grid, k in layers:
                out = torch.zeros(h.shape[0], w.shape[0])
                if spline:
                    out = out + F.linear(bspline_basis(h, grid, k).reshape(h.shape[0], -1), w)
                if base_w is not None:
                    out = out + F.linear(F.silu(h), base_w)
                h = out
            outs.append(h.numpy())
    return np.concatenate(outs)


def module_forward(model, x: np.ndarray, batch: int = 2048) -> np.ndarray:
    """Any torch module on x (n, d) -> float32 outputs, in batches, no grad."""
    import torch

    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch]))).numpy())
    return np.concatenate(outs)


def load_features(cache: Path, size: int, log: Callable[[str], None],
                  backbone: str = "mobilenetv2") -> dict[str, np.ndarray]:
    """Normalised (z-score, tanh) Fashion-MNIST features of `backbone`, cached."""
    feats = fashion_mnist_features(cache, size, log, backbone=backbone)
    norm = FeatureNorm(feats["f_train"])
    return {"x_train": norm(feats["f_train"]), "y_train": feats["y_train"],
            "x_test": norm(feats["f_test"]), "y_test": feats["y_test"]}


def cached_head(cache: Path, tag: str, recipe: HeadRecipe, data: dict[str, np.ndarray],
                log: Callable[[str], None]) -> tuple[Any, dict[str, np.ndarray], float]:
    """Train (or load) a head; returns (torch module, float32 state_dict, train seconds)."""
    import torch

    path = cache / "heads" / f"{tag}_{recipe.key()}.npz"
    model = build_head(recipe)
    if path.exists():
        with np.load(path) as z:
            model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files if k != "__seconds"})
            seconds = float(z["__seconds"]) if "__seconds" in z.files else float("nan")
    else:
        log(f"training {recipe.kind} head {'-'.join(map(str, recipe.widths))} "
            f"({recipe.epochs} epochs, seed {recipe.seed}; cached)")
        started = time.perf_counter()
        model = train_head(recipe, data["x_train"], data["y_train"], log)
        seconds = time.perf_counter() - started
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, __seconds=np.array(seconds),
                 **{k: v.detach().numpy() for k, v in model.state_dict().items()})
        tmp.replace(path)
    model.eval()
    return model, head_state_dict(model, recipe), seconds
