"""Exceptions raised by sharekan.

Every error names the argument (tensor, layer or file) and the offending values, so a user
can fix the input without reading the source. Errors raised by the Rust core are mapped to
these classes by the bindings.
"""

from __future__ import annotations


class ShareKanError(Exception):
    """Base class of every sharekan error."""


class InvalidInputError(ShareKanError, ValueError):
    """An argument has a value sharekan cannot work with (bad option, K = 0, K > E, ...)."""


class ShapeError(InvalidInputError):
    """An array has the wrong number of dimensions, an empty or a mismatched shape."""


class NonFiniteError(InvalidInputError):
    """An array holds NaN or Inf where finite values are required."""


class DTypeError(InvalidInputError, TypeError):
    """An array has a dtype sharekan does not accept here."""


class CodeRangeError(InvalidInputError):
    """A codebook index is outside [0, K)."""


class LayoutError(InvalidInputError):
    """A state_dict's layout is not recognised, or a tensor in it is inconsistent."""


class ArtifactError(ShareKanError, ValueError):
    """A sharekan artifact is truncated, corrupted, of an unknown format or version."""


class LuthamBuildError(ShareKanError, RuntimeError):
    """The LUTHAM ExecuTorch kernel library could not be built or loaded."""


class InternalError(ShareKanError, RuntimeError):
    """A bug in sharekan: a panic inside the Rust core, caught by the bindings. Please
    report it with the input that caused it."""
