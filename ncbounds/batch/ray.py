"""Ray backend of ``ncbounds batch`` (``--backend ray``): one Ray task per checkpoint.

Only :func:`run_on_ray` is called by :func:`ncbounds.batch.run.run_batch`; everything else here is
internal. Ray is an optional dependency (``pip install 'ncbounds[ray]'``) and is imported only when
this backend is used.

**Who does what.** Each task runs :func:`ncbounds.batch.tasks.evaluate_task` on a Ray worker: it evaluates
one checkpoint with ``torch.set_num_threads(int(cpus_per_task))`` and returns the record as a dict,
or a failure (one-sentence reason, exception type, exit code, traceback). It never touches the
results folder. The **driver** (the process that runs ``ncbounds batch``) writes every record and
error file with the same atomic code as the local backend, so ``--resume``, ``export``,
``correlate`` and ``merge`` cannot tell the backends apart; only the driver needs write access to
``--out``. The workers need the checkpoints, sidecars and data at the same absolute paths as the
driver (one machine, or a shared file system); each task runs in the driver's working directory
when that folder exists on its node, so relative ``--data``/``--arch``/``--init`` paths resolve as
they do locally.

**Failures and retries.**

* a worker process or node that dies (killed, out of memory, node lost): Ray runs the task once more
  (``max_retries=1``); if that also dies the driver writes an error record naming the Ray error;
* :class:`~ncbounds.errors.NCBoundsError` (corrupt checkpoint, wrong architecture, bad data, …):
  a deterministic input problem, recorded at once without a retry (the same record as locally);
* any other exception: possibly transient (a CUDA hiccup, a flaky file system), so the driver
  submits the task once more (with ``max_retries=0``); a second failure is recorded. A task is thus
  run at most twice for each of these two kinds of failure;
* a failure of the Ray machinery around the task (arguments or result that cannot be
  (de)serialized, a ``RayTaskError``) counts as an unexpected exception.

**Resources.** Each task asks for ``num_cpus=cpus_per_task`` and ``num_gpus=gpus_per_task``, so the
cluster's scheduler decides how many run at once. With ``--device auto`` a task evaluates on
``cuda`` when it was given GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``) and on ``cpu`` otherwise (a task
without GPUs must not use GPUs that Ray did not assign to it); ``options.device`` is not part of
the resume identity, so this changes no identity. A request that the cluster cannot satisfy at all
(more CPUs or GPUs per task than it has) is a usage error instead of tasks that wait forever.
``max_in_flight`` (``--jobs`` with this backend) caps how many tasks are submitted at once; without
it the cap is twice the number of tasks the cluster can run at once, so a lost node loses little
and the driver's memory stays small.

**Clusters.** ``address=None`` starts a private local cluster (``ray.init(address="local",
num_cpus=…, include_dashboard=False)``) with ``max_in_flight × cpus_per_task`` CPUs, or every core
when ``max_in_flight`` is not given, and stops it at the end. ``address="auto"`` or ``HOST:PORT``
connects to a running cluster and only disconnects at the end. If this process is already
connected (``ray.is_initialized()``), that connection is used and left open. Ray's own
environment variables apply as usual; in particular a cluster started with token authentication
(``RAY_AUTH_MODE=token``, the default for ``ray start`` in recent Ray) needs the same
``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN`` (or ``~/.ray/auth_token``) in the driver's environment, else
``ray.init`` keeps retrying. ``RAY_ADDRESS`` is not consulted without ``--address`` (a private
cluster is started), so ``--address auto`` is the way to use the cluster it names.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import deque
from typing import Callable

from ncbounds.errors import NCBoundsError, UsageError
from ncbounds.threads import available_cores

__all__ = ["INSTALL_HINT", "import_ray", "run_on_ray"]

#: The one-line message shown when the ray backend is asked for but Ray is not installed.
INSTALL_HINT = "the ray backend needs `pip install 'ncbounds[ray]'`"


def import_ray():
    """Import and return the ``ray`` module; :class:`UsageError` (exit 2) with :data:`INSTALL_HINT` if missing."""
    try:
        import ray
    except ModuleNotFoundError as exc:
        if (exc.name or "ray").split(".")[0] != "ray":
            raise
        raise UsageError(f"{INSTALL_HINT}.") from None
    return ray


# ---------------------------------------------------------------------------------------------
# the task (runs on a Ray worker)


def evaluate_checkpoint(task, threads: int, cwd: str | None) -> dict:
    """Ray task body: evaluate ``task`` with ``threads`` torch threads in ``cwd``; the outcome, no files."""
    import torch

    from ncbounds.batch.tasks import evaluate_task

    torch.set_num_threads(max(1, threads))
    with _working_directory(cwd):
        return evaluate_task(task)


@contextlib.contextmanager
def _working_directory(cwd: str | None):
    previous = os.getcwd()
    moved = False
    if cwd and os.path.isdir(cwd) and cwd != previous:
        os.chdir(cwd)
        moved = True
    try:
        yield
    finally:
        if moved:
            with contextlib.suppress(OSError):
                os.chdir(previous)


_REMOTE = None


def _remote(ray):
    """The task as a Ray remote function (created once per process; pickled by reference to this module)."""
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = ray.remote(max_retries=1, retry_exceptions=False)(evaluate_checkpoint)
    return _REMOTE


# ---------------------------------------------------------------------------------------------
# the driver


@contextlib.contextmanager
def _connected(ray, address: str | None, max_in_flight: int | None, cpus_per_task: float, debug: bool):
    """Connect to (or start) a cluster for the duration of the batch; disconnect/stop it afterwards."""
    if ray.is_initialized():
        yield
        return
    common = {"logging_level": logging.DEBUG if debug else logging.ERROR, "log_to_driver": debug}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            cpus = math.ceil(max_in_flight * cpus_per_task) if max_in_flight else available_cores()
            ray.init(address="local", num_cpus=max(1, cpus), include_dashboard=False, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        first = " ".join(str(exc).split())[:300]
        hint = ("start one with `ray start --head` (or drop --address to use a private local cluster)" if address
                else "check that Ray works here (`python -c 'import ray; ray.init()'`)")
        raise NCBoundsError(f"cannot connect to {where} ({type(exc).__name__}: {first}); {hint}.") from None
    try:
        yield
    finally:
        ray.shutdown()


def _capacity(ray, cpus_per_task: float, gpus_per_task: float) -> int:
    """How many tasks the cluster can run at once now; UsageError if not even one fits."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if cpus_per_task > cpus:
        raise UsageError(f"each Ray task asks for {cpus_per_task:g} CPUs (--cpus-per-task) but the cluster has {cpus:g}; "
                         f"lower --cpus-per-task or add nodes.")
    if gpus_per_task > gpus:
        raise UsageError(f"each Ray task asks for {gpus_per_task:g} GPUs (--gpus-per-task) but the cluster has {gpus:g}; "
                         f"lower --gpus-per-task or connect to a cluster with GPUs (--address).")
    fit = int(cpus // cpus_per_task)
    if gpus_per_task > 0:
        fit = min(fit, int(gpus // gpus_per_task))
    return max(1, fit)


def _lost(task, exc: BaseException) -> dict:
    """Outcome for a task that Ray lost (its worker or node died, also on Ray's one retry, or it was cancelled)."""
    first = " ".join(str(exc).split()).split(". ")[0].rstrip(".")  # Ray's first sentence keeps the reason one sentence
    first = first[:200] + ("..." if len(first) > 200 else "")
    what = f"{type(exc).__name__}{': ' + first if first else ''}"
    if type(exc).__name__ == "TaskCancelledError":
        reason = f"the Ray task evaluating {task.relative_path} was cancelled ({what}); re-run with --resume."
    else:
        reason = (f"the Ray task evaluating {task.relative_path} was lost twice ({what}): its worker process or node died, "
                  f"killed or out of memory; re-run with --resume, perhaps with more memory per task or a smaller --batch-size.")
    return {"status": "failed", "reason": reason, "type": type(exc).__name__, "exit_code": 1, "traceback": None,
            "retry": False}


def _task_error(task, exc: BaseException) -> dict:
    """Outcome for an application-level Ray error raised around the task body (treated as unexpected)."""
    from ncbounds.batch.files import ERROR_SUFFIX
    from ncbounds.batch.tasks import one_sentence

    cause = getattr(exc, "cause", None)
    shown = cause if isinstance(cause, BaseException) else exc
    return {"status": "failed", "reason": one_sentence(shown, f"{task.name}{ERROR_SUFFIX}"), "type": type(shown).__name__,
            "exit_code": 1, "traceback": str(exc), "retry": True}


def run_on_ray(
    tasks: list,
    finish: Callable[[object, dict, float], None],
    *,
    address: str | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
    max_in_flight: int | None = None,
    debug: bool = False,
) -> None:
    """Evaluate ``tasks`` (:class:`ncbounds.batch.tasks.Task`) as Ray tasks; ``finish(task, outcome, t0)`` per task, in the driver.

    ``finish`` writes the record or error file and counts it; it is called exactly once per task, in
    the order the results arrive. See the module docstring for clusters, resources and retries.
    """
    ray = import_ray()
    from ray import exceptions as rex

    threads = max(1, int(cpus_per_task))
    cwd = os.getcwd()
    with _connected(ray, address, max_in_flight, cpus_per_task, debug):
        capacity = _capacity(ray, cpus_per_task, gpus_per_task)
        window = max_in_flight or 2 * capacity
        remote = _remote(ray).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task)
        retry_remote = _remote(ray).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=0)
        pending = deque((task, 0) for task in tasks)
        in_flight: dict = {}  # ObjectRef -> (task, attempt, t0)
        try:
            while pending or in_flight:
                while pending and len(in_flight) < window:
                    task, attempt = pending.popleft()
                    fn = remote if attempt == 0 else retry_remote
                    in_flight[fn.remote(task, threads, cwd)] = (task, attempt, time.perf_counter())
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    task, attempt, t0 = in_flight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except rex.RayTaskError as exc:  # raised around the task body: unexpected
                        outcome = _task_error(task, exc)
                    except rex.RayError as exc:  # worker/node died again after Ray's own retry, or cancelled
                        outcome = _lost(task, exc)
                    if outcome.get("status") != "done" and outcome.get("retry") and attempt == 0:
                        pending.appendleft((task, 1))  # an unexpected exception: one more attempt
                        continue
                    finish(task, outcome, t0)
        finally:
            for ref in in_flight:  # interrupted: do not leave work running on the cluster
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
