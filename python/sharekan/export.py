"""Export a PyTorch model (compressed or dense) to an ExecuTorch `.pte` program.

Compressed layers (`sharekan.torch.LuthamLinear`) export as the custom operator
`sharekan::lutham.out`; running the program needs the LUTHAM kernel library
(`sharekan.lutham.load_library()` in Python, or the standalone `lutham_runner`).

>>> import sharekan
>>> sharekan.export_pte(model, (x,), "kan.pte")   # doctest: +SKIP
>>> from executorch.runtime import Runtime
>>> sharekan.lutham.load_library()                # doctest: +SKIP
>>> Runtime.get().load_program("kan.pte").load_method("forward").execute([x])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, LuthamBuildError

__all__ = ["export_pte"]


def export_pte(model: Any, example_inputs: Sequence[Any], path: str | os.PathLike[str], *,
               dynamic_batch: bool = True, max_batch: int = 1024) -> Path:
    """Trace `model` with torch.export and write an ExecuTorch program.

    Args:
        model: a torch.nn.Module (put in eval mode; not modified otherwise).
        example_inputs: tuple of example tensors, each with the batch as dimension 0.
        path: output file (`.pte`).
        dynamic_batch: export dimension 0 of every input as one dynamic size
            `torch.export.Dim("batch", min=1, max=max_batch)`; else shapes are static.
            An example batch of 1 is traced as batch 2 (torch.export would otherwise
            specialise the size-1 dimension); the program still accepts batch 1.
        max_batch: upper bound of the dynamic batch. ExecuTorch plans the memory of every
            intermediate tensor for this size when the program is loaded, so keep it near
            the largest batch you run (a dense KAN's (batch, n_in, G+2k) basis tensors
            grow with it; a LUTHAM program's intermediates are only the layer outputs).

    Returns:
        The path written.

    Raises:
        LuthamBuildError: torch or executorch is not installed.
        InvalidInputError: empty example_inputs, or an input without a batch dimension.
    """
    try:
        import torch  # noqa: PLC0415
        from executorch.exir import to_edge  # noqa: PLC0415
    except ImportError as exc:
        raise LuthamBuildError(
            "export_pte needs torch and executorch: pip install 'sharekan[executorch]'"
        ) from exc
    from .torch import ops as _ops  # noqa: F401, PLC0415 - registers sharekan::lutham

    inputs = tuple(example_inputs)
    if not inputs:
        raise InvalidInputError("export_pte: example_inputs is empty")
    if max_batch < 2:
        raise InvalidInputError(f"export_pte: max_batch must be >= 2, got {max_batch}")
    dynamic_shapes = None
    if dynamic_batch:
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                raise InvalidInputError(
                    f"export_pte: example input {i} has no batch dimension "
                    f"({type(t).__name__})"
                )
        inputs = tuple(t.expand(2, *t.shape[1:]).contiguous() if t.shape[0] == 1 else t
                       for t in inputs)
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            program = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
    finally:
        model.train(was_training)
    buffer = to_edge(program).to_executorch().buffer
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buffer)
    os.replace(tmp, out)
    return out
