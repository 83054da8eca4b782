"""A JSON-friendly summary of a loaded checkpoint (:func:`describe`, for ``ncbounds inspect``) and the
guess of its classifier head (:func:`guess_classifier_head`)."""

from __future__ import annotations

import torch

from ncbounds.io.checkpoints.base import _ATTRIBUTE_PREFIXES, _WRAPPER_PREFIXES, LoadedCheckpoint, _jsonable

__all__ = ["describe", "guess_classifier_head"]


def guess_classifier_head(
    state_dict: dict[str, torch.Tensor], max_classes: int = 1000
) -> str | None:
    """Name of the module that is probably the classifier (e.g. ``'fc'``), or None.

    It is the last 2-D floating ``...weight`` tensor (in state_dict order) whose first dimension
    (the number of outputs) is at most ``max_classes``; the ``.weight`` suffix is removed.
    """
    head = None
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor) or v.dim() != 2 or not v.is_floating_point():
            continue
        if not (k == "weight" or k.endswith(".weight")):
            continue
        if 1 <= v.shape[0] <= max_classes:
            head = k[: -len(".weight")] if k.endswith(".weight") else ""
    return head


def _detect_prefixes(keys: list[str], fmt: str) -> list[str]:
    """Wrapper prefixes visible in ``keys`` without knowing the model (for ``describe``)."""
    found: list[str] = []
    keys = [k for k in keys]
    for _ in range(4):
        if not keys:
            break
        hit = None
        for p in _WRAPPER_PREFIXES + _ATTRIBUTE_PREFIXES:
            n = sum(k.startswith(p) for k in keys)
            if n == len(keys) or (fmt == "lightning" and not found and 2 * n > len(keys)):
                hit = p
                break
        if hit is None:
            break
        found.append(hit)
        keys = [k[len(hit):] for k in keys if k.startswith(hit)]
    return found


def describe(ckpt: LoadedCheckpoint) -> dict:
    """JSON-friendly summary of a checkpoint for ``ncbounds inspect``.

    Keys: ``path``, ``sha256``, ``format``, ``wrapper_key``, ``top_level_keys``,
    ``saved_devices``, ``num_tensors``, ``num_params`` (total elements of floating tensors),
    ``dtypes``, ``prefixes`` (wrapper prefixes detected, e.g. ``['module.']``), ``unsafe_types``,
    ``head`` (see :func:`guess_classifier_head`), ``head_shape`` and ``extra``.
    """
    sd = ckpt.state_dict
    num_params = sum(int(v.numel()) for v in sd.values() if v.is_floating_point())
    head = guess_classifier_head(sd)
    head_key = (head + ".weight") if head else ("weight" if head == "" else None)
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    ok, extra = _jsonable(ckpt.extra)
    if not ok:
        extra = {}
    out = {
        "path": ckpt.path,
        "sha256": ckpt.sha256,
        "format": ckpt.format,
        "wrapper_key": ckpt.wrapper_key,
        "top_level_keys": list(ckpt.top_level_keys),
        "saved_devices": list(ckpt.saved_devices),
        "num_tensors": len(sd),
        "num_params": num_params,
        "dtypes": dtypes,
        "prefixes": _detect_prefixes(list(sd.keys()), ckpt.format),
        "unsafe_types": list(ckpt.unsafe_types),
        "head": head,
        "head_shape": list(sd[head_key].shape) if head_key in sd else None,
        "extra": extra,
    }
    return out
