"""``ncbounds batch DIR``: evaluate every checkpoint of a folder, one JSON record each (thin front end).

Registered by ``cli/main.py`` with ``main.add_command(batch)``; the shared options and error handling
come from ``cli.common`` (not ``cli.main``), so importing this module first is safe. The work is done by
:func:`ncbounds.batch.run_batch`; see its module docstring for result names, ``--resume`` identity
and which files count as checkpoints.
"""

from __future__ import annotations

import sys

import click

from cli.common import _options_from, evaluation_options, handle_errors


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
@click.option("--jobs", default=1, show_default=True, type=int, help="Number of local worker processes.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def batch(directory, pattern, out_dir, resume, jobs, quiet, debug=False, **kw):
    """Evaluate every checkpoint under DIRECTORY (sidecars give arch/data; options override them).

    Writes one record per checkpoint atomically into --out; a failing checkpoint gets NAME.error.json
    with its reason and the others go on. Exit code 0 when all succeeded, 3 when some failed.
    """
    from ncbounds.batch import run_batch

    opts = _options_from(kw)
    opts.debug = debug
    summary = run_batch(directory, out_dir, opts, glob=pattern, resume=resume, jobs=jobs, progress=not quiet, log=_log)
    click.echo(summary.line(), err=True)
    if summary.exit_code:
        sys.exit(summary.exit_code)


__all__ = ["batch"]
