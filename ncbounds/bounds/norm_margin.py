"""Margin / norm bounds on the 0-1 error of the network (DESIGN §6): Bartlett et al. 2017, Golowich et
al. 2018, Neyshabur et al. 2018.

All three read the network through :func:`ncbounds.weights.network.network_for` — a chain of linear
layers (BatchNorm folded, certified operator norms) separated by fixed 1-Lipschitz-type positively
homogeneous maps. A model that is not such a chain (residual blocks, attention, other activations)
gets 'not-applicable' with the extraction's reason; so does a context without model, margins or
input norms.

Notation: m training samples (``ctx.train.n``), K classes, γ_i the multiclass training margins
(``ctx.train.margins``), ‖X‖_F = √(Σ_i ‖x_i‖²) (``ctx.input_norms['sum_sq']``), B = max_i ‖x_i‖
(``ctx.input_norms['max']``), ρ_i the Lipschitz constant of the maps after layer i (ρ_0: before
the first layer, applied to the inputs), δ = ``ctx.options.delta``. Margin losses: ramp
ℓ_γ(t) = clip(1 − t/γ, 0, 1) (``metrics.margins.ramp_loss``), L̂_γ = fraction of γ_i ≤ γ.

Two standard steps shared by the Rademacher bounds (Bartlett, Golowich):

- (M) Mohri, Rostamizadeh & Talwalkar (2018), *Foundations of ML*, 2nd ed., Thm 3.3: for a class
  G of [0, 1]-valued functions, w.p. ≥ 1 − δ, E g ≤ Ê g + 2·R̂_S(G) + 3·√(ln(2/δ)/(2m)) for all g.
  With g = ℓ_γ(margin) ≥ 1[error]: L₀ ≤ ramp_γ + 2·R̂_S(ℓ_γ∘F) + 3·√(ln(2/δ)/(2m)) (DESIGN §6).
- (U) Union bounds over quantities chosen after seeing the data. Every such quantity is put on the
  geometric grid g_k = 2^{k/4}, k ∈ ℤ, with prior weight π(k) = 1/(2(|k|+1)(|k|+2)) (Σ_k π(k) = 3/4
  ≤ 1); a statement made for the index tuple (k_1, …, k_J) is given failure probability
  δ·Π_j π(k_j), which adds Σ_j ln(2(|k_j|+1)(|k_j|+2)) to ln(2/δ) (resp. ln(6m/δ)). All tuples
  together fail with probability ≤ δ. The grid is searched for the smallest bound.

Biases. The three papers state their bounds for networks without biases. A network with biases is
rewritten exactly as one without: a constant coordinate t = τ is appended to the input, layer i
becomes [[A_i, β_i/τ_i], [0, 1]] on (h, t), and the map after it acts as (h, t) ↦ (σ_i(h), c_i·t)
(Bartlett: c_i = ρ_i, so the augmented map is still ρ_i-Lipschitz and positively homogeneous;
Golowich: c_i = 1, t > 0 passes the element-wise ReLU unchanged). Then ‖X‖_F² → ‖X‖_F² + m·τ²,
‖[[A, β/τ],[0, 1]]‖₂ ≤ σ_max([[‖A‖₂, ‖β‖/τ],[0, 1]]) (closed form of a 2×2 matrix; the output
layer has no constant row: √(‖A‖₂² + ‖β‖²/τ²)), Frobenius and (2,1) norms gain the bias column.
τ = g_k is the grid point nearest to the root-mean-square input norm, paid by (U). Neyshabur's
perturbation analysis handles biases directly (no augmentation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ncbounds.bounds.base import BoundResult, register
from ncbounds.bounds.context import BoundContext
from ncbounds.weights.network import LinearLayer, NetworkWeights, network_for

__all__ = ["bartlett2017", "golowich2018", "neyshabur2018", "GRID_STEPS"]

_BOUNDS = "population 0-1 error of the network"
_GROUP = "norm-margin"

#: Grid points per factor 2 of every data-chosen scale (γ, norm budgets, τ, σ).
GRID_STEPS = 4
#: Margins searched: from 2^-30 to 2^6 times the largest training margin (beyond, the bound only grows or is ≥ 1).
_GAMMA_OCTAVES = 30
_GAMMA_OCTAVES_UP = 6

REF_BARTLETT = ("Bartlett, Foster & Telgarsky (2017), 'Spectrally-normalized margin bounds for neural networks', NeurIPS, "
                "Lemma A.8 (fixed norm budgets) + union bound over γ and the budgets as in the proof of Thm 1.1; "
                "explicit form of DESIGN §6 (Graf et al. 2022 code)")
REF_GOLOWICH = ("Golowich, Rakhlin & Shamir (2018), 'Size-independent sample complexity of neural networks', COLT, Thm 1; "
                "multiclass ramp loss via Maurer (2016, 'A vector-contraction inequality for Rademacher complexities', "
                "ALT, Cor. 1); Mohri et al. (2018) Thm 3.3")
REF_NEYSHABUR = ("Neyshabur, Bhojanapalli & Srebro (2018), 'A PAC-Bayesian approach to spectrally-normalized margin bounds "
                 "for neural networks', ICLR, Lemma 1 + proof of Thm 1 (Gaussian prior/posterior, spectral-norm "
                 "normalization); Gaussian-matrix tail: Tropp (2012), 'User-friendly tail bounds for sums of random "
                 "matrices', FoCM, Thm 4.1.1")

#: Constant of the fixed-budget Rademacher bound (DESIGN §6); see :func:`bartlett2017` for its status.
BARTLETT_DUDLEY_CONSTANT = 12.0


# ------------------------------------------------------------------------------------------------
# shared helpers


def _grid_value(k: int) -> float:
    return 2.0 ** (k / GRID_STEPS)


def _grid_up(x: float) -> int:
    """Smallest k with 2^{k/4} ≥ x (x > 0)."""
    k = math.ceil(GRID_STEPS * math.log2(x))
    while _grid_value(k) < x:
        k += 1
    while _grid_value(k - 1) >= x:
        k -= 1
    return k


def _grid_nearest(x: float) -> int:
    return int(round(GRID_STEPS * math.log2(x)))


def _cost(k: int) -> float:
    """ln(1/π(k)) of the prior π(k) = 1/(2(|k|+1)(|k|+2)) on ℤ (total mass 3/4)."""
    return math.log(2.0 * (abs(k) + 1) * (abs(k) + 2))


def _not_applicable(name: str, reference: str, reason: str, delta: float | None = None) -> BoundResult:
    return BoundResult(name, None, _BOUNDS, "not-applicable", reference, delta, reason=reason)


@dataclass
class _Prepared:
    net: NetworkWeights
    margins: np.ndarray
    m: int
    sum_sq: float


def _prepare(ctx: BoundContext, name: str, reference: str) -> _Prepared | BoundResult:
    delta = ctx.options.delta
    if ctx.model is None:
        return _not_applicable(name, reference, "needs the model's weights, but the context has none (e.g. precomputed "
                                                "features were evaluated).", delta)
    margins = ctx.train.margins
    if margins is None:
        return _not_applicable(name, reference, "needs the training margins, but the context has no classifier outputs.", delta)
    margins = np.asarray(margins, dtype=np.float64).reshape(-1)
    m = int(ctx.train.n)
    if m < 2 or len(margins) != m:
        return _not_applicable(name, reference, f"needs one margin per training sample (m = {m}, {len(margins)} margins).", delta)
    if not np.all(np.isfinite(margins)):
        return _not_applicable(name, reference, "the training margins contain NaN or inf.", delta)
    sum_sq = ctx.input_norms.get("sum_sq") if ctx.input_norms else None
    if sum_sq is None or not math.isfinite(float(sum_sq)):
        return _not_applicable(name, reference, "needs Σ‖x_i‖² of the training inputs (ctx.input_norms['sum_sq']), which the "
                                                "context does not have.", delta)
    net = network_for(ctx)
    if not net.supported:
        return _not_applicable(name, reference, f"the model is not a chain of linear layers and 1-Lipschitz positively homogeneous "
                                                f"maps: {net.reason}.", delta)
    return _Prepared(net, margins, m, float(sum_sq))


def _gamma_range(margins: np.ndarray) -> tuple[float, float]:
    """[γ_lo, γ_hi] searched: 2^-30 to 2^6 times the largest training margin (the ramp loss is < 1 above it)."""
    top = float(np.max(margins))
    if top <= 0.0:  # no correctly classified point: every ramp loss is 1, any scale gives a vacuous bound
        top = float(np.max(np.abs(margins))) or 1.0
    return top * 2.0 ** (-_GAMMA_OCTAVES), top * 2.0 ** _GAMMA_OCTAVES_UP


def _ramp_losses(margins: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    return np.array([float(np.mean(np.clip(1.0 - margins / g, 0.0, 1.0))) for g in gammas])


def _margin_losses(margins: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    srt = np.sort(margins)
    return np.searchsorted(srt, gammas, side="right") / len(srt)


def _confidence(m: int, delta: float, log_cost: np.ndarray | float) -> np.ndarray:
    return 3.0 * np.sqrt((math.log(2.0 / delta) + log_cost) / (2.0 * m))


def _sigma_max_2x2(a: float, b: float) -> float:
    """Largest singular value of [[a, b], [0, 1]] (closed form), with a 1e-12 relative safety margin."""
    t = a * a + b * b + 1.0
    disc = math.sqrt(max(t * t - 4.0 * a * a, 0.0))
    return math.sqrt((t + disc) / 2.0) * (1.0 + 1e-12)


def _bias_rows(layer: LinearLayer, bias: torch.Tensor | None) -> np.ndarray:
    return np.zeros(layer.out_dim) if bias is None else layer.bias_rows(bias)


def _any_nonzero(t: torch.Tensor | None) -> bool:
    return t is not None and bool(torch.any(t != 0))


def _tau(rms: float) -> tuple[int, float, float]:
    k = _grid_nearest(rms if rms > 0 else 1.0)
    return k, _grid_value(k), _cost(k)


def _common_inputs(net: NetworkWeights, m: int, delta: float) -> dict[str, Any]:
    return {"split": "train", "m": m, "delta": delta, "layers": net.summary(),
            "norm_methods": [None if layer.op_norm is None else layer.op_norm.method for layer in net.layers],
            "lipschitz_between_layers": net.gap_lipschitz(),
            "grid": f"g_k = 2^(k/{GRID_STEPS}), prior 1/(2(|k|+1)(|k|+2)) per index"}


# ------------------------------------------------------------------------------------------------
# Bartlett, Foster & Telgarsky 2017


@register("bartlett2017", bounds=_BOUNDS, status="up-to-constants", reference=REF_BARTLETT, group=_GROUP)
def bartlett2017(ctx: BoundContext) -> BoundResult:
    """Spectrally-normalized margin bound, explicit constants, every data-chosen quantity paid by (U).

    Fixed-budget form (Lemma A.8 of Bartlett, Foster & Telgarsky 2017, NeurIPS, in the explicit form of
    DESIGN §6 / Graf et al. 2022): for margin γ, spectral budgets s_i ≥ ‖A_i‖₂ and (2,1) budgets
    b_i ≥ ‖A_i − M_i‖_{2,1} (sum over output units of the ℓ2 norm of the unit's incoming weights, i.e.
    the paper's ‖A_iᵀ − M_iᵀ‖_{2,1}, of the full matrix of the layer — a convolution's matrix has one
    row per output channel and position), with probability ≥ 1 − δ' every such network satisfies

        L₀ ≤ ramp_γ + 2·R + 3·√(ln(2/δ')/(2m)),
        R = 4/m + (12·ln m/√m)·√(ln(2W̄))·(Σ_i C_i^{2/3})^{3/2},
        C_i = (4/γ)·(‖X‖_F/√m)·(Π_l s_l ρ_l)·b_i/s_i,

    W̄ = max_i d_in,i·d_out,i (entries of the largest layer matrix; ln(2W̄) covers the ln(2·d·m) of the
    paper's Lemma 3.2). Reference matrices M_i: the folded weights at initialization when
    ``ctx.init_state`` is given, else zero (``inputs['reference']``).

    Union bound (U), as in the proof of Thm 1.1: with M = 0 the class is invariant under rescaling
    the layers (positive homogeneity), so the network is rescaled to s_i = 1 (i < L) and margin 1;
    the budgets become u_i = b_i/s_i (grid, rounded up) and r = Π s_l/γ (grid; γ = Π s_l/r is then
    the margin used): C_i = 4·(‖X‖_F/√m)·(Π ρ_l)·r·u_i. With M = init the budgets s_i, b_i and γ
    are each on the grid. τ (biases, see the module docstring) adds one index. The bound is
    minimized over the grid of r (resp. γ). Result: invariant under rescaling the last layer (or any
    layers) of a bias-free network with M = 0.

    Status: up-to-constants. The factor 12·ln m (Dudley's entropy integral with the paper's covering
    number, Thm 3.3) is DESIGN §6's form of Lemma A.8, taken from Graf et al.'s (2022) code; the
    paper's appendix text could not be retrieved here to confirm it, and Graf et al.'s own
    ``bartlett()`` uses 9·ln m instead (the larger 12 is used). Everything else — certified operator
    norms (FFT bound for convolutions), exact (2,1) norms of the full layer matrices, the margin/ramp
    step (M) and the union bounds — is paid exactly.
    """
    name = "bartlett2017"
    prep = _prepare(ctx, name, REF_BARTLETT)
    if isinstance(prep, BoundResult):
        return prep
    net, margins, m, sum_sq = prep.net, prep.margins, prep.m, prep.sum_sq
    delta = ctx.options.delta
    L = net.depth
    rho = net.gap_lipschitz()
    rho0, rho_after = rho[0], rho[1:]
    use_init = net.init_available
    biased = net.has_bias or (use_init and any(_any_nonzero(layer.init_bias) for layer in net.layers))

    cost_fixed, tau, k_tau = 0.0, None, None
    if biased:
        k_tau, tau, c_tau = _tau(rho0 * math.sqrt(sum_sq / m))
        cost_fixed += c_tau
    x_norm = math.sqrt(rho0**2 * sum_sq + (m * tau**2 if biased else 0.0))

    s, b, wbar, per_layer = [], [], 0, []
    tau_i = tau
    for i, layer in enumerate(net.layers):
        last = i == L - 1
        a = layer.op_norm.value
        d_w = layer.weight - layer.init_weight if use_init else layer.weight
        rows = layer.row_sq_norms(d_w)
        if biased:
            bb = layer.bias_full_norm() / tau_i
            s_i = math.hypot(a, bb) if last else _sigma_max_2x2(a, bb)
            d_b = _bias_rows(layer, layer.bias) - (_bias_rows(layer, layer.init_bias) if use_init else 0.0)
            rows = rows + (d_b / tau_i) ** 2
            const_row = 0.0 if (last or use_init) else 1.0  # the row (0, …, 0, 1) minus the reference's row
        else:
            s_i, const_row = a, 0.0
        b_i = float(np.sum(np.sqrt(np.maximum(rows, 0.0)))) + const_row
        d_in = layer.in_dim + (1 if biased else 0)
        d_out = layer.out_dim + (1 if biased and not last else 0)
        wbar = max(wbar, d_in * d_out)
        s.append(s_i)
        b.append(b_i)
        per_layer.append({"name": layer.name, "spectral": s_i, "l21": b_i, "lipschitz_after": rho_after[i],
                          "tau_in": tau_i})
        if biased and not last:
            tau_i = tau_i * rho_after[i]
    rho_prod = float(np.prod(rho_after))
    log_m = math.log(m)
    dudley = BARTLETT_DUDLEY_CONSTANT * log_m / math.sqrt(m) * math.sqrt(math.log(2.0 * wbar))
    gamma_lo, gamma_hi = _gamma_range(margins)
    log2_s = float(np.sum(np.log2(s)))

    if not use_init:
        k_u = [_grid_up(max(bi / si, 1e-12)) for bi, si in zip(b, s, strict=True)]
        u = np.array([_grid_value(k) for k in k_u])
        cost_fixed += sum(_cost(k) for k in k_u)
        shape_term = float(np.sum(u ** (2.0 / 3.0)) ** 1.5)
        coef = 4.0 * (x_norm / math.sqrt(m)) * rho_prod * shape_term  # R = 4/m + dudley·coef·r
        ks = np.arange(math.floor(GRID_STEPS * (log2_s - math.log2(gamma_hi))),
                       math.ceil(GRID_STEPS * (log2_s - math.log2(gamma_lo))) + 1)
        scale = 2.0 ** (ks / GRID_STEPS)  # r_k
        gammas = 2.0 ** (log2_s - ks / GRID_STEPS)
        for row, k in zip(per_layer, k_u, strict=True):
            row["budget_ratio_l21_over_spectral"] = _grid_value(k)
        rule = ("γ = Π_i s_i / r_k over the grid r_k = 2^(k/4) (homogeneity: margin 1 after rescaling), with the union bound; "
                "budgets u_i = b_i/s_i rounded up on the grid")
    else:
        k_s = [_grid_up(si) for si in s]
        k_b = [_grid_up(max(bi, 1e-12)) for bi in b]
        sg = np.array([_grid_value(k) for k in k_s])
        bg = np.array([_grid_value(k) for k in k_b])
        cost_fixed += sum(_cost(k) for k in k_s) + sum(_cost(k) for k in k_b)
        shape_term = float(np.sum((bg / sg) ** (2.0 / 3.0)) ** 1.5)
        log2_sg = float(np.sum(np.log2(sg)))
        coef = 4.0 * (x_norm / math.sqrt(m)) * rho_prod * shape_term  # R = 4/m + dudley·coef·Π s_g/γ
        ks = np.arange(math.floor(GRID_STEPS * math.log2(gamma_lo)), math.ceil(GRID_STEPS * math.log2(gamma_hi)) + 1)
        gammas = 2.0 ** (ks / GRID_STEPS)
        scale = 2.0 ** (log2_sg - ks / GRID_STEPS)  # Π s_g / γ
        for row, k1, k2 in zip(per_layer, k_s, k_b, strict=True):
            row["budget_spectral"], row["budget_l21"] = _grid_value(k1), _grid_value(k2)
        rule = "γ = 2^(k/4) over the grid, with the union bound; budgets s_i, b_i rounded up on the grid"

    ramp = _ramp_losses(margins, gammas)
    rad = 4.0 / m + dudley * coef * scale
    costs = cost_fixed + np.array([_cost(int(k)) for k in ks])
    conf = _confidence(m, delta, costs)
    values = ramp + 2.0 * rad + conf
    j = int(np.nanargmin(values))
    details = {
        "gamma": float(gammas[j]), "ramp_loss": float(ramp[j]), "margin_loss": float(_margin_losses(margins, gammas[j:j + 1])[0]),
        "rademacher": float(rad[j]), "complexity_term": float(2.0 * rad[j]), "confidence_term": float(conf[j]),
        "union_log_cost": float(costs[j]), "grid_index": int(ks[j]), "grid_range": [int(ks[0]), int(ks[-1])],
        "spectral_complexity_scale": float(scale[j]),
        "lemma": f"R = 4/m + ({BARTLETT_DUDLEY_CONSTANT:g}·ln m/√m)·√ln(2W̄)·(Σ C_i^(2/3))^(3/2)",
        "W_bar": int(wbar), "x_norm": x_norm, "product_of_spectral": float(2.0 ** log2_s),
        "lipschitz_product": rho_prod, "tau": tau, "layers": per_layer,
        "margin_p10": float(np.percentile(margins, 10)),
    }
    inputs = _common_inputs(net, m, delta)
    inputs.update({"reference": "init" if use_init else "zero", "gamma_rule": rule,
                   "bias_handling": "augmented constant coordinate (τ on the grid)" if biased else "no biases",
                   "init_note": None if use_init or ctx.init_state is None else net.init_reason})
    reason = ("the constant 12·ln m of the fixed-budget Rademacher bound (Lemma A.8) is DESIGN §6's, from Graf et al.'s (2022) "
              "code, and could not be checked against the paper (Graf et al.'s bartlett() uses 9·ln m); every other step, incl. "
              "the union bounds over γ and the norm budgets, is paid")
    return BoundResult(name, float(values[j]), _BOUNDS, "up-to-constants", REF_BARTLETT, delta, inputs=inputs, reason=reason,
                       details=details)


# ------------------------------------------------------------------------------------------------
# Golowich, Rakhlin & Shamir 2018


@register("golowich2018", bounds=_BOUNDS, status="certificate", reference=REF_GOLOWICH, group=_GROUP)
def golowich2018(ctx: BoundContext) -> BoundResult:
    """Frobenius-norm (size-independent) bound, converted to a 0-1 error bound with a ramp loss.

    Golowich, Rakhlin & Shamir (2018), COLT, Thm 1: for scalar networks x ↦ W_L σ(W_{L−1} … σ(W_1 x))
    with a 1-Lipschitz, positively homogeneous, element-wise σ and ‖W_j‖_F ≤ M_F(j),
    R̂_S ≤ (1/m)·Π_j M_F(j)·(√(2 ln2·L) + 1)·‖X‖_F. (Constant confirmed by DESIGN §6 and Graf et
    al.'s 2022 code ``golowich_fro``.) W_j is the full matrix of layer j (for a convolution, one row
    per output channel and position; its Frobenius norm is computed exactly). Average pooling
    (linear, ‖P‖₂ = ρ) is merged into the neighbouring layer, ‖PW‖_F ≤ ρ‖W‖_F; max pooling is not
    element-wise and makes the bound not applicable.

    Multiclass (K outputs): the ramp of the margin v ↦ ℓ_γ(v_y − max_{j≠y} v_j) is (√2/γ)-Lipschitz
    in ℓ2; Maurer's (2016) vector contraction (Cor. 1, factor √2) and sup Σ_k ≤ Σ_k sup give
    R̂_S(ℓ_γ∘F) ≤ (2K/γ)·R̂_S(scalar class with the same Π‖W_j‖_F); then (M).

    Union bound (U): by positive homogeneity the class {Π_j‖W_j‖_F ≤ P} is the class with every
    ‖W_j‖_F ≤ P^{1/L}, and ℓ_γ(f) = ℓ_1(f/γ); so only r = Π_j‖W_j‖_F/γ is on the grid (γ = P/r_k),
    plus τ with biases (constant coordinate, see the module docstring: each hidden layer's matrix
    gains the bias column and the constant row, ‖·‖_F² + ‖β‖²/τ² + 1). Bound, minimized over k:

        L₀ ≤ ramp_γ + 2·(2K/γ)·P·(√(2 ln2·L) + 1)·‖X‖_F/m + 3·√((ln(2/δ) + ln 1/π(k) [+ ln 1/π(k_τ)])/(2m)).

    Status: certificate (every step paid; constants from the cited results).
    """
    name = "golowich2018"
    prep = _prepare(ctx, name, REF_GOLOWICH)
    if isinstance(prep, BoundResult):
        return prep
    net, margins, m, sum_sq = prep.net, prep.margins, prep.m, prep.sum_sq
    delta = ctx.options.delta
    L = net.depth
    gaps = net.gaps()
    rho_in, rho_out = [1.0] * L, [1.0] * L
    rho0 = 1.0
    for gi, gap in enumerate(gaps):
        if gi == 0:  # maps applied to the inputs before the first layer: a fixed preprocessing, ‖σ_0(x)‖ ≤ ρ_0‖x‖
            rho0 = float(np.prod([op.lipschitz for op in gap])) if gap else 1.0
            continue
        for op in gap:
            if not (op.elementwise or op.linear):
                return _not_applicable(name, REF_GOLOWICH, f"'{op.name}' ({op.kind}) is neither an element-wise activation nor a "
                                                           "linear map; Golowich et al.'s Thm 1 needs element-wise activations.", delta)
            if op.elementwise and not op.linear and op.lipschitz > 1.0:
                return _not_applicable(name, REF_GOLOWICH, f"activation '{op.name}' is {op.lipschitz:g}-Lipschitz; Thm 1 needs "
                                                           "1-Lipschitz activations.", delta)
        active = [op for op in gap if op.kind != "identity"]
        lin = float(np.prod([op.lipschitz for op in active if op.linear])) if active else 1.0
        kinds = ["P" if op.linear else "E" for op in active]
        if gi == L:
            if "E" in kinds:
                return _not_applicable(name, REF_GOLOWICH, "an activation follows the output layer; Thm 1's networks end with "
                                                           "a linear layer.", delta)
            rho_out[L - 1] *= lin
        elif "P" in kinds:
            s = "".join(kinds)
            if s == "E" * s.count("E") + "P" * s.count("P"):
                rho_in[gi] *= lin  # pooling after the activation: merged into the next layer
            elif s == "P" * s.count("P") + "E" * s.count("E"):
                rho_out[gi - 1] *= lin  # pooling before the activation: merged into the previous layer
            else:
                return _not_applicable(name, REF_GOLOWICH, "pooling is interleaved with activations between two layers; it "
                                                           "cannot be merged into a linear layer.", delta)
    biased = net.has_bias
    cost_tau, tau = 0.0, None
    if biased:
        _, tau, cost_tau = _tau(rho0 * math.sqrt(sum_sq / m))
    x_norm = math.sqrt(rho0**2 * sum_sq + (m * tau**2 if biased else 0.0))
    log_p, per_layer = 0.0, []
    for i, layer in enumerate(net.layers):
        fro_full = layer.matrix_fro_norm()
        f2 = rho_in[i] ** 2 * fro_full**2
        if biased:
            f2 += (layer.bias_full_norm() / tau) ** 2
        f2 *= rho_out[i] ** 2
        if biased and i < L - 1:
            f2 += 1.0
        log_p += 0.5 * math.log(f2)
        per_layer.append({"name": layer.name, "matrix_frobenius": fro_full, "effective_frobenius": math.sqrt(f2),
                          "pool_factor_in": rho_in[i], "pool_factor_out": rho_out[i]})
    K = int(ctx.num_classes)
    c_depth = math.sqrt(2.0 * math.log(2.0) * L) + 1.0
    gamma_lo, gamma_hi = _gamma_range(margins)
    log2_p = log_p / math.log(2.0)
    ks = np.arange(math.floor(GRID_STEPS * (log2_p - math.log2(gamma_hi))), math.ceil(GRID_STEPS * (log2_p - math.log2(gamma_lo))) + 1)
    r = 2.0 ** (ks / GRID_STEPS)
    gammas = 2.0 ** (log2_p - ks / GRID_STEPS)
    ramp = _ramp_losses(margins, gammas)
    rad = 2.0 * K * r * c_depth * x_norm / m
    costs = cost_tau + np.array([_cost(int(k)) for k in ks])
    conf = _confidence(m, delta, costs)
    values = ramp + 2.0 * rad + conf
    j = int(np.nanargmin(values))
    details = {
        "gamma": float(gammas[j]), "ramp_loss": float(ramp[j]), "margin_loss": float(_margin_losses(margins, gammas[j:j + 1])[0]),
        "rademacher": float(rad[j]), "complexity_term": float(2.0 * rad[j]), "confidence_term": float(conf[j]),
        "union_log_cost": float(costs[j]), "grid_index": int(ks[j]), "grid_range": [int(ks[0]), int(ks[-1])],
        "product_of_frobenius": float(2.0 ** log2_p),
        "depth_factor": c_depth, "x_norm": x_norm, "tau": tau, "num_classes": K, "layers": per_layer,
        "margin_p10": float(np.percentile(margins, 10)),
    }
    inputs = _common_inputs(net, m, delta)
    inputs.update({"reference": "zero", "frobenius": "full layer matrices (exact), pooling merged",
                   "gamma_rule": "γ = Π‖W_j‖_F / r_k over the grid r_k = 2^(k/4), with the union bound",
                   "bias_handling": "augmented constant neuron (τ on the grid)" if biased else "no biases"})
    return BoundResult(name, float(values[j]), _BOUNDS, "certificate", REF_GOLOWICH, delta, inputs=inputs, details=details)


# ------------------------------------------------------------------------------------------------
# Neyshabur, Bhojanapalli & Srebro 2018


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


@register("neyshabur2018", bounds=_BOUNDS, status="plug-in", reference=REF_NEYSHABUR, group=_GROUP)
def neyshabur2018(ctx: BoundContext) -> BoundResult:
    """PAC-Bayes spectrally-normalized margin bound (Neyshabur, Bhojanapalli & Srebro 2018, ICLR).

    Lemma 1 (constants confirmed by DESIGN §6): for a prior P fixed before the data and a perturbation
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

    B must bound ‖x‖ for *every* input of the distribution. With ``ctx.options.extra['input_norm_bound']``
    (e.g. √d·max pixel value) the result is a certificate; otherwise B is the largest training input
    norm (``ctx.input_norms['max']``) and the status is plug-in. The prior is centred at zero as in
    the paper (``inputs['reference']``).
    """
    name = "neyshabur2018"
    prep = _prepare(ctx, name, REF_NEYSHABUR)
    if isinstance(prep, BoundResult):
        return prep
    net, margins, m = prep.net, prep.margins, prep.m
    delta = ctx.options.delta
    train_max = ctx.input_norms.get("max") if ctx.input_norms else None
    given = (ctx.options.extra or {}).get("input_norm_bound")
    if given is not None:
        B = float(given)
        if train_max is not None and B < float(train_max) * (1.0 - 1e-12):
            return _not_applicable(name, REF_NEYSHABUR, f"options.extra['input_norm_bound'] = {B:g} is smaller than the norm of a "
                                                        f"training input ({float(train_max):g}).", delta)
        status, b_rule = "certificate", "given bound on ‖x‖ (options.extra['input_norm_bound'])"
    elif train_max is not None:
        B, status, b_rule = float(train_max), "plug-in", "largest training input norm (plug-in for the support radius)"
    else:
        return _not_applicable(name, REF_NEYSHABUR, "needs a bound B on the input norm: ctx.input_norms['max'] or "
                                                    "options.extra['input_norm_bound'].", delta)
    L = net.depth
    rho = net.gap_lipschitz()
    rho0, rho_after = rho[0], rho[1:]
    s = np.array([layer.op_norm.value for layer in net.layers])
    if np.any(s <= 0):
        return _not_applicable(name, REF_NEYSHABUR, "a layer has zero weights (the network is constant).", delta)
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

    gamma_lo, gamma_hi = _gamma_range(margins)
    ks = np.arange(math.floor(GRID_STEPS * math.log2(gamma_lo)), math.ceil(GRID_STEPS * math.log2(gamma_hi)) + 1)
    gammas = 2.0 ** (ks / GRID_STEPS)
    losses = _margin_losses(margins, gammas)
    base = math.log(6.0 * m / delta)
    best = None
    for k, gamma, loss in zip(ks, gammas, losses, strict=True):
        lo, hi = -4000, 4000  # grid indices of σ: perturbation(g_lo) < γ/4 assumed, perturbation(g_hi) ≥ γ/4
        if not perturbation(_grid_value(lo)) < gamma / 4.0:
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if perturbation(_grid_value(mid)) < gamma / 4.0:
                lo = mid
            else:
                hi = mid
        sigma = _grid_value(lo)
        kl = w_sq / (2.0 * sigma**2)
        cost = _cost(int(k)) + _cost(lo)
        value = float(loss) + 4.0 * math.sqrt((kl + base + cost) / (m - 1))
        if best is None or value < best[0]:
            best = (value, float(gamma), float(loss), sigma, kl, cost, int(k), lo, perturbation(sigma))
    if best is None:
        return _not_applicable(name, REF_NEYSHABUR, "no noise level keeps the output perturbation below γ/4 (numerical overflow).",
                               delta)
    value, gamma, loss, sigma, kl, cost, k, j, pert = best
    details = {
        "gamma": gamma, "margin_loss": loss, "sigma": sigma, "kl": kl, "complexity_term": value - loss,
        "kl_part": 4.0 * math.sqrt(kl / (m - 1)), "confidence_term": 4.0 * math.sqrt((base + cost) / (m - 1)),
        "confidence_log_terms": base + cost, "union_log_cost": cost, "grid_index_gamma": k, "grid_index_sigma": j,
        "output_perturbation_bound": pert, "balanced_spectral_norm": beta, "product_of_spectral": float(np.prod(s)),
        "sq_norm_balanced_weights": w_sq, "input_norm_bound": B, "tail_thresholds_weights": t_w,
        "tail_thresholds_biases": t_b, "margin_p10": float(np.percentile(margins, 10)),
    }
    inputs = _common_inputs(net, m, delta)
    inputs.update({"reference": "zero (prior N(0, σ²I), as the paper)", "input_norm_rule": b_rule,
                   "gamma_rule": "γ = 2^(k/4) and σ = 2^(j/4) over grids, with the union bound",
                   "bias_handling": "biases perturbed with the weights" if net.has_bias else "no biases"})
    reason = None if status == "certificate" else (
        "B is the largest training input norm; the bound is rigorous only if no input has a larger norm (pass "
        "options.extra['input_norm_bound'] for a certificate)")
    return BoundResult(name, value, _BOUNDS, status, REF_NEYSHABUR, delta, inputs=inputs, reason=reason, details=details)
