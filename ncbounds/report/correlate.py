"""Rank correlation of measures and bounds with generalization across a results folder (DESIGN §7).

Two statistics, both on the wide table of :func:`ncbounds.report.results.load_results`:

* :func:`kendall_table` — Kendall's τ-b (``scipy.stats.kendalltau``, ties corrected) of every measure
  column with the target over all checkpoints with both values (complete cases), with its p-value;
* :func:`granulated_kendall` — Jiang et al. 2020 ("Fantastic generalization measures and where to
  find them", ICLR, §4 eq. (4)–(5)): for each hyperparameter i, ψ_i is the mean, over the observed
  combinations of the OTHER hyperparameters, of τ within the group of checkpoints that share them (so
  only hyperparameter i varies); Ψ is the mean of the ψ_i. τ inside a group is, by default, eq. (3) of
  the paper: τ = Σ_{i<j} sign(μ_i − μ_j)·sign(g_i − g_j) / (n(n−1)/2) (τ-a: ties count 0).

:func:`correlate_table` puts both side by side for every measure column.

Conventions:

* measure columns (:func:`measure_columns`): every numeric, non-boolean column of the wide table
  except the hyperparameters (``hp.*``), the target, ``test_error``, ``gap``, confidence ends
  (``*.lo``, ``*.hi``), sample sizes (``n_train``, ``n_test``, ``num_classes``) and the bound
  ``.status``/``.vacuous`` columns — i.e. the metrics ``<split>.<metric>``, layerwise summaries,
  ``bound.<name>`` values, ``train_error`` and ``num_params``;
* missing values: complete cases only (a row missing the measure, the target or, for the granulated
  τ, any of the hyperparameters, is left out and counted);
* τ is undefined (NaN) with fewer than 2 complete cases, and τ-b also when either vector is constant;
* default hyperparameters (:func:`default_hparams`): every ``hp.*`` column with at least 2 distinct
  values, except seed-like ones (the name after ``hp.`` contains ``seed``). Seeds label replicates, not
  a design axis: replicates that share all other hyperparameters are pooled in the same group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ncbounds.errors import UsageError

TARGETS = ("test_error", "gap")
_NOT_MEASURES = {"test_error", "gap", "n_train", "n_test", "num_classes"}


def _check_target(df: pd.DataFrame, target: str) -> None:
    if target not in df.columns:
        raise UsageError(f"target {target!r} is not a column of the results table; use test_error or gap.")


def measure_columns(df: pd.DataFrame, target: str = "test_error") -> list[str]:
    """The numeric measure columns of the wide table that are correlated with ``target`` (see the module docstring)."""
    out = []
    for col in df.columns:
        if col == target or col in _NOT_MEASURES or col.startswith("hp."):
            continue
        if col.endswith((".lo", ".hi", ".status", ".vacuous")):
            continue
        dtype = df[col].dtype
        informative = df[col].notna().sum() >= 2  # an all-missing column (e.g. depth never reached) has no τ
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype) and informative:
            out.append(col)
    return out


def default_hparams(df: pd.DataFrame) -> list[str]:
    """``hp.*`` columns with ≥ 2 distinct non-missing values, except seed-like ones (name contains 'seed')."""
    return [c for c in df.columns if c.startswith("hp.") and "seed" not in c[3:].lower() and df[c].nunique(dropna=True) >= 2]


def _resolve_hparams(df: pd.DataFrame, hparams: Sequence[str] | str | None) -> list[str]:
    if hparams is None:
        return default_hparams(df)
    items = [h.strip() for h in hparams.split(",")] if isinstance(hparams, str) else list(hparams)
    out = []
    for h in (h for h in items if h):
        col = h if h in df.columns else f"hp.{h}"
        if col not in df.columns:
            known = ", ".join(c[3:] for c in df.columns if c.startswith("hp.")) or "none"
            raise UsageError(f"unknown hyperparameter {h!r}; the results have: {known}.")
        out.append(col)
    return list(dict.fromkeys(out))


def _complete(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def kendall_tau(x, y) -> tuple[float, float, int]:
    """(τ-b, two-sided p-value, n) of the complete cases of ``x`` and ``y`` via ``scipy.stats.kendalltau``
    (variant 'b', method 'auto'); NaN τ and p when n < 2 or either vector is constant."""
    x, y = _complete(x, y)
    n = len(x)
    if n < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan, math.nan, n
    res = stats.kendalltau(x, y, variant="b")
    return float(res.statistic), float(res.pvalue), n


def tau_a(x, y) -> float:
    """Jiang et al. 2020 eq. (3): Σ_{i<j} sign(x_i − x_j)·sign(y_i − y_j) / (n(n−1)/2); NaN when n < 2."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 2:
        return math.nan
    iu = np.triu_indices(n, k=1)
    s = np.sign(x[:, None] - x[None, :])[iu] * np.sign(y[:, None] - y[None, :])[iu]
    return float(s.sum() / (n * (n - 1) / 2))


