"""Command-line front end (thin: parse options, call the library, render). Entry point ``ncbounds``.

Data goes to stdout or ``-o FILE``; progress and logs go to stderr. Exit codes: 0 ok, 1 failure,
2 usage error, 3 a batch finished with some checkpoints failed.
"""

from __future__ import annotations

import json

import click
from ncbounds.cli.common import _fail, _json_object, _options_from, _write, check_output, evaluation_options, handle_errors  # noqa: F401 - re-exported

from ncbounds.errors import NCBoundsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ncbounds")
def main() -> None:
    """ncbounds: neural-collapse statistics and generalization bounds for trained classifiers."""


@main.command()
@click.argument("checkpoint", required=False)
@evaluation_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-o", "--output", help="Write the report to this file instead of stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--per-class/--no-per-class", "per_class", default=None,
              help="Show the per-class table and imbalance geometry (default: when the largest/smallest training count exceeds 3).")
@handle_errors
def report(checkpoint, fmt, output, quiet, per_class, debug=False, **kw):
    """Report collapse metrics and bounds for one CHECKPOINT (omit it with --data features:FILE)."""
    from ncbounds.pipeline import evaluate
    from ncbounds.report.transfer_table import render_with_transfer

    check_output(output)
    opts = _options_from(kw)
    opts.progress = not quiet
    opts.debug = debug
    record = evaluate(checkpoint, opts)
    for note in record.notes:
        click.echo(f"note: {note}", err=True)
    _write(record.to_json() if fmt == "json" else render_with_transfer(record, per_class=per_class), output)  # + transfer section


@main.command()
@click.argument("checkpoint")
@click.option("--arch", help="Also build this architecture and show where the penultimate features are taken.")
@click.option("--arch-kwargs", help="JSON object of architecture keyword arguments.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow arbitrary unpickling.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def inspect(checkpoint, arch, arch_kwargs, trust_checkpoint, fmt):
    """Show a checkpoint's format, wrapper keys, saved devices, size, prefixes, unsafe types and head."""
    from ncbounds.io.checkpoints import describe, load_checkpoint, scan_unsafe_types

    try:
        info = describe(load_checkpoint(checkpoint, trust=trust_checkpoint))
        refused = None
    except NCBoundsError as exc:
        unsafe = scan_unsafe_types(checkpoint)
        if not unsafe:
            raise
        info = {"path": checkpoint, "format": "pickle that needs arbitrary unpickling", "unsafe_types": unsafe}
        refused = exc
    if arch:
        from ncbounds.features import default_layers, find_head
        from ncbounds.models import build_model

        model = build_model(arch, _json_object(arch_kwargs, "--arch-kwargs"))
        head_name, head = find_head(model)
        info["penultimate"] = f"input of {head_name} ({head.in_features} features → {head.out_features} classes)"
        info["layers_all"] = default_layers(model, head_name)
    if fmt == "json":
        click.echo(json.dumps(info, indent=2, default=str))
        if refused is not None:
            _fail(str(refused), refused.exit_code)
        return
    for key, value in info.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) if value else "—"
        elif isinstance(value, dict):
            value = json.dumps(value, default=str) if value else "—"
        click.echo(f"{key:>15}: {value}")
    if refused is not None:
        _fail(str(refused), refused.exit_code)


@main.command()
@click.option("--out", "out_dir", default="ncbounds-demo", show_default=True, help="Folder for checkpoints and results.")
@click.option("--epochs", default=8, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--tutorial", type=click.Choice(["sweep", "imbalance", "multilabel"]), default="sweep", show_default=True,
              help="sweep: the MLP sweep on digits; imbalance: a run on digits:imbalance=exp:20 (minority collapse across epochs); "
                   "multilabel: a run on superposed MNIST-1D pairs (multi-label collapse). --epochs applies to sweep.")
@click.option("--transfer", is_flag=True, help="The transfer demo instead: MLPs trained on digits 0-4, transferred to 5-9, "
                                                "scores ranked against the probe error (files in OUT/transfer).")
