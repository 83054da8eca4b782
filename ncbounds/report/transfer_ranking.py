"""Ranking models by transferability scores across a batch (``ncbounds correlate --against COLUMN``).

:func:`ranking_table` compares, over the models (rows) of the wide table, each score column with one
measured column (e.g. ``transfer.penultimate.probe_error``) using
:func:`ncbounds.transfer.ranking.ranking_summary`: Kendall τ-b, weighted Kendall τ
(``scipy.stats.weightedtau``, hyperbolic weights, as the transferability literature reports), Pearson r
and the top-1 / top-3 hits (is a best model by the column among the score's k best).

Conventions:

* **Orientation.** Both vectors are oriented so that larger means better before any statistic (a
  positive τ means "the score orders the models as the column does"): every transferability score is
  higher-is-better; a column is lower-is-better when its name says it is an error, a bound, a gap or a
  collapse quantity (it contains ``error``, ``bound.``, ``gap``, ``certificate``, ``cdnv``, ``nc1`` or
  ``fuzziness``), unless ``lower_is_better`` says otherwise. Weighted τ then gives most weight to the
  best models (lowest error).
* **Groups.** Models are ranked against each other only on the same target: rows are grouped by
  ``transfer.target`` (one group when the column is absent). Each statistic is computed per group and
  averaged over the groups where it is defined; ``top1_hit``/``top3_hit`` are then hit **rates** (the
  fraction of targets on which the score's top k contained a best model); ``groups`` counts the targets
  and ``n`` the models used (rows with both values present).
* **NCTI** (Wang et al. 2023) is relative to a set: for every layer whose three raw terms are present,
  ``transfer.LAYER.score.ncti`` = ncc' + seli' − vc', each term min–max normalised over the models of
  the group (:func:`ncbounds.transfer.ranking.ncti_combine`); it is added to the table and ranked
  like the other scores. The raw terms themselves are not ranked.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ncbounds.errors import UsageError
from ncbounds.transfer.ranking import ncti_combine, ranking_summary

__all__ = ["RANKING_COLUMNS", "lower_is_better", "ranking_table", "render_ranking", "score_columns", "with_ncti"]

RANKING_COLUMNS = ("measure", "n", "groups", "kendall_tau", "weighted_tau", "pearson_r", "top1_hit", "top3_hit")
_LOWER_WORDS = ("error", "bound.", "gap", "certificate", "cdnv", "nc1", "fuzziness")
_NCTI_TERMS = ("ncti_seli", "ncti_ncc", "ncti_vc")
_GROUP = "transfer.target"


def lower_is_better(column: str) -> bool:
    """The orientation rule of the module docstring for a column name."""
    name = column.lower()
    if ".score." in name:
        return False
    return any(word in name for word in _LOWER_WORDS)


def _is_score(col: str) -> bool:
    return col.startswith("transfer.") and ".score." in col and col.rsplit(".score.", 1)[1] not in _NCTI_TERMS


def score_columns(df: pd.DataFrame) -> list[str]:
    """Every transferability-score column ``transfer.LAYER.score.NAME`` (NCTI's raw terms left out)."""
    return [c for c in df.columns if _is_score(c)]


def _groups(df: pd.DataFrame) -> list[pd.Index]:
    if _GROUP not in df.columns:
        return [df.index]
    keys = df[_GROUP].astype(object).where(df[_GROUP].notna(), "")
    return [idx for _, idx in df.groupby(keys, sort=True).groups.items()]


def with_ncti(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``transfer.LAYER.score.ncti`` for every layer that has the three raw NCTI terms,
    normalised within each target group."""
    out = df.copy()
    layers = sorted({c[: -len(".score.ncti_seli")] for c in df.columns if c.startswith("transfer.") and c.endswith(".score.ncti_seli")})
    for layer in layers:
        cols = [f"{layer}.score.{t}" for t in _NCTI_TERMS]
        if not all(c in df.columns for c in cols):
            continue
        values = pd.Series(math.nan, index=df.index, dtype="float64")
        for idx in _groups(df):
            seli, ncc, vc = (pd.to_numeric(df.loc[idx, c], errors="coerce").to_numpy(dtype=float) for c in cols)
            combined = ncti_combine(seli, ncc, vc)
            values.loc[idx] = [math.nan if v is None else v for v in combined]
        out[f"{layer}.score.ncti"] = values
    return out


def _resolve(df: pd.DataFrame, measures: str | Sequence[str] | None) -> list[str]:
    if measures is None:
        cols = score_columns(df)
        if not cols:
            raise UsageError("these records hold no transferability scores; evaluate the checkpoints with --target-data SPEC, "
                             "or name the columns to rank with --measures.")
        return cols
    items = [m.strip() for m in measures.split(",")] if isinstance(measures, str) else [str(m).strip() for m in measures]
    out: list[str] = []
    for item in (i for i in items if i):
        matched = [c for c in df.columns if fnmatch.fnmatchcase(c, item)] if any(ch in item for ch in "*?[") else \
            ([item] if item in df.columns else [])
        if not matched:
            raise UsageError(f"--measures {item!r} matches no column of the results table.")
        out += matched
    return list(dict.fromkeys(out))


def _mean(values: list) -> float:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(present)) if present else math.nan


def ranking_table(df: pd.DataFrame, against: str, measures: str | Sequence[str] | None = None,
                  against_lower_is_better: bool | None = None) -> pd.DataFrame:
    """One row per ranked measure (module docstring): ``measure``, ``n``, ``groups``, ``kendall_tau``,
    ``weighted_tau``, ``pearson_r``, ``top1_hit``, ``top3_hit``. ``df.attrs`` of the result holds
    ``against``, ``against_lower_is_better`` and ``groups``."""
    if against not in df.columns:
        import difflib

        close = difflib.get_close_matches(against, list(df.columns), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else "; see the header of `ncbounds export RESULTS --format csv`"
        raise UsageError(f"--against {against!r} is not a column of the results table{hint}.")
    table = with_ncti(df)
    cols = _resolve(table, measures)
    if measures is None:
        cols += [c for c in table.columns if c.endswith(".score.ncti") and c not in cols]
    target_low = lower_is_better(against) if against_lower_is_better is None else bool(against_lower_is_better)
    groups = _groups(table)
    rows = []
    for col in cols:
        if col == against or (measures is None and not table[col].notna().any()):
            continue  # a score no model has (e.g. LEEP away from the penultimate layer) is not listed
        stats: dict[str, list] = {k: [] for k in RANKING_COLUMNS[3:]}
        n = used = 0
        for idx in groups:
            x = pd.to_numeric(table.loc[idx, col], errors="coerce").to_numpy(dtype=float)
            y = pd.to_numeric(table.loc[idx, against], errors="coerce").to_numpy(dtype=float)
            res = ranking_summary(x, y, score_lower_is_better=lower_is_better(col), target_lower_is_better=target_low)
            if res["n"] == 0:
                continue
            used += 1
            n += res["n"]
            for key in stats:
                stats[key].append(res[key])
        rows.append({"measure": col, "n": n, "groups": used, **{k: _mean(v) for k, v in stats.items()}})
    out = pd.DataFrame(rows, columns=list(RANKING_COLUMNS))
    out.attrs.update(against=against, against_lower_is_better=target_low, groups=len(groups))
    return out


def render_ranking(table: pd.DataFrame) -> str:
    """Plain-text table with a header saying what was ranked against what."""
    from ncbounds.report.correlate import render_text

    attrs = dict(table.attrs)
    plain = table.copy()
    plain.attrs = {}
    body = render_text(plain)
    order = "lower is better" if attrs.get("against_lower_is_better") else "higher is better"
    head = (f"ranking against {attrs.get('against')} ({order}) over {attrs.get('groups')} target group(s): Kendall tau-b, "
            "weighted tau (scipy.stats.weightedtau), Pearson r; top-k hit = a best model is among the score's k best "
            "(a rate over targets)")
    return head + "\n" + body
