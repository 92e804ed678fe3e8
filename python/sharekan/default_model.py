"""The embedded default model: a small efficient-kan-layout KAN trained on sklearn's digits.

`sharekan` ships one trained checkpoint, `sharekan/data/default_kan.safetensors`, so that
the first command of the README (compress with no arguments) works offline on a fresh
install. This module holds both halves:

- `train_default(out_path)` re-creates that file from scratch (seeded, single-threaded,
  deterministic; under a minute on one CPU core). It needs torch, scikit-learn and the
  `safetensors` package; it is a maintainer's script, run as
  ``python -m sharekan.default_model --out python/sharekan/data/default_kan.safetensors``.
- `load_default()` reads the shipped file through `sharekan._core.load_safetensors` and
  needs only numpy at runtime.

The file holds the model's state_dict under efficient-kan key names
(`layers.{l}.base_weight` (n_out, n_in), `layers.{l}.spline_weight` (n_out, n_in, G + k),
`layers.{l}.spline_scaler` (n_out, n_in), `layers.{l}.grid` (n_in, G + 2k + 1), all float32)
plus the held-out digits split under `data.test_x` (n_test, 64) float32 in [-1, 1] and
`data.test_y` (n_test,) int64, so accuracy and output fidelity can be measured without
scikit-learn. Header metadata records the seed, widths, grid size, spline order, the
training recipe and the measured accuracies.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import SupportsFloat, SupportsIndex, SupportsInt

import numpy as np

from sharekan import _core
from sharekan.errors import ArtifactError

#: Where the shipped checkpoint lives inside the package.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "data" / "default_kan.safetensors"

#: Training recipe of the shipped checkpoint (recorded in its metadata).
DEFAULT_RECIPE: dict[str, object] = {
    "seed": 0,
    "widths": [64, 32, 10],
    "grid_size": 8,
    "spline_order": 3,
    "grid_range": [-1.0, 1.0],
    "test_size": 0.25,
    "split_seed": 0,
    "epochs": 60,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 1e-4,
}

DATA_PREFIX = "data."


# Recipe values are untyped (a caller's overrides, JSON): these convert them as int(),
# float() and iteration do, with the same TypeError for a value of another kind.
def _int(value: object) -> int:
    if not isinstance(value, (str, SupportsInt, SupportsIndex)):
        raise TypeError(f"recipe value {value!r}: expected an integer")
    return int(value)


def _float(value: object) -> float:
    if not isinstance(value, (str, SupportsFloat, SupportsIndex)):
        raise TypeError(f"recipe value {value!r}: expected a number")
    return float(value)


def _items(value: object) -> Iterable[object]:
    if not isinstance(value, Iterable):
        raise TypeError(f"recipe value {value!r}: expected a sequence")
    return value


def _digits_split(test_size: float, split_seed: int) -> tuple[np.ndarray, ...]:
    """Digits 8x8 images scaled to [-1, 1], stratified fixed split.

    Returns:
        train_x (n_train, 64) float32, train_y (n_train,) int64,
        test_x (n_test, 64) float32, test_y (n_test,) int64.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # pixel values are integers 0..16
    x = (digits.data.astype(np.float32) / 8.0 - 1.0).astype(np.float32)  # (1797, 64)
    y = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=test_size, random_state=split_seed, stratify=y
    )
    return train_x, train_y, test_x, test_y


