"""Neural-collapse bounds from decision-axis and class-moment statistics (group 'collapse').

- :func:`nc_split_certificate` / :func:`nc_split_certificate_ncc` — sample-split **certificates** on
  the population 0-1 error of the deployed linear head / of the nearest-class-center classifier
  with the training means, from the test split used as held-out data;
- :func:`nc_cantelli` — exact-variance one-sided Chebyshev (Cantelli) bound on the expected error of
  the m-shot NCC classifier (**plug-in**: the test split's class moments stand in for the
  population's);
- :func:`gaussian_ncc` — the Gaussian approximation of the same m-shot error (**predictor**).

The statistics come from two replay accumulators over the test split's penultimate features, which
the bounds request in their registration: ``decision_axes``
(:class:`~ncbounds.bounds.replay.decision_axes.DecisionAxisStats`) and ``pair_moments``
(:class:`~ncbounds.bounds.replay.pair_moments.PairMoments`). Every bound returns a result and never
raises: when its inputs are missing or its assumptions fail the result is ``not-applicable`` with the
reason.

Concentration inequalities used (all for i.i.d. variables):

- Hoeffding (1963), "Probability inequalities for sums of bounded random variables", JASA 58,
  Theorem 2: X_k ∈ [a, b] ⇒ P(X̄ − E X ≤ −ε) ≤ exp(−2nε²/(b − a)²).
- Maurer & Pontil (2009), "Empirical Bernstein bounds and sample variance penalization", COLT,
  Theorem 10 (eq. 3): X_k ∈ [0, 1], n ≥ 2, V_n the unbiased sample variance
  (1/(n(n−1)))·Σ_{k<l}(X_k − X_l)² ⇒ P(σ > √V_n + √(2 ln(1/δ)/(n − 1))) ≤ δ. For X_k ∈ [a, b] apply it
  to (X − a)/(b − a): σ ≤ √V_n + (b − a)·√(2 ln(1/δ)/(n − 1)).
- Bhatia & Davis (2000), "A better bound on the variance", Amer. Math. Monthly 107(4), Thm 1:
  X ∈ [a, b], E X = s ⇒ Var X ≤ (b − s)(s − a).
- Cantelli's (one-sided Chebyshev) inequality: for s > 0, P(X − E X ≤ −s) ≤ σ²/(σ² + s²)
  (e.g. Boucheron, Lugosi & Massart 2013, Concentration Inequalities, Exercise 2.3).
- Weissman, Ordentlich, Seroussi, Verdú & Weinberger (2003), "Inequalities for the L1 deviation of
  the empirical distribution", HP Labs HPL-2003-97, Theorem 2.1: for the empirical distribution π̂ of
  n i.i.d. draws from π on K symbols, P(‖π − π̂‖₁ ≥ ε) ≤ (2^K − 2)·exp(−nε²/2).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import ndtr

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext
from ncbounds.bounds.replay.decision_axes import DECISION_AXES, DecisionAxisStats
from ncbounds.bounds.replay.pair_moments import PAIR_MOMENTS, PAIR_MOMENTS_BUDGET_BYTES, PairMoments, pair_moments_bytes

__all__ = [
    "PRIOR_DELTA_SHARE",
    "gaussian_ncc",
    "mshot_ncc_moments",
    "nc_cantelli",
    "nc_split_certificate",
    "nc_split_certificate_ncc",
    "split_certificate",
    "worst_case_mixture",
]

#: Share of δ spent on the class-frequency (multinomial L1) step of the split certificate; the rest
#: is split equally among the per-pair Hoeffding / empirical-Bernstein estimates.
PRIOR_DELTA_SHARE = 0.25

#: Largest K for which per-class / per-pair tables are copied into ``details``.
_DETAIL_MAX_K = 100

_SPLIT_REFERENCE = (
    "sample-split certificate from held-out features: Hoeffding 1963 Thm 2 (mean of the "
    "bounded decision-axis projection); Maurer & Pontil 2009 Thm 10 (standard deviation); Bhatia & "
    "Davis 2000 (variance of a bounded variable); Cantelli's one-sided Chebyshev inequality; "
    "Weissman et al. 2003 Thm 2.1 (class frequencies); union bound over all estimates"
)
_CANTELLI_REFERENCE = (
    "exact mean and variance of Z = ‖x − μ̂_j‖² − ‖x − μ̂_i‖² for the m-shot NCC (derived in the "
    "docstring; cf. the few-shot NCC analysis of Galanti, György & Hutter 2022) + Cantelli's "
    "one-sided Chebyshev inequality, union over competitors"
)


# ------------------------------------------------------------------------------------------------
# helpers


def _not_applicable(reason: str) -> NotApplicable:
    """This module's bounds report on the test split and carry no δ when they do not apply."""
    return NotApplicable(reason, {"split": "test"}, delta=None)


