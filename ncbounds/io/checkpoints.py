"""Reading trained-model checkpoints safely (DESIGN §3, "Checkpoints").

Pure I/O: nothing here prints or depends on click.  Every failure is a :class:`CheckpointError`
whose message is one sentence naming the fix.

Supported layouts:

* a plain ``state_dict`` (``{name: Tensor}``);
* a dict wrapping it under ``state_dict``, ``model``, ``model_state_dict``, ``net``, ``ema``,
  ``state_dict_ema`` or ``module`` (other top-level entries such as ``epoch`` become ``extra``);
* PyTorch Lightning ``.ckpt`` files (``state_dict`` plus Lightning bookkeeping keys);
* ``.safetensors`` files (needs the optional ``safetensors`` package);
* TorchScript archives (``torch.jit.save``);
* whole pickled modules (``torch.save(model)``), only with ``trust=True``.

Everything is loaded to CPU first; the storage locations recorded in the file (``cuda:0`` ...)
are reported in :attr:`LoadedCheckpoint.saved_devices`.  ``torch.load`` always runs with
``weights_only=True`` unless the caller passes ``trust=True`` (the CLI's ``--trust-checkpoint``).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch

from ncbounds.errors import CheckpointError

__all__ = [
    "LoadedCheckpoint",
    "WRAPPER_KEYS",
    "TRUST_FLAG",
    "load_checkpoint",
    "strip_prefixes",
    "load_into_model",
    "guess_classifier_head",
    "describe",
]

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


def _is_torchscript_zip(zf: zipfile.ZipFile) -> bool:
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "constants.pkl":
            return True
        if len(parts) > 2 and parts[1] == "code":
            return True
    return False


def _looks_like_safetensors(path: str, size: int) -> bool:
    if size < 10:
        return False
    with open(path, "rb") as fh:
        head = fh.read(9)
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


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
# loaders for each container format


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


def _load_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        from safetensors import safe_open  # optional dependency
    except ImportError:
        raise CheckpointError(
            f"checkpoint {path} is a safetensors file; reading .safetensors needs "
            "`pip install safetensors`."
        ) from None
    try:
        sd: dict[str, torch.Tensor] = {}
        with safe_open(path, framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            for key in fh.keys():
                sd[key] = fh.get_tensor(key)
    except Exception as exc:  # SafetensorError and friends
        raise _corrupt(path, str(exc) or type(exc).__name__) from None
    return sd, dict(metadata)


def _load_torchscript(path: str) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates torch.jit; stay quiet
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise _corrupt(path, f"TorchScript archive: {exc}") from None


#: First bytes of the legacy (non-zip) torch.save format: the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _foreign_format(path: str) -> str | None:
    """What a non-zip file is when it is recognisably *not* a torch.save file (None when it may be one).

    torch.save writes a zip archive (PyTorch ≥ 1.6) or, in the legacy format, a pickle that starts with
    :data:`_LEGACY_TORCH_MAGIC`. A pickle without that magic was written by ``pickle.dump``; other
    files are recognised by their first bytes. Random or truncated bytes return None (reported as
    corrupt by the loader).
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return None
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array file"
    if head.startswith(b"\x89HDF\r\n"):
        return "an HDF5 file (e.g. a Keras .h5 model)"
    if head.startswith(b"\x80") and len(head) > 1 and 2 <= head[1] <= 5:
        return "a plain Python pickle (written by pickle.dump, not by torch.save)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "a JSON file" if text.lstrip().startswith(("{", "[")) else "a text file"
    return None


# ---------------------------------------------------------------------------------------------
# public API


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


def _match_score(keys: list[str], model_keys: set[str]) -> tuple[int, int]:
    """(#model keys present, -#unexpected keys), ignoring BatchNorm ``num_batches_tracked``."""
    ks = {k for k in keys if not k.endswith(_NBT)}
    mk = {k for k in model_keys if not k.endswith(_NBT)}
    return len(ks & mk), -len(ks - mk)


def _candidate_prefixes(keys: list[str]) -> list[str]:
    cands: list[str] = []
    for p in _WRAPPER_PREFIXES + _ATTRIBUTE_PREFIXES:
        if any(k.startswith(p) for k in keys):
            cands.append(p)
    counts: dict[str, int] = {}
    for k in keys:
        if "." in k:
            first = k.split(".", 1)[0] + "."
            counts[first] = counts.get(first, 0) + 1
    for p, c in sorted(counts.items(), key=lambda pc: -pc[1]):
        if p not in cands and 2 * c >= len(keys):
            cands.append(p)
    return cands


def strip_prefixes(
    state_dict: dict[str, torch.Tensor], model_keys
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes from ``state_dict`` keys so they match ``model_keys``.

    Considers ``module.`` (DataParallel/DDP), ``_orig_mod.`` (``torch.compile``), attribute
    prefixes such as ``model.``/``net.`` (Lightning modules) and any first key component shared
    by at least half the keys, in any combination up to four deep (``model._orig_mod.module.``).
    A prefix shared by only some keys may *select* that sub-tree (dropping the other keys, e.g. a
    Lightning module's loss buffers) when that matches the model better.  Stripping happens only
    when it increases the number of model keys found; returns ``(new_state_dict,
    prefixes_removed)`` with the prefixes in the order they were removed.
    """
    model_keys = set(model_keys)
    orig_keys = list(state_dict.keys())
    base = _match_score(orig_keys, model_keys)
    # best: (score, original keys kept, their new names, prefixes removed)
    best: tuple[tuple[int, int, int], list[str], list[str], list[str]] = (
        (*base, 0), orig_keys, orig_keys, []
    )

    perfect = (len({k for k in model_keys if not k.endswith(_NBT)}), 0)
    seen: set[tuple[str, ...]] = set()

    def search(keys: list[str], kept: list[str], removed: list[str]) -> None:
        """Depth-first search over prefix sequences; ``kept[i]`` is the original of ``keys[i]``."""
        nonlocal best
        if len(removed) == 4 or best[0][:2] == perfect:
            return
        for p in _candidate_prefixes(keys):
            for select in (False, True):
                pairs = [(o, k[len(p):] if k.startswith(p) else k)
                         for o, k in zip(kept, keys, strict=True)
                         if k.startswith(p) or not select]
                if select and len(pairs) == len(keys):
                    continue  # identical to the non-select variant
                new = [k for _, k in pairs]
                if not new or len(set(new)) != len(new):
                    continue  # nothing left, or two keys would collide
                if tuple(new) in seen:
                    continue
                seen.add(tuple(new))
                new_kept = [o for o, _ in pairs]
                score = (*_match_score(new, model_keys), -(len(removed) + 1))
                if score > best[0]:
                    best = (score, new_kept, new, removed + [p])
                search(new, new_kept, removed + [p])

    search(orig_keys, orig_keys, [])
    score, kept, new_keys, removed = best
    if not removed or score[0] <= base[0]:
        return dict(state_dict), []
    return {n: state_dict[o] for o, n in zip(kept, new_keys, strict=True)}, removed


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _visible_prefix(missing: list[str], unexpected: list[str]) -> str | None:
    """Hint naming a prefix whose removal/addition would turn unexpected keys into missing ones."""
    miss = set(missing)
    for k in unexpected:
        parts = k.split(".")
        for i in range(1, len(parts)):
            p = ".".join(parts[:i]) + "."
            if k[len(p):] in miss:
                return f"strip the prefix '{p}' from the checkpoint keys"
    unexp = set(unexpected)
    for k in missing:
        parts = k.split(".")
        for i in range(1, len(parts)):
            p = ".".join(parts[:i]) + "."
            if k[len(p):] in unexp:
                return f"the model's keys carry the prefix '{p}' that the checkpoint lacks, so " \
                       "pass the unwrapped model"
    return None


def load_into_model(model: torch.nn.Module, ckpt: LoadedCheckpoint) -> list[str]:
    """Load ``ckpt``'s weights into ``model`` strictly; returns the prefixes that were stripped.

    Wrapper prefixes are removed with :func:`strip_prefixes`.  BatchNorm ``num_batches_tracked``
    entries missing on either side are tolerated (the model keeps its own value).  Any other
    missing or unexpected key, or a shape mismatch, raises :class:`CheckpointError` listing the
    keys and suggesting the prefix to strip or that the architecture differs.
    """
    target = model.state_dict()
    sd, removed = strip_prefixes(ckpt.state_dict, target.keys())

    missing = [k for k in target if k not in sd and not k.endswith(_NBT)]
    unexpected = [k for k in sd if k not in target and not k.endswith(_NBT)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_list_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_list_names(unexpected)}")
        hint = _visible_prefix(missing, unexpected)
        if hint is None:
            hint = "the architecture likely differs, check --arch / --arch-kwargs"
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not fit the model ({'; '.join(parts)}); {hint}."
        )

    mismatched = [k for k in target if k in sd and sd[k].shape != target[k].shape]
    if mismatched:
        k = mismatched[0]
        n_more = len(mismatched) - 1
        more = f" (and {n_more} more mismatched tensors)" if n_more else ""
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not fit the model: {k} has shape {_shape(sd[k])} in the "
            f"checkpoint but {_shape(target[k])} in the model{more}; the architecture likely "
            "differs, check --arch / --arch-kwargs."
        )

    final = {k: (sd[k] if k in sd else target[k]) for k in target}
    try:
        model.load_state_dict(final, strict=True)
    except RuntimeError as exc:  # e.g. dtype that cannot be copied
        raise CheckpointError(
            f"checkpoint {ckpt.path} could not be copied into the model ({_one_line(exc)}); "
            "check --arch / --arch-kwargs."
        ) from None
    return removed


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
