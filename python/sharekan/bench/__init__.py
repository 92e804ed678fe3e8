"""sharekan's measured benchmarks: vision-KAN classification (and detection, multi-head),
formula regression, and the end-to-end demo.

>>> from sharekan.bench import run_demo
>>> summary = run_demo(quick=True)   # doctest: +SKIP

Command line: `python -m sharekan.bench --help`.
"""

from __future__ import annotations

from typing import Any


def run_demo(cache_dir: str | None = None, quick: bool = False) -> dict[str, Any]:
    """The classification pipeline end to end (see `sharekan.bench.demo.run_demo`)."""
    from .demo import run_demo as _run

    return _run(cache_dir=cache_dir, quick=quick)


def main(argv: list[str] | None = None) -> int:
    """`python -m sharekan.bench` (see `sharekan.bench.cli`)."""
    from .cli import main as _main

    return _main(argv)


__all__ = ["main", "run_demo"]
