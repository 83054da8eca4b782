"""`ncbounds export`, `ncbounds correlate`, `ncbounds plot`: commands over a results folder.

The command objects are registered on the ``main`` group by ``cli/main.py``; the error handling and
the output writer come from ``ncbounds.cli.common``.
Data goes to stdout or ``-o FILE``; notes (skipped files) go to stderr.
"""

from __future__ import annotations

import click
from ncbounds.cli.common import _write, check_output, handle_errors


def _load(results: str):
    from ncbounds.report.results import load_records

    records = load_records(results)
    if records.summary():
        click.echo(f"note: {records.summary()}", err=True)
        for line in records.skipped_lines():
            click.echo(f"note: {line}", err=True)
    return records


@click.command()
@click.argument("results")
@click.option("--format", "fmt", type=click.Choice(["csv", "csv-long", "json", "latex", "parquet"]), default="csv", show_default=True)
@click.option("-o", "--output", help="Write to this file instead of stdout (required for parquet).")
@click.option("--columns", help="Wide-table columns to keep, in order: names or patterns, e.g. checkpoint,test_error,bound.*.")
@handle_errors
def export(results, fmt, output, columns):
    """Export the records of a RESULTS folder (or JSON record file) as CSV, tidy CSV, JSON, LaTeX or Parquet."""
    from ncbounds.errors import UsageError
    from ncbounds.report.export import export as render

    if fmt == "parquet" and not output:
        raise UsageError("--format parquet is binary; give -o FILE.parquet (or -o - to send it to stdout).")
    check_output(output)
    records = _load(results)
    data = render(records, fmt, columns=columns)
    _write(data if isinstance(data, bytes) else data.rstrip("\n"), output)


@click.command()
@click.argument("results")
@click.option("--target", type=click.Choice(["test_error", "gap"]), default="test_error", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "latex"]), default="table", show_default=True)
@click.option("--hparams", help="Hyperparameters of the granulated τ, e.g. lr,width (default: every hp with ≥ 2 values, seeds excluded).")
@click.option("-o", "--output", help="Write to this file instead of stdout.")
@click.option("--against", help="Rank the models instead: Kendall τ, weighted τ, Pearson r and top-1/top-3 hits of every "
                                "transferability score (NCTI combined across the batch) against this column, "
                                "e.g. transfer.penultimate.probe_error.")
@click.option("--measures", help="With --against: the columns to rank (names or patterns; default every transfer.*.score.* and NCTI).")
@handle_errors
def correlate(results, target, fmt, hparams, output, against, measures):
    """Kendall τ-b and granulated Kendall (Jiang et al. 2020) of every measure and bound with the test error or gap;
    with --against COLUMN, the ranking of the transferability scores against that column."""
    from ncbounds.report.correlate import correlate_table, render_text
    from ncbounds.report.export import latex_table
    from ncbounds.report.results import records_to_frame

    check_output(output)
    df = records_to_frame(_load(results))
    if against:  # ranking models by transferability (report/transfer_ranking.py)
        from ncbounds.report.transfer_ranking import ranking_table, render_ranking

        table = ranking_table(df, against, measures)
        render_text = render_ranking  # noqa: F811 - the ranking's own header
    elif measures:
        from ncbounds.errors import UsageError

        raise UsageError("--measures applies with --against COLUMN.")
    else:
        table = correlate_table(df, target=target, hparams=hparams)
    if fmt == "table":
        text = render_text(table)
    elif fmt == "csv":
        text = table.to_csv(index=False, lineterminator="\n")
    else:
        text = latex_table(table, default=None)
    _write(text.rstrip("\n"), output)


@click.command()
@click.argument("results")
@click.option("--kind", type=click.Choice(["bounds", "epochs", "layers", "classes", "pacbayes"]), required=True,
              help="bounds: bound vs test error; epochs: metrics and bounds vs epoch; layers: log D_l vs layer; "
                   "classes: per-class quantities vs training count and the classifier cosine matrix (one checkpoint); "
                   "pacbayes: objective, KL and Gibbs error over the optimised PAC-Bayes steps (one checkpoint).")
@click.option("-o", "--output", required=True, help="Image file: .png or .pdf.")
@click.option("--x", "x", default="hp.epoch", show_default=True, help="Horizontal axis of --kind epochs (hp.epoch or hp.step).")
@click.option("--split", type=click.Choice(["train", "test"]), default=None,
              help="Split of --kind layers (default train) and --kind classes (default test).")
@click.option("--predictors", is_flag=True, help="Also draw predictors in --kind bounds (they have no error scale).")
@click.option("--checkpoint", help="--kind classes or pacbayes: the checkpoint whose path contains this text "
                                   "(default: the last in path order).")
@handle_errors
def plot(results, kind, output, x, split, predictors, checkpoint):
    """Plot a RESULTS folder: bounds vs test error, metrics vs epoch, log D_l vs layer, or one checkpoint's classes."""
    from ncbounds.report import plots
    from ncbounds.report.results import records_to_frame

    plots.check_path(output)
    records = _load(results)
    if kind == "bounds":
        path = plots.plot_bounds(records_to_frame(records), output, predictors=predictors)
    elif kind == "epochs":
        path = plots.plot_epochs(records_to_frame(records), output, x=x)
    elif kind == "layers":
        path = plots.plot_layers(records, output, split=split or "train")
    elif kind == "pacbayes":
        from ncbounds.report.pacbayes_plot import choose_history, plot_pacbayes
        from ncbounds.report.results import checkpoint_label

        chosen, _ = choose_history(records, checkpoint)
        path = plot_pacbayes([chosen], output)
        click.echo(f"note: optimisation of {(chosen.get('batch') or {}).get('relative_path') or checkpoint_label(chosen)}", err=True)
    else:
        from ncbounds.report.class_plots import choose_record, plot_classes
        from ncbounds.report.results import checkpoint_label

        chosen = choose_record(records, checkpoint)
        path = plot_classes([chosen], output, split=split or "test")
        click.echo(f"note: classes of {(chosen.get('batch') or {}).get('relative_path') or checkpoint_label(chosen)}", err=True)
    click.echo(f"wrote {path}", err=True)


__all__ = ["correlate", "export", "plot"]
