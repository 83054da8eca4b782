"""A trained model as a chain of linear operators and 1-Lipschitz positively homogeneous maps (DESIGN §6).

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
"""

from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncbounds.weights.folding import fold_batchnorm
from ncbounds.weights.operator_norms import OperatorNorm, conv_operator_norm_upper, linear_operator_norm

__all__ = ["LinearLayer", "Nonlinearity", "NetworkWeights", "extract_network", "network_for"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm
_IDENTITY = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout, nn.Sequential)  # a Sequential is only hooked when empty (a leaf): the identity
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_ADAPTIVE_MAXPOOL = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass
class LinearLayer:
    """One linear layer of the chain (BatchNorm folded), with its certified norms.

    ``weight``/``bias``: float64 CPU tensors after folding (``bias`` None when the layer has neither
    a bias nor a folded BatchNorm). ``input_shape``/``output_shape``: per-sample shapes seen in the
    forward pass (channels first for convolutions). ``op_norm``: certified upper bound on the
    operator norm of x ↦ Wx (bias excluded), or None with ``norm_error`` when it cannot be certified.
    ``fro_norm``: Frobenius norm of the weight *tensor* (the parameters, as in Jiang et al. 2020);
    :meth:`matrix_fro_norm` is that of the full linear map. ``init_weight``/``init_bias``: the same
    quantities at initialization when an init state_dict was given. ``norm_device``: where the
    operator-norm linear algebra runs (the device of the analysed model; None = CPU).
    """

    index: int
    name: str
    kind: str  # 'linear', 'conv1d', 'conv2d', 'conv3d'
    weight: torch.Tensor
    bias: torch.Tensor | None
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    op_norm: OperatorNorm | None = None
    fro_norm: float = float("nan")
    batchnorm: str | None = None
    conv: dict[str, Any] | None = None
    norm_error: str | None = None
    init_weight: torch.Tensor | None = None
    init_bias: torch.Tensor | None = None
    norm_device: Any = None

    @property
    def has_bias(self) -> bool:
        """True when the (folded) layer adds a bias (possibly zero)."""
        return self.bias is not None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Input spatial shape of a convolution; () for a Linear layer."""
        return tuple(self.input_shape[1:]) if self.conv is not None else ()

    @property
    def in_dim(self) -> int:
        """Dimension of the flattened per-sample input."""
        return int(np.prod(self.input_shape))

    @property
    def out_dim(self) -> int:
        """Dimension of the flattened per-sample output."""
        return int(np.prod(self.output_shape))

    @property
    def positions(self) -> int:
        """Output positions per output channel (conv: spatial size; Linear: leading per-sample dims)."""
        if self.conv is not None:
            return int(np.prod(self.output_shape[1:]))
        return int(np.prod(self.output_shape[:-1]))

    def apply(self, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x ↦ Wx + b on a batch ``x`` (B, *input_shape); W defaults to the folded weight, b to None (no bias)."""
        w = self.weight if weight is None else weight
        if self.conv is None:
            return F.linear(x, w, bias)
        cfg = self.conv
        padding = cfg["padding"]
        if cfg["padding_mode"] != "zeros":
            x = F.pad(x, cfg["reversed_padding"], mode=cfg["padding_mode"])
            padding = 0
        return _CONV_FN[w.ndim - 2](x, w, bias, cfg["stride"], padding, cfg["dilation"], cfg["groups"])

    def row_sq_norms(self, weight: torch.Tensor | None = None) -> np.ndarray:
        """Squared ℓ2 norms of the rows of the full matrix of x ↦ Wx, one per output unit (flattened).

        Computed exactly as the layer applied with W∘W (entry-wise square) to an all-ones input: with
        zero padding a row holds the kernel taps that land inside the input, each on a distinct
        input entry, so its squared norm is the sum of those squared taps.
        """
        w = self.weight if weight is None else weight
        ones = torch.ones((1, *self.input_shape), dtype=torch.float64)
        with torch.no_grad():
            return self.apply(ones, w.to(torch.float64) ** 2).reshape(-1).numpy()

    def matrix_fro_norm(self, weight: torch.Tensor | None = None) -> float:
        """Frobenius norm of the full matrix of x ↦ Wx (= √positions·‖W‖_F without padding effects)."""
        return float(math.sqrt(max(float(self.row_sq_norms(weight).sum()), 0.0)))

    def bias_full_norm(self, bias: torch.Tensor | None = None) -> float:
        """ℓ2 norm of the bias as a vector of the flattened output (each channel's bias at every position)."""
        b = self.bias if bias is None else bias
        if b is None:
            return 0.0
        return float(math.sqrt(self.positions) * torch.linalg.vector_norm(b.to(torch.float64)))

    def bias_rows(self, bias: torch.Tensor | None = None) -> np.ndarray:
        """The bias as a vector of the flattened output (row order of :meth:`row_sq_norms`)."""
        b = self.bias if bias is None else bias
        if b is None:
            return np.zeros(self.out_dim)
        b = b.detach().to(torch.float64).numpy()
        if self.conv is not None:
            return np.repeat(b, self.positions)
        return np.tile(b, self.positions)

    def operator_norm_of(self, weight: torch.Tensor) -> OperatorNorm:
        """Certified operator norm of this layer's map with another weight (e.g. W − W⁰)."""
        return _operator_norm(self, weight)


