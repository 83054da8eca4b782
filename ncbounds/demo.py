"""The demo run: train a small MLP on the bundled scikit-learn digits and save a checkpoint per epoch.

Each checkpoint ``epoch_XX.pt`` (a plain state_dict) gets a sidecar ``epoch_XX.json`` with its
hyperparameters (``epoch``, ``lr``, ``width``, ``seed``); the folder's ``ncbounds.json`` names the
architecture, the data spec and the initialization checkpoint ``init.pt`` shared by all epochs.
Everything runs on the CPU in seconds and needs no download.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ncbounds.io.datasets import load_data
from ncbounds.models import build_model

DEMO_DATA = "digits"


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    data = load_data(DEMO_DATA)
    arch = f"mlp:input_dim={data.input_shape[0]},num_classes={data.num_classes},width={width},depth={depth}"
    model = build_model(arch)
    (out / "ncbounds.json").write_text(json.dumps({"arch": arch, "data": DEMO_DATA, "init_checkpoint": "init.pt"}, indent=2))
    torch.save(model.state_dict(), out / "init.pt")
    x = torch.as_tensor(data.train.x)
    y = torch.as_tensor(data.train.y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for epoch in range(1, epochs + 1):
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
        path = out / f"epoch_{epoch:02d}.pt"
        torch.save(model.state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps({"epoch": epoch, "lr": lr, "width": width, "seed": seed}))
        paths.append(path)
        if log:
            log(f"epoch {epoch:2d}/{epochs}: train loss {total / len(x):.4f} -> {path}")
    return paths
