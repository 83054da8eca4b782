"""Two tutorials on per-class geometry: an imbalanced run and a multi-label run, end to end on the CPU.

* :func:`run_imbalance_tutorial` trains an MLP on ``digits:imbalance=exp:20`` (a long-tailed training
  split, the test split untouched) with weight decay, saves checkpoints at growing epochs, batch-evaluates
  them and returns, per epoch, the minority-collapse block cosines of the classifier rows (Fang et al.
  2021), weighted NC1 and the SELI distance (Thrampoulidis et al. 2022) beside the test errors of the
  majority and minority classes.
* :func:`run_multilabel_tutorial` trains an MLP on ``mnist1d-pairs`` (half of the MNIST-1D samples are
  superposed pairs carrying both labels) with the pick-all-label loss of Li, Li, Wang & Qu (2024) —
  the cross-entropy of the softmax against every positive label — and evaluates it with the top-m
  decision rule of that paper, returning nc1_single, ml_pair_angle and the subset / Hamming errors per epoch.

Each writes ``runs/`` (checkpoints with sidecars), ``results/`` (one record per checkpoint), the wide
and long CSV exports and the ``plot --kind classes`` figure of the last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ncbounds.demo import start_mlp_run, train_epoch
from ncbounds.errors import NCBoundsError
from ncbounds.io.output import save_torch, write_atomic

IMBALANCE_DATA = "digits:imbalance=exp:20"
MULTILABEL_DATA = "mnist1d-pairs:n=5000"
IMBALANCE_EPOCHS = (1, 3, 10, 30, 100, 300)
MULTILABEL_EPOCHS = (1, 3, 10, 30, 100)


def _pick_all_label_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Li et al. (2024) pick-all-label loss: Σ_{k positive} −log softmax(z)_k, averaged over samples."""
    return -(torch.log_softmax(logits, 1) * targets).sum(1).mean()


def train_run(out_dir: str | Path, data_spec: str, save_epochs, width: int = 128, depth: int = 2, lr: float = 0.05,
              weight_decay: float = 5e-4, batch_size: int = 64, seed: int = 0, log=None) -> list[Path]:
    """Train an MLP on ``data_spec`` (cross-entropy; the pick-all-label loss for multi-hot labels) with SGD
    (momentum 0.9), saving ``epoch_XXX.pt`` with a sidecar ``{"epoch", "lr", "width", "weight_decay",
    "seed"}`` at each epoch of ``save_epochs``; the folder's ``ncbounds.json`` names the architecture and data."""
    out, data, model = start_mlp_run(out_dir, data_spec, width, depth, seed)
    x = torch.as_tensor(data.train.x)
    y = torch.as_tensor(data.train.y)
    multilabel = data.task == "multilabel"
    loss_fn = (lambda z, t: _pick_all_label_loss(z, t.to(z.dtype))) if multilabel else torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for epoch in range(1, max(save_epochs) + 1):
        total = train_epoch(model, opt, loss_fn, x, y, batch_size, gen)
        if epoch in save_epochs:
            path = out / f"epoch_{epoch:03d}.pt"
            save_torch(model.state_dict(), path)
            write_atomic(path.with_suffix(".json"), json.dumps({"epoch": epoch, "lr": lr, "width": width, "weight_decay": weight_decay,
                                                              "seed": seed}))
            paths.append(path)
            if log:
                log(f"epoch {epoch:3d}: train loss {total / len(x):.4f} -> {path}")
    return paths


def tutorial_bounds() -> str:
    """The certificates without the optimised PAC-Bayes ones (minutes per checkpoint; not what these tutorials are about)."""
    from ncbounds.bounds.pacbayes_opt_config import PAC_BAYES_OPT_GROUP
    from ncbounds.bounds.runner import TARGET_GROUPS, load_catalogue, select_bounds

    catalogue = load_catalogue()
    left_out = (PAC_BAYES_OPT_GROUP, *TARGET_GROUPS)  # and the transfer ones, which need --target-data
    return ",".join(n for n in select_bounds("certificates") if catalogue[n].group not in left_out)


