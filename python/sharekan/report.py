"""The compile report (SPEC §2.8): per-layer figures and totals, JSON and a printable table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .layouts import TensorEntry


def sqnr_db(rel_err: float) -> float:
    """Signal-to-quantisation-noise ratio in dB from a relative L2 error (inf when exact)."""
    return math.inf if rel_err <= 0 else -20.0 * math.log10(rel_err)


@dataclass
class LayerReport:
    """Figures of one compressed layer. Errors are relative L2 (0 = exact)."""

    name: str
    n_in: int
    n_out: int
    edges: int
    n_coeffs: int
    grid_size: int
    spline_order: int
    codebook_size: int
    bits: int
    metric: str
    int8: bool
    bias: str
    base: str
    codebook_group: str
    bytes_dense_fp32: int
    bytes_source: int
    bytes_compressed: int
    tensor_bytes: dict[str, int]
    coeff_rel_err: float
    func_rel_err: float
    max_abs_dphi: float
    codebook_utilisation: float
    kmeans_iterations: int
    kmeans_converged: bool
    objective: list[float]
    seconds: float
    output_sqnr_db: float | None = None
    frac_inputs_outside_grid: float | None = None
    #: The edge basis, e.g. "bspline(G=5, k=3)", "rbf(M=8, h=0.571)", "chebyshev(degree=4, tanh)".
    basis: str = "bspline"
    #: "lutham" when sharekan's evaluator runs the layer exactly, else the reason it cannot.
    evaluator: str = "lutham"

    @property
    def ratio(self) -> float:
        return self.bytes_dense_fp32 / max(self.bytes_compressed, 1)

    @property
    def coeff_sqnr_db(self) -> float:
        return sqnr_db(self.coeff_rel_err)

    @property
    def func_sqnr_db(self) -> float:
        return sqnr_db(self.func_rel_err)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            ratio=self.ratio, coeff_sqnr_db=self.coeff_sqnr_db, func_sqnr_db=self.func_sqnr_db
        )
        return out


@dataclass
class Report:
    """Everything `compress` measured. `str(report)` is a table; `to_json()` is the record."""

    layout: str
    layers: list[LayerReport]
    tensors: list[TensorEntry]
    bytes_passthrough: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_dense_fp32(self) -> int:
        return sum(r.bytes_dense_fp32 for r in self.layers) + self.bytes_passthrough

    @property
    def bytes_source(self) -> int:
        return sum(r.bytes_source for r in self.layers) + self.bytes_passthrough

    @property
    def bytes_compressed(self) -> int:
        """Stored tensor bytes; a shared codebook is counted once (see `tensor_bytes`)."""
        return sum(r.bytes_compressed for r in self.layers) + self.bytes_passthrough

    @property
    def ratio(self) -> float:
        return self.bytes_dense_fp32 / max(self.bytes_compressed, 1)

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        """JSON-ready dict; `timings=False` drops wall times (artifacts stay reproducible)."""
        layers = [r.to_dict() for r in self.layers]
        if not timings:
            for layer in layers:
                layer["seconds"] = None
        return {
            "layout": self.layout,
            "config": self.config,
            "seconds": self.seconds if timings else None,
            "totals": {
                "bytes_dense_fp32": self.bytes_dense_fp32,
                "bytes_source": self.bytes_source,
                "bytes_compressed": self.bytes_compressed,
                "bytes_passthrough": self.bytes_passthrough,
                "ratio_vs_fp32": self.ratio,
                "ratio_vs_source": self.bytes_source / max(self.bytes_compressed, 1),
            },
            "layers": layers,
            "tensors": [asdict(t) for t in self.tensors],
        }

    def to_json(self, indent: int | None = 2, timings: bool = True) -> str:
        return json.dumps(_finite(self.to_dict(timings)), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        derived = {"ratio", "coeff_sqnr_db", "func_sqnr_db"}
        layers = []
        for r in d["layers"]:
            fields = {k: v for k, v in r.items() if k not in derived}
            fields["seconds"] = fields.get("seconds") or 0.0
            for key in ("coeff_rel_err", "func_rel_err", "max_abs_dphi"):
                fields[key] = fields[key] if fields[key] is not None else 0.0
            if (
                fields.get("output_sqnr_db", 0) is None
                and r.get("frac_inputs_outside_grid") is not None
            ):
                fields["output_sqnr_db"] = float("inf")  # exact output: JSON null
            layers.append(LayerReport(**fields))
        return cls(
            layout=d["layout"],
            layers=layers,
            tensors=[TensorEntry(**t) for t in d["tensors"]],
            bytes_passthrough=int(d["totals"]["bytes_passthrough"]),
            seconds=float(d["seconds"] or 0.0),
            config=dict(d.get("config", {})),
        )

    def table(self) -> str:
        """A fixed-width table: one row per layer, then totals and the tensor list."""
        head = [
            "layer",
            "in x out",
            "M",
            "K",
            "bits",
            "bias",
            "KB fp32",
            "KB out",
            "ratio",
            "coef dB",
            "func dB",
            "max|dphi|",
            "util",
            "iters",
            "s",
        ]
        rows = [head]
        for r in self.layers:
            rows.append(
                [
                    r.name,
                    f"{r.n_in}x{r.n_out}",
                    str(r.n_coeffs),
                    str(r.codebook_size),
                    str(r.bits),
                    r.bias,
                    f"{r.bytes_dense_fp32 / 1024:.1f}",
                    f"{r.bytes_compressed / 1024:.1f}",
                    f"{r.ratio:.1f}x",
                    _db(r.coeff_sqnr_db),
                    _db(r.func_sqnr_db),
                    f"{r.max_abs_dphi:.3g}",
                    f"{r.codebook_utilisation:.0%}",
                    str(r.kmeans_iterations),
                    f"{r.seconds:.2f}",
                ]
            )
        rows.append(
            [
                "total",
                "",
                "",
                "",
                "",
                "",
                f"{self.bytes_dense_fp32 / 1024:.1f}",
                f"{self.bytes_compressed / 1024:.1f}",
                f"{self.ratio:.1f}x",
                "",
                "",
                "",
                "",
                "",
                f"{self.seconds:.2f}",
            ]
        )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        calib = [r for r in self.layers if r.output_sqnr_db is not None]
        for r in calib:
            lines.append(
                f"{r.name}: output SQNR {_db(r.output_sqnr_db or 0.0)} dB on calibration inputs, "
                f"{(r.frac_inputs_outside_grid or 0.0):.1%} of inputs outside the grid"
            )
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.status] = counts.get(t.status, 0) + 1
        lines.append(
            f"layout {self.layout}; tensors: "
            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        )
        for t in self.tensors:
            if t.status != "compressed":
                lines.append(f"  {t.status}: {t.key} ({t.reason})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _db(value: float) -> str:
    return "exact" if math.isinf(value) else f"{value:.1f}"


def _finite(obj: Any) -> Any:
    """JSON has no Infinity: exact results are written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
