"""EvalRecord: everything measured for one checkpoint, as typed dataclasses that serialise to one JSON object.

JSON layout (``record.to_dict()``; ``schema_version`` 2)::

    schema_version  2 (records without the field are version 1: the same layout)
    checkpoint  {path, sha256, format, wrapper_key, saved_devices, prefixes_stripped, extra} | null (features)
    model       {arch, arch_kwargs, hyperparameters, num_params, num_classes, penultimate, conv_reduce}
    data        {spec, kind, task, num_classes, splits: {train: {n}, test: {n}}, info}
    errors      {train|test: {error, errors, n, ci95: [lo, hi]} | null}  (multi-label: the subset error, plus
                kind, hamming_error, hamming_ci95, decision_rule)
    layers      {NAME: {dim, index, scatter_mode, metrics: {train: {...}, test: {...}}, aliases?,
                 per_class?: {train|test: [{class, n, errors, error, ci95, variability, mean_norm,
                 classifier_norm, bias, margin_median, ncc_error, nc1_share}, …]},
                 per_label?: {train|test: [{label, positives, errors, error, ci95, false_positives,
                 false_negatives}, …]}}}
    classes     {task, counts: {train, test}, max_min_ratio, minority: {rule, classes},
                 classifier_cosines?, decision_rule?, multiplicity?, pairs?}  (absent in older records)
    layerwise   {epsilon, train|test: {layerwise_rho, layerwise_r}, effective_depth, effective_depth_layer}
    bounds      [ {name, value, bounds, status, reference, delta, inputs, reason, details, vacuous} ]
    transfer    only with target data: {target, settings, layers: {NAME: {dim, index, metrics, ncc_error,
                probe_error, fewshot, scores, score_notes, covariance_rank}}, layer_sweep, tunnel, bounds, notes}
    convention  {name, differences, description}
    provenance  {ncbounds, torch, numpy, python, device, seed, created, hyperparameters, hyperparameters_source, metadata}
    options     the evaluation options (:meth:`ncbounds.options.EvalOptions.to_record`)
    notes       one-sentence notes on degenerate inputs
    timings     seconds: load, pass_train, pass_test, metrics, bounds, total

Metric values are floats or null (undefined, never NaN). Each section is a dataclass; a key that a
record does not have (e.g. ``model.arch_kwargs`` of a features-file record) stays absent from the
JSON, and keys this version does not know are kept and written back unchanged, so
``EvalRecord.from_dict(d).to_dict() == d`` for every record. Sections also read like the dicts of
earlier versions (``record.layers["penultimate"]["metrics"]["train"]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ncbounds.bounds.base import BoundResult

SCHEMA_VERSION = 2

__all__ = [
    "SCHEMA_VERSION", "BoundRecord", "CheckpointInfo", "ClassesInfo", "ConventionInfo", "DataInfo", "EvalRecord", "LayerRecord",
    "Layerwise", "ModelInfo", "Provenance", "SplitErrors", "TransferRecord",
]


def _clean(value: Any) -> Any:
    """Recursively turn NaN/Inf into None and numpy scalars into Python numbers (strict JSON)."""
    if isinstance(value, _Section):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Absent:
    """Marks a field the record does not have (left out of the JSON)."""

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


class _Section(Mapping):
    """A typed section: dataclass fields in JSON order, absent ones left out, unknown keys kept.

    Reads like a dict (``section["key"]``, ``.get``, ``in``, iteration) so code written against the dict
    records keeps working.
    """

    _extra: dict

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_extra" and getattr(self, f.name) is not ABSENT}
        out.update(self._extra)
        return {k: _clean(v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping | None):
        if data is None:
            return None
        if isinstance(data, cls):
            return data
        names = {f.name for f in fields(cls)} - {"_extra"}
        known = {k: cls._parse(k, v) for k, v in data.items() if k in names}
        obj = cls(**known)
        obj._extra = {k: v for k, v in data.items() if k not in names}
        return obj

    @classmethod
    def _parse(cls, key: str, value: Any) -> Any:
        return value

    def _keys(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "_extra" and getattr(self, f.name) is not ABSENT] + list(self._extra)

    def __getitem__(self, key: str) -> Any:
        if key in self._extra:
            return self._extra[key]
        if key == "_extra" or not any(f.name == key for f in fields(self)) or getattr(self, key) is ABSENT:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if any(f.name == key for f in fields(self)) and key != "_extra":
            setattr(self, key, value)
        else:
            self._extra[key] = value

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.to_dict() == (other.to_dict() if isinstance(other, _Section) else _clean(dict(other)))
        return NotImplemented

    __hash__ = None  # mutable


def _section(cls):
    """Decorator: a dataclass section whose fields default to ABSENT and that keeps unknown keys."""
    for name in list(cls.__annotations__):
        if not hasattr(cls, name):
            setattr(cls, name, ABSENT)
    cls.__annotations__["_extra"] = "dict"
    cls._extra = field(default_factory=dict, repr=False, compare=False)
    return dataclass(eq=False)(cls)


@_section
class CheckpointInfo(_Section):
    """Where the weights came from: path, SHA-256, container format, wrapper key, devices saved on, prefixes stripped."""

    path: str
    sha256: str
    format: str
    wrapper_key: str | None
    saved_devices: list
    prefixes_stripped: list
    extra: dict


@_section
class ModelInfo(_Section):
    """The architecture: spec, keyword arguments (given, and all of the spec as ``hyperparameters``), sizes, penultimate layer."""

    arch: str
    arch_kwargs: dict
    num_params: int
    hyperparameters: dict
    num_classes: int
    penultimate: str
    conv_reduce: str


@_section
class DataInfo(_Section):
    """The data spec, its kind, the task (multiclass or multilabel), K, the split sizes and what the loader reports (``info``)."""

    spec: str
    kind: str
    task: str
    num_classes: int
    splits: dict
    info: dict


@_section
class SplitErrors(_Section):
    """Measured 0-1 error of one split: rate, count, n and the 95 % Clopper–Pearson interval."""

    error: float
    errors: int
    n: int
    ci95: list


@_section
class LayerRecord(_Section):
    """One hooked layer: feature dimension, 1-based index in forward order, metrics per split, merged aliases,
    the per-class rows per split (single-label data) and the per-label error rows (multi-label, penultimate)."""

    dim: int
    index: int
    scatter_mode: str
    metrics: dict
    aliases: list
    per_class: dict
    per_label: dict


@_section
class Layerwise(_Section):
    """Across-layer summaries: He–Su fit per split, effective depth and its ε."""

    epsilon: float
    train: dict
    test: dict
    effective_depth: int | None
    effective_depth_layer: str | None


@_section
class ClassesInfo(_Section):
    """Per-class context of the numbers: task, class (label) counts per split, the largest/smallest
    training count, the minority split of the minority-collapse metrics, the classifier's row cosines
    (K ≤ 100) and, for multi-label data, the decision rule, multiplicity counts and observed pairs."""

    task: str
    counts: dict
    max_min_ratio: float | None
    minority: dict
    classifier_cosines: list
    decision_rule: str
    multiplicity: dict
    pairs: dict


@_section
class ConventionInfo(_Section):
    """The metric convention the numbers follow, and how it differs from the canonical one."""

    name: str
    differences: dict
    description: str


@_section
class Provenance(_Section):
    """Versions, device, seed, creation time, hyperparameters (declared or read from the sidecar) and metadata."""

    ncbounds: str
    torch: str
    numpy: str
    python: str
    device: str
    seed: int
    created: str
    hyperparameters: dict
    hyperparameters_source: str
    metadata: dict


@_section
class BoundRecord(_Section):
    """One bound's result as recorded (:class:`~ncbounds.bounds.base.BoundResult` plus ``vacuous``)."""

    name: str
    value: float | None
    bounds: str
    status: str
    reference: str
    delta: float | None
    inputs: dict
    reason: str | None
    details: dict
    vacuous: bool

    @classmethod
    def of(cls, result: BoundResult) -> BoundRecord:
        return cls.from_dict(result.to_dict())


