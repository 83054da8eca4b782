"""Neural-collapse bounds on the m-shot nearest-class-center (NCC) error (group 'collapse').

Setting shared by all three bounds: C' classes; for each class m labelled samples ("shots") are drawn,
their means μ̂_c form an NCC classifier, and a fresh sample x of class i is misclassified when some
μ̂_j is closer than μ̂_i. The bounds control the expected error (over the shots and x) through class
means μ_c, within-class variances v_c = E‖x − μ_c‖², directional variances u_ijᵀΣ_i u_ij and fourth
moments, all **population** quantities. We plug in the estimates of one split — by default the
**test** split: its features were not fitted, so they estimate the population of the evaluated
classes better than the (collapsed, over-fitted) training features — hence status ``plug-in`` (or
``up-to-constants`` where the published constant could not be confirmed). ``inputs['split']`` records
the split; the bound option ``split`` (:class:`CollapseBoundOptions`, e.g. ``--bound-option
collapse.split=train``) switches to the training split.

m: every value of ``ctx.options.shots`` (default: the smallest training class count,
``ctx.samples_per_class``). ``value`` is the bound for the first m; ``details['per_m']`` holds all.

Pure functions (array inputs, used by the tests and usable on their own):
:func:`luthra_old_bound`, :func:`luthra_old_optimal_a`, :func:`luthra_new_pair_terms`,
:func:`luthra_new_bound`, :func:`galanti_bound`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext, SplitSummary
from ncbounds.bounds.replay.moments import CLASS_MOMENTS, ClassMoments
from ncbounds.errors import UsageError
from ncbounds.metrics.collapse import cdnv, directional_cdnv
from ncbounds.stats.projected import ProjectedStats

__all__ = [
    "CollapseBoundOptions",
    "galanti_bound",
    "luthra_new_bound",
    "luthra_new_inputs",
    "luthra_new_pair_terms",
    "luthra_old_bound",
    "luthra_old_optimal_a",
    "MOMENTS_KEY",
]

MOMENTS_KEY = CLASS_MOMENTS.key


@dataclass(frozen=True)
class CollapseBoundOptions:
    """Settings of the m-shot NCC bounds (``galanti2022``, ``luthra_old``, ``luthra_new``).

    split: the split whose class statistics stand in for the population ('test', default: held-out
        features; 'train': the fitted, usually more collapsed, features).
    """

    split: str = "test"

    def validate(self) -> None:
        if self.split not in ("train", "test"):
            raise UsageError(f"bound option split must be 'train' or 'test', not {self.split!r}.")

#: Shot count below which a third-party reimplementation of Luthra et al. refuses Thm 4.1 and
#: Prop. 1 ("m >= 10"); we could not confirm this condition in the papers' text (see the reports).
_REPORTED_MIN_M = 10

_BOUNDS = "expected m-shot nearest-class-center error on classes distributed like the evaluated ones (new or seen classes)"

REF_GALANTI = ("Galanti, György & Hutter (2022), 'On the role of neural collapse in transfer learning', ICLR; "
               "few-shot NCC error bound in terms of CDNV (§4; proposition number and constant unconfirmed)")
REF_LUTHRA_OLD = ("Luthra, Yang & Galanti (2025), 'Self-supervised contrastive learning is approximately supervised "
                  "contrastive learning', NeurIPS, Prop. 1 (optimal-a form of the authors' code, "
                  "DLFundamentals/directional_cdnv_bounds bound_analysis/old_bound_core.py)")
REF_LUTHRA_NEW = ("Luthra, Salunkhe & Galanti (2026), 'Directional neural collapse explains few-shot transfer in "
                  "self-supervised learning', arXiv:2603.03530, Thm 4.1 (as in the authors' "
                  "bound_analysis/new_bound_core.py and eval_utils/geometry.py)")


# ================================================================================================
# pure formulas
# ================================================================================================
def _scalar_or_array(x: np.ndarray, scalar: bool):
    return float(x) if scalar else x


def galanti_bound(cdnv_value, m, classes=2):
    """(C' − 1)·CDNV·(1 + 1/m): the published few-shot form with its hidden constant set to 1.

    CDNV = Avg_{i≠j} (v_i + v_j)/(2‖μ_i − μ_j‖²) (Galanti et al. 2022, Def. 1). Up to constants only.
    """
    scalar = np.ndim(cdnv_value) == 0 and np.ndim(m) == 0 and np.ndim(classes) == 0
    c, mm, k = np.broadcast_arrays(np.asarray(cdnv_value, float), np.asarray(m, float), np.asarray(classes, float))
    return _scalar_or_array((k - 1.0) * c * (1.0 + 1.0 / mm), scalar)


def _old_coefficients(alpha, beta, m):
    A = 2.0 + 2.0**1.5 / m
    B = 0.25 * (2.0 * np.sqrt(beta / m) + 2.0 * beta / np.sqrt(m) + beta / m)
    return A, B


def luthra_old_optimal_a(alpha, beta, m):
    """The minimiser a* of E(a) = α(½ − A/a)⁻² + B·a over a ≥ 5 (closed form; inf when B = 0).

    dE/da = 0 ⇔ B(a − 2A)³ = 16αA·a; with y = a − 2A and F = 2αA/B this is the depressed cubic
    y³ − 8F·y − 16F·A = 0, whose positive root is (Cardano) y* = ∛(8F(A + √(A² − 8F/27))) +
    ∛(8F(A − √(A² − 8F/27))) when A² ≥ 8F/27, else (trigonometric) y* = 4√(2F/3)·cos(⅓·arccos(3A√(3/(8F)))).
    a* = max(5, 2A + y*), as in the authors' code.
    """
    scalar = np.ndim(alpha) == 0 and np.ndim(beta) == 0 and np.ndim(m) == 0
    al, be, mm = (np.asarray(x, float) for x in np.broadcast_arrays(alpha, beta, m))
    A, B = _old_coefficients(al, be, mm)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        F = np.where(B > 0, 2.0 * al * A / np.where(B > 0, B, 1.0), np.inf)
        disc = A * A - 8.0 * F / 27.0
        root = np.sqrt(np.where(disc >= 0, disc, 0.0))
        y_cardano = np.cbrt(8.0 * F * (A + root)) + np.cbrt(8.0 * F * (A - root))
        arg = np.clip(3.0 * A * np.sqrt(3.0 / (8.0 * np.where(F > 0, F, 1.0))), -1.0, 1.0)
        y_trig = 4.0 * np.sqrt(2.0 * F / 3.0) * np.cos(np.arccos(arg) / 3.0)
        y = np.where(disc >= 0, y_cardano, y_trig)
        a = np.maximum(5.0, 2.0 * A + y)
        a = np.where(B > 0, a, np.inf)
    return _scalar_or_array(a, scalar)


def luthra_old_bound(alpha, beta, m, classes=2):
    """Luthra et al. (2025) "old" directional-CDNV bound at the optimal a, times (C' − 1) for C' = ``classes``.

    2-way value E(a*) = α(½ − A/a*)⁻² + B·a*, A = 2 + 2^{3/2}/m, B = ¼(2√(β/m) + 2β/√m + β/m),
    α = directional CDNV, β = CDNV (see :func:`luthra_old_optimal_a` for a*). Limits: B = 0 (β = 0)
    gives 4α (a* → ∞); α = 0 gives B·a* with a* = max(5, 2A) (the infimum as a ↓ 2A).
    With ``classes`` = C' the C'-way bound is (C' − 1)·E(a*). Array inputs broadcast.
    """
    scalar = np.ndim(alpha) == 0 and np.ndim(beta) == 0 and np.ndim(m) == 0 and np.ndim(classes) == 0
    al, be, mm, k = (np.asarray(x, float) for x in np.broadcast_arrays(alpha, beta, m, classes))
    A, B = _old_coefficients(al, be, mm)
    a = np.asarray(luthra_old_optimal_a(al, be, mm), float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        coef = 0.5 - A / a
        lead = np.where(al > 0, al / (coef * coef), 0.0)
        value = np.where(B > 0, lead + B * a, 4.0 * al)
    return _scalar_or_array((k - 1.0) * value, scalar)


def luthra_new_pair_terms(vtilde, V, theta, v_i, v_j, d2, m):
    """Per ordered pair (i, j) term of Luthra et al. (2026) Thm 4.1.

    [4Ṽ_ij + (√E¹ + √E² + √E³)²] / (1 + (v_j − v_i)/(m·d_ij²))², with E¹ = (4/m)(V_ij² + V_ij/4),
    E² = V_ij/m, E³ = (Θ_ij + 2(m − 1)V_ij²)/m³. Ṽ_ij directional CDNV of class i towards j,
    V_ij = (v_i + v_j)/d_ij² (unhalved), Θ_ij = (M4_i + M4_j)/d_ij⁴, d2 = d_ij².

    The denominator is the squared relative expected margin E‖x − μ̂_j‖² − E‖x − μ̂_i‖² = d_ij² + (v_j − v_i)/m
    over d_ij²; the Chebyshev step needs it positive, so a pair with 1 + (v_j − v_i)/(m d_ij²) ≤ 0 gets
    +inf (no bound from the theorem; the caller may use the trivial bound 1 for that pair probability).
    """
    vt, VV, th, vi, vj, dd = (np.asarray(x, float) for x in np.broadcast_arrays(vtilde, V, theta, v_i, v_j, d2))
    m = float(m)
    e1 = (4.0 / m) * (VV * VV + 0.25 * VV)
    e2 = VV / m
    e3 = (th + 2.0 * (m - 1.0) * VV * VV) / m**3
    num = 4.0 * vt + (np.sqrt(e1) + np.sqrt(e2) + np.sqrt(e3)) ** 2
    base = 1.0 + (vj - vi) / (m * dd)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 0, num / (base * base), np.inf)


def luthra_new_bound(vtilde, V, theta, v_i, v_j, d2, m, classes=None) -> float:
    """Luthra et al. (2026) Thm 4.1: err ≤ (1/C') Σ_i Σ_{j≠i} pair term (:func:`luthra_new_pair_terms`).

    Inputs are flat arrays over the C'(C' − 1) ordered pairs; ``classes`` = C' (inferred from the number
    of pairs when None). As m → ∞ the value tends to (1/C') Σ 4Ṽ_ij = 4(C' − 1)·mean Ṽ.
    """
    terms = np.ravel(luthra_new_pair_terms(vtilde, V, theta, v_i, v_j, d2, m))
    if classes is None:
        c = (1.0 + math.sqrt(1.0 + 4.0 * terms.size)) / 2.0
        if terms.size == 0 or c != round(c):
            raise ValueError(f"{terms.size} pair terms is not C'(C'−1) for any class count C'; pass classes=.")
        classes = int(round(c))
    return float(terms.sum() / classes)


# ================================================================================================
# statistics → per-pair quantities
# ================================================================================================
@dataclass
class _Split:
    name: str
    summary: SplitSummary
    present: torch.Tensor  # (K_all,) bool
    counts: np.ndarray  # (K,) float64, present classes
    sq_dev: np.ndarray  # (K,)
    d2: np.ndarray  # (K, K) squared mean distances

    @property
    def K(self) -> int:
        return int(self.counts.size)


def _geometry(name: str, summary: SplitSummary) -> _Split:
    """Present classes of one split with their counts, sums of squares and squared mean distances."""
    stats = summary.stats
    present = stats.counts > 0
    K = int(present.sum())
    if K < 2:
        raise _no_delta(f"the {name} split has {K} class(es) with samples; an NCC bound needs at least two.")
    means = stats.means[present].to(torch.float64)
    centered = means - means.mean(0)  # distances from the Gram of centered means (offset removed first)
    gram = centered @ centered.T
    diag = gram.diagonal()
    d2 = (diag.unsqueeze(0) + diag.unsqueeze(1) - 2.0 * gram).clamp(min=0.0).cpu().numpy()
    off = ~np.eye(K, dtype=bool)
    if (d2[off] <= 0).any():
        raise _no_delta(f"two class means of the {name} split coincide, so the CDNV-type ratios are undefined.")
    return _Split(name, summary, present, stats.counts[present].to(torch.float64).cpu().numpy(),
                  stats.sq_dev[present].cpu().numpy(), d2)


def _no_delta(reason: str, inputs: dict | None = None) -> NotApplicable:
    """These bounds have no confidence step, so their results (applicable or not) carry no δ."""
    return NotApplicable(reason, inputs, delta=None)


def _choose_split(ctx: BoundContext, opts: CollapseBoundOptions) -> _Split:
    name = opts.split
    if name not in ("train", "test"):
        raise _no_delta(f"bound option split must be 'train' or 'test', not {name!r}.")
    return _geometry(name, getattr(ctx, name))


def _shots(ctx: BoundContext) -> list[int]:
    if ctx.options.shots:
        shots = [int(m) for m in ctx.options.shots]
    else:
        if not bool((ctx.train.stats.counts > 0).any()):
            raise _no_delta("the training split has no samples, so there is no default shot count; pass --shots.")
        shots = [ctx.samples_per_class]
    bad = [m for m in shots if m < 1]
    if bad:
        raise _no_delta(f"shot counts must be positive integers, got {bad}.")
    return shots


def _pair_forms(split: _Split) -> np.ndarray | None:
    """(μ_j − μ_i)ᵀ S_i (μ_j − μ_i) over present classes (K×K), from the replay or per-class scatter."""
    projected: ProjectedStats | None = split.summary.projected
    stats = split.summary.stats
    idx = torch.nonzero(split.present).squeeze(1)
    if projected is not None:
        return projected.pair_forms[idx][:, idx].clamp(min=0.0).cpu().numpy()
    if stats.scatter_mode == "per-class":
        means = stats.means[idx].to(torch.float64)
        scatter = stats.scatter[idx]
        out = np.empty((len(idx), len(idx)))
        for a in range(len(idx)):
            diff = means - means[a]
            out[a] = ((diff @ scatter[a]) * diff).sum(1).clamp(min=0.0).cpu().numpy()
        return out
    return None


def _small_m_note(shots: list[int]) -> str | None:
    small = [m for m in shots if m < _REPORTED_MIN_M]
    if not small:
        return None
    return (f"m = {', '.join(map(str, small))} is below m = {_REPORTED_MIN_M}, which a third-party reimplementation "
            f"requires for this result; we could not confirm that condition in the paper, so read these values with care.")


# ================================================================================================
# bounds
# ================================================================================================
@register(bounds=_BOUNDS, status="up-to-constants", group="collapse", reference=REF_GALANTI, options=CollapseBoundOptions)
def galanti2022(ctx: BoundContext, opts: CollapseBoundOptions) -> Evaluation:
    """Galanti, György & Hutter (2022, ICLR) CDNV bound on the expected m-shot NCC error.

    Formula (published form, hidden constant set to 1):  err ≲ (C' − 1)·CDNV·(1 + 1/m), with
    CDNV = mean over i<j of (v_i + v_j)/(2‖μ_i − μ_j‖²) (Galanti et al. 2022, Def. 1; = the canonical
    ``cdnv`` metric) and C' the number of classes of the evaluated split.
    Status: ``up-to-constants`` — the paper states the few-shot bound with ≲, i.e. up to an absolute
    constant, and we could not confirm the explicit constant (nor the proposition number) of its
    appendix; the value is therefore a scale, not a guaranteed upper bound. It is also plug-in
    (population CDNV replaced by the split's estimate).
    """
    split = _choose_split(ctx, opts)
    shots = _shots(ctx)
    beta = cdnv(split.summary.stats)
    if beta is None:
        raise _no_delta(f"the CDNV of the {split.name} split is undefined (fewer than two classes or coinciding means).",
                            {"split": split.name})
    per_m = {str(m): galanti_bound(beta, m, split.K) for m in shots}
    return Evaluation(
        per_m[str(shots[0])], delta=None,
        inputs={"split": split.name, "shots": shots, "classes": split.K, "cdnv": beta},
        reason=("the published few-shot bound holds up to an absolute constant (≲) that we could not confirm; "
                "this is (C'−1)·CDNV·(1+1/m) with that constant set to 1, a scale rather than a guaranteed bound."),
        details={"per_m": per_m, "formula": "(C'-1)*CDNV*(1+1/m)"},
    )


@register(bounds=_BOUNDS, status="plug-in", group="collapse", reference=REF_LUTHRA_OLD, options=CollapseBoundOptions)
def luthra_old(ctx: BoundContext, opts: CollapseBoundOptions) -> Evaluation:
    """Luthra, Yang & Galanti (2025, NeurIPS, Prop. 1) directional-CDNV bound at its optimal a.

    Formula: 2-way E(a*) = α(½ − A/a*)⁻² + B·a*, A = 2 + 2^{3/2}/m, B = ¼(2√(β/m) + 2β/√m + β/m),
    a* the closed-form root of the depressed cubic y³ − 8F·y − 16F·A = 0 (y = a − 2A, F = 2αA/B),
    a* = max(5, 2A + y*), as in the authors' ``old_bound_core.py``; α = directional CDNV (mean over
    ordered pairs of u_ijᵀΣ_i u_ij/‖μ_i − μ_j‖², biased Σ_i) and β = CDNV (halved, biased), both as in
    ``ncbounds.metrics.collapse`` and in the authors' ``geometry.py`` (compute_cdnv /
    compute_directional_cdnv). The C'-way bound reported as ``value`` is (C' − 1)·E(a*) (union over the
    C' − 1 competitors); ``details['per_m'][m]['two_way']`` is the published 2-way number.
    Status: ``plug-in`` — rigorous for the population α, β; here the split's estimates are used.
    Reproduces the published values 29.11436, 8.19605, …, 1.45917 (m = 1 … 500) for the reference α, β.
    """
    split = _choose_split(ctx, opts)
    shots = _shots(ctx)
    stats = split.summary.stats
    alpha = directional_cdnv(stats, projected=split.summary.projected)
    beta = cdnv(stats)
    if alpha is None or beta is None:
        raise _no_delta(f"the directional CDNV of the {split.name} split needs per-class directional variances "
                            "(a span-restricted replay or per-class scatter matrices), which were not collected.",
                            {"split": split.name})
    per_m = {}
    for m in shots:
        two_way = luthra_old_bound(alpha, beta, m, classes=2)
        per_m[str(m)] = {"value": (split.K - 1) * two_way, "two_way": two_way, "a_opt": luthra_old_optimal_a(alpha, beta, m)}
    return Evaluation(
        per_m[str(shots[0])]["value"], delta=None,
        inputs={"split": split.name, "shots": shots, "classes": split.K, "directional_cdnv": alpha, "cdnv": beta},
        reason=_small_m_note(shots),
        details={"per_m": per_m, "multiclass_factor": split.K - 1, "limit_m_inf_two_way": 4.0 * alpha},
    )


def luthra_new_inputs(split_summary: SplitSummary, moments: ClassMoments | None, name: str = "test") -> dict[str, np.ndarray]:
    """Per ordered pair (i ≠ j, present classes) inputs of Thm 4.1 from one split's statistics.

    Conventions as in the authors' ``eval_utils/geometry.py``: Σ_i and v_i = tr Σ_i use the unbiased
    (n_i − 1) normalisation, so Ṽ_ij = pair_forms[i, j]/((n_i − 1)·d_ij⁴) and v_i = sq_dev_i/(n_i − 1);
    M4_i = (1/n_i)·Σ‖x − μ_i‖⁴ (plain mean); V_ij = (v_i + v_j)/d_ij²; Θ_ij = (M4_i + M4_j)/d_ij⁴.
    Raises ``NotApplicable`` when a needed statistic is missing.
    """
    holder = _geometry(name, split_summary)
    stats = split_summary.stats
    present, K, d2 = holder.present, holder.K, holder.d2
    off = ~np.eye(K, dtype=bool)
    n = holder.counts
    if (n < 2).any():
        raise _no_delta(f"a class of the {name} split has a single sample, so its unbiased covariance "
                             "(n − 1 normalisation, as in Thm 4.1's reference code) is undefined.")
    forms = _pair_forms(holder)
    if forms is None:
        raise _no_delta("Ṽ_ij needs per-class directional variances (a span-restricted replay or per-class "
                             "scatter matrices), which were not collected.")
    if moments is None:
        raise _no_delta("the fourth-moment replay ('class_moments') was not collected for this split.")
    same_means = moments.means.shape == stats.means.shape and torch.equal(moments.means.cpu(), stats.means.to(torch.float64).cpu())
    if not same_means or not moments.complete:
        raise _no_delta("the fourth-moment replay does not match this split's class statistics (different means or sample counts).")
    m4 = moments.fourth_moment()[present].cpu().numpy()
    v = holder.sq_dev / (n - 1.0)
    i, j = np.nonzero(off)
    dd = d2[i, j]
    return {
        "vtilde": forms[i, j] / (n[i] - 1.0) / (dd * dd),
        "V": (v[i] + v[j]) / dd,
        "theta": (m4[i] + m4[j]) / (dd * dd),
        "v_i": v[i],
        "v_j": v[j],
        "d2": dd,
        "classes": np.asarray(K),
    }


@register(bounds=_BOUNDS, status="plug-in", group="collapse", reference=REF_LUTHRA_NEW, needs=(CLASS_MOMENTS,),
          options=CollapseBoundOptions)
def luthra_new(ctx: BoundContext, opts: CollapseBoundOptions) -> Evaluation:
    """Luthra, Salunkhe & Galanti (2026, arXiv:2603.03530) Thm 4.1: multiclass m-shot NCC bound.

    Formula: err ≤ (1/C') Σ_i Σ_{j≠i} [4Ṽ_ij + (√E¹_ij + √E²_ij + √E³_ij)²] / (1 + (v_j − v_i)/(m d_ij²))²,
    E¹ = (4/m)(V_ij² + V_ij/4), E² = V_ij/m, E³ = (Θ_ij + 2(m − 1)V_ij²)/m³, with d_ij = ‖μ_i − μ_j‖,
    Ṽ_ij = u_ijᵀΣ_i u_ij/d_ij² (unbiased Σ_i), v = tr Σ (unbiased), V_ij = (v_i + v_j)/d_ij² (unhalved),
    Θ_ij = (M4_i + M4_j)/d_ij⁴, M4 = E‖x − μ‖⁴ — exactly the conventions of the authors'
    ``new_bound_core.py`` / ``geometry.py`` (see :func:`luthra_new_inputs`). As m → ∞ it tends to
    4(C' − 1)·mean Ṽ (``details['limit_m_inf']``).
    A pair whose expected margin d_ij² + (v_j − v_i)/m is not positive is outside the theorem's
    Chebyshev step; its term (a probability) is then bounded by 1 and counted in
    ``details['per_m'][m]['pairs_without_margin']``.
    Status: ``plug-in`` — rigorous for population moments; here the split's estimates (means, unbiased
    covariances, fourth moments from the 'class_moments' replay) are plugged in.
    """
    try:
        split = _choose_split(ctx, opts)
        shots = _shots(ctx)
        inputs = luthra_new_inputs(split.summary, split.summary.extras.get(MOMENTS_KEY), split.name)
    except NotApplicable as exc:
        raise _no_delta(str(exc), {"split": opts.split}) from None
    K = int(inputs["classes"])
    args = [inputs[k] for k in ("vtilde", "V", "theta", "v_i", "v_j", "d2")]
    per_m = {}
    for m in shots:
        terms = luthra_new_pair_terms(*args, m)
        invalid = ~np.isfinite(terms)
        terms = np.where(invalid, 1.0, terms)
        lead = 4.0 * inputs["vtilde"]
        per_m[str(m)] = {
            "value": float(terms.sum() / K),
            "leading_term": float(lead.sum() / K),
            "pairs_without_margin": int(invalid.sum()),
        }
    limit = float(4.0 * inputs["vtilde"].sum() / K)
    return Evaluation(
        per_m[str(shots[0])]["value"], delta=None,
        inputs={"split": split.name, "shots": shots, "classes": K, "covariance": "unbiased (n-1)", "fourth_moment": "mean over n"},
        reason=_small_m_note(shots),
        details={"per_m": per_m, "limit_m_inf": limit, "mean_directional_cdnv_unbiased": float(inputs["vtilde"].mean())},
    )
