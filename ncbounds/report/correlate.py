"""Rank correlation of measures and bounds with generalization across a results folder.

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
* default hyperparameters (:func:`choose_hparams`): every ``hp.*`` column (declared in the sidecars,
  see :mod:`ncbounds.io.sidecar`, and the architecture's ``hp.arch.*`` arguments) with at least 2
  distinct values, except seed-like ones (the name after ``hp.`` contains ``seed``) and columns that
  group the checkpoints exactly like an earlier column (``hp.arch.width`` beside ``hp.width``: the same
  axis twice would leave no group in which only one of them varies). Seeds label replicates, not a
  design axis: replicates that share all other hyperparameters are pooled in the same group. Each
  column left out is reported with its reason; ``meta.*`` columns (sidecar metadata) are never
  hyperparameters unless named with ``hparams``.
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
        if col == target or col in _NOT_MEASURES or col.startswith(("hp.", "meta.")):
            continue
        if col.endswith((".lo", ".hi", ".status", ".vacuous")):
            continue
        dtype = df[col].dtype
        informative = df[col].notna().sum() >= 2  # an all-missing column (e.g. depth never reached) has no τ
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype) and informative:
            out.append(col)
    return out


def _same_grouping(a: pd.Series, b: pd.Series) -> bool:
    """True when ``a`` and ``b`` split the rows (where both are present) into the same groups."""
    both = a.notna() & b.notna()
    if not both.any():
        return False
    x, y = a[both].astype(str), b[both].astype(str)
    return bool(pd.crosstab(x, y).astype(bool).sum(axis=1).max() == 1 and pd.crosstab(y, x).astype(bool).sum(axis=1).max() == 1)


def choose_hparams(df: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """(hyperparameter columns used by default, {column left out: why}); rule in the module docstring."""
    used: list[str] = []
    skipped: dict[str, str] = {}
    declared = [c for c in df.columns if c.startswith("hp.") and not c.startswith("hp.arch.")]
    for col in [*declared, *(c for c in df.columns if c.startswith("hp.arch."))]:  # a sidecar's name wins over the spec's
        if "seed" in col[3:].lower():
            skipped[col] = "a seed: checkpoints that differ only in it are replicates"
        elif df[col].nunique(dropna=True) < 2:
            skipped[col] = "one value in all checkpoints"
        elif any(_same_grouping(df[col], df[u]) for u in used):
            twin = next(u for u in used if _same_grouping(df[col], df[u]))
            skipped[col] = f"groups the checkpoints exactly like {twin}"
        else:
            used.append(col)
    return used, skipped


def default_hparams(df: pd.DataFrame) -> list[str]:
    """The hyperparameter columns of :func:`choose_hparams` (``hp.*``, ≥ 2 values, no seeds, no duplicated axes)."""
    return choose_hparams(df)[0]


def _resolve_hparams(df: pd.DataFrame, hparams: Sequence[str] | str | None) -> list[str]:
    if hparams is None:
        return default_hparams(df)
    items = [h.strip() for h in hparams.split(",")] if isinstance(hparams, str) else list(hparams)
    out = []
    for h in (h for h in items if h):
        col = next((c for c in (h, f"hp.{h}", f"hp.arch.{h}", f"meta.{h}") if c in df.columns), None)
        if col is None:
            known = ", ".join(c.split(".", 1)[1] for c in df.columns if c.startswith(("hp.", "meta."))) or "none"
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
    skipped = choose_hparams(df)[1] if hparams is None else {}
    extra = []
    for measure in table["measure"]:
        g = granulated_kendall(df, measure, target, hps, variant)
        row = {f"psi.{_short(h)}": g["psi"][h] for h in hps}
        row.update(Psi=g["Psi"], groups=sum(g["groups"].values()), groups_skipped=sum(g["groups_skipped"].values()))
        extra.append(row)
    cols = [*(f"psi.{_short(h)}" for h in hps), "Psi", "groups", "groups_skipped"]
    result = pd.concat([table, pd.DataFrame(extra, columns=cols, index=table.index)], axis=1)
    if len(result):
        result["groups"] = result["groups"].astype("int64")
        result["groups_skipped"] = result["groups_skipped"].astype("int64")
    result.attrs.update(target=target, hparams=hps, variant=variant, hparams_skipped=skipped,
                        hparams_source="--hparams" if hparams is not None else "default", groups=group_report(df, hps, target))
    return result


def _short(col: str) -> str:
    """``hp.lr`` → ``lr``, ``hp.arch.width`` → ``arch.width``; other columns as they are."""
    return col[3:] if col.startswith("hp.") else col


def group_report(df: pd.DataFrame, hparams: Sequence[str], target: str = "test_error") -> dict[str, dict[str, int]]:
    """For each hyperparameter, how the checkpoints with the target and every hyperparameter present fall
    into groups (the other hyperparameters fixed): ``used`` (≥ 2 checkpoints, ≥ 2 values of it),
    ``too_small`` (one checkpoint), ``one_value`` (≥ 2 checkpoints, all with the same value of it) and
    ``dropped`` (rows missing the target or a hyperparameter)."""
    cols = [target, *hparams] if target in df.columns else list(hparams)
    complete = df[cols].dropna()
    out = {}
    for col in hparams:
        others = [h for h in hparams if h != col]
        groups = [complete] if not others else [g for _, g in complete.groupby(others, sort=True)]
        used = sum(len(g) >= 2 and g[col].nunique() >= 2 for g in groups)
        small = sum(len(g) < 2 for g in groups)
        out[col] = {"used": used, "too_small": small, "one_value": len(groups) - used - small,
                    "dropped": int(len(df) - len(complete))}
    return out


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
        hp = ", ".join(_short(h) for h in attrs.get("hparams", [])) or "none"
        head = [f"Kendall tau-b with {attrs['target']}; granulated (Jiang et al. 2020, tau-{attrs.get('variant', 'a')}) over: {hp}"
                + (" (from --hparams)" if attrs.get("hparams_source") == "--hparams" else "")]
        for col, why in (attrs.get("hparams_skipped") or {}).items():
            head.append(f"  not a hyperparameter axis: {_short(col)} ({why})")
        for col, g in (attrs.get("groups") or {}).items():
            why = []
            if g["too_small"]:
                why.append(f"{g['too_small']} with a single checkpoint")
            if g["one_value"]:
                why.append(f"{g['one_value']} where {_short(col)} takes one value")
            skipped = f"; skipped {', '.join(why)}" if why else ""
            dropped = f"; {g['dropped']} checkpoint(s) without a value left out" if g["dropped"] else ""
            head.append(f"  psi.{_short(col)}: {g['used']} group(s) where only {_short(col)} varies{skipped}{dropped}")
        if not attrs.get("hparams"):
            head.append("  no hyperparameter varies, so psi/Psi are undefined (declare them with an 'hparams' object in the "
                        "sidecars or pass --hparams)")
        lines[:0] = head
    return "\n".join(lines)


__all__ = [
    "TARGETS", "choose_hparams", "correlate_table", "default_hparams", "group_report", "granulated_kendall", "kendall_table",
    "kendall_tau", "measure_columns",
    "render_text", "tau_a",
]
