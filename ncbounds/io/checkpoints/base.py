"""What a loaded checkpoint is (:class:`LoadedCheckpoint`), the layout constants, and the small helpers
every reader shares (one-sentence messages, hashing, CPU copies, JSON-safe metadata)."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ncbounds.errors import CheckpointError

__all__ = ["LoadedCheckpoint", "TRUST_FLAG", "WRAPPER_KEYS"]


#: Keys under which training scripts commonly nest the weights, in order of preference.
WRAPPER_KEYS: tuple[str, ...] = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "module",
    "ema",
    "state_dict_ema",
)


#: The CLI flag that lets a checkpoint be unpickled without ``weights_only``.
TRUST_FLAG = "--trust-checkpoint"


#: Top-level keys that mark a PyTorch Lightning checkpoint (besides ``state_dict``).
_LIGHTNING_MARKERS = frozenset(
    {"pytorch-lightning_version", "global_step", "callbacks", "optimizer_states",
     "lr_schedulers", "loops"}
)


#: Prefixes added by wrappers: DataParallel/DDP and ``torch.compile``.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


#: Attribute names under which a training module (e.g. a LightningModule) commonly holds the net.
_ATTRIBUTE_PREFIXES: tuple[str, ...] = ("model.", "net.", "network.", "backbone.")


_NBT = "num_batches_tracked"


_MAX_LISTED = 5


@dataclass
class LoadedCheckpoint:
    """A checkpoint read into memory, with what was learned about its layout.

    ``state_dict`` always holds CPU tensors.  For TorchScript and pickled modules it is
    ``module.state_dict()`` and ``module`` holds the loaded module; otherwise ``module`` is None.
    ``saved_devices`` lists the distinct storage locations recorded in the file (``[]`` for
    safetensors, which records none).  ``unsafe_types`` lists the globals that ``weights_only=True``
    refused (only non-empty when the file was loaded with ``trust=True``).
    """

    path: str
    sha256: str
    format: str
    wrapper_key: str | None
    top_level_keys: list[str]
    state_dict: dict[str, torch.Tensor]
    module: torch.nn.Module | None = None
    saved_devices: list[str] = field(default_factory=list)
    unsafe_types: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# small helpers


def _one_line(text: object, limit: int = 160) -> str:
    """First sentence of ``text`` with whitespace collapsed, shortened to fit inside a sentence."""
    text = " ".join(str(text).split())
    m = re.search(r"[.!?] (?=[A-Z])", text)
    if m:
        text = text[: m.start()]
    text = text.rstrip(".")
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def _list_names(names: list[str], limit: int = _MAX_LISTED) -> str:
    """``a, b, c and 4 more`` style listing."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _corrupt(path: str, reason: str) -> CheckpointError:
    reason = _one_line(reason) or "unreadable"
    return CheckpointError(
        f"checkpoint {path} is truncated or corrupt ({reason}); re-save it or check the download."
    )


def _is_tensor_dict(obj: Any) -> bool:
    """True for a non-empty mapping of ``str -> Tensor`` (a state_dict)."""
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _cpu_tensors(sd: dict) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        t = v.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        out[k] = t
    return out


def _jsonable(value: Any, depth: int = 0) -> tuple[bool, Any]:
    """Convert ``value`` to plain JSON types; return (ok, converted)."""
    if depth > 8:
        return False, None
    if value is None or isinstance(value, (bool, str)):
        return True, value
    if isinstance(value, int):
        return True, int(value)
    if isinstance(value, float):
        value = float(value)
        return True, (value if math.isfinite(value) else str(value))
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not value.is_complex():
            return True, value.item()
        return False, None
    item = getattr(value, "item", None)
    if type(value).__module__ == "numpy" and callable(item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(item(), depth + 1)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return False, None
            ok, conv = _jsonable(v, depth + 1)
            if not ok:
                return False, None
            out[str(k)] = conv
        return True, out
    if isinstance(value, (list, tuple)):
        out_list = []
        for v in value:
            ok, conv = _jsonable(v, depth + 1)
            if not ok:
                return False, None
            out_list.append(conv)
        return True, out_list
    if isinstance(value, torch.dtype):
        return True, str(value)
    return False, None


def _extra_from(top: dict, skip: str | None) -> dict:
    extra: dict = {}
    for k, v in top.items():
        if not isinstance(k, str) or k == skip:
            continue
        ok, conv = _jsonable(v)
        if ok:
            extra[k] = conv
    return extra
