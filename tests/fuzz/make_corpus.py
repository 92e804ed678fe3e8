"""Write the fuzzer's seed corpus: small real sharekan artifacts of every layout and the
storage options that change the artifact's tensors (int8 or float codebook, folded or
per-edge biases, int8 / int4 / float / folded base weights, 4- or 8-bit gains, K = 1, 2,
16 and 300 so codes are u8 or i16, a shared codebook scale, a model-shared codebook).

    .venv/bin/python tests/fuzz/make_corpus.py [--out tests/fuzz/corpus]

Needs torch (the FastKAN / ChebyKAN / TorchKAN / KANConv seeds come from the modules in
tests/fixtures_kan_libraries.py, randomly initialised, not trained). Deterministic; the
committed corpus was written by this script. The fuzzer itself needs only numpy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: kan_fixtures, fixtures_kan_libraries

import sharekan  # noqa: E402
from kan_fixtures import efficient_kan_state_dict  # noqa: E402


def _pykan_state_dict(rng: np.random.Generator, widths: list[int], grid_size: int = 4,
                      k: int = 3) -> dict[str, np.ndarray]:
    """A pykan MultKAN-like state_dict (act_fun.{l}.coef/grid/scale_sp/scale_base/mask plus
    the identity node / subnode affines and an inactive symbolic branch), per-input
    non-uniform grids."""
    sd: dict[str, np.ndarray] = {}
    for layer, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        p = f"act_fun.{layer}."
        inner = np.sort(rng.uniform(-1, 1, size=(n_in, grid_size + 1)), axis=1)
        inner[:, 0], inner[:, -1] = -1.0, 1.0
        step = 2.0 / grid_size
        left = inner[:, :1] - step * np.arange(k, 0, -1)[None, :]
        right = inner[:, -1:] + step * np.arange(1, k + 1)[None, :]
        sd[p + "grid"] = np.concatenate([left, inner, right], axis=1).astype(np.float32)
        sd[p + "coef"] = rng.normal(scale=0.3, size=(n_in, n_out, grid_size + k)).astype(np.float32)
        sd[p + "scale_base"] = rng.normal(scale=0.5, size=(n_in, n_out)).astype(np.float32)
        sd[p + "scale_sp"] = np.ones((n_in, n_out), dtype=np.float32)
        mask = np.ones((n_in, n_out), dtype=np.float32)
        mask[0, 0] = 0.0  # a pruned edge
        sd[p + "mask"] = mask
        sd[f"node_scale_{layer}"] = np.ones(n_out, dtype=np.float32)
        sd[f"node_bias_{layer}"] = np.zeros(n_out, dtype=np.float32)
        sd[f"subnode_scale_{layer}"] = np.ones(n_out, dtype=np.float32)
        sd[f"subnode_bias_{layer}"] = np.zeros(n_out, dtype=np.float32)
        sd[f"symbolic_fun.{layer}.mask"] = np.zeros((n_out, n_in), dtype=np.float32)
        sd[f"symbolic_fun.{layer}.affine"] = np.zeros((n_out, n_in, 4), dtype=np.float32)
    return sd


def _torch_cases() -> list[tuple[str, dict[str, np.ndarray], dict]]:
    """(name, state_dict, extra compress kwargs) of the torch-module seeds."""
    import torch
    from fixtures_kan_libraries import ChebyKAN, ConvNet, FastKAN, KANConv2DLayer, TorchKAN

    torch.set_num_threads(1)
    out = []
    for name, make, extra in (
        ("fastkan", lambda: FastKAN([3, 4, 2], num_grids=5), {}),
        ("chebykan", lambda: ChebyKAN([3, 4, 2], degree=3), {}),
        ("torchkan", lambda: TorchKAN([3, 4, 2], grid_size=3, spline_order=2), {}),
        ("convkan", lambda: ConvNet(KANConv2DLayer, [1, 2], grid_size=3, spline_order=2),
         {"layout_options": {"grid_size": 3, "spline_order": 2, "grid_range": (-1.0, 1.0)}}),
    ):
        torch.manual_seed(0)
        model = make()
        sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        out.append((name, sd, extra))
    return out


def seeds() -> list[tuple[str, dict[str, np.ndarray], dict]]:
    """(file stem, state_dict, compress keyword arguments) of every seed."""
    rng = np.random.default_rng(0)
    small = efficient_kan_state_dict(rng, [3, 4, 2], grid_size=4, k=3)
    tiny = efficient_kan_state_dict(rng, [2, 2], grid_size=3, k=2)
    mid = efficient_kan_state_dict(rng, [5, 4, 4], grid_size=3, k=3)  # 20 and 16 edges
    wide = efficient_kan_state_dict(rng, [20, 16], grid_size=3, k=1)  # 320 edges: K = 300
    rng_in = (-1.0, 1.0)
    out: list[tuple[str, dict[str, np.ndarray], dict]] = [
        ("ekan_int8_fold", small, dict(codebook_size=4, bias="fold", input_range=rng_in)),
        ("ekan_int8_edge_int4base", small, dict(codebook_size=4, bias="edge", base="int4")),
        ("ekan_float_edge_floatbase", small, dict(codebook_size=2, int8=False, bias="edge",
                                                  base="float")),
        ("ekan_gain4_shared", small, dict(codebook_size=3, gain_bits=4, codebook_scale="shared",
                                          bias="edge")),
        ("ekan_basefold", small, dict(codebook_size=2, base="fold", bias="fold",
                                      input_range=rng_in)),
        ("ekan_k1_modelshare", small, dict(codebook_size=1, share="model", bias="edge")),
        ("ekan_tiny_k2", tiny, dict(codebook_size=2, bias="edge")),
        ("ekan_k16", mid, dict(codebook_size=16, bias="fold", input_range=rng_in)),
        ("ekan_k300_i16", wide, dict(codebook_size=300, bias="fold", base="int4", gain_bits=4,
                                     input_range=rng_in, n_iter=2)),
        ("pykan", _pykan_state_dict(rng, [2, 3, 2]), dict(codebook_size=3, bias="edge")),
    ]
    for name, sd, extra in _torch_cases():
        out.append((name, sd, dict(codebook_size=3, bias="edge", **extra)))
    from sharekan.default_model import load_default

    default_sd, _, _ = load_default()
    out.append(("default_model", default_sd, dict(codebook_size=8, gain_bits=4, base="int4",
                                                  bias="fold", input_range=rng_in, n_iter=5)))
    # residual stages: dense, and under a byte budget (sparse stages, dropped edges); the
    # "_zstd" seeds are saved entropy-coded (format version 3, packed header)
    staged = efficient_kan_state_dict(np.random.default_rng(1), [12, 8, 3], grid_size=3, k=3)
    out += [
        ("ekan_stages", staged, dict(codebook_size=4, stages=3, bias="edge", gain_bits=4)),
        ("ekan_stages_budget", staged, dict(codebook_size=4, stages=3, bias="edge",
                                            target_bytes_per_edge=5.0, drop_edges=True)),
        ("ekan_stages_budget_zstd", staged, dict(codebook_size=4, stages=3, bias="edge",
                                                 target_bytes_per_edge=5.0, drop_edges=True)),
    ]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "corpus"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, sd, kwargs in seeds():
        try:
            model = sharekan.compress(sd, **kwargs)
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"{name}: not written ({type(exc).__name__}: {exc})")
            continue
        path = out / f"{name}.safetensors"
        model.save(str(path), entropy="zstd" if name.endswith("_zstd") else None)
        support = [layer.unsupported_reason() for layer in model.layers.values()]
        print(f"{name}: {model.source_layout}, {len(model.layers)} layers, "
              f"{path.stat().st_size} bytes, evaluator: "
              f"{'lutham' if not any(support) else 'refused'}")
    # a format-version-1 artifact (digest over the tensors only), still read by `load`
    from sharekan.artifact import seal, write

    tensors, metadata = sharekan._core.load_safetensors(str(out / "ekan_tiny_k2.safetensors"))
    metadata = dict(metadata, format_version="1")
    write(out / "ekan_tiny_k2_v1.safetensors", tensors, seal(tensors, metadata))
    print("ekan_tiny_k2_v1: format version 1")


if __name__ == "__main__":
    main()
