"""Second-order statistics restricted to the span of the class means: an exact second pass over a split,
restricted to the ≤ K-dimensional span of its class means.

Every second-order quantity the collapse metrics need lives in the span of the centered class means:

- NC1 and He–Su's D need Σ_W only through Qᵀ Σ_W Q, where the d×r matrix Q is an orthonormal basis of
  span{μ_c − μ_G} (r ≤ K − 1): both Σ_B⁺ and SS_B⁺ are supported there;
- directional CDNV needs the per-class quadratic forms (μ_j − μ_i)ᵀ S_i (μ_j − μ_i), one K×K table.

Given the **final** class means of a split (from :class:`ClassStats`), one replay of that split's
features accumulates, with deviations taken from the exact final means (so nothing cancels),

    within[a, b] = Σ_i q_aᵀ(h_i − μ_{y_i}) · q_bᵀ(h_i − μ_{y_i})          (r×r, = Qᵀ S_W Q)
    pair_forms[i, j] = Σ_{x∈i} ((μ_j − μ_i)ᵀ(x − μ_i))²                  (K×K)
    sq_dev[c] = Σ_{x∈c} ‖x − μ_c‖²                                      (K, the classical two-pass spread)

in O(B·K·d) per batch and O(K² + d·K) memory — instead of d×d or K·d² scatter matrices. Replays of
shards with the same final means merge by addition.

Per-class NC1 terms (``per_class=True``) reuse the span coordinates z_i = Qᵀ(h_i − μ_{y_i}) of the
same replay: with the thin SVD M̃Q = U s Vᵀ of the between-class coordinates (rank rule of
``metrics.collapse.nc1``), (M̃ᵀM̃)⁺ = Q V s⁻² Vᵀ Qᵀ on the span, so class c's term
Σ_{i∈c} (h_i − μ_c)ᵀ(M̃ᵀM̃)⁺(h_i − μ_c) = Σ_{i∈c} ‖s⁻¹ Vᵀ z_i‖² costs O(B·r²) more per batch.
"""

from __future__ import annotations

import torch

from ncbounds.errors import StatisticsError
from ncbounds.stats.accumulator import ReplayBatch, add_row_products

_EPS = torch.finfo(torch.float64).eps


