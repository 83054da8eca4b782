"""``ncbounds batch DIR``: evaluate every checkpoint of a folder, one JSON record each (thin front end).

Registered by ``cli/main.py`` with ``main.add_command(batch)``; the shared options and error handling
come from ``ncbounds.cli.common`` (not ``ncbounds.cli.main``), so importing this module first is safe. The work is done by
:func:`ncbounds.batch.run_batch`; see the :mod:`ncbounds.batch` package for result names, ``--resume`` identity
and which files count as checkpoints, and :mod:`ncbounds.batch.ray` for ``--backend ray``.
"""

from __future__ import annotations

import sys

import click
from ncbounds.cli.common import _options_from, evaluation_options, handle_errors


def _log(message: str) -> None:
    prefix = "\r\x1b[K" if sys.stderr.isatty() else ""  # do not append to an in-place progress bar
    click.echo(prefix + message, err=True)


@click.command("batch")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@evaluation_options
@click.option("--glob", "pattern", default="**/*", show_default=True,
              help="Which files under DIR to consider (pathlib glob; only .pt .pth .ckpt .safetensors .bin count).")
@click.option("--out", "out_dir", help="Results folder (default: DIR/ncbounds-results); one NAME.json or NAME.error.json per checkpoint.")
@click.option("--resume", is_flag=True,
              help="Skip checkpoints whose record is up to date (same checkpoint sha256, options and sidecar); re-run failures.")
@click.option("--jobs", type=int,
              help="Local backend: worker processes (default 1). Ray backend: most tasks in flight (default: twice what "
                   "the cluster runs at once); without --address also sizes the local cluster (jobs × cpus-per-task CPUs, "
                   "default every core).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine's processes; ray: one Ray task per checkpoint (pip install 'ncbounds[ray]').")
@click.option("--address", help="Ray backend: 'auto' or HOST:PORT of a running cluster (default: start a private local one).")
@click.option("--cpus-per-task", type=float, help="Ray backend: CPUs per task, also its torch threads (default 1).")
@click.option("--gpus-per-task", type=float, help="Ray backend: GPUs per task, fractions allowed (default 0: --device auto means cpu).")
@click.option("--shard", "shard_text",
              help="Evaluate only shard i of N (0-based, e.g. 2/8; by a hash of each checkpoint's relative path). Default: from "
                   "SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT in a SLURM array job; 0/1 = all.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def batch(directory, pattern, out_dir, resume, jobs, backend, address, cpus_per_task, gpus_per_task, shard_text, quiet,
          debug=False, **kw):
    """Evaluate every checkpoint under DIRECTORY (sidecars give arch/data; options override them).

    Writes one record per checkpoint atomically into --out; a failing checkpoint gets NAME.error.json
    with its reason and the others go on. Exit code 0 when all succeeded, 3 when some failed.
    With --shard (or in a SLURM array job) only one shard is evaluated; `ncbounds merge` combines
    the shards' folders.
    """
    from ncbounds.batch import parse_shard, run_batch, shard_from_env

    opts = _options_from(kw)
    opts.debug = debug
    if shard_text is not None:
        shard = parse_shard(shard_text)
    else:
        shard = shard_from_env()
        if shard is not None:
            _log(f"shard {shard[0]}/{shard[1]} from SLURM_ARRAY_TASK_ID (pass --shard 0/1 to evaluate every checkpoint)")
    if shard == (0, 1):
        shard = None
    summary = run_batch(directory, out_dir, opts, glob=pattern, resume=resume, jobs=jobs, progress=not quiet, log=_log,
                        backend=backend, address=address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task,
                        shard=shard)
    click.echo(summary.line(), err=True)
    if summary.exit_code:
        sys.exit(summary.exit_code)


__all__ = ["batch"]
