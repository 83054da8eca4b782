"""Feature hooks and the feature copy: in-place ops after a hook, head-input duplicates, disk spill."""

import numpy as np
import pytest
import torch
from torch import nn

from ncbounds.features import PENULTIMATE, FeatureExtractor, default_layers
from ncbounds.metrics.functional import split_metrics
from ncbounds.stats.split import SplitStatistics


class InplaceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.act = nn.ReLU(inplace=True)
        self.last = nn.ReLU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.last(self.act(self.lin(x))))


def test_hooked_output_is_protected_from_later_inplace_ops():
    torch.manual_seed(0)
    net = InplaceNet().eval()
    x = torch.randn(32, 6)
    with torch.no_grad(), FeatureExtractor(net, ["lin", "last"]) as ext:
        feats, _ = ext.run(x)
        expected = net.lin(x)
    assert (feats["lin"] < 0).any(), "pre-ReLU values must survive the in-place ReLU that follows"
    torch.testing.assert_close(feats["lin"], expected)
    # 'last' returns exactly the head's input: reported once, as the penultimate layer
    assert list(feats) == ["lin", PENULTIMATE]


def test_default_layers_are_activations_outside_blocks():
    assert default_layers(InplaceNet(), "fc") == ["act", "last"]


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_disk_spill_equals_memory_copy(budget):
    rng = np.random.default_rng(0)
    K, d = 5, 7
    h = rng.normal(size=(300, d)) + rng.normal(size=(K, d))[np.arange(300) % K] * 3
    y = np.arange(300) % K

    def run(memory_budget):
        split = SplitStatistics(K, penultimate="features", memory_budget=memory_budget)
        for start in range(0, 300, 64):
            split.update({"features": torch.as_tensor(h[start:start + 64])}, torch.as_tensor(y[start:start + 64]))
        split.finish()
        return split_metrics(split, "features")

    disk, memory = run(budget), run(1 << 30)
    # chunking differs (4096-row file chunks vs 64-row batches): equal up to summation order
    assert disk.keys() == memory.keys()
    for key, value in memory.items():
        assert disk[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
