"""Exports of a set of evaluation records: wide CSV, long (tidy) CSV, JSON, LaTeX (booktabs), Parquet.

``export(data, fmt, columns=None)`` takes a list of record dicts (e.g. :func:`load_records`) or, for
the wide formats, the wide table itself (:func:`load_results`), and returns text (``bytes`` for
Parquet). Formats:

* ``csv``: the wide table, one row per checkpoint (column names in :mod:`ncbounds.report.results`);
  ``pandas.read_csv`` of it gives back the same frame (dtypes, NaN for missing values, names).
* ``csv-long``: tidy rows ``checkpoint, layer, split, quantity, value, status`` — see :func:`long_table`.
* ``json``: the list of records, lossless (needs records, not a table).
* ``latex``: a booktabs table (``\\toprule``/``\\midrule``/``\\bottomrule``) via pandas' Styler, names
  and text escaped (``_`` → ``\\_``), numbers to 4 significant digits; needs jinja2.
* ``parquet``: the wide table as Parquet bytes; needs pyarrow.

``columns`` (wide formats only): names or shell-style patterns (``bound.*``), in the order given.
"""

from __future__ import annotations

import fnmatch
import importlib
import io
import json
import math
import os
from collections.abc import Iterable, Sequence

import pandas as pd

from ncbounds.errors import NCBoundsError, UsageError
from ncbounds.report.classes import class_quantities
from ncbounds.report.record import _clean
from ncbounds.report.results import SPLITS, bound_names, checkpoint_label, records_to_frame, sorted_records
from ncbounds.report.transfer_columns import transfer_long_rows

FORMATS = ("csv", "csv-long", "json", "latex", "parquet")
LONG_COLUMNS = ("checkpoint", "layer", "split", "quantity", "value", "status")
#: what the LaTeX table shows when no columns are chosen
LATEX_DEFAULT = ("checkpoint", "train_error", "test_error", "gap", "bound.*")


