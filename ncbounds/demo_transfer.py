"""The transfer demo (``ncbounds demo --transfer``): which of several small networks transfers best to new classes?

:func:`run_transfer_demo` trains MLPs of three widths on the digits classes 0–4 (scikit-learn's bundled
8×8 digits, CPU, no download), keeping a checkpoint after a short and after a longer training; each
checkpoint's sidecar declares its hyperparameters (``width``, ``epochs``, ``seed``) and the folder's
``ncbounds.json`` the architecture and the source data ``digits:classes=0-4``. The folder is then batch
evaluated with ``target_data = digits:classes=5-9`` (the five classes no network saw; every layer), and
the transferability scores are ranked against the measured linear-probe error on the new classes
(:func:`ncbounds.report.transfer_ranking.ranking_table`). Files go to ``OUT/transfer/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ncbounds.io.datasets import load_data
from ncbounds.io.output import save_torch, write_atomic
from ncbounds.models import build_model

SOURCE = "digits:classes=0-4"
TARGET = "digits:classes=5-9"
AGAINST = "transfer.penultimate.probe_error"
WIDTHS = (16, 64, 256)

__all__ = ["AGAINST", "SOURCE", "TARGET", "WIDTHS", "run_transfer_demo", "train_source_models"]


def train_source_models(out_dir: str | Path, widths=WIDTHS, epochs=(2, 8), lr: float = 0.05, batch_size: int = 64,
                        seed: int = 0, log=None) -> list[Path]:
    """Train one MLP per width on the source classes, saving ``w<width>_e<epochs>.pt`` (+ sidecar) after each
    number of epochs in ``epochs``; returns the checkpoint paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(SOURCE)
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    paths = []
    write_atomic(out / "ncbounds.json", json.dumps({"arch": f"mlp:input_dim={data.input_shape[0]},num_classes={data.num_classes},depth=2",
                                                   "data": SOURCE}, indent=2))
    for width in widths:
        torch.manual_seed(seed)
        model = build_model(f"mlp:input_dim={data.input_shape[0]},num_classes={data.num_classes},depth=2,width={width}")
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(1, max(epochs) + 1):
            model.train()
            perm = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), batch_size):
                idx = perm[start : start + batch_size]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            if epoch in epochs:
                path = out / f"w{width:03d}_e{epoch:02d}.pt"
                save_torch(model.state_dict(), path)
                write_atomic(path.with_suffix(".json"), json.dumps({"arch_kwargs": {"width": width},
                                                                  "hparams": {"width": width, "epochs": epoch, "seed": seed}}))
                paths.append(path)
                if log:
                    log(f"width {width:3d}, epoch {epoch:2d} -> {path}")
    return paths


def run_transfer_demo(out_dir: str | Path, epochs: int = 8, seed: int = 0, log=None, progress: bool = True) -> dict:
    """Train, batch-evaluate with the target, rank the scores; returns {'files', 'summary', 'ranking', 'table'}."""
    from ncbounds.batch import run_batch
    from ncbounds.options import EvalOptions
    from ncbounds.report.results import load_records, records_to_frame
    from ncbounds.report.transfer_ranking import ranking_table

    out = Path(out_dir) / "transfer"
    train_source_models(out / "runs", epochs=tuple(sorted({2, int(epochs)})), seed=seed, log=log)
    results = out / "results"
    options = EvalOptions(layers="all", device="cpu", seed=seed, bounds="default", target_data=TARGET)
    summary = run_batch(out / "runs", results, options, resume=True, progress=progress, log=log)
    table = records_to_frame(load_records(results))
    ranking = ranking_table(table, AGAINST)
    files = {"results": results, "csv": out / "results.csv", "ranking": out / "ranking.csv"}
    write_atomic(files["csv"], table.to_csv(index=False, lineterminator="\n"))
    write_atomic(files["ranking"], ranking.to_csv(index=False, lineterminator="\n"))
    keep = ["checkpoint", "hp.width", "hp.epochs", "test_error", "transfer.penultimate.probe_error",
            "transfer.penultimate.ncc_error", "transfer.penultimate.fewshot.5way5shot", "transfer.penultimate.score.logme",
            "transfer.penultimate.score.leep", "transfer.tunnel.penultimate_to_best_probe_accuracy"]
    models = table[[c for c in keep if c in table.columns]].copy()
    models["checkpoint"] = models["checkpoint"].map(lambda p: Path(p).name)
    models.columns = [c.replace("transfer.penultimate.", "").replace("score.", "").replace("fewshot.", "")
                      .replace("transfer.tunnel.penultimate_to_best_probe_accuracy", "tunnel_ratio") for c in models.columns]
    return {"files": files, "summary": summary, "ranking": ranking, "models": models}
