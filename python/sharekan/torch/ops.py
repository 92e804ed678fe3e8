"""The `sharekan::lutham` PyTorch operator (functional + `.out`), one compressed KAN layer.

Schema (the C++ ExecuTorch kernel in lutham/lutham_kernel.cpp implements `.out`)::

    sharekan::lutham(Tensor x, Tensor grid, Tensor codebook, Tensor codes, Tensor gains,
                     Tensor gain_scale, Tensor edge_bias, Tensor edge_bias_scale,
                     Tensor out_bias, Tensor base_weight, Tensor base_scale, int k,
                     int basis=0, float h=1., int base_act=0) -> Tensor
    sharekan::lutham.out(..., int k, int basis=0, float h=1., int base_act=0, *,
                         Tensor(a!) out) -> Tensor(a!)

Inputs follow ARCHITECTURE.md §4: x f32 (B, n_in); grid f32 (n_in, G+2k+1), or
(1, G+2k+1) for the same knots on every input; codebook f32 (K, M); codes u8/i16/i32
(n_in, n_out); gains i8/f32 (n_in, n_out); gain_scale, edge_bias_scale, base_scale,
out_bias f32 (n_out,); edge_bias, base_weight i8/f32 (n_in, n_out). Result f32 (B, n_out).
`basis`: 0 = B-spline (order k, knots in grid), 1 = RBF exp(-((x - c_m)/h)^2) (grid = the
centres, (n_in or 1, M)), 2 = Chebyshev T_m(tanh x) (grid not read; pass e.g. zeros (1, 2)).
`base_act`: 0 = SiLU, 1 = exact GELU.

Optional tensors are passed as ABSENT = a 1-D tensor of shape (0,) (see `absent()`); an
absent scale means all ones, an absent edge_bias / out_bias / base_weight means no term.
(A real optional `Tensor?` would do too, but a (0,) constant keeps every argument a plain
tensor through torch.export and ExecuTorch's emitter.)

Kernels, chosen per call by the device of the inputs (`resolve_impl`):

- CPU: the Rust evaluator `sharekan._core.lutham_forward` (zero-copy NumPy views in, the
  result wrapped without a copy); the portable path when the extension does not import;
- CUDA: the Triton kernel `triton_lutham.lutham_triton` when `triton_lutham.available()`,
  else the portable path;
- every other backend (CompositeExplicitAutograd: MPS, XPU, ...): the portable path,
  `portable.lutham_portable` (stock torch ops on the input's device).

`use_impl("rust"|"portable"|"triton"|"auto")` (a context manager) or the environment
variable SHAREKAN_LUTHAM_IMPL forces one. `register_fake` gives the shape for
torch.export / torch.compile (the op stays opaque in their graphs).

>>> import torch, sharekan.torch.ops as ops
>>> y = ops.lutham(x, grid, codebook, codes, gains, k=3)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from . import portable

try:  # the Rust evaluator; without it the op runs the portable path (`resolve_impl`)
    from .. import _core
except ImportError:  # pragma: no cover - exercised only without the built extension
    _core = None  # type: ignore[assignment]

__all__ = ["IMPLS", "OP_NAME", "absent", "is_absent", "lutham", "lutham_numpy_args",
           "requested_impl", "resolve_impl", "rust_available", "triton_available", "use_impl"]

OP_NAME = "sharekan::lutham"

_SIG = (
    "Tensor x, Tensor grid, Tensor codebook, Tensor codes, Tensor gains, Tensor gain_scale, "
    "Tensor edge_bias, Tensor edge_bias_scale, Tensor out_bias, Tensor base_weight, "
    "Tensor base_scale, int k, int basis=0, float h=1., int base_act=0"
)
_OPTIONAL = ("gain_scale", "edge_bias", "edge_bias_scale", "out_bias", "base_weight",
             "base_scale")

_lib = torch.library.Library("sharekan", "DEF")  # noqa: TOR901 - defines the namespace once
_lib.define(f"lutham({_SIG}) -> Tensor")
_lib.define(f"lutham.out({_SIG}, *, Tensor(a!) out) -> Tensor(a!)")


def absent() -> torch.Tensor:
    """The ABSENT marker for an optional input: an empty float32 tensor of shape (0,)."""
    return torch.empty(0, dtype=torch.float32)


def is_absent(t: torch.Tensor | None) -> bool:
    """True for None or a 1-D tensor of shape (0,)."""
    return t is None or (t.dim() == 1 and t.shape[0] == 0)


def _np(t: torch.Tensor) -> np.ndarray:
    # Zero-copy on CPU; a copy only when the tensor is not contiguous.
    return t.detach().contiguous().numpy()


def lutham_numpy_args(
    x: torch.Tensor, grid: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor,
    gains: torch.Tensor, gain_scale: torch.Tensor, edge_bias: torch.Tensor,
    edge_bias_scale: torch.Tensor, out_bias: torch.Tensor, base_weight: torch.Tensor,
    base_scale: torch.Tensor, k: int, basis: int = 0, h: float = 1.0, base_act: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """x and the keyword arguments of `sharekan._core.lutham_forward` (absent -> None)."""
    kwargs: dict[str, Any] = {
        "grid": _np(grid), "k": int(k), "codebook": _np(codebook), "codes": _np(codes),
        "gains": _np(gains), "basis": int(basis), "h": float(h), "base_act": int(base_act),
    }
    opts = dict(zip(_OPTIONAL, (gain_scale, edge_bias, edge_bias_scale, out_bias,
                                base_weight, base_scale)))
    for name, t in opts.items():
        kwargs[name] = None if is_absent(t) else _np(t)
    return _np(x), kwargs


# ---- dispatch ---------------------------------------------------------------------------

IMPLS = ("auto", "rust", "portable", "triton")
_IMPL_ENV = "SHAREKAN_LUTHAM_IMPL"
_forced = threading.local()


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Force the implementation of `sharekan::lutham` in this thread (tests, benchmarks).

    `impl`: "auto" (default: see `resolve_impl`), "rust" (the Rust evaluator; CPU tensors
    only), "portable" (`portable.lutham_portable`, any device) or "triton"
    (`triton_lutham.lutham_triton`; needs `triton_lutham.available()`). Overrides the
    environment variable SHAREKAN_LUTHAM_IMPL, which sets the same choice process-wide.
    Under torch.compile / torch.export the op stays opaque, so the choice is made when the
    compiled graph runs.
    """
    _check_impl(impl, "use_impl")
    prev = getattr(_forced, "impl", None)
    _forced.impl = impl
    try:
        yield
    finally:
        _forced.impl = prev


