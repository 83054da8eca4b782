"""Nearest-class-center (NCC) decisions against fixed reference means (NCC error and NC4, Papyan, Han &
Donoho 2020).

The NCC classifier assigns h to argmin_c ‖h − μ_c‖ with the **training** class means (the classifier a
user would deploy), ties broken towards the lowest index. Distances are computed after subtracting
the mean of the reference means from both sides, which removes a common offset before the
expansion ‖h‖² − 2hᵀμ + ‖μ‖² and keeps decisions exact under strong collapse. Classes absent from the
training split (no mean) are never chosen.
"""

from __future__ import annotations

import torch


class NCCCounter:
    """Counts NCC errors (vs labels) and NC4 mismatches (vs the network's decisions) for one layer."""

    def __init__(self, reference_means: torch.Tensor, present: torch.Tensor | None = None) -> None:
        self.means = reference_means.to(torch.float64)
        self.present = torch.ones(len(self.means), dtype=torch.bool) if present is None else present.bool()
        self.center = self.means[self.present.to(self.means.device)].mean(0)
        self.centered = self.means - self.center
        self.sq_norms = (self.centered * self.centered).sum(1)
        self.n = 0
        self.errors = 0
        self.mismatches = 0
        #: per true class: samples seen and NCC mistakes (K,) int64, for the per-class breakdown
        self.class_n = torch.zeros(len(self.means), dtype=torch.int64, device=self.means.device)
        self.class_errors = torch.zeros(len(self.means), dtype=torch.int64, device=self.means.device)

    def decide(self, features: torch.Tensor) -> torch.Tensor:
        """NCC decision for each row of ``features``."""
        h = features.to(device=self.means.device, dtype=torch.float64) - self.center
        dist = self.sq_norms.unsqueeze(0) - 2.0 * (h @ self.centered.T)
        dist[:, ~self.present.to(dist.device)] = float("inf")
        return dist.argmin(1)

    def update(self, features: torch.Tensor, labels: torch.Tensor, network_predictions: torch.Tensor | None = None):
        """Add a batch; ``network_predictions`` (argmax of logits) enables the NC4 count."""
        decision = self.decide(features)
        y = labels.to(device=decision.device, dtype=torch.int64).reshape(-1)
        wrong = decision != y
        self.n += int(y.numel())
        self.errors += int(wrong.sum())
        self.class_n.index_add_(0, y, torch.ones_like(y))
        self.class_errors.index_add_(0, y, wrong.to(torch.int64))
        if network_predictions is not None:
            self.mismatches += int((decision != network_predictions.to(decision.device)).sum())
        return self

    @property
    def error_rate(self) -> float:
        return self.errors / self.n if self.n else float("nan")

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.n if self.n else float("nan")