@_section
class TransferRecord(_Section):
    """Transfer of the frozen features to a target (new classes or another dataset of the same input shape).

    ``target`` {data, kind, num_classes, classes (original ids), classes_selected, n_train, n_test,
    class_counts}; ``settings`` (few-shot protocol, probe, splits used); ``layers`` {NAME: {dim, index,
    metrics {train, test}, ncc_error, probe_error, fewshot [...], scores {...}, score_notes,
    covariance_rank}}; ``layer_sweep`` (best layer per error); ``tunnel`` (covariance ranks, probe
    accuracies, penultimate-to-best ratio); ``bounds`` (the transfer bounds, as in ``bounds``); ``notes``.
    """

    target: dict
    settings: dict
    layers: dict
    layer_sweep: dict
    tunnel: dict
    bounds: list
    notes: list


@dataclass(eq=False)
class EvalRecord:
    """One checkpoint's report; see the module docstring for the JSON layout."""

    checkpoint: CheckpointInfo | None
    model: ModelInfo | None
    data: DataInfo
    errors: dict[str, SplitErrors | None]
    layers: dict[str, LayerRecord]
    layerwise: Layerwise
    bounds: list[BoundRecord] = field(default_factory=list)
    transfer: TransferRecord | None = None  # only with target data (written only then)
    convention: ConventionInfo = field(default_factory=ConventionInfo)
    provenance: Provenance = field(default_factory=Provenance)
    options: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    classes: ClassesInfo | None = None  # left out of the JSON when None (records before it existed)
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict, repr=False)

    _SECTIONS: ClassVar[dict[str, type]] = {
        "checkpoint": CheckpointInfo, "model": ModelInfo, "data": DataInfo, "layerwise": Layerwise,
        "convention": ConventionInfo, "provenance": Provenance, "classes": ClassesInfo, "transfer": TransferRecord,
    }

    def __post_init__(self) -> None:
        for name, cls in self._SECTIONS.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                setattr(self, name, cls.from_dict(value))
        self.errors = {k: SplitErrors.from_dict(v) for k, v in (self.errors or {}).items()}
        self.layers = {k: LayerRecord.from_dict(v) for k, v in (self.layers or {}).items()}
        self.bounds = [b if isinstance(b, BoundRecord) else BoundRecord.of(b) if isinstance(b, BoundResult) else BoundRecord.from_dict(b)
                       for b in (self.bounds or [])]

    def to_dict(self) -> dict:
        """The JSON object (strict: no NaN, numpy scalars as numbers); ``schema_version`` first."""
        out = {"schema_version": self.schema_version}
        for f in fields(self):
            if f.name in ("schema_version", "extra") or (f.name in ("classes", "transfer") and getattr(self, f.name) is None):
                continue
            out[f.name] = _clean(getattr(self, f.name))
        out.update(_clean(self.extra))
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> EvalRecord:
        """The record of a JSON object written by any version (unknown keys kept in ``extra``)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        known.setdefault("schema_version", 1)
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

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
