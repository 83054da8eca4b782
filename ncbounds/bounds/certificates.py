"""Test-set certificates: the baseline every other bound is read against (DESIGN §6).

The test split is never used to fit the network, so its error count k out of n is a Binomial(n, p)
draw of the population 0-1 error p. Both bounds are upper confidence bounds on p that hold with
probability ≥ 1 − δ over the draw of the test set; nothing else is assumed.
"""

from __future__ import annotations

import math

from ncbounds.bounds.base import BoundResult, register
from ncbounds.stats.binomial import binomial_kl_upper, clopper_pearson_upper
from ncbounds.bounds.context import BoundContext

_BOUNDS = "population 0-1 error of the network"


def _not_applicable(name: str, reference: str, delta: float) -> BoundResult:
    return BoundResult(name, None, _BOUNDS, "not-applicable", reference, delta,
                       reason="no classifier outputs on the test split (precomputed features without W), so there is no test error to bound.")


@register("test_cp", bounds=_BOUNDS, status="certificate", group="certificates",
          reference="Clopper & Pearson (1934), Biometrika 26(4); one-sided exact binomial upper bound")
def test_cp(ctx: BoundContext) -> BoundResult:
    """One-sided Clopper–Pearson upper bound: the largest p with P(Binomial(n, p) ≤ k) ≥ δ.

    Value = Beta⁻¹(1 − δ; k + 1, n − k) (= 1 when k = n). Status: certificate — exact binomial tail
    inversion, valid for any p, no approximation.
    """
    ref = "Clopper & Pearson (1934), Biometrika 26(4); one-sided exact binomial upper bound"
    delta = ctx.options.delta
    if ctx.test.errors is None:
        return _not_applicable("test_cp", ref, delta)
    k, n = ctx.test.errors, ctx.test.n
    return BoundResult("test_cp", clopper_pearson_upper(k, n, delta), _BOUNDS, "certificate", ref, delta,
                       inputs={"split": "test", "k": k, "n": n}, details={"test_error": k / n})


@register("test_kl", bounds=_BOUNDS, status="certificate", group="certificates",
          reference="Langford (2005), 'Tutorial on practical prediction theory for classification', JMLR 6, Thm 3.3 (kl form)")
def test_kl(ctx: BoundContext) -> BoundResult:
    """Binomial-kl test-set bound: p ≤ kl⁻¹(k/n, ln(1/δ)/n).

    From the Chernoff bound P(k/n ≤ q) ≤ exp(−n·kl(q‖p)) for q ≤ p (Langford 2005, §3); kl⁻¹ is
    computed as a true upper end point. Status: certificate. Slightly looser than Clopper–Pearson,
    which it always dominates, but of the same form as the PAC-Bayes-kl bounds.
    """
    ref = "Langford (2005), 'Tutorial on practical prediction theory for classification', JMLR 6, Thm 3.3 (kl form)"
    delta = ctx.options.delta
    if ctx.test.errors is None:
        return _not_applicable("test_kl", ref, delta)
    k, n = ctx.test.errors, ctx.test.n
    return BoundResult("test_kl", binomial_kl_upper(k, n, delta), _BOUNDS, "certificate", ref, delta,
                       inputs={"split": "test", "k": k, "n": n},
                       details={"test_error": k / n, "kl_budget": math.log(1 / delta) / n})
