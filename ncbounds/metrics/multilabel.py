"""Multi-label neural-collapse metrics and errors (Li, Li, Wang & Qu 2024, ICML, "Neural collapse in
multi-label learning with pick-all-label loss").

Pure functions of :class:`~ncbounds.stats.multilabel.MultiLabelStats` (one pass: multiplicity-1
class statistics and per-pair means of multiplicity-2 samples) and
:class:`~ncbounds.stats.multilabel.MultiLabelDecisions` (error counts of a decision rule).

Multi-label collapse (Li et al. 2024): the multiplicity-1 features collapse to their class means,
which form a simplex ETF with the classifier (NC1–NC3 as for single-label data), and the mean of the
samples carrying labels {a, b} is a scaled sum of the single-label means, μ_ab − μ_G = c·(μ̃_a + μ̃_b)
("tag-wise average"). Here μ̃_k = μ_k − μ_G, μ_G the unweighted mean of the single-label class means.

Conventions. The canonical mode centres every mean by μ_G, so all metrics are unchanged by
translating, rotating or scaling the features. The authors' public code (Heimine/NC_MLab,
``utility.py``) differs in three places; ``convention='li2024-code'`` reproduces it:

- its global mean sums the multiplicity-1 features but divides by the number of **all** samples
  (μ_G' = Σ_{m=1} h_i / N), which is the unweighted mean only when no higher-multiplicity sample
  exists; NC1 and NC3 (Zhu form) are then computed around μ_G';
- its NC2 of the features is the ETF error of the **uncentered** Gram of the single-label means;
- its tag-wise angle uses the raw (uncentered) means μ_a + μ_b and μ_ab.

Its NC1 otherwise matches ours: Σ_W over multiplicity-1 samples divided by their number, Σ_B =
(1/K) Σ_c (μ_c − μ_G)(·)ᵀ, NC1 = Tr(Σ_W Σ_B⁺)/K.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ncbounds.errors import UsageError
from ncbounds.metrics.collapse import collapse_metrics, etf_error
from ncbounds.metrics.conventions import CANONICAL
from ncbounds.stats.binomial import clopper_pearson
from ncbounds.stats.multilabel import MultiLabelDecisions, MultiLabelStats
from ncbounds.stats.projected import ProjectedStats

__all__ = [
    "ML_CONVENTIONS",
    "hamming_error",
    "ml_pair_angle",
    "multilabel_errors",
    "multilabel_metrics",
    "nc1_single",
    "pair_angles",
    "per_label_errors",
    "single_label_metrics",
    "subset_error",
]

_EPS = torch.finfo(torch.float64).eps
ML_CONVENTIONS = ("canonical", "li2024-code")


def _check_convention(convention: str) -> None:
    if convention not in ML_CONVENTIONS:
        raise UsageError(f"unknown multi-label convention {convention!r}; choose one of {', '.join(ML_CONVENTIONS)}.")


def _single_view(stats: MultiLabelStats):
    """(present mask, present single-label means (k×d), their counts)."""
    s = stats.single
    present = s.counts > 0
    return present, s.means[present], s.counts[present].to(torch.float64)


def _code_global_mean(stats: MultiLabelStats) -> torch.Tensor:
    """μ_G' of the reference code: Σ of multiplicity-1 features over the number of all samples."""
    _, means, counts = _single_view(stats)
    return (counts.unsqueeze(1) * means).sum(0) / stats.total


def _nc1_code(stats: MultiLabelStats) -> float | None:
    """Reference-code NC1 = Tr(Σ_W (RᵀR)⁺) with rows R = μ_c − μ_G' (needs the pooled scatter)."""
    s = stats.single
    if s.scatter_mode == "none":
        return None
    _, means, counts = _single_view(stats)
    K, d = means.shape
    if K < 2:
        return None
    rows = means - _code_global_mean(stats)
    within = s.within_scatter() / float(counts.sum())
    _, sv, vh = torch.linalg.svd(rows, full_matrices=False)
    tol = max(float(sv[0]), float(means.norm(dim=1).max())) * max(K, d) * _EPS
    keep = sv > tol
    if not bool(keep.any()):
        return None
    v, sv = vh[keep], sv[keep]
    quad = ((v @ within) * v).sum(1).clamp(min=0.0)
    return float((quad / (sv * sv)).sum())


