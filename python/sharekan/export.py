"""Export a PyTorch model (compressed or dense) to an ExecuTorch `.pte` program or ONNX.

Compressed layers (`sharekan.torch.LuthamLinear`, any call of `torch.ops.sharekan.lutham`)
export in one of two forms, chosen by `kernel`:

- "lutham" (default): the custom operator `sharekan::lutham.out`; running the program needs
  the LUTHAM kernel library (`sharekan.lutham.load_library()` in Python, or the standalone
  `lutham_runner`). Fastest, smallest.
- "portable": the op decomposed into stock ATen operations (`sharekan.torch.stock`), the
  compressed tensors kept as they are and decoded in the graph; runs in an unmodified
  ExecuTorch runtime, optionally lowered to the XNNPACK delegate (`delegate="xnnpack"`).

`export_onnx` writes the portable form as an ONNX model (ONNX Runtime, any ONNX consumer).

>>> import sharekan
>>> sharekan.export_pte(model, (x,), "kan.pte")   # doctest: +SKIP
>>> from executorch.runtime import Runtime
>>> sharekan.lutham.load_library()                # doctest: +SKIP
>>> Runtime.get().load_program("kan.pte").load_method("forward").execute([x])  # doctest: +SKIP
>>> sharekan.export_pte(model, (x,), "kan_stock.pte", kernel="portable", delegate="xnnpack")  # doctest: +SKIP
>>> sharekan.export_onnx(model, (x,), "kan.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, LuthamBuildError

__all__ = ["DELEGATES", "KERNELS", "STRATEGIES", "export_onnx", "export_pte"]

#: Values of `export_pte(kernel=...)`.
KERNELS = ("lutham", "portable")
#: Values of `export_pte(delegate=...)` (None: ExecuTorch's own CPU kernels).
DELEGATES = (None, "xnnpack")
#: Values of `strategy` (portable form only; see `sharekan.torch.stock`).
STRATEGIES = ("auto", "gather", "decode")


def _write(out: Path, data: bytes) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def _check_option(where: str, name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise InvalidInputError(f"{where}: {name} must be one of {list(allowed)}, got {value!r}")


#: Edge-dialect operations that `_fold_constant_layouts` evaluates at export time when all
#: their inputs are constants: layout copies and small knot arithmetic (same dtype and size
#: out as in). Casts and products, which would store uint8 / int8 tensors as int64 / float32,
#: stay in the graph.
_FOLDABLE = ("permute_copy", "t_copy", "transpose_copy", "view_copy", "unsqueeze_copy",
             "squeeze_copy", "slice_copy", "select_copy", "sub", "reciprocal", "alias_copy")


def _fold_constant_layouts(edge: Any) -> None:
    """Evaluate `_FOLDABLE` operations on constants once, at export time (ExecuTorch's
    constant_prop_pass with every other target skipped), in the edge program in place: the
    transposed codes, gains and biases and the knot-difference reciprocals of the portable
    decomposition become stored constants of the same dtype instead of per-call copies."""
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass  # noqa: PLC0415

    program = edge.exported_program()
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    # edge and ATen overloads name their op `_opname` ("permute_copy"); getitem etc. do not
    skip = {t for t in targets if getattr(t, "_opname", None) not in _FOLDABLE}
    constant_prop_pass(program, custom_skip_targets=skip)


def _exported_program(where: str, model: Any, example_inputs: Sequence[Any], *,
                      dynamic_batch: bool, max_batch: int, kernel: str, strategy: str) -> Any:
    """torch.export of `model` in eval mode; with kernel "portable" the sharekan::lutham calls
    decomposed into stock ATen ops (after one validating eager run through the portable
    path, since the traced graph cannot check the layers' tensors)."""
    import torch  # noqa: PLC0415

    from .torch import ops as _ops  # noqa: PLC0415 - registers sharekan::lutham
    from .torch import stock as _stock  # noqa: PLC0415

    inputs = tuple(example_inputs)
    if not inputs:
        raise InvalidInputError(f"{where}: example_inputs is empty")
    if max_batch < 2:
        raise InvalidInputError(f"{where}: max_batch must be >= 2, got {max_batch}")
    dynamic_shapes = None
    if dynamic_batch:
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                raise InvalidInputError(
                    f"{where}: example input {i} has no batch dimension "
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
            if kernel == "portable":
                with _ops.use_impl("portable"):  # validates every layer's tensors
                    model(*inputs)
            program = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
    finally:
        model.train(was_training)
    if kernel == "portable":
        planned = max_batch if dynamic_batch else max(
            (int(t.shape[0]) for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0),
            default=1)
        program = program.run_decompositions(_stock.decomposition_table(strategy, planned))
        left = sorted({str(node.target) for node in program.graph.nodes
                       if node.op == "call_function" and "sharekan" in str(node.target)})
        if left:  # pragma: no cover - every overload of the op is in the table
            raise InvalidInputError(f"{where}: kernel='portable' left custom ops {left}")
    return program


def export_pte(model: Any, example_inputs: Sequence[Any], path: str | os.PathLike[str], *,
               dynamic_batch: bool = True, max_batch: int = 1024, kernel: str = "lutham",
               strategy: str = "auto", delegate: str | None = None) -> Path:
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
            grow with it; a LUTHAM program's intermediates are only the layer outputs; a
            portable one's are a few (batch, n_in, M) tensors per layer, plus, with the
            "gather" strategy, (batch, n_in, K + n_out)).
        kernel: how compressed layers run. "lutham": the custom op `sharekan::lutham.out`
            (needs the LUTHAM kernel library in the runtime: `sharekan.lutham.load_library()`
            or `lutham_runner`). "portable": stock ATen operations only
            (`sharekan.torch.stock`): the program runs in any ExecuTorch runtime, with or
            without the XNNPACK delegate. Codes, gains, biases and base weights are stored
            as in the compressed layer (uint8 / int16 codes, int8 or float32 weights, float32
            scales and codebook; only layout copies of them, like the transposed codes, are
            evaluated at export time), so the file is about as large as the "lutham" one
            (1.03x on the 1280-256-10 head); the weights are decoded in the graph on each
            call, which makes it much slower than the kernel program.
        strategy: kernel "portable" only: "gather" (projection tables, rows picked by the
            codes: the least arithmetic), "decode" (weights decoded, then one matrix
            product: fixed temporaries) or "auto" (per layer, the one with fewer planned
            temporary bytes at `max_batch`: gather for small batches or codebooks,
            `sharekan.torch.stock.choose_strategy`).
        delegate: None (ExecuTorch's CPU kernels) or "xnnpack": lowered with
            `to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`, so the
            matrix products and most float arithmetic run in the XNNPACK delegate (the rest,
            and the custom op with kernel "lutham", stay in the CPU kernels).

    Returns:
        The path written.

    Raises:
        LuthamBuildError: torch or executorch (or, for delegate "xnnpack", its XNNPACK
            backend) is not installed.
        InvalidInputError: empty example_inputs, an input without a batch dimension,
            max_batch < 2, an unknown kernel / strategy / delegate; with kernel "portable",
            a layer whose tensors fail validation (the portable path's `sharekan.errors`
            subclass, e.g. CodeRangeError).

    Example:
        >>> sharekan.export_pte(model, (x,), "head.pte", kernel="portable",
        ...                     delegate="xnnpack", max_batch=64)  # doctest: +SKIP
    """
    _check_option("export_pte", "kernel", kernel, KERNELS)
    _check_option("export_pte", "strategy", strategy, STRATEGIES)
    _check_option("export_pte", "delegate", delegate, DELEGATES)
    try:
        from executorch.exir import to_edge, to_edge_transform_and_lower  # noqa: PLC0415
    except ImportError as exc:
        raise LuthamBuildError(
            "export_pte needs torch and executorch: pip install 'sharekan[executorch]'"
        ) from exc
    program = _exported_program("export_pte", model, example_inputs,
                                dynamic_batch=dynamic_batch, max_batch=max_batch,
                                kernel=kernel, strategy=strategy)
    if delegate == "xnnpack":
        try:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (  # noqa: PLC0415
                XnnpackPartitioner,
            )
        except ImportError as exc:  # pragma: no cover - part of the executorch wheel
            raise LuthamBuildError(
                "export_pte(delegate='xnnpack') needs executorch's XNNPACK backend") from exc
    if kernel == "portable":
        # fold the constants' layout copies first, then hand the program to XNNPACK
        edge = to_edge(program)
        _fold_constant_layouts(edge)
        if delegate == "xnnpack":
            edge = edge.to_backend(XnnpackPartitioner())
    elif delegate == "xnnpack":
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    else:
        edge = to_edge(program)
    return _write(Path(path), edge.to_executorch().buffer)


def export_onnx(model: Any, example_inputs: Sequence[Any], path: str | os.PathLike[str], *,
                dynamic_batch: bool = True, max_batch: int = 1024, strategy: str = "auto",
                opset_version: int | None = None, optimize: bool = False) -> Path:
    """Trace `model` with torch.export and write it as one ONNX file, compressed layers in
    the portable form (`export_pte(kernel="portable")`'s stock-op decomposition).

    Args:
        model, example_inputs, dynamic_batch, max_batch, strategy: as `export_pte` (ONNX
            Runtime allocates for the batch it runs, so `max_batch` here only bounds the
            dynamic dimension and steers strategy "auto").
        path: output file (`.onnx`); the weights are inside it (no external data file).
        opset_version: ONNX opset (default: torch.onnx's).
        optimize: run torch.onnx's graph optimizer (onnxscript). Off by default: it
            folds constant subgraphs below a size limit, which decodes small layers into
            float32 initialisers (1.15x the bytes on the demo head, whose 256 -> 10 layer
            it decodes). ONNX Runtime folds and fuses the graph in memory when it loads it,
            so the default file runs as fast (measured on the demo head).

    The input and output names are `x0, x1, ...` (one per example input) and `y`.
    Returns:
        The path written.

    Raises:
        LuthamBuildError: torch, onnx or onnxscript is not installed
            (`pip install 'sharekan[onnx]'`).
        InvalidInputError: as `export_pte`.

    Example:
        >>> sharekan.export_onnx(model, (x,), "head.onnx", max_batch=64)  # doctest: +SKIP
        >>> import onnxruntime as ort                                     # doctest: +SKIP
        >>> ort.InferenceSession("head.onnx").run(None, {"x0": x.numpy()})  # doctest: +SKIP
    """
    _check_option("export_onnx", "strategy", strategy, STRATEGIES)
    try:
        import onnx  # noqa: F401, PLC0415
        import onnxscript  # noqa: F401, PLC0415
        import torch  # noqa: PLC0415
    except ImportError as exc:
        raise LuthamBuildError(
            "export_onnx needs torch, onnx and onnxscript: pip install 'sharekan[onnx]'"
        ) from exc
    inputs = tuple(example_inputs)
    program = _exported_program("export_onnx", model, inputs, dynamic_batch=dynamic_batch,
                                max_batch=max_batch, kernel="portable", strategy=strategy)
    names = [f"x{i}" for i in range(len(inputs))]
    onnx_program = torch.onnx.export(program, f=None, dynamo=True, input_names=names,
                                     output_names=["y"], opset_version=opset_version,
                                     optimize=optimize)
    if onnx_program is None:  # pragma: no cover - dynamo=True always returns the program
        raise InvalidInputError("export_onnx: torch.onnx.export returned no program")
    proto = onnx_program.model_proto
    for node in proto.graph.node:  # torch.onnx's per-node stack traces: most of the bytes
        del node.metadata_props[:]
    return _write(Path(path), proto.SerializeToString())
