"""The accumulator protocol every streaming statistic of ncbounds follows.

Modelled on the metric state of torchmetrics (reset / update / merge / compute): an accumulator is fed
batches with :meth:`update`, two accumulators of disjoint data combine with :meth:`merge` (shards,
workers, splits of a batch give the same result as one pass), and :meth:`state` returns a dict of
arrays from which ``from_state`` rebuilds it (save/load, sending between processes). Quantities are
computed from an accumulator by pure functions (``ncbounds.metrics``, ``ncbounds.bounds``), not by the
accumulator itself.

Followed by :class:`~ncbounds.stats.class_stats.ClassStats` (class counts, means, centered scatter) and
by the bound-only replay accumulators of :mod:`ncbounds.bounds.replay`.

:class:`ReplayBatch` carries what the replay accumulators of one layer share for one batch (the
float64 features, the deviations from the split's final class means and their squared norms), so
each is computed once per batch however many accumulators read it; an accumulator with an
``update_batch(batch)`` method is fed through it, any other through ``update(features, labels)``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Accumulator", "ReplayBatch", "add_row_products"]

#: rows per product in :func:`add_row_products` (a BLAS call that sums over more rows may split the
#: sum among its threads, and then its rounding depends on the thread count)
ROW_BLOCK = 256


def add_row_products(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor | None = None) -> torch.Tensor:
    """out += leftᵀ·right (right = left by default), a sum over the rows taken :data:`ROW_BLOCK` rows at a
    time in a fixed order, so the result is the same whatever the number of BLAS threads (the
    statistics of ``--jobs 2`` and of one process agree to the bit)."""
    right = left if right is None else right
    for start in range(0, left.shape[0], ROW_BLOCK):
        out.addmm_(left[start:start + ROW_BLOCK].T, right[start:start + ROW_BLOCK])
    return out


@runtime_checkable
class Accumulator(Protocol):
    """``update(features, labels)`` one batch; ``merge(other)`` disjoint data; ``state()`` → arrays."""

    def update(self, features: Any, labels: Any) -> Any: ...

    def merge(self, other: Any) -> Any: ...

    def state(self) -> dict: ...


class ReplayBatch:
    """One replayed batch of one layer and the quantities its replay accumulators share.

    ``features`` (B, d) any float dtype, ``labels`` (B,) int64 in 0..K−1, ``means`` (K×d float64): the
    split's final class means μ. Computed on first use and then kept:

    - :attr:`h` — the features in float64 on the device of ``means``;
    - :attr:`onehot` — the B×K float64 one-hot label matrix for K ≤ 64 (None above);
    - :attr:`counts` — samples per class in the batch (K,) int64;
    - :attr:`dev` — h_i − μ_{y_i} (B×d), the exact deviation from the final means (so nothing cancels);
    - :attr:`sq` — ‖h_i − μ_{y_i}‖² (B,).

    :meth:`deviations` returns :attr:`dev` for the split's own means and computes the deviations
    from any other means afresh.

    ``overwrite=True`` (the replay owns the feature rows and every reader uses only :attr:`dev`)
    forms the deviations in place of the features — one pass over the rows fewer — after which
    :attr:`h` is gone (reading it raises).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, overwrite: bool = False) -> None:
        self.means = means
        self._h: torch.Tensor | None = features.to(device=means.device, dtype=torch.float64)
        self.overwrite = overwrite
        self.y = labels.to(device=means.device, dtype=torch.int64).reshape(-1)
        self.num_classes = int(means.shape[0])
        self._onehot: torch.Tensor | None | bool = False
        self._counts: torch.Tensor | None = None
        self._dev: torch.Tensor | None = None
        self._sq: torch.Tensor | None = None

    @property
    def h(self) -> torch.Tensor:
        if self._h is None:
            raise RuntimeError("the features of this replay batch were overwritten by their deviations (overwrite=True).")
        return self._h

    @property
    def onehot(self) -> torch.Tensor | None:
        if self._onehot is False:
            from ncbounds.stats.class_stats import one_hot

            self._onehot = one_hot(self.y, self.num_classes)
        return self._onehot

    @property
    def counts(self) -> torch.Tensor:
        if self._counts is None:
            oh = self.onehot
            self._counts = (oh.sum(0).to(torch.int64) if oh is not None
                            else torch.bincount(self.y, minlength=self.num_classes))
        return self._counts

    @property
    def dev(self) -> torch.Tensor:
        if self._dev is None:
            oh = self.onehot
            h = self.h
            # h − onehot·M: the product picks μ_{y_i} exactly (one non-zero term), one rounding in the difference
            if self.overwrite:
                self._dev = h.addmm_(oh, self.means, alpha=-1.0) if oh is not None else h.sub_(self.means[self.y])
                self._h = None
            else:
                self._dev = torch.addmm(h, oh, self.means, alpha=-1.0) if oh is not None else h - self.means[self.y]
        return self._dev

    @property
    def sq(self) -> torch.Tensor:
        if self._sq is None:
            self._sq = torch.linalg.vector_norm(self.dev, dim=1).square()
        return self._sq

    @classmethod
    def checked(cls, features: Any, labels: Any, means: torch.Tensor, what: str) -> ReplayBatch | None:
        """A batch from user-facing ``update(features, labels)`` arguments, after checking the shape
        (B×d with B labels, d = the means' width) and the label range 0..K−1 (one sentence naming
        ``what`` otherwise); None for an empty batch."""
        from ncbounds.errors import StatisticsError

        h = torch.as_tensor(features)
        y = torch.as_tensor(labels).to(device=means.device, dtype=torch.int64).reshape(-1)
        K, d = int(means.shape[0]), int(means.shape[1])
        if h.ndim != 2 or h.shape[1] != d or h.shape[0] != y.numel():
            raise StatisticsError(f"{what} got features of shape {tuple(h.shape)} with {y.numel()} labels, "
                                  f"expected (batch, {d}) with one label per row.")
        if y.numel() == 0:
            return None
        if int(y.min()) < 0 or int(y.max()) >= K:
            raise StatisticsError(f"{what} got labels outside 0..{K - 1}.")
        return cls(h, y, means)

    def deviations_and_norms(self, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_i − m_{y_i}, ‖h_i − m_{y_i}‖²) for class means ``means``: the shared :attr:`dev` and
        :attr:`sq` when they are the split's final means."""
        dev = self.deviations(means)
        return dev, (self.sq if dev is self._dev else torch.linalg.vector_norm(dev, dim=1).square())

    def deviations(self, means: torch.Tensor) -> torch.Tensor:
        """h_i − m_{y_i} for class means ``means`` (K×d): :attr:`dev` when they are the split's final means."""
        if means is self.means or (means.shape == self.means.shape and torch.equal(means, self.means)):
            return self.dev
        return self.h - means.to(device=self.h.device, dtype=torch.float64)[self.y]