def _evaluate(out: Path, options, log, progress) -> tuple[list, dict]:
    from ncbounds.batch import run_batch
    from ncbounds.report.export import export
    from ncbounds.report.results import load_records

    results = out / "results"
    summary = run_batch(out / "runs", results, options, resume=True, progress=progress, log=log)
    records = sorted(load_records(results), key=lambda r: r["provenance"]["hyperparameters"].get("epoch", 0))
    files = {"results": results, "csv": out / "results.csv", "csv_long": out / "tidy.csv", "plot_classes": out / "classes.png"}
    write_atomic(files["csv"], export(records, "csv"))
    write_atomic(files["csv_long"], export(records, "csv-long"))
    notes = []
    try:
        from ncbounds.report.class_plots import plot_classes

        plot_classes(records[-1:], files["plot_classes"], split="test")
    except NCBoundsError as exc:  # matplotlib is an optional extra
        notes.append(f"plot skipped: {exc}")
        files.pop("plot_classes")
    return records, {"files": files, "summary": summary, "notes": notes}


def run_imbalance_tutorial(out_dir: str | Path, epochs=IMBALANCE_EPOCHS, seed: int = 0, log=None, progress: bool = True) -> dict:
    """Train, evaluate and summarise the imbalanced run (module docstring); ``rows``: one dict per epoch."""
    from ncbounds.options import EvalOptions

    out = Path(out_dir)
    train_run(out / "runs", IMBALANCE_DATA, tuple(epochs), seed=seed, log=log)
    records, result = _evaluate(out, EvalOptions(device="cpu", seed=seed, bounds=tutorial_bounds()), log, progress)
    rows = []
    for rec in records:
        m = rec["layers"]["penultimate"]["metrics"]
        minority = set(rec["classes"]["minority"]["classes"])
        test_rows = rec["layers"]["penultimate"]["per_class"]["test"]

        def block_error(want_minority: bool, rows=test_rows, minority=minority) -> float:
            chosen = [r for r in rows if (r["class"] in minority) == want_minority and r["n"]]
            return sum(r["errors"] for r in chosen) / sum(r["n"] for r in chosen)

        rows.append({"epoch": rec["provenance"]["hyperparameters"]["epoch"], "train_error": rec["errors"]["train"]["error"],
                     "test_error": rec["errors"]["test"]["error"], "majority_test_error": block_error(False),
                     "minority_test_error": block_error(True), "minority_cos_W": m["train"]["minority_cos_W"],
                     "majority_cos_W": m["train"]["majority_cos_W"], "cross_cos_W": m["train"]["cross_cos_W"],
                     "etf_cos": m["train"]["etf_cos"], "nc1": m["train"]["nc1"], "nc1_weighted": m["train"]["nc1_weighted"],
                     "seli_distance_W": m["train"]["seli_distance_W"], "nc2_etf_error_classifier": m["train"]["nc2_etf_error_classifier"]})
    return {**result, "rows": rows, "minority_classes": records[-1]["classes"]["minority"]["classes"],
            "counts": records[-1]["classes"]["counts"]}


def run_multilabel_tutorial(out_dir: str | Path, epochs=MULTILABEL_EPOCHS, seed: int = 0, log=None, progress: bool = True) -> dict:
    """Train, evaluate and summarise the multi-label run (module docstring); ``rows``: one dict per epoch."""
    from ncbounds.options import EvalOptions

    out = Path(out_dir)
    train_run(out / "runs", MULTILABEL_DATA, tuple(epochs), width=256, lr=0.05, weight_decay=5e-4, batch_size=128, seed=seed, log=log)
    options = EvalOptions(device="cpu", seed=seed, bounds=tutorial_bounds(), ml_decision="top-m")
    records, result = _evaluate(out, options, log, progress)
    rows = []
    for rec in records:
        m = rec["layers"]["penultimate"]["metrics"]
        rows.append({"epoch": rec["provenance"]["hyperparameters"]["epoch"], "train_subset_error": rec["errors"]["train"]["error"],
                     "test_subset_error": rec["errors"]["test"]["error"], "test_hamming_error": rec["errors"]["test"]["hamming_error"],
                     "nc1_single": m["train"]["nc1_single"], "ml_pair_angle": m["train"]["ml_pair_angle"],
                     "test_ml_pair_angle": m["test"]["ml_pair_angle"], "nc2_etf_error_means": m["train"]["nc2_etf_error_means"]})
    return {**result, "rows": rows}


__all__ = ["IMBALANCE_DATA", "MULTILABEL_DATA", "run_imbalance_tutorial", "run_multilabel_tutorial", "train_run"]
