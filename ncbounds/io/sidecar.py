"""Sidecar metadata next to checkpoints (DESIGN §3).

A checkpoint ``X.pt`` may have ``X.json`` beside it, or its folder one ``ncbounds.json`` shared by all
checkpoints in it (the per-file sidecar wins key by key). Known keys: ``arch`` (spec string; relative
file paths resolve against the sidecar's folder), ``arch_kwargs`` (object), ``init_checkpoint`` (path,
relative to the sidecar's folder), ``data`` (data spec). Every other key is a hyperparameter of the
checkpoint (exported as ``hp.<key>``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ncbounds.errors import UsageError

KNOWN_KEYS = ("arch", "arch_kwargs", "init_checkpoint", "data")
FOLDER_SIDECAR = "ncbounds.json"


@dataclass
class Sidecar:
    """Merged sidecar of one checkpoint; ``base_dir`` is where relative paths resolve."""

    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    init_checkpoint: str | None = None
    data: str | None = None
    hyperparameters: dict = field(default_factory=dict)
    base_dir: str | None = None
    sources: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # key → the sidecar file that set it

    def source_of(self, key: str) -> str:
        """The sidecar file that provided ``key`` (the per-file sidecar wins over the folder's)."""
        return self.origin.get(key) or (self.sources[-1] if self.sources else "the sidecar")


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"sidecar {path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or remove it.") from None
    if not isinstance(value, dict):
        raise UsageError(f"sidecar {path} must hold a JSON object with keys such as 'arch' and 'data'.")
    return value


def read_sidecar(checkpoint: str | Path) -> Sidecar:
    """Merge the folder's ``ncbounds.json`` and the checkpoint's own ``<stem>.json`` (later wins)."""
    ckpt = Path(checkpoint)
    merged: dict = {}
    sources = []
    origin: dict[str, str] = {}
    for candidate in (ckpt.parent / FOLDER_SIDECAR, ckpt.with_suffix(".json")):
        if candidate.is_file() and candidate != ckpt:
            values = _read(candidate)
            merged.update(values)
            origin.update({key: str(candidate) for key in values})
            sources.append(str(candidate))
    side = Sidecar(base_dir=str(ckpt.parent), sources=sources, origin=origin)
    side.arch = merged.get("arch")
    side.arch_kwargs = dict(merged.get("arch_kwargs") or {})
    side.data = merged.get("data")
    init = merged.get("init_checkpoint")
    if init:
        side.init_checkpoint = str((ckpt.parent / init)) if not Path(init).is_absolute() else init
    side.hyperparameters = {k: v for k, v in merged.items() if k not in KNOWN_KEYS}
    return side
