"""The certified operator norm of one layer's linear map, on the layer's device with a CPU fallback.

Shared by :class:`~ncbounds.weights.chain.LinearLayer` (norms of other weights, e.g. W − W⁰) and
:func:`~ncbounds.weights.network.extract_network`; the norms themselves are computed in
:mod:`ncbounds.weights.operator_norms`.
"""

from __future__ import annotations

from typing import Any

import torch

from ncbounds.weights.operator_norms import OperatorNorm, conv_operator_norm_upper, linear_operator_norm

__all__ = ["_operator_norm"]


def _operator_norm(layer: Any, weight: torch.Tensor) -> OperatorNorm:
    """Certified operator norm of x ↦ weight·x with the geometry of ``layer`` (a
    :class:`~ncbounds.weights.chain.LinearLayer`: conv settings, spatial shape, device); a failing device
    falls back to the CPU."""
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
