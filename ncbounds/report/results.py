"""Reading a results folder (one EvalRecord JSON file per checkpoint) into records and a wide table.

A results folder is what ``ncbounds batch`` writes: one ``*.json`` record per checkpoint (layout in
:mod:`ncbounds.report.record`, plus ``record['batch'] = {root, relative_path, options_hash}``), and one
``*.error.json`` file per checkpoint that failed. :func:`load_records` reads the records and skips (and
counts) the error files, temporary files and JSON files that are not records; :func:`load_results`
turns the records into the wide table, one row per checkpoint.

Wide-table columns, in this order (missing values are NaN):

* provenance: ``checkpoint`` (checkpoint path; the data spec for a features-file record),
  ``relative_path`` (``record['batch']``), ``sha256``, ``format``, ``arch``, ``data`` (data spec),
  ``convention``, ``device``, ``created`` (ISO string);
* ``hp.<key>`` for every hyperparameter of ``provenance.hyperparameters`` and ``hp.arch.<key>`` for every
  keyword argument of the architecture (``model.hyperparameters``: the spec's inline arguments and
  ``arch_kwargs``), union over records, sorted by name; lists and dicts are JSON-encoded strings;
* ``meta.<key>`` for the sidecar keys that are not hyperparameters (``provenance.metadata``: measured
  values, times, provenance; see :mod:`ncbounds.io.sidecar`), sorted;
* measured errors: ``train_error``, ``train_error.lo``, ``train_error.hi``, ``test_error``,
  ``test_error.lo``, ``test_error.hi`` (95 % Clopper–Pearson interval), ``gap`` = test − train error,
  ``n_train``, ``n_test``, ``num_classes``, ``num_params``;
* penultimate-layer metrics ``<split>.<metric>`` (``train.nc1`` … then ``test.nc1`` …, metric names in
  the order of the records);
* layerwise summaries ``train.layerwise_rho``, ``train.layerwise_r``, ``test.layerwise_rho``,
  ``test.layerwise_r``, ``effective_depth``, ``effective_depth_layer``;
* for every bound (in the order of the records): ``bound.<name>`` (value), ``bound.<name>.status``,
  ``bound.<name>.vacuous``.
* with target data, the transfer columns ``transfer.…`` (:mod:`ncbounds.report.transfer_columns`).

Rows are sorted by ``checkpoint`` (then ``relative_path``), lexicographically. Metric, error and bound
values are float64. Every other column has exactly the dtype ``pandas.read_csv`` infers for it from the
CSV export (the frame is normalized that way), so ``read_csv(export(df, 'csv'))`` gives the same frame:
e.g. integer hyperparameters are int64 (float64 when some are missing), ``bound.<name>.vacuous`` is bool
(object holding True/False/NaN when a bound is absent from some records), a column with no value at all
is float64 NaN, and text that looks like a number or like a missing value (``"NA"``) is read as such.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ncbounds.errors import DataError
from ncbounds.io.output import is_temporary_name
from ncbounds.report.transfer_columns import transfer_cells

SPLITS = ("train", "test")
PROVENANCE_COLUMNS = ("checkpoint", "relative_path", "sha256", "format", "arch", "data", "convention", "device", "created")
ERROR_COLUMNS = (
    "train_error", "train_error.lo", "train_error.hi", "test_error", "test_error.lo", "test_error.hi", "gap",
)
SIZE_COLUMNS = ("n_train", "n_test", "num_classes", "num_params")
LAYERWISE_COLUMNS = (
    "train.layerwise_rho", "train.layerwise_r", "test.layerwise_rho", "test.layerwise_r", "effective_depth", "effective_depth_layer",
)
#: the first columns of the transfer object (the rest follow in record order; report/transfer_columns.py)
TRANSFER_HEAD = ("transfer.target", "transfer.num_classes", "transfer.n_train", "transfer.n_test")
#: suffixes of temporary / partial files other writers (editors, copy tools) leave behind
_TEMP_MARKERS = (".tmp", ".part", ".partial", ".swp", "~")
#: the lock files of ``ncbounds batch`` / ``merge``: part of a results folder, never reported
_LOCK_NAME = re.compile(r"\.ncbounds-batch(?:\.shard-\d+-of-\d+)?\.lock\Z")
ERROR_SUFFIX = ".error.json"
#: at most this many skipped files are named one by one in :meth:`Records.skipped_lines`
MAX_NAMED = 20


@dataclass
class ResultFile:
    """One entry of a results folder as :func:`scan_results` classifies it.

    ``kind``: ``"record"`` (an EvalRecord JSON), ``"error"`` (a ``NAME.error.json`` failure record) or
    ``"skipped"`` with ``reason`` one of ``"temporary"`` (a writer's temporary or partial file, or a
    hidden file — result records never start with a dot), ``"hidden folder"`` (a folder whose name
    starts with a dot, e.g. ``.ipynb_checkpoints``; not searched), ``"not a JSON file"``, ``"unreadable"``
    (invalid JSON) or ``"not a record"`` (JSON that is not an EvalRecord). ``name`` is the result name
    (file name without ``.json`` / ``.error.json``); ``data`` the parsed JSON of records and error records.
    """

    path: Path
    kind: str
    name: str
    reason: str | None = None
    data: Any = None


def _classify_name(name: str) -> str | None:
    """The skip reason a file name alone gives, or None when the file must be read."""
    if is_temporary_name(name) or name.startswith(".") or name.startswith("~") or name.endswith(_TEMP_MARKERS):
        return "temporary"
    if not name.endswith(".json"):
        return "not a JSON file"
    return None


def scan_results(folder: str | Path, recursive: bool = True) -> list[ResultFile]:
    """Every file of a results folder, classified (see :class:`ResultFile`), in sorted path order.

    This is the one reader of the results-folder layout: ``load_records`` (export, correlate, plot),
    ``batch --resume`` and ``merge`` all use it. ``recursive`` also searches sub-folders (except hidden
    ones, which are reported once as ``"hidden folder"``). The batch lock files are left out.
    """
    root = Path(folder)
    out: list[ResultFile] = []

    def visit(current: Path) -> None:
        for entry in sorted(current.iterdir(), key=lambda p: p.name):
            if entry.is_dir():
                if not recursive:
                    continue
                if entry.name.startswith("."):
                    out.append(ResultFile(entry, "skipped", entry.name, "hidden folder"))
                else:
                    visit(entry)
                continue
            if not entry.is_file() or _LOCK_NAME.match(entry.name):
                continue
            reason = _classify_name(entry.name)
            is_error = entry.name.endswith(ERROR_SUFFIX)
            if is_error:
                name = entry.name[: -len(ERROR_SUFFIX)]
            else:
                name = entry.name[: -len(".json")] if entry.name.endswith(".json") else entry.name
            if reason is not None:
                out.append(ResultFile(entry, "skipped", name, reason))
                continue
            try:
                data = _read_json(entry)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                out.append(ResultFile(entry, "skipped", name, "unreadable"))
                continue
            if is_error:
                kind = "error" if isinstance(data, dict) else "skipped"
                out.append(ResultFile(entry, kind, name, None if kind == "error" else "not a record", data))
            elif is_record(data):
                out.append(ResultFile(entry, "record", name, None, data))
            else:
                out.append(ResultFile(entry, "skipped", name, "not a record", data))

    visit(root)
    return out


class Records(list):
    """A list of record dicts, with what was skipped while reading them.

    ``sources``: the file each record came from (same order); ``error_files``: the ``*.error.json``
    files (failed checkpoints); ``skipped``: {reason: [paths]} (reasons as in :class:`ResultFile`).
    """

    def __init__(self, items: Iterable[dict] = (), sources: Iterable[str | None] | None = None) -> None:
        super().__init__(items)
        self.sources: list[str | None] = list(sources) if sources is not None else [None] * len(self)
        self.error_files: list[str] = []
        self.skipped: dict[str, list[str]] = {}

    def summary(self) -> str:
        """One line: how many records were read and what was skipped ('' when nothing was skipped)."""
        parts = []
        if self.error_files:
            parts.append(f"{len(self.error_files)} failed checkpoint(s) (*.error.json)")
        for reason, paths in self.skipped.items():
            parts.append(f"{len(paths)} {reason} file(s)" if reason != "hidden folder" else f"{len(paths)} hidden folder(s)")
        return f"read {len(self)} record(s); skipped " + ", ".join(parts) if parts else ""

    def skipped_lines(self, limit: int = MAX_NAMED) -> list[str]:
        """One line per skipped file or folder, naming it and why (at most ``limit``, then a count)."""
        items = [(path, "failed checkpoint, no results") for path in self.error_files]
        items += [(path, reason) for reason, paths in self.skipped.items() for path in paths]
        lines = [f"skipped {path}: {reason}" for path, reason in items[:limit]]
        if len(items) > limit:
            lines.append(f"… and {len(items) - limit} more skipped files")
        return lines

    def counts(self) -> dict[str, int]:
        """{'records': n, 'error_records': n, <skip reason>: n} (JSON-friendly)."""
        return {"records": len(self), "error_records": len(self.error_files), **{k: len(v) for k, v in self.skipped.items()}}


def is_record(obj: Any) -> bool:
    """True for a dict in the EvalRecord layout (it has ``errors`` and ``layers``)."""
    return isinstance(obj, dict) and "errors" in obj and "layers" in obj


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_records(path: str | Path | Iterable[dict]) -> Records:
    """Read evaluation records from a results folder or from one JSON file.

    ``path``: a folder (searched recursively with :func:`scan_results`), a JSON file holding one record or
    a list of records (the ``json`` export), or an iterable of record dicts (returned as :class:`Records`).
    Skipped, and named on the returned :class:`Records` with the reason: ``*.error.json`` files (failed
    checkpoints), temporary and hidden files, hidden folders, files that are not JSON, JSON files that are
    not EvalRecords and files that cannot be parsed. Records are returned in path order. Raises
    :class:`DataError` when the path does not exist or holds no record.
    """
    if not isinstance(path, (str, Path)):
        items = list(path)
        bad = [i for i, r in enumerate(items) if not is_record(r)]
        if bad:
            raise DataError(f"item {bad[0]} is not an evaluation record (a dict with 'errors' and 'layers'); "
                            "pass EvalRecord.to_dict() results.")
        return Records(items)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist; give a results folder written by `ncbounds batch` or a JSON record file.")
    out = Records()
    if p.is_file():
        if p.name.endswith(ERROR_SUFFIX):
            raise DataError(f"{p} is the error record of a failed checkpoint and holds no results; "
                            "give a successful record or the results folder.")
        try:
            data = _read_json(p)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{p} is not readable JSON ({exc}); "
                            "give a record written by `ncbounds report --format json` or `ncbounds batch`.") from None
        items = data if isinstance(data, list) else [data]
        for item in items:
            if is_record(item):
                out.append(item)
                out.sources.append(str(p))
            else:
                out.skipped.setdefault("not a record", []).append(str(p))
        if not out:
            raise DataError(f"{p} holds no evaluation record (a JSON object with 'errors' and 'layers').")
        return out
    for entry in scan_results(p, recursive=True):
        if entry.kind == "record":
            out.append(entry.data)
            out.sources.append(str(entry.path))
        elif entry.kind == "error":
            out.error_files.append(str(entry.path))
        else:
            out.skipped.setdefault(entry.reason, []).append(str(entry.path))
    if not out:
        extra = f" ({out.summary().split('; ', 1)[1]})" if out.summary() else ""
        raise DataError(f"no evaluation records found in {p}{extra}; run `ncbounds batch` into this folder first.")
    return out


# ---------------------------------------------------------------------------------------------
# the wide table


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _float(value: Any) -> float:
    """A float for a metric/bound/error value; NaN for None and for anything non-numeric."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value.item())  # numpy scalar
    except (AttributeError, TypeError, ValueError):
        return math.nan


