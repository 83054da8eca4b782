"""Feature hooks: the penultimate features (input of the final linear layer) and chosen layer outputs.

Conventions (stated in every report):
- the *penultimate* features are the input of the last ``nn.Linear`` module in registration order
  (the classifier head), captured with a forward pre-hook, so they are exactly what the head sees;
- other layers are module outputs; maps with spatial dimensions (B, C, ...) are reduced by global
  average pooling over the spatial dimensions (``conv_reduce='avg'``, the usual choice in the
  neural-collapse literature, e.g. Papyan et al. 2020 measure at the pooled penultimate layer) or
  flattened (``'flatten'``);
- ``layers='all'`` selects the outputs of residual/"Block" modules and of activation modules that are
  not inside such a block, in forward order — one feature map per depth step. A module whose output
  is the very tensor the head receives is reported once, as ``penultimate``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ncbounds.errors import UsageError

PENULTIMATE = "penultimate"
_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.ReLU6, nn.Hardswish, nn.Mish, nn.Sigmoid)
_BLOCK_NAME = re.compile(r"(Block|Bottleneck)$")


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the classifier head: the last ``nn.Linear`` in registration order."""
    head = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            head = (name, module)
    if head is None:
        raise UsageError(
            "the model has no nn.Linear layer, so its penultimate features cannot be found; "
            "end the architecture with a linear classifier or pass precomputed features with --data features:FILE."
        )
    return head


def default_layers(model: nn.Module, head_name: str) -> list[str]:
    """Names selected by ``--layers all`` (see module docstring)."""
    blocks = [n for n, m in model.named_modules() if n and _BLOCK_NAME.search(type(m).__name__)]
    chosen = []
    for name, module in model.named_modules():
        if not name or name == head_name:
            continue
        inside_block = any(name.startswith(b + ".") for b in blocks)
        if name in blocks or (isinstance(module, _ACTIVATIONS) and not inside_block):
            chosen.append(name)
    if not chosen:
        chosen = [
            n for n, m in model.named_modules()
            if n and n != head_name and not list(m.children()) and not isinstance(m, (nn.Dropout, nn.Flatten, nn.Identity))
        ]
    return chosen


def resolve_layers(model: nn.Module, layers: str | list[str] | None, head_name: str) -> list[str]:
    """Turn a ``--layers`` value (None, 'all', 'a,b' or a list) into validated module names."""
    if layers is None or layers == "" or layers == []:
        return []
    if layers == "all":
        return default_layers(model, head_name)
    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    known = dict(model.named_modules())
    unknown = [n for n in names if n not in known]
    if unknown:
        sample = ", ".join(n for n in list(known)[1:12])
        raise UsageError(f"unknown layer(s) {', '.join(unknown)}; module names include: {sample} (see `ncbounds inspect`).")
    return names


def reduce_features(output: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, ...) → (B, d): global average over spatial dims ('avg') or flatten ('flatten')."""
    if output.ndim == 2:
        return output
    if output.ndim < 2:
        return output.reshape(output.shape[0], -1)
    if mode == "avg":
        return output.mean(dim=tuple(range(2, output.ndim)))
    if mode == "flatten":
        return output.reshape(output.shape[0], -1)
    raise UsageError(f"--conv-reduce must be 'avg' or 'flatten', not {mode!r}.")


def _layout(t: torch.Tensor) -> tuple:
    """Memory address and layout: equal for two views of the same data (detached aliases)."""
    return (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


class FeatureExtractor:
    """Context manager that hooks a model; after each forward, :attr:`features` maps name → (B, d).

    The dict is ordered by forward execution, with ``'penultimate'`` (the head input) included.
    """

    def __init__(self, model: nn.Module, layers: list[str], conv_reduce: str = "avg") -> None:
        self.model = model
        self.head_name, self.head = find_head(model)
        self.layers = layers
        self.conv_reduce = conv_reduce
        self.features: dict[str, torch.Tensor] = {}
        self._origin: dict[str, torch.Tensor] = {}
        self._handles = []

    def _capture(self, name):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            feats = reduce_features(out.detach(), self.conv_reduce)
            # keep the uncloned view alive until run() ends, so its address cannot be reused by a
            # later tensor (the duplicate-of-head-input test below compares addresses)
            self._origin[name] = feats
            # a later in-place op (ReLU(inplace=True), residual +=) would overwrite an alias
            self.features[name] = feats.clone() if feats.data_ptr() == out.data_ptr() else feats

        return hook

    def _capture_head_input(self, _module, inputs):
        self.features[PENULTIMATE] = reduce_features(inputs[0].detach(), self.conv_reduce)

    def __enter__(self) -> FeatureExtractor:
        modules = dict(self.model.named_modules())
        for name in self.layers:
            self._handles.append(modules[name].register_forward_hook(self._capture(name)))
        self._handles.append(self.head.register_forward_pre_hook(self._capture_head_input))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Forward ``x``; returns (features by layer in forward order, logits)."""
        self.features = {}
        self._origin = {}
        out = self.model(x)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        feats = self.features
        if PENULTIMATE in feats:  # keep the head input last: it is the deepest feature layer
            head_input = feats.pop(PENULTIMATE)
            # a hooked module whose output *is* the head input (e.g. the last ReLU of an MLP) would
            # duplicate the penultimate layer; it is reported once, as 'penultimate'
            head_layout = _layout(head_input)
            feats = {k: v for k, v in feats.items() if k not in self._origin or _layout(self._origin[k]) != head_layout}
            feats[PENULTIMATE] = head_input
        self._origin = {}
        return feats, logits