def _check_impl(impl: str, where: str) -> None:
    if impl not in IMPLS:
        raise InvalidInputError(f"{where}: expected one of {IMPLS}, got {impl!r}")


def requested_impl() -> str:
    """The forced implementation: `use_impl`'s, else SHAREKAN_LUTHAM_IMPL's, else "auto"."""
    impl = getattr(_forced, "impl", None)
    if impl is None:
        impl = os.environ.get(_IMPL_ENV, "").strip().lower() or "auto"
        _check_impl(impl, _IMPL_ENV)
    return impl


@functools.lru_cache(maxsize=1)
def _triton_module() -> Any:
    # Written separately (python/sharekan/torch/triton_lutham.py); absent or unimportable
    # means "no Triton kernel", never an error in auto mode.
    try:
        from . import triton_lutham  # noqa: PLC0415
    except ImportError:
        return None
    return triton_lutham


def rust_available() -> bool:
    """True when the Rust extension `sharekan._core` imports."""
    return _core is not None


def triton_available() -> bool:
    """True when triton_lutham imports and says it can run (`available()`)."""
    mod = _triton_module()
    return mod is not None and bool(mod.available())


def resolve_impl(device: torch.device | str) -> str:
    """The implementation `sharekan::lutham` runs for inputs on `device` right now.

    auto: CPU -> "rust" (the Rust evaluator), or "portable" when `sharekan._core` does not
    import; CUDA -> "triton" when `triton_lutham.available()`, else "portable"; any other
    device (MPS, XPU, ...) -> "portable". A forced choice (`use_impl`,
    SHAREKAN_LUTHAM_IMPL) is returned as is and checked when the op runs.
    """
    impl = requested_impl()
    if impl != "auto":
        return impl
    kind = torch.device(device).type
    if kind == "cpu":
        return "rust" if rust_available() else "portable"
    if kind == "cuda" and triton_available():
        return "triton"
    return "portable"


