"""Loaded data and its validation: :class:`Split`, :class:`DataSource`, batching, and the checks every loader uses.

A loader turns a data spec into a :class:`DataSource` whose splits went through :func:`_make_split`:
samples first, a numeric float32 (float64 for features) ``x``, 1-D int64 labels ``y`` that are
non-negative integers, one label per sample, no NaN/Inf — or, for multi-label data, multi-hot int64
rows ``y`` of shape (N, K) with entries 0/1 (``DataSource.task == "multilabel"``). Every problem raises
:class:`~ncbounds.errors.DataError` (bad data) or :class:`~ncbounds.errors.UsageError` (bad spec) with one
sentence naming the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ncbounds.errors import DataError, UsageError
from ncbounds.io.kv import parse_kv

__all__ = ["DataSource", "Split", "iterate_batches"]


@dataclass
class Split:
    """One split: ``x`` float32 (float64 for features) with samples first (N, ...), ``y`` int64 (N,)
    class indices, or (N, K) multi-hot 0/1 rows for multi-label data."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DataSource:
    """A loaded data spec.

    ``kind`` is ``"inputs"`` (raw inputs to run through a model) or ``"features"`` (precomputed
    penultimate features; ``W``, ``b`` optionally give the linear classifier, float64, ``W`` of
    shape (K, d)). ``input_shape`` is the per-sample shape of ``x``. ``info`` records provenance
    (``source``, seeds, sizes; for the Gaussian ETF also the closed-form population quantities).
    """

    spec: str
    kind: str
    num_classes: int
    train: Split
    test: Split
    heldout: Split | None = None
    W: np.ndarray | None = None
    b: np.ndarray | None = None
    input_shape: tuple = ()
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.input_shape:
            self.input_shape = tuple(self.train.x.shape[1:])

    @property
    def task(self) -> str:
        """``"multilabel"`` when the labels are multi-hot rows (N, K), else ``"multiclass"``."""
        return "multilabel" if self.train.y.ndim == 2 else "multiclass"

    def splits(self) -> dict[str, Split]:
        """The present splits by name, in the order train, test, heldout."""
        out = {"train": self.train, "test": self.test}
        if self.heldout is not None:
            out["heldout"] = self.heldout
        return out