def _log_two_pow_minus_two(K: int) -> float:
    """ln(2^K − 2) for K ≥ 2 without overflow: K ln 2 + ln(1 − 2^{1−K})."""
    return K * math.log(2.0) + math.log1p(-(2.0 ** (1 - K)))


def worst_case_mixture(pi_hat: np.ndarray, B: np.ndarray, eps: float) -> float:
    """sup { Σ_i π_i B_i : π a probability vector, ‖π − π̂‖₁ ≤ ε } (exact, O(K log K)).

    Derivation: write π − π̂ = u − v with u, v ≥ 0 of disjoint support; Σu = Σv =: a ≤ ε/2 and
    v ≤ π̂. Then Σ(π − π̂)B = Σ u B − Σ v B ≤ a·max B − (least Σ v B over v ≤ π̂, Σv = a), and the
    least value takes mass a from the classes of smallest B first (greedy). Each unit of mass moved
    from class k to argmax B gains max B − B_k ≥ 0, so the sup takes a = min(ε/2, Σ π̂) and is
    attained by that greedy transfer. In particular it is ≤ Σ π̂B + (ε/2)(max B − min B) ≤ Σ π̂B + ε/2,
    the Hölder form |Σ(π − π̂)B| ≤ ½‖π − π̂‖₁ for B ∈ [0, 1]^K.
    """
    pi_hat = np.asarray(pi_hat, np.float64)
    B = np.asarray(B, np.float64)
    base = float(pi_hat @ B)
    top = float(B.max())
    budget = max(0.0, eps / 2.0)
    gain = 0.0
    for k in np.argsort(B, kind="stable"):
        if budget <= 0:
            break
        take = min(budget, float(pi_hat[k]))
        gain += take * (top - float(B[k]))
        budget -= take
    return base + gain


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------
# 1. sample-split certificate


