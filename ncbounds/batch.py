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
import secrets
import sys
import time
import traceback
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ncbounds.errors import NCBoundsError, UsageError
from ncbounds.io.sidecar import read_sidecar
from ncbounds.pipeline import EvalOptions
from ncbounds.progress import Progress

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "RESULTS_DIRNAME",
    "ERROR_SUFFIX",
    "IDENTITY_EXCLUDED",
    "BatchFailure",
    "BatchSummary",
    "find_checkpoints",
    "result_name",
    "options_hash",
    "sidecar_hash",
    "file_sha256",
    "run_batch",
    "read_results",
]

#: File extensions treated as checkpoints.
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
#: Default results folder name (inside the batch root); never searched for checkpoints.
RESULTS_DIRNAME = "ncbounds-results"
#: Suffix of a failure record (``NAME.error.json``); a success record is ``NAME.json``.
ERROR_SUFFIX = ".error.json"
#: EvalOptions fields left out of :func:`options_hash` (they cannot change the numbers beyond rounding).
IDENTITY_EXCLUDED = frozenset({"device", "batch_size", "trust_checkpoint", "progress", "debug"})

_NON_MODEL_STEMS = frozenset({"optimizer", "scheduler", "scaler", "training_args"})
_LOCK_NAME = ".ncbounds-batch.lock"
_TMP_SUFFIX = ".tmp"
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
    files and folders, folders named ``ncbounds-results`` and those under ``exclude``, training-state
    files (``optimizer.*``, ``scheduler.*``, ``scaler.*``, ``training_args.*``, ``rng_state*``),
    files that a sidecar names as ``init_checkpoint`` and symbolic links to a file found anyway
    (see the module docstring). Raises :class:`UsageError` if ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder; pass the folder that holds the checkpoints.")
    excluded = [os.path.realpath(p) for p in exclude]
    found: list[Path] = []
    for path in root.glob(glob):
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES or not path.is_file():
            continue
        rel = path.relative_to(root)
        if any(part.startswith(".") or part == RESULTS_DIRNAME for part in rel.parts):
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
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def result_name(path: str | Path, root: str | Path) -> str:
    """The stable result name of checkpoint ``path`` under ``root`` (without ``.json``).

    ``sub/epoch_03.pt`` → ``sub__epoch_03.pt``; ambiguous or very long paths get ``~`` + 10 hex digits
    of the SHA-1 of the relative path (see the module docstring).
    """
    rel = Path(path).relative_to(root).as_posix()
    parts = rel.split("/")
    name = "__".join(re.sub(r"[^A-Za-z0-9._\-]", "_", part) for part in parts)
    if all(_SAFE_COMPONENT.match(part) for part in parts) and len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:10]
    return f"{name[:_MAX_NAME - 11]}~{digest}"


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
    """SHA-256 of the canonical JSON of the evaluation options that affect the numbers.

    Every :class:`EvalOptions` field except :data:`IDENTITY_EXCLUDED`; ``bounds`` is replaced by the
    sorted ``bound_names`` it selects (resolved with ``select_bounds`` when not given).
    """
    if bound_names is None:
        from ncbounds.bounds.runner import select_bounds

        bound_names = select_bounds(options.bounds)
    values = {k: v for k, v in asdict(options).items() if k not in IDENTITY_EXCLUDED}
    values["bounds"] = sorted(bound_names)
    if values.get("shots") is not None:
        values["shots"] = list(values["shots"])
    return _sha256_text(_canonical(values))


