"""The identity of a record: what must be equal for a finished record to stand for a checkpoint now.

A record is **current** (``--resume`` skips its checkpoint; ``merge`` treats two such records as the
same) when

* its checkpoint's SHA-256 equals the file's SHA-256 now;
* its ``options_hash`` equals :func:`options_hash` of the options now — the SHA-256 of the canonical
  JSON (sorted keys, no spaces) of :meth:`~ncbounds.options.EvalOptions.identity`: every option that
  can change the numbers (not ``device``, ``batch_size``, the trust flags, progress or debug), with
  ``bounds`` replaced by the sorted bound names it selects (a catalogue that grows makes ``default``
  records stale). Resuming after an out-of-memory failure with a smaller ``--batch-size``, or on
  another machine, keeps the finished records;
* its ``inputs_hash`` equals :func:`inputs_hash` now: the merged sidecar (:func:`sidecar_hash`) and the
  **contents** of the files the evaluation reads besides the checkpoint (:func:`input_files`: data
  files, a file architecture, the init checkpoint), so editing any of them re-evaluates. Records of
  version 0.1 have no ``inputs_hash``; they stay current only when no input file is involved and
  their ``sidecar_hash`` matches.

Not covered: the ncbounds version (recorded in ``provenance``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from ncbounds.errors import NCBoundsError
from ncbounds.io.sidecar import read_sidecar
from ncbounds.options import EvalOptions, option_fields

__all__ = [
    "IDENTITY_EXCLUDED", "FileHashes", "canonical", "file_sha256", "input_files", "inputs_hash", "options_hash",
    "record_is_current", "safe_sha", "sha256_text", "sidecar_hash",
]

#: EvalOptions fields left out of :func:`options_hash` (they cannot change the numbers beyond rounding).
IDENTITY_EXCLUDED = frozenset(f.name for f in option_fields() if not f.metadata["identity"])


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True, default=str)

def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def safe_sha(path: str) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None

def options_hash(options: EvalOptions, bound_names: list[str] | None = None) -> str:
    """SHA-256 of the canonical JSON of :meth:`EvalOptions.identity` (the options that affect the numbers;
    ``bounds`` replaced by the sorted ``bound_names`` it selects, resolved when not given)."""
    if bound_names is None:
        from ncbounds.bounds.runner import select_bounds

        bound_names = select_bounds(options.bounds)
    return sha256_text(canonical(options.identity(bound_names)))

def sidecar_hash(checkpoint: str | Path) -> str | None:
    """SHA-256 of the canonical JSON of ``checkpoint``'s merged sidecar; None if it cannot be read.

    Covers ``arch``, ``arch_kwargs``, ``data``, ``init_checkpoint`` (relative to the checkpoint's folder)
    and every other key as written (hyperparameters, ``hparams`` and metadata alike).
    """
    try:
        side = read_sidecar(checkpoint)
    except NCBoundsError:
        return None
    init = side.init_checkpoint
    if init:
        with contextlib.suppress(ValueError):
            init = os.path.relpath(init, Path(checkpoint).parent)
    return sha256_text(canonical({"arch": side.arch, "arch_kwargs": side.arch_kwargs, "data": side.data,
                                    "init_checkpoint": init, "hyperparameters": side.extra_keys}))

class FileHashes:
    """SHA-256 of files, each file read once per batch run (keyed by real path, size and mtime)."""

    def __init__(self) -> None:
        self._known: dict[tuple, str | None] = {}

    def __call__(self, path: str | Path) -> str | None:
        """The file's SHA-256, or None when it cannot be read (missing, a folder, no permission)."""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            return None
        key = (real, st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in self._known:
            self._known[key] = safe_sha(real) if os.path.isfile(real) else None
        return self._known[key]

def input_files(checkpoint: str | Path, options: EvalOptions) -> dict[str, list[str]]:
    """The files besides the checkpoint that an evaluation reads, by role (absolute paths).

    ``data``: the files of a file-based data spec (``npz:``, ``features:``, ``cifar10:``/``cifar100:``
    batches); ``target``: those of ``target_data`` (only when it is given); ``arch``: the Python file of a
    file architecture (or the module file of an import path
    found in the sidecar's folder); ``init``: the initialization checkpoint; ``prior``: a user-given
    PAC-Bayes prior checkpoint and its index file (only when given). Values typed as options win
    over the sidecar's, as in the evaluation. An unreadable sidecar gives what the options name.
    """
    from ncbounds.io.datasets import data_files
    from ncbounds.models.spec import describe_spec

    try:
        side = read_sidecar(checkpoint)
    except NCBoundsError:
        side = None
    base = side.base_dir if side else None
    data = data_files(options.data, None) if options.data else data_files(side.data, base) if side and side.data else []
    arch_spec, arch_base = (options.arch, None) if options.arch else ((side.arch, base) if side and side.arch else (None, None))
    arch = list(describe_spec(arch_spec, arch_base).files) if arch_spec else []
    init = options.init or (side.init_checkpoint if side else None)
    files = {"data": data, "arch": arch, "init": [os.path.abspath(init)] if init else []}
    if options.target_data:  # the transfer target's files (a role only when given, so other identities stay)
        files["target"] = data_files(options.target_data, None)
    if options.prior_samples and options.prior:  # --prior CKPT --prior-samples FILE: the prior's weights and its training indices
        files["prior"] = [os.path.abspath(options.prior), os.path.abspath(options.prior_samples)]
    return files

def inputs_hash(checkpoint: str | Path, options: EvalOptions, hashes: FileHashes | None = None) -> str | None:
    """SHA-256 of everything besides the checkpoint and the options that decides its numbers.

    Covers the merged sidecar (:func:`sidecar_hash`) and the **contents** of :func:`input_files` — the
    data files, a file architecture, the init checkpoint — so editing any of them makes a record stale
    for ``--resume`` and gives it another identity for ``merge``. A missing file counts as ``null``.
    None when the sidecar cannot be read (the evaluation then fails and says why).
    """
    side = sidecar_hash(checkpoint)
    if side is None:
        return None
    hashes = hashes or FileHashes()
    contents = {role: [hashes(p) for p in paths] for role, paths in input_files(checkpoint, options).items()}
    return sha256_text(canonical({"sidecar": side, "files": contents}))

def no_input_files(checkpoint: str | Path, options: EvalOptions) -> bool:
    return not any(input_files(checkpoint, options).values())

def record_is_current(record: dict | None, task, sha: str | None) -> bool:
    """True when ``record`` is current for ``task`` (a :class:`~ncbounds.batch.tasks.Task`; rules above);
    ``sha`` is the checkpoint's SHA-256 when already known."""
    if not record:
        return False
    batch = record.get("batch") or {}
    ckpt = record.get("checkpoint") or {}
    if "inputs_hash" in batch:
        same_inputs = batch["inputs_hash"] == task.inputs_hash
    else:  # a record of an earlier version: current only if no input file could have changed
        same_inputs = task.files_free and batch.get("sidecar_hash") == task.sidecar_hash
    return (
        batch.get("options_hash") == task.options_hash
        and same_inputs
        and ckpt.get("sha256") is not None
        and ckpt.get("sha256") == (sha if sha is not None else safe_sha(task.path))
    )
