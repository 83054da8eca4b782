"""``run_batch``: every checkpoint under a folder → one JSON record (or error record) per checkpoint.

It finds the checkpoints (:mod:`.discovery`), checks every sidecar against the ``--trust-code`` rule
before any work (:mod:`ncbounds.trust`), selects a shard (:mod:`.shards`), skips current records with
``resume`` (:mod:`.identity`), and runs the tasks (:mod:`.tasks`) with the local executor (:mod:`.local`)
or on Ray (:mod:`.ray`, one Ray task per checkpoint: the tasks only evaluate and the driver writes the
same files with the same code, so records, error records, ``--resume`` and every reader of a results
folder are the same for both backends).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ncbounds.batch.discovery import CHECKPOINT_SUFFIXES, RESULTS_DIRNAME, discover, find_checkpoints, result_name
from ncbounds.batch.files import ERROR_SUFFIX, clean_temporaries, locked, read_json, remove
from ncbounds.batch.identity import FileHashes, inputs_hash, no_input_files, options_hash, record_is_current, sidecar_hash
from ncbounds.batch.local import run_parallel
from ncbounds.batch.shards import parse_shard, select_shard
from ncbounds.batch.tasks import Task, finish_task, run_task
from ncbounds.errors import Interrupted, NCBoundsError, UsageError
from ncbounds.io.sidecar import read_sidecar
from ncbounds.options import EvalOptions
from ncbounds.progress import Progress
from ncbounds.threads import default_threads

__all__ = ["BACKENDS", "BatchFailure", "BatchSummary", "run_batch"]

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
        """0 when every checkpoint has a record, 3 when some failed."""
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
    from ncbounds.batch.ray import import_ray

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
    caps the tasks in flight (see :mod:`ncbounds.batch.ray`).

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
    if task_options.threads is None:  # share the cores: --jobs workers locally, the CPUs Ray gives a task
        per_task = max(1, int(cpus)) if backend == "ray" else default_threads(jobs or 1)
        task_options = dataclasses.replace(task_options, threads=per_task)
    with locked(out, shard):
        exclude = [out] + ([options.init] if options.init else [])
        checkpoints, hidden = discover(root_path, glob, exclude)  # --init is not a trained model either
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
        clean_temporaries(out, names if shard else None)
        summary.total = len(checkpoints)
        tasks: list[Task] = []
        hashes = FileHashes()
        for path in checkpoints:
            task = Task(path=str(path.resolve()), relative_path=path.relative_to(root_path).as_posix(),
                         name=result_name(path, root_path), root=summary.root, out_dir=str(out), options=task_options,
                         options_hash=ohash, sidecar_hash=sidecar_hash(path), inputs_hash=inputs_hash(path, options, hashes),
                         files_free=no_input_files(path, options))
            if resume and record_is_current(read_json(out / f"{task.name}.json"), task, None):
                summary.skipped += 1
                remove(out / f"{task.name}{ERROR_SUFFIX}")  # left by a run killed between the two writes
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
                    from ncbounds.batch.ray import run_on_ray

                    run_on_ray(tasks, lambda task, outcome, t0: collect(finish_task(task, outcome, t0)), address=address,
                               cpus_per_task=cpus, gpus_per_task=gpus, max_in_flight=jobs, debug=options.debug)
            elif (jobs or 1) == 1 or len(tasks) <= 1:
                for task in tasks:
                    collect(run_task(task))
            else:
                run_parallel(tasks, min(jobs, len(tasks)), collect)
        except KeyboardInterrupt:
            bar.close()
            raise Interrupted(
                f"{summary.done + summary.failed} of {len(tasks)} checkpoints finished in this run ({summary.done} records, "
                f"{summary.failed} failures; {summary.skipped} were already up to date) and are kept in {out}; run the same "
                f"command with --resume to evaluate the rest."
            ) from None
        finally:
            bar.close()
            clean_temporaries(out, names if shard else None)
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
