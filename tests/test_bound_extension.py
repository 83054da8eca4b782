"""Adding a bound that needs a new per-sample statistic touches only the bound's own code.

The bound below is written as it would be in a new module of ``ncbounds/bounds/`` (its accumulator in
``ncbounds/bounds/replay/``): an accumulator following the ``update / merge / state`` protocol, a
:class:`ReplayRequest` naming it, and a ``register(needs=...)`` declaration. Nothing in the pipeline, the
statistics or the report is told about it, yet the statistic is collected in the same pass (no extra
forward pass) and the result lands in the record with the registry's name, status and reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_models import ARCH, digits_split, one_torch_thread, trained_mlp

from ncbounds.bounds.base import REGISTRY, Evaluation, NotApplicable, ReplayRequest, register
from ncbounds.pipeline import evaluate
from ncbounds.stats.accumulator import Accumulator


class AbsoluteDeviation:
    """Per class: n_c and Σ_{x∈c} ‖x − μ_c‖ around the split's final means (a first absolute moment)."""

    def __init__(self, means: torch.Tensor) -> None:
        self.means = means.to(torch.float64)
        self.count = torch.zeros(len(means), dtype=torch.float64, device=means.device)
        self.total = torch.zeros(len(means), dtype=torch.float64, device=means.device)

    def update(self, features, labels):
        h = torch.as_tensor(features).to(torch.float64)
        y = torch.as_tensor(labels, device=h.device).long()
        dist = torch.linalg.vector_norm(h - self.means[y], dim=1)
        self.count.index_add_(0, y, torch.ones_like(dist))
        self.total.index_add_(0, y, dist)
        return self

    def merge(self, other):
        self.count += other.count
        self.total += other.total
        return self

    def state(self) -> dict:
        return {"count": self.count.cpu().numpy(), "total": self.total.cpu().numpy()}


ABS_DEV = ReplayRequest("absolute_deviation", lambda stats, info: AbsoluteDeviation(stats.means), splits=("test",))


def mean_absolute_deviation(ctx) -> Evaluation:
    """Mean over test samples of ‖x − μ_{y}‖ divided by the mean distance between class means (a predictor)."""
    acc = ctx.test.extras.get("absolute_deviation")
    if acc is None:
        raise NotApplicable("the absolute-deviation replay was not collected.")
    means = ctx.test.stats.means.to(torch.float64)
    present = ctx.test.stats.counts > 0
    m = means[present]
    spread = torch.cdist(m, m)
    k = len(m)
    mean_gap = float(spread.sum() / (k * (k - 1)))
    return Evaluation(float(acc.total.sum() / acc.count.sum()) / mean_gap, inputs={"split": "test"})


@pytest.fixture
def example_bound():
    name = "example_mean_abs_deviation"
    register(name, bounds="correlate of the test error", status="predictor", reference="an example (test only)",
             group="predictors", needs=(ABS_DEV,))(mean_absolute_deviation)
    try:
        yield name
    finally:
        REGISTRY.pop(name)


def test_new_bound_with_its_own_statistic_in_the_same_pass(example_bound, tmp_path):
    assert isinstance(AbsoluteDeviation(torch.zeros(2, 3)), Accumulator)
    with one_torch_thread():
        model = trained_mlp()
        path = tmp_path / "m.pt"
        torch.save(model.state_dict(), path)
        forwards = []
        original = torch.nn.Module.__call__

        def counting(self, *args, **kwargs):
            if self.__class__.__name__ == "MLP":
                forwards.append(args[0].shape[0])
            return original(self, *args, **kwargs)

        torch.nn.Module.__call__ = counting
        try:
            record = evaluate(str(path), arch=ARCH, data="digits", device="cpu", bounds=example_bound, batch_size=64)
        finally:
            torch.nn.Module.__call__ = original
    xtr, ytr, xte, yte = digits_split()
    assert sum(forwards) == len(ytr) + len(yte)  # one pass per split, no extra pass for the new statistic

    (result,) = record.bounds
    assert result["name"] == example_bound and result["status"] == "predictor" and result["reference"] == "an example (test only)"
    with torch.no_grad():  # brute force: every test feature stored
        feats = []
        model.fc.register_forward_pre_hook(lambda mod, inp: feats.append(inp[0].detach().to(torch.float64)))
        model.eval()(torch.as_tensor(xte))
    h = feats[0].numpy()
    means = np.stack([h[yte == c].mean(0) for c in range(10)])
    dev = np.linalg.norm(h - means[yte], axis=1).mean()
    gaps = np.linalg.norm(means[:, None] - means[None], axis=2)
    assert result["value"] == pytest.approx(dev / (gaps.sum() / 90), rel=1e-9)
