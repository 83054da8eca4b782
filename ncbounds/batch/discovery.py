"""Which files of a folder are checkpoints, and the result name of each.

**Which files are checkpoints** (:func:`find_checkpoints`): regular files matching ``glob`` under
``root`` with the extensions ``.pt .pth .ckpt .safetensors .bin``, except

* files inside hidden folders or hidden files (``.git``, ``.ipynb_checkpoints``) — unless ``glob`` names
  the hidden part (:func:`hidden_checkpoints` lists the ones left out, so ``batch`` can say so) —,
  inside a folder named ``ncbounds-results`` or inside ``exclude`` (the results folder);
* training-state files that hold no model: ``optimizer.*``, ``scheduler.*``, ``scaler.*``,
  ``training_args.*`` and ``rng_state*`` (Hugging Face Trainer checkpoint folders);
* **initialization checkpoints**: a file that any sidecar of a found checkpoint (its ``X.json`` or its
  folder's ``ncbounds.json``) names as ``init_checkpoint`` is the reference point of distance-to-init
  and PAC-Bayes terms, not a trained model, and is not evaluated. The rule goes by reference only: an
  ``init.pt`` (or ``X.init.pt``) that no sidecar names is evaluated like any other checkpoint (an
  "epoch 0" point);
* symbolic links to a file that is itself found (Lightning's ``last.ckpt``), so no model counts twice.

**Result names** (:func:`result_name`). ``NAME`` is the checkpoint's path relative to ``root`` with
the folder separators replaced by ``__``, extension kept: ``sub/epoch_03.pt`` → ``sub__epoch_03.pt``
(record ``NAME.json``). Keeping the extension keeps ``epoch_03.pt`` and ``epoch_03.ckpt`` apart. The
name depends only on the relative path, so it is stable across runs. Characters outside
``A-Za-z0-9._-`` and a leading dot become ``_``; a path that then is ambiguous (a ``__``, a
leading/trailing ``_``, a replaced character) or longer than 180 characters gets ``~`` and 10 hex
digits of the relative path's SHA-1 (``~`` never occurs in a plain name, so hashed and plain names
cannot collide). Every name is plain ASCII and never hidden, so every reader reads every record.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable

from ncbounds.errors import NCBoundsError, UsageError
from ncbounds.io.sidecar import read_sidecar

__all__ = ["CHECKPOINT_SUFFIXES", "RESULTS_DIRNAME", "discover", "find_checkpoints", "hidden_checkpoints", "result_name"]

#: File extensions treated as checkpoints.
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")

#: Default results folder name (inside the batch root); never searched for checkpoints.
RESULTS_DIRNAME = "ncbounds-results"

_NON_MODEL_STEMS = frozenset({"optimizer", "scheduler", "scaler", "training_args"})

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*(?:_[A-Za-z0-9.\-]+)*\Z")

_MAX_NAME = 180


def _is_non_model(path: Path) -> bool:
    stem = path.name.split(".", 1)[0].lower()
    return stem in _NON_MODEL_STEMS or stem.startswith("rng_state")

def _init_references(candidates: Iterable[Path]) -> set[str]:
    """Real paths of every ``init_checkpoint`` named by the sidecars of ``candidates``."""
    refs: set[str] = set()
    seen_folders: set[Path] = set()
    for path in candidates:
        if path.parent in seen_folders and not path.with_suffix(".json").is_file():
            continue  # the folder sidecar alone was already read for a sibling
        seen_folders.add(path.parent)
        try:
            side = read_sidecar(path)
        except NCBoundsError:
            continue  # an unreadable sidecar: that checkpoint's evaluation reports it
        if side.init_checkpoint:
            refs.add(os.path.realpath(side.init_checkpoint))
    return refs

def find_checkpoints(root: str | Path, glob: str = "**/*", *, exclude: Iterable[str | Path] = ()) -> list[Path]:
    """The checkpoint files under ``root`` matching ``glob``, sorted by their path relative to ``root``.

    Only regular files with the extensions in :data:`CHECKPOINT_SUFFIXES` count. Skipped: hidden
    files and folders (unless ``glob`` itself names a hidden part, e.g. ``.runs/**/*``; see
    :func:`hidden_checkpoints`), folders named ``ncbounds-results`` and those under ``exclude``,
    training-state files (``optimizer.*``, ``scheduler.*``, ``scaler.*``, ``training_args.*``,
    ``rng_state*``), files that a sidecar names as ``init_checkpoint`` and symbolic links to a file
    found anyway (see the module docstring). Raises :class:`UsageError` if ``root`` is not a folder.
    """
    return discover(root, glob, exclude)[0]

def hidden_checkpoints(root: str | Path, glob: str = "**/*", *, exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Checkpoint files matching ``glob`` that :func:`find_checkpoints` leaves out because a part of their
    path is hidden (``.hidden/m.pt``, ``.m.pt``); ``batch`` names them so nothing is skipped silently."""
    return discover(root, glob, exclude)[1]

def _glob_names_hidden(glob: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in Path(glob).parts)

def discover(root: str | Path, glob: str, exclude: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(checkpoints, hidden ones left out) under ``root``: the rules of the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder; pass the folder that holds the checkpoints.")
    excluded = [os.path.realpath(p) for p in exclude]
    hidden_ok = _glob_names_hidden(glob)
    found: list[Path] = []
    hidden: list[Path] = []
    for path in root.glob(glob):
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES or not path.is_file():
            continue
        rel = path.relative_to(root)
        if any(part == RESULTS_DIRNAME for part in rel.parts):
            continue
        if any(part.startswith(".") for part in rel.parts) and not hidden_ok:
            real = os.path.realpath(path)
            if not any(real == ex or real.startswith(ex.rstrip(os.sep) + os.sep) for ex in excluded):
                hidden.append(path)
            continue
        real = os.path.realpath(path)
        if any(real == ex or real.startswith(ex.rstrip(os.sep) + os.sep) for ex in excluded):
            continue
        if _is_non_model(path):
            continue
        found.append(path)
    inits = _init_references(found)
    found = [p for p in found if os.path.realpath(p) not in inits]
    real_files = {os.path.realpath(p) for p in found if not p.is_symlink()}
    found = [p for p in found if not (p.is_symlink() and os.path.realpath(p) in real_files)]
    order = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return sorted(found, key=order), sorted(hidden, key=order)

def result_name(path: str | Path, root: str | Path) -> str:
    """The stable result name of checkpoint ``path`` under ``root`` (without ``.json``).

    ``sub/epoch_03.pt`` → ``sub__epoch_03.pt``; ambiguous or very long paths get ``~`` + 10 hex digits
    of the SHA-1 of the relative path (see the module docstring).
    """
    rel = Path(path).relative_to(root).as_posix()
    parts = rel.split("/")
    # every character outside A-Za-z0-9._- becomes '_', and so does a leading '.': a result name is plain
    # ASCII and never hidden (readers skip hidden files), whatever the checkpoint is called
    name = "__".join(re.sub(r"^\.", "_", re.sub(r"[^A-Za-z0-9._\-]", "_", part)) for part in parts)
    if all(_SAFE_COMPONENT.match(part) for part in parts) and len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:10]
    return f"{name[:_MAX_NAME - 11]}~{digest}"
