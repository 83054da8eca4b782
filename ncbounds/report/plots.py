"""Plots of a results folder: bounds vs test error, metrics vs epoch, log D_l vs layer.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
change, works headless) and written as PNG or PDF by the file suffix. matplotlib is an optional extra:
without it every function raises a one-line :class:`NCBoundsError` naming ``pip install 'ncbounds[plots]'``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from ncbounds.errors import DataError, NCBoundsError, UsageError
from ncbounds.io.output import check_output_path, write_atomic
from ncbounds.report.export import hint_command
from ncbounds.report.results import checkpoint_label, sorted_records

SUFFIXES = (".png", ".pdf")
#: marker per bound status (certificates, plug-in, up-to-constants, predictors)
STATUS_MARKERS = {"certificate": "o", "plug-in": "s", "up-to-constants": "D", "predictor": "^"}
#: colour family per status; bounds of one status get shades of it, in the legend's order
STATUS_COLORMAPS = {"certificate": "Blues", "plug-in": "Oranges", "up-to-constants": "Greens", "predictor": "Purples"}
_STATUS_ORDER = tuple(STATUS_MARKERS)
#: further markers that tell apart the bounds of one status
_MARKER_CYCLE = ("o", "s", "D", "^", "v", "<", ">", "p", "h", "P", "X", "*")
MAX_RUN_LEGEND = 20
STATUS_LABELS = {"certificate": "certificate", "plug-in": "plug-in", "up-to-constants": "up to constants", "predictor": "predictor"}


def _figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise NCBoundsError(f"plots need matplotlib; install it with {hint_command('matplotlib')}.") from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def check_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it ends in .png or .pdf (case-insensitive) and may be written
    (:func:`ncbounds.io.output.check_output_path`), else a UsageError."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise UsageError(f"plot file {p.name!r} must end in .png or .pdf (the suffix chooses the format).")
    check_output_path(p)
    return p


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lower()[1:], dpi=150, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return path


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    if n > 20:
        return [cmap(i / max(n - 1, 1)) for i in range(n)]
    return [cmap(i) for i in range(n)]


def _bound_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("bound.") and not c.endswith((".status", ".vacuous"))
            and pd.api.types.is_float_dtype(df[c])]


def _bound_status(df: pd.DataFrame, col: str) -> str | None:
    scol = f"{col}.status"
    if scol not in df.columns:
        return None
    values = df[scol].dropna()
    values = values[values != "not-applicable"]
    return str(values.mode().iloc[0]) if len(values) else None


def bound_styles(df: pd.DataFrame, cols: list[str]) -> list[tuple[str, str | None, tuple, str]]:
    """(column, status, colour, marker) of each bound column, grouped by status (certificates, plug-in,
    up-to-constants, predictors, then others): the status picks the colour family and the first marker,
    the bound's rank within its status the shade and, after the first, the marker."""
    from matplotlib import colormaps

    status = {c: _bound_status(df, c) for c in cols}
    rank = {s: i for i, s in enumerate(_STATUS_ORDER)}
    ordered = sorted(cols, key=lambda c: (rank.get(status[c], len(rank)), cols.index(c)))
    out = []
    for s in dict.fromkeys(status[c] for c in ordered):
        members = [c for c in ordered if status[c] == s]
        cmap = colormaps[STATUS_COLORMAPS.get(s, "Greys")]
        first = STATUS_MARKERS.get(s, "o")
        markers = [first] + [m for m in _MARKER_CYCLE if m != first]
        for j, c in enumerate(members):
            shade = 0.85 - 0.5 * j / max(len(members) - 1, 1) if len(members) > 1 else 0.75
            out.append((c, s, cmap(shade), markers[j % len(markers)]))
    return out


