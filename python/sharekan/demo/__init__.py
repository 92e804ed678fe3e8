"""`sharekan demo`: the vision-KAN pipeline end to end on the default configuration.

Frozen MobileNetV2 features of Fashion-MNIST -> a trained KAN head 1280 -> 256 -> 10 ->
`sharekan.compress` -> accuracy, fidelity, eager latency and the ExecuTorch programs of dense
versus compressed. Modules: `data` (Fashion-MNIST from its Debian package, the cache
directory), `features` (frozen backbones, cached pooled features), `heads` (head recipes,
training, forward passes), `metrics` (fidelity, byte counts), `run` (the pipeline and its
table). torch, torchvision, executorch and the weights package are imported only when used.

>>> from sharekan.demo import run_demo
>>> summary = run_demo(quick=True)   # doctest: +SKIP

The measured benchmarks built on these modules live in the repository, not in the wheel:
benches/sharekan_bench (see benches/vision/README.md).
"""

from __future__ import annotations

from .run import DEMO_CONFIG, run_demo

__all__ = ["DEMO_CONFIG", "run_demo"]
