"""Output-aware compilation on the vision classification head: does `compensate=True` (and
`metric="output"`), the regression benchmark's winner, also pay on a wide head?

Head: the classification benchmark's cached MobileNetV2 `kan` head (Fashion-MNIST,
1280 -> 256 -> 10, G = 10, k = 3; `python -m sharekan_bench vision` trains and caches it and
the features). Every row is `sharekan.compress` with Int8, `base="fold"`, `gain_bits=4`
(the classification bench's smallest configurations) at K = 16 / 64 / 256, with and without
the output-aware options, calibrated on the first CALIB_ROWS training features. Scored on
the 10k test split against the dense head: accuracy change, top-1 agreement, output SQNR;
ratio = dense FP32 bytes / `CompressedModel.nbytes`; compile wall seconds.

Run (from the repository root; ~15 minutes on 2 cores, most of it the per-output least
squares of `compensate` on 1,280-input rows):
    PYTHONPATH=benches .venv/bin/python -m sharekan_bench compensate     # writes benches/results/compensate.{json,md}
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import sharekan
from sharekan_bench import methods as M
from sharekan_bench import report
from sharekan.demo.data import cache_dir
from sharekan.demo.features import features_tag
from sharekan.demo.heads import HeadRecipe, kan_forward
from sharekan.demo.heads import cached_head, load_features

ROOT = Path(__file__).resolve().parents[2]  # the repository
CALIB_ROWS = 8192
BASE = {"int8": True, "base": "fold", "gain_bits": 4, "seed": 0}
VARIANTS = {
    "plain": {},
    "compensate": {"compensate": True},
    "output + compensate": {"metric": "output", "compensate": True},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="16,64,256")
    parser.add_argument("--variants", default="plain,compensate,output + compensate")
    parser.add_argument("--out", default=str(ROOT / "benches" / "results"))
    args = parser.parse_args(argv)
    cache = cache_dir()
    data = load_features(cache, 64, print)
    _, sd, _ = cached_head(cache, features_tag("mobilenetv2", 64), HeadRecipe(kind="kan"), data, print)
    x_test, y_test = data["x_test"], data["y_test"]
    calib = data["x_train"][:CALIB_ROWS]
    dense = kan_forward(sd, x_test)
    dense_acc = M.fidelity(dense, dense, y_test)["accuracy"]
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        for name in args.variants.split(","):
            cfg = {"codebook_size": k, **BASE, **VARIANTS[name]}
            started = time.perf_counter()
            model = sharekan.compress(dict(sd), calibration=calib, **cfg)
            seconds = time.perf_counter() - started
            fid = M.fidelity(dense, model.forward(x_test), y_test)
            row = {"K": k, "variant": name, "config": cfg, "bytes": model.nbytes,
                   "ratio": M.dense_bytes(sd) / model.nbytes, **fid,
                   "delta_accuracy": fid["accuracy"] - dense_acc, "compile_seconds": seconds}
            rows.append(row)
            print(f"K={k:4d} {name:20s} {row['ratio']:5.1f}x {row['delta_accuracy']:+.2f} pts "
                  f"agree {row['agreement']:.2f} % SQNR {row['sqnr_db']:.2f} dB ({seconds:.0f} s)",
                  flush=True)
    record = {"head": "MobileNetV2 kan 1280-256-10 (classification bench)", "dense_accuracy": dense_acc,
              "dense_bytes": M.dense_bytes(sd), "calibration_rows": CALIB_ROWS, "rows": rows,
              "machine": report.environment("platform", ("cpus", "logical_cpus"))}
    md = markdown(record)
    report.write_record(Path(args.out) / "compensate", record, md)
    print(md)


def markdown(record: dict) -> str:
    lines = [
        "# Output-aware compilation on the classification head",
        "",
        f"Command: `PYTHONPATH=benches .venv/bin/python -m sharekan_bench compensate`. Head: {record['head']}, dense "
        f"accuracy {record['dense_accuracy']:.2f} %, {record['dense_bytes']:,} bytes. All rows: Int8, "
        f"`base=\"fold\"`, `gain_bits=4`, calibration = first {record['calibration_rows']:,} "
        "training features; test split (10,000 images) against the dense head.",
        "",
    ]
    lines += report.md_table(
        ["K", "options", "bytes", "ratio", "accuracy change", "top-1 agreement %", "output SQNR dB", "compile s"],
        [[r["K"], r["variant"], f"{r['bytes']:,}", f"{r['ratio']:.1f}x", f"{r['delta_accuracy']:+.2f}",
          f"{r['agreement']:.2f}", f"{r['sqnr_db']:.2f}", f"{r['compile_seconds']:.0f}"] for r in record["rows"]])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
