"""Margin / norm bounds on the 0-1 error of the network : Bartlett et al. 2017, Golowich et
al. 2018, Neyshabur et al. 2018.

All three read the network through :func:`ncbounds.bounds.margin_tools.network_of` — a chain of linear
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
  With g = ℓ_γ(margin) ≥ 1[error]: L₀ ≤ ramp_γ + 2·R̂_S(ℓ_γ∘F) + 3·√(ln(2/δ)/(2m)).
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

import numpy as np

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext
from ncbounds.bounds.margin_tools import (
    BOUNDS,
    GRID_STEPS,
    GROUP,
    any_nonzero,
    bias_rows,
    common_inputs,
    confidence,
    gamma_range,
    grid_cost,
    grid_up,
    grid_value,
    margin_losses,
    prepare,
    ramp_losses,
    sigma_max_2x2,
    tau_on_grid,
)

__all__ = [
    "GRID_STEPS", "REF_BARTLETT", "REF_GOLOWICH", "REF_NEYSHABUR", "NeyshaburOptions", "bartlett2017", "golowich2018", "neyshabur2018",
]

REF_BARTLETT = ("Bartlett, Foster & Telgarsky (2017), 'Spectrally-normalized margin bounds for neural networks', NeurIPS, "
                "Lemma A.8 (fixed norm budgets) + union bound over γ and the budgets as in the proof of Thm 1.1; "
                "explicit form of Graf et al.'s (2022) code")
REF_GOLOWICH = ("Golowich, Rakhlin & Shamir (2018), 'Size-independent sample complexity of neural networks', COLT, Thm 1; "
                "multiclass ramp loss via Maurer (2016, 'A vector-contraction inequality for Rademacher complexities', "
                "ALT, Cor. 1); Mohri et al. (2018) Thm 3.3")
#: Constant of the fixed-budget Rademacher bound (Graf et al.'s 2022 code of Lemma A.8); see :func:`bartlett2017` for its status.
BARTLETT_DUDLEY_CONSTANT = 12.0


# ------------------------------------------------------------------------------------------------
# Bartlett, Foster & Telgarsky 2017


@register(bounds=BOUNDS, status="up-to-constants", reference=REF_BARTLETT, group=GROUP)
def bartlett2017(ctx: BoundContext) -> Evaluation:
    """Spectrally-normalized margin bound, explicit constants, every data-chosen quantity paid by (U).

    Fixed-budget form (Lemma A.8 of Bartlett, Foster & Telgarsky 2017, NeurIPS, in the explicit form of
    Graf et al.'s 2022 code): for margin γ, spectral budgets s_i ≥ ‖A_i‖₂ and (2,1) budgets
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
    number, Thm 3.3) is the form of Lemma A.8 in Graf et al.'s (2022) code; the
    paper's appendix text could not be retrieved here to confirm it, and Graf et al.'s own
    ``bartlett()`` uses 9·ln m instead (the larger 12 is used). Everything else — certified operator
    norms (FFT bound for convolutions), exact (2,1) norms of the full layer matrices, the margin/ramp
    step (M) and the union bounds — is paid exactly.
    """
    prep = prepare(ctx)
    net, margins, m, sum_sq = prep.net, prep.margins, prep.m, prep.sum_sq
    delta = ctx.options.delta
    L = net.depth
    rho = net.gap_lipschitz()
    rho0, rho_after = rho[0], rho[1:]
    use_init = net.init_available
    biased = net.has_bias or (use_init and any(any_nonzero(layer.init_bias) for layer in net.layers))

    cost_fixed, tau, k_tau = 0.0, None, None
    if biased:
        k_tau, tau, c_tau = tau_on_grid(rho0 * math.sqrt(sum_sq / m))
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
            s_i = math.hypot(a, bb) if last else sigma_max_2x2(a, bb)
            d_b = bias_rows(layer, layer.bias) - (bias_rows(layer, layer.init_bias) if use_init else 0.0)
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
    gamma_lo, gamma_hi = gamma_range(margins)
    log2_s = float(np.sum(np.log2(s)))

    if not use_init:
        k_u = [grid_up(max(bi / si, 1e-12)) for bi, si in zip(b, s, strict=True)]
        u = np.array([grid_value(k) for k in k_u])
        cost_fixed += sum(grid_cost(k) for k in k_u)
        shape_term = float(np.sum(u ** (2.0 / 3.0)) ** 1.5)
        coef = 4.0 * (x_norm / math.sqrt(m)) * rho_prod * shape_term  # R = 4/m + dudley·coef·r
        ks = np.arange(math.floor(GRID_STEPS * (log2_s - math.log2(gamma_hi))),
                       math.ceil(GRID_STEPS * (log2_s - math.log2(gamma_lo))) + 1)
        scale = 2.0 ** (ks / GRID_STEPS)  # r_k
        gammas = 2.0 ** (log2_s - ks / GRID_STEPS)
        for row, k in zip(per_layer, k_u, strict=True):
            row["budget_ratio_l21_over_spectral"] = grid_value(k)
        rule = ("γ = Π_i s_i / r_k over the grid r_k = 2^(k/4) (homogeneity: margin 1 after rescaling), with the union bound; "
                "budgets u_i = b_i/s_i rounded up on the grid")
    else:
        k_s = [grid_up(si) for si in s]
        k_b = [grid_up(max(bi, 1e-12)) for bi in b]
        sg = np.array([grid_value(k) for k in k_s])
        bg = np.array([grid_value(k) for k in k_b])
        cost_fixed += sum(grid_cost(k) for k in k_s) + sum(grid_cost(k) for k in k_b)
        shape_term = float(np.sum((bg / sg) ** (2.0 / 3.0)) ** 1.5)
        log2_sg = float(np.sum(np.log2(sg)))
        coef = 4.0 * (x_norm / math.sqrt(m)) * rho_prod * shape_term  # R = 4/m + dudley·coef·Π s_g/γ
        ks = np.arange(math.floor(GRID_STEPS * math.log2(gamma_lo)), math.ceil(GRID_STEPS * math.log2(gamma_hi)) + 1)
        gammas = 2.0 ** (ks / GRID_STEPS)
        scale = 2.0 ** (log2_sg - ks / GRID_STEPS)  # Π s_g / γ
        for row, k1, k2 in zip(per_layer, k_s, k_b, strict=True):
            row["budget_spectral"], row["budget_l21"] = grid_value(k1), grid_value(k2)
        rule = "γ = 2^(k/4) over the grid, with the union bound; budgets s_i, b_i rounded up on the grid"

    ramp = ramp_losses(margins, gammas)
    rad = 4.0 / m + dudley * coef * scale
    costs = cost_fixed + np.array([grid_cost(int(k)) for k in ks])
    conf = confidence(m, delta, costs)
    values = ramp + 2.0 * rad + conf
    j = int(np.nanargmin(values))
    details = {
        "gamma": float(gammas[j]), "ramp_loss": float(ramp[j]), "margin_loss": float(margin_losses(margins, gammas[j:j + 1])[0]),
        "rademacher": float(rad[j]), "complexity_term": float(2.0 * rad[j]), "confidence_term": float(conf[j]),
        "union_log_cost": float(costs[j]), "grid_index": int(ks[j]), "grid_range": [int(ks[0]), int(ks[-1])],
        "spectral_complexity_scale": float(scale[j]),
        "lemma": f"R = 4/m + ({BARTLETT_DUDLEY_CONSTANT:g}·ln m/√m)·√ln(2W̄)·(Σ C_i^(2/3))^(3/2)",
        "W_bar": int(wbar), "x_norm": x_norm, "product_of_spectral": float(2.0 ** log2_s),
        "lipschitz_product": rho_prod, "tau": tau, "layers": per_layer,
        "margin_p10": float(np.percentile(margins, 10)),
    }
    inputs = common_inputs(net, m, delta)
    inputs.update({"reference": "init" if use_init else "zero", "gamma_rule": rule,
                   "bias_handling": "augmented constant coordinate (τ on the grid)" if biased else "no biases",
                   "init_note": None if use_init or ctx.init_state is None else net.init_reason})
    reason = ("the constant 12·ln m of the fixed-budget Rademacher bound (Lemma A.8) is taken from Graf et al.'s (2022) "
              "code, and could not be checked against the paper (Graf et al.'s bartlett() uses 9·ln m); every other step, incl. "
              "the union bounds over γ and the norm budgets, is paid")
    return Evaluation(float(values[j]), inputs=inputs, reason=reason, details=details)


# ------------------------------------------------------------------------------------------------
# Golowich, Rakhlin & Shamir 2018


@register(bounds=BOUNDS, status="certificate", reference=REF_GOLOWICH, group=GROUP, certifies="network")
def golowich2018(ctx: BoundContext) -> Evaluation:
    """Frobenius-norm (size-independent) bound, converted to a 0-1 error bound with a ramp loss.

    Golowich, Rakhlin & Shamir (2018), COLT, Thm 1: for scalar networks x ↦ W_L σ(W_{L−1} … σ(W_1 x))
    with a 1-Lipschitz, positively homogeneous, element-wise σ and ‖W_j‖_F ≤ M_F(j),
    R̂_S ≤ (1/m)·Π_j M_F(j)·(√(2 ln2·L) + 1)·‖X‖_F. (Constant as in the theorem and in Graf et
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
    prep = prepare(ctx)
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
                raise NotApplicable(f"'{op.name}' ({op.kind}) is neither an element-wise activation nor a "
                                                           "linear map; Golowich et al.'s Thm 1 needs element-wise activations.")
            if op.elementwise and not op.linear and op.lipschitz > 1.0:
                raise NotApplicable(f"activation '{op.name}' is {op.lipschitz:g}-Lipschitz; Thm 1 needs "
                                                           "1-Lipschitz activations.")
        active = [op for op in gap if op.kind != "identity"]
        lin = float(np.prod([op.lipschitz for op in active if op.linear])) if active else 1.0
        kinds = ["P" if op.linear else "E" for op in active]
        if gi == L:
            if "E" in kinds:
                raise NotApplicable("an activation follows the output layer; Thm 1's networks end with "
                                                           "a linear layer.")
            rho_out[L - 1] *= lin
        elif "P" in kinds:
            s = "".join(kinds)
            if s == "E" * s.count("E") + "P" * s.count("P"):
                rho_in[gi] *= lin  # pooling after the activation: merged into the next layer
            elif s == "P" * s.count("P") + "E" * s.count("E"):
                rho_out[gi - 1] *= lin  # pooling before the activation: merged into the previous layer
            else:
                raise NotApplicable("pooling is interleaved with activations between two layers; it "
                                                           "cannot be merged into a linear layer.")
    biased = net.has_bias
    cost_tau, tau = 0.0, None
    if biased:
        _, tau, cost_tau = tau_on_grid(rho0 * math.sqrt(sum_sq / m))
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
    gamma_lo, gamma_hi = gamma_range(margins)
    log2_p = log_p / math.log(2.0)
    ks = np.arange(math.floor(GRID_STEPS * (log2_p - math.log2(gamma_hi))), math.ceil(GRID_STEPS * (log2_p - math.log2(gamma_lo))) + 1)
    r = 2.0 ** (ks / GRID_STEPS)
    gammas = 2.0 ** (log2_p - ks / GRID_STEPS)
    ramp = ramp_losses(margins, gammas)
    rad = 2.0 * K * r * c_depth * x_norm / m
    costs = cost_tau + np.array([grid_cost(int(k)) for k in ks])
    conf = confidence(m, delta, costs)
    values = ramp + 2.0 * rad + conf
    j = int(np.nanargmin(values))
    details = {
        "gamma": float(gammas[j]), "ramp_loss": float(ramp[j]), "margin_loss": float(margin_losses(margins, gammas[j:j + 1])[0]),
        "rademacher": float(rad[j]), "complexity_term": float(2.0 * rad[j]), "confidence_term": float(conf[j]),
        "union_log_cost": float(costs[j]), "grid_index": int(ks[j]), "grid_range": [int(ks[0]), int(ks[-1])],
        "product_of_frobenius": float(2.0 ** log2_p),
        "depth_factor": c_depth, "x_norm": x_norm, "tau": tau, "num_classes": K, "layers": per_layer,
        "margin_p10": float(np.percentile(margins, 10)),
    }
    inputs = common_inputs(net, m, delta)
    inputs.update({"reference": "zero", "frobenius": "full layer matrices (exact), pooling merged",
                   "gamma_rule": "γ = Π‖W_j‖_F / r_k over the grid r_k = 2^(k/4), with the union bound",
                   "bias_handling": "augmented constant neuron (τ on the grid)" if biased else "no biases"})
    return Evaluation(float(values[j]), inputs=inputs, details=details)


# registered after the two above: the catalogue (and every record) lists bartlett2017, golowich2018, neyshabur2018
from ncbounds.bounds.neyshabur import REF_NEYSHABUR, NeyshaburOptions, neyshabur2018  # noqa: E402
