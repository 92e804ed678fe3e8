"""`compress`: state_dict in, CompressedModel out (SPEC §2). Orchestration only: every
numerical loop (k-means, gain/bias fitting, int8, bit packing, evaluation) runs in Rust.

The pieces it drives live in their own modules: the fit metrics (`sharekan.metrics`),
base-branch and bias folding (`sharekan.folding`), the output metric and the compensation
math (`sharekan.refine`), the compensation loop over the layers (`sharekan.compensation`),
the stored scalars (`sharekan.scalars`), the per-layer report (`sharekan.layer_report`) and
the dense float64 layer (`sharekan.dense`). Their names used to be defined here and stay
importable from this module."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from .compensation import compensate_layers
from .compressed import CompressedLayer, CompressedModel
from .config import Config
from .dense import dense_evaluable, dense_layer_forward
from .errors import InvalidInputError, LayoutError, ShapeError
from .folding import (
    can_fold,
    fold_base_branches,
    fraction_outside_grid,
    inputs_inside_grid,
)
from .layer_report import DPHI_POINTS_PER_INTERVAL, build_layer_report
from .layouts import LayerSource, Layout, detect_layout, get_layout
from .metrics import function_metric, layer_metric
from .refine import (
    check_chain,
    edge_gain_bias,
    edge_metrics,
    lloyd_refine,
    output_sensitivities,
)
from .report import LayerReport, Report
from .scalars import store_codebook, store_scalars
from .stages import StageInput, add_stages
from .validation import as_state_dict, float_array, to_numpy

__all__ = [
    "DPHI_POINTS_PER_INTERVAL",
    "can_fold",
    "compress",
    "dense_evaluable",
    "dense_layer_forward",
    "fraction_outside_grid",
    "function_metric",
    "inputs_inside_grid",
    "layer_metric",
    "lloyd_refine",
]

def compress(
    state_dict: Mapping[str, Any],
    config: Config | None = None,
    *,
    calibration: Any = None,
    layout: str | Layout | None = None,
    layout_options: Mapping[str, Any] | None = None,
    progress: bool | Callable[[str], None] = False,
    **overrides: Any,
) -> CompressedModel:
    """Compress every KAN layer of a checkpoint by gain-shape-bias vector quantization.

    Args:
        state_dict: name -> numpy array or torch tensor, as saved by a KAN library
            (efficient-kan layout: `<prefix>.spline_weight` (n_out, n_in, M),
            `<prefix>.grid` (n_in, G+2k+1), `<prefix>.base_weight` (n_out, n_in),
            optional `<prefix>.spline_scaler` (n_out, n_in); float16/32/64). Never modified.
        config: a `Config`; `overrides` (e.g. `codebook_size=16`) replace its fields.
        calibration: optional inputs to measure output fidelity, decide `bias="auto"` and
            define `metric="data"`: an array (batch, n_in of the first layer) of model
            inputs (propagated through the dense layers where sharekan can evaluate them),
            or {layer name: that layer's inputs}, (batch, n_in) for dense layers and
            (batch, C, *spatial) for conv layers, e.g. from
            `sharekan.torch.collect_calibration(model, x)`. `metric="output"` and
            `compensate=True` need the array of model inputs (the layers are a chain).
        layout: force an adapter by name (see `sharekan.layouts.LAYOUTS`) or pass an
            adapter instance (e.g. `sharekan.layouts.GenericLayout(...)`) instead of
            detecting the layout.
        layout_options: keyword arguments of the named adapter, e.g. the grid of
            torch-conv-kan layers {"grid_size": 5, "spline_order": 3, "grid_range": (-1, 1)},
            FastKAN's {"denominator": h}, or {"layers": [...]} for "generic".
        progress: True for a progress bar per layer (tqdm), or a callable taking a message.

    Returns:
        A CompressedModel (`.report`, `.nbytes`, `.save()`, `.decompress()`, `.forward()`).

    Raises:
        LayoutError: no known layout, or inconsistent tensors (named in the message).
        NonFiniteError, ShapeError, DTypeError: bad tensors (named, with the bad values).
        InvalidInputError: bad options, e.g. codebook_size larger than a layer's edges.

    Example:
        >>> model = sharekan.compress(kan.state_dict(), codebook_size=64)  # doctest: +SKIP
        >>> print(model.report)  # doctest: +SKIP
    """
    started = time.perf_counter()
    cfg = config if config is not None else Config()
    if not isinstance(cfg, Config):
        raise InvalidInputError(f"config: expected sharekan.Config, got {type(cfg).__name__}")
    if overrides:
        cfg = cfg.replace(**overrides)
    sd = as_state_dict(state_dict)
    if layout is not None:
        adapter = get_layout(layout, layout_options)
    elif layout_options:
        adapter = get_layout(detect_layout(sd).name, layout_options)
    else:
        adapter = detect_layout(sd)
    extraction = adapter.extract(sd)
    if not extraction.layers:
        raise LayoutError(f"layout {adapter.name!r} found no KAN layer in the state_dict")
    sources = extraction.layers
    calib = _calibration_inputs(sources, calibration)
    uses_output = any(cfg.for_layer(s.name).metric == "output" for s in sources)
    uses_compensate = any(cfg.for_layer(s.name).compensate for s in sources)
    model_inputs = None
    if uses_output or uses_compensate:
        what = "metric='output'" if uses_output else "compensate=True"
        if calibration is None or isinstance(calibration, Mapping):
            raise InvalidInputError(
                f"{what} needs calibration=<model inputs>: an array (batch, "
                f"{sources[0].n_in}) propagated through the layers in order"
            )
        check_chain(sources, what)
        model_inputs = calib[sources[0].name]
    folded: dict[str, str] = {}
    if any(cfg.for_layer(src.name).base == "fold" for src in sources):
        sources, folded = fold_base_branches(sources, cfg, calib)
    sensitivities = output_sensitivities(sources, model_inputs) if model_inputs is not None else {}

    notify = _progress(progress, len(sources))
    compiled: dict[str, tuple[CompressedLayer, dict[str, Any], Callable[..., LayerReport]]] = {}
    for group, members in _codebook_groups(sources, cfg).items():
        for layer, extra, make_report in _compile_group(
            group, members, cfg, calib, notify, sensitivities
        ):
            compiled[layer.name] = (layer, extra, make_report)
    if cfg.target_bytes_per_edge is not None or any(
            cfg.for_layer(s.name).stages > 1 for s in sources):
        _residual_stages(sources, compiled, cfg)
    if uses_compensate:  # after the stages: it refits the first stage around them
        assert model_inputs is not None  # compensate=True raised above without model inputs
        compensate_layers(sources, compiled, cfg, model_inputs, sensitivities)
    notify(None)

    layers = {s.name: compiled[s.name][0] for s in sources}
    reports = {s.name: compiled[s.name][2](compiled[s.name][0], compiled[s.name][1]) for s in sources}
    for name, outcome in folded.items():
        reports[name].base = outcome
    report = Report(
        layout=adapter.name,
        layers=[reports[s.name] for s in sources],
        tensors=extraction.entries,
        bytes_passthrough=sum(int(a.nbytes) for a in extraction.passthrough.values()),
        seconds=time.perf_counter() - started,
        config=cfg.to_dict(),
    )
    passthrough = {k: np.array(v, copy=True) for k, v in extraction.passthrough.items()}
    return CompressedModel(layers, passthrough, adapter.name, cfg, report, list(sd))


# ---------------------------------------------------------------------------- compile


@dataclass
class _Fit:
    codebook: np.ndarray  # (K, M) float64, coefficient space
    codes: np.ndarray  # (E_total,) uint32
    gains: np.ndarray  # (E_total,) float64 (before refit)
    iterations: int
    converged: bool
    objective: list[float]


def _codebook_groups(sources: list[LayerSource], cfg: Config) -> dict[str, list[LayerSource]]:
    if cfg.share == "layer":
        return {s.name: [s] for s in sources}
    groups: dict[str, list[LayerSource]] = {}
    for s in sources:
        groups.setdefault(f"shared_m{s.n_coeffs}", []).append(s)
    return groups


def _compile_group(
    group: str,
    members: list[LayerSource],
    cfg: Config,
    calib: Mapping[str, np.ndarray],
    notify: Callable[[str | None], None],
    sensitivities: Mapping[str, np.ndarray],
) -> Iterable[tuple[CompressedLayer, dict[str, Any], Callable[..., LayerReport]]]:
    """Fit the group's codebook and compile each member; yields (layer, extra, report
    builder) per member, the report built later from the final (possibly compensated) layer."""
    gcfg = cfg.for_layer(members[0].name)
    edges = sum(s.n_in * s.n_out for s in members)
    k = gcfg.codebook_size
    if k > edges:
        what = f"layer {members[0].name!r}" if len(members) == 1 else f"codebook group {group!r}"
        raise InvalidInputError(
            f"{what}: codebook_size K={k} exceeds its {edges} edges; use codebook_size <= {edges} "
            f"(or an override for this layer, e.g. overrides={{'{members[0].name}': "
            f"{{'codebook_size': {min(edges, 16)}}}}})"
        )
    started = time.perf_counter()
    per_edge: list[np.ndarray | None] = [None] * len(members)
    output_edges: list[np.ndarray] = []  # per_edge's metrics when metric == "output"
    if gcfg.metric == "output":
        # one metric per edge (first-order model-output error); the k-means starts from
        # their mean, then Lloyd iterations refine the codebook under the per-edge metrics
        output_edges = [edge_metrics(s, calib[s.name], sensitivities[s.name]) for s in members]
        per_edge = [*output_edges]
        metrics = [r.mean(axis=0) for r in output_edges]
    else:
        metrics = [layer_metric(s, gcfg.metric, calib) for s in members]
    weights = np.array([s.n_in * s.n_out for s in members], dtype=np.float64)
    group_metric = np.einsum("l,lij->ij", weights / weights.sum(), np.stack(metrics))
    coeffs = np.concatenate([s.coeffs.reshape(-1, s.n_coeffs) for s in members])  # (E, M)
    raw = _core.gsb_fit(coeffs, group_metric, k, gcfg.n_iter, gcfg.tol, gcfg.seed)
    fit = _Fit(
        raw["codebook"],
        raw["codes"],
        raw["gains"],
        int(raw["iterations"]),
        bool(raw["converged"]),
        [float(v) for v in raw["objective"]],
    )
    if gcfg.metric == "output":
        all_edges = np.concatenate(output_edges)  # (E, M, M)
        book, codes, _ = lloyd_refine(all_edges, coeffs, fit.codebook, fit.codes)
        gains, _ = edge_gain_bias(all_edges, coeffs, book, codes.astype(np.int64))
        fit = dataclasses.replace(fit, codebook=book, codes=codes, gains=gains)
    book = fit.codebook
    shared = gcfg.int8 and gcfg.codebook_scale == "shared"
    if shared:
        # every codeword at max |.| = 1 (its scale moves into the gains, which are refit
        # against the stored codebook): one scale serves them all at full int8 resolution
        peak = np.abs(book).max(axis=1, keepdims=True)
        book = book / np.where(peak > 0, peak, 1.0)
    book, book_q, book_scale = store_codebook(book, gcfg.int8, shared)
    fit_seconds = (time.perf_counter() - started) / len(members)

    offset = 0
    for index, (source, metric, edge_metric) in enumerate(zip(members, metrics, per_edge)):
        started = time.perf_counter()
        lcfg = cfg.for_layer(source.name)
        e = source.n_in * source.n_out
        codes = np.ascontiguousarray(fit.codes[offset : offset + e])
        flat_gain = fit.gains[offset : offset + e]
        offset += e
        layer, extra = _compile_layer(
            source,
            lcfg,
            group,
            book,
            book_q,
            book_scale,
            codes,
            metric,
            calib,
            edge_metric,
        )
        extra["seconds"] = fit_seconds + time.perf_counter() - started
        extra["metric"] = metric

        def make_report(
            layer: CompressedLayer,
            extra: dict[str, Any],
            source: LayerSource = source,
            lcfg: Config = lcfg,
            flat_gain: np.ndarray = flat_gain,
            metric: np.ndarray = metric,
            index: int = index,
        ) -> LayerReport:
            return build_layer_report(
                source,
                layer,
                lcfg,
                flat_gain,
                extra,
                # the function metric the fit used is the Gram the report needs: reuse it
                function_gram=metric if gcfg.metric == "function" else None,
                with_codebook=index == 0,
                calib=calib,
                seconds=extra["seconds"],
                kmeans_iterations=fit.iterations,
                kmeans_converged=fit.converged,
                objective=fit.objective,
            )

        notify(source.name)  # one step per finished layer
        yield layer, extra, make_report


def _compile_layer(
    source: LayerSource,
    cfg: Config,
    group: str,
    book: np.ndarray,
    book_q: np.ndarray | None,
    book_scale: np.ndarray | None,
    codes: np.ndarray,
    metric: np.ndarray,
    calib: Mapping[str, np.ndarray],
    edge_metric: np.ndarray | None = None,
) -> tuple[CompressedLayer, dict[str, Any]]:
    n_in, n_out, m = source.coeffs.shape
    coeffs = source.coeffs.reshape(-1, m)
    # Gains and biases are refit against the codebook as stored (int8-rounded or f32).
    if edge_metric is not None:  # metric="output": one metric per edge
        gains, biases = edge_gain_bias(
            edge_metric, coeffs, book.astype(np.float64), codes.astype(np.int64)
        )
    else:
        gains, biases = _core.refit_gain_bias(coeffs, metric, book.astype(np.float64), codes)
    gains = gains.reshape(n_in, n_out)
    biases = biases.reshape(n_in, n_out)
    bias_mode = cfg.bias
    if not can_fold(source):
        bias_mode = "edge"
    if bias_mode == "auto":
        bias_mode = "fold" if inputs_inside_grid(source, cfg, calib) else "edge"
    stored = store_scalars(
        cfg,
        gains,
        biases.sum(axis=0) if bias_mode == "fold" else biases,
        bias_mode == "fold",
        source.base_weight,
    )
    layer = CompressedLayer(
        name=source.name,
        n_in=n_in,
        n_out=n_out,
        grid_size=source.grid_size,
        spline_order=source.spline_order,
        codebook_size=int(book.shape[0]),
        bits=int(_core.bits_for(int(book.shape[0]))),
        codebook_group=group,
        grid=np.array(
            source.grid.astype(source.tensors["grid"].dtype if "grid" in source.tensors else np.float32),
            copy=True,
        ),
        codebook=book,
        codebook_q=book_q,
        codebook_scale=book_scale,
        codes=codes.reshape(n_in, n_out),
        **stored,
        source=dict(source.tensors),
        basis=source.basis,
        semantics=source.semantics,
        layout_info=dict(source.info),
        extras=dict(source.extras),
    )
    return layer, {"bias_mode": bias_mode, "prefold_biases": biases}


def _residual_stages(
    sources: list[LayerSource],
    compiled: dict[str, tuple[CompressedLayer, dict[str, Any], Callable[..., LayerReport]]],
    cfg: Config,
) -> None:
    """Adds each layer's residual stages (`sharekan.stages`) and applies the byte budget;
    replaces the entries of `compiled`."""
    started = time.perf_counter()
    items = {}
    for source in sources:
        layer, extra, _ = compiled[source.name]
        lcfg = cfg.for_layer(source.name)
        coeffs = source.coeffs.reshape(-1, source.n_coeffs).astype(np.float64)
        metric = np.asarray(extra["metric"], dtype=np.float64)
        total = float(np.einsum("em,mn,en->", coeffs, metric, coeffs))
        # "output" metrics share the model outputs' units; others: relative error per layer
        weight = 1.0 if lcfg.metric == "output" else 1.0 / max(total, 1e-300)
        items[source.name] = StageInput(layer, coeffs, metric, lcfg, weight)
    layers, _ = add_stages(items, cfg.target_bytes_per_edge)
    share = (time.perf_counter() - started) / len(sources)
    for source in sources:
        _, extra, make_report = compiled[source.name]
        extra = {**extra, "seconds": extra["seconds"] + share}
        compiled[source.name] = (layers[source.name], extra, make_report)


def _calibration_inputs(sources: list[LayerSource], calibration: Any) -> dict[str, np.ndarray]:
    """Per-layer calibration inputs (float64), propagated through the dense model if needed."""
    if calibration is None:
        return {}
    if isinstance(calibration, Mapping):
        out = {}
        names = {s.name: s for s in sources}
        for name, value in calibration.items():
            if name not in names:
                raise InvalidInputError(
                    f"calibration: no KAN layer named {name!r}; layers: {sorted(names)}"
                )
            source = names[name]
            label = f"calibration[{name!r}]"
            if source.semantics.conv is not None:
                x = float_array(to_numpy(value, label), label)
                source.basis_inputs(x)  # checks (batch, C, *spatial)
            else:
                x = float_array(to_numpy(value, label), label, ndim=2)
                if x.shape[1] != source.n_in:
                    raise ShapeError(f"{label}: expected (batch, {source.n_in}), got {x.shape}")
            out[name] = x
        return out
    x = float_array(to_numpy(calibration, "calibration"), "calibration", ndim=2)
    out = {}
    for index, source in enumerate(sources):
        if x.shape[1] != source.n_in:
            raise ShapeError(
                f"calibration: layer {source.name!r} expects {source.n_in} inputs, got shape {x.shape}"
            )
        out[source.name] = x
        if index + 1 < len(sources):
            lacking = dense_evaluable(source)
            if lacking is not None:
                raise InvalidInputError(
                    f"calibration: model inputs cannot be propagated past layer {source.name!r} "
                    f"({lacking}); pass per-layer inputs instead, e.g. "
                    "calibration=sharekan.torch.collect_calibration(model, x)"
                )
            x = dense_layer_forward(source, x)
    return out


def _progress(progress: bool | Callable[[str], None], total: int) -> Callable[[str | None], None]:
    """A callback taking the name of each finished layer (None when all are done)."""
    if callable(progress):
        return lambda name: progress(name) if name is not None else None  # type: ignore[operator]
    if not progress:
        return lambda name: None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional (extra "cli")
        return lambda name: None
    bar = tqdm(total=total, unit="layer", desc="compress", leave=False)

    def update(name: str | None) -> None:
        if name is None:
            bar.close()
        else:
            bar.set_postfix_str(name)
            bar.update(1)

    return update
