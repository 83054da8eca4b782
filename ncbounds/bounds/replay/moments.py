"""Per-class fourth moments about the final class means (replay accumulator of ``luthra_new``).

Luthra, Salunkhe & Galanti (2026, Thm 4.1) bound the m-shot nearest-class-center error with a term
Θ_ij = (M4_i + M4_j)/‖μ_i − μ_j‖⁴, where M4_c = E_c‖x − μ_c‖⁴ is the fourth moment of the distance to
the class mean. That moment cannot be merged from the streaming pass's (count, mean, centered sum of
squares) without third and fourth raw-moment cross terms, so it is collected in the replay, where the
split's *final* class means are known and deviations are taken from them exactly:

    count[c]      = n_c
    sum_sq[c]     = Σ_{x∈c} ‖x − μ_c‖²        (equals ClassStats.sq_dev up to rounding: a cross-check)
    sum_fourth[c] = Σ_{x∈c} ‖x − μ_c‖⁴

in O(B·d) per batch and O(K·d) memory. Replays of shards of one split (same final means) merge by
addition. Nothing cancels: every term is a sum of non-negative numbers computed from exact deviations.
"""

from __future__ import annotations

import numpy as np
import torch

from ncbounds.bounds.base import ReplayInfo, ReplayRequest
from ncbounds.errors import StatisticsError
from ncbounds.stats.accumulator import ReplayBatch
from ncbounds.stats.class_stats import ClassStats


class ClassMoments:
    """Replay accumulator of per-class Σ‖x − μ_c‖² and Σ‖x − μ_c‖⁴ around the final means of ``stats``.

    ``update(features, labels)`` takes a (B, d) batch (cast to float64) of the same split whose final
    statistics were given. :meth:`fourth_moment` returns M4_c = (1/n_c)·Σ‖x − μ_c‖⁴ (the plain
    sample mean, as in the authors' reference code of Luthra et al. 2026).
    """

    #: fed through ``update_batch``, it reads only the deviations from the split's own final means
    reads_only_deviations = True

    def __init__(self, stats: ClassStats) -> None:
        self.means = stats.means.detach().to(torch.float64).clone()
        self.expected_counts = stats.counts.detach().clone()
        K = self.means.shape[0]
        dev = self.means.device
        self.counts = torch.zeros(K, dtype=torch.int64, device=dev)
        self.sum_sq = torch.zeros(K, dtype=torch.float64, device=dev)
        self.sum_fourth = torch.zeros(K, dtype=torch.float64, device=dev)

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    def update(self, features, labels) -> ClassMoments:
        """Add a batch: ``features`` (B, d), ``labels`` (B,) in 0..K−1."""
        batch = ReplayBatch.checked(features, labels, self.means, "moment replay")
        return self if batch is None else self.update_batch(batch)

    def update_batch(self, batch: ReplayBatch) -> ClassMoments:
        """:meth:`update` from a :class:`~ncbounds.stats.accumulator.ReplayBatch` of checked labels
        (the deviations and their squared norms are shared with the other replay accumulators)."""
        _, r2 = batch.deviations_and_norms(self.means)
        y = batch.y
        self.counts += batch.counts
        self.sum_sq.index_add_(0, y, r2)
        self.sum_fourth.index_add_(0, y, r2 * r2)
        return self

    def merge(self, other: ClassMoments) -> ClassMoments:
        """Add another shard's replay of the same split (same final means); returns self."""
        if not torch.equal(self.means, other.means.to(self.means.device)):
            raise StatisticsError("class moments can only be merged when computed with the same final class means.")
        self.counts += other.counts.to(self.counts.device)
        self.sum_sq += other.sum_sq.to(self.sum_sq.device)
        self.sum_fourth += other.sum_fourth.to(self.sum_fourth.device)
        return self

    @property
    def complete(self) -> bool:
        """True when the replay saw exactly the samples the class statistics counted."""
        return bool(torch.equal(self.counts, self.expected_counts.to(self.counts.device)))

    def fourth_moment(self) -> torch.Tensor:
        """M4_c = Σ_{x∈c}‖x − μ_c‖⁴ / n_c (K,), NaN for classes without samples."""
        n = self.counts.to(torch.float64)
        out = self.sum_fourth / n.clamp(min=1.0)
        return out.where(self.counts > 0, torch.full_like(out, float("nan")))

    def second_moment(self) -> torch.Tensor:
        """v_c = Σ_{x∈c}‖x − μ_c‖² / n_c (K,), NaN for classes without samples (biased, = ClassStats.sq_dev/n_c)."""
        n = self.counts.to(torch.float64)
        out = self.sum_sq / n.clamp(min=1.0)
        return out.where(self.counts > 0, torch.full_like(out, float("nan")))

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, np.ndarray]:
        return {
            "means": self.means.cpu().numpy(),
            "expected_counts": self.expected_counts.cpu().numpy(),
            "counts": self.counts.cpu().numpy(),
            "sum_sq": self.sum_sq.cpu().numpy(),
            "sum_fourth": self.sum_fourth.cpu().numpy(),
        }

    @classmethod
    def from_state(cls, state: dict) -> ClassMoments:
        out = cls.__new__(cls)
        out.means = torch.as_tensor(np.asarray(state["means"]), dtype=torch.float64)
        out.expected_counts = torch.as_tensor(np.asarray(state["expected_counts"]), dtype=torch.int64)
        out.counts = torch.as_tensor(np.asarray(state["counts"]), dtype=torch.int64)
        out.sum_sq = torch.as_tensor(np.asarray(state["sum_sq"]), dtype=torch.float64)
        out.sum_fourth = torch.as_tensor(np.asarray(state["sum_fourth"]), dtype=torch.float64)
        return out

    def __repr__(self) -> str:
        return f"ClassMoments(K={self.num_classes}, d={self.means.shape[1]}, N={int(self.counts.sum())})"


def class_moments_factory(stats: ClassStats, info: ReplayInfo | None = None) -> ClassMoments:
    """Replay factory of :data:`CLASS_MOMENTS` (``info`` unused: the split's own final means)."""
    return ClassMoments(stats)


#: Thm 4.1's fourth moments, on both splits (the bound may be evaluated on either).
CLASS_MOMENTS = ReplayRequest("class_moments", class_moments_factory, splits=("train", "test"))