def split_certificate(das: DecisionAxisStats, rule: str, delta: float,
                      prior_share: float = PRIOR_DELTA_SHARE) -> dict[str, Any]:
    """The certificate of :func:`nc_split_certificate` for one rule of a fed DecisionAxisStats.

    Returns a dict with ``value`` (the bound, ≤ 1), the δ split (``delta_priors``,
    ``delta_estimates``, ``delta_per_estimate``, ``n_estimates``), the mixture terms
    (``plug_in_mixture`` = Σ π̂_i B_i, ``l1_radius`` ε, ``mixture_bound``) and the K×K / K tables
    ``s_hat``, ``s_lower``, ``var_upper``, ``pair_term``, ``class_bound`` (numpy).
    See :func:`nc_split_certificate` for the derivation.
    """
    r = das.rules[rule]
    K = das.num_classes
    n_cls = _np(das.class_counts).astype(np.int64)
    N = int(n_cls.sum())
    R = _np(r.dw_norm)
    degenerate = _np(r.degenerate)
    db = _np(r.db)
    active = _np(r.active).astype(bool)
    certify = _np(r.certify).astype(bool)
    n = _np(das.pair_count[rule]).astype(np.float64)
    s_hat = _np(das.pair_mean[rule])
    m2 = _np(das.pair_m2[rule])

    off = ~np.eye(K, dtype=bool)
    competitor = off & active[None, :]          # j can be predicted by the rule
    row_ok = (certify & (n_cls >= 1))[:, None]  # class i seen in the held-out split, predictable
    estimated = competitor & row_ok & ~degenerate
    with_var = estimated & (n >= 2)
    n_estimates = int(estimated.sum() + with_var.sum())
    delta_priors = prior_share * delta
    delta_estimates = delta - delta_priors
    delta_e = delta_estimates / n_estimates if n_estimates else delta_estimates
    L = math.log(1.0 / delta_e)

    with np.errstate(divide="ignore", invalid="ignore"):
        # Hoeffding (range width 2R): s ≥ ŝ − 2R·√(ln(1/δ_e)/(2n)) = ŝ − R·√(2 ln(1/δ_e)/n)
        s_lower = np.where(estimated, s_hat - R * np.sqrt(2.0 * L / np.maximum(n, 1.0)), np.nan)
        # Maurer–Pontil Thm 10 (range width 2R): σ ≤ √V + 2R·√(2 ln(1/δ_e)/(n − 1))
        var_unbiased = np.where(n >= 2, m2 / np.maximum(n - 1.0, 1.0), np.nan)
        sigma_up = np.sqrt(np.maximum(var_unbiased, 0.0)) + 2.0 * R * np.sqrt(2.0 * L / np.maximum(n - 1.0, 1.0))
        # Bhatia–Davis on [−R, R] with s ≥ s_L > 0: Var ≤ (R − s)(R + s) = R² − s² ≤ R² − s_L²
        bhatia_davis = R * R - s_lower * s_lower
        var_up = np.where(with_var, np.minimum(sigma_up * sigma_up, bhatia_davis), bhatia_davis)
        var_up = np.where(estimated, np.maximum(var_up, 0.0), np.nan)
        cantelli = np.where(s_lower > 0, var_up / (var_up + s_lower * s_lower), 1.0)
    pair = np.zeros((K, K))
    pair[estimated] = cantelli[estimated]
    det = competitor & degenerate               # constant margin Δb: decided without data
    pair[det] = np.where(db[det] > 0, 0.0, 1.0)
    class_bound = np.minimum(1.0, pair.sum(1))
    class_bound[~row_ok[:, 0]] = 1.0            # unseen in the held-out split, or never predicted

    pi_hat = n_cls / N
    eps = math.sqrt(2.0 * (_log_two_pow_minus_two(K) + math.log(1.0 / delta_priors)) / N)
    mixture = worst_case_mixture(pi_hat, class_bound, eps)
    return {
        "value": min(1.0, mixture),
        "plug_in_mixture": float(pi_hat @ class_bound),
        "mixture_bound": mixture,
        "l1_radius": eps,
        "delta": delta,
        "delta_priors": delta_priors,
        "delta_estimates": delta_estimates,
        "delta_per_estimate": delta_e,
        "n_estimates": n_estimates,
        "n_estimates_max": 2 * K * (K - 1),
        "n": N,
        "class_counts": n_cls,
        "s_hat": s_hat,
        "s_lower": s_lower,
        "var_upper": var_up,
        "range": R,
        "pair_term": pair,
        "class_bound": class_bound,
        "uninformative_pairs": int((estimated & ~(s_lower > 0)).sum()),
    }


def _split_certificate_result(ctx: BoundContext, rule: str) -> Evaluation:
    try:
        if ctx.num_classes < 2:
            raise _not_applicable(f"needs K ≥ 2 classes (K = {ctx.num_classes}).")
        das = ctx.test.extras.get("decision_axes")
        if das is None:
            raise _not_applicable("the decision-axis replay of the test split ('decision_axes') was not collected.")
        if rule not in das.rules:
            why = ("no linear head (features without a classifier): only the NCC variant applies." if rule == "head"
                   else "no training class means to build the nearest-class-center classifier.")
            raise _not_applicable(why)
        if int(das.class_counts.sum()) == 0:
            raise _not_applicable("the test split is empty.")
        delta = float(ctx.options.delta)
        if not 0.0 < delta < 1.0:
            raise _not_applicable(f"delta must lie in (0, 1), got {delta}.")
        out = split_certificate(das, rule, delta)
    except NotApplicable:
        raise
    except Exception as exc:  # a bound never fails the report: it says why instead
        raise _not_applicable(f"could not be computed: {exc}") from None
    K = das.num_classes
    inputs = {
        "split": "test (held out: the classifier is fixed before it is seen)",
        "classifier": "linear head (W, b)" if rule == "head" else "NCC with the training class means",
        "center": "mean of the training class means" if bool((das.rules[rule].center != 0).any()) else "origin",
        "delta": out["delta"],
        "delta_priors": out["delta_priors"],
        "delta_estimates": out["delta_estimates"],
        "delta_per_estimate": out["delta_per_estimate"],
        "n_estimates": out["n_estimates"],
        "n": out["n"],
    }
    details = {
        "plug_in_mixture": out["plug_in_mixture"],
        "l1_radius": out["l1_radius"],
        "mixture_bound": out["mixture_bound"],
        "n_estimates_max": out["n_estimates_max"],
        "uninformative_pairs": out["uninformative_pairs"],
        "max_class_bound": float(out["class_bound"].max()),
        "delta_split": (f"{out['delta_priors']:.3g} on class frequencies (Weissman L1) + {out['delta_estimates']:.3g} "
                        f"over {out['n_estimates']} pair estimates ({out['delta_per_estimate']:.3g} each)"),
    }
    if K <= _DETAIL_MAX_K:
        details["class_bound"] = out["class_bound"].tolist()
        details["class_counts"] = out["class_counts"].tolist()
    return Evaluation(out["value"], delta=out["delta"], inputs=inputs, details=details)


