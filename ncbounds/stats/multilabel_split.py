"""Everything one streaming pass over one split of **multi-label** data collects, for every hooked layer.

The multi-label twin of :class:`~ncbounds.stats.split.SplitStatistics` (same pass, same replay, same
interface towards the pipeline). Labels are multi-hot rows t ∈ {0, 1}^K; a sample's multiplicity is
m = Σ_k t_k. During the pass, per layer:

- a :class:`~ncbounds.stats.multilabel.MultiLabelStats`: the class statistics of the multiplicity-1
  samples (a :class:`~ncbounds.stats.class_stats.ClassStats`, which is also what ``layers[name]``
  holds, so every single-label metric reads it unchanged), the count, mean and centered sum of squares
  of every observed label pair (multiplicity 2, merged with Chan et al.'s update), the multiplicity
  counts and the samples carrying each label;
- at the network output a :class:`~ncbounds.stats.multilabel.MultiLabelDecisions`: the errors of the
  decision rule (``'sigmoid'``: z_k > 0; ``'top-m'``: the m largest logits, m the true multiplicity);
- the copy of the **multiplicity-1** features (with their single labels) for the replay.

After the pass, :meth:`finish` replays that copy exactly as for single-label data: the span-restricted
within-class second moments of the single-label classes (NC1 on multiplicity-1 samples, as Li, Li,
Wang & Qu 2024 measure it), each class's NC1 term, and the nearest-class-center decisions of the
multiplicity-1 samples against the training split's single-label means. Samples of multiplicity 0,
2 or more enter the pair statistics, the multiplicity counts and the errors, never a class mean.
"""

from __future__ import annotations

import torch

from ncbounds.stats.multilabel import DECISION_RULES, MultiLabelDecisions, MultiLabelStats, _targets
from ncbounds.stats.spill import DEFAULT_MEMORY_BUDGET
from ncbounds.stats.split import _LABELS, SplitStatistics

__all__ = ["MultiLabelSplitStatistics"]


class MultiLabelSplitStatistics(SplitStatistics):
    """Streaming accumulator for one split of multi-label data (see the module docstring).

    Parameters as :class:`SplitStatistics`, plus ``rule``: the decision rule of the errors
    (``'sigmoid'`` or ``'top-m'``). Attributes after the pass: ``multilabel`` {layer:
    MultiLabelStats}, ``layers`` {layer: the multiplicity-1 ClassStats}, ``decisions``
    (MultiLabelDecisions or None without logits), ``projected`` / ``ncc`` as for single-label data.
    """

    task = "multilabel"

    def __init__(
        self,
        num_classes: int,
        penultimate: str | None = None,
        rule: str = "sigmoid",
        device: str | torch.device = "cpu",
        spill_dir: str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        if rule not in DECISION_RULES:
            raise ValueError(f"unknown multi-label decision rule {rule!r}; choose one of {DECISION_RULES}")
        super().__init__(num_classes, penultimate, "none", device, spill_dir, memory_budget)
        self.rule = rule
        self.multilabel: dict[str, MultiLabelStats] = {}
        self.decisions: MultiLabelDecisions | None = None

    @property
    def n_samples(self) -> int:
        """Samples of the split, every multiplicity."""
        stats = self.multilabel.get(self.penultimate) or next(iter(self.multilabel.values()), None)
        return 0 if stats is None else stats.total

    @property
    def error_count(self) -> int | None:
        """Samples with at least one wrong label under the decision rule (the subset errors)."""
        return None if self.decisions is None else self.decisions.subset_errors

    def update(self, features: dict[str, torch.Tensor], targets: torch.Tensor, logits: torch.Tensor | None = None,
               nc4_predictions: torch.Tensor | None = None) -> None:
        """Add one batch: ``features`` layer → (B, d_l), ``targets`` (B, K) multi-hot, ``logits`` (B, K).

        ``nc4_predictions`` is accepted for the interface and ignored (NC4 compares one decision per
        sample with the nearest class center; a multi-label decision is a set)."""
        t = _targets(targets, self.num_classes, device=self.device)
        single = t.sum(1) == 1
        y1 = t[single].argmax(1)
        for name, feats in features.items():
            if name not in self.multilabel:
                self.multilabel[name] = MultiLabelStats(self.num_classes, feats.shape[1], "none", device=self.device, name=name)
                self.layers[name] = self.multilabel[name].single
            self.multilabel[name].update(feats, t)
            self._spill.append(name, feats[single.to(feats.device)])
        self._spill.append(_LABELS, y1)
        if logits is not None:
            if self.decisions is None:
                self.decisions = MultiLabelDecisions(self.num_classes, self.rule)
            self.decisions.update(logits, t)

    def finish(self, reference_means=None, chunk_rows: int = 4096, replay_accumulators=None) -> None:
        """Check the pair means, then replay the multiplicity-1 features (bound replay statistics are
        single-label quantities and are not collected); the decisions join ``extras[penultimate]``."""
        if self._spill is None:
            return
        for stats in self.multilabel.values():
            stats.check_finite()
        super().finish(reference_means, chunk_rows, None)
        if self.decisions is not None and self.penultimate is not None:
            self.extras.setdefault(self.penultimate, {})["multilabel_decisions"] = self.decisions
