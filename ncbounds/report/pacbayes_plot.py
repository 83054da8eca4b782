"""``ncbounds plot --kind pacbayes``: the optimisation of a PAC-Bayes posterior, from the record.

The optimised PAC-Bayes bounds (``pacbayes_opt``, ``pacbayes_opt_deterministic``) keep the
optimisation's history in their details (``history``: per logged step ``step``, ``objective``,
``kl``, ``surrogate``, ``error``, ``prior_var``, ``seconds``). One record per figure (the last in path
order, or the one whose checkpoint path contains ``checkpoint``); panels against the Adam step:

* the training objective (fquad, fclassic, flamb, fmin or Dziugaite–Roy, on the bounded surrogate,
  with the profiled prior variance) and, dashed, the final certificate computed from fresh draws;
* KL(Q‖P)/n on a log axis (n = the certificate samples);
* the bounded cross-entropy surrogate and the 0-1 error of the stochastic training mini-batches,
  with, dashed, the final Monte-Carlo Gibbs error ê on the certificate samples.

The optimisation's numbers are diagnostics: the certificate uses only the final posterior.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ncbounds.errors import DataError
from ncbounds.report.plots import _figure, _save, check_path
from ncbounds.report.results import checkpoint_label, sorted_records

__all__ = ["choose_history", "plot_pacbayes"]

_BOUNDS = ("pacbayes_opt", "pacbayes_opt_deterministic")


def _history_bound(record: dict) -> dict | None:
    found = {b.get("name"): b for b in record.get("bounds") or []
             if b.get("name") in _BOUNDS and ((b.get("details") or {}).get("history") or {}).get("step")}
    return next((found[n] for n in _BOUNDS if n in found), None)


def choose_history(records: Iterable[dict], checkpoint: str | None = None) -> tuple[dict, dict]:
    """(record, bound) to draw: the last record in path order that holds an optimisation history
    (``pacbayes_opt`` preferred), or the last whose checkpoint path contains ``checkpoint``."""
    recs = [r for r in sorted_records(records) if _history_bound(r) is not None]
    if checkpoint is not None:
        recs = [r for r in recs if checkpoint in (checkpoint_label(r) or "")]
    if not recs:
        raise DataError("no record holds an optimised PAC-Bayes history; evaluate with --bounds certificates (or pac-bayes-opt)"
                        + (" — and none matches --checkpoint." if checkpoint else "."))
    return recs[-1], _history_bound(recs[-1])


def _series(history: dict, key: str) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in history.get(key) or []], dtype=np.float64)


def plot_pacbayes(records: Iterable[dict], path: str | os.PathLike, checkpoint: str | None = None) -> Path:
    """Draw the optimisation history of one record (see the module docstring); returns the written path."""
    p = check_path(path)
    rec, bound = choose_history(records, checkpoint)
    history, details, inputs = bound["details"]["history"], bound["details"], bound.get("inputs") or {}
    steps = _series(history, "step")
    n = inputs.get("n")
    gibbs = details.get("gibbs_error", (details.get("gibbs_terms") or {}).get("gibbs_error"))
    certificate = details.get("gibbs_certificate") if bound["name"] == "pacbayes_opt_deterministic" else bound.get("value")

    fig = _figure((12.0, 3.8))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    objective = f"objective ({inputs.get('objective', '?')})"
    axes[0].plot(steps, _series(history, "objective"), color="tab:blue", lw=1.2, marker=".", ms=3, label=objective)
    if certificate is not None:
        axes[0].axhline(float(certificate), color="tab:blue", ls="--", lw=1.0, label=f"Gibbs certificate {float(certificate):.3f}")
    axes[0].set_title("training objective", fontsize=10)
    kl = _series(history, "kl")
    axes[1].plot(steps, kl / n if n else kl, color="tab:red", lw=1.2, marker=".", ms=3)
    axes[1].set_yscale("log")
    axes[1].set_title("KL(Q‖P)/n" if n else "KL(Q‖P)", fontsize=10)
    axes[2].plot(steps, _series(history, "surrogate"), color="tab:green", lw=1.2, marker=".", ms=3, label="bounded cross-entropy")
    axes[2].plot(steps, _series(history, "error"), color="tab:orange", lw=1.0, marker=".", ms=3, label="0-1 error (mini-batches)")
    if gibbs is not None:
        axes[2].axhline(float(gibbs), color="tab:orange", ls="--", lw=1.0, label=f"final Gibbs error ê {float(gibbs):.3f}")
    axes[2].set_title("training losses of Q", fontsize=10)
    for ax in axes:
        ax.set_xlabel("Adam step")
        ax.grid(True, alpha=0.25)
    for ax in (axes[0], axes[2]):
        ax.legend(fontsize=7, frameon=False)
    label = (rec.get("batch") or {}).get("relative_path") or os.path.basename(checkpoint_label(rec) or "?")
    prior = (inputs.get("prior") or {}).get("kind", "?")
    fig.suptitle(f"{bound['name']} — {label} (prior {prior}, n = {n})", fontsize=10)
    fig.tight_layout()
    return _save(fig, p)
