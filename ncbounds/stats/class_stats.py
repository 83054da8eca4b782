"""Float64 class-conditional sufficient statistics of one feature layer.

For every class c the accumulator keeps the count n_c, the mean μ_c, the centered sum of squared
deviations Σ_{i∈c} ‖h_i − μ_c‖² and optionally the centered scatter Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ —
one d×d matrix per class (``scatter_mode='per-class'``), the pooled within-class scatter summed over
classes (``'pooled'``), or none (``'none'``: the model pipeline's mode, which takes the second-order
quantities from a replay restricted to the span of the class means, see ``stats/projected.py``).
Batches are combined with the pairwise update of Chan, Golub & LeVeque (1979/1983): for parts a and
b of one class with δ = μ_b − μ_a,

    n = n_a + n_b,   μ = μ_a + δ·n_b/n,   S = S_a + S_b + δδᵀ·n_a n_b/n.

Only centered quantities are ever summed, so strongly collapsed features (within-class spread 1e-6
around means of norm 50) keep full relative accuracy, where raw second moments E[hhᵀ] − μμᵀ would
cancel catastrophically and can even turn negative. Memory is O(K·d + K·d²) or O(K·d + d²),
independent of the number of samples: O(K·d) plus K·d², d² or nothing for the scatter.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from ncbounds.errors import DataError, StatisticsError
from ncbounds.io.output import write_atomic

SCATTER_MODES = ("per-class", "pooled", "none")


class ClassStats:
    """Mergeable float64 per-class counts, means and centered scatter of one layer's features.

    Parameters
    ----------
    num_classes, dim:
        K and d.
    scatter_mode:
        ``'per-class'`` keeps K matrices d×d (everything, including directional CDNV, in one pass);
        ``'pooled'`` keeps only the within-class scatter S_W = Σ_c S_c; ``'none'`` keeps no d×d
        matrix (second-order metrics then need a :class:`~ncbounds.stats.projected.ProjectedStats`).
    name:
        Layer name, used in error messages (e.g. NaN features).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        scatter_mode: str = "per-class",
        device: str | torch.device = "cpu",
        name: str = "features",
    ) -> None:
        if scatter_mode not in SCATTER_MODES:
            raise ValueError(f"scatter_mode must be one of {SCATTER_MODES}, not {scatter_mode!r}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.scatter_mode = scatter_mode
        self.name = name
        dev = torch.device(device)
        f64 = dict(dtype=torch.float64, device=dev)
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=dev)
        self.means = torch.zeros(num_classes, dim, **f64)
        self.sq_dev = torch.zeros(num_classes, **f64)
        shape = {"per-class": (num_classes, dim, dim), "pooled": (dim, dim), "none": (0,)}[scatter_mode]
        self.scatter = torch.zeros(shape, **f64)
        self._nonfinite: torch.Tensor | None = None

    # ------------------------------------------------------------------ accumulation
    def update(self, features, labels) -> ClassStats:
        """Add a batch: ``features`` (B, d), ``labels`` (B,) integer class indices in 0..K−1."""
        x = torch.as_tensor(features)
        y = torch.as_tensor(labels)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise StatisticsError(
                f"layer {self.name} gave features of shape {tuple(x.shape)}, expected (batch, {self.dim})."
            )
        if x.shape[0] == 0:
            return self
        if y.device.type == "cpu" and y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataError(
                f"labels must lie in 0..{self.num_classes - 1} (the model has {self.num_classes} "
                f"outputs) but range over {int(y.min())}..{int(y.max())}; fix the labels or --arch-kwargs num_classes."
            )
        x = x.to(device=self.means.device, dtype=torch.float64)
        y = y.to(device=self.means.device, dtype=torch.int64).reshape(-1)
        self._check_batch_finite(x)
        batch = ClassStats._from_batch(x, y, self.num_classes, self.scatter_mode)
        return self.merge(batch)

    def update_means(self, features: torch.Tensor, labels: torch.Tensor, onehot: torch.Tensor | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        """Add a batch to the counts and means only; returns the batch's features in float64.

        The fast path of a pass that is followed by a replay (:class:`~ncbounds.stats.split.SplitStatistics`):
        the within-class spread is then summed from exact deviations to the *final* means in the replay
        (the classical two-pass algorithm, no cancellation either) and handed over with
        :meth:`set_spread`; until then ``sq_dev`` is NaN. Means are still merged with the Chan et al.
        update. ``labels`` must already be int64 in 0..K−1 on this device (the caller checks them
        once per batch for all layers); ``onehot`` (B×K float64, optional) is their one-hot matrix,
        shared by the layers of one batch. ``out`` (B×d float64, optional) receives the float64
        features (e.g. rows of a preallocated store) instead of a new tensor.
        """
        if self.scatter_mode != "none":
            raise StatisticsError("update_means() keeps no scatter matrices; use update() with scatter_mode "
                                  f"{self.scatter_mode!r}.")
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise StatisticsError(
                f"layer {self.name} gave features of shape {tuple(features.shape)}, expected (batch, {self.dim})."
            )
        if features.shape[0] == 0:
            return features.to(torch.float64)
        x = out.copy_(features) if out is not None else features.to(device=self.means.device, dtype=torch.float64)
        counts, sums = _class_sums(x, labels, self.num_classes, onehot)
        if x.device.type == "cpu":
            # a NaN/Inf feature makes its class's column sum NaN or ±Inf (+Inf and −Inf give NaN, never a
            # finite value), so the K×d sums stand for the B×d batch; the exact test confirms (finite
            # features whose sum overflows are not refused)
            if not math.isfinite(float(sums.sum())) and not bool(torch.isfinite(x).all()):
                self._raise_nonfinite()
        else:
            self._check_batch_finite(x)
        # Chan et al.'s update of the means (as in merge()): μ = μ_a + δ·n_b/n, δ = μ_b − μ_a
        n_b = counts.to(torch.float64)
        n = (self.counts + counts).to(torch.float64)
        delta = sums / n_b.clamp(min=1.0).unsqueeze(1) - self.means
        self.means = self.means + delta * (n_b / n.clamp(min=1.0)).unsqueeze(1)
        self.counts = self.counts + counts
        if not self.spread_pending:
            self.sq_dev = torch.full_like(self.sq_dev, float("nan"))
            self.spread_pending = True
        return x

    def set_spread(self, sq_dev: torch.Tensor) -> ClassStats:
        """Install Σ_{i∈c} ‖h_i − μ_c‖² (K,) computed by an exact second pass over the data of
        :meth:`update_means` around the final means (ends the pending state)."""
        self.sq_dev = sq_dev.to(device=self.means.device, dtype=torch.float64).clone()
        self.spread_pending = False
        return self

    def _check_batch_finite(self, x: torch.Tensor) -> None:
        if x.device.type == "cpu":
            # one reduction instead of an elementwise test: the sum is finite unless an entry is NaN/Inf
            # (or the sum overflows, in which case the exact test decides)
            if not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
                self._raise_nonfinite()
        else:  # on a GPU the check is deferred to check_finite(): no host synchronisation per batch
            finite = torch.isfinite(x).all()
            self._nonfinite = ~finite if self._nonfinite is None else self._nonfinite | ~finite

    def _raise_nonfinite(self):
        raise StatisticsError(
            f"layer {self.name} produced NaN or Inf features; check the checkpoint's weights "
            f"and the input normalization (or evaluate without --amp to rule out half-precision overflow)."
        )

    def check_finite(self) -> ClassStats:
        """Raise if any batch seen on a GPU held NaN/Inf (CPU batches are checked on arrival)."""
        if self._nonfinite is not None and bool(self._nonfinite):
            self._raise_nonfinite()
        return self

    @classmethod
    def _from_batch(cls, x: torch.Tensor, y: torch.Tensor, K: int, mode: str) -> ClassStats:
        """Exact centered statistics of one batch (two-pass within the batch: mean, then deviations)."""
        out = cls.__new__(cls)
        out.num_classes, out.dim, out.scatter_mode, out.name = K, x.shape[1], mode, "batch"
        out._nonfinite = None
        counts, sums = _class_sums(x, y, K)
        means = sums / counts.clamp(min=1).unsqueeze(1)
        dev = x - means[y]
        out.counts, out.means = counts, means
        out.sq_dev = torch.zeros(K, dtype=x.dtype, device=x.device).index_add_(0, y, (dev * dev).sum(1))
        if mode == "none":
            out.scatter = x.new_zeros(0)
        elif mode == "pooled":
            out.scatter = dev.T @ dev
        else:
            out.scatter = torch.zeros(K, x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
            order = torch.argsort(y, stable=True)
            chunks = torch.split(dev[order], counts.tolist())
            for c, chunk in enumerate(chunks):
                if chunk.shape[0]:
                    out.scatter[c] = chunk.T @ chunk
        return out

    def merge(self, other: ClassStats) -> ClassStats:
        """Combine with another accumulator of the same layer (Chan et al. pairwise update); returns self."""
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise StatisticsError(
                f"cannot merge statistics of shape (K={other.num_classes}, d={other.dim}) into "
                f"(K={self.num_classes}, d={self.dim}); they come from different layers or label sets."
            )
        if other.scatter_mode != self.scatter_mode:
            raise StatisticsError(f"cannot merge {other.scatter_mode} into {self.scatter_mode} scatter statistics; use one scatter mode.")
        n_a = self.counts.to(torch.float64)
        n_b = other.counts.to(device=self.counts.device, dtype=torch.float64)
        n = n_a + n_b
        safe_n = n.clamp(min=1.0)
        delta = other.means.to(self.means.device) - self.means
        # weight of the between-parts term n_a n_b / n (zero when either part is empty)
        w = n_a * n_b / safe_n
        self.means = self.means + delta * (n_b / safe_n).unsqueeze(1)
        self.sq_dev = self.sq_dev + other.sq_dev.to(self.sq_dev.device) + w * (delta * delta).sum(1)
        other_scatter = other.scatter.to(self.scatter.device)
        if self.scatter_mode == "pooled":
            self.scatter = self.scatter + other_scatter + (delta * w.unsqueeze(1)).T @ delta
        elif self.scatter_mode == "per-class":
            self.scatter = self.scatter + other_scatter + w.view(-1, 1, 1) * delta.unsqueeze(2) * delta.unsqueeze(1)
        self.counts = self.counts + other.counts.to(self.counts.device)
        if other._nonfinite is not None:
            flag = other._nonfinite.to(self.means.device)
            self._nonfinite = flag if self._nonfinite is None else self._nonfinite | flag
        return self

    spread_pending = False

    # ------------------------------------------------------------------ derived quantities
    @property
    def total(self) -> int:
        """N, the number of samples seen."""
        return int(self.counts.sum())

    def within_scatter(self) -> torch.Tensor:
        """Pooled within-class scatter S_W = Σ_c Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ (d×d, unnormalized)."""
        if self.scatter_mode == "none":
            raise StatisticsError("these statistics were collected without scatter matrices (scatter_mode='none').")
        return self.scatter if self.scatter_mode == "pooled" else self.scatter.sum(0)

    def to(self, device) -> ClassStats:
        """Move all accumulators to ``device`` (returns self)."""
        for key in ("counts", "means", "sq_dev", "scatter"):
            setattr(self, key, getattr(self, key).to(device))
        return self

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, np.ndarray]:
        """Arrays that fully describe the accumulator (for save / shipping between processes)."""
        return {
            "counts": self.counts.cpu().numpy(),
            "means": self.means.cpu().numpy(),
            "sq_dev": self.sq_dev.cpu().numpy(),
            "scatter": self.scatter.cpu().numpy(),
            "scatter_mode": np.array(self.scatter_mode),
            "name": np.array(self.name),
        }

    @classmethod
    def from_state(cls, state: dict) -> ClassStats:
        """Inverse of :meth:`state`."""
        means = np.asarray(state["means"])
        out = cls(means.shape[0], means.shape[1], scatter_mode=str(state["scatter_mode"]), name=str(state["name"]))
        out.counts = torch.as_tensor(np.asarray(state["counts"]), dtype=torch.int64)
        out.means = torch.as_tensor(means, dtype=torch.float64)
        out.sq_dev = torch.as_tensor(np.asarray(state["sq_dev"]), dtype=torch.float64)
        out._nonfinite = None
        out.scatter = torch.as_tensor(np.asarray(state["scatter"]), dtype=torch.float64)
        return out

    def save(self, path: str | Path) -> None:
        """Write to an ``.npz`` file (exact float64 round trip)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.state())
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> ClassStats:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            return cls.from_state({k: z[k] for k in z.files})

    def __repr__(self) -> str:
        return f"ClassStats(name={self.name!r}, K={self.num_classes}, d={self.dim}, N={self.total}, {self.scatter_mode})"


#: up to this many classes, class sums are one BLAS product with the one-hot label matrix
ONEHOT_MAX_CLASSES = 64


def one_hot(labels: torch.Tensor, num_classes: int, dtype=torch.float64) -> torch.Tensor | None:
    """B×K one-hot matrix of int64 ``labels`` (in 0..K−1, not checked) in ``dtype`` when K ≤
    :data:`ONEHOT_MAX_CLASSES`, else None."""
    if num_classes > ONEHOT_MAX_CLASSES:
        return None
    # a scatter of ones (torch's one_hot would also scan the labels for their range: they are checked already)
    out = torch.zeros(labels.shape[0], num_classes, dtype=dtype, device=labels.device)
    return out.scatter_(1, labels.reshape(-1, 1), 1.0)


def _class_sums(x: torch.Tensor, y: torch.Tensor, K: int, onehot: torch.Tensor | None = None):
    """Per-class counts (K,) int64 and sums (K×d) of float64 rows ``x``, without a host sync.

    The sums are a scatter (index_add, rows added in order): unlike a one-hot product over the batch,
    whose BLAS call may split the sum over rows among threads, it rounds the same whatever the number
    of threads. ``onehot`` (B×K, optional) gives the counts."""
    counts = (onehot.sum(0).to(torch.int64) if onehot is not None
              else torch.zeros(K, dtype=torch.int64, device=x.device).index_add_(0, y, torch.ones_like(y)))
    return counts, torch.zeros(K, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
