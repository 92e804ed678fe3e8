"""Reading and writing checkpoint files: safetensors, NumPy .npz and PyTorch .pt/.pth."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from . import _core
from .errors import InvalidInputError
from .validation import to_numpy


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """name -> array from a .safetensors, .npz or .pt/.pth file (torch needed for the last)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint: {path!r}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        tensors, _ = _core.load_safetensors(path)
        return tensors
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            import torch
        except ImportError:
            raise InvalidInputError(
                f"{path!r}: reading PyTorch checkpoints needs torch (pip install sharekan[torch])"
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if (
            isinstance(obj, Mapping)
            and "state_dict" in obj
            and isinstance(obj["state_dict"], Mapping)
        ):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise InvalidInputError(f"{path!r}: expected a state_dict, got {type(obj).__name__}")
        return {k: to_numpy(v, k) for k, v in obj.items()}
    raise InvalidInputError(
        f"{path!r}: unknown checkpoint type {suffix!r}; use .safetensors, .npz, .pt or .pth"
    )


def write_checkpoint(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Write name -> array as .safetensors, .npz or .pt/.pth (by suffix)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    if suffix == ".safetensors":
        _core.save_safetensors(path, arrays, {"format": "pt"})
    elif suffix == ".npz":
        # allow_pickle spelled out (numpy's default): a tensor named "allow_pickle" is then
        # an error, as one named "file" already is, instead of silently becoming the flag
        np.savez(path, allow_pickle=True, **arrays)
    elif suffix in (".pt", ".pth"):
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    else:
        raise InvalidInputError(
            f"{path!r}: unknown checkpoint type {suffix!r}; use .safetensors, .npz, .pt or .pth"
        )
