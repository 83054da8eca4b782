"""``ncbounds plot --kind classes``: per-class quantities against the training class count, and the
classifier's cosine matrix with the minority block marked.

One record (a checkpoint) per figure: the last one in path order when a results folder holds several
(e.g. the final epoch of a run), or the one whose path contains ``checkpoint``. Panels:

* per-class error of the network on ``split`` with its 95 % Clopper–Pearson interval, variability
  E_c‖h − μ_c‖², class-mean norm ‖μ_c − μ_G‖ and classifier norm ‖w_c‖ (penultimate layer), each against
  the **training** count n_c on a log axis, minority classes in orange (Fang et al. 2021: minority
  classifiers shrink and collapse together);
* the cosines cos(w_i, w_j) of the classifier rows as a heat map, classes ordered by decreasing
  training count, the minority block outlined; the simplex-ETF value −1/(K−1) is in the title.

Multi-label records: per-label error against the number of training samples carrying the label, and
the heat map. Drawn with the object API of matplotlib (optional extra), as :mod:`ncbounds.report.plots`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ncbounds.errors import DataError
from ncbounds.report.plots import _figure, _save, check_path
from ncbounds.report.results import checkpoint_label, sorted_records

__all__ = ["choose_record", "plot_classes"]

_MAJORITY, _MINORITY = "tab:blue", "tab:orange"


def choose_record(records: Iterable[dict], checkpoint: str | None = None) -> dict:
    """The record to draw: the last in path order, or the last whose checkpoint path contains ``checkpoint``."""
    recs = [r for r in sorted_records(records) if r.get("classes")]
    if checkpoint is not None:
        recs = [r for r in recs if checkpoint in (checkpoint_label(r) or "")]
    if not recs:
        raise DataError("no record holds per-class results (records written by ncbounds 0.2 with a classifier); "
                        + ("none matches --checkpoint." if checkpoint else "re-evaluate the checkpoints."))
    return recs[-1]


def _values(rows: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


def plot_classes(records: Iterable[dict], path: str | os.PathLike, split: str = "test", checkpoint: str | None = None) -> Path:
    """Draw the per-class figure of one record (see the module docstring); returns the written path."""
    p = check_path(path)
    rec = choose_record(records, checkpoint)
    classes = rec["classes"]
    counts = np.asarray((classes.get("counts") or {}).get("train") or [], dtype=np.float64)
    minority = set((classes.get("minority") or {}).get("classes") or [])
    pen = (rec.get("layers") or {}).get("penultimate") or {}
    multilabel = classes.get("task") == "multilabel"
    rows = ((pen.get("per_label") if multilabel else pen.get("per_class")) or {}).get(split)
    if not rows:
        raise DataError(f"the record of {checkpoint_label(rec)} has no per-class rows for the {split} split.")
    panels = [("error", f"{'per-label' if multilabel else 'per-class'} {split} error (95% CP)")]
    if not multilabel:
        panels += [("variability", "variability E‖h − μ_c‖²"), ("mean_norm", "‖μ_c − μ_G‖"), ("classifier_norm", "‖w_c‖")]
    cosines = classes.get("classifier_cosines")
    fig = _figure((3.2 * len(panels) + (4.2 if cosines else 0), 3.6))
    ncols = len(panels) + (1 if cosines else 0)
    is_min = np.array([i in minority for i in range(len(rows))])
    x = counts[: len(rows)] if len(counts) >= len(rows) else np.arange(1, len(rows) + 1, dtype=np.float64)
    for k, (key, title) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, ncols, k)
        y = _values(rows, key)
        if key == "error":
            ci = np.array([r.get("ci95") or [np.nan, np.nan] for r in rows], dtype=np.float64)
            err = np.vstack([np.nan_to_num(y - ci[:, 0]), np.nan_to_num(ci[:, 1] - y)])
            for mask, color, label in ((~is_min, _MAJORITY, "majority"), (is_min, _MINORITY, "minority")):
                if mask.any():
                    ax.errorbar(x[mask], y[mask], yerr=err[:, mask], fmt="o", color=color, ms=5, capsize=2, elinewidth=0.8, label=label)
            if is_min.any():
                ax.legend(fontsize=7, frameon=False)
        else:
            ax.scatter(x[~is_min], y[~is_min], color=_MAJORITY, s=22)
            ax.scatter(x[is_min], y[is_min], color=_MINORITY, s=22)
        for i in range(len(rows)):
            if np.isfinite(y[i]):
                ax.annotate(str(i), (x[i], y[i]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        if np.all(x > 0):
            ax.set_xscale("log")
        ax.set_xlabel("training samples per " + ("label" if multilabel else "class"))
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
    if cosines:
        _heat_map(fig.add_subplot(1, ncols, ncols), np.array([[np.nan if v is None else v for v in row] for row in cosines]),
                  counts, minority)
    label = (rec.get("batch") or {}).get("relative_path") or os.path.basename(checkpoint_label(rec) or "?")
    fig.suptitle(f"{label}: classes ({split} split; x = training count)", fontsize=10)
    fig.tight_layout()
    return _save(fig, p)


def _heat_map(ax, cos: np.ndarray, counts: np.ndarray, minority: set) -> None:
    K = len(cos)
    order = sorted(range(K), key=lambda c: (-(counts[c] if c < len(counts) else 0), c))
    image = ax.imshow(cos[np.ix_(order, order)], cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xticklabels([str(c) for c in order], fontsize=6)
    ax.set_yticklabels([str(c) for c in order], fontsize=6)
    positions = [i for i, c in enumerate(order) if c in minority]
    if positions:
        from matplotlib.patches import Rectangle

        lo, hi = min(positions), max(positions)
        ax.add_patch(Rectangle((lo - 0.5, lo - 0.5), hi - lo + 1, hi - lo + 1, fill=False, edgecolor="k", lw=1.5, label="minority block"))
    ax.set_title(f"cos(w_i, w_j), by decreasing n_c; ETF {-1.0 / (K - 1):.3f}" if K > 1 else "cos(w_i, w_j)", fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
