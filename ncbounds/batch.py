"""Batch evaluation: every checkpoint under a folder → one JSON record per checkpoint (DESIGN §7, §9).

``run_batch(root, out_dir, options)`` finds the checkpoints under ``root`` (:func:`find_checkpoints`),
evaluates each with :func:`ncbounds.pipeline.evaluate` (architecture, keyword arguments, data spec,
initialization checkpoint and hyperparameters come from the sidecars, DESIGN §3; options given here
override them) and writes one file per checkpoint into ``out_dir``:

* ``NAME.json`` — the checkpoint's :class:`~ncbounds.report.record.EvalRecord` (``to_dict()``) plus a
  ``batch`` object ``{root, relative_path, checkpoint_sha256, options_hash, sidecar_hash, created}``;
* ``NAME.error.json`` — when the evaluation failed: ``{checkpoint: {path, relative_path, sha256},
  error: {reason, type, exit_code, traceback}, batch: {...}}``. ``reason`` is one sentence. A failure
  never stops the other checkpoints.

Every file is written atomically (a hidden temporary file in ``out_dir``, then ``os.replace``), so a
batch killed at any moment leaves only complete files; leftover temporary files are removed by the
next run. A lock file (``.ncbounds-batch.lock``, POSIX ``flock``) refuses a second concurrent batch
writing into the same ``out_dir``.

**Result names.** ``NAME`` is the checkpoint's path relative to ``root`` with the folder separators
replaced by ``__``, extension kept: ``sub/epoch_03.pt`` → ``sub__epoch_03.pt.json``. Keeping the
extension keeps ``epoch_03.pt`` and ``epoch_03.ckpt`` apart. The name depends only on the relative
path, so it is stable across runs. Path components that would make the mapping ambiguous (a ``__``
or a leading/trailing ``_``, characters outside ``A-Za-z0-9._-``) or a name longer than 180
characters get a ``~`` and 10 hex digits of the relative path's SHA-1 instead (``~`` never occurs in
a plain name, so hashed and plain names cannot collide).

**Identity (``--resume``).** A record is current when its checkpoint's SHA-256 equals the file's
SHA-256 now, its ``options_hash`` equals :func:`options_hash` of the options now, and its
``sidecar_hash`` equals :func:`sidecar_hash` of the checkpoint's merged sidecar now. ``options_hash``
is the SHA-256 of the canonical JSON (sorted keys, no spaces) of every :class:`EvalOptions` field
except those that cannot change the numbers beyond floating-point rounding or only change whether
the work runs (``device``, ``batch_size``, ``trust_checkpoint``, ``progress``, ``debug``), with
``bounds`` replaced by the sorted list of bound names it selects (so a catalogue that grows makes
``default`` records stale). Resuming after an out-of-memory failure with a smaller ``--batch-size``,
or on another machine, therefore keeps the finished records. ``sidecar_hash`` covers the sidecar's
``arch``, ``arch_kwargs``, ``data``, ``init_checkpoint`` (relative to the checkpoint's folder) and
hyperparameters, so editing a sidecar re-evaluates its checkpoint. With ``resume=True`` current
records are skipped; error records and stale records are re-evaluated; a stale error file is removed
when its checkpoint then succeeds. Without ``resume`` every checkpoint is evaluated again (files are
replaced atomically). Not covered by the identity: the contents of data files and of the init
checkpoint, and the ncbounds version (recorded in ``provenance``).

**Which files are checkpoints** (:func:`find_checkpoints`): regular files matching ``glob`` under
``root`` with the extensions ``.pt .pth .ckpt .safetensors .bin``, except

* files inside hidden folders or hidden files (``.git``, ``.ipynb_checkpoints``, our temporaries),
  inside a folder named ``ncbounds-results`` or inside ``exclude`` (the results folder);
* training-state files that hold no model: ``optimizer.*``, ``scheduler.*``, ``scaler.*``,
  ``training_args.*`` and ``rng_state*`` (Hugging Face Trainer checkpoint folders);
* **initialization checkpoints**: a file that any sidecar of a found checkpoint (its ``X.json`` or its
  folder's ``ncbounds.json``) names as ``init_checkpoint`` is the reference point of distance-to-init
  and PAC-Bayes terms, not a trained model, and is not evaluated. The rule goes by reference only: an
  ``init.pt`` that no sidecar names is evaluated like any other checkpoint (an "epoch 0" point);
* symbolic links to a file that is itself found (Lightning's ``last.ckpt``), so no model counts twice.

**Parallelism.** ``jobs=N`` evaluates in N worker processes (``spawn`` context, so CUDA works in the
workers) with ``torch.set_num_threads(max(1, cores // N))`` each; every evaluation is seeded by
``options.seed``, so records equal those of ``jobs=1`` (timings and ``created`` aside). If a worker
dies (killed, out of memory), the checkpoints it may have been evaluating (at most ``N``) get an error
record saying so and the rest continue in a fresh pool; ``--resume`` re-runs them.

**Backends.** ``backend="local"`` (default) is the above. ``backend="ray"`` runs one Ray task per
checkpoint (:mod:`ncbounds.ray_backend`: resources per task, retries, clusters); the tasks only
evaluate and the driver writes the same files with the same code, so records, error records,
``--resume`` and everything that reads a results folder are the same for both backends.

**Shards** (``shard=(i, N)``, ``--shard i/N``, 0-based). Checkpoint ``p`` belongs to shard
:func:`shard_of` = ``int(sha256(relative path of p)[:16], 16) % N``. The assignment depends on
nothing but the checkpoint's own relative path (POSIX form, relative to ``root``): not on the other
files, the order of discovery, the time or the machine. So N jobs (a SLURM array) started at
different times, while checkpoints are still being added, together evaluate every checkpoint they
see exactly once, and a checkpoint added later lands in one fixed shard; a sorted-index rule
(``index % N``) would be better balanced for small folders but moves every later checkpoint to
another shard when one file is added. Shard sizes are therefore binomial (about ``total/N ±
sqrt(total/N)``). The shards may write into one results folder (their locks do not exclude each
other, see below) or into one folder each, combined afterwards by :func:`merge_results`. Every
shard must use the same ``root`` layout (the relative paths), ``glob``, ``N`` and options.

**Locks.** An unsharded batch holds an exclusive ``flock`` on ``out/.ncbounds-batch.lock``; a
sharded one holds it shared, plus an exclusive lock on ``out/.ncbounds-batch.shard-I-of-N.lock``.
So different shards can write into one folder at the same time, while two runs of the same shard,
or a shard and an unsharded batch, refuse to share it. A sharded batch removes only the leftover
temporary files of its own checkpoints.

**Merging** (:func:`merge_results`, ``ncbounds merge OUT RESULTS...``): see that function.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
import traceback
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ncbounds.errors import Interrupted, NCBoundsError, UsageError
from ncbounds.io.output import temporary_target, write_atomic
from ncbounds.io.sidecar import read_sidecar
from ncbounds.options import EvalOptions, option_fields
from ncbounds.progress import Progress

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "RESULTS_DIRNAME",
    "ERROR_SUFFIX",
    "IDENTITY_EXCLUDED",
    "BatchFailure",
    "BatchSummary",
    "find_checkpoints",
    "hidden_checkpoints",
    "result_name",
    "options_hash",
    "sidecar_hash",
    "inputs_hash",
    "input_files",
    "FileHashes",
    "file_sha256",
    "run_batch",
    "read_results",
    "parse_shard",
    "shard_from_env",
    "shard_of",
    "select_shard",
    "MergeSummary",
    "merge_results",
]

#: File extensions treated as checkpoints.
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
#: Default results folder name (inside the batch root); never searched for checkpoints.
RESULTS_DIRNAME = "ncbounds-results"
#: Suffix of a failure record (``NAME.error.json``); a success record is ``NAME.json``.
ERROR_SUFFIX = ".error.json"
#: EvalOptions fields left out of :func:`options_hash` (they cannot change the numbers beyond rounding).
IDENTITY_EXCLUDED = frozenset(f.name for f in option_fields() if not f.metadata["identity"])

_NON_MODEL_STEMS = frozenset({"optimizer", "scheduler", "scaler", "training_args"})
_LOCK_NAME = ".ncbounds-batch.lock"
_SHARD_LOCK_NAME = ".ncbounds-batch.shard-{}-of-{}.lock"
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*(?:_[A-Za-z0-9.\-]+)*\Z")
_MAX_NAME = 180


# ---------------------------------------------------------------------------------------------
# discovery and naming


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
    return _discover(root, glob, exclude)[0]


def hidden_checkpoints(root: str | Path, glob: str = "**/*", *, exclude: Iterable[str | Path] = ()) -> list[Path]:
    """Checkpoint files matching ``glob`` that :func:`find_checkpoints` leaves out because a part of their
    path is hidden (``.hidden/m.pt``, ``.m.pt``); ``batch`` names them so nothing is skipped silently."""
    return _discover(root, glob, exclude)[1]


def _glob_names_hidden(glob: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in Path(glob).parts)


def _discover(root: str | Path, glob: str, exclude: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
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


# ---------------------------------------------------------------------------------------------
# shards


_SHARD_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*\Z")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` → ``(i, N)`` with ``0 <= i < N`` (0-based); :class:`UsageError` otherwise. ``"0/1"`` is every checkpoint."""
    match = _SHARD_TEXT.match(str(text))
    if not match:
        raise UsageError(f"--shard must look like i/N with 0-based i, e.g. 0/4 … 3/4, not {text!r}.")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text}: the shard index is 0-based and must lie in 0..N-1 with N >= 1 (e.g. 0/4 … 3/4).")
    return index, count


