"""Jiang et al. (2020) PAC-Bayes flatness measures and their magnitude-aware variants (predictors).

Jiang, Neyshabur, Mobahi, Krishnan, Bengio (2020), "Fantastic generalization measures and where
to find them", ICLR, Appendix C (sharpness/flatness-based and magnitude-aware perturbation
measures). Notation: w the trained weights, w₀ the weights at initialization, ω the number of
parameters, m the number of training samples, ε = 1e-3, log the natural logarithm; w ranges over
:func:`ncbounds.bounds.pacbayes.perturbed_parameters` (every trainable floating-point parameter —
the same parameters the noise is added to).

===============================  =========================================================================  ======
name                             formula                                                                    eq.
===============================  =========================================================================  ======
jiang_pacbayes_init              ‖w − w₀‖² / (4σ²) + log(m/σ) + 10                                         (48)
jiang_pacbayes_orig              ‖w‖² / (4σ²) + log(m/σ) + 10                                              (49)
jiang_pacbayes_flatness          1 / σ²                                                                     (53)
jiang_pacbayes_mag_init          ¼ Σ_i log[(ε² + (σ′² + 1)‖w − w₀‖²/ω) / (ε² + σ′²(w_i − w₀,i)²)]
                                 + log(m/σ′) + 10                                                           (56)
jiang_pacbayes_mag_flatness      1 / σ′²                                                                    (61)
===============================  =========================================================================  ======

σ is the largest noise standard deviation for which the Monte-Carlo Gibbs training error of
w + σ·ε (ε ~ N(0, I)) deviates from the network's training error by the target d = 0.1; σ′ the same
for the magnitude-aware noise whose variance on weight i is σ′²w_i² + ε². Both are found by the
paper's binary search: interval [0, 2], at most 15 halvings, M = 10 Monte-Carlo draws of the whole
training split per step, stop when |deviation − d| < 0.01; deviation > d halves downwards, else
upwards; the last midpoint is σ. Every step reuses the same seed (common random numbers), so the
deviation is a deterministic function of σ. Cost: ≤ 15·10 = 150 passes over the training split per
search, two searches (plain and magnitude-aware) shared by the five measures.

Confirmation: the formulas, the ε, the search constants and the equation numbers were checked
against the public reference implementation of Jiang et al.'s measures by Dziugaite et al. (2020,
"In search of robust measures of generalization", github.com/nitarshan/robust-generalization-measures,
``data/generation/measures.py``: ``_pacbayes_sigma`` and ``get_all_measures``); the paper's PDF
text itself could not be retrieved here. Two deliberate differences from that code: (i) the noise
is drawn with standard deviation σ (the code passes σ² — and σ²w² + ε² — as the *std* argument of
``torch.normal``, a σ-vs-σ² slip; the paper's Gaussian is N(0, σ²I)), and (ii) w includes biases
(the code drops biases and BatchNorm parameters from the norms, but perturbs them).

Status: predictor — these are the numerators of PAC-Bayes bounds with data-dependent σ, constants
and union bounds dropped, meant for rank correlation with the generalization gap. Bigger values
predict worse generalization. The ``details`` also give √(μ/m) (the size adjustment of Dziugaite
et al. 2020), the search history and the number of draws.

Settings: :class:`SigmaSearchOptions` (``--bound-option jiang-flatness.target_deviation=0.05``, …).
The two searches (plain and magnitude-aware) are shared by the five measures of one evaluation
through the context's cache.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext
from ncbounds.bounds.pacbayes import perturbed_parameters, prior_centre, squared_distance
from ncbounds.errors import UsageError

__all__ = [
    "MAGNITUDE_EPS",
    "SigmaSearchOptions",
    "jiang_pacbayes_flatness",
    "jiang_pacbayes_init",
    "jiang_pacbayes_mag_flatness",
    "jiang_pacbayes_mag_init",
    "jiang_pacbayes_orig",
    "search_sigma",
]

#: ε of the magnitude-aware variance σ′²w_i² + ε² (Jiang et al. 2020; reference code ``mag_eps``).
MAGNITUDE_EPS = 1e-3

_GROUP = "jiang-flatness"
_BOUNDS = "correlate of the generalization gap"
_PAPER = ("Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020), 'Fantastic generalization measures and where to find them', "
          "ICLR, Appendix C")
_REFS = {
    "jiang_pacbayes_init": f"{_PAPER}, eq. (48) pacbayes.init",
    "jiang_pacbayes_orig": f"{_PAPER}, eq. (49) pacbayes.orig",
    "jiang_pacbayes_flatness": f"{_PAPER}, eq. (53) pacbayes.flatness",
    "jiang_pacbayes_mag_init": f"{_PAPER}, eq. (56) pacbayes.mag.init",
    "jiang_pacbayes_mag_flatness": f"{_PAPER}, eq. (61) pacbayes.mag.flatness",
}



@dataclass(frozen=True)
class SigmaSearchOptions:
    """Settings of Jiang et al.'s σ search shared by the flatness measures (defaults of their code).

    target_deviation: the change of the Gibbs training error that defines σ (0.1);
    tolerance: stop when |deviation − target| < tolerance (0.01);
    search_depth: at most this many bisection steps (15);
    mc_samples: weight draws per step (10);
    sigma_max: upper end of the bisection interval (2.0).
    """

    target_deviation: float = 0.1
    tolerance: float = 0.01
    search_depth: int = 15
    mc_samples: int = 10
    sigma_max: float = 2.0

    def validate(self) -> None:
        for key in ("target_deviation", "tolerance", "sigma_max"):
            if not getattr(self, key) > 0:
                raise UsageError(f"bound option {key} must be positive, got {getattr(self, key)}.")
        for key in ("search_depth", "mc_samples"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                raise UsageError(f"bound option {key} must be a positive integer, got {getattr(self, key)}.")


def _base_error(ctx: BoundContext) -> float:
    if ctx.train.errors is not None and ctx.train.n:
        return ctx.train.errors / ctx.train.n
    counts, n = ctx.gibbs(0.0, 1, ctx.options.seed)
    return float(np.asarray(counts)[0]) / n


def search_sigma(gibbs, base_error: float, *, magnitude_aware: bool, seed: int, target: float = 0.1,
                 tolerance: float = 0.01, depth: int = 15, mc_samples: int = 10, sigma_max: float = 2.0) -> dict[str, Any]:
    """Jiang et al.'s binary search for the σ at which the Gibbs training error moves by ``target``.

    Bisection on [0, sigma_max]: at the midpoint σ, deviation = |mean_j L̂(w + noise_j) − base_error|
    over ``mc_samples`` draws; stop when |deviation − target| < tolerance; deviation > target →
    upper end := σ, else lower end := σ. Returns σ (the last midpoint) with the search record.
    """
    lo, hi = 0.0, float(sigma_max)
    history = []
    sigma = (lo + hi) / 2
    converged = False
    for _ in range(int(depth)):
        sigma = (lo + hi) / 2
        counts, n = gibbs(sigma, int(mc_samples), int(seed), magnitude_aware=magnitude_aware)
        gibbs_error = float(np.sum(counts)) / (int(mc_samples) * n)
        deviation = abs(gibbs_error - base_error)
        history.append({"sigma": sigma, "gibbs_error": gibbs_error, "deviation": deviation})
        if abs(deviation - target) < tolerance:
            converged = True
            break
        if deviation > target:
            hi = sigma
        else:
            lo = sigma
    return {
        "sigma": sigma,
        "converged": converged,
        "hit_upper_end": (not converged) and lo > 0 and hi == float(sigma_max),
        "steps": len(history),
        "draws_per_step": int(mc_samples),
        "total_draws": len(history) * int(mc_samples),
        "history": history,
        "base_error": base_error,
        "target_deviation": target,
        "tolerance": tolerance,
        "magnitude_aware": magnitude_aware,
    }


def _search(ctx: BoundContext, opts: SigmaSearchOptions, magnitude_aware: bool) -> dict[str, Any]:
    """The σ search of these settings, once per context (the five measures share two searches)."""
    params = dict(target=float(opts.target_deviation), tolerance=float(opts.tolerance), depth=int(opts.search_depth),
                  mc_samples=int(opts.mc_samples), sigma_max=float(opts.sigma_max))
    base = _base_error(ctx)
    key = ("jiang_sigma_search", magnitude_aware, ctx.options.seed, base, tuple(sorted(asdict(opts).items())))
    return ctx.memo(key, lambda: search_sigma(ctx.gibbs, base, magnitude_aware=magnitude_aware, seed=ctx.options.seed, **params))


def _check(ctx: BoundContext, needs_init: bool) -> dict | None:
    if ctx.gibbs is None:
        raise NotApplicable("needs to evaluate perturbed networks on the training data, which is impossible without a model and "
                            "raw inputs (e.g. precomputed features).")
    if ctx.model is None:
        raise NotApplicable("needs the model weights, but the context has no model.")
    centre = None
    if needs_init:
        centre, desc = prior_centre(ctx.model, ctx.init_state)
        if centre is None:
            raise NotApplicable("needs the weights at initialization (distance to init): pass --init INIT.pt or set "
                                f"'init_checkpoint' in the sidecar; prior centre would be {desc}.")
    return centre


def _result(value: float, m: int, search: dict, extra: dict) -> Evaluation:
    details = {"sqrt_value_over_m": math.sqrt(value / m) if value >= 0 else None, **extra,
               "search": {k: v for k, v in search.items()}}
    inputs = {"split": "train", "m": m, "mc_samples_per_step": search["draws_per_step"],
              "target_deviation": search["target_deviation"], "magnitude_aware": search["magnitude_aware"]}
    return Evaluation(value, inputs=inputs, details=details)


def _pacbayes_plain(ctx: BoundContext, opts: SigmaSearchOptions, use_init: bool) -> Evaluation:
    centre = _check(ctx, use_init)
    search = _search(ctx, opts, magnitude_aware=False)
    sigma = search["sigma"]
    sq, omega = squared_distance(ctx.model, centre)
    m = ctx.train.n
    value = sq / (4.0 * sigma**2) + math.log(m / sigma) + 10.0
    return _result(value, m, search, {"sigma": sigma, "sq_norm": sq, "num_parameters": omega,
                                      "reference_point": "init" if use_init else "origin"})


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_pacbayes_init"], options=SigmaSearchOptions)
def jiang_pacbayes_init(ctx: BoundContext, opts: SigmaSearchOptions) -> Evaluation:
    """pacbayes.init (Jiang et al. 2020, App. C, eq. 48): ‖w − w₀‖²/(4σ²) + log(m/σ) + 10.

    σ: largest noise std with Gibbs training-error deviation ≈ 0.1 (binary search, module
    docstring). Needs the initialization weights (else not-applicable). Status: predictor — the
    numerator of a PAC-Bayes bound with a data-dependent σ and dropped constants; not a bound.
    """
    return _pacbayes_plain(ctx, opts, use_init=True)


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_pacbayes_orig"], options=SigmaSearchOptions)
def jiang_pacbayes_orig(ctx: BoundContext, opts: SigmaSearchOptions) -> Evaluation:
    """pacbayes.orig (Jiang et al. 2020, App. C, eq. 49): ‖w‖²/(4σ²) + log(m/σ) + 10 (prior at the origin).

    σ as for pacbayes.init. Status: predictor (PAC-Bayes numerator with data-dependent σ).
    """
    return _pacbayes_plain(ctx, opts, use_init=False)


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_pacbayes_flatness"], options=SigmaSearchOptions)
def jiang_pacbayes_flatness(ctx: BoundContext, opts: SigmaSearchOptions) -> Evaluation:
    """pacbayes.flatness (Jiang et al. 2020, App. C, eq. 53): 1/σ², σ from the deviation-0.1 search.

    Status: predictor — the flatness part of the PAC-Bayes numerator alone (sharper minimum → larger).
    """
    _check(ctx, needs_init=False)
    search = _search(ctx, opts, magnitude_aware=False)
    return _result(1.0 / search["sigma"] ** 2, ctx.train.n, search, {"sigma": search["sigma"]})


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_pacbayes_mag_init"], options=SigmaSearchOptions)
def jiang_pacbayes_mag_init(ctx: BoundContext, opts: SigmaSearchOptions) -> Evaluation:
    """pacbayes.mag.init (Jiang et al. 2020, App. C, eq. 56), magnitude-aware perturbation:

    ¼ Σ_{i=1}^{ω} log[(ε² + (σ′² + 1)‖w − w₀‖²/ω) / (ε² + σ′²(w_i − w₀,i)²)] + log(m/σ′) + 10,

    ε = 1e-3, σ′ the largest relative noise level (weight i gets variance σ′²w_i² + ε²) whose Gibbs
    training error deviates by ≈ 0.1 (binary search). It is ½·KL between a diagonal Gaussian posterior
    of variances ε² + σ′²(w_i − w₀,i)² and the best isotropic prior around w₀, plus the same
    log(m/σ′) + 10 as pacbayes.init. Needs the initialization weights. Status: predictor.
    """
    centre = _check(ctx, needs_init=True)
    search = _search(ctx, opts, magnitude_aware=True)
    sigma = search["sigma"]
    eps = float(getattr(ctx.gibbs, "magnitude_eps", MAGNITUDE_EPS))
    sq, omega = squared_distance(ctx.model, centre)
    numerator = eps**2 + (sigma**2 + 1.0) * sq / omega
    log_sum = 0.0
    with torch.no_grad():
        for pname, p in perturbed_parameters(ctx.model):
            d = p.detach().to(torch.float64) - centre[pname].detach().to(device=p.device, dtype=torch.float64)
            log_sum += float(torch.log(numerator / (eps**2 + sigma**2 * d * d)).sum())
    m = ctx.train.n
    value = 0.25 * log_sum + math.log(m / sigma) + 10.0
    return _result(value, m, search, {"sigma": sigma, "epsilon": eps, "sq_norm": sq, "num_parameters": omega,
                                      "log_ratio_sum": log_sum})


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_pacbayes_mag_flatness"], options=SigmaSearchOptions)
def jiang_pacbayes_mag_flatness(ctx: BoundContext, opts: SigmaSearchOptions) -> Evaluation:
    """pacbayes.mag.flatness (Jiang et al. 2020, App. C, eq. 61): 1/σ′², σ′ from the magnitude-aware search.

    Status: predictor (scale-aware flatness: the noise on weight i has variance σ′²w_i² + ε²).
    """
    _check(ctx, needs_init=False)
    search = _search(ctx, opts, magnitude_aware=True)
    return _result(1.0 / search["sigma"] ** 2, ctx.train.n, search, {"sigma": search["sigma"]})
