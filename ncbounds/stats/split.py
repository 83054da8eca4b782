"""Everything one streaming pass over one data split collects, for every hooked layer.

Per layer: a :class:`ClassStats` (counts, means, centered scatter); at the network output: a
:class:`LogitStats` (margins, decisions); per layer: nearest-class-center (NCC) error against the
**training** class means and, at the penultimate layer, the NC4 mismatch with the network's decision.

When the training means are already known (the test split, evaluated after the training split) NCC
decisions are made on the fly. For the training split itself they are made after the pass by
replaying the features from a :class:`FeatureSpill`; the same replay yields the per-class quadratic
forms that directional CDNV needs when a layer's statistics had to be pooled to fit memory.
"""

from __future__ import annotations

import torch

from ncbounds.stats.class_stats import DEFAULT_SCATTER_BUDGET, ClassStats, choose_scatter_mode
from ncbounds.stats.logit_stats import LogitStats
from ncbounds.stats.ncc import NCCCounter
from ncbounds.stats.spill import FeatureSpill


class SplitStatistics:
    """Streaming accumulator for one split.

    Parameters
    ----------
    num_classes: K.
    penultimate: name of the layer whose features feed the final linear layer (NC4 is computed there).
    reference_means: per-layer training means for NCC decisions; None for the training split itself
        (its own means are used after the pass).
    scatter_budget: bytes per layer for per-class scatter matrices (see :func:`choose_scatter_mode`).
    scatter_mode: force 'per-class' or 'pooled' (None = by budget).
    """

    def __init__(
        self,
        num_classes: int,
        penultimate: str | None = None,
        reference_means: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        scatter_budget: int = DEFAULT_SCATTER_BUDGET,
        scatter_mode: str | None = None,
        device: str | torch.device = "cpu",
        spill_dir: str | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.penultimate = penultimate
        self.reference_means = reference_means
        self.scatter_budget = scatter_budget
        self.scatter_mode = scatter_mode
        self.device = torch.device(device)
        self.spill_dir = spill_dir
        self.layers: dict[str, ClassStats] = {}
        self.logits: LogitStats | None = None
        self.ncc: dict[str, NCCCounter] = {}
        self.pair_forms: dict[str, torch.Tensor] = {}
        self._spill: FeatureSpill | None = None
        self._spilled: set[str] = set()
        self._nc4_predictions: list[torch.Tensor] = []

    # ------------------------------------------------------------------ streaming
    def _layer(self, name: str, dim: int) -> ClassStats:
        if name not in self.layers:
            mode = self.scatter_mode or choose_scatter_mode(self.num_classes, dim, self.scatter_budget)
            self.layers[name] = ClassStats(self.num_classes, dim, mode, device=self.device, name=name)
            needs_replay = self.reference_means is None or mode == "pooled"
            if needs_replay:
                if self._spill is None:
                    self._spill = FeatureSpill(self.spill_dir)
                self._spilled.add(name)
            if self.reference_means is not None and name in self.reference_means:
                means, present = self.reference_means[name]
                self.ncc[name] = NCCCounter(means.to(self.device), present.to(self.device))
        return self.layers[name]

    def update(
        self,
        features: dict[str, torch.Tensor],
        labels: torch.Tensor,
        logits: torch.Tensor | None = None,
        nc4_predictions: torch.Tensor | None = None,
    ) -> None:
        """Add one batch: ``features`` maps layer name → (B, d_l); ``logits`` (B, K) if the model has them.

        ``nc4_predictions`` are the network decisions compared with NCC for NC4 (default: argmax of
        ``logits``).
        """
        labels = labels.to(self.device)
        if logits is not None:
            if self.logits is None:
                self.logits = LogitStats(self.num_classes)
            self.logits.update(logits, labels)
            if nc4_predictions is None:
                nc4_predictions = logits.argmax(1)
        for name, feats in features.items():
            stats = self._layer(name, feats.shape[1])
            stats.update(feats, labels)
            preds = nc4_predictions if name == self.penultimate else None
            if name in self.ncc:
                self.ncc[name].update(feats, labels, preds)
            if name in self._spilled:
                self._spill.append(name, feats.detach().cpu().numpy())
        if self._spilled:
            self._spill.append("__labels__", labels.cpu().numpy())
            if nc4_predictions is not None and self.penultimate in self._spilled:
                self._spill.append("__nc4__", nc4_predictions.cpu().numpy())

    # ------------------------------------------------------------------ after the pass
    def training_means(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (means, present-mask) to use as NCC reference for other splits."""
        return {name: (s.means.clone(), s.counts > 0) for name, s in self.layers.items()}

    def finish(self, chunk_rows: int = 4096) -> None:
        """Replay spilled features: NCC with own means (training split) and pooled-mode pair forms."""
        if self._spill is None:
            return
        try:
            labels = torch.cat([torch.as_tensor(c) for c in self._spill.chunks("__labels__", chunk_rows)])
            nc4 = None
            if "__nc4__" in self._spill.rows:
                nc4 = torch.cat([torch.as_tensor(c) for c in self._spill.chunks("__nc4__", chunk_rows)])
            for name in sorted(self._spilled):
                stats = self.layers[name]
                own_ncc = name not in self.ncc
                if own_ncc:
                    counter = NCCCounter(stats.means, stats.counts > 0)
                pooled = stats.scatter_mode == "pooled"
                forms = PairFormAccumulator(stats) if pooled else None
                start = 0
                for chunk in self._spill.chunks(name, chunk_rows):
                    h = torch.as_tensor(chunk).to(self.device)
                    y = labels[start : start + len(h)].to(self.device)
                    preds = nc4[start : start + len(h)] if (nc4 is not None and name == self.penultimate) else None
                    if own_ncc:
                        counter.update(h, y, preds)
                    if forms is not None:
                        forms.update(h, y)
                    start += len(h)
                if own_ncc:
                    self.ncc[name] = counter
                if forms is not None:
                    self.pair_forms[name] = forms.value
        finally:
            self._spill.close()
            self._spill = None


class PairFormAccumulator:
    """Q[i, j] = Σ_{x∈i} ((h − μ_i)ᵀ(μ_j − μ_i))² = (μ_j − μ_i)ᵀ S_i (μ_j − μ_i) with the final means.

    Used for directional CDNV when per-class scatter matrices did not fit the memory budget; cost
    O(B·K·d) per chunk, memory O(K²).
    """

    def __init__(self, stats: ClassStats) -> None:
        self.means = stats.means
        self.centered = stats.means - stats.means[stats.counts > 0].mean(0)
        K = stats.num_classes
        self.value = torch.zeros(K, K, dtype=torch.float64, device=stats.means.device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        h = features.to(torch.float64)
        dev = h - self.means[labels]
        proj = dev @ self.centered.T - (dev * self.centered[labels]).sum(1, keepdim=True)
        self.value.index_add_(0, labels, proj * proj)
