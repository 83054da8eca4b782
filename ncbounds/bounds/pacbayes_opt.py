"""Optimised PAC-Bayes certificates: the Gibbs classifier Q and the deployed network.

Both bounds are thin: the optimisation and the Monte-Carlo evaluation happen in the engine that the
orchestration layer puts on the context (``ctx.pacbayes_opt``, a callable
``(config, delta=..., seed=...) -> PacBayesOptResult``, memoised so the two bounds share one run);
the certificate arithmetic is :mod:`ncbounds.bounds.pacbayes_certificate`. Their settings are one
:class:`~ncbounds.bounds.pacbayes_opt_config.PacBayesOptConfig` each (``--bound-option
pac-bayes-opt.KEY=VALUE`` sets both; ``--prior``, ``--prior-samples``, ``--pb-steps`` and ``--pb-time``
are shorthands); equal settings share one run.
"""

from __future__ import annotations

from typing import Any

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext
from ncbounds.bounds.pacbayes_opt_config import PAC_BAYES_OPT_GROUP, PacBayesOptConfig

__all__ = ["pacbayes_opt", "pacbayes_opt_deterministic"]

_GROUP = PAC_BAYES_OPT_GROUP
_BOUNDS_GIBBS = "Gibbs risk of the optimised stochastic network Q = N(μ, diag s²)"
_BOUNDS_DET = "0-1 error of the deployed (trained) network"
_REF_GIBBS = (
    "Dziugaite & Roy (2017), 'Computing nonvacuous generalization bounds for deep (stochastic) neural networks', UAI "
    "(optimised posterior, prior variance grid); Pérez-Ortiz, Rivasplata, Shawe-Taylor & Szepesvári (2021), 'Tighter "
    "risk certificates for neural networks', JMLR 22(227) (objectives, data-dependent prior, risk certificate "
    "kl⁻¹(kl⁻¹(ê, ln(2/δ′)/M), (KL + ln(2√n/δ))/n)); Maurer (2004), Thm 5; Hoeffding (1963), Thm 1"
)
_REF_DET = (
    "Bazinet, Zantedeschi & Germain (2026), 'Bound to Disagree: Generalization Bounds via Certifiable Surrogates', "
    "arXiv:2602.23128 (R(f) ≤ R(g) + P(f ≠ g) with the disagreement bounded on unlabeled data); the surrogate is the "
    "optimised PAC-Bayes posterior of " + _REF_GIBBS
)


def _run(ctx: BoundContext, config: PacBayesOptConfig):
    if ctx.pacbayes_opt is None:
        raise NotApplicable(_NO_ENGINE)
    return ctx.pacbayes_opt(config, delta=ctx.options.delta, seed=ctx.options.seed)


_NO_ENGINE = ("needs to optimise and evaluate a stochastic copy of the network on the training inputs, which is impossible "
              "without a model and raw inputs (e.g. precomputed features); run it on a checkpoint with --data inputs.")


def _caveats(ctx: BoundContext) -> dict[str, Any]:
    if ctx.model is None:
        return {}
    buffers = [n for n, _ in ctx.model.named_buffers() if n.endswith(("running_mean", "running_var"))]
    if not buffers:
        return {}
    return {"caveat": (f"{len(buffers)} BatchNorm running-statistic buffers were fitted on the training data and are held "
                       "fixed (not covered by the prior); the certificate is for the network with these statistics "
                       "treated as part of the architecture.")}


@register(bounds=_BOUNDS_GIBBS, status="certificate", group=_GROUP, reference=_REF_GIBBS, options=PacBayesOptConfig,
          certifies="stochastic")
