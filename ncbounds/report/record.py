"""EvalRecord: everything measured for one checkpoint, as one JSON-serializable object (DESIGN §7).

JSON layout (``record.to_dict()``)::

    checkpoint  {path, sha256, format, wrapper_key, saved_devices, prefixes_stripped} | null (features)
    model       {arch, arch_kwargs, num_classes, num_params, penultimate, conv_reduce}
    data        {spec, kind, splits: {train: {n}, test: {n}}}
    errors      {train|test: {error, errors, n, ci95: [lo, hi]}}
    layers      {NAME: {dim, index, scatter_mode, metrics: {train: {...}, test: {...}}}}
    layerwise   {train|test: {layerwise_rho, layerwise_r}, effective_depth, effective_depth_layer, epsilon}
    bounds      [ {name, value, bounds, status, delta, inputs, vacuous, reference, reason, details} ]
    convention  {name, differences}
    provenance  {ncbounds, torch, numpy, python, device, seed, created, hyperparameters}
    options     the evaluation options
    notes       one-sentence notes on degenerate inputs
    timings     seconds: load, pass_train, pass_test, metrics, bounds, total

Metric values are floats or null (undefined, never NaN).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _clean(value: Any) -> Any:
    """Recursively turn NaN/Inf into None and numpy scalars into Python numbers (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class EvalRecord:
    """One checkpoint's report; see the module docstring for the JSON layout."""

    checkpoint: dict | None
    model: dict | None
    data: dict
    errors: dict
    layers: dict
    layerwise: dict
    bounds: list = field(default_factory=list)
    convention: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.context: Any = None  # in-memory statistics for bounds; never serialized

    def to_dict(self) -> dict:
        return _clean({f.name: getattr(self, f.name) for f in fields(self)})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> EvalRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    # convenience accessors -------------------------------------------------------------
    @property
    def penultimate(self) -> dict:
        """Metrics of the penultimate layer: {'train': {...}, 'test': {...}}."""
        return self.layers["penultimate"]["metrics"]

    def metric(self, name: str, split: str = "test", layer: str = "penultimate"):
        return self.layers[layer]["metrics"][split].get(name)

    @property
    def test_error(self) -> float | None:
        return (self.errors.get("test") or {}).get("error")


__all__ = ["EvalRecord", "asdict"]