def _scalar(value: Any) -> Any:
    """Hyperparameter/provenance value as a table cell: scalars as they are, containers as JSON text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def checkpoint_label(record: dict) -> str | None:
    """The ``checkpoint`` column: the checkpoint path, or the data spec of a features-file record."""
    return _get(record, "checkpoint", "path") or _get(record, "data", "spec")


def _sort_key(item: tuple[int, dict]) -> tuple:
    i, rec = item
    return (checkpoint_label(rec) or "", _get(rec, "batch", "relative_path") or "", i)


def sorted_records(records: Iterable[dict]) -> list[dict]:
    """Records in the row order of the wide table: by checkpoint path, then batch relative path."""
    return [r for _, r in sorted(enumerate(records), key=_sort_key)]


def bound_names(record: dict) -> list[tuple[str, dict]]:
    """(column name, bound dict) of a record's bounds; a repeated name gets '#2', '#3' …"""
    seen: dict[str, int] = {}
    out = []
    for b in record.get("bounds") or []:
        name = str(b.get("name"))
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", b))
    return out


def arch_hyperparameters(record: dict) -> dict:
    """The architecture's keyword arguments of a record (``model.hyperparameters``; for records written
    before that field existed, the spec's inline arguments merged with ``model.arch_kwargs``)."""
    model = record.get("model") or {}
    if isinstance(model.get("hyperparameters"), dict):
        return model["hyperparameters"]
    from ncbounds.models.spec import describe_spec

    arch = model.get("arch")
    inline = describe_spec(arch).kwargs if isinstance(arch, str) and not arch.startswith("<") else {}
    return {**inline, **(model.get("arch_kwargs") or {})}


