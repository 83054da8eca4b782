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
        #: (K,) Σ_{i∈c} (h_i − μ_c)ᵀ(M̃ᵀM̃)⁺(h_i − μ_c) when ``per_class`` and M̃ has a rank, else None
        self.class_terms: torch.Tensor | None = None
        self._class_map: torch.Tensor | None = None
        if per_class:
            self._class_map = _between_pinv_map(self.centered[self.present] @ self.basis, self.means[self.present])
            if self._class_map is not None:
                self.class_terms = torch.zeros(K, dtype=torch.float64, device=self.means.device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> ProjectedStats:
        """Add a batch of the same split whose final means were given."""
        h = features.to(device=self.means.device, dtype=torch.float64)
        y = labels.to(device=self.means.device, dtype=torch.int64).reshape(-1)
        dev = h - self.means[y]
        z = dev @ self.basis
        self.within += z.T @ z
        # (μ_j − μ_i)ᵀ dev = (μ̃_j − μ̃_i)ᵀ dev with μ̃ the centered means (the offset cancels exactly)
        proj = dev @ self.centered.T
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