def _forward_rust(*args: Any) -> torch.Tensor:
    assert _core is not None  # checked by `_forward` (rust_available)
    xs, kwargs = lutham_numpy_args(*args)
    return torch.from_numpy(_core.lutham_forward(xs, **kwargs))


def _forward(*args: Any) -> torch.Tensor:
    """One call of the op on whatever device x is on, by `resolve_impl`."""
    x = args[0]
    impl = resolve_impl(x.device)
    if impl == "rust":
        if x.device.type != "cpu":
            raise InvalidInputError(
                f"sharekan::lutham: the Rust evaluator (impl 'rust') runs on CPU tensors, x is "
                f"on {x.device}; use impl 'portable' or 'auto'")
        if not rust_available():
            raise InvalidInputError("sharekan::lutham: impl 'rust' forced, but the extension "
                                    "sharekan._core does not import")
        return _forward_rust(*args)
    if impl == "triton":
        if not triton_available():
            raise InvalidInputError(
                "sharekan::lutham: impl 'triton' forced, but triton_lutham is missing or not "
                "available (needs triton and a CUDA device, or TRITON_INTERPRET=1)")
        return _triton_module().lutham_triton(*args)
    return portable.lutham_portable(*args)


def _forward_out(args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    y = _forward(*args)
    out.resize_(y.shape)
    out.copy_(y)
    return out


# CPU and CUDA get their own kernels; CompositeExplicitAutograd covers every other backend
# (MPS, XPU, PrivateUse1, ...). Meta / FakeTensor use the register_fake kernel below.
for _key in ("CPU", "CUDA", "CompositeExplicitAutograd"):
    torch.library.impl(_lib, "lutham", _key)(
        lambda x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale,
        out_bias, base_weight, base_scale, k, basis=0, h=1.0, base_act=0: _forward(
            x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale, out_bias,
            base_weight, base_scale, k, basis, h, base_act))
    torch.library.impl(_lib, "lutham.out", _key)(
        lambda x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale,
        out_bias, base_weight, base_scale, k, basis=0, h=1.0, base_act=0, *, out: _forward_out(
            (x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale, out_bias,
             base_weight, base_scale, k, basis, h, base_act), out))


@torch.library.register_fake("sharekan::lutham")
def _lutham_fake(x, grid, codebook, codes, gains, gain_scale, edge_bias, edge_bias_scale,
                 out_bias, base_weight, base_scale, k, basis=0, h=1.0, base_act=0):
    torch._check(x.dim() == 2, lambda: f"lutham: x must be 2-D, got {x.dim()} dims")
    torch._check(codes.dim() == 2, lambda: f"lutham: codes must be 2-D, got {codes.dim()} dims")
    return x.new_empty((x.shape[0], codes.shape[1]), dtype=torch.float32)


def lutham(
    x: torch.Tensor, grid: torch.Tensor, codebook: torch.Tensor, codes: torch.Tensor,
    gains: torch.Tensor, gain_scale: torch.Tensor | None = None,
    edge_bias: torch.Tensor | None = None, edge_bias_scale: torch.Tensor | None = None,
    out_bias: torch.Tensor | None = None, base_weight: torch.Tensor | None = None,
    base_scale: torch.Tensor | None = None, *, k: int, basis: int = 0, h: float = 1.0,
    base_act: int = 0,
) -> torch.Tensor:
    """Evaluate one compressed KAN layer with `torch.ops.sharekan.lutham` (None -> absent).

    Args: as the module docstring; x (B, n_in) float32.

    Returns:
        (B, n_out) float32.

    Raises:
        sharekan.errors.InvalidInputError (and subclasses) on bad dtypes, shapes or codes
        out of range (the Rust evaluator's, or the same classes from the portable path).
    """
    # absent markers on x's device, so the op dispatches on x's device alone
    opts = [torch.empty(0, dtype=torch.float32, device=x.device) if t is None else t
            for t in (gain_scale, edge_bias, edge_bias_scale, out_bias, base_weight, base_scale)]
    return torch.ops.sharekan.lutham(x, grid, codebook, codes, gains, *opts, int(k),
                                     int(basis), float(h), int(base_act))
