"""What a folder may make ncbounds do: the ``--trust-code`` rule for sidecars.

A sidecar (``X.json`` or ``ncbounds.json`` beside a checkpoint) comes with the folder, and a folder may
come from anyone. Values the user typed (command line, Python API) are trusted; values read from a
sidecar are not, where they would make ncbounds

* **run code**: an architecture spec naming a Python file (``models.py:Net``) or an import path
  (``package.module:factory``) — built-in and torchvision/timm architectures run nothing of the folder's;
* **read files outside the sidecar's folder tree**: an ``init_checkpoint`` or a file-based ``data``
  spec (``npz:``, ``features:``, ``cifar10:``/``cifar100:``) whose path, with symbolic links resolved,
  leaves the folder that holds the sidecar (``../``, absolute paths, ``~``, links pointing out).

:func:`untrusted_uses` lists every such use (nothing is imported or opened to find them);
:func:`check_sidecar_trust` refuses them with one sentence naming the sidecar, the value and the flag
``--trust-code`` (``trust_code=True`` in the API). With the flag, file and import specs from a
sidecar are built with ``strict_factory`` (see :mod:`ncbounds.models.spec`): only ``nn.Module`` classes
and proper factories are called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ncbounds.errors import UsageError
from ncbounds.io.datasets import data_files
from ncbounds.io.sidecar import Sidecar
from ncbounds.models.spec import describe_spec

__all__ = ["UntrustedUse", "check_sidecar_trust", "untrusted_uses"]

TRUST_FLAG = "--trust-code"


@dataclass(frozen=True)
class UntrustedUse:
    """One sidecar value that needs ``--trust-code``: the sidecar file, the key, the value and why."""

    sidecar: str
    key: str
    value: str
    why: str

    def sentence(self) -> str:
        return (f"sidecar {self.sidecar} sets {self.key} = {self.value!r}, which {self.why}; ncbounds does not do that for a "
                f"file that came with a folder unless you pass {TRUST_FLAG} (only for folders you trust) or give the value "
                f"on the command line")


def _inside(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def untrusted_uses(side: Sidecar | None, *, arch: bool = True, data: bool = True, init: bool = True) -> list[UntrustedUse]:
    """The sidecar values that would run code or read outside the sidecar's folder (module docstring).

    ``arch``, ``data``, ``init``: whether that sidecar value is actually used (a value the user gave on
    the command line overrides the sidecar's, which then needs no trust).
    """
    if side is None or not side.sources:
        return []
    base = side.base_dir or "."
    found: list[UntrustedUse] = []
    if arch and side.arch:
        info = describe_spec(side.arch, base)
        if info.runs_code:
            what = "a Python file" if info.kind == "file" else "an import path"
            found.append(UntrustedUse(side.source_of("arch"), "arch", side.arch, f"names {what} whose code would run"))
    if init and side.init_checkpoint and not _inside(side.init_checkpoint, base):
        found.append(UntrustedUse(side.source_of("init_checkpoint"), "init_checkpoint", side.init_checkpoint,
                                  "points outside the sidecar's folder"))
    if data and side.data:
        outside = [p for p in data_files(side.data, base) if not _inside(p, base)]
        if outside:
            found.append(UntrustedUse(side.source_of("data"), "data", side.data,
                                      f"reads {outside[0]}, outside the sidecar's folder"))
    return found


def check_sidecar_trust(side: Sidecar | None, trust_code: bool, *, arch: bool = True, data: bool = True, init: bool = True) -> None:
    """Raise a :class:`UsageError` for the first :func:`untrusted_uses` entry unless ``trust_code``."""
    if trust_code:
        return
    uses = untrusted_uses(side, arch=arch, data=data, init=init)
    if uses:
        raise UsageError(uses[0].sentence() + ".")
