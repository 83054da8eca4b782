"""Combining record folders (``ncbounds merge OUT RESULTS...``): see :func:`merge_results`."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ncbounds.batch.discovery import result_name
from ncbounds.batch.files import ERROR_SUFFIX, atomic_write, clean_temporaries, locked, remove
from ncbounds.batch.identity import canonical
from ncbounds.errors import NCBoundsError, UsageError

__all__ = ["NUMBER_KEYS", "MergeSummary", "merge_results"]

#: Record keys compared to tell an identical duplicate from a conflicting one.
NUMBER_KEYS = ("layers", "errors", "bounds", "layerwise")

@dataclass
class _Candidate:
    path: Path
    source: int  # position of its folder: 0 = OUT itself, then RESULTS in the order given
    name: str  # the file's result name (may carry a disambiguating suffix from an earlier merge)
    is_error: bool
    data: dict

    @property
    def identity(self) -> tuple:
        """Checkpoint SHA-256, options hash and inputs hash (the sidecar hash for records of earlier versions)."""
        batch = self.data.get("batch") or {}
        sha = batch.get("checkpoint_sha256") or (self.data.get("checkpoint") or {}).get("sha256")
        inputs = batch.get("inputs_hash") or ("sidecar", batch.get("sidecar_hash"))
        return sha, batch.get("options_hash"), inputs

    @property
    def base_name(self) -> str:
        """The result name of the checkpoint's relative path (what a batch would call it)."""
        rel = (self.data.get("batch") or {}).get("relative_path")
        return result_name(Path("/r") / rel, "/r") if isinstance(rel, str) and rel else self.name

    @property
    def created(self) -> str:
        return str((self.data.get("batch") or {}).get("created") or "")

    def numbers(self) -> str:
        return canonical({k: self.data.get(k) for k in NUMBER_KEYS})

