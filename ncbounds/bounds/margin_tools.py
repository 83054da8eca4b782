"""What the margin / norm bounds share: the data-chosen grid and its union-bound costs, the network
read as a chain of linear layers, training margins and ramp losses.

See :mod:`ncbounds.bounds.norm_margin` for the notation and the two standard steps, (M) the Rademacher
margin bound and (U) the union bound over grid points g_k = 2^{k/4} with prior π(k) = 1/(2(|k|+1)(|k|+2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ncbounds.bounds.base import NotApplicable
from ncbounds.bounds.context import BoundContext
from ncbounds.weights.network import LinearLayer, NetworkWeights, extract_network

BOUNDS = "population 0-1 error of the network"
GROUP = "norm-margin"

#: Grid points per factor 2 of every data-chosen scale (γ, norm budgets, τ, σ).
GRID_STEPS = 4
#: Margins searched: from 2^-30 to 2^6 times the largest training margin (beyond, the bound only grows or is ≥ 1).
GAMMA_OCTAVES = 30
GAMMA_OCTAVES_UP = 6


def _fingerprint(model: torch.nn.Module) -> tuple:
    return tuple((k, v.data_ptr(), v._version, tuple(v.shape)) for k, v in model.state_dict(keep_vars=True).items())


def network_of(ctx: BoundContext) -> NetworkWeights:
    """:func:`~ncbounds.weights.network.extract_network` of the context's model, once per context and
    weight state (every norm-based bound and Jiang measure of one evaluation reads the same network)."""
    seed = int(getattr(ctx.options, "seed", 0))
    key = ("network", _fingerprint(ctx.model), tuple(ctx.input_shape), id(ctx.init_state), seed)
    return ctx.memo(key, lambda: extract_network(ctx.model, ctx.input_shape, ctx.init_state, seed=seed))


def grid_value(k: int) -> float:
    return 2.0 ** (k / GRID_STEPS)


def grid_up(x: float) -> int:
    """Smallest k with 2^{k/4} ≥ x (x > 0)."""
    k = math.ceil(GRID_STEPS * math.log2(x))
    while grid_value(k) < x:
        k += 1
    while grid_value(k - 1) >= x:
        k -= 1
    return k


def grid_nearest(x: float) -> int:
    return int(round(GRID_STEPS * math.log2(x)))


def grid_cost(k: int) -> float:
    """ln(1/π(k)) of the prior π(k) = 1/(2(|k|+1)(|k|+2)) on ℤ (total mass 3/4)."""
    return math.log(2.0 * (abs(k) + 1) * (abs(k) + 2))


@dataclass
class Prepared:
    net: NetworkWeights
    margins: np.ndarray
    m: int
    sum_sq: float


def prepare(ctx: BoundContext) -> Prepared:
    """The network, training margins and input norms the three bounds share; NotApplicable when one is missing."""
    if ctx.model is None:
        raise NotApplicable("needs the model's weights, but the context has none (e.g. precomputed "
                            "features were evaluated).")
    margins = ctx.train.margins
    if margins is None:
        raise NotApplicable("needs the training margins, but the context has no classifier outputs.")
    margins = np.asarray(margins, dtype=np.float64).reshape(-1)
    m = int(ctx.train.n)
    if m < 2 or len(margins) != m:
        raise NotApplicable(f"needs one margin per training sample (m = {m}, {len(margins)} margins).")
    if not np.all(np.isfinite(margins)):
        raise NotApplicable("the training margins contain NaN or inf.")
    sum_sq = ctx.input_norms.get("sum_sq") if ctx.input_norms else None
    if sum_sq is None or not math.isfinite(float(sum_sq)):
        raise NotApplicable("needs Σ‖x_i‖² of the training inputs (ctx.input_norms['sum_sq']), which the "
                                                "context does not have.")
    net = network_of(ctx)
    if not net.supported:
        raise NotApplicable(f"the model is not a chain of linear layers and 1-Lipschitz positively homogeneous "
                                                f"maps: {net.reason}.")
    return Prepared(net, margins, m, float(sum_sq))


def gamma_range(margins: np.ndarray) -> tuple[float, float]:
    """[γ_lo, γ_hi] searched: 2^-30 to 2^6 times the largest training margin (the ramp loss is < 1 above it)."""
    top = float(np.max(margins))
    if top <= 0.0:  # no correctly classified point: every ramp loss is 1, any scale gives a vacuous bound
        top = float(np.max(np.abs(margins))) or 1.0
    return top * 2.0 ** (-GAMMA_OCTAVES), top * 2.0 ** GAMMA_OCTAVES_UP


def ramp_losses(margins: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    """The ramp loss (1/m) Σ_i clip(1 − γ_i/γ, 0, 1) at every γ > 0 of ``gammas`` (metrics.margins.ramp_loss).

    From the sorted margins once: with n₀ = #{γ_i ≤ 0} and the k(γ) margins in (0, γ) of sum P(γ),
    m·ramp(γ) = n₀ + (k·γ − P)/γ — O(m log m + |grid|·log m) instead of O(m·|grid|); the prefix sums
    round to ≤ ~k·ε·γ, i.e. the loss to ≤ ~2ε absolutely.
    """
    srt = np.sort(np.asarray(margins, dtype=np.float64).reshape(-1))
    gammas = np.asarray(gammas, dtype=np.float64).reshape(-1)
    m = len(srt)
    if m == 0:
        return np.full(len(gammas), np.nan)
    n0 = int(np.searchsorted(srt, 0.0, side="right"))
    prefix = np.concatenate([[0.0], np.cumsum(srt[n0:])])  # sums of the positive margins, smallest first
    k = np.searchsorted(srt, gammas, side="left") - n0  # margins in (0, γ)
    k = np.clip(k, 0, m - n0)
    return (n0 + (k * gammas - prefix[k]) / gammas) / m


def margin_losses(margins: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    srt = np.sort(margins)
    return np.searchsorted(srt, gammas, side="right") / len(srt)


def confidence(m: int, delta: float, log_cost: np.ndarray | float) -> np.ndarray:
    return 3.0 * np.sqrt((math.log(2.0 / delta) + log_cost) / (2.0 * m))


def sigma_max_2x2(a: float, b: float) -> float:
    """Largest singular value of [[a, b], [0, 1]] (closed form), with a 1e-12 relative safety margin."""
    t = a * a + b * b + 1.0
    disc = math.sqrt(max(t * t - 4.0 * a * a, 0.0))
    return math.sqrt((t + disc) / 2.0) * (1.0 + 1e-12)


def bias_rows(layer: LinearLayer, bias: torch.Tensor | None) -> np.ndarray:
    return np.zeros(layer.out_dim) if bias is None else layer.bias_rows(bias)


def any_nonzero(t: torch.Tensor | None) -> bool:
    return t is not None and bool(torch.any(t != 0))


def tau_on_grid(rms: float) -> tuple[int, float, float]:
    k = grid_nearest(rms if rms > 0 else 1.0)
    return k, grid_value(k), grid_cost(k)


def common_inputs(net: NetworkWeights, m: int, delta: float) -> dict[str, Any]:
    return {"split": "train", "m": m, "delta": delta, "layers": net.summary(),
            "norm_methods": [None if layer.op_norm is None else layer.op_norm.method for layer in net.layers],
            "lipschitz_between_layers": net.gap_lipschitz(),
            "grid": f"g_k = 2^(k/{GRID_STEPS}), prior 1/(2(|k|+1)(|k|+2)) per index"}
