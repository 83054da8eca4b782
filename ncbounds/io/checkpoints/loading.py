""":func:`load_checkpoint`: pick the container reader for a file, then classify what it holds.

The layouts recognised by :func:`_interpret` are listed in :mod:`ncbounds.io.checkpoints`.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import torch

from ncbounds.errors import CheckpointError
from ncbounds.io.checkpoints.base import (
    _LIGHTNING_MARKERS,
    WRAPPER_KEYS,
    LoadedCheckpoint,
    _corrupt,
    _cpu_tensors,
    _extra_from,
    _is_tensor_dict,
    _list_names,
    _sha256,
)
from ncbounds.io.checkpoints.formats import (
    _foreign_format,
    _is_torchscript_zip,
    _load_safetensors,
    _load_torchscript,
    _looks_like_safetensors,
)
from ncbounds.io.checkpoints.pickles import _load_pickle, _scan_zip_locations

__all__ = ["load_checkpoint"]


def load_checkpoint(
    path: str | os.PathLike, *, trust: bool = False, key: str | None = None
) -> LoadedCheckpoint:
    """Read a checkpoint file to CPU and work out its layout.

    ``trust=False`` (the default) only ever unpickles with ``weights_only=True``; a file that needs
    more (a pickled module, custom classes, a malicious payload) is refused with a
    :class:`CheckpointError` naming the offending types and ``--trust-checkpoint``.  With
    ``trust=True`` a safe load is still tried first, and the refused types are recorded in
    ``unsafe_types``.  ``key`` forces the top-level key that holds the weights (e.g.
    ``'state_dict_ema'``); by default the first of :data:`WRAPPER_KEYS` present is used.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    if os.path.isdir(path):
        raise CheckpointError(
            f"checkpoint {path} is a directory, not a file; pass the checkpoint file inside it."
        )
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes); re-save it or check the download."
        )
    digest = _sha256(path)

    # safetensors ---------------------------------------------------------------------------
    if path.lower().endswith(".safetensors") or _looks_like_safetensors(path, size):
        sd, metadata = _load_safetensors(path)
        if not sd:
            raise CheckpointError(
                f"checkpoint {path} contains no tensors (safetensors file with no entries); "
                "check that the right file was passed."
            )
        return LoadedCheckpoint(
            path=path, sha256=digest, format="safetensors", wrapper_key=None, top_level_keys=[],
            state_dict=_cpu_tensors(sd), module=None, saved_devices=[], unsafe_types=[],
            extra=metadata,
        )

    # TorchScript ----------------------------------------------------------------------------
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                is_script = _is_torchscript_zip(zf)
                devices = _scan_zip_locations(zf) if is_script else []
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise _corrupt(path, str(exc)) from None
        if is_script:
            module = _load_torchscript(path)
            return LoadedCheckpoint(
                path=path, sha256=digest, format="torchscript", wrapper_key=None,
                top_level_keys=[], state_dict=_cpu_tensors(module.state_dict()), module=module,
                saved_devices=devices, unsafe_types=[], extra={},
            )

    # torch.save pickles (zip or legacy) -------------------------------------------------------
    if not zipfile.is_zipfile(path):
        foreign = _foreign_format(path)
        if foreign is not None:
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint: it is {foreign}; save the weights with "
                "torch.save(model.state_dict(), PATH) and pass that file."
            )
    obj, devices, unsafe = _load_pickle(path, trust)
    return _interpret(path, digest, obj, devices, unsafe, key)


def _interpret(
    path: str, digest: str, obj: Any, devices: list[str], unsafe: list[str], key: str | None
) -> LoadedCheckpoint:
    """Classify an unpickled object into one of the supported layouts."""

    def make(fmt: str, wrapper: str | None, top: list[str], sd: dict, module=None, extra=None):
        return LoadedCheckpoint(
            path=path, sha256=digest, format=fmt, wrapper_key=wrapper, top_level_keys=top,
            state_dict=_cpu_tensors(sd), module=module, saved_devices=devices,
            unsafe_types=unsafe, extra=extra or {},
        )

    if isinstance(obj, torch.nn.Module):
        return make("pickled-module", None, [], obj.state_dict(), module=obj)

    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict or a dict of "
            "weights; save it with torch.save(model.state_dict(), ...)."
        )

    top_keys = [str(k) for k in obj.keys()]
    if key is None and _is_tensor_dict(obj):
        return make("state_dict", None, top_keys, obj)

    if key is not None:
        if key not in obj:
            raise CheckpointError(
                f"checkpoint {path} has no top-level key {key!r} (it has {_list_names(top_keys)}); "
                "pick one of those keys."
            )
        candidates = [key]
    else:
        candidates = [k for k in WRAPPER_KEYS if k in obj]
        # any other single entry holding a state_dict (e.g. 'student', 'weights')
        candidates += [
            k for k, v in obj.items()
            if isinstance(k, str) and k not in candidates
            and (_is_tensor_dict(v) or isinstance(v, torch.nn.Module))
        ]

    for wkey in candidates:
        value = obj[wkey]
        extra = _extra_from(obj, wkey)
        if isinstance(value, torch.nn.Module):
            return make("pickled-module", wkey, top_keys, value.state_dict(), module=value,
                        extra=extra)
        if _is_tensor_dict(value):
            lightning = wkey == "state_dict" and bool(_LIGHTNING_MARKERS & set(obj.keys()))
            return make("lightning" if lightning else "wrapped", wkey, top_keys, value,
                        extra=extra)
        if isinstance(value, dict):  # one more level, e.g. {'model': {'state_dict': ...}}
            for inner in WRAPPER_KEYS:
                if _is_tensor_dict(value.get(inner)):
                    return make("wrapped", f"{wkey}.{inner}", top_keys, value[inner],
                                extra=extra)

    raise CheckpointError(
        f"checkpoint {path} has no recognisable weights (no dict of tensors under its top-level "
        f"keys {_list_names(top_keys, 10) or '(none)'}); re-save it with "
        "torch.save(model.state_dict(), ...)."
    )
