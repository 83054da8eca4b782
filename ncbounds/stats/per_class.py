"""Per-class replay statistics: each class's share of NC1 and its nearest-class-center errors.

Needs a split's **final** class means (like :class:`~ncbounds.stats.projected.ProjectedStats`), so it
is fed during the replay of the spilled features after the pass (``SplitStatistics.finish(...,
replay_accumulators=...)``), never by a second forward pass.

NC1 share. Canonical NC1 = Tr(Σ_W Σ_B⁺)/K (Papyan, Han & Donoho 2020) with Σ_W = (1/N) Σ_i
(h_i − μ_{y_i})(·)ᵀ = Σ_c (n_c/N) Σ_c and Σ_B = M̃ᵀM̃/K, so Tr(Σ_W Σ_B⁺)/K = Tr(Σ_W (M̃ᵀM̃)⁺) and

    NC1 = Σ_c share_c,   share_c = (1/N) Σ_{i∈c} (h_i − μ_c)ᵀ (M̃ᵀM̃)⁺ (h_i − μ_c)
                                  = Tr((n_c/N) Σ_c Σ_B⁺)/K,

the class-c part of the within-class covariance against the same between-class pseudo-inverse.
(M̃ᵀM̃)⁺ is taken exactly as ``metrics.collapse.nc1`` takes it — restricted to the span of the centered
means (basis from :func:`~ncbounds.stats.projected.mean_span_basis`), from the SVD of the K×r
between-class coordinates, same rank cut-off — so the shares sum to the library's NC1 up to rounding.
Per sample the term is ‖s⁻¹ Vᵀ Qᵀ(h_i − μ_c)‖², a sum of squares (never negative); the cost is
O(B·d·r) per batch and the memory O(K + d·r).

NCC errors. Each sample's nearest-class-center decision against ``reference_means`` (the training
split's means; the split's own means when None, i.e. for the training split), counted per true class,
with :class:`~ncbounds.stats.ncc.NCCCounter`'s decision rule (ties to the lowest index, absent classes
never chosen).

Shards replayed against the same final means merge by addition.
"""

from __future__ import annotations

import torch

from ncbounds.errors import StatisticsError
from ncbounds.stats.ncc import NCCCounter
from ncbounds.stats.projected import mean_span_basis

_EPS = torch.finfo(torch.float64).eps


