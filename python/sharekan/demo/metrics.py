"""What the demo (and the benchmark) measure: fidelity of compressed outputs against the
dense head's, dense byte counts, and JSON-safe records."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

StateDict = Mapping[str, np.ndarray]


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """10 log10(||ref||^2 / ||ref - approx||^2) in dB over all entries (inf if identical)."""
    ref = np.asarray(reference, dtype=np.float64)
    err = float(np.sum((ref - np.asarray(approx, dtype=np.float64)) ** 2))
    return float("inf") if err == 0.0 else float(10.0 * np.log10(float(np.sum(ref**2)) / err))


def fidelity(dense_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy (%), top-1 agreement with dense (%) and output SQNR vs dense (dB)."""
    pred = logits.argmax(axis=1)
    return {
        "accuracy": float(100.0 * np.mean(pred == labels)),
        "agreement": float(100.0 * np.mean(pred == dense_logits.argmax(axis=1))),
        "sqnr_db": sqnr_db(dense_logits, logits),
    }


def dense_bytes(sd: StateDict) -> int:
    """Bytes of the dense FP32 state_dict (every tensor, as trained)."""
    return sum(4 * int(np.asarray(v).size) for v in sd.values())


def jsonable(obj: Any) -> Any:
    """`obj` with numpy scalars as Python numbers, tuples as lists and NaN / inf as None /
    "inf" / "-inf", so `json.dumps` writes strict JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