_MSHOT_BOUNDS = "expected m-shot NCC error"
_HEAD_BOUNDS = "population 0-1 error of the deployed linear head"
_NCC_BOUNDS = "population 0-1 error of the nearest-class-center classifier with the training means"


@register(bounds=_HEAD_BOUNDS, status="certificate", reference=_SPLIT_REFERENCE, group="collapse", needs=(DECISION_AXES,),
          certifies="network", evidence="test")
def nc_split_certificate(ctx: BoundContext) -> Evaluation:
    """Sample-split certificate on the population 0-1 error of the deployed linear head.

    Status: ``certificate`` — with probability ≥ 1 − δ (δ = ``ctx.options.delta``) over the test
    split, the population error of the head is ≤ the value, because the head is fixed before the
    test split is seen and every confidence step below is paid out of δ.

    Setting. Test pairs (x, y) i.i.d. from the population; π_i = P(y = i), P_i the class-i feature
    law. For a class-i sample and competitor j, the margin g_ij(x) = (w_i − w_j)ᵀx + b_i − b_j ≤ 0
    is necessary for an error towards j (ties count as errors). Its bounded, sign-preserving
    normalization t_ij(x) = g_ij(x)/(‖x − o‖ + |g_ij(o)|/‖Δw‖) ∈ [−R_ij, R_ij], R_ij = ‖w_i − w_j‖
    (proof in ``ncbounds/bounds/replay/decision_axes.py``; o = mean of the training class means, fixed
    before the test data) has {g_ij ≤ 0} = {t_ij ≤ 0}.

    Formula. Conditionally on the test labels, the n_i class-i features are i.i.d. from P_i, so
    with s_ij = E_i[t_ij], σ²_ij = Var_i[t_ij], ŝ, V̂ the sample mean and unbiased variance:

      s_ij ≥ s⁻_ij = ŝ_ij − R_ij·√(2 ln(1/δ_e)/n_i)                       (Hoeffding, Thm 2)
      σ_ij ≤ √V̂_ij + 2R_ij·√(2 ln(1/δ_e)/(n_i − 1))                     (Maurer–Pontil, Thm 10)
      σ²_ij ≤ R²_ij − (s⁻_ij)²  when s⁻_ij > 0                          (Bhatia–Davis)

    and with σ²⁺ the smaller of the two variance bounds (only Bhatia–Davis when n_i = 1), Cantelli
    gives P_i(t_ij ≤ 0) ≤ p_ij = σ²⁺/(σ²⁺ + (s⁻)²) when s⁻ > 0 (p_ij = 1 otherwise) — valid because
    σ²/(σ² + s²) increases in σ² and decreases in s > 0. Pairs with Δw = 0 have a constant margin:
    p_ij = 0 if Δb > 0 else 1, no estimate needed. The per-class error is ≤ B_i = min(1, Σ_{j≠i} p_ij)
    (union over competitors); B_i = 1 for classes absent from the test split.
    Overall error = Σ_i π_i·err_i ≤ sup{Σ π_i B_i : ‖π − π̂‖₁ ≤ ε} (computed exactly by
    :func:`worst_case_mixture`; ≤ Σ π̂_i B_i + ε/2), with ε = √(2(ln(2^K − 2) + ln(1/δ_π))/n)
    (Weissman et al. 2003, Thm 2.1).

    δ split (reported in ``inputs``): δ_π = ¼δ for the class frequencies; the remaining ¾δ is
    divided equally among the estimates actually made — one Hoeffding step per ordered pair (i, j)
    with n_i ≥ 1 and Δw ≠ 0, plus one variance step when n_i ≥ 2 (at most 2K(K−1)). Choosing that
    set from the labels is legitimate because the per-pair inequalities hold conditionally on the
    labels; so P(any step fails) ≤ δ_π + ¾δ = δ.
    """
    return _split_certificate_result(ctx, "head")