def shard_from_env(environ=None) -> tuple[int, int] | None:
    """The shard of a SLURM array task, or None outside an array job.

    ``N = SLURM_ARRAY_TASK_COUNT`` and ``i = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) /
    SLURM_ARRAY_TASK_STEP`` (MIN 0 and STEP 1 when unset), so ``--array=0-7``, ``--array=1-8`` and
    ``--array=0-14:2`` all give the shards 0/8 … 7/8, whatever the first id. An array whose ids are not
    evenly spaced (``--array=1,4,9``) is refused with a :class:`UsageError` naming ``--shard``.
    """
    env = os.environ if environ is None else environ
    count_text = env.get("SLURM_ARRAY_TASK_COUNT")
    if not count_text:
        return None

    def number(key: str, default: int | None = None) -> int:
        value = env.get(key)
        if value is None or value == "":
            if default is None:
                raise UsageError(f"SLURM_ARRAY_TASK_COUNT is set but {key} is not; pass --shard i/N explicitly.")
            return default
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{key}={value!r} is not an integer; pass --shard i/N explicitly.") from None

    count, task_id = number("SLURM_ARRAY_TASK_COUNT"), number("SLURM_ARRAY_TASK_ID")
    first, step = number("SLURM_ARRAY_TASK_MIN", 0), number("SLURM_ARRAY_TASK_STEP", 1)
    last = env.get("SLURM_ARRAY_TASK_MAX")
    offset = task_id - first
    evenly = step > 0 and offset % step == 0 and (not last or (number("SLURM_ARRAY_TASK_MAX") - first) == (count - 1) * step)
    if count < 1 or not evenly or not 0 <= offset // step < count:
        raise UsageError(
            f"cannot derive a shard from SLURM_ARRAY_TASK_ID={task_id} (MIN={first}, STEP={step}, COUNT={count}): the array ids "
            f"must be evenly spaced, e.g. --array=0-{max(count - 1, 0)}; pass --shard i/N explicitly."
        )
    return offset // step, count