def mean_span_basis(means: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis Q (d×r) of span{μ_c − μ_G : c present} and the singular values of M̃.

    μ_G is the unweighted mean of the present class means. The numerical rank r counts singular
    values of M̃ above max(K, d)·ε·max(s_max, max_c ‖μ_c‖) and never exceeds K − 1 (the rows of M̃ sum
    to zero); the uncentered scale enters because centering means of norm 50 leaves rounding noise of
    order 50·ε in the null direction (NumPy's ``matrix_rank`` rule applied to the data's scale).
    """
    m = means[present]
    if m.shape[0] < 2:
        return means.new_zeros(means.shape[1], 0), means.new_zeros(0)
    centered = m - m.mean(0)
    _, s, vh = torch.linalg.svd(centered, full_matrices=False)
    scale = max(float(s[0]), float(m.norm(dim=1).max()))
    tol = scale * max(centered.shape) * _EPS
    r = min(int((s > tol).sum()), m.shape[0] - 1)
    return vh[:r].T.contiguous(), s[:r]


class ProjectedStats:
    """Replay accumulator of the span-restricted second moments of one layer (see module docstring)."""

    def __init__(self, means: torch.Tensor, counts: torch.Tensor, per_class: bool = False) -> None:
        self.means = means.to(torch.float64)
        self.present = counts > 0
        self.basis, self.singular_values = mean_span_basis(self.means, self.present)
        self.centered = self.means - self.means[self.present].mean(0) if bool(self.present.any()) else self.means
        K = self.means.shape[0]
        r = self.basis.shape[1]
        self.within = torch.zeros(r, r, dtype=torch.float64, device=self.means.device)
        self.pair_forms = torch.zeros(K, K, dtype=torch.float64, device=self.means.device)
        self.n = 0
        #: (K,) Σ_{i∈c} ‖h_i − μ_c‖², the within-class spread around the final means (exact deviations)
        self.sq_dev = torch.zeros(K, dtype=torch.float64, device=self.means.device)
        # one product gives both the span coordinates and the projections on the centered means
        self._rhs = torch.cat([self.basis, self.centered.T], dim=1)
        #: (K,) Σ_{i∈c} (h_i − μ_c)ᵀ(M̃ᵀM̃)⁺(h_i − μ_c) when ``per_class`` and M̃ has a rank, else None
        self.class_terms: torch.Tensor | None = None
        self._class_map: torch.Tensor | None = None
        if per_class:
            self._class_map = _between_pinv_map(self.centered[self.present] @ self.basis, self.means[self.present])
            if self._class_map is not None:
                self.class_terms = torch.zeros(K, dtype=torch.float64, device=self.means.device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> ProjectedStats:
        """Add a batch of the same split whose final means were given."""
        return self.update_batch(ReplayBatch(features, labels, self.means))

    def update_batch(self, batch: ReplayBatch) -> ProjectedStats:
        """:meth:`update` from a :class:`~ncbounds.stats.accumulator.ReplayBatch` (deviations shared)."""
        z, proj, _ = self.project(batch)
        return self.add(batch, z, proj)

    def extra_columns(self, columns: torch.Tensor | None) -> ProjectedStats:
        """Append d×m ``columns`` to the product of :meth:`project` (e.g. the NCC reference's centred
        means, so the replay multiplies each batch once); None removes them."""
        cols = [self.basis, self.centered.T] + ([] if columns is None else [columns.to(self.basis)])
        self._rhs = torch.cat(cols, dim=1)
        return self

    def project(self, batch: ReplayBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One product of the deviations h_i − μ_{y_i}: span coordinates (B×r), projections on the centred
        means (B×K) and on the :meth:`extra_columns` (B×m, None without them)."""
        r, K = self.basis.shape[1], self.means.shape[0]
        both = batch.deviations(self.means) @ self._rhs
        return both[:, :r], both[:, r:r + K], (both[:, r + K:] if both.shape[1] > r + K else None)

    def add(self, batch: ReplayBatch, z: torch.Tensor, proj: torch.Tensor) -> ProjectedStats:
        """Accumulate one batch from its :meth:`project` products."""
        y = batch.y
        add_row_products(self.within, z)
        self.sq_dev.index_add_(0, y, batch.deviations_and_norms(self.means)[1])
        # (μ_j − μ_i)ᵀ dev = (μ̃_j − μ̃_i)ᵀ dev with μ̃ the centered means (the offset cancels exactly)
        diff = proj - proj.gather(1, y.unsqueeze(1))
        self.pair_forms.index_add_(0, y, diff * diff)
        if self._class_map is not None:
            w = z @ self._class_map
            self.class_terms.index_add_(0, y, (w * w).sum(1))
        self.n += int(y.numel())
        return self

    def merge(self, other: ProjectedStats) -> ProjectedStats:
        """Add another shard's replay; both must use the same final means."""
        if not torch.equal(self.means, other.means.to(self.means.device)):
            raise StatisticsError("projected statistics can only be merged when computed with the same final class means.")
        self.within += other.within.to(self.within.device)
        self.pair_forms += other.pair_forms.to(self.pair_forms.device)
        self.sq_dev += other.sq_dev.to(self.sq_dev.device)
        if self.class_terms is not None and other.class_terms is not None:
            self.class_terms += other.class_terms.to(self.class_terms.device)
        self.n += other.n
        return self


def _between_pinv_map(coords: torch.Tensor, means: torch.Tensor) -> torch.Tensor | None:
    """r×r' matrix V s⁻¹ from the thin SVD of the between-class coordinates M̃Q (present rows).

    Singular values count above max(s_max, max‖μ_c‖)·max(K, d)·ε, the rule of ``metrics.collapse.nc1``
    (d = the feature dimension), so the per-class terms sum to N·NC1. None when no value survives.
    """
    if coords.shape[0] < 2 or coords.shape[1] == 0:
        return None
    _, s, vh = torch.linalg.svd(coords, full_matrices=False)
    tol = max(float(s[0]), float(means.norm(dim=1).max())) * max(coords.shape[0], means.shape[1]) * _EPS
    keep = s > tol
    if not bool(keep.any()):
        return None
    return vh[keep].T / s[keep]
