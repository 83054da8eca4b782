"""Collapse geometry under class imbalance: weighted NC1, minority collapse, SELI, per-class breakdown.

Pure functions of class statistics (:class:`~ncbounds.stats.class_stats.ClassStats`, optionally the
span-restricted replay :class:`~ncbounds.stats.projected.ProjectedStats` and the per-class replay
:class:`~ncbounds.stats.per_class.PerClassReplay`), the classifier W (K×d), b (K,) and, for the
breakdown, the per-sample labels/decisions/margins a :class:`~ncbounds.stats.logit_stats.LogitStats`
keeps. Notation as in ``metrics.collapse``: n_c, N, μ_c, μ_G = unweighted mean of the present class
means, M̃ = [μ_c − μ_G] (K×d), Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(·)ᵀ.

Which counts. Imbalance is a property of the **training** split: the minority split and the SELI
matrix D = diag(n_c) should use the training counts on every split (pass ``counts=train_counts`` for
the test split; the default is the split's own counts, which on a balanced test split would make the
minority block empty and SELI collapse to the ETF). Classes absent from the split are left out,
together with their classifier rows, as in ``metrics.collapse``. Undefined values are None.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ncbounds.errors import StatisticsError, UsageError
from ncbounds.metrics.collapse import separation_fuzziness
from ncbounds.metrics.conventions import CANONICAL
from ncbounds.stats.binomial import clopper_pearson
from ncbounds.stats.class_stats import ClassStats
from ncbounds.stats.projected import ProjectedStats

__all__ = [
    "block_cosines",
    "imbalance_metrics",
    "minority_collapse",
    "minority_mask",
    "nc1_weighted",
    "per_class_breakdown",
    "seli_distances",
    "seli_targets",
]


# ------------------------------------------------------------------------------------------------
# weighted NC1
# ------------------------------------------------------------------------------------------------


def nc1_weighted(stats: ClassStats, projected: ProjectedStats | None = None) -> float | None:
    """Frequency-weighted NC1 = Tr(Σ_W Σ_B,w⁺)/K with Σ_B,w = Σ_c (n_c/N)(μ_c − μ̄)(μ_c − μ̄)ᵀ.

    μ̄ = (1/N) Σ_i h_i is the sample mean. This is the NC1 of Hong & Ling (2023, "Neural collapse for
    unconstrained feature model under cross-entropy loss with imbalanced data", experiments; public
    code WanliHongC/Neural-Collapse computes trace(Σ_W pinv(Σ_B,w))/K exactly so), i.e. He & Su's
    (2023, PNAS) separation fuzziness D = Tr(SS_W SS_B⁺) divided by K. With balanced classes
    Σ_B,w = Σ_B = M̃ᵀM̃/K and it equals canonical NC1. The pseudo-inverse is taken on the numerical
    rank of the between-class rows (as for NC1; the reference code uses ``pinv(rcond=1e-10)``).
    Needs second-order statistics (a ``projected`` replay or scatter in ``stats``); None otherwise.
    """
    K = int((stats.counts > 0).sum())
    if K < 2:
        return None
    d = separation_fuzziness(stats, CANONICAL, projected)
    return None if d is None else d / K


# ------------------------------------------------------------------------------------------------
# minority collapse
# ------------------------------------------------------------------------------------------------


def minority_mask(counts, minority=None) -> np.ndarray:
    """Boolean (K,) mask of the minority classes.

    Default: the present classes (n_c > 0) whose count lies strictly below the geometric mean
    √(n_max·n_min) of the largest and smallest present count (a balanced split has none). An explicit
    ``minority`` (iterable of class indices) is taken as given.
    """
    n = np.asarray(counts.cpu().numpy() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    K = n.shape[0]
    mask = np.zeros(K, dtype=bool)
    if minority is not None:
        idx = [int(c) for c in minority]
        bad = [c for c in idx if not 0 <= c < K]
        if bad:
            raise UsageError(f"minority classes {bad} are outside 0..{K - 1}; list class indices of this model.")
        mask[idx] = True
        return mask
    present = n > 0
    if present.sum() < 2:
        return mask
    threshold = math.sqrt(float(n[present].max()) * float(n[present].min()))
    return present & (n < threshold)


def _mean_pair_cosine(unit: torch.Tensor, rows_a: torch.Tensor, rows_b: torch.Tensor | None) -> float | None:
    """Mean cosine over unordered pairs inside block a (rows_b None) or over all a × b pairs."""
    a = unit[rows_a]
    if rows_b is None:
        k = a.shape[0]
        if k < 2:
            return None
        i, j = torch.triu_indices(k, k, offset=1)
        return float((a[i] * a[j]).sum(1).mean())
    b = unit[rows_b]
    if a.shape[0] == 0 or b.shape[0] == 0:
        return None
    return float((a @ b.T).mean())


def block_cosines(rows, minority) -> dict[str, float | None]:
    """Mean pairwise cosine of ``rows`` (k×d) inside the minority block, the majority block and across.

    ``minority`` is a boolean mask over the rows. Minority collapse (Fang, He, Long & Su 2021, PNAS,
    "Exploring deep neural networks via layer-peeled model: minority collapse in imbalanced
    training") shows as the minority cosine rising towards 1; a simplex ETF gives −1/(k−1)
    in every block. None for a block with fewer than two rows (one per side for ``cross``) or when a
    row is zero.
    """
    r = torch.as_tensor(rows).to(torch.float64)
    m = torch.as_tensor(np.asarray(minority, dtype=bool)).to(r.device)
    norms = r.norm(dim=1)
    if bool((norms == 0).any()):
        return {"minority": None, "majority": None, "cross": None}
    unit = r / norms.unsqueeze(1)
    return {
        "minority": _mean_pair_cosine(unit, m, None),
        "majority": _mean_pair_cosine(unit, ~m, None),
        "cross": _mean_pair_cosine(unit, m, ~m),
    }


def _present_view(stats: ClassStats, counts=None):
    """(present mask, centered present means M̃, counts used) — counts default to the split's own."""
    present = stats.counts > 0
    own = stats.counts
    used = own if counts is None else torch.as_tensor(counts).to(device=own.device, dtype=torch.int64)
    if used.shape != own.shape:
        raise UsageError(
            f"class counts have shape {tuple(used.shape)}, the statistics {tuple(own.shape)} classes; pass one count per class."
        )
    means = stats.means[present]
    centered = means - means.mean(0) if means.shape[0] else means
    return present, centered, used


def minority_collapse(stats: ClassStats, W=None, minority=None, counts=None) -> dict:
    """Block cosines of the classifier rows (``*_cos_W``, raw rows w_c) and of the centered class means.

    ``*_cos_M`` uses μ_c − μ_G. The minority split comes from ``minority`` (explicit indices) or
    from ``counts`` (default: the split's counts; pass the training counts for the test split) by
    :func:`minority_mask`. Keys: minority_cos_W, majority_cos_W, cross_cos_W, minority_cos_M,
    majority_cos_M, cross_cos_M, etf_cos (= −1/(K−1), K present classes), minority_classes (list).
    Reference: Fang et al. (2021, PNAS), minority collapse; ETF value: Papyan, Han & Donoho (2020).
    """
    present, centered, used = _present_view(stats, counts)
    mask_all = minority_mask(used, minority)
    pres = present.cpu().numpy()
    mask = mask_all[pres]
    K = int(pres.sum())
    out: dict = {"minority_classes": [int(c) for c in np.flatnonzero(mask_all & pres)],
                 "etf_cos": -1.0 / (K - 1) if K >= 2 else None}
    cos_m = block_cosines(centered, mask) if K >= 2 else {"minority": None, "majority": None, "cross": None}
    out.update({f"{k}_cos_M": v for k, v in cos_m.items()})
    if W is not None:
        w = torch.as_tensor(W).to(device=centered.device, dtype=torch.float64)[present]
        cos_w = block_cosines(w, mask)
        out.update({f"{k}_cos_W": v for k, v in cos_w.items()})
    return out


# ------------------------------------------------------------------------------------------------
# SELI geometry
# ------------------------------------------------------------------------------------------------


def _helmert_basis(K: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """K×(K−1) orthonormal basis of 1^⊥: column k ∝ (1, …, 1, −k, 0, …) with k ones (Helmert)."""
    U = torch.zeros(K, K - 1, dtype=dtype, device=device)
    for k in range(1, K):
        U[:k, k - 1] = 1.0
        U[k, k - 1] = -float(k)
        U[:, k - 1] /= math.sqrt(k * (k + 1))
    return U


def seli_targets(counts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S^{1/2}, (S^{1/2})⁺, P) for S = P D P, D = diag(n_c), P = I − 11ᵀ/K (counts all positive).

    Thrampoulidis, Kini, Vakilian & Behnia (2022, NeurIPS, "Imbalance trouble: revisiting
    neural-collapse geometry", SELI): with the simplex-encoded label matrix Ẑ = [e_{y_i} − 1/K]
    (K×N), ẐẐᵀ = PDP and, from the SVD Ẑ = VΛUᵀ, the SELI solution has W Wᵀ = VΛVᵀ = S^{1/2},
    class-mean Gram M̃M̃ᵀ = VΛ⁻¹Vᵀ = (S^{1/2})⁺ and W M̃ᵀ = VVᵀ = P. Rank-aware by construction:
    S = U T Uᵀ with U the Helmert basis of 1^⊥ (the exact null space of S is span{1}) and
    T = UᵀDU positive definite (eigenvalues within [min n_c, max n_c]), so S^{1/2} = U T^{1/2} Uᵀ and
    (S^{1/2})⁺ = U T^{−1/2} Uᵀ need no eigenvalue cut-off.
    """
    n = torch.as_tensor(counts).to(torch.float64).reshape(-1)
    K = n.shape[0]
    if K < 2:
        raise StatisticsError("SELI geometry needs at least two classes.")
    if bool((n <= 0).any()):
        raise StatisticsError("SELI geometry needs a positive count for every class; leave absent classes out.")
    U = _helmert_basis(K, device=n.device)
    T = U.T @ (n.unsqueeze(1) * U)
    lam, V = torch.linalg.eigh(0.5 * (T + T.T))
    UV = U @ V
    half = (UV * lam.sqrt()) @ UV.T
    half_pinv = (UV / lam.sqrt()) @ UV.T
    P = torch.eye(K, dtype=torch.float64, device=n.device) - 1.0 / K
    return half, half_pinv, P


def _normalized_distance(G: torch.Tensor, target: torch.Tensor) -> float | None:
    """‖G/‖G‖_F − target/‖target‖_F‖_F (None when G = 0)."""
    g = float(torch.linalg.matrix_norm(G))
    if g == 0.0:
        return None
    return float(torch.linalg.matrix_norm(G / g - target / torch.linalg.matrix_norm(target)))


def seli_distances(stats: ClassStats, W=None, counts=None) -> dict[str, float | None]:
    """Distances of the learned geometry to SELI (Thrampoulidis et al. 2022), on the present classes.

    With D = diag(n_c) (``counts``, default the split's own; pass the training counts for the test
    split), P = I − 11ᵀ/K, S = PDP (:func:`seli_targets`):

    - seli_distance_W = ‖G_W/‖G_W‖_F − S^{1/2}/‖S^{1/2}‖_F‖_F, G_W = W Wᵀ (raw classifier rows);
    - seli_distance_M = the same for G_M = M̃M̃ᵀ (centered class means) against (S^{1/2})⁺;
    - seli_distance_logits = the same for W M̃ᵀ against P.

    With balanced classes S^{1/2} ∝ (S^{1/2})⁺ ∝ P and P/‖P‖_F = P/√(K−1) is the normalized simplex
    ETF Gram, so the three equal nc2_etf_error_classifier, nc2_etf_error_means and nc3_zhu (Zhu et
    al. 2021). The SELI characterisation assumes the unconstrained-feature model with cross-entropy,
    no bias and vanishing regularisation; a trained network with a bias need not reach it.
    """
    present, centered, used = _present_view(stats, counts)
    out: dict[str, float | None] = {"seli_distance_W": None, "seli_distance_M": None, "seli_distance_logits": None}
    if centered.shape[0] < 2:
        return out
    n = used[present]
    if bool((n <= 0).any()):
        raise StatisticsError("the SELI counts give zero samples to a class present in this split; pass counts of the training split.")
    half, half_pinv, P = seli_targets(n)
    out["seli_distance_M"] = _normalized_distance(centered @ centered.T, half_pinv)
    if W is not None:
        w = torch.as_tensor(W).to(device=centered.device, dtype=torch.float64)[present]
        out["seli_distance_W"] = _normalized_distance(w @ w.T, half)
        out["seli_distance_logits"] = _normalized_distance(w @ centered.T, P)
    return out


# ------------------------------------------------------------------------------------------------
# per-class breakdown
# ------------------------------------------------------------------------------------------------


def _np(x, dtype):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _class_medians(values: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median of ``values`` within each class (NaN for absent classes): one grouping sort of the labels,
    then a sort of each class's values.

    Bit-for-bit NumPy's ``percentile(v, 50)`` (linear method): the middle order statistic for an odd
    count, b − (b − a)·0.5 for the two middle ones a ≤ b of an even count (NumPy's interpolation form).
    """
    grouped = values[np.argsort(labels, kind="stable")]
    out = np.full(len(counts), np.nan)
    start = 0
    for c, n_c in enumerate(counts):
        if n_c:
            srt = np.sort(grouped[start:start + n_c])
            half = (n_c - 1) // 2
            a = srt[half]
            out[c] = a if n_c % 2 else srt[half + 1] - (srt[half + 1] - a) * 0.5
        start += n_c
    return out


def per_class_breakdown(
    stats: ClassStats,
    labels=None,
    predictions=None,
    margins=None,
    W=None,
    b=None,
    replay=None,
    alpha: float = 0.05,
) -> list[dict]:
    """One row per class c = 0..K−1 of one layer and split.

    Keys (None where the input that defines it was not given, or the class is absent):

    - ``class``, ``n`` (n_c from ``stats``);
    - ``errors``, ``error`` = #{i ∈ c : decision ≠ c}/n_c and ``ci95`` = two-sided Clopper–Pearson
      interval at level 1 − ``alpha`` (Clopper & Pearson 1934) from the per-sample ``labels`` and
      network ``predictions`` (``LogitStats.labels`` / ``.predictions``). Σ_c errors_c is the overall
      error count, so Σ_c n_c·error_c / N reproduces the overall error;
    - ``variability`` v_c = E_c‖h − μ_c‖² (biased), ``mean_norm`` ‖μ_c − μ_G‖ (μ_G the unweighted
      mean of the present class means);
    - ``classifier_norm`` ‖w_c‖ and ``bias`` b_c (from ``W``, ``b``);
    - ``margin_median``: median of the class-c margins γ_i (Bartlett et al. 2017; linear
      interpolation, as ``metrics.margins``) from ``margins`` aligned with ``labels``;
    - ``ncc_error`` and ``nc1_share`` from a :class:`~ncbounds.stats.per_class.PerClassReplay`
      (``replay``): the class-c NCC error rate against the training means, and
      share_c = Tr((n_c/N) Σ_c Σ_B⁺)/K, whose sum over classes is canonical NC1.

    The labels must match the statistics' counts (same split); a mismatch raises StatisticsError.
    """
    counts = stats.counts.cpu().numpy().astype(np.int64)
    K = counts.shape[0]
    present = counts > 0
    means = stats.means.cpu().numpy()
    center = means[present].mean(0) if present.any() else np.zeros(means.shape[1])
    variability = np.where(present, stats.sq_dev.cpu().numpy() / np.maximum(counts, 1), np.nan)
    mean_norm = np.linalg.norm(means - center, axis=1)

    y = _np(labels, np.int64)
    pred = _np(predictions, np.int64)
    marg = _np(margins, np.float64)
    errors = lo = hi = None
    if y is not None:
        if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= K)):
            raise StatisticsError(f"per-class labels must be class indices 0..{K - 1} of shape (N,).")
        seen = np.bincount(y, minlength=K)
        if not np.array_equal(seen, counts):
            raise StatisticsError(
                "the per-sample labels do not match the class counts of these statistics; pass the same split's LogitStats."
            )
        if pred is not None:
            if pred.shape != y.shape:
                raise StatisticsError(f"predictions have shape {pred.shape}, labels {y.shape}; pass the same split's LogitStats.")
            errors = np.bincount(y[pred != y], minlength=K)
            lo, hi = clopper_pearson(errors[present], counts[present], alpha=alpha)
            lo_all, hi_all = np.full(K, np.nan), np.full(K, np.nan)
            lo_all[present], hi_all[present] = lo, hi
            lo, hi = lo_all, hi_all
        if marg is not None and marg.shape != y.shape:
            raise StatisticsError(f"margins have shape {marg.shape}, labels {y.shape}; pass the same split's LogitStats.")
    elif pred is not None or marg is not None:
        raise UsageError("per-class errors and margins need the per-sample labels too; pass labels=LogitStats.labels.")

    w_norm = None if W is None else np.linalg.norm(_np(W, np.float64), axis=1)
    bias = None if b is None else _np(b, np.float64).reshape(-1)
    shares = ncc_errors = None
    if replay is not None:
        if not np.array_equal(replay.n.cpu().numpy(), counts):
            raise StatisticsError("the per-class replay saw different class counts than these statistics; replay the same split.")
        shares = replay.nc1_shares()  # None when NC1 is undefined (no between-class rank)
        shares = None if shares is None else shares.cpu().numpy()
        ncc_errors = replay.ncc_errors.cpu().numpy()

    medians = _class_medians(marg, y, counts) if marg is not None and y is not None else None
    rows = []
    for c in range(K):
        n_c = int(counts[c])
        ok = n_c > 0
        row = {
            "class": c,
            "n": n_c,
            "errors": int(errors[c]) if errors is not None and ok else None,
            "error": float(errors[c]) / n_c if errors is not None and ok else None,
            "ci95": [float(lo[c]), float(hi[c])] if errors is not None and ok else None,
            "variability": float(variability[c]) if ok else None,
            "mean_norm": float(mean_norm[c]) if ok else None,
            "classifier_norm": float(w_norm[c]) if w_norm is not None else None,
            "bias": float(bias[c]) if bias is not None else None,
            "margin_median": float(medians[c]) if medians is not None and ok else None,
            "ncc_error": float(ncc_errors[c]) / n_c if ncc_errors is not None and ok else None,
            "nc1_share": float(shares[c]) if shares is not None and ok else None,
        }
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# everything at once
# ------------------------------------------------------------------------------------------------


def imbalance_metrics(stats: ClassStats, W=None, projected: ProjectedStats | None = None, counts=None, minority=None) -> dict:
    """Flat dict of the imbalance metrics of one layer and split (scalars and the minority class list).

    Keys: nc1_weighted; minority_cos_W, majority_cos_W, cross_cos_W (with W), minority_cos_M,
    majority_cos_M, cross_cos_M, etf_cos, minority_classes; seli_distance_M, and with W
    seli_distance_W, seli_distance_logits. ``counts``: the training class counts (recommended on
    every split, see the module docstring); ``minority``: explicit minority class indices.
    """
    out: dict = {"nc1_weighted": nc1_weighted(stats, projected)}
    out.update(minority_collapse(stats, W, minority, counts))
    out.update(seli_distances(stats, W, counts))
    return out