@dataclass
class Nonlinearity:
    """A fixed map between linear layers: σ(0) = 0, ρ-Lipschitz in ℓ2, positively homogeneous.

    ``elementwise``: applies one scalar function to every coordinate (ReLU, LeakyReLU, identity);
    ``linear``: a fixed linear map (average pooling, identity). ``module`` is the module of the
    float64 copy (used by :meth:`NetworkWeights.forward`).
    """

    index: int
    name: str
    kind: str  # 'relu', 'leaky_relu', 'max_pool', 'avg_pool', 'identity'
    lipschitz: float
    method: str
    elementwise: bool
    linear: bool
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    module: nn.Module | None = field(default=None, repr=False)


@dataclass
class NetworkWeights:
    """The model as a chain of :class:`LinearLayer` and :class:`Nonlinearity` (in ``ops`` order).

    ``supported``: the model is exactly such a chain (``reason`` says why not). ``weights_complete``:
    every parameterized module that ran is a linear layer or a folded BatchNorm, so ``layers`` lists
    all the weights (true for residual networks made of conv/BN/linear). ``init_available``: each
    layer has ``init_weight`` (``init_reason`` says why not, when an init state was given).
    """

    layers: list[LinearLayer]
    ops: list[LinearLayer | Nonlinearity]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None
    supported: bool
    reason: str | None = None
    weights_complete: bool = False
    weights_reason: str | None = None
    init_available: bool = False
    init_reason: str | None = None

    @property
    def depth(self) -> int:
        """Number of linear layers L."""
        return len(self.layers)

    @property
    def has_bias(self) -> bool:
        """True when some layer has a non-zero (folded) bias."""
        return any(layer.bias is not None and bool(torch.any(layer.bias != 0)) for layer in self.layers)

    def gaps(self) -> list[list[Nonlinearity]]:
        """The non-linear ops around the layers: gaps[0] before layer 1, gaps[i] after layer i (L+1 lists)."""
        out: list[list[Nonlinearity]] = [[]]
        for op in self.ops:
            if isinstance(op, LinearLayer):
                out.append([])
            else:
                out[-1].append(op)
        return out

    def gap_lipschitz(self) -> list[float]:
        """ρ of each gap: the product of the Lipschitz constants of its ops (1.0 for an empty gap)."""
        return [float(np.prod([op.lipschitz for op in gap])) if gap else 1.0 for gap in self.gaps()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Replays the chain on a float64 batch (B, *input_shape); equals the model's eval output."""
        h = x.to(torch.float64)
        for op in self.ops:
            h = h.reshape((h.shape[0], *op.input_shape))
            h = op.apply(h, op.weight, op.bias) if isinstance(op, LinearLayer) else op.module(h)
        return h

    def summary(self) -> list[dict[str, Any]]:
        """Per-layer record for a bound's ``inputs``: name, kind, shapes, norm and its method."""
        rows = []
        for layer in self.layers:
            rows.append({
                "name": layer.name,
                "kind": layer.kind,
                "batchnorm_folded": layer.batchnorm,
                "input_shape": list(layer.input_shape),
                "output_shape": list(layer.output_shape),
                "op_norm": None if layer.op_norm is None else layer.op_norm.value,
                "norm_method": None if layer.op_norm is None else layer.op_norm.method,
                "norm_exact": None if layer.op_norm is None else layer.op_norm.exact,
                "fro_norm": layer.fro_norm,
                "bias": layer.has_bias,
            })
        return rows


# ------------------------------------------------------------------------------------------------
# extraction


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


def _operator_norm(layer: LinearLayer, weight: torch.Tensor) -> OperatorNorm:
    if layer.conv is None:
        return linear_operator_norm(weight)
    cfg = layer.conv

    def on(device):
        return conv_operator_norm_upper(weight, layer.spatial_shape, stride=cfg["stride"], padding=cfg["padding"],
                                        dilation=cfg["dilation"], groups=cfg["groups"], padding_mode=cfg["padding_mode"],
                                        device=device)

    device = layer.norm_device
    if device is None or torch.device(device).type == "cpu":
        return on(None)
    try:
        return on(device)
    except (RuntimeError, NotImplementedError):  # the device lacks the memory or a complex op: same value on the CPU
        return on(None)


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


# ------------------------------------------------------------------------------------------------
# one extraction per (model state, input shape, init state), shared by the bounds of one evaluation

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((k, v.data_ptr(), v._version, tuple(v.shape)) for k, v in model.state_dict(keep_vars=True).items())


def network_for(ctx: Any) -> NetworkWeights:
    """:func:`extract_network` of ``ctx.model`` / ``ctx.input_shape`` / ``ctx.init_state``, cached per model state."""
    model = ctx.model
    key = (_fingerprint(model), tuple(ctx.input_shape), id(ctx.init_state), int(getattr(ctx.options, "seed", 0)))
    try:
        per_model = _CACHE.setdefault(model, {})
    except TypeError:
        per_model = {}
    hit = per_model.get(key)
    if hit is not None and hit[0] is ctx.init_state:
        return hit[1]
    net = extract_network(model, ctx.input_shape, ctx.init_state, seed=int(getattr(ctx.options, "seed", 0)))
    per_model.clear()
    per_model[key] = (ctx.init_state, net)
    return net
