"""Fold eval-mode BatchNorm into the preceding Linear / Conv layer (for the norm-based bounds).

Norm-based bounds act on the network's linear maps; an eval-mode BatchNorm is an affine per-channel
map, so it is absorbed into the layer before it and the operator norm is taken of the folded weight.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fold_batchnorm"]


def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``bn`` (eval mode) into the preceding layer's (weight, bias); returns float64 tensors.

    Formula, per output channel o, with s_o = γ_o / √(running_var_o + eps):
        W'[o, ...] = s_o · W[o, ...],      b'_o = (b_o − running_mean_o) · s_o + β_o,
    so that bn(layer(x)) = layer'(x) exactly in eval mode (BatchNorm uses its running statistics
    there). ``bias=None`` means b = 0; ``bn.affine=False`` means γ = 1, β = 0. ``weight`` is a
    Linear weight (out, in) or a ConvND weight (out, in/groups, k...), with
    out = ``bn.num_features`` (BatchNorm1d after Linear/Conv1d, BatchNorm2d after Conv2d, …).
    Computed and returned in float64 on the weight's device; ``bn.training`` is ignored (the fold
    describes the eval-mode function).

    Reference: Ioffe & Szegedy (2015), "Batch Normalization", ICML, Alg. 2 (inference transform
    y = γ/√(Var[x]+ε)·x + (β − γ·E[x]/√(Var[x]+ε))); Jacob et al. (2018), "Quantization and
    Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR (BN folding).
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn must be a torch BatchNorm module; got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "this BatchNorm has no running statistics (track_running_stats=False), so its eval "
            "output depends on the batch and cannot be folded; re-create it with running stats"
        )
    w = weight.detach().to(torch.float64)
    out = w.shape[0]
    if bn.num_features != out:
        raise ValueError(
            f"BatchNorm has {bn.num_features} features but the layer has {out} output channels"
        )
    dev = w.device
    mean = bn.running_mean.detach().to(dev, torch.float64)
    var = bn.running_var.detach().to(dev, torch.float64)
    if bn.affine:
        gamma = bn.weight.detach().to(dev, torch.float64)
        beta = bn.bias.detach().to(dev, torch.float64)
    else:
        gamma = torch.ones(out, dtype=torch.float64, device=dev)
        beta = torch.zeros(out, dtype=torch.float64, device=dev)
    scale = gamma / torch.sqrt(var + float(bn.eps))
    b = torch.zeros(out, dtype=torch.float64, device=dev) if bias is None else (
        bias.detach().to(dev, torch.float64)
    )
    w_folded = w * scale.reshape((out,) + (1,) * (w.ndim - 1))
    b_folded = (b - mean) * scale + beta
    return w_folded, b_folded
