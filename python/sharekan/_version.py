"""The installed sharekan version (its own module so the artifact writer can name it
without importing the package's `__init__`)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sharekan")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"
