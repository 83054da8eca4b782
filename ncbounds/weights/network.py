"""A trained model as a chain of linear operators and Lipschitz positively homogeneous maps.

Norm-based bounds (Bartlett et al. 2017, Golowich et al. 2018, Neyshabur et al. 2018) and Jiang et
al.'s (2020) norm measures need the network as

    x ↦ σ_L(A_L σ_{L−1}(… σ_1(A_1 σ_0(x) + β_1) …) + β_L)

with A_i linear (``nn.Linear``, ``nn.ConvNd``; an eval-mode BatchNorm right after one is folded into
it), β_i its bias and σ_i fixed maps with σ_i(0) = 0, Lipschitz constant ρ_i in ℓ2 and positive
homogeneity (σ(c·x) = c·σ(x) for c ≥ 0). :func:`extract_network` finds this description for a model.

How the chain is found and checked
----------------------------------
A float64 CPU copy of the model (``ctx.model`` is never touched) runs one forward pass on a seeded
N(0, 1) batch of two inputs of ``input_shape``, with forward hooks on every leaf module. The
hooks give the execution order and, for every call, the exact input and output tensors. The model
is a plain chain when the input of every call *equals* (same values, any reshape) the output of
the previous call, the first call sees the model input and the model returns the last call's output.
Anything done outside a submodule — a residual addition (ResNet ``BasicBlock``), a functional
activation, a scaling, an attention product — changes the values between two calls and is
reported (``supported=False`` with the call where it happens); so is every module type that is not
listed below. Reshapes (``x.flatten(1)``, ``unsqueeze``) are isometries of the flattened vector and
pass. A check on random inputs cannot prove that the forward never branches on its input, but a
model that computes a different function on other inputs is outside what any of these bounds
describe anyway.

Supported modules
-----------------
- ``nn.Linear`` (acting on the last dimension; leading per-sample dimensions are positions sharing
  the weight), ``nn.Conv1d/2d/3d`` (any padding incl. 'same'/'valid', stride, dilation, groups;
  padding_mode 'zeros' or 'circular'): linear layers. Certified operator norm by
  :func:`~ncbounds.weights.operator_norms.linear_operator_norm` (exact SVD) or
  :func:`~ncbounds.weights.operator_norms.conv_operator_norm_upper` (FFT of the circular embedding,
  Sedghi, Gupta & Long 2019 — an upper bound on the zero-padded strided conv).
- eval-mode ``BatchNorm1d/2d/3d`` whose input is the output of the call just before it, when that
  call is a linear layer: folded with :func:`~ncbounds.weights.folding.fold_batchnorm`.
- ``nn.ReLU`` (ρ = 1), ``nn.LeakyReLU`` (ρ = max(1, |slope|)): element-wise, positively homogeneous.
- ``nn.MaxPoolNd`` / ``nn.AdaptiveMaxPoolNd``: ρ = √M with M the largest number of windows that
  contain one input entry (|max a − max b|² ≤ Σ_window (a − b)², summed over windows). M = 1 —
  ρ = 1 — for non-overlapping windows (kernel == stride, dilation 1); in general
  M ≤ Π_i min(k_i, ⌈(d_i(k_i − 1) + 1)/s_i⌉), and for adaptive pooling M is counted exactly.
- ``nn.AvgPoolNd`` / ``nn.AdaptiveAvgPoolNd``: linear with non-negative coefficients; ρ is the Schur
  test bound ‖P‖₂ ≤ √(max row sum · max column sum), both computed exactly from P·1 and Pᵀ·1
  (equal to the norm for global average pooling over n positions: 1/√n).
- ``nn.Identity``, ``nn.Flatten``, ``nn.Unflatten``, ``nn.Dropout*`` (identity in eval mode), an empty ``nn.Sequential``: ρ = 1.

Residual networks are *not* reduced to a chain (the 1 + ‖branch‖ Lipschitz bound of a block would
need the block structure, which hooks do not see): they get ``supported=False`` with the reason,
and the norm bounds report 'not-applicable'. Their linear layers (with BatchNorm folded) are still
listed when every parameterized module is a Linear/Conv/BatchNorm (``weights_complete``), which is
what Jiang et al.'s weight-norm measures need.

Reference weights: with ``init_state`` (a state_dict of the same model at initialization) the same
extraction is applied to a copy with those weights loaded (BatchNorm folded with its statistics at
initialization), and every layer gets ``init_weight`` / ``init_bias``.

Modules: the data types live in :mod:`ncbounds.weights.chain`, the tracing and per-module rules in
:mod:`ncbounds.weights.tracing`; this module assembles them (:func:`extract_network`; the bounds keep one
extraction per evaluation on their context, :func:`ncbounds.bounds.margin_tools.network_of`)
and re-exports every name it defined before the split. Where the weight quantities enter the bounds: the
"Bounds" section of ``docs/architecture.md``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ncbounds.weights.chain import _CONV_FN, LinearLayer, NetworkWeights, Nonlinearity  # noqa: F401 - re-exported
from ncbounds.weights.folding import fold_batchnorm
from ncbounds.weights.layer_norms import _operator_norm  # noqa: F401 - re-exported
from ncbounds.weights.operator_norms import OperatorNorm, conv_operator_norm_upper, linear_operator_norm  # noqa: F401
from ncbounds.weights.tracing import (  # noqa: F401 - private names re-exported for existing imports
    _ADAPTIVE_MAXPOOL,
    _AVGPOOL,
    _BN,
    _CONV,
    _IDENTITY,
    _MAXPOOL,
    _avgpool_lipschitz,
    _Call,
    _check_shape,
    _enclosing,
    _make_layer,
    _maxpool_multiplicity,
    _nonlinearity,
    _same_values,
    _trace,
    _unsupported,
)

__all__ = ["LinearLayer", "Nonlinearity", "NetworkWeights", "extract_network"]


def extract_network(model: nn.Module, input_shape: Any, init_state: dict[str, torch.Tensor] | None = None, *,
                    seed: int = 0, compute_norms: bool = True) -> NetworkWeights:
    """Describe ``model`` as a chain of linear layers and Lipschitz maps (see the module docstring).

    ``input_shape``: one sample's shape, without the batch dimension (e.g. ``(64,)``, ``(1, 28, 28)``).
    ``init_state``: optional state_dict at initialization; gives every layer ``init_weight``/``init_bias``.
    Never raises for an unsupported model: the result then has ``supported=False`` and the reason.
    ``ctx.model`` is not modified (a float64 CPU deep copy is traced). The FFTs and eigenvalue
    problems of the convolutions' operator norms run on the device of ``model``'s parameters.
    """
    shape = _check_shape(input_shape)
    if isinstance(shape, str):
        return _unsupported((), shape)
    try:
        work = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    except Exception as exc:  # noqa: BLE001 - any copy failure becomes a reason
        return _unsupported(shape, f"the model could not be copied to float64 CPU for the weight analysis ({type(exc).__name__}: {exc})")
    try:
        calls, x, y, opaque = _trace(work, shape, seed)
    except Exception as exc:  # noqa: BLE001
        return _unsupported(shape, f"the model does not run on an input of per-sample shape {shape} ({type(exc).__name__}: {exc})")

    chain_reason: str | None = None
    type_reason: str | None = None
    weights_reason: str | None = None
    if opaque:
        weights_reason = type_reason = (f"module '{opaque[0]}' holds its own parameters and has submodules (e.g. attention); its "
                                        "computation is not a chain of supported layers")
    layers: list[LinearLayer] = []
    ops: list[LinearLayer | Nonlinearity] = []
    prev_out, prev_name, prev_call = x, "the model input", None
    for call in calls:
        if len(call.inputs) != 1 or call.output is None:
            type_reason = type_reason or f"module '{call.name}' takes {len(call.inputs)} tensor inputs or returns a non-tensor"
            weights_reason = weights_reason or (type_reason if any(True for _ in call.module.parameters()) else None)
            prev_out, prev_name, prev_call = call.output, call.name, None
            continue
        inp = call.inputs[0]
        if chain_reason is None and not _same_values(inp, prev_out):
            where = _enclosing(call.name, prev_name)
            chain_reason = (f"the input of '{call.name}' is not the output of {('' if prev_call is None else 'module ')}'{prev_name}'"
                            f"{where}: something outside the submodules (a residual addition, a functional activation or "
                            "rescaling) transforms the tensor, so the model is not a plain chain of layers")
        mod = call.module
        if isinstance(mod, (nn.Linear, *_CONV)):
            layer = _make_layer(len(layers), call, inp)
            layers.append(layer)
            ops.append(layer)
        elif isinstance(mod, _BN):
            last = layers[-1] if layers else None
            if (prev_call is not None and last is not None and last.name == prev_call.name and last.batchnorm is None
                    and _same_values(inp, prev_call.output)):
                try:
                    last.weight, last.bias = fold_batchnorm(last.weight, last.bias, mod)
                    last.batchnorm = call.name
                except (ValueError, TypeError) as exc:
                    type_reason = type_reason or f"BatchNorm '{call.name}' cannot be folded: {exc}"
                    weights_reason = weights_reason or type_reason
            else:
                type_reason = type_reason or (f"BatchNorm '{call.name}' does not directly follow a Linear/Conv layer, so it cannot "
                                              "be folded into one")
                weights_reason = weights_reason or type_reason
        else:
            op = _nonlinearity(len(ops), call, inp)
            if isinstance(op, str):
                type_reason = type_reason or op
                if any(True for _ in mod.parameters()):
                    weights_reason = weights_reason or op
            else:
                ops.append(op)
        prev_out, prev_name, prev_call = call.output, call.name, call
    if not calls:
        return _unsupported(shape, "the model has no submodules that run in its forward pass (nothing to analyse)")
    if chain_reason is None and not (isinstance(y, torch.Tensor) and _same_values(y, prev_out)):
        chain_reason = (f"the model's output is not the output of its last submodule '{prev_name}': the forward post-processes it "
                        "outside any module")
    if not layers:
        return _unsupported(shape, "no Linear/Conv layer found in the forward pass")

    norm_reason = None
    if compute_norms:
        norm_device = next((p.device for p in model.parameters()), None)
        for layer in layers:
            layer.norm_device = norm_device
            layer.fro_norm = float(torch.linalg.vector_norm(layer.weight))
            try:
                layer.op_norm = _operator_norm(layer, layer.weight)
            except ValueError as exc:
                layer.norm_error = str(exc)
                norm_reason = norm_reason or f"no certified operator norm for '{layer.name}': {exc}"
    reason = type_reason or chain_reason or norm_reason
    net = NetworkWeights(layers, ops, shape, tuple(y.shape[1:]) if isinstance(y, torch.Tensor) else None,
                         supported=reason is None, reason=reason, weights_complete=weights_reason is None,
                         weights_reason=weights_reason)
    if init_state is not None:
        _attach_init(net, model, shape, init_state, seed)
    return net


def _attach_init(net: NetworkWeights, model: nn.Module, shape: tuple[int, ...], init_state: dict, seed: int) -> None:
    try:
        init_model = copy.deepcopy(model).cpu()
        init_model.load_state_dict(init_state, strict=True)
    except Exception as exc:  # noqa: BLE001
        net.init_reason = f"the init state_dict does not fit the model ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        return
    ref = extract_network(init_model, shape, None, seed=seed, compute_norms=False)
    if len(ref.layers) != len(net.layers) or any(
            a.name != b.name or a.weight.shape != b.weight.shape or (a.bias is None) != (b.bias is None)
            for a, b in zip(net.layers, ref.layers, strict=True)):
        net.init_reason = "the model with the init weights does not have the same layers (the forward depends on the weights)"
        return
    for a, b in zip(net.layers, ref.layers, strict=True):
        a.init_weight, a.init_bias = b.weight, b.bias
    net.init_available = True
