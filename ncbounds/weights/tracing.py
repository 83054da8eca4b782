"""The per-module steps of :func:`ncbounds.weights.network.extract_network`.

:func:`_trace` runs a float64 copy of the model once with forward hooks on every leaf module and
records each call's exact input and output; :func:`_make_layer` turns a Linear/Conv call into a
:class:`~ncbounds.weights.chain.LinearLayer`, :func:`_nonlinearity` any other call into a
:class:`~ncbounds.weights.chain.Nonlinearity` with its Lipschitz constant (the rules are listed under
"Supported modules" in :mod:`ncbounds.weights.network`) or a one-sentence reason why it is not one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ncbounds.weights.chain import LinearLayer, NetworkWeights, Nonlinearity

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


_BN = nn.modules.batchnorm._BatchNorm


_IDENTITY = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout, nn.Sequential)  # a Sequential is only hooked when empty (a leaf): the identity


_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


_ADAPTIVE_MAXPOOL = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


@dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: list[torch.Tensor]
    n_args: int
    output: torch.Tensor | None


def _same_values(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None or a.ndim == 0 or b.ndim == 0 or a.shape[0] != b.shape[0]:
        return False
    if a.numel() != b.numel():
        return False
    return bool(torch.equal(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)))


def _unsupported(shape: tuple, reason: str) -> NetworkWeights:
    return NetworkWeights([], [], shape, None, False, reason, False, reason)


def _check_shape(input_shape: Any) -> tuple[int, ...] | str:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        return f"input_shape must be a tuple of positive integers (one sample, no batch dimension); got {input_shape!r}"
    if not shape or min(shape) < 1:
        return (f"the per-sample input shape is unknown or empty ({input_shape!r}); it is needed to run the model once and "
                "get each layer's input size")
    return shape


def _enclosing(a: str, b: str) -> str:
    pa, pb = a.split("."), b.split(".")
    common = []
    for x, y in zip(pa, pb, strict=False):
        if x != y:
            break
        common.append(x)
    if common and len(common) < len(pa):
        return f" (inside '{'.'.join(common)}')"
    return ""


def _trace(work: nn.Module, shape: tuple[int, ...], seed: int) -> tuple[list[_Call], torch.Tensor, Any, list[str]]:
    names: dict[int, str] = {}
    for n, mod in work.named_modules():
        names.setdefault(id(mod), n or "model")
    calls: list[_Call] = []
    opaque: list[str] = []

    def hook(mod, args, output):
        tensors = [a.detach().clone() for a in args if isinstance(a, torch.Tensor)]
        out = output.detach().clone() if isinstance(output, torch.Tensor) else None
        calls.append(_Call(names[id(mod)], mod, tensors, len(args), out))

    handles = []
    try:
        for n, mod in work.named_modules():
            if next(mod.children(), None) is None:
                handles.append(mod.register_forward_hook(hook))
            elif any(True for _ in mod.parameters(recurse=False)):
                opaque.append(n or "model")
        gen = torch.Generator().manual_seed(int(seed))
        x = torch.randn((2, *shape), generator=gen, dtype=torch.float64)
        with torch.no_grad():
            y = work(x)
    finally:
        for h in handles:
            h.remove()
    return calls, x, y, opaque


def _maxpool_multiplicity(mod: nn.Module, in_shape: tuple[int, ...]) -> int:
    if isinstance(mod, _ADAPTIVE_MAXPOOL):
        d = 1 + [isinstance(mod, t) for t in _ADAPTIVE_MAXPOOL].index(True)
        spatial = in_shape[-d:]
        out = mod.output_size
        out = (out,) * d if isinstance(out, int) or out is None else tuple(out)
        total = 1
        for n, o in zip(spatial, out, strict=True):
            o = n if o is None else int(o)
            counts = np.zeros(n, dtype=np.int64)
            for j in range(o):
                start, end = (j * n) // o, -((-(j + 1) * n) // o)
                counts[start:end] += 1
            total *= int(counts.max())
        return total
    d = 1 + [isinstance(mod, t) for t in _MAXPOOL].index(True)

    def tup(v):
        return (int(v),) * d if isinstance(v, int) else tuple(int(t) for t in v)

    k, s, dil = tup(mod.kernel_size), tup(mod.stride if mod.stride is not None else mod.kernel_size), tup(mod.dilation)
    total = 1
    for ki, si, di in zip(k, s, dil, strict=True):
        total *= min(ki, -(-(di * (ki - 1) + 1) // si))
    return total


def _avgpool_lipschitz(mod: nn.Module, in_shape: tuple[int, ...]) -> float:
    """Schur test ‖P‖₂ ≤ √(max_j Σ_i P_ji · max_i Σ_j P_ji) for the non-negative linear pooling P."""
    x = torch.ones((1, *in_shape), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = mod(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
    rows, cols = float(y.detach().max()), float(grad.max())
    return math.sqrt(max(rows, 0.0) * max(cols, 0.0))


def _make_layer(index: int, call: _Call, inp: torch.Tensor) -> LinearLayer:
    mod = call.module
    weight = mod.weight.detach().to(torch.float64).clone()
    bias = None if mod.bias is None else mod.bias.detach().to(torch.float64).clone()
    conv = None
    kind = "linear"
    if isinstance(mod, _CONV):
        kind = f"conv{weight.ndim - 2}d"
        conv = {"stride": tuple(mod.stride), "padding": mod.padding if isinstance(mod.padding, str) else tuple(mod.padding),
                "dilation": tuple(mod.dilation), "groups": int(mod.groups), "padding_mode": mod.padding_mode,
                "reversed_padding": tuple(mod._reversed_padding_repeated_twice)}
    return LinearLayer(index, call.name, kind, weight, bias, tuple(inp.shape[1:]), tuple(call.output.shape[1:]), conv=conv)


def _nonlinearity(index: int, call: _Call, inp: torch.Tensor) -> Nonlinearity | str:
    mod = call.module
    in_shape, out_shape = tuple(inp.shape[1:]), tuple(call.output.shape[1:])

    def make(kind, lip, method, elementwise, linear):
        return Nonlinearity(index, call.name, kind, float(lip), method, elementwise, linear, in_shape, out_shape, mod)

    if isinstance(mod, nn.ReLU):
        return make("relu", 1.0, "ReLU is 1-Lipschitz", True, False)
    if isinstance(mod, nn.LeakyReLU):
        slope = float(mod.negative_slope)
        return make("leaky_relu", max(1.0, abs(slope)), f"LeakyReLU(slope={slope:g}) is max(1, |slope|)-Lipschitz", True, False)
    if isinstance(mod, _IDENTITY):
        return make("identity", 1.0, f"{type(mod).__name__} is an isometry in eval mode", True, True)
    if isinstance(mod, _MAXPOOL + _ADAPTIVE_MAXPOOL):
        if getattr(mod, "return_indices", False):
            return f"module '{call.name}' ({type(mod).__name__}) returns indices; only the pooled values can be part of a chain"
        mult = _maxpool_multiplicity(mod, in_shape)
        method = ("non-overlapping windows (kernel == stride): 1-Lipschitz" if mult == 1
                  else f"each input entry lies in at most {mult} windows: √{mult}-Lipschitz")
        return make("max_pool", math.sqrt(mult), method, False, False)
    if isinstance(mod, _AVGPOOL):
        lip = _avgpool_lipschitz(mod, in_shape)
        return make("avg_pool", lip, "Schur test √(max row sum · max column sum) of the pooling matrix", False, True)
    return (f"module '{call.name}' ({type(mod).__name__}) is not a Linear/Conv layer, a folded BatchNorm, nor a 1-Lipschitz "
            "positively homogeneous activation or pooling (ReLU, LeakyReLU, max/average pooling, flatten, dropout)")
