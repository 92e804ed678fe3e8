"""The `sharekan` command line: compress, inspect, decompress."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import compress
from .artifact import load, read
from .checkpoints import read_checkpoint, write_checkpoint
from .compiler import dense_layer_forward
from .config import Config
from .default_model import load_default
from .demo import run_demo
from .errors import ShareKanError
from .export import export_pte
from .layouts import detect_layout


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-k",
        "--codebook-size",
        type=int,
        default=None,
        help="codewords K (default 256; the embedded model uses 64)",
    )
    p.add_argument("--metric", choices=["coefficient", "function"], default="function")
    p.add_argument("--share", choices=["layer", "model"], default="layer")
    p.add_argument(
        "--float", dest="int8", action="store_false", help="keep codebook/gains/biases in float32"
    )
    p.add_argument("--bias", choices=["auto", "fold", "edge"], default="auto")
    p.add_argument("--gain-bits", type=int, choices=[8, 4], default=8,
                   help="bits of the int8-mode gains (default 8)")
    p.add_argument("--base", choices=["int8", "float"], default="int8")
    p.add_argument("--stages", type=int, default=1,
                   help="residual gain-shape stages per edge (default 1)")
    p.add_argument("--stage-codebook-size", type=int, default=None,
                   help="codewords of the stages after the first (default: -k)")
    p.add_argument("--target-bytes-per-edge", type=float, default=None, metavar="B",
                   help="byte budget: mean stored spline bytes per edge (entropy-coded "
                        "artifact); allocates stages per edge and drops the weakest edges")
    p.add_argument("--drop-edges", action="store_true",
                   help="with a budget, let the allocation drop whole edges")
    p.add_argument("--n-iter", type=int, default=25)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None)


def _config(args: argparse.Namespace, default_k: int):

    return Config(
        codebook_size=args.codebook_size or default_k,
        metric=args.metric,
        share=args.share,
        int8=args.int8,
        bias=args.bias,
        gain_bits=args.gain_bits,
        base=args.base,
        stages=args.stages,
        stage_codebook_size=args.stage_codebook_size,
        target_bytes_per_edge=args.target_bytes_per_edge,
        drop_edges=args.drop_edges,
        n_iter=args.n_iter,
        tol=args.tol,
        seed=args.seed,
        input_range=tuple(args.input_range) if args.input_range else None,
    )


def cmd_compress(args: argparse.Namespace) -> int:

    test = None
    if args.checkpoint is None:

        state_dict, test_x, test_y = load_default()
        cfg = _config(args, default_k=64)
        calibration = test_x[:256] if test_x is not None else None
        print(
            "No checkpoint given: compressing the embedded default KAN "
            "(efficient-kan layout, trained on scikit-learn's digits)."
        )
        test = (test_x, test_y)
    else:
        state_dict = read_checkpoint(args.checkpoint)
        cfg = _config(args, default_k=256)
        calibration = None
    model = compress(state_dict, cfg, calibration=calibration, progress=True)
    if args.json:
        print(model.report.to_json())
    else:
        print(model.report.table())
    if test is not None and test[0] is not None:
        _print_default_accuracy(state_dict, model, *test)
    if args.output:
        model.save(args.output, entropy=args.entropy)
        coded = f", file {os.path.getsize(args.output) / 1024:.1f} KiB" if args.entropy else ""
        print(f"saved {args.output} ({model.nbytes / 1024:.1f} KiB of tensors{coded})")
    return 0


def _print_default_accuracy(state_dict, model, test_x: np.ndarray, test_y: np.ndarray) -> None:

    started = time.perf_counter()
    dense = test_x.astype(np.float64)
    for source in detect_layout(state_dict).extract(state_dict).layers:
        dense = dense_layer_forward(source, dense)
    approx = model.forward(test_x.astype(np.float32)).astype(np.float64)
    sqnr = -20 * np.log10(np.linalg.norm(dense - approx) / np.linalg.norm(dense))
    agree = float((dense.argmax(1) == approx.argmax(1)).mean())
    print(
        f"test split ({len(test_y)} images): dense accuracy {(dense.argmax(1) == test_y).mean():.2%}, "
        f"compressed {(approx.argmax(1) == test_y).mean():.2%}, top-1 agreement {agree:.2%}, "
        f"output SQNR {sqnr:.1f} dB ({time.perf_counter() - started:.2f} s)"
    )


def cmd_inspect(args: argparse.Namespace) -> int:

    tensors, metadata = read(args.artifact)
    model = load(args.artifact)
    if args.json:
        print(model.report.to_json())
        return 0
    print(
        f"{args.artifact}: sharekan format {metadata['format_version']}, written by "
        f"sharekan {metadata['sharekan_version']}, source layout {metadata['source_layout']}"
    )
    print(f"config: {metadata['config']}")
    print(
        f"{len(tensors)} tensors, {model.nbytes / 1024:.1f} KiB, checksum {metadata['checksum'][:16]}... OK"
    )
    print(model.report.table())
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:

    state_dict = load(args.artifact).decompress()
    write_checkpoint(state_dict, args.output)
    print(f"wrote {len(state_dict)} tensors to {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:

    model = load(args.artifact)
    if model.source_layout != "efficient-kan":
        print(f"sharekan: error: export supports efficient-kan models, not {model.source_layout}",
              file=sys.stderr)
        return 2
    import torch

    from .torch import KAN, LuthamLinear

    layers = list(model.layers.values())
    net: torch.nn.Module
    if args.dense:
        widths = [layers[0].n_in] + [layer.n_out for layer in layers]
        first = layers[0]
        net = KAN(widths, grid_size=first.grid_size, spline_order=first.spline_order)
        decoded = {k: torch.from_numpy(v.astype(np.float32)) for k, v in model.decompress().items()}
        net.load_state_dict(decoded, strict=True)
    else:
        net = torch.nn.Sequential(*(LuthamLinear.from_compressed(layer) for layer in layers))
    if args.dense and args.portable:
        print("sharekan: error: --dense and --portable exclude each other", file=sys.stderr)
        return 2
    example = torch.zeros(2, layers[0].n_in)
    path = export_pte(net.eval(), (example,), args.output, max_batch=args.max_batch,
                      kernel="portable" if args.portable else "lutham",
                      delegate="xnnpack" if args.xnnpack else None)
    kind = ("dense (decompressed)" if args.dense
            else "portable LUTHAM (stock operators)" if args.portable else "LUTHAM")
    print(f"wrote {kind} ExecuTorch program {path} ({path.stat().st_size / 1024:.1f} KiB)")
    if not (args.dense or args.portable):
        print("run it with the kernel library: sharekan.lutham.load_library(), or lutham_runner")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:

    run_demo(cache_dir=args.cache_dir, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sharekan",
        description="Compress Kolmogorov-Arnold Networks by gain-shape-bias vector quantization.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "compress", help="compress a KAN checkpoint (no argument: the embedded default)"
    )
    p.add_argument("checkpoint", nargs="?", help=".safetensors, .npz, .pt or .pth state_dict")
    p.add_argument("-o", "--output", help="artifact to write (.sharekan / .safetensors)")
    p.add_argument("--entropy", choices=["zstd"], default=None,
                   help="entropy-code the artifact's tensors (decoded at load)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_config_args(p)
    p.set_defaults(func=cmd_compress)
    p = sub.add_parser("inspect", help="verify an artifact and print its report")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("decompress", help="write the decoded state_dict with the original keys")
    p.add_argument("artifact")
    p.add_argument("-o", "--output", required=True, help=".safetensors, .npz, .pt or .pth")
    p.set_defaults(func=cmd_decompress)
    p = sub.add_parser("export", help="export an artifact to an ExecuTorch .pte (LUTHAM op)")
    p.add_argument("artifact")
    p.add_argument("-o", "--output", required=True, help=".pte file to write")
    p.add_argument("--dense", action="store_true", help="export the decompressed dense model")
    p.add_argument("--portable", action="store_true",
                   help="LUTHAM layers as stock ExecuTorch operators (runs in an unmodified "
                        "runtime; slower than the kernel)")
    p.add_argument("--xnnpack", action="store_true", help="lower to the XNNPACK delegate")
    p.add_argument("--max-batch", type=int, default=1024, help="largest batch the program accepts")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser(
        "demo", help="vision-KAN pipeline end to end: features, training, compression, .pte"
    )
    p.add_argument("--quick", action="store_true", help="smaller run (10k images, 2 epochs)")
    p.add_argument("--cache-dir", default=None, help="features, heads and programs cache")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ShareKanError, FileNotFoundError) as exc:
        print(f"sharekan: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
