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
  is the very tensor the head receives is reported once, as ``penultimate``;
- layers whose (reduced) features are the same numbers on every sample — e.g. the last conv block of a
  CNN, whose global average is exactly what the network's own pooling hands the head — are one
  representation: :class:`SameFeatures` finds them during the pass and the report keeps one name (the
  penultimate layer if it is among them, else the first in forward order), listing the others as its
  ``aliases``, so layerwise fits count each representation once.
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


class SameFeatures:
    """Tracks which hooked layers carry the same features on every batch (up to float32 rounding).

    Two layers are *the same representation* when their reduced features have the same shape and agree
    on every sample to ``|a − b| ≤ rtol·|b| + atol·max|b|`` (``rtol`` = 1e-5, ``atol`` = 1e-6: float32
    rounding of a differently ordered mean, far below any real difference between layers). Pairs are
    compared on each batch until they first differ, so the cost after the first batch is nil for
    layers that differ. ``merge`` intersects the pairs of two splits (a pair must agree on both).
    """

    RTOL = 1e-5
    ATOL = 1e-6

    def __init__(self) -> None:
        self.pairs: set[tuple[str, str]] | None = None
        self.order: list[str] = []

    @classmethod
    def _same(cls, a: torch.Tensor, b: torch.Tensor) -> bool:
        a32, b32 = a.to(torch.float32), b.to(torch.float32)
        scale = float(b32.abs().max()) if b32.numel() else 0.0
        atol = cls.ATOL * max(scale, 1e-30)
        # the first row decides most pairs at once (a different layer differs everywhere); the test of
        # every row follows only if it agrees
        if b32.shape[0] > 1 and not bool(torch.allclose(a32[:1], b32[:1], rtol=cls.RTOL, atol=atol)):
            return False
        return bool(torch.allclose(a32, b32, rtol=cls.RTOL, atol=atol))

    def update(self, features: dict[str, torch.Tensor]) -> None:
        """One batch: ``features`` maps layer name → (B, d) in forward order."""
        names = list(features)
        if self.pairs is None:
            self.order = names
            self.pairs = {(a, b) for i, a in enumerate(names) for b in names[i + 1:] if features[a].shape == features[b].shape}
        for a, b in list(self.pairs):
            if a not in features or b not in features or not self._same(features[a], features[b]):
                self.pairs.discard((a, b))

    def merge(self, other: SameFeatures) -> SameFeatures:
        """Pairs the same in both trackers (e.g. the training and the test split)."""
        out = SameFeatures()
        out.order = self.order or other.order
        out.pairs = (self.pairs or set()) & (other.pairs or set())
        return out

    def aliases(self) -> dict[str, str]:
        """{layer: the layer it is reported as}: within each group of the same representation, the
        penultimate layer if it is in the group, else the first in forward order."""
        parent = {name: name for name in self.order}

        def root(x: str) -> str:
            while parent[x] != x:
                x = parent[x]
            return x

        for a, b in sorted(self.pairs or ()):
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb, key=self.order.index)] = min(ra, rb, key=self.order.index)
        groups: dict[str, list[str]] = {}
        for name in self.order:
            groups.setdefault(root(name), []).append(name)
        out = {}
        for members in groups.values():
            kept = PENULTIMATE if PENULTIMATE in members else members[0]
            out.update({m: kept for m in members if m != kept})
        return out


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
