"""sharekan's measured benchmarks (not part of the wheel): the vision-KAN benchmark
(classification, regression, multi-head, detection, transfer) and the micro-benchmarks of
the compiler and kernels (k-means, LUTHAM on CPU and GPU, layouts, refinement,
compensation). One command line, one report module (JSON + Markdown + plots under
benches/results/); the demo's modules (`sharekan.demo`: data, features, heads, metrics) are
reused from the package.

Run from the repository root (see benches/README.md):

    PYTHONPATH=benches .venv/bin/python -m sharekan_bench --help
"""

from __future__ import annotations

# no imports here: `kmeans` sets thread counts before NumPy loads (sharekan_bench.cli imports
# each benchmark only when it runs); `backbones` registers EfficientNet-Lite0 when imported


def main(argv: list[str] | None = None) -> int:
    """`python -m sharekan_bench` (see `sharekan_bench.cli`)."""
    from .cli import main as _main

    return _main(argv)


__all__ = ["main"]