def kendall_table(df: pd.DataFrame, target: str = "test_error", columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Kendall τ-b of every measure column (default :func:`measure_columns`) with ``target``.

    Columns: ``measure``, ``status`` (the bound's status for ``bound.<name>``, else ``measure``), ``tau``
    (τ-b, scipy), ``p_value`` (two-sided), ``n_pairs`` (number of (measure, target) pairs used = complete
    cases). Rows in the column order of the wide table.
    """
    _check_target(df, target)
    cols = list(columns) if columns is not None else measure_columns(df, target)
    rows = []
    for col in cols:
        if col not in df.columns:
            raise UsageError(f"unknown measure column {col!r}.")
        tau, p, n = kendall_tau(df[col], df[target])
        rows.append({"measure": col, "status": _status(df, col), "tau": tau, "p_value": p, "n_pairs": n})
    return pd.DataFrame(rows, columns=["measure", "status", "tau", "p_value", "n_pairs"])


def _status(df: pd.DataFrame, col: str) -> str:
    scol = f"{col}.status"
    if col.startswith("bound.") and scol in df.columns:
        values = df[scol].dropna()
        if len(values):
            return str(values.mode().iloc[0])
    return "measure"


def granulated_kendall(
    df: pd.DataFrame,
    measure: str,
    target: str = "test_error",
    hparams: Sequence[str] | str | None = None,
    variant: str = "a",
) -> dict:
    """Granulated Kendall coefficient of ``measure`` with ``target`` (Jiang et al. 2020, eq. (4)–(5)).

    For each hyperparameter column i of ``hparams`` (names with or without ``hp.``; default
    :func:`default_hparams`), the complete-case rows are grouped by the values of all OTHER
    hyperparameters; within each group only hyperparameter i varies, and
    ψ_i = mean over the groups of τ(measure, target in the group). Ψ = mean of the defined ψ_i.
    ``variant`` 'a' (default) is the paper's eq. (3) τ (:func:`tau_a`: ties count 0, never undefined for
    n ≥ 2); 'b' uses scipy's τ-b (a group where it is undefined is counted in ``groups_undefined``).

    Groups with fewer than 2 rows or fewer than 2 distinct values of hyperparameter i are skipped and
    counted (``groups_skipped``). The paper averages over the full grid Θ_{−i}; here the average is over
    the combinations present in the data (they coincide on a complete grid).

    Returns {'measure', 'target', 'variant', 'hparams': [...], 'psi': {hp: ψ_i}, 'Psi': Ψ,
    'groups': {hp: groups used}, 'groups_skipped': {hp: n}, 'groups_undefined': {hp: n},
    'pairs': {hp: Σ n_g(n_g−1)/2 over the groups used}, 'n': complete rows, 'n_dropped': rows left out}.
    """
    if variant not in ("a", "b"):
        raise UsageError(f"Kendall variant must be 'a' or 'b', not {variant!r}.")
    _check_target(df, target)
    if measure not in df.columns:
        raise UsageError(f"unknown measure column {measure!r}.")
    hps = _resolve_hparams(df, hparams)
    sub = df[[measure, target, *hps]].copy()
    sub[measure] = pd.to_numeric(sub[measure], errors="coerce")
    sub[target] = pd.to_numeric(sub[target], errors="coerce")
    complete = sub.dropna()
    out: dict = {
        "measure": measure, "target": target, "variant": variant, "hparams": hps,
        "psi": {}, "groups": {}, "groups_skipped": {}, "groups_undefined": {}, "pairs": {},
        "n": int(len(complete)), "n_dropped": int(len(sub) - len(complete)),
    }
    for col in hps:
        others = [h for h in hps if h != col]
        groups = [complete] if not others else [g for _, g in complete.groupby(others, sort=True)]
        taus, skipped, undefined, pairs = [], 0, 0, 0
        for g in groups:
            n = len(g)
            if n < 2 or g[col].nunique() < 2:
                skipped += 1
                continue
            t = tau_a(g[measure], g[target]) if variant == "a" else kendall_tau(g[measure], g[target])[0]
            if math.isnan(t):
                undefined += 1
                continue
            taus.append(t)
            pairs += n * (n - 1) // 2
        out["psi"][col] = float(np.mean(taus)) if taus else math.nan
        out["groups"][col] = len(taus)
        out["groups_skipped"][col] = skipped
        out["groups_undefined"][col] = undefined
        out["pairs"][col] = pairs
    defined = [v for v in out["psi"].values() if not math.isnan(v)]
    out["Psi"] = float(np.mean(defined)) if defined else math.nan
    return out


def correlate_table(
    df: pd.DataFrame,
    target: str = "test_error",
    hparams: Sequence[str] | str | None = None,
    columns: Sequence[str] | None = None,
    variant: str = "a",
) -> pd.DataFrame:
    """Kendall τ-b and the granulated coefficient for every measure column, one row per measure.

    Columns: ``measure``, ``status``, ``tau``, ``p_value``, ``n_pairs`` (from :func:`kendall_table`),
    then ``psi.<hp>`` (hp without the ``hp.`` prefix) for each hyperparameter, ``Psi``, ``groups`` (used,
    summed over the hyperparameters) and ``groups_skipped``. ``hparams`` default: :func:`default_hparams`
    (``hp.*`` with ≥ 2 distinct values, seed-like columns excluded). ``df.attrs`` of the result holds
    ``target``, ``hparams`` and ``variant``.
    """
    table = kendall_table(df, target, columns)
    hps = _resolve_hparams(df, hparams)
    extra = []
    for measure in table["measure"]:
        g = granulated_kendall(df, measure, target, hps, variant)
        row = {f"psi.{h[3:]}": g["psi"][h] for h in hps}
        row.update(Psi=g["Psi"], groups=sum(g["groups"].values()), groups_skipped=sum(g["groups_skipped"].values()))
        extra.append(row)
    cols = [*(f"psi.{h[3:]}" for h in hps), "Psi", "groups", "groups_skipped"]
    result = pd.concat([table, pd.DataFrame(extra, columns=cols, index=table.index)], axis=1)
    if len(result):
        result["groups"] = result["groups"].astype("int64")
        result["groups_skipped"] = result["groups_skipped"].astype("int64")
    result.attrs.update(target=target, hparams=hps, variant=variant)
    return result


def render_text(table: pd.DataFrame) -> str:
    """Aligned plain-text rendering of a correlation table (numbers to 4 significant digits, NaN → '—')."""

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "—" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    header = list(table.columns)
    rows = [[cell(v) for v in row] for row in table.itertuples(index=False)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(r) -> str:
        return "  ".join((c.ljust(w) if i < 2 else c.rjust(w)) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    lines = [line(r) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    attrs = table.attrs
    if attrs.get("target"):
        hp = ", ".join(h[3:] for h in attrs.get("hparams", [])) or "none"
        lines.insert(0, f"Kendall tau-b with {attrs['target']}; granulated (Jiang et al. 2020, tau-{attrs.get('variant', 'a')}) over: {hp}")
    return "\n".join(lines)


__all__ = [
    "TARGETS", "correlate_table", "default_hparams", "granulated_kendall", "kendall_table", "kendall_tau", "measure_columns",
    "render_text", "tau_a",
]
