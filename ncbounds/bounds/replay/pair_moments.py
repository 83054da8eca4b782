"""Per-class moments up to order four around a split's final class means (replay accumulator).

The exact-variance Cantelli bound on m-shot nearest-class-center error (``nc_cantelli`` in
``bounds/nc_certificates.py``) needs, for every class c with noise e = x − μ_c (x from class c):

- the covariance Σ_c = E[e eᵀ] (d×d; the bound uses tr Σ_c, tr Σ_c², tr(Σ_i Σ_j), (μ_i − μ_j)ᵀ Σ_c (μ_i − μ_j));
- the third-moment vector τ_c = E[e ‖e‖²] ∈ R^d (the pair third-moment table is
  T[i, j] = (μ_i − μ_j)ᵀ τ_j, see :meth:`PairMoments.moments`);
- the fourth moment κ_c = E‖e‖⁴.

Given the **final** class means of the split (from its ClassStats), one replay accumulates, per
class, with deviations e = x − μ_c taken from those exact means (nothing cancels):

    n_c,  S_c = Σ e eᵀ,  Σ e (residual, ≈ 0: a diagnostic),  Σ e‖e‖²,  Σ ‖e‖⁴.

All sums are over centred quantities, so shards replayed with the same means merge by addition.
The moments reported are those of the split's empirical distribution (divisor n_c): a genuine
distribution, so every variance built from them is ≥ 0 (unbiased corrections would not be jointly
consistent across orders).

Memory is K·d² float64 for the per-class scatter matrices; the factory declines (returns None) when
K·d²·8 bytes exceeds :data:`PAIR_MOMENTS_BUDGET_BYTES` (512 MiB).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ncbounds.bounds.base import ReplayInfo, ReplayRequest
from ncbounds.errors import StatisticsError
from ncbounds.stats.accumulator import ReplayBatch, add_row_products

__all__ = ["PAIR_MOMENTS", "PAIR_MOMENTS_BUDGET_BYTES", "PairMoments", "pair_moments_bytes", "pair_moments_factory"]

PAIR_MOMENTS_BUDGET_BYTES = 512 * 2**20
_F64 = torch.float64
_BLOCK_MIN_DIM = 128  # from this feature dimension on, S_c is accumulated by blocks (symmetry)


def pair_moments_bytes(num_classes: int, dim: int) -> int:
    """Bytes of the K per-class d×d scatter matrices (the dominant memory of :class:`PairMoments`)."""
    return int(num_classes) * int(dim) ** 2 * 8


class PairMoments:
    """Replay accumulator of per-class second, third and fourth moments around fixed class means."""

    #: fed through ``update_batch``, it reads only the deviations from the split's own final means
    reads_only_deviations = True

    def __init__(self, means: Any) -> None:
        self.means = torch.as_tensor(means).to(_F64)
        if self.means.ndim != 2:
            raise StatisticsError(f"PairMoments needs K×d class means, got shape {tuple(self.means.shape)}.")
        K, d = self.means.shape
        f64 = dict(dtype=_F64, device=self.means.device)
        self.counts = torch.zeros(K, dtype=torch.int64, device=self.means.device)
        self.scatter = torch.zeros(K, d, d, **f64)
        self.first = torch.zeros(K, d, **f64)
        self.third = torch.zeros(K, d, **f64)
        self.fourth = torch.zeros(K, **f64)
        self._moments: dict[str, np.ndarray] | None = None  # memo of moments(), cleared by update/merge
        self._lower_stale = False  # the lower off-diagonal block of the scatter lags behind (see _complete)

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def update(self, features: Any, labels: Any) -> PairMoments:
        """Add a batch (B×d features, B labels in 0..K−1) of the split whose final means were given."""
        batch = ReplayBatch.checked(features, labels, self.means, "pair-moment replay")
        return self if batch is None else self.update_batch(batch)

    def update_batch(self, batch: ReplayBatch) -> PairMoments:
        """:meth:`update` from a :class:`~ncbounds.stats.accumulator.ReplayBatch` of checked labels
        (the deviations and their squared norms are shared with the other replay accumulators)."""
        e, sq = batch.deviations_and_norms(self.means)
        y = batch.y
        counts_b = batch.counts
        self.counts += counts_b
        self._moments = None
        self.first.index_add_(0, y, e)
        self.third.index_add_(0, y, e * sq.unsqueeze(1))
        self.fourth.index_add_(0, y, sq * sq)
        order = torch.argsort(y, stable=True)
        half = self.dim // 2 if self.dim >= _BLOCK_MIN_DIM else 0
        for c, chunk in enumerate(torch.split(e.index_select(0, order), counts_b.tolist())):
            if not chunk.shape[0]:
                continue
            if half:  # S_c is symmetric: its two diagonal blocks and the upper off-diagonal one (3/4 of the work)
                left, right = chunk[:, :half], chunk[:, half:]
                S = self.scatter[c]
                add_row_products(S[:half, :half], left)
                add_row_products(S[half:, half:], right)
                add_row_products(S[:half, half:], left, right)
                self._lower_stale = True
            else:
                add_row_products(self.scatter[c], chunk)
        return self

    def _complete(self) -> None:
        """Copy the upper off-diagonal block into the lower one (which the block updates leave stale)."""
        if self._lower_stale:
            half = self.dim // 2
            self.scatter[:, half:, :half] = self.scatter[:, :half, half:].transpose(1, 2)
            self._lower_stale = False

    def merge(self, other: PairMoments) -> PairMoments:
        """Add another shard's replay; both must use the same class means."""
        if not torch.equal(self.means, other.means.to(self.means.device)):
            raise StatisticsError("pair moments can only be merged when computed with the same final class means.")
        dev = self.means.device
        self._moments = None
        self._complete()
        other._complete()
        self.counts += other.counts.to(dev)
        self.scatter += other.scatter.to(dev)
        self.first += other.first.to(dev)
        self.third += other.third.to(dev)
        self.fourth += other.fourth.to(dev)
        return self

    def mean_residual(self) -> float:
        """max_c ‖(1/n_c) Σ e‖ / (1 + ‖μ_c‖): how far the given means are from the replayed data's means."""
        n = self.counts.to(_F64).clamp(min=1.0).unsqueeze(1)
        r = (self.first / n).norm(dim=1) / (1.0 + self.means.norm(dim=1))
        return float(r.max()) if r.numel() else 0.0

    def moments(self) -> dict[str, np.ndarray]:
        """Empirical-distribution moments (numpy float64; rows of absent classes are NaN).

        Keys: ``counts`` (K), ``present`` (K bool), ``means`` (K×d), ``trace`` tr Σ_c (K), ``trace_sq``
        tr Σ_c² = ‖Σ_c‖_F² (K), ``cross`` tr(Σ_i Σ_j) (K×K), ``quad`` (μ_i − μ_j)ᵀ Σ_i (μ_i − μ_j) (K×K,
        covariance of the row class), ``third`` τ_c = E[e‖e‖²] (K×d), ``third_pair`` (μ_i − μ_j)ᵀ τ_j
        (K×K, third moment of the column class), ``fourth`` κ_c = E‖e‖⁴ (K), ``sq_dist`` ‖μ_i − μ_j‖² (K×K).

        Computed once per state (the bounds that read them share it); each call returns fresh copies.
        """
        if self._moments is None:
            self._moments = self._compute_moments()
        return {key: value.copy() for key, value in self._moments.items()}

    def _compute_moments(self) -> dict[str, np.ndarray]:
        self._complete()
        K, d = self.num_classes, self.dim
        n = self.counts.to(_F64)
        present = n > 0
        nan = float("nan")
        safe = n.clamp(min=1.0)
        # symmetrised covariance (S + Sᵀ)/(2 n_c): one transposed read, scaled in place
        cov = torch.add(self.scatter, self.scatter.transpose(1, 2)).mul_((0.5 / safe).view(-1, 1, 1))
        # centre the means (differences are translation invariant; smaller numbers, less cancellation)
        mu = self.means - (self.means[present].mean(0) if bool(present.any()) else 0.0)
        flat = cov.reshape(K, d * d)
        cross = flat @ flat.T
        quad = torch.empty(K, K, dtype=_F64, device=mu.device)
        for i in range(K):
            D = mu - mu[i]
            quad[i] = ((D @ cov[i]) * D).sum(1)
        tau = self.third / safe.unsqueeze(1)
        # third_pair[i, j] = (μ_i − μ_j)ᵀ τ_j
        third_pair = (mu @ tau.T) - (tau * mu).sum(1).unsqueeze(0)
        sq_dist = torch.cdist(mu.unsqueeze(0), mu.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist")[0] ** 2
        out = {
            "counts": self.counts.cpu().numpy(),
            "present": present.cpu().numpy(),
            "means": self.means.cpu().numpy(),
            "trace": torch.diagonal(cov, dim1=1, dim2=2).sum(1).cpu().numpy(),
            "trace_sq": torch.diagonal(cross).cpu().numpy(),  # ‖Σ_c‖_F² = ⟨Σ_c, Σ_c⟩
            "cross": cross.cpu().numpy(),
            "quad": quad.cpu().numpy(),
            "third": tau.cpu().numpy(),
            "third_pair": third_pair.cpu().numpy(),
            "fourth": (self.fourth / safe).cpu().numpy(),
            "sq_dist": sq_dist.cpu().numpy(),
        }
        absent = ~out["present"]
        for key in ("trace", "trace_sq", "fourth"):
            out[key][absent] = nan
        out["third"][absent] = nan
        for key in ("cross", "quad", "third_pair", "sq_dist"):
            out[key][absent, :] = nan
            out[key][:, absent] = nan
        return out

    def state(self) -> dict[str, np.ndarray]:
        """Arrays describing the accumulator (for shipping between processes)."""
        self._complete()
        return {key: getattr(self, key).cpu().numpy() for key in ("means", "counts", "scatter", "first", "third", "fourth")}

    @classmethod
    def from_state(cls, state: dict) -> PairMoments:
        """Inverse of :meth:`state`."""
        out = cls(np.asarray(state["means"]))
        out.counts = torch.as_tensor(np.asarray(state["counts"]), dtype=torch.int64)
        for key in ("scatter", "first", "third", "fourth"):
            setattr(out, key, torch.as_tensor(np.asarray(state[key]), dtype=_F64))
        out._moments = None
        return out

    def __repr__(self) -> str:
        return f"PairMoments(K={self.num_classes}, d={self.dim}, N={int(self.counts.sum())})"


def pair_moments_factory(stats: Any, info: ReplayInfo | None = None,
                         budget_bytes: int = PAIR_MOMENTS_BUDGET_BYTES) -> PairMoments | None:
    """Replay factory of :data:`PAIR_MOMENTS` (test split; ``info`` unused: the split's own means).

    Uses the split's final class means (``stats.means``). Returns None — the Cantelli bound then
    reports "needs per-class covariances: K·d² too large" — when K·d²·8 bytes exceed ``budget_bytes``.
    """
    K, d = int(stats.means.shape[0]), int(stats.means.shape[1])
    if pair_moments_bytes(K, d) > budget_bytes:
        return None
    return PairMoments(stats.means)


#: The statistic of ``nc_cantelli`` and ``gaussian_ncc``, on the test split.
PAIR_MOMENTS = ReplayRequest("pair_moments", pair_moments_factory, splits=("test",))
