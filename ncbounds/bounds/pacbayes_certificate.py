"""PAC-Bayes-kl risk certificates from Monte-Carlo Gibbs errors, λ-grid union costs, disagreement bounds.

Pure float64 functions (no torch, no data): they turn counts measured by an optimisation engine into
certificates. Every kl⁻¹ is :func:`ncbounds.stats.binomial.kl_inverse_upper`, a certified upper end
point, so rounding never makes a certificate smaller than its exact value.

Notation: Q the posterior over weights, P the prior (chosen before the n certificate samples are
seen), KL = KL(Q‖P) in nats, ê an unbiased Monte-Carlo estimate of the empirical Gibbs error
ê_S(Q) = (1/n) Σ_i P_{w~Q}[h_w(x_i) ≠ y_i] on the n certificate samples, e(Q) the Gibbs risk.
kl(q‖p) is the Bernoulli relative entropy and kl⁻¹(q, c) = sup{p ≥ q : kl(q‖p) ≤ c}.

The two steps, and the events they exclude:

1. Monte-Carlo step (conditional on the sample S, over the weight draws), w.p. ≥ 1 − δ_mc:
   - M whole-sample draws w_1..w_M ~ Q (each evaluated on all n samples): the per-draw errors are
     i.i.d. in [0, 1] with mean ê_S(Q), so ê_S(Q) ≤ Ê = kl⁻¹(ê, ln(2/δ_mc)/M) — the sample
     convergence bound of Langford & Caruana (2002) as used by Dziugaite & Roy (2017, §3) and
     Pérez-Ortiz et al. (2021, §6, risk certificates);
   - one fresh draw per (example, pass), T = n·passes trials: the indicators 1[h_{w_it}(x_i) ≠ y_i]
     are independent (not identically distributed) Bernoulli(p_i) with mean of means ê_S(Q), so by
     Hoeffding (1963, Theorem 1, which needs independence and [0, 1] values only, not identical
     distributions) Pr[mean ≤ q] ≤ exp(−T·kl(q‖ê_S(Q))) for q ≤ ê_S(Q), hence
     ê_S(Q) ≤ Ê = kl⁻¹(ê, ln(1/δ_mc)/T) (one-sided, so ln(1/δ) rather than ln(2/δ)).
2. PAC-Bayes step (over S), w.p. ≥ 1 − δ, simultaneously for every Q: kl(ê_S(Q)‖e(Q)) ≤
   (KL + ln(2√n/δ))/n (Maurer 2004, Theorem 5, n ≥ 8; Pérez-Ortiz et al. 2021, eq. (1), the
   PAC-Bayes-kl inequality). Since kl⁻¹ is increasing in its first argument, e(Q) ≤ kl⁻¹(Ê, ·).

A union over the two events gives a certificate at level δ + δ_mc. ``n`` is always the number of
samples whose errors were actually evaluated (the public code of Pérez-Ortiz et al. takes the size of
the whole training set while evaluating a subset, which is anti-conservative; never do that).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ncbounds.errors import UsageError
from ncbounds.stats.binomial import kl_inverse_upper

__all__ = [
    "MAURER_MIN_N",
    "best_lambda_on_grid",
    "deterministic_certificate",
    "disagreement_upper_bound",
    "gaussian_kl_isotropic_prior",
    "lambda_grid_index",
    "lambda_grid_value",
    "lambda_union_cost",
    "maurer_log_term",
    "mc_upper_full_pass",
    "mc_upper_per_example",
    "pac_bayes_kl_certificate",
    "pac_bayes_kl_certificate_per_example",
]

#: Maurer's (2004, Theorem 5) bound E[exp(n·kl)] ≤ 2√n is stated for n ≥ 8.
MAURER_MIN_N = 8

#: ln(π²/6): the union-bound cost of the weights δ_j = 6δ/(π²j²), j = 1, 2, … (Σ_j 6/(π²j²) = 1).
LOG_PI2_OVER_6 = math.log(math.pi**2 / 6.0)


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------


def _unit(x: Any, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number in [0, 1]; got {x!r}.") from None
    if not 0.0 <= v <= 1.0:
        raise UsageError(f"{name} must lie in [0, 1]; got {x!r}.")
    return v


def _level(x: Any, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a probability in (0, 1); got {x!r}.") from None
    if not 0.0 < v < 1.0:
        raise UsageError(f"{name} must lie strictly between 0 and 1; got {x!r}.")
    return v


def _count(x: Any, name: str, minimum: int = 1) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) and not (isinstance(x, float) and x.is_integer()):
        raise UsageError(f"{name} must be an integer ≥ {minimum}; got {x!r}.")
    v = int(x)
    if v < minimum:
        raise UsageError(f"{name} must be an integer ≥ {minimum}; got {x!r}.")
    return v


def _disagreement_rate(disagreements: Any, trials: int) -> float:
    """disagreements / trials, after checking 0 ≤ disagreements ≤ trials."""
    d = _count(disagreements, "disagreements", 0)
    if d > trials:
        raise UsageError(f"disagreements ({d}) cannot exceed the number of trials ({trials}).")
    return d / trials


def _kl_value(kl: Any) -> float:
    try:
        v = float(kl)
    except (TypeError, ValueError):
        raise UsageError(f"KL must be a finite non-negative number; got {kl!r}.") from None
    if not (math.isfinite(v) and v >= 0.0):
        raise UsageError(f"KL must be a finite non-negative number; got {kl!r}.")
    return v


# ------------------------------------------------------------------------------------------------
# the Monte-Carlo step
# ------------------------------------------------------------------------------------------------


def mc_upper_full_pass(gibbs_error: float, mc_samples: int, delta_mc: float) -> float:
    """Ê = kl⁻¹(ê, ln(2/δ_mc)/M) for the mean error ê of M whole-sample weight draws.

    Sample convergence bound (Langford & Caruana 2002; Dziugaite & Roy 2017, §3; Pérez-Ortiz et
    al. 2021, §6): the M per-draw error rates are i.i.d. in [0, 1] with mean ê_S(Q), so w.p.
    ≥ 1 − δ_mc over the draws ê_S(Q) ≤ Ê. Published two-sided constant ln(2/δ_mc) kept.
    """
    e = _unit(gibbs_error, "gibbs_error")
    m = _count(mc_samples, "mc_samples")
    d = _level(delta_mc, "delta_mc")
    return float(kl_inverse_upper(e, math.log(2.0 / d) / m))


def mc_upper_per_example(gibbs_error: float, trials: int, delta_mc: float) -> float:
    """Ê = kl⁻¹(ê, ln(1/δ_mc)/T) for T independent (example, fresh weight draw) Bernoulli trials.

    ê = errors / T. The trials are independent with success probabilities p_i (the Gibbs error of
    example i) whose mean is ê_S(Q); Hoeffding (1963, Theorem 1) bounds the lower tail of their
    mean by exp(−T·kl(q‖ê_S(Q))) without identical distributions, so w.p. ≥ 1 − δ_mc over the draws
    ê_S(Q) ≤ Ê (one-sided: ln(1/δ_mc)).
    """
    e = _unit(gibbs_error, "gibbs_error")
    t = _count(trials, "trials")
    d = _level(delta_mc, "delta_mc")
    return float(kl_inverse_upper(e, math.log(1.0 / d) / t))


# ------------------------------------------------------------------------------------------------
# the PAC-Bayes step
# ------------------------------------------------------------------------------------------------


def maurer_log_term(n: int, delta: float) -> float:
    """ln(2√n/δ), the confidence term of Maurer's PAC-Bayes-kl bound (Maurer 2004, Theorem 5)."""
    n = _count(n, "n")
    delta = _level(delta, "delta")
    return math.log(2.0) + 0.5 * math.log(n) - math.log(delta)