@dataclass
class MergeSummary:
    """Outcome of :func:`merge_results`; ``problems`` holds one line per conflict or clash (also sent to ``log``)."""

    out_dir: str
    sources: list[str]
    records: int = 0
    errors: int = 0
    copied: int = 0
    unchanged: int = 0
    removed: int = 0
    duplicates: int = 0
    conflicts: int = 0
    clashes: int = 0
    superseded: int = 0
    ignored: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary printed by ``ncbounds merge``."""
        n = len(self.sources)
        return (f"merge: {n} folder{'s' if n != 1 else ''} into {self.out_dir}: {self.records} records, {self.errors} error records "
                f"({self.copied} copied, {self.unchanged} already there, {self.removed} removed); {self.duplicates} identical "
                f"duplicates kept once, {self.conflicts} conflicts, {self.clashes} name clashes (both kept, renamed), "
                f"{self.superseded} error records superseded by a success, {self.ignored} files ignored in {self.seconds:.1f}s")

def _candidates(folder: Path, source: int, summary: MergeSummary, log) -> list[_Candidate]:
    from ncbounds.report.results import scan_results

    found = []
    for entry in scan_results(folder, recursive=False):
        data = entry.data if isinstance(entry.data, dict) else None
        complete = entry.kind in ("record", "error") and data and isinstance(data.get("batch"), dict) and data["batch"].get("options_hash")
        if not complete:
            if entry.kind == "skipped" and entry.reason in ("temporary", "not a JSON file"):
                continue  # a writer's temporary file, a CSV, a log: not a candidate, not worth a line
            summary.ignored += 1  # not a batch record (a CSV export's JSON, a hand-written report, a broken file)
            if log is not None:
                log(f"ignored: {entry.path}: not a complete `ncbounds batch` record")
            continue
        found.append(_Candidate(entry.path, source, entry.name, entry.kind == "error", data))
    return found

def _newest(candidates: list[_Candidate]) -> _Candidate:
    """Latest ``batch.created``; ties go to the earliest folder (OUT first), then the path."""
    return max(candidates, key=lambda c: (c.created, -c.source, str(c.path)))

def _identity_tag(identity: tuple) -> str:
    return hashlib.sha256(canonical(list(identity)).encode("utf-8")).hexdigest()[:8]

def merge_results(
    out_dir: str | Path, sources: Iterable[str | Path], log: Callable[[str], None] | None = None
) -> MergeSummary:
    """Combine the record folders ``sources`` (and what ``out_dir`` already holds) into ``out_dir``.

    A record is matched by its **identity** — checkpoint SHA-256 (``batch.checkpoint_sha256``),
    ``options_hash`` and ``inputs_hash`` (sidecar, data and architecture file contents; the
    ``sidecar_hash`` for records of earlier versions) — together with the result name of its
    ``batch.relative_path``; a file name alone never makes two records the same. (One batch keeps two
    byte-identical checkpoints at two paths as two records, and a merge of shard folders must equal
    that batch's folder, so the relative path stays part of the key.)

    * Same key, same numbers (``layers``, ``errors``, ``bounds``, ``layerwise``): an **identical
      duplicate**, kept once (a copy already in ``out_dir`` stays untouched, else the first folder's).
    * Same key, different numbers: a **conflict**; the copy in ``out_dir`` is kept if there is one (a
      record of ``out_dir`` is never rewritten), else the newest (``batch.created``); the line names
      every source.
    * An error record whose key also has a success record is **superseded** and dropped; a key with
      only error records keeps the newest one.
    * Different identities under the same name (two runs that each hold ``final.pt``, retrained
      weights, other options or data): a **name clash**; every record is kept — the one already in
      ``out_dir`` (else the first) under the plain name, the others as ``NAME~<8 hex of the identity>``.

    Files that are not batch records are ignored (counted). Every file is written atomically and
    ``out_dir`` is locked like a batch's; the sources are only read. Returns a :class:`MergeSummary`;
    ``log`` receives one line per conflict, clash or ignored file. Merging again with the same
    folders changes nothing.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    folders = [Path(s) for s in sources]
    if not folders:
        raise UsageError("name at least one results folder to merge: ncbounds merge OUT RESULTS...")
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder; pass results folders written by `ncbounds batch`.")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; OUT must be a results folder (new or existing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NCBoundsError(f"cannot create the output folder {out} ({exc.strerror}); pass a writable OUT.") from None
    summary = MergeSummary(out_dir=str(out), sources=[str(f) for f in folders])

    def report(line: str) -> None:
        summary.problems.append(line)
        if log is not None:
            log(line)

    with locked(out, None, "`ncbounds batch` or `ncbounds merge`"):
        clean_temporaries(out)
        seen = {os.path.realpath(out)}
        groups: dict[tuple, list[_Candidate]] = {}
        for index, folder in enumerate([out, *folders]):
            if index and os.path.realpath(folder) in seen:
                continue  # OUT named among the sources, or a folder named twice
            seen.add(os.path.realpath(folder))
            for cand in _candidates(folder, index, summary, log):
                groups.setdefault((cand.base_name, cand.identity), []).append(cand)

        kept: list[tuple[str, tuple, _Candidate]] = []
        for (base, identity), group in groups.items():
            successes = [c for c in group if not c.is_error]
            errors = [c for c in group if c.is_error]
            if successes:
                summary.superseded += len(errors)
                in_out = [c for c in successes if c.source == 0]
                distinct = {c.numbers() for c in successes}
                if len(distinct) > 1:
                    keep = in_out[0] if in_out else _newest(successes)
                    summary.conflicts += 1
                    summary.duplicates += len(successes) - len(distinct)
                    which = "the one already in OUT" if in_out else "the newest"
                    report(f"conflict: {base}: {len(distinct)} different results for the same checkpoint, options and inputs "
                           f"({', '.join(str(c.path) for c in successes)}); kept {which}, {keep.path}")
                else:
                    keep = in_out[0] if in_out else min(successes, key=lambda c: (c.source, str(c.path)))
                    summary.duplicates += len(successes) - 1
            else:
                keep = _newest(errors)
                summary.duplicates += len(errors) - 1
            kept.append((base, identity, keep))

        by_base: dict[str, list[tuple[tuple, _Candidate]]] = {}
        for base, identity, keep in kept:
            by_base.setdefault(base, []).append((identity, keep))
        written: set[Path] = set()
        for base in sorted(by_base):
            entries = sorted(by_base[base], key=lambda e: (e[1].source != 0 or e[1].name != base, e[1].source, str(e[1].path)))
            if len(entries) > 1:
                summary.clashes += 1
                report(f"clash: {base}: {len(entries)} results for different checkpoint contents, options or inputs "
                       f"({', '.join(str(e[1].path) for e in entries)}); all kept, the later ones as {base}~<identity>")
            for position, (identity, keep) in enumerate(entries):
                if keep.source == 0:
                    name = keep.name  # a file of OUT keeps its name (plain-named ones sort first)
                else:
                    name = base if position == 0 else f"{base}~{_identity_tag(identity)}"
                target = out / (f"{name}{ERROR_SUFFIX}" if keep.is_error else f"{name}.json")
                other = out / (f"{name}.json" if keep.is_error else f"{name}{ERROR_SUFFIX}")
                if keep.source == 0 and keep.path == target:
                    summary.unchanged += 1
                else:
                    atomic_write(target, keep.path.read_text(encoding="utf-8"))
                    summary.copied += 1
                written.add(target)
                if other.exists() and other not in written:
                    remove(other)
                    summary.removed += 1
                if keep.is_error:
                    summary.errors += 1
                else:
                    summary.records += 1
        for cand in (c for group in groups.values() for c in group if c.source == 0):
            if cand.path not in written and cand.path.exists():  # an error record of OUT superseded or replaced
                remove(cand.path)
                summary.removed += 1
        clean_temporaries(out)
    summary.seconds = time.perf_counter() - t0
    return summary
