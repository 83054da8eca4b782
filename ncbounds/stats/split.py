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

from ncbounds.errors import DataError
from ncbounds.stats.accumulator import ReplayBatch
from ncbounds.stats.class_stats import ClassStats, one_hot
from ncbounds.stats.logit_stats import LogitStats
from ncbounds.stats.ncc import NCCCounter
from ncbounds.stats.projected import ProjectedStats
from ncbounds.stats.spill import DEFAULT_MEMORY_BUDGET, FeatureSpill

_LABELS, _NC4 = "__labels__", "__nc4__"
_CHUNK_BYTES = 4 * 2**20  # float64 bytes of one replayed chunk of one layer (at most chunk_rows rows): cache-sized temporaries


class SplitStatistics:
    """Streaming accumulator for one split (single-label data: ``task`` 'multiclass').

    Parameters
    ----------
    num_classes: K.
    penultimate: name of the layer whose features feed the final linear layer (NC4 is computed there).
    scatter_mode: ClassStats scatter mode; the default 'none' keeps no d×d matrices (the replay
        supplies the second-order quantities). 'per-class' is useful to cross-check the replay.
    memory_budget: bytes of features kept in RAM/device memory before the copy moves to disk.
    expected_rows: samples the split will have, if known: each layer's float64 copy is then one
        block allocated once (:meth:`FeatureSpill.reserve`) instead of one block per batch.
    """

    def __init__(
        self,
        num_classes: int,
        penultimate: str | None = None,
        scatter_mode: str = "none",
        device: str | torch.device = "cpu",
        spill_dir: str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        expected_rows: int | None = None,
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
        self._spill = FeatureSpill(spill_dir, memory_budget, capacity=expected_rows)

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
        two_pass = self.scatter_mode == "none"  # the replay supplies the spread (ClassStats.update_means)
        if two_pass:
            labels = _checked_labels(labels, self.num_classes)
            onehot = one_hot(labels, self.num_classes)
        # layers first, in forward order: non-finite values are reported at the first layer showing them
        for name, feats in features.items():
            if name not in self.layers:
                self.layers[name] = ClassStats(self.num_classes, feats.shape[1], self.scatter_mode, device=self.device, name=name)
            if two_pass:
                # the float64 copy made for the sums is written where the replay reads it, when the
                # split's rows fit a store in the memory budget (no second conversion); otherwise the
                # features are kept as they came, as a copy that may move to disk
                out = self._spill.reserve(name, tuple(feats.shape), torch.float64, self.device) if feats.ndim == 2 else None
                wide = self.layers[name].update_means(feats, labels, onehot, out=out)
                self._spill.append(name, feats if out is None else wide, disk_dtype=feats.dtype)
            else:
                self.layers[name].update(feats, labels)
                self._spill.append(name, feats)
        if logits is not None:
            if self.logits is None:
                self.logits = LogitStats(self.num_classes)
            self.logits.update(logits, labels)
            if nc4_predictions is None:
                nc4_predictions = self.logits.last_predictions  # argmax of the logits, bias included
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
                # the NCC scores of the replay come from the same product as the span coordinates
                # (the training split's own centred means are the projected statistics' columns)
                own = torch.equal(counter.centered, projected.centered)
                projected.extra_columns(None if own else counter.centered.T)
                use_nc4 = name == self.penultimate and _NC4 in self._spill.rows
                rows = max(1, min(chunk_rows, _CHUNK_BYTES // (8 * stats.dim)))  # float64 temporaries of a chunk stay small
                nc4_chunks = self._spill.chunks(_NC4, rows) if use_nc4 else ()
                chunks = zip_longest(self._spill.chunks(name, rows), self._spill.chunks(_LABELS, rows), nc4_chunks)
                # the rows are the spill's own float64 copy and every reader takes only the deviations:
                # form them in place (ReplayBatch overwrite)
                overwrite = self._spill.owns(name) and all(getattr(acc, "reads_only_deviations", False) for acc in extras.values())
                for chunk, y, pred in chunks:
                    batch = ReplayBatch(chunk.to(self.device), y.to(self.device), stats.means, overwrite=overwrite)
                    z, proj, extra = projected.project(batch)
                    projected.add(batch, z, proj)
                    counter.update_products(batch, proj if own else extra, None if pred is None else pred.to(self.device))
                    for acc in extras.values():
                        if hasattr(acc, "update_batch"):
                            acc.update_batch(batch)
                        else:
                            acc.update(batch.h, batch.y)
                if stats.spread_pending:
                    stats.set_spread(projected.sq_dev)
                self.projected[name] = projected
                self.ncc[name] = counter
                if extras:
                    self.extras[name] = extras
        finally:
            self._spill.close()
            self._spill = None


def _checked_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 labels (B,), checked to lie in 0..K−1 (on the CPU; a GPU batch is not synchronised)."""
    y = labels.to(torch.int64).reshape(-1)
    if y.device.type == "cpu" and y.numel():
        low, high = (int(v) for v in torch.aminmax(y))
        if low < 0 or high >= num_classes:
            raise DataError(
                f"labels must lie in 0..{num_classes - 1} (the model has {num_classes} "
                f"outputs) but range over {low}..{high}; fix the labels or --arch-kwargs num_classes."
            )
    return y
