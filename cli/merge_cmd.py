"""``ncbounds merge OUT RESULTS...``: combine batch results folders (e.g. one per shard) into OUT.

Thin front end of :func:`ncbounds.batch.merge_results` (duplicates, conflicts and name clashes are
described there); conflicts, clashes and ignored files are listed on stderr, then one summary line.
Exit code 0 when OUT was written (whatever it reports), 1 or 2 when it could not be.
"""

from __future__ import annotations

import click
from ncbounds.cli.common import handle_errors


@click.command("merge")
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@handle_errors
def merge(out, results):
    """Merge the record folders RESULTS (e.g. the --out of each shard) into OUT.

    Identical duplicates (same checkpoint sha256, options and sidecar) are kept once, error records
    superseded by a success are dropped, conflicting records are reported and the newest kept.
    OUT then works with `batch --resume`, `export`, `correlate` and `plot` like any results folder.
    """
    from ncbounds.batch import merge_results

    summary = merge_results(out, results, log=lambda line: click.echo(line, err=True))
    click.echo(summary.line(), err=True)


__all__ = ["merge"]
