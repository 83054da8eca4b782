"""``ncbounds demo --tutorial imbalance|multilabel``: run a per-class tutorial and print its table across epochs."""

from __future__ import annotations

import click
from ncbounds.cli.common import _fail

_COLUMNS = {
    "imbalance": ("epoch", "test_error", "majority_test_error", "minority_test_error", "minority_cos_W", "majority_cos_W",
                  "cross_cos_W", "etf_cos", "nc1", "nc1_weighted", "seli_distance_W"),
    "multilabel": ("epoch", "train_subset_error", "test_subset_error", "test_hamming_error", "nc1_single", "ml_pair_angle",
                   "test_ml_pair_angle", "nc2_etf_error_means"),
}


def run_tutorial(kind: str, out_dir: str, seed: int) -> None:
    """Train, evaluate, print the per-epoch table and the files written (stderr: progress and notes)."""
    from ncbounds.demo_classes import run_imbalance_tutorial, run_multilabel_tutorial
    from ncbounds.report.table import _grid, fmt

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    runner = run_imbalance_tutorial if kind == "imbalance" else run_multilabel_tutorial
    result = runner(out_dir, seed=seed, log=log)
    if kind == "imbalance":
        counts = result["counts"]
        click.echo(f"training counts per class {counts['train']} (test {counts['test']}); minority classes {result['minority_classes']}")
        click.echo("per epoch: test errors of the majority / minority classes, block cosines of the classifier rows (train), "
                   "NC1, weighted NC1 and the SELI distance of W (train):")
    else:
        click.echo("per epoch (top-m decisions): subset and Hamming errors, NC1 of the multiplicity-1 samples and the "
                   "normalized pair angle (train; test) — 0 under multi-label collapse:")
    cols = _COLUMNS[kind]
    click.echo("\n".join(_grid(list(cols), [[str(r[c]) if c == "epoch" else fmt(r[c]) for c in cols] for r in result["rows"]])))
    click.echo("")
    echo_outcome(result)


def echo_outcome(result: dict) -> None:
    """The files a demo wrote, its notes (stderr), and exit 3 when a checkpoint failed."""
    for key, path in result["files"].items():
        click.echo(f"{key:>13}: {path}")
    for note in result["notes"]:
        click.echo(f"note: {note}", err=True)
    if result["summary"].failed:
        _fail(f"{result['summary'].failed} checkpoint(s) failed; see the *.error.json files in {result['files']['results']}.", 3)
