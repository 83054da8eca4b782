"""Shared helpers for the pipeline and CLI tests: tiny trained models, checkpoint writers, data files.

Classes that tests pickle as whole modules (``torch.save(model)``) live here so they are importable
by name when the checkpoint is read back (pytest puts ``tests/`` on ``sys.path``; subprocesses get it
through ``PYTHONPATH``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os

import numpy as np
import torch
from torch import nn

#: The tiny MLP of the pipeline tests: 8×8 digits → two ReLU layers of width 32 → 10 classes.
ARCH = "mlp:input_dim=64,num_classes=10,width=32,depth=2"
DATA = "digits"


@contextlib.contextmanager
def one_torch_thread():
    """Run torch single-threaded (restored afterwards).

    The models here are tiny, so intra-op threads only add synchronisation; on loaded CI cores an
    OpenMP barrier waiting for a descheduled thread made these tests ~20x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def digits_split(test_fraction: float = 0.3, seed: int = 0):
    """(x_train, y_train, x_test, y_test) of the ``digits`` data spec, exactly as the pipeline sees them."""
    from ncbounds.io.datasets import load_data

    src = load_data(f"digits:test_fraction={test_fraction},seed={seed}")
    return src.train.x.copy(), src.train.y.copy(), src.test.x.copy(), src.test.y.copy()


def sgd_steps(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 60, lr: float = 0.1, seed: int = 0,
              batch: int = 128) -> nn.Module:
    """A few full-precision SGD steps on (x, y) in train mode, so the weights are not at initialization."""
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (batch,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
    return model


def trained_mlp(arch: str = ARCH, steps: int = 60, seed: int = 0, x=None, y=None) -> nn.Module:
    """Build ``arch`` (seeded), take ``steps`` SGD steps on the digits training split (or x, y); eval mode.

    Training on the digits split is cached per (arch, steps, seed), so every test module shares it;
    each call returns a fresh model.
    """
    from ncbounds.models import build_model

    if x is None:
        state = _trained_on_digits(arch, steps, seed)
        model = build_model(arch)
        model.load_state_dict(state)
        return model.eval()
    torch.manual_seed(seed)
    model = build_model(arch)
    sgd_steps(model, x, y, steps=steps, seed=seed)
    return model.eval()


@functools.lru_cache(maxsize=None)
def _trained_on_digits(arch: str, steps: int, seed: int) -> dict:
    x, y, _, _ = digits_split()
    model = trained_mlp(arch, steps, seed, x=x, y=y)
    return {k: v.clone() for k, v in model.state_dict().items()}


class BNDropNet(nn.Module):
    """Linear → BatchNorm1d → ReLU → Dropout → ``fc``: a model whose output depends on train/eval mode."""

    def __init__(self, input_dim: int = 64, width: int = 32, num_classes: int = 10, p: float = 0.5) -> None:
        super().__init__()
        self.lin = nn.Linear(input_dim, width)
        self.bn = nn.BatchNorm1d(width)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.act(self.bn(self.lin(x.flatten(1))))))


def trained_bn_drop_net(steps: int = 20, seed: int = 0) -> BNDropNet:
    """A BNDropNet after a few SGD steps (non-trivial BatchNorm running statistics), left in train mode."""
    torch.manual_seed(seed)
    model = BNDropNet()
    x, y, _, _ = digits_split()
    sgd_steps(model, x, y, steps=steps, lr=0.1, seed=seed)
    assert model.training
    return model


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def save_as_if_on_gpu(obj, path, location: str = "cuda:0", **kwargs) -> None:
    """``torch.save`` writing ``location`` as every storage's location tag (what a GPU machine writes).

    Same approach as ``tests/test_checkpoints.py::save_as_if_on_gpu``: ``torch.save`` records
    ``torch.serialization.location_tag(storage)`` in each storage's persistent id, and that tag is
    the only thing that differs when the tensors live on a GPU.
    """
    original = torch.serialization.location_tag

    def tag(storage) -> str:
        return location[:1] + location[1:]  # a fresh string per call, as torch's own taggers return

    torch.serialization.location_tag = tag
    try:
        torch.save(obj, path, **kwargs)
    finally:
        torch.serialization.location_tag = original


def _write_marker(path: str) -> int:
    with open(path, "w") as fh:
        fh.write("pwned")
    return 0


class WritesMarker:
    """Unpickling this object calls :func:`_write_marker` (an arbitrary-code-execution stand-in)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (self.marker,))


def write_npz(path, x_train, y_train, x_test, y_test) -> str:
    np.savez(path, x_train=np.asarray(x_train, dtype=np.float32), y_train=np.asarray(y_train),
             x_test=np.asarray(x_test, dtype=np.float32), y_test=np.asarray(y_test))
    return str(path)


def eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


#: The ``tests/`` folder (put on ``PYTHONPATH`` of subprocesses so pickled helper classes import).
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def bound_settings(raw: dict | None) -> dict:
    """Typed per-bound settings from ``{bound or group: {key: value}}``, as ``--bound-option`` gives them."""
    from ncbounds.bounds.runner import load_catalogue, resolve_bound_options

    raw = raw or {}
    catalogue = load_catalogue()
    selected = [n for n, s in catalogue.items() if n in raw or s.group in raw]
    return resolve_bound_options(raw, selected)
