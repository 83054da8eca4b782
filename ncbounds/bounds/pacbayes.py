"""PAC-Bayes certificate for the Gibbs classifier of an isotropic Gaussian around the trained weights.

Posterior Q = N(w, σ²I) over the perturbed parameters (:func:`perturbed_parameters`: every trainable
floating-point parameter), prior P = N(w₀, σ²I) with w₀ the weights at initialization when
``ctx.init_state`` covers those parameters, else w₀ = 0. σ is the **standard deviation** of the
noise (w' = w + σ·ε, ε ~ N(0, I)); KL(Q‖P) = ‖w − w₀‖² / (2σ²).

The certificate is the two-step bound of Dziugaite & Roy (2017, §3 and §4) in the form of
Pérez-Ortiz et al. (2021, "Tighter risk certificates for neural networks", JMLR 22(227), §6.2 risk
certificate): with ê_MC the mean training error of N_MC weight draws from Q,

    Ê     = kl⁻¹(ê_MC, ln(2/δ′_MC) / N_MC)                  (sample-convergence step, Langford & Caruana 2001)
    bound = kl⁻¹(Ê, (KL(Q‖P) + ln(2√m/δ′_PB)) / m)          (PAC-Bayes-kl, Maurer 2004 Thm 5, m ≥ 8)

σ is chosen from a grid fixed before seeing the data; every grid point gets the shares
δ′_MC = δ_MC/G and δ′_PB = δ_PB/G (δ_MC + δ_PB = δ), so all 2G events hold together with
probability ≥ 1 − δ and the minimum over the grid is a certificate at level δ (union bound paid).

Confirmed against: the formulas above as stated in the two papers and the authors' code of
Pérez-Ortiz et al. (github.com/mperezortiz/PBB, ``pbb/bounds.py``, ``compute_final_stats_risk``:
``inv_kl(error_01, log(2/δ_test)/mc_samples)`` then ``inv_kl(·, (kl + log(2√n/δ))/n)``). Two
differences, both on the safe side: each Monte-Carlo draw here is one weight vector evaluated on the
*whole* training split (the i.i.d. [0, 1]-valued draws the sample-convergence bound assumes), and
kl⁻¹ returns a certified upper end (:func:`ncbounds.stats.binomial.kl_inverse_upper`) rather than a
bisection midpoint.

Bound modules never touch data or devices: the Monte-Carlo errors come from ``ctx.gibbs`` (see
:class:`ncbounds.bounds.context.GibbsOracle`, implemented by :mod:`ncbounds.perturb`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext
from ncbounds.errors import UsageError
from ncbounds.stats.binomial import kl_inverse_upper

__all__ = [
    "DEFAULT_SIGMA_GRID",
    "PacBayesGaussOptions",
    "gaussian_kl",
    "pacbayes_gauss",
    "perturbed_parameters",
    "prior_centre",
    "two_step_certificate",
]

#: σ_k = 10^(−k/2), k = 0..7 (1 … 3.2e-4): half-decade steps, fixed before any data is seen.
DEFAULT_SIGMA_GRID: tuple[float, ...] = tuple(10.0 ** (-k / 2) for k in range(8))

#: Fraction of δ spent on the Monte-Carlo step (the rest on the PAC-Bayes step).
DEFAULT_MC_DELTA_FRACTION = 0.5

_BOUNDS = "Gibbs risk of the stochastic network N(w, σ²I)"
_REFERENCE = (
    "Dziugaite & Roy (2017), 'Computing nonvacuous generalization bounds for deep (stochastic) neural networks', "
    "UAI, §3–4; Pérez-Ortiz et al. (2021), 'Tighter risk certificates for neural networks', JMLR 22(227), §6.2 "
    "(two-step certificate with Maurer's PAC-Bayes-kl bound)"
)


# ------------------------------------------------------------------------------------------------
# parameters, prior centre, KL
# ------------------------------------------------------------------------------------------------


def perturbed_parameters(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The parameters that Gaussian posteriors perturb: every trainable floating-point parameter.

    ``(name, tensor)`` in ``model.named_parameters()`` order with ``requires_grad``; when no
    parameter requires grad (a model frozen for evaluation) every floating-point parameter is used.
    Buffers (e.g. BatchNorm running statistics) are never included. The perturbation oracle
    (:mod:`ncbounds.perturb`) and the KL terms use this same list.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    trainable = [(n, p) for n, p in params if p.requires_grad]
    return trainable or params


def prior_centre(model: torch.nn.Module, init_state: dict[str, torch.Tensor] | None
                 ) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(init tensors by parameter name, description) or (None, why the zero centre is used)."""
    names = perturbed_parameters(model)
    if init_state is None:
        return None, "zero (no initialization weights were given)"
    missing = [n for n, _ in names if n not in init_state]
    bad = [n for n, p in names if n in init_state and tuple(init_state[n].shape) != tuple(p.shape)]
    if missing or bad:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
        if bad:
            parts.append(f"shape mismatch for {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}")
        return None, f"zero (the initialization weights do not match the model: {'; '.join(parts)})"
    return {n: init_state[n] for n, _ in names}, "initialization weights (ctx.init_state)"