@register(bounds=_NCC_BOUNDS, status="certificate", reference=_SPLIT_REFERENCE, group="collapse", needs=(DECISION_AXES,),
          evidence="test")
def nc_split_certificate_ncc(ctx: BoundContext) -> Evaluation:
    """Sample-split certificate on the population 0-1 error of NCC with the training class means.

    Status: ``certificate`` (as :func:`nc_split_certificate`): the training means μ̂ are fixed before
    the test split is seen. NCC is the affine rule with Δw = 2(μ̂_i − μ̂_j) and
    Δb = ‖μ̂_j‖² − ‖μ̂_i‖², since ‖x − μ̂_j‖² − ‖x − μ̂_i‖² = Δwᵀx + Δb (the ‖x‖² cancels); ties
    count as errors. Classes absent from the training split are never predicted: they are not
    competitors, and their own samples count as errors (B_i = 1). When the replay was not told which
    training classes are present, an all-zero training mean is read conservatively both ways (a
    competitor of every class, and B_i = 1 for its own class). Everything else — formula,
    references, δ split — is that of :func:`nc_split_certificate`.
    """
    return _split_certificate_result(ctx, "ncc")


# ------------------------------------------------------------------------------------------------
# 2./3. m-shot NCC: exact moments, Cantelli bound and Gaussian predictor