def nc1_single(stats: MultiLabelStats, projected: ProjectedStats | None = None, convention: str = "canonical") -> float | None:
    """NC1 on the multiplicity-1 samples: Tr(Σ_W Σ_B⁺)/K (Li et al. 2024; Papyan et al. 2020).

    Σ_W = (1/N₁) Σ_{i: m_i = 1} (h_i − μ_{y_i})(·)ᵀ over the N₁ multiplicity-1 samples, Σ_B = M̃ᵀM̃/K
    of the single-label means. Canonical: identical to ``metrics.collapse.nc1`` on those samples
    (needs the pooled/per-class scatter of ``stats.single`` or a ``projected`` replay fed with the
    multiplicity-1 samples only, see :func:`~ncbounds.stats.multilabel.single_label_rows`).
    'li2024-code': around μ_G' (module docstring; needs the pooled scatter, None otherwise).
    """
    _check_convention(convention)
    if convention == "li2024-code":
        return _nc1_code(stats)
    return collapse_metrics(stats.single, None, CANONICAL, projected)["nc1"]


def single_label_metrics(stats: MultiLabelStats, W=None, projected: ProjectedStats | None = None, convention: str = "canonical") -> dict:
    """Every collapse metric of ``metrics.collapse`` on the multiplicity-1 samples, NC1 renamed ``nc1_single``.

    NC2 (equinorm, equiangularity, ETF error of M̃M̃ᵀ and of WWᵀ) and NC3 (Papyan; Zhu: ETF error of
    WM̃ᵀ) use the single-label class means, as Li et al. (2024) measure them. 'li2024-code' replaces
    ``nc1_single``, ``nc2_etf_error_means`` (uncentered Gram of the raw means) and ``nc3_zhu``
    (W(μ_c − μ_G')ᵀ) by the reference code's forms.
    """
    _check_convention(convention)
    out = collapse_metrics(stats.single, W, CANONICAL, projected)
    out["nc1_single"] = out.pop("nc1")
    if convention == "li2024-code":
        present, means, _ = _single_view(stats)
        out["nc1_single"] = _nc1_code(stats)
        enough = means.shape[0] >= 2
        out["nc2_etf_error_means"] = etf_error(means @ means.T) if enough else None
        if W is not None:
            w = torch.as_tensor(W).to(device=means.device, dtype=torch.float64)[present]
            out["nc3_zhu"] = etf_error(w @ (means - _code_global_mean(stats)).T) if enough else None
    return out


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angles (radians) between matching rows of u and v, as 2·atan2(‖û − v̂‖, ‖û + v̂‖).

    Accurate for every angle (Kahan's form; arccos of the cosine loses half the digits near 0,
    where a collapsed geometry lives). Rows must be nonzero (callers check).
    """
    uu = u / u.norm(dim=-1, keepdim=True)
    vv = v / v.norm(dim=-1, keepdim=True)
    return 2.0 * torch.atan2((uu - vv).norm(dim=-1), (uu + vv).norm(dim=-1))


def _negligible(vectors: torch.Tensor, scale: float) -> bool:
    """True if a row is zero up to rounding: norm ≤ max(rows, d)·ε·scale (scale: norm of the raw means)."""
    return bool((vectors.norm(dim=-1) <= max(vectors.shape[0], vectors.shape[-1]) * _EPS * scale).any())


def _usable_pairs(stats: MultiLabelStats, centered: bool):
    """(pairs (P,2), pair counts, shifted pair means, shifted single means (K×d) with NaN rows for absent, present mask)."""
    s = stats.single
    present = s.counts > 0
    if int(present.sum()) == 0:
        return None
    shift = s.means[present].mean(0) if centered else torch.zeros(s.dim, dtype=torch.float64, device=s.means.device)
    singles = s.means - shift
    pairs, counts, pmeans = stats.pair_table()
    if len(pairs):
        keep = (present[torch.as_tensor(pairs[:, 0])] & present[torch.as_tensor(pairs[:, 1])]).cpu().numpy()
        pairs, counts, pmeans = pairs[keep], counts[torch.as_tensor(keep)], pmeans[torch.as_tensor(keep)]
    return pairs, counts, pmeans - shift, singles, present


def _scale(stats: MultiLabelStats) -> float:
    """Largest norm of the raw single-label and pair means (the rounding scale of centred sums)."""
    s = stats.single
    norms = [float(s.means[s.counts > 0].norm(dim=1).max())] if bool((s.counts > 0).any()) else [0.0]
    if stats.pair_keys:
        norms.append(float(stats.pair_means.norm(dim=1).max()))
    return max(norms)


def pair_angles(stats: MultiLabelStats, centered: bool = True) -> list[dict]:
    """Per observed pair {a, b}: {pair, n, angle_deg} with angle_deg = ∠(μ_ab − μ_G, μ̃_a + μ̃_b) in degrees.

    Pairs whose single-label classes are not both present are left out; None where a vector is zero.
    ``centered=False`` uses the raw means (Li et al.'s code).
    """
    view = _usable_pairs(stats, centered)
    if view is None:
        return []
    pairs, counts, pmeans, singles, _ = view
    scale = _scale(stats)
    out = []
    for (a, b), n, mean in zip(pairs.tolist(), counts.tolist(), pmeans, strict=True):
        target = singles[a] + singles[b]
        ok = not _negligible(target.unsqueeze(0), scale) and not _negligible(mean.unsqueeze(0), scale)
        out.append({"pair": [a, b], "n": int(n), "angle_deg": math.degrees(float(_angle(mean, target))) if ok else None})
    return out


def ml_pair_angle(stats: MultiLabelStats, centered: bool = True) -> float | None:
    """Normalized tag-wise angle of Li et al. (2024): 0 under multi-label collapse.

    numerator   = mean over the observed pairs {a, b} of ∠(μ_ab − μ_G, μ̃_a + μ̃_b);
    denominator = mean over all single-label pairs i < j and all observed pairs {a, b} of
                  ∠(μ̃_i + μ̃_j, μ_ab − μ_G);
    ml_pair_angle = numerator / denominator (a ratio of angles; units cancel).

    Pairs whose two single-label classes are not both present are left out. Canonical: centred by
    μ_G (translation invariant; with K = 2 the centred sum μ̃_0 + μ̃_1 is 0 and the value is None).
    ``centered=False``: the raw means, as the reference code (Heimine/NC_MLab ``angle_metric``)
    computes it. None without multiplicity-2 samples, with fewer than two present single-label
    classes, or when a vector involved is zero (up to rounding at the scale of the raw means).
    Angles are computed as 2·atan2(‖û − v̂‖, ‖û + v̂‖), accurate near 0 (the reference code's
    arccos of the cosine resolves nothing below ~1e-8 rad).
    """
    view = _usable_pairs(stats, centered)
    if view is None:
        return None
    pairs, _, pmeans, singles, present = view
    idx = torch.nonzero(present).squeeze(1)
    if len(pairs) == 0 or idx.numel() < 2:
        return None
    targets = singles[torch.as_tensor(pairs[:, 0])] + singles[torch.as_tensor(pairs[:, 1])]
    i, j = torch.triu_indices(idx.numel(), idx.numel(), offset=1)
    sums = singles[idx[i]] + singles[idx[j]]  # all single-label pairs
    scale = _scale(stats)
    if _negligible(targets, scale) or _negligible(pmeans, scale) or _negligible(sums, scale):
        return None
    numerator = _angle(pmeans, targets).mean()
    denominator = _angle(sums.unsqueeze(1), pmeans.unsqueeze(0)).mean()
    if float(denominator) == 0.0:
        return None
    return float(numerator / denominator)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def hamming_error(decisions: MultiLabelDecisions) -> float | None:
    """Hamming error (1/(N·K)) Σ_i Σ_k 1[decision_ik ≠ t_ik] = Σ_k (FP_k + FN_k)/(N·K).

    Not a binomial proportion (the K labels of a sample are dependent), so no Clopper–Pearson
    interval is attached; the per-sample Hamming loss is an average of [0, 1] values over i.i.d.
    samples, so a Hoeffding/Bernstein interval over samples applies instead.
    """
    if decisions.n == 0:
        return None
    return float((decisions.false_positives + decisions.false_negatives).sum()) / (decisions.n * decisions.num_classes)


def subset_error(decisions: MultiLabelDecisions) -> float | None:
    """Subset (exact-match) error (1/N) Σ_i 1[decision_i ≠ t_i]: a sample counts once if any label is wrong."""
    return decisions.subset_errors / decisions.n if decisions.n else None


def per_label_errors(decisions: MultiLabelDecisions, alpha: float = 0.05) -> list[dict]:
    """Per label k: {label, positives, errors, error, ci95, false_positives, false_negatives}.

    error_k = (FP_k + FN_k)/N, the binary error of label k over the N samples (i.i.d. Bernoulli, so the
    two-sided Clopper–Pearson interval at level 1 − alpha is exact; Clopper & Pearson 1934).
    """
    n = decisions.n
    errors = (decisions.false_positives + decisions.false_negatives).numpy()
    rows = []
    if n:
        lo, hi = clopper_pearson(errors, np.full_like(errors, n), alpha=alpha)
    for k in range(decisions.num_classes):
        rows.append({
            "label": k,
            "positives": int(decisions.positives[k]),
            "errors": int(errors[k]),
            "error": float(errors[k]) / n if n else None,
            "ci95": [float(lo[k]), float(hi[k])] if n else None,
            "false_positives": int(decisions.false_positives[k]),
            "false_negatives": int(decisions.false_negatives[k]),
        })
    return rows


def multilabel_errors(decisions: MultiLabelDecisions, alpha: float = 0.05) -> dict:
    """{decision_rule, n, hamming_error, subset_error, subset_errors, subset_ci95, per_label}.

    subset_ci95: two-sided Clopper–Pearson interval of the subset error (one Bernoulli per sample).
    """
    out = {
        "decision_rule": decisions.rule,
        "n": decisions.n,
        "hamming_error": hamming_error(decisions),
        "subset_error": subset_error(decisions),
        "subset_errors": decisions.subset_errors,
        "subset_ci95": None,
        "per_label": per_label_errors(decisions, alpha),
    }
    if decisions.n:
        lo, hi = clopper_pearson(decisions.subset_errors, decisions.n, alpha=alpha)
        out["subset_ci95"] = [float(lo), float(hi)]
    return out


def multilabel_metrics(stats: MultiLabelStats, W=None, projected: ProjectedStats | None = None,
                       decisions: MultiLabelDecisions | None = None, convention: str = "canonical") -> dict:
    """Everything for one layer and split: :func:`single_label_metrics`, ``ml_pair_angle``, sizes and errors.

    Extra keys: ml_pair_angle, n_multiplicity (list: samples of multiplicity 0, 1, 2, ≥ 3), n_pairs
    (distinct observed pairs), and with ``decisions`` the keys of :func:`multilabel_errors`.
    """
    out = single_label_metrics(stats, W, projected, convention)
    out["ml_pair_angle"] = ml_pair_angle(stats, centered=convention == "canonical")
    out["n_multiplicity"] = [int(v) for v in stats.multiplicity_counts.tolist()]
    out["n_pairs"] = len(stats.pair_keys)
    if decisions is not None:
        out.update(multilabel_errors(decisions))
    return out
