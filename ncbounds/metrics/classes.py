"""Per-class, imbalance and multi-label quantities of one finished split, for every hooked layer.

Pure functions of a finished :class:`~ncbounds.stats.split.SplitStatistics` (or its multi-label twin
:class:`~ncbounds.stats.multilabel_split.MultiLabelSplitStatistics`) and the classifier; the formulas
and their papers are in :mod:`ncbounds.metrics.imbalance` and :mod:`ncbounds.metrics.multilabel`.
Nothing here needs a second pass: the per-class NC1 terms and NCC errors come from the replay the
split already ran (:class:`~ncbounds.stats.per_class.PerClassTerms`), the per-class network errors and
margins from the per-sample decisions :class:`~ncbounds.stats.logit_stats.LogitStats` keeps.

Which counts. Imbalance is a property of the training split: the minority split and SELI's
D = diag(n_c) use the **training** counts of the layer on both splits (``train_counts``), so a balanced
test split is still read against the training imbalance (Fang et al. 2021; Thrampoulidis et al. 2022).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ncbounds.errors import StatisticsError
from ncbounds.metrics.collapse import collapse_metrics
from ncbounds.metrics.conventions import CANONICAL, Convention
from ncbounds.metrics.imbalance import imbalance_metrics, per_class_breakdown
from ncbounds.metrics.multilabel import ml_pair_angle, multilabel_errors
from ncbounds.stats.binomial import kl_inverse_lower, kl_inverse_upper
from ncbounds.stats.per_class import PerClassTerms

__all__ = [
    "classifier_cosines",
    "hamming_interval",
    "imbalance_split_metrics",
    "max_min_ratio",
    "multilabel_split_errors",
    "multilabel_split_metrics",
    "per_class_rows",
    "per_label_rows",
]

#: classifier cosine matrices are recorded up to this many classes (K² numbers per record)
MAX_COSINE_CLASSES = 100


def per_class_rows(split, layer: str, W=None, b=None, alpha: float = 0.05) -> list[dict]:
    """One row per class of ``layer`` on this split (:func:`~ncbounds.metrics.imbalance.per_class_breakdown`).

    At the penultimate layer with a classifier the rows carry the network's per-class errors (two-sided
    Clopper–Pearson interval at level 1 − ``alpha``), margin medians, ‖w_c‖ and b_c; on other layers
    those keys are None (they describe the head, not the layer). ``ncc_error`` and ``nc1_share`` come
    from the split's replay; Σ_c n_c·error_c/N is the measured error and Σ_c nc1_share_c the NC1.
    """
    stats = split.layers[layer]
    at_head = layer == split.penultimate
    logits = split.logits if at_head else None
    projected, counter = split.projected.get(layer), split.ncc.get(layer)
    terms = PerClassTerms(projected, counter) if projected is not None and counter is not None else None
    return per_class_breakdown(
        stats,
        labels=None if logits is None else logits.labels,
        predictions=None if logits is None else logits.predictions,
        margins=None if logits is None else logits.margins,
        W=W if at_head else None,
        b=b if at_head else None,
        replay=terms,
        alpha=alpha,
    )


def imbalance_split_metrics(split, layer: str, W=None, train_counts=None, minority=None) -> tuple[dict, list[int]]:
    """(metrics, minority classes) of ``layer`` on this split (:func:`~ncbounds.metrics.imbalance.imbalance_metrics`).

    Metrics: ``nc1_weighted`` (Hong & Ling 2023; He & Su's SS_B), ``minority_cos_W`` /
    ``majority_cos_W`` / ``cross_cos_W`` (classifier rows, penultimate layer only) and ``*_cos_M``
    (centered class means; Fang et al. 2021), ``etf_cos`` = −1/(K−1), ``seli_distance_M`` and, with
    the classifier, ``seli_distance_W`` and ``seli_distance_logits`` (Thrampoulidis et al. 2022).
    ``train_counts`` (K,): the counts that define the minority split and SELI's D (default: this
    split's own); ``minority``: explicit minority class indices. SELI distances are None when a class
    present here has no training sample (D would give it weight 0).
    """
    stats = split.layers[layer]
    W = W if layer == split.penultimate else None
    try:
        out = imbalance_metrics(stats, W, split.projected.get(layer), counts=train_counts, minority=minority)
    except StatisticsError:  # a class of this split is absent from training: no SELI target for it
        from ncbounds.metrics.imbalance import minority_collapse, nc1_weighted

        out = {"nc1_weighted": nc1_weighted(stats, split.projected.get(layer))}
        out.update(minority_collapse(stats, W, minority, train_counts))
        out.update({"seli_distance_W": None, "seli_distance_M": None, "seli_distance_logits": None})
    if W is None:
        for key in ("minority_cos_W", "majority_cos_W", "cross_cos_W", "seli_distance_W", "seli_distance_logits"):
            out.pop(key, None)
    minority_classes = out.pop("minority_classes")
    return out, minority_classes


def multilabel_split_metrics(split, layer: str, W=None, convention: Convention = CANONICAL) -> dict:
    """Collapse metrics of a multi-label split at ``layer`` (Li, Li, Wang & Qu 2024, ICML).

    Every metric of :func:`~ncbounds.metrics.collapse.collapse_metrics` on the multiplicity-1 samples
    (NC1 renamed ``nc1_single``; NC2/NC3 on the single-label class means and, at the penultimate
    layer, the classifier), ``ncc_error`` (multiplicity-1 samples, training single-label means),
    ``ml_pair_angle`` (:func:`~ncbounds.metrics.multilabel.ml_pair_angle`, centred: 0 under
    multi-label collapse) and, at the penultimate layer with logits, ``hamming_error`` and
    ``subset_error`` of the decision rule.
    """
    ml = split.multilabel[layer]
    at_head = layer == split.penultimate
    out = collapse_metrics(ml.single, W if at_head else None, convention, split.projected.get(layer))
    out = {("nc1_single" if key == "nc1" else key): value for key, value in out.items()}
    counter = split.ncc.get(layer)
    out["ncc_error"] = counter.error_rate if counter is not None and counter.n else None
    out["ml_pair_angle"] = ml_pair_angle(ml, centered=True)
    if at_head and split.decisions is not None and split.decisions.n:
        errors = multilabel_errors(split.decisions)
        out["hamming_error"] = errors["hamming_error"]
        out["subset_error"] = errors["subset_error"]
    return out


def hamming_interval(decisions, alpha: float = 0.05) -> list[float] | None:
    """Two-sided interval at level 1 − ``alpha`` for the Hamming error (None without samples).

    The per-sample Hamming loss L_i = (1/K)·#{k: decision_ik ≠ t_ik} lies in [0, 1] and the samples
    are i.i.d., so Hoeffding's (1963, Thm 1) kl form of the Chernoff bound, P(L̄ ≥ q) ≤ exp(−n·kl(q‖p))
    for q > p (and symmetrically below), holds as for a binomial proportion: the interval is
    [kl⁻¹_lower(L̄, ln(2/α)/n), kl⁻¹_upper(L̄, ln(2/α)/n)]. (Clopper–Pearson is exact only for 0/1
    losses; the K labels of one sample are dependent.)
    """
    n = decisions.n
    if not n:
        return None
    mean = float((decisions.false_positives + decisions.false_negatives).sum()) / (n * decisions.num_classes)
    budget = math.log(2.0 / alpha) / n
    return [float(kl_inverse_lower(mean, budget)), float(kl_inverse_upper(mean, budget))]


def multilabel_split_errors(split, alpha: float = 0.05) -> dict | None:
    """The ``errors`` entry of a multi-label split: the subset (exact-match) error as ``error`` with its
    two-sided Clopper–Pearson interval, ``hamming_error`` with :func:`hamming_interval`, the rule."""
    if split.decisions is None or not split.decisions.n:
        return None
    e = multilabel_errors(split.decisions, alpha)
    return {"error": e["subset_error"], "errors": e["subset_errors"], "n": e["n"], "ci95": e["subset_ci95"],
            "kind": "subset", "hamming_error": e["hamming_error"], "hamming_ci95": hamming_interval(split.decisions, alpha),
            "decision_rule": e["decision_rule"]}


def per_label_rows(split, alpha: float = 0.05) -> list[dict] | None:
    """Per-label error rows of a multi-label split (:func:`~ncbounds.metrics.multilabel.per_label_errors`)."""
    if split.decisions is None or not split.decisions.n:
        return None
    return multilabel_errors(split.decisions, alpha)["per_label"]


def classifier_cosines(W) -> list[list[float | None]] | None:
    """Cosines between the classifier rows, cos(w_i, w_j) (K×K; None entries for a zero row).

    None without a classifier or with more than :data:`MAX_COSINE_CLASSES` rows (the matrix would
    dominate the record)."""
    if W is None:
        return None
    w = torch.as_tensor(W).to(torch.float64)
    if w.shape[0] > MAX_COSINE_CLASSES:
        return None
    norms = w.norm(dim=1)
    unit = w / norms.clamp(min=torch.finfo(torch.float64).tiny).unsqueeze(1)
    cos = (unit @ unit.T).clamp(-1.0, 1.0).cpu().numpy()
    zero = (norms == 0).cpu().numpy()
    return [[None if zero[i] or zero[j] else float(cos[i, j]) for j in range(len(cos))] for i in range(len(cos))]


def max_min_ratio(counts) -> float | None:
    """Largest over smallest positive count (None with fewer than two present classes)."""
    n = np.asarray(counts.cpu().numpy() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    n = n[n > 0]
    return float(n.max() / n.min()) if len(n) >= 2 else None