def _pac_bayes_step(e_upper: float, kl: float, n: int, delta: float, union_cost: float) -> dict[str, float]:
    log_term = maurer_log_term(n, delta)
    budget = (kl + log_term + union_cost) / n
    bound = float(kl_inverse_upper(e_upper, budget))
    return {"kl": kl, "log_term": log_term, "union_cost": union_cost, "pb_budget": budget, "value": bound}


def _check_n(n: Any) -> int:
    n = _count(n, "n")
    if n < MAURER_MIN_N:
        raise UsageError(f"Maurer's PAC-Bayes-kl bound needs n ≥ {MAURER_MIN_N} certificate samples; got n = {n}.")
    return n


def pac_bayes_kl_certificate(gibbs_error: float, mc_samples: int, kl: float, n: int, delta: float,
                             delta_mc: float, union_cost: float = 0.0) -> dict[str, float]:
    """Two-step PAC-Bayes-kl certificate from M whole-sample Monte-Carlo draws.

        Ê     = kl⁻¹(ê, ln(2/δ_mc)/M)                         (sample convergence, Langford & Caruana 2002)
        value = kl⁻¹(Ê, (KL + ln(2√n/δ) + union_cost)/n)      (Maurer 2004, Thm 5; Pérez-Ortiz et al. 2021, eq. (1))

    With probability ≥ 1 − δ − δ_mc over the n certificate samples and the M draws, the Gibbs risk
    e(Q) ≤ value. ``gibbs_error`` = ê is the mean 0-1 error over the M draws, each draw evaluated on
    all ``n`` samples (n = the number actually evaluated; n ≥ 8). ``union_cost`` (default 0) is
    ln(1/w) for a prior chosen from a countable family with weights w summing to ≤ 1 (e.g. a λ grid,
    :func:`lambda_union_cost`): the PAC-Bayes step is then run at level δ·w.

    Returns ``value`` and the intermediate terms: ``gibbs_error`` (ê), ``mc_upper`` (Ê),
    ``mc_budget`` (ln(2/δ_mc)/M), ``kl``, ``log_term`` (ln(2√n/δ)), ``union_cost``, ``pb_budget``
    ((KL + ln(2√n/δ) + union_cost)/n), ``n``, ``mc_samples``, ``delta``, ``delta_mc``.
    """
    e = _unit(gibbs_error, "gibbs_error")
    m = _count(mc_samples, "mc_samples")
    n = _check_n(n)
    kl = _kl_value(kl)
    delta, delta_mc = _level(delta, "delta"), _level(delta_mc, "delta_mc")
    union_cost = _kl_value(union_cost)
    e_upper = mc_upper_full_pass(e, m, delta_mc)
    out = _pac_bayes_step(e_upper, kl, n, delta, union_cost)
    return {"value": out.pop("value"), "gibbs_error": e, "mc_upper": e_upper, "mc_budget": math.log(2.0 / delta_mc) / m,
            **out, "n": n, "mc_samples": m, "delta": delta, "delta_mc": delta_mc, "mc_mode": "full-pass"}


