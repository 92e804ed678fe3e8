"""Compiler configuration: one frozen `Config`, with per-layer overrides by name pattern."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import InvalidInputError

Metric = Literal["coefficient", "function", "data", "output"]
Share = Literal["layer", "model"]
BiasMode = Literal["auto", "fold", "edge"]
BaseMode = Literal["int8", "int4", "float", "fold"]
GainBits = Literal[4, 8]
CodebookScale = Literal["codeword", "shared"]
Init = Literal["kmeans++"]

# the allowed values, checked at run time (`Config.__post_init__`)
METRICS: tuple[str, ...] = get_args(Metric)
SHARES: tuple[str, ...] = get_args(Share)
BIAS_MODES: tuple[str, ...] = get_args(BiasMode)
BASE_MODES: tuple[str, ...] = get_args(BaseMode)
GAIN_BITS: tuple[int, ...] = get_args(GainBits)
CODEBOOK_SCALES: tuple[str, ...] = get_args(CodebookScale)
INITS: tuple[str, ...] = get_args(Init)
MAX_CODEBOOK_SIZE = 1 << 16
MAX_STAGES = 8


@dataclass(frozen=True)
class Config:
    """How `sharekan.compress` compiles each layer (see SPEC §2).

    Attributes:
        codebook_size: K, codewords per codebook (1 <= K <= 65536 and K <= edges).
        share: "layer" (one codebook per layer) or "model" (one codebook for every
            layer with the same number of coefficients per edge M).
        metric: error minimised by the fit: "coefficient" (plain L2 of coefficients),
            "function" (L2 of the edge function over its grid range, data-free), "data"
            (expected squared error on calibration inputs; pass `calibration=`) or
            "output" (first-order squared error each edge causes in the model outputs: one
            metric per edge, E_x[s_o(x) B(x_i) B(x_i)^T] with s_o the squared sensitivity of
            the model outputs to the edge's output, from calibration model inputs through
            the dense layers; the k-means is then refined by Lloyd iterations under these
            metrics; needs `calibration=<model inputs>` and a chain of plain KAN layers).
        int8: store codebook, gains and per-edge biases as int8 with float scales.
        bias: "fold" (one float per output; exact while inputs stay inside the grid),
            "edge" (one value per edge; exact everywhere) or "auto" (fold only where
            calibration data or `input_range` shows inputs stay inside the grid).
        codebook_scale: scales of the int8 codebook: "codeword" (one f32 scale per
            codeword) or "shared" (every codeword normalised to max |C[q, m]| = 1, its scale
            moved into the gains, and one f32 scale for the codebook: 4 (K - 1) bytes less
            per codebook at the same int8 resolution of each codeword).
        gain_bits: bits of the int8-mode gains, 8 or 4 (per-output scales; 4-bit values
            are stored two per byte and use the least-squares clipping of each column).
        base: base-branch weights as "int8" or "int4" (per output channel) or "float";
            "fold" adds w_base * SiLU, fitted in the layer's B-spline basis, to the
            coefficients and drops the base weights, where inputs are known to stay inside
            the grid (as for bias="auto"); elsewhere it stores them as int8.
        compensate: sequential error compensation (needs `calibration=<model inputs>`):
            in forward order, each layer's gains, base weights and biases are refit by
            ridge least squares, per output and weighted by the output sensitivities, so
            that the layer fed the compressed model's activations matches the dense layer
            on the dense activations; codes and codebook are unchanged, the scalars are
            quantised afterwards as usual.
        stages: residual gain-shape stages per edge (1 = single-stage): stage s fits its own
            codebook (per layer) and gains to what stages < s left, its constant part joining
            the first stage's bias. LUTHAM evaluates one projection table per stage.
        stage_codebook_size: K of the stages after the first (None: `codebook_size`).
        target_bytes_per_edge: a byte budget for the whole model: the mean stored bytes per
            edge of the spline part (codes, gains, biases, codebooks, scales and the maps
            of which edges each stage codes; base-branch weights not counted), as estimated
            for an entropy-coded artifact (`save(path, entropy="zstd")`). The compiler then
            decides, edge by edge and layer by layer, how many of the `stages` each edge
            uses (none: the edge is dropped), minimising the weighted squared error of the
            layers' outputs under the budget (Lagrangian allocation; the weights are the
            output metric's sensitivities when calibration inputs are given, else each
            layer's relative function error). None: every edge uses every stage.
        drop_edges: with a budget, let the allocation drop whole edges (all their stages)
            where that costs the least error per byte. It minimises the summed per-edge
            error, but dropped edges' errors add up coherently in a layer's outputs, so model
            outputs suffer more than that error says (see `sharekan.stages`); off: the first
            stage codes every edge and the budget decides the later stages.
        n_iter: maximum k-means iterations.
        tol: stop when the relative objective improvement falls below this.
        init: k-means initialisation ("kmeans++").
        seed: seed of every random choice; same inputs and seed give the same bytes.
        input_range: optional declared (low, high) range of every layer's inputs, used
            by bias="auto".
        overrides: {name pattern: {field: value}}; fnmatch patterns matched against
            layer names (e.g. "layers.1"), later patterns win.

    Example:
        >>> cfg = Config(codebook_size=16, overrides={"layers.0": {"bias": "fold"}})
        >>> cfg.for_layer("layers.0").bias
        'fold'
    """

    codebook_size: int = 256
    share: Share = "layer"
    metric: Metric = "function"
    int8: bool = True
    bias: BiasMode = "auto"
    gain_bits: GainBits = 8
    codebook_scale: CodebookScale = "codeword"
    base: BaseMode = "int8"
    compensate: bool = False
    stages: int = 1
    stage_codebook_size: int | None = None
    target_bytes_per_edge: float | None = None
    drop_edges: bool = False
    n_iter: int = 25
    tol: float = 1e-4
    init: Init = "kmeans++"
    seed: int = 0
    input_range: tuple[float, float] | None = None
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_fields(self)
        for pattern, values in self.overrides.items():
            if not isinstance(pattern, str):
                raise InvalidInputError(f"Config.overrides: pattern {pattern!r} is not a string")
            unknown = set(values) - _OVERRIDABLE
            if unknown:
                raise InvalidInputError(
                    f"Config.overrides[{pattern!r}]: unknown or non-overridable fields "
                    f"{sorted(unknown)}; allowed: {sorted(_OVERRIDABLE)}"
                )
            _check_fields(dataclasses.replace(self, overrides={}, **values))
        if self.input_range is not None:
            object.__setattr__(self, "input_range", tuple(float(v) for v in self.input_range))
        object.__setattr__(self, "overrides", {k: dict(v) for k, v in self.overrides.items()})

    def for_layer(self, name: str) -> Config:
        """The config of layer `name`, with every matching override applied in order."""
        values: dict[str, Any] = {}
        for pattern, fields in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                values.update(fields)
        return dataclasses.replace(self, overrides={}, **values) if values else self

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes` applied (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InvalidInputError(f"unknown Config fields {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        out = dataclasses.asdict(self)
        out["input_range"] = list(self.input_range) if self.input_range else None
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Config:
        values = dict(values)
        if values.get("input_range") is not None:
            values["input_range"] = tuple(values["input_range"])
        return cls(**values)


_OVERRIDABLE = {
    f.name for f in dataclasses.fields(Config)
    if f.name not in ("overrides", "share", "seed", "target_bytes_per_edge", "drop_edges")
}


def _check_fields(cfg: Config) -> None:
    def choice(name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(cfg, name)
        if value not in allowed:
            raise InvalidInputError(f"Config.{name}={value!r}; expected one of {list(allowed)}")

    k = cfg.codebook_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CODEBOOK_SIZE:
        raise InvalidInputError(
            f"Config.codebook_size={k!r}; expected an integer in [1, {MAX_CODEBOOK_SIZE}]"
        )
    stages = cfg.stages
    if isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= MAX_STAGES:
        raise InvalidInputError(f"Config.stages={stages!r}; expected an integer in [1, {MAX_STAGES}]")
    sk = cfg.stage_codebook_size
    if sk is not None and (isinstance(sk, bool) or not isinstance(sk, int)
                           or not 1 <= sk <= MAX_CODEBOOK_SIZE):
        raise InvalidInputError(
            f"Config.stage_codebook_size={sk!r}; expected None or an integer in "
            f"[1, {MAX_CODEBOOK_SIZE}]")
    budget = cfg.target_bytes_per_edge
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not 0 < budget < 1e6):
        raise InvalidInputError(
            f"Config.target_bytes_per_edge={budget!r}; expected None or a number > 0")
    choice("share", SHARES)
    choice("metric", METRICS)
    choice("bias", BIAS_MODES)
    choice("base", BASE_MODES)
    choice("codebook_scale", CODEBOOK_SCALES)
    if cfg.gain_bits not in GAIN_BITS or isinstance(cfg.gain_bits, bool):
        raise InvalidInputError(f"Config.gain_bits={cfg.gain_bits!r}; expected one of {list(GAIN_BITS)}")
    choice("init", INITS)
    if not isinstance(cfg.int8, bool):
        raise InvalidInputError(f"Config.int8={cfg.int8!r}; expected True or False")
    if not isinstance(cfg.drop_edges, bool):
        raise InvalidInputError(f"Config.drop_edges={cfg.drop_edges!r}; expected True or False")
    if not isinstance(cfg.compensate, bool):
        raise InvalidInputError(f"Config.compensate={cfg.compensate!r}; expected True or False")
    if isinstance(cfg.n_iter, bool) or not isinstance(cfg.n_iter, int) or cfg.n_iter < 0:
        raise InvalidInputError(f"Config.n_iter={cfg.n_iter!r}; expected an integer >= 0")
    if not isinstance(cfg.tol, (int, float)) or not cfg.tol >= 0:
        raise InvalidInputError(f"Config.tol={cfg.tol!r}; expected a number >= 0")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**64:
        raise InvalidInputError(f"Config.seed={cfg.seed!r}; expected an integer in [0, 2**64)")
    if cfg.input_range is not None:
        lo, hi = cfg.input_range
        if not lo < hi:
            raise InvalidInputError(f"Config.input_range={cfg.input_range!r}; expected low < high")