def sidecar_hash(checkpoint: str | Path) -> str | None:
    """SHA-256 of the canonical JSON of ``checkpoint``'s merged sidecar; None if it cannot be read.

    Covers ``arch``, ``arch_kwargs``, ``data``, ``init_checkpoint`` (relative to the checkpoint's folder)
    and the hyperparameters.
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
                                    "init_checkpoint": init, "hyperparameters": side.hyperparameters}))


# ---------------------------------------------------------------------------------------------
# files


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: hidden temporary file in the same folder, fsync, os.replace."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _clean_temporaries(out: Path) -> int:
    n = 0
    for tmp in out.glob(f".*{_TMP_SUFFIX}"):
        if tmp.is_file():
            _remove(tmp)
            n += 1
    return n


@contextlib.contextmanager
def _locked(out: Path):
    """Hold an exclusive, non-blocking flock on ``out/.ncbounds-batch.lock`` (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fh = open(out / _LOCK_NAME, "a")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise NCBoundsError(
                f"another `ncbounds batch` is writing to {out}; wait for it to finish or pass a different --out."
            ) from None
        yield
    finally:
        fh.close()


def read_results(out_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(records, failures) found in a batch results folder, each sorted by result name.

    A record and a failure file of the same name (a later attempt failed while an earlier, still
    valid record exists) count as the record. Files that are not valid JSON objects are ignored.
    """
    out = Path(out_dir)
    records, failures = {}, {}
    for path in sorted(out.glob("*.json")):
        data = _read_json(path)
        if data is None:
            continue
        if path.name.endswith(ERROR_SUFFIX):
            failures[path.name[: -len(ERROR_SUFFIX)]] = data
        else:
            records[path.name[: -len(".json")]] = data
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
    return (
        batch.get("options_hash") == task.options_hash
        and batch.get("sidecar_hash") == task.sidecar_hash
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
            "options_hash": task.options_hash, "sidecar_hash": task.sidecar_hash, "created": _now()}


def _run_task(task: _Task) -> dict:
    """Evaluate one checkpoint and write its record or error file; returns a small outcome dict."""
    from ncbounds.pipeline import evaluate

    out = Path(task.out_dir)
    record_path = out / f"{task.name}.json"
    error_path = out / f"{task.name}{ERROR_SUFFIX}"
    t0 = time.perf_counter()
    try:
        record = evaluate(task.path, task.options)
        data = record.to_dict()
        data["batch"] = _batch_info(task, (record.checkpoint or {}).get("sha256"))
        text = json.dumps(data, indent=2, allow_nan=False)
        _atomic_write(record_path, text)
        _remove(error_path)
        return {"name": task.name, "relative_path": task.relative_path, "status": "done", "seconds": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - every failure is recorded; the batch goes on
        reason = _one_sentence(exc, error_path.name)
        tb = None if isinstance(exc, NCBoundsError) else traceback.format_exc()
        if task.options.debug and tb:
            sys.stderr.write(tb)
        _free_device_memory()
        return _write_failure(task, reason, type(exc).__name__, getattr(exc, "exit_code", 1), tb, t0)


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
    """Outcome of :func:`run_batch`: counts, failures, where the results are, and the exit status."""

    root: str
    out_dir: str
    options_hash: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[BatchFailure] = field(default_factory=list)
    seconds: float = 0.0

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
        text = (f"batch: {self.total} checkpoint{'s' if self.total != 1 else ''}: {self.done} evaluated, "
                f"{self.skipped} skipped (up to date), {self.failed} failed in {self.seconds:.1f}s; results in {self.out_dir}")
        if self.failed:
            text += f" (failures: *{ERROR_SUFFIX})"
        return text


def _validate(options: EvalOptions, jobs: int) -> list[str]:
    """Global checks before any work (a bad option is one usage error, not N failures); returns bound names."""
    from ncbounds.bounds.runner import select_bounds
    from ncbounds.metrics.conventions import get_convention
    from ncbounds.pipeline import resolve_device

    if not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"--jobs must be a positive integer, got {jobs}.")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {options.batch_size}.")
    if not 0 < options.delta < 1:
        raise UsageError(f"--delta must lie strictly between 0 and 1, got {options.delta}.")
    get_convention(options.convention)
    resolve_device(options.device)
    return select_bounds(options.bounds)


def run_batch(
    root: str | Path,
    out_dir: str | Path | None = None,
    options: EvalOptions | None = None,
    glob: str = "**/*",
    resume: bool = False,
    jobs: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Evaluate every checkpoint under ``root`` and write one record (or error record) each into ``out_dir``.

    ``out_dir`` defaults to ``root/ncbounds-results``. ``options`` override the sidecars (see
    :func:`ncbounds.pipeline.evaluate`); ``glob`` selects files below ``root``; ``resume`` skips
    checkpoints whose record is current (same checkpoint SHA-256, ``options_hash`` and ``sidecar_hash``);
    ``jobs`` is the number of worker processes; ``progress`` draws a bar with ETA on stderr; ``log``
    receives one line per failed checkpoint as it happens. Raises :class:`UsageError` for global
    problems (bad options, no checkpoints found); per-checkpoint failures are recorded and counted in
    the returned :class:`BatchSummary` (``exit_code`` 3). With ``jobs > 1`` the workers are spawned,
    so a script calling this must guard its entry point with ``if __name__ == "__main__":``.
    """
    t_start = time.perf_counter()
    options = dataclasses.replace(options or EvalOptions(), progress=False)
    bound_names = _validate(options, jobs)
    root_path = Path(root)
    if not root_path.is_dir():
        raise UsageError(f"{root} is not a folder; pass the folder that holds the checkpoints.")
    out = Path(out_dir) if out_dir is not None else root_path / RESULTS_DIRNAME
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NCBoundsError(f"cannot create the results folder {out} ({exc.strerror}); pass a writable --out.") from None
    ohash = options_hash(options, bound_names)
    summary = BatchSummary(root=str(root_path.resolve()), out_dir=str(out), options_hash=ohash)
    with _locked(out):
        _clean_temporaries(out)
        exclude = [out] + ([options.init] if options.init else [])
        checkpoints = find_checkpoints(root_path, glob, exclude=exclude)  # --init is not a trained model either
        if not checkpoints:
            raise UsageError(
                f"no checkpoints ({', '.join(CHECKPOINT_SUFFIXES)}) under {root} match {glob!r}; check the folder or --glob."
            )
        summary.total = len(checkpoints)
        tasks: list[_Task] = []
        for path in checkpoints:
            task = _Task(path=str(path.resolve()), relative_path=path.relative_to(root_path).as_posix(),
                         name=result_name(path, root_path), root=summary.root, out_dir=str(out), options=options,
                         options_hash=ohash, sidecar_hash=sidecar_hash(path))
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
            if jobs == 1 or len(tasks) <= 1:
                for task in tasks:
                    collect(_run_task(task))
            else:
                _run_parallel(tasks, min(jobs, len(tasks)), collect)
        finally:
            bar.close()
            _clean_temporaries(out)
    summary.failures.sort(key=lambda f: f.relative_path)
    summary.seconds = time.perf_counter() - t_start
    return summary


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
