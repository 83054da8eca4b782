"""`ncbounds transfer`: the report of one checkpoint plus the transfer of its frozen features to a target.

Registered on the ``main`` group by ``cli/main.py``. It takes every evaluation option of ``report``;
``--target-data`` is required and ``--source-data`` is another name for ``--data``.
"""

from __future__ import annotations

import click
from ncbounds.cli.common import _options_from, _write, check_output, evaluation_options, handle_errors


@click.command()
@click.argument("checkpoint", required=False)
@evaluation_options
@click.option("--source-data", help="Source data spec (the same as --data; default: the sidecar's data).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-o", "--output", help="Write the report to this file instead of stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def transfer(checkpoint, source_data, fmt, output, quiet, debug=False, **kw):
    """Transfer the frozen features of CHECKPOINT to --target-data: one pass per target split, then target
    NCC error, linear probe, few-shot episodes, transferability scores and transfer bounds per layer."""
    from ncbounds.errors import UsageError
    from ncbounds.pipeline import evaluate
    from ncbounds.report.transfer_table import render_with_transfer

    if not kw.get("target_data"):
        raise UsageError("ncbounds transfer needs --target-data SPEC (e.g. digits:classes=5-9, npz:FILE, features:FILE).")
    if source_data and kw.get("data") and source_data != kw["data"]:
        raise UsageError(f"--source-data {source_data!r} and --data {kw['data']!r} disagree; give one of them.")
    kw["data"] = source_data or kw.get("data")
    check_output(output)
    opts = _options_from(kw)
    opts.progress = not quiet
    opts.debug = debug
    record = evaluate(checkpoint, opts)
    for note in record.notes + list(record.transfer.get("notes") or []):
        click.echo(f"note: {note}", err=True)
    _write(record.to_json() if fmt == "json" else render_with_transfer(record), output)


__all__ = ["transfer"]