@handle_errors
def demo(out_dir, epochs, seed, tutorial, transfer):
    """Train a small MLP sweep on the bundled digits (CPU, no download), evaluate every checkpoint,
    print the last report and the correlation table, and write CSV and plots into OUT
    (``--tutorial imbalance|multilabel``: the per-class tutorials; ``--transfer``: the transfer demo)."""
    if transfer:  # ncbounds/demo_transfer.py
        _transfer_demo(out_dir, epochs, seed)
        return
    if tutorial != "sweep":
        from ncbounds.cli.demo_cmd import run_tutorial

        run_tutorial(tutorial, out_dir, seed)
        return
    from ncbounds.cli.demo_cmd import echo_outcome

    from ncbounds.demo import run_demo
    from ncbounds.report.correlate import render_text
    from ncbounds.report.record import EvalRecord
    from ncbounds.report.table import render_table

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    result = run_demo(out_dir, epochs=epochs, seed=seed, log=log)
    click.echo(render_table(EvalRecord.from_dict(result["last"])))
    click.echo("\ncorrelation with the test error across the sweep (Kendall τ-b; ψ/Ψ: granulated, Jiang et al. 2020):")
    click.echo(render_text(result["correlations"]))
    click.echo("")
    echo_outcome(result)


def _transfer_demo(out_dir, epochs, seed):
    from ncbounds.demo_transfer import TARGET, run_transfer_demo
    from ncbounds.report.correlate import render_text
    from ncbounds.report.transfer_ranking import render_ranking

    result = run_transfer_demo(out_dir, epochs=epochs, seed=seed, log=lambda m: click.echo(m, err=True))
    click.echo(f"models trained on digits classes 0-4, transferred to {TARGET} (frozen features):")
    click.echo(render_text(result["models"]))
    click.echo("")
    click.echo(render_ranking(result["ranking"]))
    click.echo(f"\nper model: ncbounds transfer {result['files']['results'].parent / 'runs'}/w064_e{epochs:02d}.pt --target-data {TARGET}")
    for key, path in result["files"].items():
        click.echo(f"{key:>8}: {path}")
    if result["summary"].failed:
        _fail(f"{result['summary'].failed} checkpoint(s) failed; see the *.error.json files in {result['files']['results']}.", 3)


@main.command("list-bounds")
@click.option("--explain", "name", help="Print the formula, assumptions and reference of one bound.")
@handle_errors
def list_bounds(name):
    """Print the bound catalogue (name, status, what it bounds, reference)."""
    from ncbounds.bounds.runner import EXPENSIVE_GROUPS, TARGET_GROUPS, TASK_GROUPS, explain, load_catalogue

    if name:
        click.echo(explain(name))
        return
    catalogue = load_catalogue()
    width = max(len(n) for n in catalogue)
    for spec in sorted(catalogue.values(), key=lambda s: (s.group, s.name)):
        cost = " (Monte Carlo; not in default)" if spec.group in EXPENSIVE_GROUPS else ""
        cost = " (multi-label data; added there automatically)" if spec.group in TASK_GROUPS else cost
        cost = " (target statistics; with --target-data)" if spec.group in TARGET_GROUPS else cost
        click.echo(f"{spec.name:<{width}}  {spec.status:<15}  {spec.group:<14}  {spec.bounds}{cost}\n{'':<{width}}  ↳ {spec.reference}")


@main.command()
def conventions():
    """List the metric conventions and what each changes."""
    from ncbounds.metrics.conventions import CONVENTIONS

    for conv in CONVENTIONS.values():
        diff = ", ".join(f"{k}={v}" for k, v in conv.differences().items()) or "—"
        click.echo(f"{conv.name}\n  differs from canonical: {diff}\n  {conv.description}\n")


def _register_subcommands() -> None:
    """Commands defined in their own modules (batch, exports), attached to the group."""
    from ncbounds.cli.batch_cmd import batch
    from ncbounds.cli.merge_cmd import merge
    from ncbounds.cli.results_cmd import correlate, export, plot
    from ncbounds.cli.transfer_cmd import transfer

    for command in (batch, merge, export, correlate, plot, transfer):
        main.add_command(command)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    main()
