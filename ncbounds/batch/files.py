"""Files of a results folder: atomic writes, temporary files, locks, and reading the folder back.

Every file is written by the one atomic writer of ncbounds (:func:`ncbounds.io.output.write_atomic`:
a temporary file ``.NAME.PID.HEX.ncbounds-tmp`` in the folder, ``fsync``, ``os.replace``), so a batch
killed at any moment leaves only complete files; leftover temporary files are removed by the next run
(a sharded run removes only those of its own checkpoints).

**Locks.** An unsharded batch holds an exclusive ``flock`` on ``out/.ncbounds-batch.lock``; a sharded
one holds it shared, plus an exclusive lock on ``out/.ncbounds-batch.shard-I-of-N.lock``. So different
shards can write into one folder at the same time, while two runs of the same shard, or a shard and an
unsharded batch, refuse to share it.

The folder is read back with :func:`ncbounds.report.results.scan_results`, the one reader of the layout
shared by ``export``, ``correlate``, ``plot``, ``--resume`` and ``merge``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ncbounds.errors import NCBoundsError
from ncbounds.io.output import temporary_target, write_atomic

__all__ = ["ERROR_SUFFIX", "atomic_write", "clean_temporaries", "locked", "read_json", "read_results", "remove"]

#: Suffix of a failure record (``NAME.error.json``); a success record is ``NAME.json``.
ERROR_SUFFIX = ".error.json"
_LOCK_NAME = ".ncbounds-batch.lock"

_SHARD_LOCK_NAME = ".ncbounds-batch.shard-{}-of-{}.lock"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` (plus a final newline) to ``path`` with :func:`ncbounds.io.output.write_atomic`."""
    write_atomic(path, text if text.endswith("\n") else text + "\n", make_parents=False)

def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

def _temporary_owner(tmp_name: str) -> str | None:
    """The result name a temporary record file belongs to, or None for any other file.

    Temporary files are ``.NAME.json.PID.HEX.ncbounds-tmp`` (or ``.NAME.error.json…``), written by
    :func:`ncbounds.io.output.write_atomic`; ``….tmp`` is the form older versions wrote.
    """
    target = temporary_target(tmp_name)
    if target is None:
        return None
    for suffix in (ERROR_SUFFIX, ".json"):
        if target.endswith(suffix):
            return target[: -len(suffix)]
    return None

def clean_temporaries(out: Path, names: set[str] | None = None) -> int:
    """Remove leftover temporary record files in ``out`` (only those of result ``names`` when given)."""
    n = 0
    for tmp in out.glob(".*"):
        owner = _temporary_owner(tmp.name)
        if owner is None or (names is not None and owner not in names):
            continue  # not ours, or another shard's file, possibly being written right now
        if tmp.is_file() and not tmp.is_symlink():
            remove(tmp)
            n += 1
    return n

@contextlib.contextmanager
def locked(out: Path, shard: tuple[int, int] | None = None, what: str = "`ncbounds batch`"):
    """Hold the results folder's locks for the run (non-blocking ``flock``; no-op without fcntl).

    Unsharded: exclusive lock on ``.ncbounds-batch.lock``. Sharded: that lock shared, plus an
    exclusive lock on ``.ncbounds-batch.shard-I-of-N.lock`` (see the module docstring).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    busy = f"another {what} is writing to {out}; wait for it to finish or pass a different --out."
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(open(out / _LOCK_NAME, "a"))  # held for the whole run
        try:
            fcntl.flock(fh.fileno(), (fcntl.LOCK_SH if shard else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            raise NCBoundsError(busy) from None
        if shard:
            sh = stack.enter_context(open(out / _SHARD_LOCK_NAME.format(*shard), "a"))
            try:
                fcntl.flock(sh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise NCBoundsError(
                    f"shard {shard[0]}/{shard[1]} is already being evaluated into {out}; wait for it to finish or pick another shard."
                ) from None
        yield

def read_results(out_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(records, failures) found in a batch results folder, each sorted by result name.

    A record and a failure file of the same name (a later attempt failed while an earlier, still
    valid record exists) count as the record. Files that are not records are ignored (see
    :func:`ncbounds.report.results.scan_results`, the one reader of the folder layout).
    """
    from ncbounds.report.results import scan_results

    records, failures = {}, {}
    for entry in scan_results(out_dir, recursive=False):
        if entry.kind == "record":
            records[entry.name] = entry.data
        elif entry.kind == "error":
            failures[entry.name] = entry.data
    return [records[k] for k in sorted(records)], [failures[k] for k in sorted(failures) if k not in records]
