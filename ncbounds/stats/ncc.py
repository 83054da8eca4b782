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
        self._table_means: torch.Tensor | None = None
        self._table_value: torch.Tensor | None = None

    def decide(self, features: torch.Tensor) -> torch.Tensor:
        """NCC decision for each row of ``features``."""
        h = features.to(device=self.means.device, dtype=torch.float64) - self.center
        return self._argmin(h @ self.centered.T)

    def update(self, features: torch.Tensor, labels: torch.Tensor, network_predictions: torch.Tensor | None = None):
        """Add a batch; ``network_predictions`` (argmax of logits) enables the NC4 count."""
        decision = self.decide(features)
        y = labels.to(device=decision.device, dtype=torch.int64).reshape(-1)
        return self._count(decision, y, network_predictions)

    def update_batch(self, batch, network_predictions: torch.Tensor | None = None):
        """:meth:`update` from a :class:`~ncbounds.stats.accumulator.ReplayBatch` of the replayed split.

        Same rule, with the centred features split as h − o = (h − μ_y) + (μ_y − o), μ the split's
        final means: the scores (h − o)ᵀ(μ̂_k − o) become the deviations' products plus a K×K table
        (μ_c − o)ᵀ(μ̂_k − o) made once per split, so no centred copy of the batch is formed. Both parts
        are exact-deviation products, as accurate as the centred product under strong collapse.
        """
        return self.update_products(batch, batch.dev @ self.centered.T, network_predictions)

    def update_products(self, batch, products: torch.Tensor, network_predictions: torch.Tensor | None = None):
        """:meth:`update_batch` given ``products`` = (h_i − μ_{y_i})ᵀ(μ̂_k − o) (B×K), e.g. from a
        product the replay forms anyway (:meth:`ProjectedStats.project`)."""
        scores = products + self._table(batch.means).index_select(0, batch.y)
        return self._count(self._argmin(scores), batch.y, network_predictions)

    def _table(self, means: torch.Tensor) -> torch.Tensor:
        """(μ_c − o)ᵀ(μ̂_k − o) for the split's final means μ (K×K), kept for the split being replayed."""
        if self._table_means is not means:
            self._table_means = means
            self._table_value = (means.to(self.means) - self.center) @ self.centered.T
        return self._table_value

    def _argmin(self, scores: torch.Tensor) -> torch.Tensor:
        dist = self.sq_norms.unsqueeze(0) - 2.0 * scores
        dist[:, ~self.present.to(dist.device)] = float("inf")
        return dist.argmin(1)

    def _count(self, decision: torch.Tensor, y: torch.Tensor, network_predictions: torch.Tensor | None):
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
