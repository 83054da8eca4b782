"""Jiang et al. (2020) norm- and margin-based generalization measures (predictors).

Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020), "Fantastic generalization measures and where to
find them", ICLR, Appendix C (equation numbers below). Notation: the network's linear layers
W_1..W_d (Linear and Conv weights, eval-mode BatchNorm folded into the layer before it — biases are
*not* part of the W_i), W_i⁰ the same at initialization, γ = |10th percentile of the training
margins|, m the number of training samples, ‖·‖₂ the operator (spectral) norm, ‖·‖_F the Frobenius
norm of the weight tensor, log the natural logarithm.

=====================  ======================================================================  ====  ===========
name                   measure μ                                                               eq.   value
=====================  ======================================================================  ====  ===========
jiang_params           number of parameters of the model                                       (20)  μ
jiang_inverse_margin   1/γ²                                                                    (22)  √(μ/m)
jiang_spec_init        log[Π_i‖W_i‖₂² / γ² · Σ_i ‖W_i − W_i⁰‖_F² / ‖W_i‖₂²]                    (29)  ½(μ − log m)
jiang_spec_orig        log[Π_i‖W_i‖₂² / γ² · Σ_i ‖W_i‖_F² / ‖W_i‖₂²]                           (30)  ½(μ − log m)
jiang_prod_of_spec     log Π_i‖W_i‖₂²                                                          (32)  ½(μ − log m)
jiang_sum_of_spec      log[d·(Π_i‖W_i‖₂²)^{1/d}]                                               (35)  ½(μ − log m)
jiang_prod_of_fro      log Π_i‖W_i‖_F²                                                         (37)  ½(μ − log m)
jiang_fro_dist         Σ_i ‖W_i − W_i⁰‖_F²                                                     (40)  √(μ/m)
jiang_dist_spec_init   Σ_i ‖W_i − W_i⁰‖₂²                                                      (41)  √(μ/m)
jiang_param_norm       Σ_i ‖W_i‖_F²                                                            (42)  √(μ/m)
jiang_path_norm        Σ_outputs f_{w²}(1): the network with every parameter squared on an     (44)  √(μ/m)
                       all-ones input
=====================  ======================================================================  ====  ===========

The size adjustment (``value``) is that of the public reference implementation of these measures
(Dziugaite et al. 2020, "In search of robust measures of generalization", NeurIPS,
github.com/nitarshan/robust-generalization-measures, ``data/generation/measures.py``,
``adjust_measure``): log-measures → ½(μ − log m), the others → √(μ/m); the raw μ is in
``details['measure']`` and the "/margin" variants of (31), (34), (36) (the same with −2 log γ) in
``details``. ``jiang_params`` reports the raw count (its √(count/m) is in the details). The formulas,
equation numbers and the 10th-percentile margin were checked against that code (the paper's PDF
could not be retrieved here).

Spectral norms: by default the certified operator norm of each layer's linear map
(:mod:`ncbounds.weights.operator_norms`; exact SVD for Linear, FFT bound for convolutions), the
norm the measures stand for. The bound option ``spectral_norm = 'reshaped'`` (:class:`JiangNormOptions`,
e.g. ``--bound-option jiang.spectral_norm=reshaped``) uses instead σ_max(W.reshape(c_out, −1)), as
Jiang et al.'s and Dziugaite et al.'s code do for convolutions. ``inputs['spectral_norm']`` records which.

Status: predictor — correlates of the generalization gap (bigger predicts worse), not bounds. The
measures that need W⁰ return 'not-applicable' without ``ctx.init_state``. The model must consist of
Linear/Conv/BatchNorm parameters (residual networks are fine: only the weights are read, and the
path norm runs the model's own forward).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ncbounds.bounds.base import Evaluation, NotApplicable, register
from ncbounds.bounds.context import BoundContext
from ncbounds.bounds.margin_tools import network_of
from ncbounds.errors import UsageError
from ncbounds.weights.network import LinearLayer, NetworkWeights

_BOUNDS = "correlate of the generalization gap"
_GROUP = "jiang"
_PAPER = "Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020), 'Fantastic generalization measures and where to find them', ICLR"
_CODE = "size adjustment of Dziugaite et al. (2020) code"
_REFS = {
    "jiang_params": f"{_PAPER}, App. C eq. (20)",
    "jiang_inverse_margin": f"{_PAPER}, App. C eq. (22); {_CODE}",
    "jiang_spec_init": f"{_PAPER}, App. C eq. (29); {_CODE}",
    "jiang_spec_orig": f"{_PAPER}, App. C eq. (30); {_CODE}",
    "jiang_prod_of_spec": f"{_PAPER}, App. C eq. (32) (and (31) /margin); {_CODE}",
    "jiang_sum_of_spec": f"{_PAPER}, App. C eq. (35) (and (34) /margin); {_CODE}",
    "jiang_prod_of_fro": f"{_PAPER}, App. C eq. (37) (and (36) /margin); {_CODE}",
    "jiang_fro_dist": f"{_PAPER}, App. C eq. (40); {_CODE}",
    "jiang_dist_spec_init": f"{_PAPER}, App. C eq. (41); {_CODE}",
    "jiang_param_norm": f"{_PAPER}, App. C eq. (42); {_CODE}",
    "jiang_path_norm": f"{_PAPER}, App. C eq. (44); Neyshabur et al. (2015) path norm; {_CODE}",
}


@dataclass(frozen=True)
class JiangNormOptions:
    """Settings of the spectral-norm measures (``jiang_spec_init``, ``jiang_spec_orig``,
    ``jiang_prod_of_spec``, ``jiang_sum_of_spec``, ``jiang_dist_spec_init``).

    spectral_norm: ``'operator'`` (default: the certified operator norm of each layer's linear map) or
        ``'reshaped'`` (σ_max of the weight reshaped to c_out × rest, as Jiang et al.'s code does for
        convolutions; an underestimate for convolutions, not certified).
    """

    spectral_norm: str = "operator"

    def validate(self) -> None:
        if self.spectral_norm not in ("operator", "reshaped"):
            raise UsageError(f"bound option spectral_norm must be 'operator' or 'reshaped', not {self.spectral_norm!r}.")


_DEFAULT_NORMS = JiangNormOptions()


def _network(ctx: BoundContext) -> NetworkWeights:
    if ctx.model is None:
        raise NotApplicable("needs the model's weights, but the context has none (e.g. precomputed features were evaluated).")
    net = network_of(ctx)
    if not net.layers or not net.weights_complete:
        raise NotApplicable(f"the model's weights are not all Linear/Conv/BatchNorm layers that can be read: "
                            f"{net.weights_reason or net.reason}.")
    return net


def _unique_layers(net: NetworkWeights) -> list[LinearLayer]:
    seen: dict[str, LinearLayer] = {}
    for layer in net.layers:
        seen.setdefault(layer.name, layer)
    return list(seen.values())


def _margin(ctx: BoundContext, required: bool = True) -> float | None:
    """|10th percentile of the training margins|; None (or NotApplicable when ``required``) without one."""
    margins = ctx.train.margins
    if margins is None or len(margins) == 0:
        if required:
            raise NotApplicable("needs the training margins, but the context has no classifier outputs.")
        return None
    gamma = abs(float(np.percentile(np.asarray(margins, dtype=np.float64), 10)))
    if not gamma > 0 or not math.isfinite(gamma):
        if required:
            raise NotApplicable("the 10th percentile of the training margins is 0 (or not finite), so 1/γ is undefined.")
        return None
    return gamma


def _spectral(opts: JiangNormOptions, layer: LinearLayer, weight: torch.Tensor) -> tuple[float, str]:
    mode = opts.spectral_norm
    if mode == "reshaped":
        return float(torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1).to(torch.float64), ord=2)), "reshaped-matrix-svd"
    if mode != "operator":
        raise ValueError(f"bound option spectral_norm must be 'operator' or 'reshaped', not {mode!r}")
    if weight is layer.weight:
        if layer.op_norm is None:
            raise ValueError(f"no certified operator norm for '{layer.name}': {layer.norm_error}")
        return layer.op_norm.value, layer.op_norm.method
    res = layer.operator_norm_of(weight)
    return res.value, res.method


def _result(ctx: BoundContext, value: float, measure: float, net: NetworkWeights, extra: dict[str, Any],
            inputs: dict[str, Any] | None = None) -> Evaluation:
    m = int(ctx.train.n)
    layers = _unique_layers(net)
    base_inputs = {"split": "train", "m": m, "layers": [layer.name for layer in layers], "depth": len(layers),
                   "batchnorm_folded": [layer.batchnorm for layer in layers if layer.batchnorm],
                   "plain_chain": net.supported}
    base_inputs.update(inputs or {})
    return Evaluation(value, inputs=base_inputs, details={"measure": measure, **extra})


def _log_adjust(mu: float, m: int) -> float:
    return 0.5 * (mu - math.log(m))


def _sqrt_adjust(mu: float, m: int) -> float:
    return math.sqrt(max(mu, 0.0) / m)


def _spectral_family(ctx: BoundContext, needs_init: bool, needs_margin: bool,
                     formula: Callable[[dict[str, Any]], tuple[float, dict[str, Any]]], needs_spec: bool = True,
                     opts: JiangNormOptions = _DEFAULT_NORMS) -> Evaluation:
    net = _network(ctx)
    gamma = _margin(ctx) if needs_margin else None
    if needs_init and not net.init_available:
        why = net.init_reason or "no init state in the context"
        raise NotApplicable(f"needs the weights at initialization (distance to init): pass --init INIT.pt or set 'init_checkpoint' "
                            f"in the sidecar ({why}).")
    layers = _unique_layers(net)
    try:
        specs = [_spectral(opts, layer, layer.weight) for layer in layers] if needs_spec else []
    except ValueError as exc:
        raise NotApplicable(str(exc)) from None
    q = {
        "spec": np.array([v for v, _ in specs]) if needs_spec else np.ones(len(layers)),
        "fro": np.array([layer.fro_norm for layer in layers]),
        "gamma": gamma,
        "layers": layers,
        "opts": opts,
    }
    if np.any(q["spec"] <= 0) or np.any(q["fro"] <= 0):
        raise NotApplicable("a layer has all-zero weights, so the log of its norm is undefined.")
    try:
        mu, extra = formula(q)
    except ValueError as exc:
        raise NotApplicable(str(exc)) from None
    m = int(ctx.train.n)
    inputs = {"margin_rule": "|10th percentile of training margins|"} if needs_margin else {}
    if needs_spec:
        inputs["spectral_norm"] = sorted({method for _, method in specs})
    if gamma is not None:
        extra = {"gamma": gamma, **extra}
    return _result(ctx, _log_adjust(mu, m) if extra.pop("_log", True) else _sqrt_adjust(mu, m), mu, net, extra, inputs)


def _dist_init(q: dict[str, Any], kind: str) -> np.ndarray:
    out = []
    for layer in q["layers"]:
        diff = layer.weight - layer.init_weight
        if kind == "fro":
            out.append(float(torch.linalg.vector_norm(diff)))
        else:
            out.append(_spectral(q["opts"], layer, diff)[0])
    return np.array(out)


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_params"])
def jiang_params(ctx: BoundContext) -> Evaluation:
    """μ_param: the number of parameters of the model (Jiang et al. 2020, App. C eq. (20)).

    value = Σ_p numel(p) over ``ctx.model.parameters()`` (weights, biases, BatchNorm affine
    parameters); ``details['sqrt_over_m']`` = √(μ/m) is the size-adjusted form of Dziugaite et al.'s
    code. Status: predictor (a VC-style capacity count, not a bound).
    """
    if ctx.model is None:
        raise NotApplicable("needs the model, but the context has none (e.g. precomputed features were evaluated).")
    count = int(sum(p.numel() for p in ctx.model.parameters()))
    trainable = int(sum(p.numel() for p in ctx.model.parameters() if p.requires_grad))
    m = int(ctx.train.n)
    return Evaluation(float(count), inputs={"split": "train", "m": m},
                      details={"measure": count, "trainable": trainable, "sqrt_over_m": math.sqrt(count / m)})


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_inverse_margin"])
def jiang_inverse_margin(ctx: BoundContext) -> Evaluation:
    """μ = 1/γ², γ = |10th percentile of the training margins|; value √(μ/m) (Jiang et al. 2020, eq. (22)).

    Status: predictor. Needs only the training margins (no weights).
    """
    gamma = _margin(ctx)
    m = int(ctx.train.n)
    mu = 1.0 / gamma**2
    return Evaluation(_sqrt_adjust(mu, m),
                      inputs={"split": "train", "m": m, "margin_rule": "|10th percentile of training margins|"},
                       details={"measure": mu, "gamma": gamma})


def _log_prod(x: np.ndarray) -> float:
    return float(np.sum(np.log(x**2)))


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_spec_init"], options=JiangNormOptions)
def jiang_spec_init(ctx: BoundContext, opts: JiangNormOptions) -> Evaluation:
    """μ = log[Π‖W_i‖₂²/γ² · Σ‖W_i − W_i⁰‖_F²/‖W_i‖₂²]; value ½(μ − log m) (Jiang et al. 2020, eq. (29)).

    The spectral-norm/distance-to-init term of Bartlett et al.'s (2017) bound in Neyshabur et al.'s
    (2018) form, log terms dropped. Status: predictor; not-applicable without init weights.
    """
    def formula(q):
        ratio = float(np.sum(_dist_init(q, "fro") ** 2 / q["spec"] ** 2))
        if ratio <= 0:
            raise ValueError("the weights equal the init weights, so the log of the distance term is undefined")
        return _log_prod(q["spec"]) - 2 * math.log(q["gamma"]) + math.log(ratio), {"sum_dist_fro_over_spec": ratio}
    return _spectral_family(ctx, True, True, formula, opts=opts)


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_spec_orig"], options=JiangNormOptions)
def jiang_spec_orig(ctx: BoundContext, opts: JiangNormOptions) -> Evaluation:
    """μ = log[Π‖W_i‖₂²/γ² · Σ‖W_i‖_F²/‖W_i‖₂²]; value ½(μ − log m) (Jiang et al. 2020, eq. (30)).

    Status: predictor.
    """
    def formula(q):
        ratio = float(np.sum(q["fro"] ** 2 / q["spec"] ** 2))
        return _log_prod(q["spec"]) - 2 * math.log(q["gamma"]) + math.log(ratio), {"sum_fro_over_spec": ratio}
    return _spectral_family(ctx, False, True, formula, opts=opts)


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_prod_of_spec"], options=JiangNormOptions)
def jiang_prod_of_spec(ctx: BoundContext, opts: JiangNormOptions) -> Evaluation:
    """μ = log Π‖W_i‖₂²; value ½(μ − log m) (Jiang et al. 2020, eq. (32)); /margin variant (31) in details.

    Status: predictor.
    """
    m = int(ctx.train.n)

    def formula(q):
        mu = _log_prod(q["spec"])
        extra = {"spectral_norms": q["spec"].tolist()}
        gamma = _margin(ctx, required=False)
        if isinstance(gamma, float):
            extra["over_margin_measure"] = mu - 2 * math.log(gamma)
            extra["over_margin_value"] = _log_adjust(mu - 2 * math.log(gamma), m)
        return mu, extra
    return _spectral_family(ctx, False, False, formula, opts=opts)


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_sum_of_spec"], options=JiangNormOptions)
def jiang_sum_of_spec(ctx: BoundContext, opts: JiangNormOptions) -> Evaluation:
    """μ = log[d·(Π‖W_i‖₂²)^{1/d}] = log d + (1/d)·log Π‖W_i‖₂²; value ½(μ − log m) (Jiang et al. 2020, eq. (35)).

    By the AM–GM inequality d·(Π x_i)^{1/d} ≤ Σ x_i; the measure is the sum of squared spectral
    norms after rebalancing the layers (positive homogeneity). /margin variant (34) in details.
    Status: predictor.
    """
    m = int(ctx.train.n)

    def formula(q):
        d = len(q["spec"])
        mu = math.log(d) + _log_prod(q["spec"]) / d
        extra = {}
        gamma = _margin(ctx, required=False)
        if isinstance(gamma, float):
            over = math.log(d) + (_log_prod(q["spec"]) - 2 * math.log(gamma)) / d
            extra.update({"over_margin_measure": over, "over_margin_value": _log_adjust(over, m)})
        return mu, extra
    return _spectral_family(ctx, False, False, formula, opts=opts)


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_prod_of_fro"])
def jiang_prod_of_fro(ctx: BoundContext) -> Evaluation:
    """μ = log Π‖W_i‖_F²; value ½(μ − log m) (Jiang et al. 2020, eq. (37)); /margin variant (36) in details.

    Status: predictor.
    """
    m = int(ctx.train.n)

    def formula(q):
        mu = _log_prod(q["fro"])
        extra = {"frobenius_norms": q["fro"].tolist()}
        gamma = _margin(ctx, required=False)
        if isinstance(gamma, float):
            extra.update({"over_margin_measure": mu - 2 * math.log(gamma), "over_margin_value": _log_adjust(mu - 2 * math.log(gamma), m)})
        return mu, extra
    return _spectral_family(ctx, False, False, formula)


def _sum_family(ctx: BoundContext, needs_init: bool, kind: str, opts: JiangNormOptions = _DEFAULT_NORMS) -> Evaluation:
    def formula(q):
        vals = _dist_init(q, kind) if needs_init else q["fro"]
        return float(np.sum(vals**2)), {"_log": False, "per_layer": vals.tolist()}
    return _spectral_family(ctx, needs_init, False, formula, needs_spec=kind == "spec", opts=opts)


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_fro_dist"])
def jiang_fro_dist(ctx: BoundContext) -> Evaluation:
    """μ = Σ_i ‖W_i − W_i⁰‖_F²; value √(μ/m) (Jiang et al. 2020, eq. (40)). Status: predictor; needs init weights."""
    return _sum_family(ctx, True, "fro")


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_dist_spec_init"], options=JiangNormOptions)
def jiang_dist_spec_init(ctx: BoundContext, opts: JiangNormOptions) -> Evaluation:
    """μ = Σ_i ‖W_i − W_i⁰‖₂²; value √(μ/m) (Jiang et al. 2020, eq. (41)). Status: predictor; needs init weights."""
    return _sum_family(ctx, True, "spec", opts)


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_param_norm"])
def jiang_param_norm(ctx: BoundContext) -> Evaluation:
    """μ = Σ_i ‖W_i‖_F²; value √(μ/m) (Jiang et al. 2020, eq. (42)). Status: predictor."""
    return _sum_family(ctx, False, "fro")


def path_norm(model: nn.Module, net: NetworkWeights) -> float:
    """Σ_outputs f_{w²}(1): the model (a float64 CPU deep copy) with each BatchNorm folded into the layer
    before it and replaced by the identity, every weight and bias squared, run on one all-ones input.

    For a bias-free ReLU network this is Σ over input→output paths of Π (weight on the path)² — all
    activations see non-negative inputs, so ReLU and max pooling act as identities on them. Residual
    additions in the forward add the skip paths. ``model`` is never modified.
    """
    work = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    modules = dict(work.named_modules())
    with torch.no_grad():
        for layer in _unique_layers(net):
            mod = modules[layer.name]
            mod.weight.copy_(layer.weight**2)
            if layer.bias is not None:
                if mod.bias is None:
                    mod.bias = nn.Parameter(layer.bias**2)
                else:
                    mod.bias.copy_(layer.bias**2)
            if layer.batchnorm:
                parent, _, attr = layer.batchnorm.rpartition(".")
                setattr(modules[parent] if parent else work, attr, nn.Identity())
        out = work(torch.ones((1, *net.input_shape), dtype=torch.float64))
    return float(out.sum())


@register(bounds=_BOUNDS, status="predictor", group=_GROUP, reference=_REFS["jiang_path_norm"])
def jiang_path_norm(ctx: BoundContext) -> Evaluation:
    """μ = Σ_outputs f_{w²}(1) (see :func:`path_norm`); value √(μ/m) (Jiang et al. 2020, eq. (44)).

    As Jiang et al.'s and Dziugaite et al.'s code: all parameters (biases included) squared, BatchNorm
    folded first, one forward pass of a deep copy on an all-ones input. Status: predictor.
    """
    net = _network(ctx)
    try:
        mu = path_norm(ctx.model, net)
    except Exception as exc:  # noqa: BLE001 - a forward that fails on the squared network becomes a reason
        raise NotApplicable(f"the squared-weight network could not be evaluated ({type(exc).__name__}: {exc}).") from None
    m = int(ctx.train.n)
    return _result(ctx, _sqrt_adjust(mu, m), mu, net, {"input": "all ones"}, {"biases_squared": True})