def require(module: str, hint: str):
    """Import an optional dependency or raise a one-line :class:`NCBoundsError` naming ``hint``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise NCBoundsError(f"{hint} is not installed; install it with {hint_command(module)}.") from None


def hint_command(module: str) -> str:
    """The install command for an optional dependency (matplotlib → the ``plots`` extra, pyarrow, jinja2)."""
    return {
        "matplotlib": "pip install 'ncbounds[plots]'",
        "pyarrow": "pip install pyarrow (or pip install 'ncbounds[parquet]')",
        "jinja2": "pip install jinja2 (or pip install 'ncbounds[latex]')",
    }.get(module, f"pip install {module}")


def select_columns(df: pd.DataFrame, columns: str | Sequence[str] | None, default: Sequence[str] | None = None) -> list[str]:
    """Resolve ``columns`` (comma-separated text or a list; exact names or fnmatch patterns such as
    ``bound.*``) against ``df``, keeping the given order and dropping repeats. ``None`` → ``default``
    (patterns allowed, unmatched ones ignored) or every column. An unmatched name is a UsageError."""
    if columns is None:
        if default is None:
            return list(df.columns)
        chosen = []
        for pattern in default:
            chosen += [c for c in df.columns if fnmatch.fnmatchcase(c, pattern) and not c.endswith((".status", ".vacuous"))]
        return list(dict.fromkeys(chosen))
    items = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else [str(c).strip() for c in columns]
    chosen: list[str] = []
    for item in (i for i in items if i):
        if item in df.columns:
            chosen.append(item)
        elif any(ch in item for ch in "*?["):
            matched = [c for c in df.columns if fnmatch.fnmatchcase(c, item)]
            if not matched:
                raise UsageError(f"--columns pattern {item!r} matches no column; see the header of `ncbounds export RESULTS --format csv`.")
            chosen += matched
        else:
            import difflib

            close = difflib.get_close_matches(item, list(df.columns), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else "; see the header of `ncbounds export RESULTS --format csv`"
            raise UsageError(f"unknown column {item!r} in --columns{hint}.")
    if not chosen:
        raise UsageError("--columns selects no column; give names such as checkpoint,test_error,bound.*.")
    return list(dict.fromkeys(chosen))


# ---------------------------------------------------------------------------------------------
# long (tidy) table


def long_table(records: Iterable[dict]) -> pd.DataFrame:
    """Tidy table: one row per checkpoint × layer × split × quantity.

    Rows per record, in this order:

    * errors: layer ``-``, split ``train``/``test``, quantities ``error``, ``error.lo``, ``error.hi``
      (95 % Clopper–Pearson) and ``n``, for each split with measured errors; then ``gap`` (split ``-``)
      when both are measured;
    * metrics: every metric of every layer (in layer ``index`` order, named as in ``record['layers']``,
      e.g. ``penultimate``) and split, value NaN where undefined; after them the layer's per-class rows
      (quantity ``class[c].<field>``, the interval as ``class[c].error.lo`` / ``.hi``) and per-label
      rows of multi-label data (``label[k].<field>``), see :func:`ncbounds.report.classes.class_quantities`;
    * layerwise: layer ``-``, quantities ``layerwise_rho`` and ``layerwise_r`` per split, and
      ``effective_depth`` (split ``train``: it is defined by the training NCC error);
    * bounds: layer ``-``, split ``-``, quantity = bound name, ``status`` = the bound's status.
    * with target data, the ``transfer.…`` rows of :func:`ncbounds.report.transfer_columns.transfer_long_rows`.

    ``status`` is NaN except for bounds. ``value`` is float64; non-numeric entries are left to JSON.
    """
    rows: list[tuple] = []

    def add(ckpt, layer, split, quantity, value, status=None):
        if value is None or isinstance(value, (bool, int, float)):
            rows.append((ckpt, layer, split, quantity, math.nan if value is None else float(value), status))

    for rec in sorted_records(records):
        ckpt = checkpoint_label(rec)
        errors = rec.get("errors") or {}
        for split in SPLITS:
            e = errors.get(split)
            if not e:
                continue
            ci = e.get("ci95") or [None, None]
            for q, v in (("error", e.get("error")), ("error.lo", ci[0]), ("error.hi", ci[1]), ("n", e.get("n"))):
                add(ckpt, "-", split, q, v)
        if all((errors.get(s) or {}).get("error") is not None for s in SPLITS):
            add(ckpt, "-", "-", "gap", errors["test"]["error"] - errors["train"]["error"])
        layers = sorted((rec.get("layers") or {}).items(), key=lambda kv: (kv[1].get("index") is None, kv[1].get("index") or 0))
        for name, layer in layers:
            metrics = layer.get("metrics") or {}
            for split in [s for s in SPLITS if s in metrics] + [s for s in metrics if s not in SPLITS]:
                for q, v in (metrics.get(split) or {}).items():
                    add(ckpt, name, split, q, v)
            for split, q, v in class_quantities(layer):  # per-class / per-label rows
                add(ckpt, name, split, q, v)
        lw = rec.get("layerwise") or {}
        for split in SPLITS:
            if isinstance(lw.get(split), dict):
                for q in ("layerwise_rho", "layerwise_r"):
                    add(ckpt, "-", split, q, lw[split].get(q))
        if "effective_depth" in lw:
            add(ckpt, "-", "train", "effective_depth", lw.get("effective_depth"))
        for name, b in bound_names(rec):
            add(ckpt, "-", "-", name, b.get("value"), b.get("status"))
        for layer, split, quantity, value, status in transfer_long_rows(rec):  # report/transfer_columns.py
            add(ckpt, layer, split, quantity, value, status)
    df = pd.DataFrame(rows, columns=list(LONG_COLUMNS))
    df["value"] = df["value"].astype("float64")
    from ncbounds.report.results import csv_normalized

    return csv_normalized(df)


# ---------------------------------------------------------------------------------------------
# LaTeX


def _sig4(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()  # numpy scalar
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _short_paths(values: pd.Series) -> pd.Series:
    """Checkpoint paths relative to their common folder (LaTeX tables have no room for full paths)."""
    text = [v for v in values if isinstance(v, str)]
    if len(text) < 2:
        return values.map(lambda v: os.path.basename(v) if isinstance(v, str) and os.sep in v else v)
    try:
        base = os.path.commonpath(text)
    except ValueError:
        return values
    if base in text:  # one path is the prefix of all: keep names
        base = os.path.dirname(base)
    return values.map(lambda v: os.path.relpath(v, base) if isinstance(v, str) and base else v)


def latex_table(df: pd.DataFrame, columns: str | Sequence[str] | None = None, default: Sequence[str] | None = LATEX_DEFAULT) -> str:
    """A booktabs LaTeX ``tabular`` of ``df`` (pandas ``Styler.to_latex(hrules=True)``).

    Header names and text cells are LaTeX-escaped (``_`` → ``\\_``, also ``& % $ # { } ~ ^ \\``);
    numbers are shown to 4 significant digits (integers as they are), missing values as ``--``;
    checkpoint paths relative to their common folder. No index column. Needs jinja2.
    """
    require("jinja2", "jinja2")
    cols = select_columns(df, columns, default)
    table = df[cols].copy()
    if "checkpoint" in table.columns:
        table["checkpoint"] = _short_paths(table["checkpoint"])
    table = table.reset_index(drop=True)
    numeric = [pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c]) for c in cols]
    try:
        styler = table.style
    except ImportError:
        raise NCBoundsError(f"jinja2 is not installed; install it with {hint_command('jinja2')}.") from None
    styler = styler.hide(axis="index")
    styler = styler.format(_sig4, escape="latex", na_rep="--")
    styler = styler.format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, column_format="".join("r" if n else "l" for n in numeric))


# ---------------------------------------------------------------------------------------------
# the entry point


def _wide(data) -> pd.DataFrame:
    return data if isinstance(data, pd.DataFrame) else records_to_frame(data)


def export(data: Iterable[dict] | pd.DataFrame, fmt: str, columns: str | Sequence[str] | None = None) -> str | bytes:
    """Render records (list of record dicts) or the wide table (DataFrame) in ``fmt``.

    ``fmt``: ``csv`` | ``csv-long`` | ``json`` | ``latex`` | ``parquet`` (see the module docstring);
    ``csv-long`` and ``json`` need the records themselves. ``columns`` selects and orders the columns
    of ``csv``, ``latex`` and ``parquet``. Returns ``str`` (``bytes`` for parquet). CSV uses ``\\n``
    line ends, no index, and full float precision (``read_csv`` gives back the same frame).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    is_frame = isinstance(data, pd.DataFrame)
    if not is_frame:
        data = list(data)
    if fmt in ("csv-long", "json"):
        if is_frame:
            raise UsageError(f"--format {fmt} needs the records, not the wide table; pass load_records(PATH).")
        if columns is not None:
            raise UsageError(f"--columns applies to the wide formats (csv, latex, parquet), not to {fmt}.")
        if fmt == "json":
            return json.dumps(_clean(data), indent=2, allow_nan=False) + "\n"
        return long_table(data).to_csv(index=False, lineterminator="\n")
    if fmt == "latex":
        return latex_table(_wide(data), columns)
    df = _wide(data)
    df = df[select_columns(df, columns)]
    if fmt == "csv":
        return df.to_csv(index=False, lineterminator="\n")
    require("pyarrow", "pyarrow")
    buf = io.BytesIO()
    try:
        df.to_parquet(buf, engine="pyarrow", index=False)
    except ImportError:
        raise NCBoundsError(f"pyarrow is not installed; install it with {hint_command('pyarrow')}.") from None
    return buf.getvalue()


__all__ = ["FORMATS", "export", "latex_table", "long_table", "select_columns", "require"]