def squared_distance(model: torch.nn.Module, centre: dict[str, torch.Tensor] | None) -> tuple[float, int]:
    """(‖w − w₀‖² in float64, number of parameters) over :func:`perturbed_parameters` (w₀ = 0 if None)."""
    total = 0.0
    count = 0
    with torch.no_grad():
        for name, p in perturbed_parameters(model):
            w = p.detach().to(torch.float64)
            if centre is not None:
                w = w - centre[name].detach().to(device=w.device, dtype=torch.float64)
            total += float((w * w).sum())
            count += p.numel()
    return total, count


def gaussian_kl(sq_dist: float, sigma: float) -> float:
    """KL(N(w, σ²I) ‖ N(w₀, σ²I)) = ‖w − w₀‖² / (2σ²) (equal covariances: trace/log-det terms cancel)."""
    return sq_dist / (2.0 * sigma * sigma)


# ------------------------------------------------------------------------------------------------
# the two-step certificate
# ------------------------------------------------------------------------------------------------


def two_step_certificate(e_mc: float, n_mc: int, kl: float, m: int, delta_mc: float, delta_pb: float) -> dict[str, float]:
    """Dziugaite & Roy (2017) / Pérez-Ortiz et al. (2021) certificate for one posterior.

    Ê = kl⁻¹(ê_MC, ln(2/δ_MC)/N_MC); bound = kl⁻¹(Ê, (KL + ln(2√m/δ_PB))/m). Holds with
    probability ≥ 1 − δ_MC − δ_PB (δ's are the shares of this one posterior). Returns every term.
    """
    mc_budget = math.log(2.0 / delta_mc) / n_mc
    e_upper = float(kl_inverse_upper(e_mc, mc_budget))
    pb_log = math.log(2.0) + 0.5 * math.log(m) - math.log(delta_pb)  # ln(2√m/δ_PB)
    pb_budget = (kl + pb_log) / m
    bound = float(kl_inverse_upper(e_upper, pb_budget))
    return {"e_mc": e_mc, "e_mc_upper": e_upper, "mc_budget": mc_budget, "kl": kl,
            "pb_log_term": pb_log, "pb_budget": pb_budget, "bound": bound}


@dataclass(frozen=True)
class PacBayesGaussOptions:
    """Settings of ``pacbayes_gauss``, to be fixed before seeing the data.

    sigma_grid: the σ values (noise standard deviations) the union bound covers;
    mc_delta_fraction: δ_MC/δ, the share of δ spent on the Monte-Carlo step (0.5);
    screen: screening draws per σ (0 = off); refine: σ's fully evaluated after screening (2). Screening
        only decides which grid points get the N-draw certificate (its draws are not reused); the union
        bound still covers the whole grid.
    """

    sigma_grid: tuple[float, ...] = DEFAULT_SIGMA_GRID
    mc_delta_fraction: float = DEFAULT_MC_DELTA_FRACTION
    screen: int = 0
    refine: int = 2

    def validate(self) -> None:
        grid = tuple(self.sigma_grid) if isinstance(self.sigma_grid, (tuple, list)) else (self.sigma_grid,)
        if not grid or any(not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0) for s in grid):
            raise UsageError(f"bound option sigma_grid must hold positive finite values, e.g. (0.1,0.01); got {self.sigma_grid!r}.")
        if not 0.0 < float(self.mc_delta_fraction) < 1.0:
            raise UsageError(f"bound option mc_delta_fraction must lie in (0, 1); got {self.mc_delta_fraction}.")
        if int(self.screen) < 0 or int(self.refine) < 1:
            raise UsageError("bound options screen must be ≥ 0 and refine ≥ 1.")