def _whitening(means: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """d×r' matrix A with (M̃ᵀM̃)⁺ = A Aᵀ on the mean span (A = Q V s⁻¹; rank rule of metrics.collapse.nc1)."""
    d = means.shape[1]
    basis, _ = mean_span_basis(means, present)
    if basis.shape[1] == 0:
        return means.new_zeros(d, 0)
    m = means[present]
    centered = m - m.mean(0)
    _, s, vh = torch.linalg.svd(centered @ basis, full_matrices=False)
    scale = float(m.norm(dim=1).max())
    tol = max(float(s[0]), scale) * max(centered.shape) * _EPS
    keep = s > tol
    return basis @ (vh[keep].T / s[keep])


class PerClassReplay:
    """Replay accumulator of per-class NC1 terms and NCC errors of one layer and split.

    Parameters
    ----------
    means, counts:
        The split's final class means (K×d) and counts (K,) — ``ClassStats.means`` / ``.counts``.
    reference_means, reference_present:
        Means for the NCC decisions (the training split's) and which of them exist; default: ``means``
        and ``counts > 0`` (the training split itself).

    Attributes after the replay: ``n`` (K,) samples seen per class, ``nc1_terms`` (K,)
    Σ_{i∈c} (h_i − μ_c)ᵀ(M̃ᵀM̃)⁺(h_i − μ_c), ``ncc_errors`` (K,) NCC mistakes per true class.
    """

    def __init__(self, means, counts, reference_means=None, reference_present=None) -> None:
        self.means = torch.as_tensor(means).to(torch.float64)
        counts = torch.as_tensor(counts).to(device=self.means.device)
        self.present = counts > 0
        self.whiten = _whitening(self.means, self.present)
        if reference_means is None:
            ref, ref_present = self.means, self.present
        else:
            ref = torch.as_tensor(reference_means).to(device=self.means.device, dtype=torch.float64)
            ref_present = (torch.ones(len(ref), dtype=torch.bool, device=ref.device) if reference_present is None
                           else torch.as_tensor(reference_present).to(ref.device).bool())
        if ref.shape != self.means.shape:
            raise StatisticsError(
                f"NCC reference means have shape {tuple(ref.shape)}, the split's means {tuple(self.means.shape)}; "
                "pass the same layer's training means."
            )
        self.reference = NCCCounter(ref, ref_present)
        K = self.means.shape[0]
        dev = self.means.device
        self.n = torch.zeros(K, dtype=torch.int64, device=dev)
        self.nc1_terms = torch.zeros(K, dtype=torch.float64, device=dev)
        self.ncc_errors = torch.zeros(K, dtype=torch.int64, device=dev)

    def update(self, features, labels) -> PerClassReplay:
        """Add a batch (B, d) with integer labels (B,) of the split whose final means were given."""
        h = torch.as_tensor(features).to(device=self.means.device, dtype=torch.float64)
        y = torch.as_tensor(labels).to(device=self.means.device, dtype=torch.int64).reshape(-1)
        if h.ndim != 2 or h.shape[1] != self.means.shape[1] or h.shape[0] != y.shape[0]:
            raise StatisticsError(
                f"per-class replay got features {tuple(h.shape)} and labels {tuple(y.shape)}, "
                f"expected (B, {self.means.shape[1]}) and (B,)."
            )
        if y.numel() == 0:
            return self
        z = (h - self.means[y]) @ self.whiten
        self.nc1_terms.index_add_(0, y, (z * z).sum(1))
        self.n.index_add_(0, y, torch.ones_like(y))
        wrong = (self.reference.decide(h) != y).to(torch.int64)
        self.ncc_errors.index_add_(0, y, wrong)
        return self

    def merge(self, other: PerClassReplay) -> PerClassReplay:
        """Add another shard's replay; both must use the same final means and NCC reference."""
        if not torch.equal(self.means, other.means.to(self.means.device)) or not torch.equal(
            self.reference.means, other.reference.means.to(self.means.device)
        ):
            raise StatisticsError("per-class replays can only be merged when computed with the same final class means and NCC reference.")
        self.n += other.n.to(self.n.device)
        self.nc1_terms += other.nc1_terms.to(self.nc1_terms.device)
        self.ncc_errors += other.ncc_errors.to(self.ncc_errors.device)
        return self

    def nc1_shares(self) -> torch.Tensor:
        """share_c = nc1_terms_c / N (K,); they sum to canonical NC1 (zeros if nothing was replayed)."""
        total = int(self.n.sum())
        return self.nc1_terms / total if total else torch.zeros_like(self.nc1_terms)


class PerClassTerms:
    """The per-class replay terms as the pipeline's own replay collects them (no extra pass).

    :class:`~ncbounds.stats.projected.ProjectedStats` (``per_class=True``) keeps each class's NC1 term
    from the span coordinates it computes anyway, and :class:`~ncbounds.stats.ncc.NCCCounter` counts
    its NCC mistakes per true class; this wraps both with the interface of :class:`PerClassReplay`
    (``n``, ``nc1_terms``, ``ncc_errors``, :meth:`nc1_shares`), which computes the same numbers on
    its own. ``nc1_terms`` is None when M̃ has no numerical rank (NC1 undefined).
    """

    def __init__(self, projected, counter) -> None:
        self.n = counter.class_n
        self.nc1_terms = projected.class_terms
        self.ncc_errors = counter.class_errors

    def nc1_shares(self) -> torch.Tensor | None:
        """share_c = nc1_terms_c / N (K,), summing to canonical NC1; None when NC1 is undefined."""
        if self.nc1_terms is None:
            return None
        total = int(self.n.sum())
        return self.nc1_terms / total if total else torch.zeros_like(self.nc1_terms)