def pac_bayes_kl_certificate_per_example(gibbs_error: float, trials: int, kl: float, n: int, delta: float,
                                         delta_mc: float, union_cost: float = 0.0) -> dict[str, float]:
    """Two-step PAC-Bayes-kl certificate from one fresh weight draw per (example, pass).

        Ê     = kl⁻¹(ê, ln(1/δ_mc)/T)                         (Hoeffding 1963, Thm 1: independent, non-identical)
        value = kl⁻¹(Ê, (KL + ln(2√n/δ) + union_cost)/n)      (Maurer 2004, Thm 5; Pérez-Ortiz et al. 2021, eq. (1))

    Each of the n certificate samples is evaluated ``passes`` times, each time by a network with
    its own independent weight draw w ~ Q, so T = ``trials`` = n·passes and ê = errors / T. Given S
    the T error indicators are independent Bernoulli variables whose success probabilities average to
    ê_S(Q) exactly (every example appears equally often), so the Monte-Carlo step holds w.p.
    ≥ 1 − δ_mc (see :func:`mc_upper_per_example`); it costs far less than with M whole-sample draws
    because T counts single predictions, not networks. The certificate holds w.p. ≥ 1 − δ − δ_mc.
    ``trials`` must be a multiple of ``n`` (each example evaluated equally often).
    """
    e = _unit(gibbs_error, "gibbs_error")
    n = _check_n(n)
    t = _count(trials, "trials")
    if t % n:
        raise UsageError(f"trials ({t}) must be a whole number of passes over the n = {n} certificate samples.")
    kl = _kl_value(kl)
    delta, delta_mc = _level(delta, "delta"), _level(delta_mc, "delta_mc")
    union_cost = _kl_value(union_cost)
    e_upper = mc_upper_per_example(e, t, delta_mc)
    out = _pac_bayes_step(e_upper, kl, n, delta, union_cost)
    return {"value": out.pop("value"), "gibbs_error": e, "mc_upper": e_upper, "mc_budget": math.log(1.0 / delta_mc) / t,
            **out, "n": n, "trials": t, "passes": t // n, "delta": delta, "delta_mc": delta_mc, "mc_mode": "per-example"}


# ------------------------------------------------------------------------------------------------
# Gaussian KL and the λ grid (Dziugaite & Roy 2017)
# ------------------------------------------------------------------------------------------------


def gaussian_kl_isotropic_prior(sq_dist: float, sum_var: float, sum_log_var: float, num_params: int,
                                prior_var: float) -> float:
    """KL(N(μ, diag s²) ‖ N(w₀, λI)) = ½[(‖μ − w₀‖² + Σ s²)/λ − P + P ln λ − Σ ln s²], in nats.

    ``sq_dist`` = ‖μ − w₀‖², ``sum_var`` = Σ s_i², ``sum_log_var`` = Σ ln s_i², ``num_params`` = P,
    ``prior_var`` = λ (a variance). This is Dziugaite & Roy's (2017) 2·KL expression halved.
    Its minimum over λ is at λ* = (‖μ − w₀‖² + Σ s²)/P.
    """
    if not (prior_var > 0 and math.isfinite(prior_var)):
        raise UsageError(f"the prior variance λ must be positive and finite; got {prior_var!r}.")
    P = _count(num_params, "num_params")
    kl = 0.5 * ((sq_dist + sum_var) / prior_var - P + P * math.log(prior_var) - sum_log_var)
    return max(kl, 0.0)  # ≥ 0 exactly; clip rounding only


def lambda_grid_value(j: int | np.ndarray, c: float, b: float) -> Any:
    """λ_j = c·exp(−j/b), the prior-variance grid of Dziugaite & Roy (2017), j = 1, 2, …"""
    return c * np.exp(-np.asarray(j, dtype=np.float64) / b) if np.ndim(j) else c * math.exp(-float(j) / b)


def lambda_grid_index(prior_var: float, c: float, b: float) -> float:
    """The continuous index j = b·ln(c/λ) of a prior variance λ on the grid λ = c·exp(−j/b).

    j ≤ 0 means λ ≥ c, above the grid's ceiling (the first grid point is j = 1); callers clip.
    """
    if not (prior_var > 0 and math.isfinite(prior_var)):
        raise UsageError(f"the prior variance λ must be positive and finite; got {prior_var!r}.")
    return b * math.log(c / prior_var)


def lambda_union_cost(j: int | np.ndarray, grid_size: int | None = None) -> Any:
    """Union-bound cost ln(1/w_j) of choosing grid point j ≥ 1 after seeing the data.

    ``grid_size`` None (countable grid, Dziugaite & Roy 2017): w_j = 6/(π² j²), cost 2 ln j + ln(π²/6).
    ``grid_size`` G (finite grid j = 1..G): w_j = 1/G, cost ln G.
    """
    ja = np.asarray(j, dtype=np.float64)
    if np.any(ja < 1) or np.any(ja != np.round(ja)):
        raise UsageError(f"grid indices j must be integers ≥ 1; got {j!r}.")
    if grid_size is None:
        out = 2.0 * np.log(ja) + LOG_PI2_OVER_6
    else:
        g = _count(grid_size, "grid_size")
        if np.any(ja > g):
            raise UsageError(f"grid index j exceeds the grid size {g}.")
        out = np.full_like(ja, math.log(g))
    return float(out) if np.ndim(j) == 0 else out


def best_lambda_on_grid(e_upper: float, sq_dist: float, sum_var: float, sum_log_var: float, num_params: int,
                        n: int, delta: float, c: float, b: float, grid_size: int | None = None) -> dict[str, float]:
    """The smallest PAC-Bayes step over the prior variances λ_j = c·exp(−j/b), union cost paid.

    value = min_j kl⁻¹(Ê, (KL_j + ln(2√n/δ) + cost_j)/n), KL_j = KL(Q ‖ N(w₀, λ_j I)) and cost_j from
    :func:`lambda_union_cost`. Each j is a separate PAC-Bayes event at level δ·w_j (Σ w_j ≤ 1), so
    the minimum over j holds w.p. ≥ 1 − δ (Dziugaite & Roy 2017, who try the two integers around the
    learnt λ; here the scan covers every j up to past the unconstrained optimum, so it is never worse).
    Returns the chosen ``j``, ``prior_var`` (λ_j), ``kl``, ``union_cost``, ``log_term``, ``pb_budget``,
    ``value``, and ``prior_var_optimum`` (the unconstrained λ*).
    """
    n = _check_n(n)
    P = _count(num_params, "num_params")
    if not (c > 0 and b > 0 and math.isfinite(c) and math.isfinite(b)):
        raise UsageError(f"the λ grid needs c > 0 and b > 0; got c={c!r}, b={b!r}.")
    lam_opt = (sq_dist + sum_var) / P
    j_opt = lambda_grid_index(lam_opt, c, b) if lam_opt > 0 else 1.0
    top = max(2, int(math.ceil(max(j_opt, 1.0))) + 1)
    if grid_size is not None:
        top = min(top, _count(grid_size, "grid_size"))
    js = np.arange(1, top + 1, dtype=np.float64)
    lams = c * np.exp(-js / b)
    kls = np.maximum(0.5 * ((sq_dist + sum_var) / lams - P + P * np.log(lams) - sum_log_var), 0.0)
    costs = lambda_union_cost(js, grid_size)
    log_term = maurer_log_term(n, delta)
    budgets = (kls + log_term + costs) / n
    # kl⁻¹ is increasing in the budget: the best j has the smallest budget; evaluate it (and ties).
    k = int(np.argmin(budgets))
    value = float(kl_inverse_upper(_unit(e_upper, "e_upper"), float(budgets[k])))
    return {"value": value, "j": int(js[k]), "prior_var": float(lams[k]), "kl": float(kls[k]),
            "union_cost": float(costs[k]), "log_term": log_term, "pb_budget": float(budgets[k]),
            "prior_var_optimum": lam_opt, "grid_c": float(c), "grid_b": float(b),
            "grid": "countable (weights 6/(π²j²))" if grid_size is None else f"finite (j = 1..{grid_size})"}


# ------------------------------------------------------------------------------------------------
# certificate for a deterministic network through its disagreement with Q
# ------------------------------------------------------------------------------------------------


def disagreement_upper_bound(disagreements: int, n_inputs: int, delta: float, passes: int = 1,
                             mc_samples: int | None = None) -> dict[str, float]:
    """Upper confidence bound U on D(f, Q) = P_{x, g~Q}[f(x) ≠ g(x)] from inputs independent of training.

    Needs only unlabeled inputs x_1..x_m drawn i.i.d. from the data distribution, independently of
    everything that chose f and Q (e.g. the test inputs, their labels unread).

    - ``mc_samples`` None (per-example draws): every (input, pass) gets a fresh g ~ Q, and
      ``disagreements`` counts f(x_i) ≠ g_it(x_i) over the m·passes trials. The per-input averages
      Z_i are i.i.d. in [0, 1] with mean D(f, Q), so U = kl⁻¹(d̂, ln(1/δ)/m) (Hoeffding 1963, Thm 1);
      with ``passes`` = 1 the Z_i are Bernoulli and this is the binomial-kl test-set bound (Langford
      2005, §3).
    - ``mc_samples`` M (whole-sample draws g_1..g_M shared by all inputs, ``passes`` ignored):
      conditional on the draws the per-input averages are i.i.d. with mean D̄_M = (1/M)Σ_j D(f, g_j),
      so D̄_M ≤ U₁ = kl⁻¹(d̂, ln(2/δ)/m) w.p. ≥ 1 − δ/2, and the D(f, g_j) are i.i.d. in [0, 1] with
      mean D(f, Q), so D(f, Q) ≤ kl⁻¹(U₁, ln(4/δ)/M) w.p. ≥ 1 − δ/2 (sample convergence step at δ/2).

    Returns ``value`` (U), ``disagreement`` (d̂), ``n_inputs``, ``trials``, ``delta``.
    """
    m = _count(n_inputs, "n_inputs")
    delta = _level(delta, "delta")
    if mc_samples is None:
        p = _count(passes, "passes")
        trials = m * p
        rate = _disagreement_rate(disagreements, trials)
        value = float(kl_inverse_upper(rate, math.log(1.0 / delta) / m))
        return {"value": value, "disagreement": rate, "n_inputs": m, "trials": trials, "passes": p, "delta": delta,
                "mode": "per-example"}
    M = _count(mc_samples, "mc_samples")
    trials = m * M
    rate = _disagreement_rate(disagreements, trials)
    u1 = float(kl_inverse_upper(rate, math.log(2.0 / delta) / m))
    value = float(kl_inverse_upper(u1, math.log(4.0 / delta) / M))
    return {"value": value, "disagreement": rate, "sample_upper": u1, "n_inputs": m, "trials": trials,
            "mc_samples": M, "delta": delta, "mode": "full-pass"}


def deterministic_certificate(gibbs_certificate: float, gibbs_delta: float, disagreements: int, n_inputs: int,
                              delta_disagreement: float, passes: int = 1, mc_samples: int | None = None) -> dict[str, float]:
    """Certificate for a deterministic network f: R(f) ≤ B(Q) + U(f ≠ Q), at level gibbs_delta + δ_dis.

    Pointwise 1[f(x) ≠ y] ≤ 1[g(x) ≠ y] + 1[f(x) ≠ g(x)]; averaging over g ~ Q and (x, y) gives
    R(f) ≤ e(Q) + D(f, Q). ``gibbs_certificate`` B(Q) bounds e(Q) w.p. ≥ 1 − ``gibbs_delta`` (all
    of its own confidence steps included); U bounds D(f, Q) w.p. ≥ 1 − δ_dis from unlabeled inputs
    (:func:`disagreement_upper_bound`). A union bound gives the level. This is the disagreement
    construction of Bazinet, Zantedeschi & Germain (2026), "Bound to Disagree: Generalization Bounds
    via Certifiable Surrogates" (arXiv:2602.23128) in its simplest (triangle-inequality) form, with
    the PAC-Bayes posterior as the certified surrogate. Value clipped to 1 (the trivial bound).
    """
    b = _unit(gibbs_certificate, "gibbs_certificate")
    gd = _level(gibbs_delta, "gibbs_delta")
    dis = disagreement_upper_bound(disagreements, n_inputs, delta_disagreement, passes, mc_samples)
    total = min(1.0, b + dis["value"])
    return {"value": total, "gibbs_certificate": b, "disagreement_upper": dis["value"], "disagreement": dis["disagreement"],
            "n_inputs": dis["n_inputs"], "trials": dis["trials"], "gibbs_delta": gd, "delta_disagreement": dis["delta"],
            "delta": gd + dis["delta"], "disagreement_mode": dis["mode"]}
