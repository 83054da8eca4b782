"""Differentiable training objectives for a PAC-Bayes posterior (torch scalars in, torch scalar out).

Surrogate loss (Pérez-Ortiz et al. 2021, §4, and their code): the cross-entropy bounded by clamping
the probability of the true class at p_min and dividing by ln(1/p_min), so it lies in [0, 1] like the
0-1 loss the certificate is about:

    ℓ(x, y) = min(−ln p_y(x), ln(1/p_min)) / ln(1/p_min).

With ê the mean surrogate on a mini-batch, KL = KL(Q‖P), n the number of certificate samples and
B = KL + ln(2√n/δ) + (union cost of the prior variance), the objectives are

    fquad     = (√(ê + B/(2n)) + √(B/(2n)))²                       (PAC-Bayes-quadratic, Pérez-Ortiz et al. 2021)
    fclassic  = ê + √(B/(2n))                                      (McAllester-type, Pérez-Ortiz et al. 2021)
    flamb     = ê/(1 − t/2) + B/(n·t·(1 − t/2)),  t ∈ (0, 2)       (PAC-Bayes-λ, Thiemann et al. 2017)
    fmin      = min(fquad, fclassic)
    dziugaite-roy = ê + √((KL + 2 ln j + ln(π²n/(6δ))) / (2(n − 1)))  (Dziugaite & Roy 2017)

fquad and fclassic are both upper bounds on the PAC-Bayes-kl bound kl⁻¹(ê, B/n) (from kl(q‖p) ≥
(p − q)²/(2p) and from Pinsker's kl(q‖p) ≥ 2(p − q)², q ≤ p), so their minimum is one too and follows
whichever relaxation is tighter: fquad when ê and B/n are small (data-dependent priors), fclassic when
B/n is large (priors at initialization, where fquad's minimiser can be the constant classifier).

For flamb, t is set at every step to its closed-form optimum t* = 2/(√(1 + 2nê/B) + 1) (Thiemann et
al. 2017), treated as a constant in the gradient (the alternating minimisation of the paper, solved
exactly). j = max(1, b·ln(c/λ)) is the continuous grid index of the current prior variance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["bounded_cross_entropy", "objective_value"]


def bounded_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, p_min: float) -> torch.Tensor:
    """Per-example min(−ln p_y, ln(1/p_min))/ln(1/p_min) ∈ [0, 1] (Pérez-Ortiz et al. 2021)."""
    cap = math.log(1.0 / p_min)
    nll = F.cross_entropy(logits, targets, reduction="none")
    return torch.clamp(nll, max=cap) / cap


def objective_value(name: str, emp: torch.Tensor, kl: torch.Tensor, n: int, delta: float,
                    union_cost: float, grid_j: float) -> torch.Tensor:
    """The training objective ``name`` (see the module docstring) as a differentiable scalar."""
    log_term = math.log(2.0 * math.sqrt(n) / delta)
    B = kl + log_term + union_cost
    if name == "fquad":
        r = B / (2.0 * n)
        return (torch.sqrt(emp + r) + torch.sqrt(r)) ** 2
    if name == "fclassic":
        return emp + torch.sqrt(B / (2.0 * n))
    if name == "fmin":
        r = B / (2.0 * n)
        return torch.minimum((torch.sqrt(emp + r) + torch.sqrt(r)) ** 2, emp + torch.sqrt(r))
    if name == "flamb":
        with torch.no_grad():
            ratio = 2.0 * n * emp.clamp_min(0.0) / B.clamp_min(1e-12)
            t = 2.0 / (torch.sqrt(1.0 + ratio) + 1.0)
        return emp / (1.0 - t / 2.0) + B / (n * t * (1.0 - t / 2.0))
    if name == "dziugaite-roy":
        j = max(1.0, grid_j)
        dr = kl + 2.0 * math.log(j) + math.log(math.pi**2 * n / (6.0 * delta))
        return emp + torch.sqrt(dr / (2.0 * (n - 1)))
    raise ValueError(f"unknown objective {name!r}")