def _row(record: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """(float cells, other cells) of one record."""
    floats: dict[str, Any] = {}
    other: dict[str, Any] = {
        "checkpoint": checkpoint_label(record),
        "relative_path": _get(record, "batch", "relative_path"),
        "sha256": _get(record, "checkpoint", "sha256"),
        "format": _get(record, "checkpoint", "format"),
        "arch": _get(record, "model", "arch"),
        "data": _get(record, "data", "spec"),
        "convention": _get(record, "convention", "name"),
        "device": _get(record, "provenance", "device"),
        "created": _get(record, "provenance", "created"),
    }
    for key, value in (_get(record, "provenance", "hyperparameters") or {}).items():
        other[f"hp.{key}"] = _scalar(value)
    for key, value in arch_hyperparameters(record).items():
        other[f"hp.arch.{key}"] = _scalar(value)
    for key, value in (_get(record, "provenance", "metadata") or {}).items():
        other[f"meta.{key}"] = _scalar(value)
    errors = record.get("errors") or {}
    for split in SPLITS:
        e = errors.get(split) or {}
        ci = e.get("ci95") or [None, None]
        floats[f"{split}_error"] = _float(e.get("error"))
        floats[f"{split}_error.lo"] = _float(ci[0])
        floats[f"{split}_error.hi"] = _float(ci[1])
    floats["gap"] = floats["test_error"] - floats["train_error"]
    for split in SPLITS:
        other[f"n_{split}"] = _get(record, "data", "splits", split, "n")
    other["num_classes"] = _get(record, "data", "num_classes") or _get(record, "model", "num_classes")
    other["num_params"] = _get(record, "model", "num_params")
    metrics = _get(record, "layers", "penultimate", "metrics") or {}
    for split in SPLITS:
        for name, value in (metrics.get(split) or {}).items():
            if value is None or isinstance(value, (bool, int, float)) or hasattr(value, "item"):
                floats[f"{split}.{name}"] = _float(value)
    lw = record.get("layerwise") or {}
    for split in SPLITS:
        floats[f"{split}.layerwise_rho"] = _float(_get(lw, split, "layerwise_rho"))
        floats[f"{split}.layerwise_r"] = _float(_get(lw, split, "layerwise_r"))
    other["effective_depth"] = lw.get("effective_depth")
    other["effective_depth_layer"] = lw.get("effective_depth_layer")
    for name, b in bound_names(record):
        floats[f"bound.{name}"] = _float(b.get("value"))
        other[f"bound.{name}.status"] = b.get("status")
        other[f"bound.{name}.vacuous"] = b.get("vacuous")
    numbers, text = transfer_cells(record)  # the transfer object (report/transfer_columns.py)
    floats.update({k: _float(v) for k, v in numbers.items()})
    other.update(text)
    return floats, other


def _column_order(rows: list[tuple[dict, dict]]) -> list[str]:
    def union(keys_of) -> list[str]:
        seen: dict[str, None] = {}
        for floats, other in rows:
            for key in keys_of(floats, other):
                seen.setdefault(key, None)
        return list(seen)

    hps = sorted(union(lambda f, o: [k for k in o if k.startswith("hp.")]))
    hps += sorted(union(lambda f, o: [k for k in o if k.startswith("meta.")]))
    metric_cols = []
    for split in SPLITS:
        metric_cols += [k for k in union(lambda f, o, s=split: [k for k in f if k.startswith(f"{s}.")]) if k not in LAYERWISE_COLUMNS]
    bounds = union(lambda f, o: [k for k in f if k.startswith("bound.")])
    bound_cols = [c for b in bounds for c in (b, f"{b}.status", f"{b}.vacuous")]
    transfer = union(lambda f, o: [k for k in (*o, *f) if k.startswith("transfer.") and k in TRANSFER_HEAD])
    transfer += union(lambda f, o: [k for k in f if k.startswith("transfer.")])
    transfer += union(lambda f, o: [k for k in o if k.startswith("transfer.") and k not in TRANSFER_HEAD])
    return [*PROVENANCE_COLUMNS, *hps, *ERROR_COLUMNS, *SIZE_COLUMNS, *metric_cols, *LAYERWISE_COLUMNS, *bound_cols, *transfer]


def csv_normalized(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every non-float column given the dtype and values ``pandas.read_csv`` infers from
    ``df.to_csv(index=False)``; float64 columns are kept bit for bit (they round-trip as they are)."""
    cols = [c for c in df.columns if df[c].dtype != "float64"]
    if not cols:
        return df.reset_index(drop=True)
    back = pd.read_csv(io.StringIO(df[cols].to_csv(index=False, lineterminator="\n")))
    back.columns = cols
    data = {c: (back[c] if c in cols else df[c].reset_index(drop=True)) for c in df.columns}
    return pd.DataFrame(data, columns=list(df.columns))


def records_to_frame(records: Iterable[dict]) -> pd.DataFrame:
    """The wide table (see the module docstring) of record dicts: one row per record, sorted by checkpoint."""
    recs = sorted_records(records)
    rows = [_row(r) for r in recs]
    order = _column_order(rows)
    float_cols = {k for floats, _ in rows for k in floats}
    data: dict[str, pd.Series] = {}
    for col in order:
        if col in float_cols:
            data[col] = pd.Series([f.get(col, math.nan) for f, _ in rows], dtype="float64")
        else:
            data[col] = pd.Series([o.get(col) for _, o in rows], dtype=object)
    df = pd.DataFrame(data, columns=order)
    return csv_normalized(df)


def load_results(path: str | Path | Iterable[dict]) -> pd.DataFrame:
    """The wide table of a results folder, a JSON record file or a list of record dicts.

    One row per checkpoint, sorted by checkpoint path; columns and dtypes as in the module docstring
    (``hp.<key>``, ``train_error`` … ``gap``, ``<split>.<metric>``, ``bound.<name>[.status|.vacuous]``).
    Failed checkpoints (``*.error.json``) and temporary files are skipped; their counts are in
    ``df.attrs['ncbounds']`` ({'records', 'error_records', …}).
    """
    records = load_records(path)
    df = records_to_frame(records)
    df.attrs["ncbounds"] = records.counts()
    return df


__all__ = [
    "ERROR_SUFFIX", "Records", "ResultFile", "is_record", "scan_results", "load_records", "load_results", "records_to_frame",
    "sorted_records", "bound_names",
    "checkpoint_label", "csv_normalized",
]