def _data_dependent_buffers(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_buffers() if n.endswith(("running_mean", "running_var"))]


@register(bounds=_BOUNDS, status="certificate", group="pac-bayes", reference=_REFERENCE, options=PacBayesGaussOptions,
          certifies="stochastic")
def pacbayes_gauss(ctx: BoundContext, opts: PacBayesGaussOptions) -> Evaluation:
    """Two-step PAC-Bayes-kl certificate on the Gibbs risk of N(w, σ²I), σ from a fixed grid.

    Formula (σ = noise standard deviation, m training samples, N = ``options.mc_samples`` draws,
    G grid points, δ = δ_MC + δ_PB):

        KL_σ   = ‖w − w₀‖² / (2σ²)                                   (w₀ = init weights, else 0)
        ê_σ    = (1/N) Σ_j L̂_S(w + σε_j)                             (Monte-Carlo Gibbs training error)
        Ê_σ    = kl⁻¹(ê_σ, ln(2G/δ_MC) / N)                         (Langford & Caruana 2001 sample bound)
        B_σ    = kl⁻¹(Ê_σ, (KL_σ + ln(2√m·G/δ_PB)) / m)             (Maurer 2004, PAC-Bayes-kl, m ≥ 8)
        value  = min_σ B_σ

    Reference: Dziugaite & Roy (2017), UAI, §3 (PAC-Bayes-kl with kl⁻¹, MC estimate with its own
    kl confidence step) and §4 (σ chosen from a grid with a union bound); Pérez-Ortiz et al. (2021),
    JMLR 22(227), §6.2, risk certificate kl⁻¹(kl⁻¹(ê, ln(2/δ′)/N), (KL + ln(2√m/δ))/m).

    Status: certificate — with probability ≥ 1 − δ over the training sample and the Monte-Carlo
    draws, the Gibbs risk E_{w'~Q}[L(w')] of the reported σ is below the value: each grid point
    spends δ_MC/G and δ_PB/G, so the union over the 2G events costs exactly δ and taking the minimum
    is allowed. The grid (default σ_k = 10^(−k/2), k = 0..7, i.e. 1 … 3.2e-4), the δ split (half and half) and the
    prior are fixed before seeing data. It bounds the *stochastic* network, not the trained one.
    Caveat recorded in ``details``: data-dependent buffers (BatchNorm running statistics) are
    held fixed and are not covered by the prior.

    Settings: :class:`PacBayesGaussOptions` (σ grid, δ split, screening), e.g.
    ``--bound-option pacbayes_gauss.sigma_grid=(0.1,0.03,0.01)``.
    """
    delta = ctx.options.delta
    grid_value = opts.sigma_grid if isinstance(opts.sigma_grid, (tuple, list)) else (opts.sigma_grid,)
    grid = tuple(float(s) for s in grid_value)
    n_mc = int(ctx.options.mc_samples)
    frac = float(opts.mc_delta_fraction)
    screen = int(opts.screen)
    refine = int(opts.refine)
    inputs: dict[str, Any] = {"sigma_grid": list(grid), "mc_samples": n_mc, "split": "train", "seed": ctx.options.seed}
    if ctx.gibbs is None:
        raise NotApplicable("needs to evaluate perturbed networks on the training data, which is impossible without a "
                               "model and raw inputs (e.g. precomputed features); run it on a checkpoint with --data inputs.", inputs)
    if ctx.model is None:
        raise NotApplicable("needs the model weights (posterior centre), but the context has no model.", inputs)
    if not grid or any(not (math.isfinite(s) and s > 0) for s in grid):
        raise NotApplicable(f"the σ grid must hold positive finite values; got {list(grid)}.", inputs)
    if n_mc < 1:
        raise NotApplicable(f"needs at least one Monte-Carlo sample (mc_samples = {n_mc}).", inputs)
    if not 0.0 < frac < 1.0:
        raise NotApplicable(f"the bound option mc_delta_fraction must lie in (0, 1); got {frac}.", inputs)

    centre, centre_desc = prior_centre(ctx.model, ctx.init_state)
    sq_dist, n_params = squared_distance(ctx.model, centre)
    inputs.update(prior_centre=centre_desc, num_parameters=n_params)
    G = len(grid)
    delta_mc, delta_pb = frac * delta, (1.0 - frac) * delta
    share_mc, share_pb = delta_mc / G, delta_pb / G

    evaluate = list(range(G))
    screened = None
    if screen > 0 and 0 < refine < G:
        screened = []
        for k, s in enumerate(grid):
            counts, m = ctx.gibbs(s, screen, ctx.options.seed + 7919 * (k + 1) + 1)
            e = float(np.sum(counts)) / (screen * m)
            est = float(kl_inverse_upper(e, (gaussian_kl(sq_dist, s) + math.log(2 * math.sqrt(m) / share_pb)) / m)) if m >= 8 else 1.0
            screened.append({"sigma": s, "e_screen": e, "bound_estimate": est})
        evaluate = sorted(sorted(range(G), key=lambda k: screened[k]["bound_estimate"])[:refine])

    table = []
    m_used = None
    for k in evaluate:
        s = grid[k]
        counts, m = ctx.gibbs(s, n_mc, ctx.options.seed)
        counts = np.asarray(counts, dtype=np.float64)
        if counts.shape != (n_mc,):
            raise ValueError(f"the Gibbs oracle returned {counts.shape} counts for {n_mc} draws")
        m = int(m)
        m_used = m if m_used is None else m_used
        if m != m_used:
            raise ValueError("the Gibbs oracle reported different training-set sizes for different σ")
        if m < 8:
            raise NotApplicable(f"Maurer's PAC-Bayes-kl bound needs m ≥ 8 training samples; got m = {m}.", inputs)
        e_mc = float(counts.sum()) / (n_mc * m)
        row = two_step_certificate(e_mc, n_mc, gaussian_kl(sq_dist, s), m, share_mc, share_pb)
        table.append({"sigma": s, **row})
    best = min(table, key=lambda r: r["bound"])
    inputs["m"] = m_used
    details: dict[str, Any] = {
        "sigma": best["sigma"],
        "e_mc": best["e_mc"],
        "e_mc_upper": best["e_mc_upper"],
        "mc_budget": best["mc_budget"],
        "kl": best["kl"],
        "kl_over_m": best["kl"] / m_used,
        "pb_log_term": best["pb_log_term"],
        "pb_budget": best["pb_budget"],
        "union_log_grid": math.log(G),
        "grid_size": G,
        "delta_mc": delta_mc,
        "delta_pb": delta_pb,
        "delta_mc_per_sigma": share_mc,
        "delta_pb_per_sigma": share_pb,
        "sq_dist_to_prior": sq_dist,
        "train_error": ctx.train.error_rate,
        "per_sigma": table,
    }
    if screened is not None:
        details["screening"] = {"draws_per_sigma": screen, "refined": [grid[k] for k in evaluate], "per_sigma": screened}
    buffers = _data_dependent_buffers(ctx.model)
    if buffers:
        details["caveat"] = (f"{len(buffers)} BatchNorm running-statistic buffers were fitted on the training data and are held "
                             "fixed; the prior does not cover them, so the certificate is exact only for the network with "
                             "these statistics treated as part of the architecture.")
    return Evaluation(best["bound"], inputs=inputs, details=details)