def pacbayes_opt(ctx: BoundContext, config: PacBayesOptConfig) -> Evaluation:
    """PAC-Bayes-kl certificate for an optimised Gaussian posterior Q = N(μ, diag s²) around the checkpoint.

    Q covers every trainable parameter (BatchNorm in eval mode, its running statistics fixed); prior
    P = N(w₀, λI) with w₀ the initialization weights (``prior=init``, data-free), a network trained by
    ncbounds on a seeded fraction of the training split (``learn``; the certificate then uses only
    the other n samples), or a user-given prior with its declared training indices (``given``).
    μ and s minimise a PAC-Bayes objective (fquad by default; fclassic, flamb, Dziugaite–Roy) on the
    bounded cross-entropy min(−ln p_y, ln(1/p_min))/ln(1/p_min), for a fixed number of Adam steps.

    Certificate, computed from the final Q only (fresh draws; n = certificate samples evaluated):

        Ê     = kl⁻¹(ê, ln(1/δ_mc)/(n·passes))     one fresh weight draw per (example, pass)  [Hoeffding 1963, Thm 1]
              = kl⁻¹(ê, ln(2/δ_mc)/M)              or M whole-sample draws                   [Langford & Caruana 2002]
        value = min_j kl⁻¹(Ê, (KL(Q‖N(w₀, λ_j I)) + ln(2√n/δ_pb) + 2 ln j + ln(π²/6))/n),  λ_j = c·e^(−j/b)
                                                                                    [Maurer 2004, Thm 5; Dziugaite & Roy 2017]

    Status: certificate — with probability ≥ 1 − δ (δ = δ_mc + δ_pb) over the certificate samples
    and the Monte-Carlo draws, the Gibbs risk of Q is below the value. The λ grid's union bound is
    paid by the weights 6/(π² j²); nothing measured during the optimisation enters the value. It
    bounds the stochastic network Q, not the trained network (see ``pacbayes_opt_deterministic``).
    """
    res = _run(ctx, config)
    return Evaluation(res.value, inputs=res.inputs(), details={**res.gibbs_details(), **_caveats(ctx)})


@register(bounds=_BOUNDS_DET, status="certificate", group=_GROUP, reference=_REF_DET, options=PacBayesOptConfig,
          certifies="network")
def pacbayes_opt_deterministic(ctx: BoundContext, config: PacBayesOptConfig) -> Evaluation:
    """Certificate for the deployed network f: R(f) ≤ B(Q) + U(f ≠ g, g ~ Q), from training data + unlabeled inputs.

    Pointwise 1[f(x) ≠ y] ≤ 1[g(x) ≠ y] + 1[f(x) ≠ g(x)], so R(f) ≤ e(Q) + D(f, Q) with e(Q) the
    Gibbs risk and D(f, Q) = P_{x, g~Q}[f(x) ≠ g(x)]. B(Q) is the ``pacbayes_opt`` certificate at
    level δ_g = (1 − φ)·δ; U is an upper confidence bound on D(f, Q) at level δ_dis = φ·δ (φ =
    ``disagreement_delta_fraction``) from the unlabeled pool (default: the test inputs WITHOUT their
    labels — the engine never receives them), one fresh weight draw per (input, pass):
    U = kl⁻¹(d̂, ln(1/δ_dis)/m) over the m pool inputs (Hoeffding 1963, Thm 1). f is the checkpoint's
    network itself (not Q's mean).

    Status: certificate — w.p. ≥ 1 − δ over the training sample, the pool and the draws (union of the
    two events). No test label is used, so it is a training-data certificate that can be read next to
    the test-set certificate.
    """
    res = _run(ctx, config)
    if res.deterministic is None:
        raise NotApplicable(res.deterministic_reason or "no unlabeled inputs.", inputs=res.inputs())
    det = res.deterministic
    inputs = {**res.inputs(), "unlabeled_pool": det["pool"], "unlabeled_inputs": det["n_inputs"],
              "labels_used": "training labels only; the disagreement pool's labels were not read"}
    details = {
        "gibbs_certificate": det["gibbs_certificate"], "gibbs_delta": det["gibbs_delta"],
        "disagreement": det["disagreement"], "disagreement_upper": det["disagreement_upper"],
        "delta_disagreement": det["delta_disagreement"], "disagreement_trials": det["trials"],
        "disagreement_mode": det["disagreement_mode"], "deployed_network": det["deployed_network"],
        "gibbs_terms": det["gibbs_terms"], "history": res.history, **_caveats(ctx),
    }
    return Evaluation(det["value"], inputs=inputs, details=details)
