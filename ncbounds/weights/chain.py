"""The data types of a network seen as a chain (:func:`ncbounds.weights.network.extract_network`).

    x ↦ σ_L(A_L σ_{L−1}(… σ_1(A_1 σ_0(x) + β_1) …) + β_L)

:class:`LinearLayer` is one A_i with its bias β_i (BatchNorm folded) and certified norms,
:class:`Nonlinearity` one fixed map σ with σ(0) = 0, its ℓ2 Lipschitz constant ρ and positive
homogeneity, and :class:`NetworkWeights` the whole chain with what is known about it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncbounds.weights.layer_norms import _operator_norm
from ncbounds.weights.operator_norms import OperatorNorm

__all__ = ["LinearLayer", "NetworkWeights", "Nonlinearity"]


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