def plot_bounds(df: pd.DataFrame, path: str | os.PathLike, target: str = "test_error", predictors: bool = False) -> Path:
    """Every bound's value against the measured test error, one point per checkpoint, log–log axes.

    Colour family = status (blue certificates, orange plug-in, green up-to-constants, hollow purple
    predictors), shade and marker = the bound within its status; the legend names both. The y = x line
    is drawn (a valid bound lies above it) and the vacuous region y ≥ 1 is shaded; horizontal bars are
    the 95 % Clopper–Pearson interval of the test error. Points with a non-positive value (not
    drawable on log axes) are left out and counted in the title. Predictors (no error scale) are
    drawn only with ``predictors=True``.
    Returns the written path (PNG or PDF by suffix).
    """
    p = check_path(path)
    if target not in df.columns:
        raise DataError(f"the results have no {target!r} column (records without measured errors); nothing to plot bounds against.")
    cols = [c for c in _bound_columns(df) if _bound_status(df, c) is not None and (predictors or _bound_status(df, c) != "predictor")]
    if not cols:
        raise DataError("the results hold no bound values; evaluate with --bounds default (or all) before plotting bounds.")
    x_all = df[target].to_numpy(dtype=np.float64)
    fig = _figure((8.0, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    drawn, dropped, values = 0, 0, [v for v in x_all if np.isfinite(v) and v > 0]
    lo_ci = df.get(f"{target}.lo")
    hi_ci = df.get(f"{target}.hi")
    for col, status, color, marker in bound_styles(df, cols):
        y = df[col].to_numpy(dtype=np.float64)
        ok = np.isfinite(x_all) & np.isfinite(y)
        good = ok & (x_all > 0) & (y > 0)
        dropped += int((ok & ~good).sum())
        if not good.any():
            continue
        xerr = None
        if lo_ci is not None and hi_ci is not None:
            lo = np.clip(lo_ci.to_numpy(dtype=np.float64)[good], 1e-12, None)
            hi = hi_ci.to_numpy(dtype=np.float64)[good]
            xv = x_all[good]
            xerr = np.vstack([np.nan_to_num(xv - np.minimum(lo, xv)), np.nan_to_num(np.maximum(hi, xv) - xv)])
        label = f"{col[6:]} ({STATUS_LABELS.get(status, status)})"
        ax.errorbar(x_all[good], y[good], xerr=xerr, fmt=marker, color=color, ms=6, mfc="none" if status == "predictor" else color,
                    elinewidth=0.6, capsize=0, alpha=0.85, label=label)
        values += list(y[good])
        drawn += int(good.sum())
    if not drawn:
        raise DataError("no bound value and test error are both positive; nothing can be drawn on log–log axes.")
    vmin, vmax = min(values), max(values)
    lo, hi = vmin / 2.0, max(vmax * 2.0, 2.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhspan(1.0, hi, color="0.5", alpha=0.15, lw=0, label="vacuous region (bound ≥ 1)")
    ax.plot([lo, hi], [lo, hi], color="k", lw=1.0, ls="--", label="y = x (bound = test error)")
    ax.set_xlim(min(x for x in x_all if np.isfinite(x) and x > 0) / 2.0, max(x for x in x_all if np.isfinite(x) and x > 0) * 2.0)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured test error" if target == "test_error" else target)
    ax.set_ylabel("bound / predictor value" if predictors else "bound value")
    title = f"bounds vs measured test error ({int(np.isfinite(x_all).sum())} checkpoints)"
    if dropped:
        title += f"; {dropped} non-positive value(s) not drawn"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short log ranges
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, p)


def _x_column(df: pd.DataFrame, x: str) -> str:
    for cand in (x, f"hp.{x}"):
        if cand in df.columns and df[cand].notna().any():
            return cand
    for alt in ("hp.epoch", "hp.step"):
        if alt in df.columns and df[alt].notna().any():
            return alt
    numeric = [c for c in df.columns if c.startswith(("hp.", "meta.")) and pd.api.types.is_numeric_dtype(df[c])]
    have = f"; numeric hyperparameters here: {', '.join(numeric)}" if numeric else ""
    raise UsageError(f"plot --kind epochs needs an epoch (or step) hyperparameter, and the results have no {x!r} column: add "
                     f"\"epoch\" to the sidecars (or their 'hparams') or pass --x with another column{have}.")


def _runs(df: pd.DataFrame, x: str) -> list[tuple[str, pd.DataFrame]]:
    """Split the table into training runs: rows sharing every other varying hyperparameter."""
    from ncbounds.report.correlate import _same_grouping

    keys: list[str] = []
    candidates = [c for c in df.columns if c.startswith("hp.") and c != x and df[c].nunique(dropna=False) > 1]
    candidates.sort(key=lambda c: c.startswith("hp.arch."))  # a sidecar's name before the spec's (stable)
    for c in candidates:
        if not any(_same_grouping(df[c], df[k]) for k in keys):  # hp.arch.width beside hp.width: one axis
            keys.append(c)
    if not keys:
        return [("", df.sort_values(x, kind="stable"))]
    out = []
    for key, g in df.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{k[3:]}={v}" for k, v in zip(keys, key, strict=True))
        out.append((label, g.sort_values(x, kind="stable")))
    return out


def plot_epochs(df: pd.DataFrame, path: str | os.PathLike, x: str = "hp.epoch") -> Path:
    """Errors, NC1, CDNV and bounds against the epoch (or ``hp.step``) of a training run; four panels.

    ``x``: the column on the horizontal axis (default ``hp.epoch``; falls back to ``hp.step``). Several
    runs (rows that differ in another hyperparameter) get one colour each in the first three panels;
    test quantities are solid, train quantities dashed, the test error's 95 % interval is shaded. The
    bounds panel draws every ``bound.<name>`` (colour = bound, one line per run) with the measured test
    error in black. NC1 and CDNV use a log y axis when all values are positive; the bounds panel always
    does (values ≤ 0, which only predictors take, are not drawn and the panel title says so).
    """
    p = check_path(path)
    xcol = _x_column(df, x)
    data = df[df[xcol].notna()]
    runs = _runs(data, xcol)
    xlabel = xcol[3:] if xcol.startswith("hp.") else xcol
    fig = _figure((11.0, 8.0))
    axes = [fig.add_subplot(2, 2, i) for i in range(1, 5)]
    run_colors = _colors(len(runs)) if len(runs) > 1 else ["C0"]

    integral = bool(np.all(np.mod(data[xcol].to_numpy(dtype=np.float64), 1) == 0))
    if integral:
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    def panel(ax, title, quantities, log):
        drawn, positive = [], True
        for color, (_, g) in zip(run_colors, runs, strict=True):
            xs = g[xcol].to_numpy(dtype=np.float64)
            for col, style, name in quantities:
                if col not in g.columns or not g[col].notna().any():
                    continue
                ys = g[col].to_numpy(dtype=np.float64)
                positive &= bool(np.all(ys[np.isfinite(ys)] > 0))
                ax.plot(xs, ys, ls=style, marker="o", ms=3, color=color)
                if (style, name) not in drawn:
                    drawn.append((style, name))
                if col == "test_error" and "test_error.lo" in g.columns:
                    ax.fill_between(xs, g["test_error.lo"].to_numpy(dtype=np.float64), g["test_error.hi"].to_numpy(dtype=np.float64),
                                    color=color, alpha=0.15, lw=0)
        if drawn:
            if log and positive:
                ax.set_yscale("log")
            from matplotlib.lines import Line2D

            ax.legend(handles=[Line2D([], [], color="0.3", ls=st, label=nm) for st, nm in drawn], fontsize=7, frameon=False)
        else:
            ax.text(0.5, 0.5, "not in the results", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.25)

    errors = [("test_error", "-", "test"), ("train_error", "--", "train"), ("gap", ":", "gap")]
    panel(axes[0], "0-1 error (band: test 95% interval)", errors, log=False)
    panel(axes[1], "NC1", [("test.nc1", "-", "test"), ("train.nc1", "--", "train")], log=True)
    panel(axes[2], "CDNV", [("test.cdnv", "-", "test"), ("train.cdnv", "--", "train")], log=True)

    ax = axes[3]
    cols = [c for c in _bound_columns(data) if data[c].notna().any()]
    positive = True
    for col, status, color, marker in bound_styles(data, cols):
        for i, (_, g) in enumerate(runs):
            ys = g[col].to_numpy(dtype=np.float64)
            positive &= bool(np.all(ys[np.isfinite(ys)] > 0))
            ax.plot(g[xcol].to_numpy(dtype=np.float64), ys, marker=marker, ms=3, mfc="none" if status == "predictor" else color,
                    color=color, lw=1.0, label=f"{col[6:]} ({STATUS_LABELS.get(status, status or '?')})" if i == 0 else None)
    if cols:
        for i, (_, g) in enumerate(runs):
            ax.plot(g[xcol].to_numpy(dtype=np.float64), g["test_error"].to_numpy(dtype=np.float64), color="k", lw=1.5,
                    label="test error" if i == 0 else None)
        ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax.set_yscale("log", nonpositive="mask")  # bounds span decades; non-positive predictor values are not drawn
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no bounds in the results", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_title("bounds and predictors (dotted: 1)" + ("" if positive else "; values ≤ 0 not drawn"), fontsize=10)
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.25)
    title = f"metrics and bounds vs {xlabel} ({len(data)} checkpoints"
    title += f", {len(runs)} runs)" if len(runs) > 1 else ")"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if len(runs) > 1:  # one colour per run in the first three panels; legend beside the figure
        from matplotlib.lines import Line2D

        shown = runs[:MAX_RUN_LEGEND]
        handles = [Line2D([], [], color=c, marker="o", ms=3, label=label) for c, (label, _) in zip(run_colors, shown, strict=False)]
        if len(runs) > len(shown):
            handles.append(Line2D([], [], color="none", label=f"… {len(runs) - len(shown)} more runs"))
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False, title="runs", title_fontsize=8)
    return _save(fig, p)


