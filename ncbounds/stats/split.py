"""Everything one streaming pass over one data split collects, for every hooked layer.

During the pass (the only forward pass): per layer a :class:`ClassStats` (counts, means, centered
sums of squares, Chan-merged in float64), at the network output a :class:`LogitStats` (margins,
decisions), and a :class:`FeatureSpill` copy of each layer's features (in memory up to a budget, then on disk).

After the pass, :meth:`SplitStatistics.finish` replays the spilled features once per layer — reading
a file is far cheaper than running the network again — to collect what needs the split's *final*
class means or the training means:

- :class:`ProjectedStats`: within-class second moments restricted to the span of the class means
  (NC1, He–Su D), the per-class quadratic forms of directional CDNV, in O(B·K·d) per chunk, and
  each class's NC1 term from the same span coordinates (O(B·K²) more);
- :class:`NCCCounter`: nearest-class-center error against the **training** means of that layer
  (the split's own means for the training split), counted per true class too, and, at the
  penultimate layer, the NC4 mismatch with the network's decisions.
"""

from __future__ import annotations

from itertools import zip_longest

import torch

from ncbounds.stats.class_stats import ClassStats
from ncbounds.stats.logit_stats import LogitStats
from ncbounds.stats.ncc import NCCCounter
from ncbounds.stats.projected import ProjectedStats
from ncbounds.stats.spill import DEFAULT_MEMORY_BUDGET, FeatureSpill

_LABELS, _NC4 = "__labels__", "__nc4__"


class SplitStatistics:
    """Streaming accumulator for one split (single-label data: ``task`` 'multiclass').

    Parameters
    ----------
    num_classes: K.
    penultimate: name of the layer whose features feed the final linear layer (NC4 is computed there).
    scatter_mode: ClassStats scatter mode; the default 'none' keeps no d×d matrices (the replay
        supplies the second-order quantities). 'per-class' is useful to cross-check the replay.
    memory_budget: bytes of features kept in RAM/device memory before the copy moves to disk.
    """

    def __init__(
        self,
        num_classes: int,
        penultimate: str | None = None,
        scatter_mode: str = "none",
        device: str | torch.device = "cpu",
        spill_dir: str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        self.num_classes = num_classes
        self.penultimate = penultimate
        self.scatter_mode = scatter_mode
        self.device = torch.device(device)
        self.layers: dict[str, ClassStats] = {}
        self.logits: LogitStats | None = None
        self.projected: dict[str, ProjectedStats] = {}
        self.ncc: dict[str, NCCCounter] = {}
        self.extras: dict[str, dict[str, object]] = {}
        self._spill = FeatureSpill(spill_dir, memory_budget)

    task = "multiclass"

    @property
    def n_samples(self) -> int:
        """Samples of the split (those of the penultimate layer, else of the first layer)."""
        stats = self.layers.get(self.penultimate) or next(iter(self.layers.values()), None)
        return 0 if stats is None else stats.total

    @property
    def error_count(self) -> int | None:
        """Samples the network misclassifies (None without a classifier)."""
        return None if self.logits is None else self.logits.errors

    # ------------------------------------------------------------------ streaming
    def update(
        self,
        features: dict[str, torch.Tensor],
        labels: torch.Tensor,
        logits: torch.Tensor | None = None,
        nc4_predictions: torch.Tensor | None = None,
    ) -> None:
        """Add one batch: ``features`` maps layer name → (B, d_l); ``logits`` (B, K) if the model has them.

        ``nc4_predictions`` are the network decisions compared with NCC for NC4 (default: argmax of
        ``logits``, bias included).
        """
        labels = labels.to(self.device)
        # layers first, in forward order: non-finite values are reported at the first layer showing them
        for name, feats in features.items():
            if name not in self.layers:
                self.layers[name] = ClassStats(self.num_classes, feats.shape[1], self.scatter_mode, device=self.device, name=name)
            self.layers[name].update(feats, labels)
            self._spill.append(name, feats)
        if logits is not None:
            if self.logits is None:
                self.logits = LogitStats(self.num_classes)
            self.logits.update(logits, labels)
            if nc4_predictions is None:
                nc4_predictions = logits.argmax(1)
        self._spill.append(_LABELS, labels)
        if nc4_predictions is not None:
            self._spill.append(_NC4, nc4_predictions)

    # ------------------------------------------------------------------ after the pass
    def class_means(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (means, present-mask): the NCC reference this split provides to other splits."""
        return {name: (s.means.clone(), s.counts > 0) for name, s in self.layers.items()}

    def finish(
        self,
        reference_means: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        chunk_rows: int = 4096,
        replay_accumulators: dict[str, dict[str, object]] | None = None,
    ) -> None:
        """Replay the spilled features (see module docstring), then delete them.

        ``reference_means``: the training split's :meth:`class_means` for NCC decisions; None means
        this *is* the training split and its own means are used.
        ``replay_accumulators``: {layer: {key: factory}}; each ``factory(class_stats)`` returns an
        object with ``update(features, labels)`` (float64 features of that layer, in order) or None;
        the fed objects are kept in ``self.extras[layer][key]``. Bounds use this for moments that
        need the final means (fourth moments, decision-axis statistics) without another forward pass.
        """
        if self._spill is None:
            return
        for stats in self.layers.values():
            stats.check_finite()
        if self.logits is not None:
            self.logits.check_finite()
        try:
            for name, stats in self.layers.items():
                projected = ProjectedStats(stats.means, stats.counts, per_class=True)
                extras = {key: make(stats) for key, make in ((replay_accumulators or {}).get(name) or {}).items()}
                extras = {key: acc for key, acc in extras.items() if acc is not None}
                means, present = (reference_means or self.class_means())[name]
                counter = NCCCounter(means.to(self.device), present.to(self.device))
                use_nc4 = name == self.penultimate and _NC4 in self._spill.rows
                nc4_chunks = self._spill.chunks(_NC4, chunk_rows) if use_nc4 else ()
                chunks = zip_longest(self._spill.chunks(name, chunk_rows), self._spill.chunks(_LABELS, chunk_rows), nc4_chunks)
                for chunk, y, pred in chunks:
                    h = chunk.to(self.device)
                    y = y.to(self.device)
                    projected.update(h, y)
                    for acc in extras.values():
                        acc.update(h, y)
                    counter.update(h, y, None if pred is None else pred.to(self.device))
                self.projected[name] = projected
                self.ncc[name] = counter
                if extras:
                    self.extras[name] = extras
        finally:
            self._spill.close()
            self._spill = None
