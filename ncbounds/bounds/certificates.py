"""Test-set certificates: the baseline every other bound is read against.

The test split is never used to fit the network, so its error count k out of n is a Binomial(n, p)
draw of the population 0-1 error p. Both bounds are upper confidence bounds on p that hold with
probability ≥ 1 − δ over the draw of the test set; nothing else is assumed.
"""

from __future__ import annotations

import math

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext
from ncbounds.stats.binomial import binomial_kl_upper, clopper_pearson_upper

_BOUNDS = "population 0-1 error of the network"


def _test_counts(ctx: BoundContext) -> tuple[int, int]:
    if ctx.test.errors is None:
        raise NotApplicable("no classifier outputs on the test split (precomputed features without W), so there is no test error to bound.")
    return ctx.test.errors, ctx.test.n


@register(bounds=_BOUNDS, status="certificate", group="certificates", certifies="network", evidence="test",
          reference="Clopper & Pearson (1934), Biometrika 26(4); one-sided exact binomial upper bound")
def test_cp(ctx: BoundContext) -> Evaluation:
    """One-sided Clopper–Pearson upper bound: the largest p with P(Binomial(n, p) ≤ k) ≥ δ.

    Value = Beta⁻¹(1 − δ; k + 1, n − k) (= 1 when k = n). Status: certificate — exact binomial tail
    inversion, valid for any p, no approximation.
    """
    k, n = _test_counts(ctx)
    return Evaluation(clopper_pearson_upper(k, n, ctx.options.delta), inputs={"split": "test", "k": k, "n": n},
                      details={"test_error": k / n})


@register(bounds=_BOUNDS, status="certificate", group="certificates", certifies="network", evidence="test",
          reference="Langford (2005), 'Tutorial on practical prediction theory for classification', JMLR 6, Thm 3.3 (kl form)")
def test_kl(ctx: BoundContext) -> Evaluation:
    """Binomial-kl test-set bound: p ≤ kl⁻¹(k/n, ln(1/δ)/n).

    From the Chernoff bound P(k/n ≤ q) ≤ exp(−n·kl(q‖p)) for q ≤ p (Langford 2005, §3); kl⁻¹ is
    computed as a true upper end point. Status: certificate. Slightly looser than Clopper–Pearson,
    which it always dominates, but of the same form as the PAC-Bayes-kl bounds.
    """
    k, n = _test_counts(ctx)
    delta = ctx.options.delta
    return Evaluation(binomial_kl_upper(k, n, delta), inputs={"split": "test", "k": k, "n": n},
                      details={"test_error": k / n, "kl_budget": math.log(1 / delta) / n})
