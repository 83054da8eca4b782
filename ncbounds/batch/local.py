"""The local executor: tasks in this process (``jobs=1``) or in N spawned worker processes.

``jobs=N`` evaluates in N worker processes (``spawn`` context, so CUDA works in the workers) with
``--threads`` (default :func:`ncbounds.threads.default_threads`: the cores this process may use, divided
by N) torch threads each; every evaluation is seeded by ``options.seed``, so
records equal those of ``jobs=1`` (timings and ``created`` aside). If a worker dies (killed, out of
memory), the checkpoints it may have been evaluating (at most ``N``) get an error record saying so and
the rest continue in a fresh pool; ``--resume`` re-runs them.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from ncbounds.batch.tasks import Task, run_task, write_failure
from ncbounds.threads import default_threads

__all__ = ["run_parallel"]

def _init_worker(threads: int) -> None:
    """Worker start-up: limit torch's intra-op threads so N workers share the cores."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_parallel(tasks: list[Task], jobs: int, collect: Callable[[dict], None]) -> None:
    """Evaluate ``tasks`` in ``jobs`` spawned worker processes, at most ``jobs`` in flight.

    A worker that dies breaks the pool: the tasks in flight then get an error record (the one that
    killed the worker cannot be told apart) and the remaining tasks continue in a fresh pool. Every
    pool makes progress (its first submission cannot fail), so this ends.
    """
    threads = (tasks[0].options.threads if tasks else None) or default_threads(jobs)
    ctx = multiprocessing.get_context("spawn")
    pending = deque(tasks)
    while pending:
        pool = cf.ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=ctx,
                                      initializer=_init_worker, initargs=(threads,))
        in_flight: dict[cf.Future, Task] = {}
        broken = False
        try:
            while (pending or in_flight) and not broken:
                while pending and len(in_flight) < jobs:
                    task = pending.popleft()
                    try:
                        in_flight[pool.submit(run_task, task)] = task
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

def _worker_died(task: Task) -> dict:
    reason = (f"the worker process evaluating {task.relative_path} (or one beside it) died, killed or out of memory; "
              f"re-run with --resume, perhaps with fewer --jobs or a smaller --batch-size.")
    return write_failure(task, reason, "BrokenProcessPool", 1, None, time.perf_counter())
