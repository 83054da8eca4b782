"""The accumulator protocol every streaming statistic of ncbounds follows.

Modelled on the metric state of torchmetrics (reset / update / merge / compute): an accumulator is fed
batches with :meth:`update`, two accumulators of disjoint data combine with :meth:`merge` (shards,
workers, splits of a batch give the same result as one pass), and :meth:`state` returns a dict of
arrays from which ``from_state`` rebuilds it (save/load, sending between processes). Quantities are
computed from an accumulator by pure functions (``ncbounds.metrics``, ``ncbounds.bounds``), not by the
accumulator itself.

Followed by :class:`~ncbounds.stats.class_stats.ClassStats` (class counts, means, centered scatter) and
by the bound-only replay accumulators of :mod:`ncbounds.bounds.replay`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Accumulator"]


@runtime_checkable
class Accumulator(Protocol):
    """``update(features, labels)`` one batch; ``merge(other)`` disjoint data; ``state()`` → arrays."""

    def update(self, features: Any, labels: Any) -> Any: ...

    def merge(self, other: Any) -> Any: ...

    def state(self) -> dict: ...