def train_default(
    out_path: str | Path = DEFAULT_MODEL_PATH,
    recipe: dict[str, object] | None = None,
    verbose: bool = True,
) -> dict[str, str]:
    """Train the default digits KAN and write it (plus its test split) as safetensors.

    Deterministic: `torch.manual_seed(seed)`, one torch thread, deterministic algorithms,
    a seeded shuffling generator; the same torch build reproduces the same bytes.

    Args:
        out_path: file to write (parent folders are created).
        recipe: overrides of `DEFAULT_RECIPE` (keys as there).
        verbose: print a line per 10 epochs and the final accuracy.

    Returns:
        The metadata dict written into the file header (all values are strings), e.g.
        ``{"test_accuracy": "0.9733", "widths": "[64, 32, 10]", ...}``.

    Raises:
        ImportError: torch, scikit-learn or safetensors is missing.

    Example:
        >>> meta = train_default("/tmp/default_kan.safetensors")  # doctest: +SKIP
        >>> float(meta["test_accuracy"]) > 0.95  # doctest: +SKIP
        True
    """
    import torch
    from safetensors.numpy import save_file
    from torch.nn import functional as F

    from sharekan.torch.kan import KAN

    cfg = dict(DEFAULT_RECIPE)
    cfg.update(recipe or {})
    seed = _int(cfg["seed"])
    widths = [_int(w) for w in _items(cfg["widths"])]
    grid_size = _int(cfg["grid_size"])
    spline_order = _int(cfg["spline_order"])
    bounds = [_float(v) for v in _items(cfg["grid_range"])]
    grid_range = (bounds[0], bounds[1])
    epochs = _int(cfg["epochs"])
    batch_size = _int(cfg["batch_size"])

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        train_x, train_y, test_x, test_y = _digits_split(
            _float(cfg["test_size"]), _int(cfg["split_seed"])
        )
        torch.manual_seed(seed)
        model = KAN(widths, grid_size=grid_size, spline_order=spline_order,
                    grid_range=grid_range)
        opt = torch.optim.AdamW(model.parameters(), lr=_float(cfg["lr"]),
                                weight_decay=_float(cfg["weight_decay"]))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        xt, yt = torch.from_numpy(train_x), torch.from_numpy(train_y)
        shuffle = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(xt.shape[0], generator=shuffle)
            total = 0.0
            for start in range(0, xt.shape[0], batch_size):
                idx = perm[start : start + batch_size]
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * idx.numel()
            sched.step()
            if verbose and (epoch + 1) % 10 == 0:
                print(f"epoch {epoch + 1:3d}  train loss {total / xt.shape[0]:.4f}")
        train_seconds = time.perf_counter() - t0

        model.eval()
        with torch.no_grad():
            train_acc = float((model(xt).argmax(1) == yt).float().mean())
            test_acc = float(
                (model(torch.from_numpy(test_x)).argmax(1) == torch.from_numpy(test_y))
                .float()
                .mean()
            )
        tensors = {
            name: value.detach().cpu().numpy().astype(np.float32)
            for name, value in model.state_dict().items()
        }
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(False)

    tensors[DATA_PREFIX + "test_x"] = np.ascontiguousarray(test_x, dtype=np.float32)
    tensors[DATA_PREFIX + "test_y"] = np.ascontiguousarray(test_y, dtype=np.int64)
    metadata = {
        "description": "sharekan default model: efficient-kan-layout KAN on sklearn digits "
        "(8x8, inputs scaled to [-1, 1]); data.* keys hold the held-out test split",
        "layout": "efficient-kan",
        "seed": str(seed),
        "widths": json.dumps(widths),
        "grid_size": str(grid_size),
        "spline_order": str(spline_order),
        "recipe": json.dumps(cfg, sort_keys=True),
        "train_accuracy": f"{train_acc:.4f}",
        "test_accuracy": f"{test_acc:.4f}",
        "n_train": str(train_x.shape[0]),
        "n_test": str(test_x.shape[0]),
        "torch_version": torch.__version__,
    }
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=metadata)
    if verbose:
        print(
            f"trained {widths} G={grid_size} k={spline_order} in {train_seconds:.1f} s: "
            f"train acc {train_acc:.4f}, test acc {test_acc:.4f} -> {out} "
            f"({out.stat().st_size} bytes)"
        )
    return metadata


def load_default(
    path: str | Path | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Read the shipped default model and its held-out test split.

    Args:
        path: a file written by `train_default`; default: the one shipped in the package.

    Returns:
        state_dict: efficient-kan keys -> float32 arrays (``layers.{l}.base_weight``
            (n_out, n_in), ``layers.{l}.spline_weight`` (n_out, n_in, G + k),
            ``layers.{l}.spline_scaler`` (n_out, n_in), ``layers.{l}.grid`` (n_in, G + 2k + 1)).
        test_x: (n_test, 64) float32 inputs in [-1, 1].
        test_y: (n_test,) int64 labels 0..9.

    Raises:
        sharekan.errors.ArtifactError: the file is not a valid safetensors file or lacks the
            test split.
        OSError: the file cannot be read.

    Example:
        >>> state_dict, test_x, test_y = load_default()
        >>> state_dict["layers.0.spline_weight"].shape
        (32, 64, 11)
    """
    tensors, _metadata = _core.load_safetensors(str(path or DEFAULT_MODEL_PATH))
    state_dict = {k: tensors[k] for k in sorted(tensors) if not k.startswith(DATA_PREFIX)}
    try:
        test_x = tensors[DATA_PREFIX + "test_x"]
        test_y = tensors[DATA_PREFIX + "test_y"]
    except KeyError as exc:
        raise ArtifactError(
            f"{path or DEFAULT_MODEL_PATH}: missing tensor {exc.args[0]!r} "
            "(expected data.test_x and data.test_y next to the state_dict)"
        ) from None
    return state_dict, test_x, test_y


def default_metadata(path: str | Path | None = None) -> dict[str, str]:
    """Header metadata of the default model file (seed, widths, accuracies, recipe)."""
    _tensors, metadata = _core.load_safetensors(str(path or DEFAULT_MODEL_PATH))
    return dict(metadata)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m sharekan.default_model --out PATH [--seed N] [--epochs N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_MODEL_PATH), help="output .safetensors")
    parser.add_argument("--seed", type=int, default=_int(DEFAULT_RECIPE["seed"]))
    parser.add_argument("--epochs", type=int, default=_int(DEFAULT_RECIPE["epochs"]))
    args = parser.parse_args(argv)
    train_default(args.out, recipe={"seed": args.seed, "epochs": args.epochs})


if __name__ == "__main__":
    main()
