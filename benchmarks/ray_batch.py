"""Speed-up of `ncbounds batch --backend ray` with 1 and 2 workers on a local Ray cluster.

Usage:  python benchmarks/ray_batch.py [--checkpoints 24] [--width 512] [--depth 4] [--workers 1 2] [--local]

Makes ``--checkpoints`` MLPs (``--width``, ``--depth``, random initializations, different seeds) for
the bundled digits data, each with a sidecar, and evaluates the folder with ``--layers all`` and the
default bounds (spectral norms, margins, collapse bounds: about a second of CPU per checkpoint, so
Ray's per-task overhead of milliseconds is small). For each worker count W: a fresh local cluster
with W CPUs (``ray.init(address="local", num_cpus=W, include_dashboard=False)``), tasks of 1 CPU and
1 torch thread (so at most W run at once), W warm-up tasks that import torch and ncbounds in every
worker, then the timed ``run_batch(..., backend="ray", cpus_per_task=1)`` in this process's
connection. Printed: cluster start-up, worker warm-up and batch wall time per W, seconds per
checkpoint and the speed-up over W = 1 (batch wall time only; start-up and warm-up are fixed costs
paid once per batch). The records of every W are checked to be equal value for value.
``--local`` adds the local backend with ``jobs=1`` and ``jobs=2`` (plain processes, 1 torch thread each)
as reference lines: their ratio is what two cores of this machine give for this workload without Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from ncbounds.batch import ERROR_SUFFIX, run_batch  # noqa: E402
from ncbounds.models import build_model  # noqa: E402
from ncbounds.pipeline import EvalOptions  # noqa: E402

NUMBER_KEYS = ("layers", "errors", "bounds", "layerwise")


def make_checkpoints(root: Path, count: int, width: int, depth: int) -> str:
    arch = f"mlp:input_dim=64,num_classes=10,width={width},depth={depth}"
    for i in range(count):
        torch.manual_seed(1000 + i)
        path = root / f"ckpt_{i:02d}.pt"
        torch.save(build_model(arch).state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps({"arch": arch, "data": "digits", "seed": 1000 + i}))
    return arch


def _warm(delay: float) -> int:
    import ncbounds.pipeline  # noqa: F401 - what every evaluation imports first

    time.sleep(delay)  # hold the CPU so the next warm-up task lands on another worker
    return os.getpid()


def numbers(out: Path) -> dict:
    return {p.name: {k: json.loads(p.read_text()).get(k) for k in NUMBER_KEYS}
            for p in sorted(out.glob("*.json")) if not p.name.endswith(ERROR_SUFFIX)}


def task_seconds(out: Path) -> float:
    """Sum over the records of the evaluation time measured inside the tasks (loading included)."""
    return sum(json.loads(p.read_text())["timings"]["total"] for p in out.glob("*.json") if not p.name.endswith(ERROR_SUFFIX))


def run_ray(root: Path, out: Path, workers: int, options: EvalOptions) -> dict:
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    t1 = time.perf_counter()
    try:
        warm = ray.remote(num_cpus=1)(_warm)
        pids = set(ray.get([warm.remote(1.0) for _ in range(workers)]))
        t2 = time.perf_counter()
        summary = run_batch(root, out, options, progress=False, backend="ray", cpus_per_task=1)
        t3 = time.perf_counter()
    finally:
        ray.shutdown()
    assert summary.failed == 0, summary.failures
    return {"start": t1 - t0, "warm": t2 - t1, "batch": t3 - t2, "warm_workers": len(pids), "in_tasks": task_seconds(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=24)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--local", action="store_true",
                        help="also time the local backend with jobs=1 and jobs=2 (1 torch thread each): the machine's own ceiling")
    args = parser.parse_args()

    try:
        import ray
    except ModuleNotFoundError:
        sys.exit("this benchmark needs Ray: pip install 'ncbounds[ray]'")
    torch.set_num_threads(1)
    options = EvalOptions(bounds="default", layers="all", device="cpu")
    with tempfile.TemporaryDirectory(prefix="ncb-raybench-") as tmp:
        root = Path(tmp) / "runs"
        root.mkdir()
        arch = make_checkpoints(root, args.checkpoints, args.width, args.depth)
        print(f"ray {ray.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs; {args.checkpoints} checkpoints of "
              f"{arch} on digits, --layers all, --bounds default", flush=True)
        rows, results = [], {}
        if args.local:  # the same batch in 1 and 2 plain processes: what this machine allows without Ray
            for jobs in (1, 2):
                out = Path(tmp) / f"out-local-{jobs}"
                t0 = time.perf_counter()
                run_batch(root, out, options, progress=False, jobs=jobs)
                rows.append((f"local jobs={jobs}", None, None, time.perf_counter() - t0, task_seconds(out)))
                results[f"local{jobs}"] = numbers(out)
        for workers in args.workers:
            out = Path(tmp) / f"out-ray-{workers}"
            t = run_ray(root, out, workers, options)
            rows.append((f"ray {workers} worker{'s' if workers != 1 else ''}", t["start"], t["warm"], t["batch"], t["in_tasks"]))
            results[workers] = numbers(out)
            print(f"  done: {rows[-1][0]} ({t['warm_workers']} warm worker processes)", flush=True)
        first = next(iter(results.values()))
        same = all(r == first for r in results.values())
        base = next((r[3] for r in rows if r[0].startswith("ray 1 ")), rows[0][3])
        print("\n| run | cluster start (s) | warm-up (s) | batch wall (s) | s / checkpoint | summed time inside tasks (s) "
              "| speed-up vs ray 1 worker |")
        print("|---|---|---|---|---|---|---|")
        for name, start, warm, wall, inside in rows:
            fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
            print(f"| {name} | {fmt(start)} | {fmt(warm)} | {wall:.1f} | {wall / args.checkpoints:.2f} | {inside:.1f} "
                  f"| {base / wall:.2f}× |")
        print(f"\nrecords equal value for value across runs: {same}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