def mshot_ncc_moments(moments: dict[str, np.ndarray], m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact E[Z_ij] and Var[Z_ij] of the m-shot NCC margin for all ordered pairs of present classes.

    Setting. Class c has mean μ_c and noise law e ~ P_c (E e = 0, covariance Σ_c, third-moment
    vector τ_c = E[e‖e‖²], fourth moment κ_c = E‖e‖⁴). The m-shot NCC estimates each class mean
    from m fresh samples, μ̂_c = μ_c + ē_c (ē_c the average of m i.i.d. noises of class c), and a
    test point x = μ_i + e of class i (independent of the support sets) is misclassified towards j
    only if Z = ‖x − μ̂_j‖² − ‖x − μ̂_i‖² ≤ 0.

    Derivation. With Δ = μ_i − μ_j, u = ē_i, v = ē_j (e, u, v independent, mean 0):
        Z = ‖Δ + e − v‖² − ‖e − u‖² = ‖Δ‖² + 2Δᵀe − 2Δᵀv + ‖v‖² − ‖u‖² + 2eᵀu − 2eᵀv
    (‖e‖² cancels). Since E‖v‖² = tr Σ_j/m and E‖u‖² = tr Σ_i/m,

        E[Z] = ‖Δ‖² + (tr Σ_j − tr Σ_i)/m.

    Centre the six terms: T1 = 2Δᵀe, T2 = −2Δᵀv, T3 = ‖v‖² − tr Σ_j/m, T4 = −(‖u‖² − tr Σ_i/m),
    T5 = 2eᵀu, T6 = −2eᵀv. Every cross moment E[T_a T_b] that contains a factor of mean zero
    independent of the rest vanishes — all of them except E[T2 T3] = −2E[(Δᵀv)‖v‖²]. For the
    average v of m i.i.d. centred f_k, E[(Δᵀv)‖v‖²] = m⁻³ Σ_{k,l,p} E[(Δᵀf_k)(f_lᵀf_p)] = Δᵀτ_j/m²
    (only k = l = p survives). The squares: E T1² = 4ΔᵀΣ_iΔ, E T2² = 4ΔᵀΣ_jΔ/m,
    E T5² = 4E[uᵀΣ_i u] = 4 tr(Σ_i²)/m, E T6² = 4 tr(Σ_iΣ_j)/m, and
    Var‖v‖² = m⁻⁴ Σ_{klpq} E[(f_kᵀf_l)(f_pᵀf_q)] − (tr Σ/m)², where only k=l=p=q (m terms, κ),
    k=l≠p=q ((tr Σ)²) and k=p≠l=q, k=q≠l=p (tr Σ² each) survive (m(m−1) terms each):

        V_m(c) = Var‖ē_c‖² = [κ_c − (tr Σ_c)² + 2(m − 1) tr Σ_c²] / m³

    (m = 1: Var‖e‖²; Gaussian: κ = (tr Σ)² + 2 tr Σ² gives 2 tr Σ²/m²). Altogether

        Var[Z] = 4ΔᵀΣ_iΔ + (4/m)ΔᵀΣ_jΔ + (4/m)(tr Σ_i² + tr(Σ_iΣ_j)) + V_m(i) + V_m(j) − (4/m²)Δᵀτ_j.

    The third moments of the test point's own class do not enter (its ‖e‖² cancels). The formula is
    checked against Monte Carlo on skewed, non-Gaussian classes in ``tests/test_nc_certificates.py``.

    Returns (E, Var, present) with E, Var K×K (NaN off the present classes, 0 on the diagonal) and
    present the K-mask of classes with moments.
    """
    if m < 1:
        raise ValueError(f"m must be a positive integer, got {m}")
    present = np.asarray(moments["present"], bool)
    tr = moments["trace"]
    tr_sq = moments["trace_sq"]
    kappa = moments["fourth"]
    with np.errstate(invalid="ignore"):
        V = (kappa - tr * tr + 2.0 * (m - 1) * tr_sq) / m**3
        E = moments["sq_dist"] + (tr[None, :] - tr[:, None]) / m
        Var = (4.0 * moments["quad"] + 4.0 * moments["quad"].T / m
               + 4.0 * (tr_sq[:, None] + moments["cross"]) / m
               + V[:, None] + V[None, :] - 4.0 * moments["third_pair"] / m**2)
    Var = np.where(np.isnan(Var), np.nan, np.maximum(Var, 0.0))  # a true variance; clip rounding
    np.fill_diagonal(E, 0.0)
    np.fill_diagonal(Var, 0.0)
    return E, Var, present


def _cantelli_terms(E: np.ndarray, Var: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(E > 0, Var / (Var + E * E), 1.0)
    return np.where(E > 0, np.where(Var > 0, term, 0.0), 1.0)


def _gaussian_terms(E: np.ndarray, Var: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(Var > 0, -E / np.sqrt(np.where(Var > 0, Var, 1.0)), 0.0)
    return np.where(Var > 0, ndtr(z), np.where(E > 0, 0.0, 1.0))


def _mshot_error(moments: dict[str, np.ndarray], m: int, terms) -> tuple[float, np.ndarray]:
    """Σ_i π̂_i·min(1, Σ_{j≠i} term(E_ij, Var_ij)) over present classes; returns (value, per-class)."""
    E, Var, present = mshot_ncc_moments(moments, m)
    idx = np.flatnonzero(present)
    Ep, Vp = E[np.ix_(idx, idx)], Var[np.ix_(idx, idx)]
    T = terms(Ep, Vp)
    np.fill_diagonal(T, 0.0)
    per_class = np.minimum(1.0, T.sum(1))
    counts = np.asarray(moments["counts"], np.float64)[idx]
    return float(min(1.0, counts @ per_class / counts.sum())), per_class


def _shots(ctx: BoundContext) -> tuple[int, list[int]]:
    shots = [int(s) for s in (ctx.options.shots or ())]
    m = shots[0] if shots else int(ctx.samples_per_class)
    return m, shots


def _mshot_result(ctx: BoundContext, terms) -> Evaluation:
    try:
        if ctx.num_classes < 2:
            raise _not_applicable(f"needs K ≥ 2 classes (K = {ctx.num_classes}).")
        pm: PairMoments | None = ctx.test.extras.get("pair_moments")
        if pm is None:
            K, d = int(ctx.test.stats.num_classes), int(ctx.test.stats.dim)
            if pair_moments_bytes(K, d) > PAIR_MOMENTS_BUDGET_BYTES:
                reason = (f"needs per-class covariances: K·d² too large (K = {K}, d = {d}: "
                          f"{pair_moments_bytes(K, d) / 2**20:.0f} MiB > {PAIR_MOMENTS_BUDGET_BYTES / 2**20:.0f} MiB budget).")
            else:
                reason = "the class-moment replay of the test split ('pair_moments') was not collected."
            raise _not_applicable(reason)
        moments = pm.moments()
        n_present = int(np.asarray(moments["present"]).sum())
        if n_present < 2:
            raise _not_applicable(f"needs at least 2 classes present in the test split (found {n_present}).")
        try:
            m, shots = _shots(ctx)
        except Exception:  # no training counts for the default m
            raise _not_applicable("no training samples to set the default m (pass shots).") from None
        if m < 1 or any(s < 1 for s in shots):
            raise _not_applicable(f"shots must be positive integers, got {shots or m}.")
        value, per_class = _mshot_error(moments, m, terms)
        per_shot = {str(s): _mshot_error(moments, s, terms)[0] for s in shots}
    except NotApplicable:
        raise
    except Exception as exc:  # a bound never fails the report: it says why instead
        raise _not_applicable(f"could not be computed: {exc}") from None
    K = len(per_class)
    inputs = {"split": "test (moments of its empirical class distributions)", "m": m,
              "m_rule": "options.shots[0]" if shots else "smallest training class count",
              "classes": n_present}
    details: dict[str, Any] = {"per_shots": per_shot, "mean_residual": pm.mean_residual()}
    if n_present < ctx.num_classes:
        details["note"] = f"{ctx.num_classes - n_present} class(es) absent from the test split are left out of the m-shot task"
    if K <= _DETAIL_MAX_K:
        details["class_terms"] = per_class.tolist()
    return Evaluation(value, delta=None, inputs=inputs, details=details)


@register(bounds=_MSHOT_BOUNDS, status="plug-in", reference=_CANTELLI_REFERENCE, group="collapse", needs=(PAIR_MOMENTS,))
def nc_cantelli(ctx: BoundContext) -> Evaluation:
    """Exact-variance Cantelli bound on the expected error of the m-shot nearest-class-center classifier.

    Formula: error ≤ Σ_i π_i·min(1, Σ_{j≠i} P(Z_ij ≤ 0)), P(Z_ij ≤ 0) ≤ Var Z_ij/(Var Z_ij + (E Z_ij)²)
    when E Z_ij > 0 (1 otherwise), with E, Var the exact moments of
    Z_ij = ‖x − μ̂_j‖² − ‖x − μ̂_i‖² derived in :func:`mshot_ncc_moments` (class means, covariances —
    tr Σ, tr Σ², tr(Σ_iΣ_j), ΔᵀΣΔ — third moments Δᵀτ_j and fourth moments E‖e‖⁴). The union over
    competitors and Cantelli's inequality make it a bound for any class distributions with finite
    fourth moments; ties count as errors.

    Status: ``plug-in`` — the class means, moments and frequencies of the **test** split's
    empirical distribution replace the population's (computed about the split's final means,
    divisor n_c); with the population moments the inequality is rigorous. m = ``options.shots[0]``
    if given, else the smallest training class count; ``details['per_shots']`` has every m of
    ``options.shots``. Classes absent from the test split are left out of the m-shot task.

    Reference: Cantelli's one-sided Chebyshev inequality (e.g. Boucheron, Lugosi & Massart 2013,
    Exercise 2.3); the moment computation is exact (docstring of :func:`mshot_ncc_moments`). The
    m-shot NCC setting is that of Galanti, György & Hutter (2022) (few-shot transfer of collapsed
    features).
    """
    return _mshot_result(ctx, _cantelli_terms)


@register(bounds=_MSHOT_BOUNDS, status="predictor", group="collapse", needs=(PAIR_MOMENTS,),
          reference="Gaussian approximation of the exact m-shot NCC margin moments (central-limit heuristic)")
def gaussian_ncc(ctx: BoundContext) -> Evaluation:
    """Gaussian approximation of the expected m-shot NCC error (a predictor, not a bound).

    Formula: Σ_i π̂_i·min(1, Σ_{j≠i} Φ(−E Z_ij/√Var Z_ij)) with the exact E, Var of
    :func:`mshot_ncc_moments` (same moments, m and class handling as :func:`nc_cantelli`).

    Status: ``predictor`` — Z_ij is a quadratic form of the noise, not Gaussian, so Φ(−E/√Var) is
    an approximation (central-limit heuristic, accurate when many roughly independent noise
    directions contribute), neither an upper nor a lower bound; the sum over competitors also
    double-counts overlapping error events. It is the Gaussian version of the Cantelli bound, usually
    much closer to the measured m-shot error than the Cantelli bound.
    """
    return _mshot_result(ctx, _gaussian_terms)
