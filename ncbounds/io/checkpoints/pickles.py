"""``torch.save`` pickles: loading them with ``weights_only=True``, and explaining a refusal.

:func:`_load_pickle` always tries ``torch.load(..., weights_only=True)`` first (to CPU, recording the
storage locations the file declares); a refusal becomes a :class:`~ncbounds.errors.CheckpointError`
naming the refused globals and ``--trust-checkpoint``, or, with ``trust=True``, a real unpickling.
Storage locations of TorchScript archives and the globals a file needs are found by scanning the
pickles with inert stubs (:class:`_LocationScanner`, :func:`scan_unsafe_types`), never executing them.
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is never set.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
from typing import Any

import torch

from ncbounds.errors import CheckpointError
from ncbounds.io.checkpoints.base import TRUST_FLAG, _corrupt, _list_names, _one_line

__all__ = ["scan_unsafe_types"]


# ---------------------------------------------------------------------------------------------
# scanning pickles without executing them


class _Stub:
    """Stand-in for every global a scanned pickle references; it accepts anything, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        pass


class _LocationScanner(pickle.Unpickler):
    """Unpickler that replaces every global by an inert stub and records storage locations.

    Nothing from the pickle is ever called except :class:`_Stub` subclasses, so scanning an
    untrusted file is safe.  Persistent ids of the form ``('storage', type, key, location, numel)``
    (the layout ``torch.save`` and ``torch.jit.save`` write) yield their ``location``.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.locations: set[str] = set()

    def find_class(self, module: str, name: str) -> type:
        return type(f"{module}.{name}", (_Stub,), {})

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 4 and pid[0] == "storage":
            if isinstance(pid[3], str):
                self.locations.add(pid[3])
        return _Stub()


def _scan_zip_locations(zf: zipfile.ZipFile) -> list[str]:
    """Storage locations recorded in the top-level ``*.pkl`` records of a torch zip archive."""
    locations: set[str] = set()
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) == 2 and parts[1] in ("data.pkl", "constants.pkl"):
            scanner = _LocationScanner(zf.read(name))
            try:
                scanner.load()
            except Exception:  # a malformed record: report what was collected so far
                pass
            locations |= scanner.locations
    return sorted(locations)


# ---------------------------------------------------------------------------------------------
# weights_only refusal handling


_GLOBAL_RE = re.compile(r"GLOBAL\s+([A-Za-z_][\w.]*)")


_GOT_CLASS_RE = re.compile(r"got <class '([A-Za-z_][\w.]*)'>")


_CORRUPT_MARKERS = (
    "Unsupported operand",
    "invalid load key",
    "truncated",
    "ran out of input",
    "pickle data was truncated",
    "failed finding central directory",
    "PytorchStreamReader",
)


def _weights_only_reason(message: str) -> str:
    """The informative part of torch's long weights_only error text."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", message, flags=re.S)
    if m:
        return _one_line(m.group(1))
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln:
            return _one_line(ln)
    return _one_line(lines[-1] if lines else message)


def _unsafe_globals(path: str, message: str) -> list[str]:
    """Names of the globals weights_only refused: static scan of the zip, else parse the message."""
    names: set[str] = set()
    try:
        names.update(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) format or unreadable: fall back to the message
        pass
    names.update(_GLOBAL_RE.findall(message))
    names.update(_GOT_CLASS_RE.findall(message))
    return sorted(n.rstrip(".") for n in names)


def _refusal_error(path: str, unsafe: list[str]) -> CheckpointError:
    listed = _list_names(unsafe)
    if any(n.startswith("torch.nn.modules.") for n in unsafe) or any(
        n.startswith("torch.jit.") for n in unsafe
    ):
        return CheckpointError(
            f"checkpoint {path} is a pickled module that needs arbitrary unpickling of {listed} "
            f"(not allowed by weights_only=True); re-run with {TRUST_FLAG} only if you trust its "
            "source, or re-save it with torch.save(model.state_dict(), ...)."
        )
    return CheckpointError(
        f"checkpoint {path} needs arbitrary unpickling of {listed} (not allowed by "
        f"weights_only=True); re-run with {TRUST_FLAG} only if you trust its source."
    )


# ---------------------------------------------------------------------------------------------
# torch.load to CPU


def _torch_load(path: str, weights_only: bool) -> tuple[Any, list[str]]:
    """``torch.load`` to CPU, recording the storage locations the file declares."""
    locations: set[str] = set()

    def to_cpu(storage: Any, location: str) -> Any:
        locations.add(str(location))
        return storage  # storages are materialised on CPU before map_location is consulted

    obj = torch.load(path, map_location=to_cpu, weights_only=weights_only)
    return obj, sorted(locations)


def _load_pickle(path: str, trust: bool) -> tuple[Any, list[str], list[str]]:
    """Returns (object, saved_devices, unsafe_types)."""
    try:
        obj, devices = _torch_load(path, weights_only=True)
        return obj, devices, []
    except pickle.UnpicklingError as exc:
        message = str(exc)
        unsafe = _unsafe_globals(path, message)
        if not unsafe:
            reason = _weights_only_reason(message)
            if any(m.lower() in message.lower() for m in _CORRUPT_MARKERS):
                raise _corrupt(path, reason) from None
            if not trust:
                raise CheckpointError(
                    f"checkpoint {path} cannot be read with weights_only=True ({reason}); re-run "
                    f"with {TRUST_FLAG} only if you trust its source."
                ) from None
            unsafe = []
        elif not trust:
            raise _refusal_error(path, unsafe) from None
    except (RuntimeError, EOFError, ValueError, OSError, struct.error, KeyError,
            IndexError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)) from None

    # trust=True and weights_only refused: unpickle for real (the caller opted in).
    try:
        obj, devices = _torch_load(path, weights_only=False)
    except (AttributeError, ImportError) as exc:
        raise CheckpointError(
            f"checkpoint {path} pickles a class that cannot be imported here ({_one_line(exc)}); "
            "make the module that defines it importable or re-save the weights as a state_dict."
        ) from None
    except pickle.UnpicklingError as exc:
        if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
            raise CheckpointError(
                f"checkpoint {path} needs arbitrary unpickling but TORCH_FORCE_WEIGHTS_ONLY_LOAD "
                f"is set in the environment; unset it to use {TRUST_FLAG}."
            ) from None
        raise _corrupt(path, _weights_only_reason(str(exc))) from None
    except (RuntimeError, EOFError, ValueError, struct.error, UnicodeDecodeError,
            zipfile.BadZipFile) as exc:
        raise _corrupt(path, str(exc) or type(exc).__name__) from None
    return obj, devices, unsafe


def scan_unsafe_types(path: str) -> list[str]:
    """Globals that a ``weights_only=True`` load of ``path`` would refuse, found without executing them.

    Zip checkpoints are scanned statically (``torch.serialization.get_unsafe_globals_in_checkpoint``);
    other files are read with ``weights_only=True`` and the refusal message is parsed. Returns [] for
    a safe file or one that cannot be read at all (``load_checkpoint`` then says why).
    """
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint: fall back to a refused weights_only load
        pass
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        return _unsafe_globals(path, str(exc))
    except Exception:  # noqa: BLE001 - unreadable: load_checkpoint reports it
        return []
    return []