def shard_of(relative_path: str, count: int) -> int:
    """The shard (0..count-1) of a checkpoint, from the SHA-256 of its POSIX relative path alone."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).hexdigest()
    return int(digest[:16], 16) % count


def select_shard(paths: Iterable[Path], root: str | Path, shard: tuple[int, int] | None) -> list[Path]:
    """The checkpoints of ``paths`` (under ``root``) that belong to ``shard = (i, N)``, order kept; all when None."""
    paths = list(paths)
    if shard is None:
        return paths
    index, count = shard
    return [p for p in paths if shard_of(Path(p).relative_to(root).as_posix(), count) == index]


# ---------------------------------------------------------------------------------------------
# identity


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True, default=str)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def options_hash(options: EvalOptions, bound_names: list[str] | None = None) -> str:
    """SHA-256 of the canonical JSON of :meth:`EvalOptions.identity` (the options that affect the numbers;
    ``bounds`` replaced by the sorted ``bound_names`` it selects, resolved when not given)."""
    if bound_names is None:
        from ncbounds.bounds.runner import select_bounds

        bound_names = select_bounds(options.bounds)
    return _sha256_text(_canonical(options.identity(bound_names)))


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
    return _sha256_text(_canonical({"arch": side.arch, "arch_kwargs": side.arch_kwargs, "data": side.data,
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
            self._known[key] = _safe_sha(real) if os.path.isfile(real) else None
        return self._known[key]


def input_files(checkpoint: str | Path, options: EvalOptions) -> dict[str, list[str]]:
    """The files besides the checkpoint that an evaluation reads, by role (absolute paths).

    ``data``: the files of a file-based data spec (``npz:``, ``features:``, ``cifar10:``/``cifar100:``
    batches); ``arch``: the Python file of a file architecture (or the module file of an import path
    found in the sidecar's folder); ``init``: the initialization checkpoint. Values typed as options win
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
    return {"data": data, "arch": arch, "init": [os.path.abspath(init)] if init else []}


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
    return _sha256_text(_canonical({"sidecar": side, "files": contents}))


def _no_input_files(checkpoint: str | Path, options: EvalOptions) -> bool:
    return not any(input_files(checkpoint, options).values())


# ---------------------------------------------------------------------------------------------
# files


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` (plus a final newline) to ``path`` with :func:`ncbounds.io.output.write_atomic`."""
    write_atomic(path, text if text.endswith("\n") else text + "\n", make_parents=False)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _remove(path: Path) -> None:
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


def _clean_temporaries(out: Path, names: set[str] | None = None) -> int:
    """Remove leftover temporary record files in ``out`` (only those of result ``names`` when given)."""
    n = 0
    for tmp in out.glob(".*"):
        owner = _temporary_owner(tmp.name)
        if owner is None or (names is not None and owner not in names):
            continue  # not ours, or another shard's file, possibly being written right now
        if tmp.is_file() and not tmp.is_symlink():
            _remove(tmp)
            n += 1
    return n


@contextlib.contextmanager
def _locked(out: Path, shard: tuple[int, int] | None = None, what: str = "`ncbounds batch`"):
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


# ---------------------------------------------------------------------------------------------
# one checkpoint (runs in the parent for jobs=1, in a worker otherwise)


@dataclass
class _Task:
    path: str
    relative_path: str
    name: str
    root: str
    out_dir: str
    options: EvalOptions
    options_hash: str
    sidecar_hash: str | None
    inputs_hash: str | None = None
    files_free: bool = True  # reads no file besides the checkpoint (records without inputs_hash can be current)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _one_sentence(exc: BaseException, error_file: str) -> str:
    if isinstance(exc, NCBoundsError):
        return " ".join(str(exc).split())
    first = " ".join(str(exc).split())
    first = first[:300] + ("..." if len(first) > 300 else "")
    return f"unexpected {type(exc).__name__}{': ' + first if first else ''} (the traceback is in {error_file})."


def _record_is_current(record: dict | None, task: _Task, sha: str | None) -> bool:
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
        and ckpt.get("sha256") == (sha if sha is not None else _safe_sha(task.path))
    )


def _safe_sha(path: str) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _batch_info(task: _Task, sha: str | None) -> dict:
    return {"root": task.root, "relative_path": task.relative_path, "checkpoint_sha256": sha,
            "options_hash": task.options_hash, "sidecar_hash": task.sidecar_hash, "inputs_hash": task.inputs_hash,
            "created": _now()}


def _evaluate_task(task: _Task) -> dict:
    """Evaluate one checkpoint without touching the results folder (runs in a worker of either backend).

    Returns ``{"status": "done", "record": dict}`` or ``{"status": "failed", "reason", "type",
    "exit_code", "traceback", "retry"}``; ``retry`` is False for an :class:`NCBoundsError` (a
    deterministic input problem) and True for any other exception.
    """
    from ncbounds.pipeline import evaluate

    try:
        return {"status": "done", "record": evaluate(task.path, task.options).to_dict()}
    except Exception as exc:  # noqa: BLE001 - every failure is recorded; the batch goes on
        expected = isinstance(exc, NCBoundsError)
        outcome = _failure(task, exc, None if expected else traceback.format_exc())
        _free_device_memory()
        return outcome


def _failure(task: _Task, exc: BaseException, tb: str | None) -> dict:
    return {"status": "failed", "reason": _one_sentence(exc, f"{task.name}{ERROR_SUFFIX}"), "type": type(exc).__name__,
            "exit_code": getattr(exc, "exit_code", 1), "traceback": tb, "retry": not isinstance(exc, NCBoundsError)}


def _finish_task(task: _Task, outcome: dict, t0: float) -> dict:
    """Write the record or error file of ``outcome`` (from :func:`_evaluate_task`) atomically; a small summary dict."""
    out = Path(task.out_dir)
    if outcome["status"] == "done":
        data = outcome["record"]
        data["batch"] = _batch_info(task, (data.get("checkpoint") or {}).get("sha256"))
        try:
            text = json.dumps(data, indent=2, allow_nan=False)
        except (TypeError, ValueError) as exc:
            outcome = _failure(task, exc, traceback.format_exc())
        else:
            _atomic_write(out / f"{task.name}.json", text)
            _remove(out / f"{task.name}{ERROR_SUFFIX}")
            return {"name": task.name, "relative_path": task.relative_path, "status": "done",
                    "seconds": time.perf_counter() - t0}
    if task.options.debug and outcome.get("traceback"):
        sys.stderr.write(outcome["traceback"])
    return _write_failure(task, outcome["reason"], outcome["type"], outcome["exit_code"], outcome.get("traceback"), t0)


def _run_task(task: _Task) -> dict:
    """Evaluate one checkpoint and write its record or error file; returns a small outcome dict."""
    t0 = time.perf_counter()
    return _finish_task(task, _evaluate_task(task), t0)


def _free_device_memory() -> None:
    """After a failure (e.g. CUDA out of memory), hand cached device memory back before the next checkpoint."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _write_failure(task: _Task, reason: str, error_type: str, exit_code: int, tb: str | None, t0: float) -> dict:
    out = Path(task.out_dir)
    record_path = out / f"{task.name}.json"
    error_path = out / f"{task.name}{ERROR_SUFFIX}"
    sha = _safe_sha(task.path)
    payload = {
        "checkpoint": {"path": task.path, "relative_path": task.relative_path, "sha256": sha},
        "error": {"reason": reason, "type": error_type, "exit_code": exit_code, "traceback": tb},
        "batch": _batch_info(task, sha),
    }
    _atomic_write(error_path, json.dumps(payload, indent=2, default=str))
    if record_path.exists() and not _record_is_current(_read_json(record_path), task, sha):
        _remove(record_path)  # a record for other inputs would be read as this checkpoint's result
    return {"name": task.name, "relative_path": task.relative_path, "status": "failed", "reason": reason,
            "type": error_type, "error_file": str(error_path), "seconds": time.perf_counter() - t0}


def _init_worker(threads: int) -> None:
    """Worker start-up: limit torch's intra-op threads so N workers share the cores."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# the batch


@dataclass
class BatchFailure:
    """One checkpoint that failed: its path, the one-sentence reason, the exception type, the error file."""

    relative_path: str
    path: str
    reason: str
    error_type: str
    error_file: str


@dataclass
class BatchSummary:
    """Outcome of :func:`run_batch`: counts, failures, where the results are, and the exit status.

    ``total`` counts the checkpoints of this run (of its shard when ``shard`` is set); ``found`` all
    checkpoints found under the root.
    """

    root: str
    out_dir: str
    options_hash: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[BatchFailure] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = "local"
    shard: tuple[int, int] | None = None
    found: int = 0

    @property
    def ok(self) -> bool:
        """True when no checkpoint failed."""
        return self.failed == 0

    @property
    def exit_code(self) -> int:
        """0 when every checkpoint has a record, 3 when some failed (DESIGN §7)."""
        return 0 if self.ok else 3

    def line(self) -> str:
        """The one-line summary printed by ``ncbounds batch``."""
        counted = f"{self.total} checkpoint{'s' if self.total != 1 else ''}"
        if self.shard is not None:
            counted = f"shard {self.shard[0]}/{self.shard[1]}: {self.total} of {self.found} checkpoints"
        text = (f"batch: {counted}: {self.done} evaluated, "
                f"{self.skipped} skipped (up to date), {self.failed} failed in {self.seconds:.1f}s; results in {self.out_dir}")
        if self.failed:
            text += f" (failures: *{ERROR_SUFFIX})"
        return text


BACKENDS = ("local", "ray")


def _validate(options: EvalOptions, jobs: int | None, backend: str = "local") -> list[str]:
    """Global checks before any work (a bad option is one usage error, not N failures); returns bound names."""
    from ncbounds.pipeline import resolve_device

    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise UsageError(f"jobs (--jobs) must be a positive integer, got {jobs}.")
    selected = options.validate()
    if backend == "local":
        resolve_device(options.device)  # the Ray workers resolve it on their own devices
    return selected


def _validate_backend(backend: str, options: EvalOptions, address, cpus_per_task, gpus_per_task) -> tuple[float, float]:
    """Check the backend options; returns (cpus_per_task, gpus_per_task) with their defaults filled in."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}.")
    if backend == "local":
        if address is not None or cpus_per_task is not None or gpus_per_task is not None:
            raise UsageError("--address, --cpus-per-task and --gpus-per-task go with --backend ray.")
        return 0.0, 0.0
    from ncbounds.ray_backend import import_ray

    import_ray()  # a missing Ray is one usage error before any work
    cpus = 1.0 if cpus_per_task is None else float(cpus_per_task)
    gpus = 0.0 if gpus_per_task is None else float(gpus_per_task)
    if not cpus > 0:
        raise UsageError(f"--cpus-per-task must be positive, got {cpus_per_task}.")
    if not gpus >= 0:
        raise UsageError(f"--gpus-per-task must be 0 or more, got {gpus_per_task}.")
    if options.device.startswith("cuda") and gpus == 0:
        raise UsageError("--device cuda with --backend ray needs GPUs for each task: pass --gpus-per-task (e.g. 1).")
    return cpus, gpus


def run_batch(
    root: str | Path,
    out_dir: str | Path | None = None,
    options: EvalOptions | None = None,
    glob: str = "**/*",
    resume: bool = False,
    jobs: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    *,
    backend: str = "local",
    address: str | None = None,
    cpus_per_task: float | None = None,
    gpus_per_task: float | None = None,
    shard: tuple[int, int] | None = None,
) -> BatchSummary:
    """Evaluate every checkpoint under ``root`` and write one record (or error record) each into ``out_dir``.

    ``out_dir`` defaults to ``root/ncbounds-results``. ``options`` override the sidecars (see
    :func:`ncbounds.pipeline.evaluate`); ``glob`` selects files below ``root``; ``resume`` skips
    checkpoints whose record is current (same checkpoint SHA-256, ``options_hash`` and ``sidecar_hash``);
    ``progress`` draws a bar with ETA on stderr; ``log`` receives one line per failed checkpoint as it
    happens. ``shard=(i, N)`` evaluates only the checkpoints of shard ``i`` (see the module docstring).

    ``backend="local"``: ``jobs`` worker processes (default 1). ``backend="ray"``: one Ray task per
    checkpoint with ``cpus_per_task`` CPUs (default 1, also its torch threads) and ``gpus_per_task``
    GPUs (default 0); ``address`` None starts a private local cluster (``jobs × cpus_per_task`` CPUs,
    every core when ``jobs`` is None), ``"auto"`` or ``"HOST:PORT"`` connects to a running one; ``jobs``
    caps the tasks in flight (see :mod:`ncbounds.ray_backend`).

    Raises :class:`UsageError` for global problems (bad options, no checkpoints found, Ray missing);
    per-checkpoint failures are recorded and counted in the returned :class:`BatchSummary`
    (``exit_code`` 3). With the local backend and ``jobs > 1`` the workers are spawned, so a script
    calling this must guard its entry point with ``if __name__ == "__main__":``.
    """
    t_start = time.perf_counter()
    options = dataclasses.replace(options or EvalOptions(), progress=False)
    bound_names = _validate(options, jobs, backend if backend in BACKENDS else "local")
    cpus, gpus = _validate_backend(backend, options, address, cpus_per_task, gpus_per_task)
    if shard is not None:
        shard = parse_shard(f"{shard[0]}/{shard[1]}")
        shard = None if shard == (0, 1) else shard  # one shard of one: the whole folder, as unsharded
    root_path = Path(root)
    if not root_path.is_dir():
        raise UsageError(f"{root} is not a folder; pass the folder that holds the checkpoints.")
    out = Path(out_dir) if out_dir is not None else root_path / RESULTS_DIRNAME
    if not options.trust_code:  # before anything is written: a refused folder leaves no results folder behind
        _check_trust(select_shard(find_checkpoints(root_path, glob, exclude=[out]), root_path, shard), options)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NCBoundsError(f"cannot create the results folder {out} ({exc.strerror}); pass a writable --out.") from None
    ohash = options_hash(options, bound_names)
    summary = BatchSummary(root=str(root_path.resolve()), out_dir=str(out), options_hash=ohash, backend=backend, shard=shard)
    task_options = options
    if backend == "ray" and options.device == "auto":  # a task uses the devices Ray gave it, nothing else
        task_options = dataclasses.replace(options, device="cuda" if gpus > 0 else "cpu")
    with _locked(out, shard):
        exclude = [out] + ([options.init] if options.init else [])
        checkpoints, hidden = _discover(root_path, glob, exclude)  # --init is not a trained model either
        if hidden and log is not None:
            shown = ", ".join(p.relative_to(root_path).as_posix() for p in hidden[:3]) + (", …" if len(hidden) > 3 else "")
            log(f"note: {len(hidden)} checkpoint file(s) in hidden folders or with hidden names were not evaluated ({shown}); "
                f"name the hidden part in --glob (e.g. --glob '.hidden/**/*') to include them")
        if not checkpoints:
            raise UsageError(
                f"no checkpoints ({', '.join(CHECKPOINT_SUFFIXES)}) under {root} match {glob!r}; check the folder or --glob."
            )
        summary.found = len(checkpoints)
        checkpoints = select_shard(checkpoints, root_path, shard)
        _check_trust(checkpoints, options)
        names = {result_name(path, root_path) for path in checkpoints}
        _clean_temporaries(out, names if shard else None)
        summary.total = len(checkpoints)
        tasks: list[_Task] = []
        hashes = FileHashes()
        for path in checkpoints:
            task = _Task(path=str(path.resolve()), relative_path=path.relative_to(root_path).as_posix(),
                         name=result_name(path, root_path), root=summary.root, out_dir=str(out), options=task_options,
                         options_hash=ohash, sidecar_hash=sidecar_hash(path), inputs_hash=inputs_hash(path, options, hashes),
                         files_free=_no_input_files(path, options))
            if resume and _record_is_current(_read_json(out / f"{task.name}.json"), task, None):
                summary.skipped += 1
                _remove(out / f"{task.name}{ERROR_SUFFIX}")  # left by a run killed between the two writes
                continue
            tasks.append(task)

        bar = Progress(len(tasks), "batch", enabled=progress and bool(tasks))

        def collect(outcome: dict) -> None:
            if outcome["status"] == "done":
                summary.done += 1
            else:
                summary.failed += 1
                task = by_name[outcome["name"]]
                summary.failures.append(BatchFailure(task.relative_path, task.path, outcome["reason"], outcome["type"],
                                                     outcome["error_file"]))
                if log is not None:
                    log(f"failed: {task.relative_path}: {outcome['reason']}")
            bar.advance()

        by_name = {t.name: t for t in tasks}
        try:
            if backend == "ray":
                if tasks:
                    from ncbounds.ray_backend import run_on_ray

                    run_on_ray(tasks, lambda task, outcome, t0: collect(_finish_task(task, outcome, t0)), address=address,
                               cpus_per_task=cpus, gpus_per_task=gpus, max_in_flight=jobs, debug=options.debug)
            elif (jobs or 1) == 1 or len(tasks) <= 1:
                for task in tasks:
                    collect(_run_task(task))
            else:
                _run_parallel(tasks, min(jobs, len(tasks)), collect)
        except KeyboardInterrupt:
            bar.close()
            raise Interrupted(
                f"{summary.done + summary.failed} of {len(tasks)} checkpoints finished in this run ({summary.done} records, "
                f"{summary.failed} failures; {summary.skipped} were already up to date) and are kept in {out}; run the same "
                f"command with --resume to evaluate the rest."
            ) from None
        finally:
            bar.close()
            _clean_temporaries(out, names if shard else None)
    summary.failures.sort(key=lambda f: f.relative_path)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _check_trust(checkpoints: list[Path], options: EvalOptions) -> None:
    """Refuse the whole batch (one usage error) when sidecars would run code or read outside their folder.

    The same rule as one evaluation (:mod:`ncbounds.trust`), checked for every checkpoint before any work,
    so a downloaded folder never gets as far as importing anything. Unreadable sidecars are left to the
    evaluation of their checkpoint (an error record).
    """
    if options.trust_code:
        return
    from ncbounds.trust import untrusted_uses

    uses, folders = [], set()
    for path in checkpoints:
        try:
            side = read_sidecar(path)
        except NCBoundsError:
            continue
        found = untrusted_uses(side, arch=not options.arch, data=not options.data, init=not options.init)
        if found:
            uses.append(found[0])
            folders.add(str(path.parent))
    if uses:
        more = f" ({len(uses)} checkpoints in {len(folders)} folder(s) are affected)" if len(uses) > 1 else ""
        raise UsageError(f"{uses[0].sentence()}{more}.")


def _run_parallel(tasks: list[_Task], jobs: int, collect: Callable[[dict], None]) -> None:
    """Evaluate ``tasks`` in ``jobs`` spawned worker processes, at most ``jobs`` in flight.

    A worker that dies breaks the pool: the tasks in flight then get an error record (the one that
    killed the worker cannot be told apart) and the remaining tasks continue in a fresh pool. Every
    pool makes progress (its first submission cannot fail), so this ends.
    """
    threads = max(1, _available_cores() // jobs)
    ctx = multiprocessing.get_context("spawn")
    pending = deque(tasks)
    while pending:
        pool = cf.ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=ctx,
                                      initializer=_init_worker, initargs=(threads,))
        in_flight: dict[cf.Future, _Task] = {}
        broken = False
        try:
            while (pending or in_flight) and not broken:
                while pending and len(in_flight) < jobs:
                    task = pending.popleft()
                    try:
                        in_flight[pool.submit(_run_task, task)] = task
                    except BrokenProcessPool:  # broke between two submissions: retry in the next pool
                        pending.appendleft(task)
                        broken = True
                        break
                if broken or not in_flight:
                    break
                finished, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    task = in_flight.pop(future)
                    try:
                        collect(future.result())
                    except BrokenProcessPool:
                        broken = True
                        collect(_worker_died(task))
            for future, task in list(in_flight.items()):  # after a break: the others in flight are lost too
                try:
                    collect(future.result())
                except BrokenProcessPool:
                    collect(_worker_died(task))
            in_flight.clear()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def _worker_died(task: _Task) -> dict:
    reason = (f"the worker process evaluating {task.relative_path} (or one beside it) died, killed or out of memory; "
              f"re-run with --resume, perhaps with fewer --jobs or a smaller --batch-size.")
    return _write_failure(task, reason, "BrokenProcessPool", 1, None, time.perf_counter())


# ---------------------------------------------------------------------------------------------
# merging results folders


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
        return _canonical({k: self.data.get(k) for k in NUMBER_KEYS})


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
    return hashlib.sha256(_canonical(list(identity)).encode("utf-8")).hexdigest()[:8]


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

    with _locked(out, None, "`ncbounds batch` or `ncbounds merge`"):
        _clean_temporaries(out)
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
                    _atomic_write(target, keep.path.read_text(encoding="utf-8"))
                    summary.copied += 1
                written.add(target)
                if other.exists() and other not in written:
                    _remove(other)
                    summary.removed += 1
                if keep.is_error:
                    summary.errors += 1
                else:
                    summary.records += 1
        for cand in (c for group in groups.values() for c in group if c.source == 0):
            if cand.path not in written and cand.path.exists():  # an error record of OUT superseded or replaced
                _remove(cand.path)
                summary.removed += 1
        _clean_temporaries(out)
    summary.seconds = time.perf_counter() - t0
    return summary