def layer_curve(record: dict, split: str = "train") -> tuple[list[str], np.ndarray, np.ndarray, float | None]:
    """(layer names, layer indices l, ln D_l, ρ) of one record: separation fuzziness per layer in
    ``index`` order and the He–Su ρ of ``record['layerwise'][split]`` (None when not fitted)."""
    layers = sorted((record.get("layers") or {}).items(), key=lambda kv: kv[1].get("index", 0))
    names, idx, logd = [], [], []
    for name, layer in layers:
        d = ((layer.get("metrics") or {}).get(split) or {}).get("separation_fuzziness")
        if d is not None and d > 0:
            names.append(name)
            idx.append(float(layer.get("index", len(idx) + 1)))
            logd.append(math.log(d))
    rho = ((record.get("layerwise") or {}).get(split) or {}).get("layerwise_rho")
    return names, np.array(idx), np.array(logd), rho


def plot_layers(records: Iterable[dict], path: str | os.PathLike, split: str = "train") -> Path:
    """ln D_l (separation fuzziness, natural log) against the layer index l for one or several records.

    Layers are taken from ``record['layers']`` in ``index`` order; the dashed line is He & Su's law
    ln D_l = a + l·ln ρ with ρ from ``record['layerwise'][split]`` and a the least-squares intercept
    (mean of ln D_l − l·ln ρ, as in :func:`ncbounds.metrics.layerwise.he_su_fit`). Records with fewer
    than 2 layers are skipped; a DataError is raised when none has 2 (evaluate with ``--layers all``).
    """
    p = check_path(path)
    curves = []
    for rec in sorted_records(records):
        names, idx, logd, rho = layer_curve(rec, split)
        if len(idx) >= 2:
            label = (rec.get("batch") or {}).get("relative_path") or os.path.basename(checkpoint_label(rec) or "?")
            curves.append((label, names, idx, logd, rho))
    if not curves:
        raise DataError("no record has two or more measured layers; evaluate with --layers all to plot log D_l against depth.")
    fig = _figure((7.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    for color, (label, _names, idx, logd, rho) in zip(_colors(len(curves)), curves, strict=True):
        text = label if rho is None else f"{label} (ρ = {rho:.3g})"
        ax.plot(idx, logd, marker="o", color=color, lw=1.2, label=text)
        if rho is not None and rho > 0:
            slope = math.log(rho)
            a = float(np.mean(logd - slope * idx))
            grid = np.linspace(idx.min(), idx.max(), 50)
            ax.plot(grid, a + slope * grid, ls="--", color=color, lw=1.0, alpha=0.8)
    all_idx = sorted({int(i) for c in curves for i in c[2]})
    ax.set_xticks(all_idx)
    if len(curves) == 1:
        ax.set_xticklabels([f"{int(i)}\n{n}" for i, n in zip(curves[0][2], curves[0][1], strict=True)], fontsize=7)
    ax.set_xlabel("layer index l")
    ax.set_ylabel(f"ln D_l (separation fuzziness, {split})")
    ax.set_title("He–Su law of data separation: dashed = fit ln D_l = a + l ln ρ", fontsize=10)
    ax.grid(True, alpha=0.25)
    if len(curves) <= 15:
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, p)


__all__ = ["bound_styles", "check_path", "layer_curve", "plot_bounds", "plot_epochs", "plot_layers"]
