"""Neyshabur, Bhojanapalli & Srebro (2018): the PAC-Bayes spectrally-normalized margin bound.

Shares the grid, union-bound costs and network reading of the other margin bounds
(:mod:`ncbounds.bounds.margin_tools`; notation in :mod:`ncbounds.bounds.norm_margin`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext
from ncbounds.bounds.margin_tools import (
    BOUNDS,
    GRID_STEPS,
    GROUP,
    common_inputs,
    gamma_range,
    grid_cost,
    grid_value,
    margin_losses,
    prepare,
)
from ncbounds.errors import UsageError
from ncbounds.weights.network import LinearLayer

__all__ = ["NeyshaburOptions", "REF_NEYSHABUR", "neyshabur2018"]

REF_NEYSHABUR = ("Neyshabur, Bhojanapalli & Srebro (2018), 'A PAC-Bayesian approach to spectrally-normalized margin bounds "
                 "for neural networks', ICLR, Lemma 1 + proof of Thm 1 (Gaussian prior/posterior, spectral-norm "
                 "normalization); Gaussian-matrix tail: Tropp (2012), 'User-friendly tail bounds for sums of random "
                 "matrices', FoCM, Thm 4.1.1")


@dataclass(frozen=True)
class NeyshaburOptions:
    """Settings of ``neyshabur2018``.

    input_norm_bound: B with ‖x‖ ≤ B for *every* input of the distribution (e.g. √d times the largest
        pixel value); given, the bound is a certificate, else B is the largest training input norm and
        the status is plug-in.
    """

    input_norm_bound: float | None = None

    def validate(self) -> None:
        if self.input_norm_bound is not None and not self.input_norm_bound > 0:
            raise UsageError(f"bound option input_norm_bound must be positive, got {self.input_norm_bound}.")


def _tropp_variance(layer: LinearLayer) -> float:
    """v with ‖Σ_k B_k B_kᵀ‖, ‖Σ_k B_kᵀ B_k‖ ≤ v for the full matrix Σ_k g_k B_k of a Gaussian kernel.

    Linear (out × in, repeated over positions): v = max(in, out). Convolution: each output unit has at
    most (c_in/groups)·Πk taps and each input entry is read by at most (c_out/groups)·Πk (unit, tap)
    pairs (for a fixed tap, at most one output position reads a given input entry), so
    v = max(c_in/groups, c_out/groups)·Πk.
    """
    w = layer.weight
    if layer.conv is None:
        return float(max(w.shape[0], w.shape[1]))
    groups = layer.conv["groups"]
    ksize = int(np.prod(w.shape[2:]))
    return float(max(w.shape[1], w.shape[0] // groups) * ksize)


@register(bounds=BOUNDS, status="plug-in", reference=REF_NEYSHABUR, group=GROUP, options=NeyshaburOptions)
def neyshabur2018(ctx: BoundContext, opts: NeyshaburOptions) -> Evaluation:
    """PAC-Bayes spectrally-normalized margin bound (Neyshabur, Bhojanapalli & Srebro 2018, ICLR).

    Lemma 1 (constants as stated in the paper): for a prior P fixed before the data and a perturbation
    u with P_u[max_{‖x‖≤B} ‖f_{w+u}(x) − f_w(x)‖_∞ < γ/4] ≥ ½, w.p. ≥ 1 − δ,

        L₀ ≤ L̂_γ + 4·√((KL(w+u‖P) + ln(6m/δ))/(m − 1)).

    As in the proof of Thm 1: (i) the layers are rescaled to equal spectral norms β = (Π_i s_i)^{1/L}
    (s_i the certified operator norms; W_i ← (β/s_i)W_i, biases by the cumulative factor — the
    function is unchanged by positive homogeneity), (ii) P = N(0, σ²I) and u ~ N(0, σ²I) on all
    (folded) weights and biases, so KL = ‖w̃‖²/(2σ²), (iii) with probability ≥ ½ every layer's
    perturbation is small: ‖U_i‖₂ ≤ σ·t_i with t_i = √(2 v_i ln(2n_b(d_in,i + d_out,i))) (Tropp 2012,
    Thm 4.1.1: P(‖Σ_k g_k B_k‖ ≥ t) ≤ (d₁ + d₂)·exp(−t²/(2v)); v_i from the layer's weight sharing, see
    ``_tropp_variance``) and ‖u_{β,i}‖ ≤ σ·√positions·(√c_i + √(2 ln 2n_b)) (Gaussian norm
    concentration), n_b the number of blocks, each failing w.p. ≤ 1/(2n_b). (iv) Instead of the
    closed-form Lemma 2 (e·B·Π‖W‖·Σ‖U‖/‖W‖ under ‖U_i‖ ≤ ‖W_i‖/L) the output perturbation is bounded by
    the exact recursion over layers, valid for all ‖x‖ ≤ B:
    Δ_i ≤ ρ_i((β + σt_i)Δ_{i−1} + σt_i‖h_{i−1}‖ + ‖u_{β,i}‖), ‖h_i‖ ≤ ρ_i(β‖h_{i−1}‖ + ‖β̃_i‖), Δ_0 = 0,
    ‖h_0‖ ≤ ρ_0B. (v) The paper's union bound over its β grid is replaced by one over the grid of σ
    and of γ (U); for each γ the largest grid σ with Δ_L(σ) < γ/4 is used.

    B must bound ‖x‖ for *every* input of the distribution. With the bound option ``input_norm_bound``
    (e.g. √d·max pixel value) the result is a certificate; otherwise B is the largest training input
    norm (``ctx.input_norms['max']``) and the status is plug-in. The prior is centred at zero as in
    the paper (``inputs['reference']``).
    """
    prep = prepare(ctx)
    net, margins, m = prep.net, prep.margins, prep.m
    delta = ctx.options.delta
    train_max = ctx.input_norms.get("max") if ctx.input_norms else None
    given = opts.input_norm_bound
    if given is not None:
        B = float(given)
        if train_max is not None and B < float(train_max) * (1.0 - 1e-12):
            raise NotApplicable(f"the bound option input_norm_bound = {B:g} is smaller than the norm of a training input "
                                f"({float(train_max):g}).")
        status, b_rule = "certificate", "given bound on ‖x‖ (bound option input_norm_bound)"
    elif train_max is not None:
        B, status, b_rule = float(train_max), "plug-in", "largest training input norm (plug-in for the support radius)"
    else:
        raise NotApplicable("needs a bound B on the input norm: the training inputs' largest norm or the bound option "
                            "input_norm_bound.")
    L = net.depth
    rho = net.gap_lipschitz()
    rho0, rho_after = rho[0], rho[1:]
    s = np.array([layer.op_norm.value for layer in net.layers])
    if np.any(s <= 0):
        raise NotApplicable("a layer has zero weights (the network is constant).")
    log_beta = float(np.mean(np.log(s)))
    log_c = log_beta - np.log(s)
    log_cum = np.cumsum(log_c)
    beta = math.exp(log_beta)
    w_sq = 0.0
    bias_full, t_w, t_b = [], [], []
    n_blocks = L + sum(1 for layer in net.layers if layer.has_bias)
    eta = 1.0 / (2.0 * n_blocks)
    for i, layer in enumerate(net.layers):
        w_sq += math.exp(2 * log_c[i]) * layer.fro_norm**2
        if layer.has_bias:
            w_sq += math.exp(2 * log_cum[i]) * float(torch.sum(layer.bias**2))
            bias_full.append(math.exp(log_cum[i]) * layer.bias_full_norm())
            t_b.append(math.sqrt(layer.positions) * (math.sqrt(layer.bias.numel()) + math.sqrt(2.0 * math.log(1.0 / eta))))
        else:
            bias_full.append(0.0)
            t_b.append(0.0)
        t_w.append(math.sqrt(2.0 * _tropp_variance(layer) * math.log((layer.in_dim + layer.out_dim) / eta)))

    def perturbation(sigma: float) -> float:
        h, d = rho0 * B, 0.0
        for i in range(L):
            dz = (beta + sigma * t_w[i]) * d + sigma * t_w[i] * h + sigma * t_b[i]
            h = rho_after[i] * (beta * h + bias_full[i])
            d = rho_after[i] * dz
        return d

    gamma_lo, gamma_hi = gamma_range(margins)
    ks = np.arange(math.floor(GRID_STEPS * math.log2(gamma_lo)), math.ceil(GRID_STEPS * math.log2(gamma_hi)) + 1)
    gammas = 2.0 ** (ks / GRID_STEPS)
    losses = margin_losses(margins, gammas)
    base = math.log(6.0 * m / delta)
    best = None
    for k, gamma, loss in zip(ks, gammas, losses, strict=True):
        lo, hi = -4000, 4000  # grid indices of σ: perturbation(g_lo) < γ/4 assumed, perturbation(g_hi) ≥ γ/4
        if not perturbation(grid_value(lo)) < gamma / 4.0:
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if perturbation(grid_value(mid)) < gamma / 4.0:
                lo = mid
            else:
                hi = mid
        sigma = grid_value(lo)
        kl = w_sq / (2.0 * sigma**2)
        cost = grid_cost(int(k)) + grid_cost(lo)
        value = float(loss) + 4.0 * math.sqrt((kl + base + cost) / (m - 1))
        if best is None or value < best[0]:
            best = (value, float(gamma), float(loss), sigma, kl, cost, int(k), lo, perturbation(sigma))
    if best is None:
        raise NotApplicable("no noise level keeps the output perturbation below γ/4 (numerical overflow).")
    value, gamma, loss, sigma, kl, cost, k, j, pert = best
    details = {
        "gamma": gamma, "margin_loss": loss, "sigma": sigma, "kl": kl, "complexity_term": value - loss,
        "kl_part": 4.0 * math.sqrt(kl / (m - 1)), "confidence_term": 4.0 * math.sqrt((base + cost) / (m - 1)),
        "confidence_log_terms": base + cost, "union_log_cost": cost, "grid_index_gamma": k, "grid_index_sigma": j,
        "output_perturbation_bound": pert, "balanced_spectral_norm": beta, "product_of_spectral": float(np.prod(s)),
        "sq_norm_balanced_weights": w_sq, "input_norm_bound": B, "tail_thresholds_weights": t_w,
        "tail_thresholds_biases": t_b, "margin_p10": float(np.percentile(margins, 10)),
    }
    inputs = common_inputs(net, m, delta)
    inputs.update({"reference": "zero (prior N(0, σ²I), as the paper)", "input_norm_rule": b_rule,
                   "gamma_rule": "γ = 2^(k/4) and σ = 2^(j/4) over grids, with the union bound",
                   "bias_handling": "biases perturbed with the weights" if net.has_bias else "no biases"})
    reason = None if status == "certificate" else (
        "B is the largest training input norm; the bound is rigorous only if no input has a larger norm (pass "
        "--bound-option neyshabur2018.input_norm_bound=B for a certificate)")
    return Evaluation(value, inputs=inputs, reason=reason, details=details, status=status)
