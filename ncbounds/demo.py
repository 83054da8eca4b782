"""The demo: a small sweep on the bundled scikit-learn digits, evaluated end to end.

:func:`train_demo` trains one MLP and saves a checkpoint per epoch: each ``epoch_XX.pt`` (a plain
state_dict) gets a sidecar ``epoch_XX.json`` with its hyperparameters (``epoch``, ``lr``, ``width``,
``seed``); the folder's ``ncbounds.json`` names the architecture, the data spec and the
initialization checkpoint ``init.pt`` shared by all epochs. :func:`run_demo` trains two widths, batch-
evaluates every checkpoint (``--layers all``, default bounds), and writes the wide CSV, the
correlation table and three plots. Everything runs on the CPU and needs no download.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ncbounds.errors import NCBoundsError
from ncbounds.io.datasets import load_data
from ncbounds.io.output import save_torch, write_atomic
from ncbounds.models import build_model

DEMO_DATA = "digits"


def train_epoch(model: nn.Module, opt, loss_fn, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                gen: torch.Generator) -> float:
    """One epoch of minibatch training in a seeded random order; returns the summed loss (sum of batch
    mean losses × batch sizes)."""
    model.train()
    perm = torch.randperm(len(x), generator=gen)
    total = 0.0
    for start in range(0, len(x), batch_size):
        idx = perm[start : start + batch_size]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total


def start_mlp_run(out_dir: str | Path, data_spec: str, width: int, depth: int, seed: int, **sidecar):
    """Create ``out_dir``, seed torch, load ``data_spec`` and build the MLP for it; the folder's
    ``ncbounds.json`` names the architecture, the data and any ``sidecar`` keys. Returns
    (folder, data, model)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    data = load_data(data_spec)
    arch = f"mlp:input_dim={data.input_shape[0]},num_classes={data.num_classes},width={width},depth={depth}"
    write_atomic(out / "ncbounds.json", json.dumps({"arch": arch, "data": data_spec, **sidecar}, indent=2))
    return out, data, build_model(arch)


def train_demo(
    out_dir: str | Path,
    epochs: int = 12,
    width: int = 128,
    depth: int = 2,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    log=None,
) -> list[Path]:
    """Train the demo MLP, writing ``init.pt`` and one checkpoint per epoch; returns the checkpoint paths."""
    out, data, model = start_mlp_run(out_dir, DEMO_DATA, width, depth, seed, init_checkpoint="init.pt")
    save_torch(model.state_dict(), out / "init.pt")
    x = torch.as_tensor(data.train.x)
    y = torch.as_tensor(data.train.y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for epoch in range(1, epochs + 1):
        total = train_epoch(model, opt, loss_fn, x, y, batch_size, gen)
        path = out / f"epoch_{epoch:02d}.pt"
        save_torch(model.state_dict(), path)
        write_atomic(path.with_suffix(".json"), json.dumps({"epoch": epoch, "lr": lr, "width": width, "seed": seed}))
        paths.append(path)
        if log:
            log(f"epoch {epoch:2d}/{epochs}: train loss {total / len(x):.4f} -> {path}")
    return paths


DEMO_WIDTHS = (64, 128)


def run_demo(out_dir: str | Path, epochs: int = 8, widths=DEMO_WIDTHS, seed: int = 0, log=None, progress: bool = True) -> dict:
    """Train ``widths`` × ``epochs`` checkpoints, batch-evaluate them, export CSV, correlations and plots.

    Returns the paths written and the last checkpoint's record (as a dict) and correlation table.
    """
    from ncbounds.batch import run_batch
    from ncbounds.pipeline import EvalOptions
    from ncbounds.report.correlate import correlate_table
    from ncbounds.report.export import export
    from ncbounds.report.plots import plot_bounds, plot_epochs, plot_layers
    from ncbounds.report.results import load_records, records_to_frame

    out = Path(out_dir)
    for width in widths:
        train_demo(out / "runs" / f"width{width}", epochs=epochs, width=width, seed=seed, log=log)
    results = out / "results"
    options = EvalOptions(layers="all", device="cpu", seed=seed, bounds="default")
    summary = run_batch(out / "runs", results, options, resume=True, progress=progress, log=log)
    records = load_records(results)
    table = records_to_frame(records)
    files = {"results": results, "csv": out / "results.csv", "correlations": out / "correlations.csv",
             "plot_bounds": out / "bounds.png", "plot_epochs": out / "epochs.png", "plot_layers": out / "layers.png"}
    write_atomic(files["csv"], export(table, "csv"))
    corr = correlate_table(table, target="test_error")
    write_atomic(files["correlations"], corr.to_csv(index=False, lineterminator="\n"))
    def width_epoch(record):
        hp = record["provenance"]["hyperparameters"]
        return hp.get("width", 0), hp.get("epoch", 0)

    last = max(records, key=width_epoch)
    notes = []
    try:
        plot_bounds(table, files["plot_bounds"])
        plot_epochs(table, files["plot_epochs"])
        same_run = [r for r in records if r["provenance"]["hyperparameters"].get("width") == last["provenance"]["hyperparameters"]["width"]]
        plot_layers(same_run, files["plot_layers"])
    except NCBoundsError as exc:  # matplotlib is an optional extra: the rest of the demo stands
        notes.append(f"plots skipped: {exc}")
        for key in ("plot_bounds", "plot_epochs", "plot_layers"):
            files.pop(key)
    return {"files": files, "summary": summary, "last": last, "correlations": corr, "notes": notes}