def iterate_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` CPU tensors of at most ``batch_size`` samples, in order.

    Each batch is a fresh copy (one batch at a time, so memory stays bounded): a model that edits
    its input in place (``x.div_(255)``) can never alter the split, which is reused by later passes,
    the Monte-Carlo bounds and the in-process data cache. ``x`` keeps its dtype, ``y`` is int64.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    n = len(split)
    for start in range(0, n, batch_size):
        yield (torch.from_numpy(np.array(split.x[start : start + batch_size], copy=True, order="C")),
               torch.from_numpy(np.array(split.y[start : start + batch_size], copy=True, order="C")))


# ----------------------------------------------------------------------------------------------
# validation helpers shared by the loaders
# ----------------------------------------------------------------------------------------------


def _check_finite(x: np.ndarray, where: str, chunk: int = 1 << 22) -> None:
    flat = x.reshape(-1)
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk]
        if not np.isfinite(part).all():
            bad = int(np.count_nonzero(~np.isfinite(flat)))
            raise DataError(
                f"{where} contains {bad} NaN/Inf values; clean or impute them before evaluating"
            )


def _multi_hot(y: np.ndarray, where: str) -> np.ndarray:
    """Multi-hot label rows (N, K), K ≥ 2, entries 0/1 (bool, integer or integral float) → int64."""
    if y.dtype == np.bool_:
        return y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"labels {where} have dtype {y.dtype}; store multi-hot rows of 0/1 or class indices (N,)")
    if y.size and not np.isin(y, (0, 1)).all():
        raise DataError(
            f"labels {where} have shape {y.shape} but hold values other than 0 and 1; store multi-hot rows "
            "(1 for every label of the sample) or class indices of shape (N,)"
        )
    return y.astype(np.int64)


def _labels(y: Any, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and y.shape[1] >= 2:
        return _multi_hot(y, where)
    if y.ndim != 1:
        raise DataError(
            f"labels {where} have shape {y.shape}, not (N,) class indices or (N, K) multi-hot rows; "
            "store class indices (e.g. y.argmax(1) for one-hot labels)"
        )
    if y.dtype == np.bool_ or not (
        np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
    ):
        raise DataError(
            f"labels {where} have dtype {y.dtype}, not integers; store integer class indices"
        )
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise DataError(f"labels {where} are not integers; store integer class indices")
    if y.size and y.min() < 0:
        raise DataError(
            f"labels {where} include the negative value {int(y.min())}; "
            "labels must be class indices 0..K-1"
        )
    return y.astype(np.int64, copy=False)


def _make_split(x: Any, y: Any, name: str, where: str, dtype=np.float32) -> Split:
    where_x = f"the {name} inputs of {where}"
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{where_x} have dtype {x.dtype}, not numbers; store a numeric array")
    if x.ndim < 2:
        raise DataError(f"{where_x} have shape {x.shape}; store samples first, e.g. shape (N, d)")
    y = _labels(y, f"of the {name} split of {where}")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"the {name} split of {where} has {x.shape[0]} inputs but {y.shape[0]} labels; "
            "store one label per sample"
        )
    if x.shape[0] == 0:
        raise DataError(f"the {name} split of {where} is empty; provide at least one sample")
    x = np.ascontiguousarray(x, dtype=dtype)
    _check_finite(x, where_x)
    return Split(x=x, y=y)


def _num_classes(splits: dict[str, Split]) -> int:
    kinds = {s.y.ndim for s in splits.values()}
    if kinds == {2}:
        widths = {name: s.y.shape[1] for name, s in splits.items()}
        if len(set(widths.values())) > 1:
            desc = ", ".join(f"{k} {v}" for k, v in widths.items())
            raise DataError(f"the multi-hot labels of the splits have different numbers of labels ({desc}); make them equal")
        return int(next(iter(widths.values())))
    if len(kinds) > 1:
        raise DataError("some splits have class indices (N,) and others multi-hot rows (N, K); store one kind of labels "
                        "(class indices are y.argmax(1) of one-hot rows)")
    return int(max(int(s.y.max()) for s in splits.values())) + 1


def _check_shapes(splits: dict[str, Split], where: str) -> None:
    shapes = {name: s.x.shape[1:] for name, s in splits.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise DataError(
            f"splits of {where} have different per-sample shapes ({desc}); make them equal"
        )


def _resolve(path: str, base_dir: str | None) -> str:
    path = os.path.expanduser(path.strip())
    if not os.path.isabs(path) and base_dir:
        path = os.path.join(base_dir, path)
    return path


def _options(
    spec: str,
    text: str,
    schema: dict[str, tuple[type, Any]],
    extra: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Parse ``k=v`` options against ``schema`` = {key: (type, default)}; types int, float, bool."""
    given = parse_kv(text)
    out: dict[str, Any] = {k: d for k, (_, d) in schema.items()}
    for key, value in given.items():
        if key not in schema:
            if extra is not None and extra(key):
                out[key] = value
                continue
            raise UsageError(
                f"unknown option `{key}` in data spec `{spec}`; accepted: {', '.join(schema)}"
            )
        typ = schema[key][0]
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif typ is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is None:
            ok = schema[key][1] is None
        elif typ is bool:
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, typ) and not isinstance(value, bool)
        if not ok:
            raise UsageError(
                f"option `{key}` in data spec `{spec}` must be {typ.__name__}, got `{value}`"
            )
        out[key] = value
    return out


def _require(cond: bool, spec: str, message: str) -> None:
    if not cond:
        raise UsageError(f"in data spec `{spec}`, {message}")


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
