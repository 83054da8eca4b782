"""Neural-collapse metrics as pure functions of class statistics (the "Metrics" section of
``docs/architecture.md``).

Notation: K classes (those present in the split), features h ∈ R^d, n_c samples of class c, N total;
μ_c class means, μ_G their unweighted mean (Papyan, Han & Donoho 2020), M̃ = [μ_c − μ_G] (K×d);
Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ, Σ_B = (1/K) M̃ᵀM̃; v_c = E_c‖h − μ_c‖² (biased);
W (K×d) the final linear layer's weight.

Second-order quantities enter only through the span of the centered class means: with Q (d×r)
an orthonormal basis of that span (r ≤ K − 1, see ``stats/projected.py`` for the rank rule), NC1 and
He–Su's D need Qᵀ Σ_W Q, and directional CDNV needs the per-class quadratic forms
(μ_j − μ_i)ᵀ S_i (μ_j − μ_i). These come either from a :class:`ProjectedStats` replay (the model
pipeline: no d×d matrix is ever formed) or from the scatter matrices a :class:`ClassStats` may hold.
Pseudo-inverses are taken from the thin SVD of the K×r between-class coordinate matrix, never as a
d×d generic pinv with an eps cutoff; each quadratic form of the PSD Σ_W is clipped at 0 so rounding
can never make NC1 negative.

Classes absent from the split are left out (the caller records a note); every function returns
``None`` rather than NaN when the quantity is undefined (fewer than two classes, coinciding means).
"""

from __future__ import annotations

import functools
import math

import torch

from ncbounds.metrics.conventions import CANONICAL, Convention
from ncbounds.stats.class_stats import ClassStats
from ncbounds.stats.projected import ProjectedStats, mean_span_basis

_EPS = torch.finfo(torch.float64).eps


class _Geometry:
    """Present-class view of the statistics with the derived matrices every metric shares."""

    def __init__(self, stats: ClassStats, convention: Convention, projected: ProjectedStats | None = None) -> None:
        present = stats.counts > 0
        self.present = present
        self.counts = stats.counts[present].to(torch.float64)
        self.means = stats.means[present]
        self.sq_dev = stats.sq_dev[present]
        self.K = int(present.sum())
        self.N = float(self.counts.sum())
        self.d = stats.dim
        if convention.global_mean == "samples":
            self.global_mean = (self.counts.unsqueeze(1) * self.means).sum(0) / self.N
        else:
            self.global_mean = self.means.mean(0)
        self.centered = self.means - self.global_mean
        self.scale = float(self.means.norm(dim=1).max()) if self.K else 0.0
        self.stats = stats
        self.projected = projected

    @functools.cached_property
    def second_order(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(Q, Qᵀ Σ_W Q) with Σ_W = S_W/N, or None when no second-order statistics were collected."""
        if self.projected is not None:
            return self.projected.basis, self.projected.within / self.N
        if self.stats.scatter_mode == "none":
            return None
        basis, _ = mean_span_basis(self.stats.means, self.stats.counts > 0)
        return basis, basis.T @ self.stats.within_scatter() @ basis / self.N

    def pinv_trace(self, between_rows: torch.Tensor) -> float | None:
        """Tr(Σ_W (BᵀB)⁺) for rows B in the mean span: Σ_k max(v_kᵀ Z v_k, 0)/s_k² from the SVD of BQ."""
        second = self.second_order
        if second is None:
            return None
        basis, within = second
        if basis.shape[1] == 0:
            return None
        _, s, vh = torch.linalg.svd(between_rows @ basis, full_matrices=False)
        tol = max(float(s[0]), self.scale) * max(between_rows.shape) * _EPS
        keep = s > tol
        if not bool(keep.any()):
            return None
        v, s = vh[keep], s[keep]
        quad = ((v @ within) * v).sum(1).clamp(min=0.0)
        return float((quad / (s * s)).sum())

    @functools.cached_property
    def pair_sq_distances(self) -> torch.Tensor:
        """‖μ_i − μ_j‖² over present classes (shared by CDNV and directional CDNV)."""
        return _pair_sq_distances(self.centered)

    @functools.cached_property
    def pair_forms(self) -> torch.Tensor | None:
        """Q[i, j] = (μ_j − μ_i)ᵀ S_i (μ_j − μ_i) over present classes, or None if not collected."""
        if self.projected is not None:
            idx = torch.nonzero(self.present).squeeze(1)
            return self.projected.pair_forms[idx][:, idx]
        if self.stats.scatter_mode != "per-class":
            return None
        scatter = self.stats.scatter[self.present]
        quad = torch.empty(self.K, self.K, dtype=torch.float64, device=self.means.device)
        for i in range(self.K):
            diff = self.centered - self.centered[i]
            quad[i] = ((diff @ scatter[i]) * diff).sum(1)
        return quad


def _geometry(stats, convention: Convention, projected: ProjectedStats | None = None) -> _Geometry:
    """The shared view of ``stats`` (built once by :func:`collapse_metrics` and passed to every metric)."""
    return stats if isinstance(stats, _Geometry) else _Geometry(stats, convention, projected)


def between_rank(stats: ClassStats) -> int:
    """Numerical rank of M̃ (≤ min(K − 1, d)); below that, NC1 uses the pseudo-inverse on the rank."""
    return int(mean_span_basis(stats.means, stats.counts > 0)[0].shape[1])


def nc1(stats: ClassStats, convention: Convention = CANONICAL, projected: ProjectedStats | None = None) -> float | None:
    """NC1 = Tr(Σ_W Σ_B⁺)/K (Papyan, Han & Donoho 2020, PNAS, Fig. 6; the canonical convention).

    Σ_B = M̃ᵀM̃/K, so Tr(Σ_W Σ_B⁺)/K = Tr(Σ_W (M̃ᵀM̃)⁺). Convention modes: without the 1/K (Papyan's
    notebook), Σ_B normalized by d (rhubarbwu: factor d/K), or He & Su's frequency-weighted SS_B.
    """
    g = _geometry(stats, convention, projected)
    if g.K < 2:
        return None
    if convention.nc1_frequency_weighted:
        value = g.pinv_trace(_frequency_rows(g))  # Tr(Σ_W SS_B⁺), He & Su
        return None if value is None else (value / g.K if convention.nc1_divide_by_classes else value)
    value = g.pinv_trace(g.centered)  # = Tr(Σ_W Σ_B⁺)/K with Σ_B = M̃ᵀM̃/K
    if value is None:
        return None
    value *= _between_scale(g, convention)
    return value if convention.nc1_divide_by_classes else value * g.K


def _between_scale(g: _Geometry, convention: Convention) -> float:
    """Factor d/K when Σ_B is normalized by the feature dimension instead of K (rhubarbwu)."""
    return g.d / g.K if convention.between_divisor == "dimension" else 1.0


def _frequency_rows(g: _Geometry) -> torch.Tensor:
    """Rows √(n_c/N)(μ_c − μ̄), μ̄ the sample mean: their Gram is He & Su's SS_B."""
    weights = g.counts / g.N
    sample_mean = (weights.unsqueeze(1) * g.means).sum(0)
    return weights.sqrt().unsqueeze(1) * (g.means - sample_mean)


def trace_ratio(stats: ClassStats, convention: Convention = CANONICAL) -> float | None:
    """Tr Σ_W / Tr Σ_B (Tirer, Huang & Niles-Weed 2023; the C_l of Wang et al. 2023)."""
    g = _geometry(stats, convention)
    tr_b = float((g.centered * g.centered).sum()) / g.K
    if g.K < 2 or tr_b == 0.0:
        return None
    return float(g.sq_dev.sum()) / g.N / tr_b * _between_scale(g, convention)


def separation_fuzziness(stats: ClassStats, convention: Convention = CANONICAL, projected: ProjectedStats | None = None) -> float | None:
    """He & Su (2023, PNAS, "A law of data separation") D = Tr(SS_W SS_B⁺).

    SS_W = (1/N) Σ_i (h_i − μ_{y_i})(·)ᵀ = Σ_W and the frequency-weighted
    SS_B = Σ_c (n_c/N)(μ_c − μ̄)(μ_c − μ̄)ᵀ with μ̄ the sample mean; balanced classes give D = K·NC1.
    """
    g = _geometry(stats, convention, projected)
    if g.K < 2:
        return None
    return g.pinv_trace(_frequency_rows(g))


def _pair_sq_distances(centered: torch.Tensor) -> torch.Tensor:
    """‖μ_i − μ_j‖² from the Gram matrix of the centered means (offset removed before expanding)."""
    gram = centered @ centered.T
    diag = gram.diagonal()
    return (diag.unsqueeze(0) + diag.unsqueeze(1) - 2.0 * gram).clamp(min=0.0)


def cdnv(stats: ClassStats, convention: Convention = CANONICAL) -> float | None:
    """Class-distance normalized variance (Galanti, György & Hutter 2022, ICLR, Def. 1), averaged.

    CDNV = mean over i<j of (v_i + v_j) / (2‖μ_i − μ_j‖²), v_c = E_c‖h − μ_c‖² (biased); the quartic
    convention uses ‖μ_i − μ_j‖⁴.
    """
    g = _geometry(stats, convention)
    if g.K < 2:
        return None
    dist = g.pair_sq_distances
    i, j = torch.triu_indices(g.K, g.K, offset=1)
    if bool((dist[i, j] == 0).any()):
        return None
    var = g.sq_dev / g.counts
    denom = dist[i, j] ** convention.cdnv_distance_exponent
    return float(((var[i] + var[j]) / (2.0 * denom)).mean())


def directional_cdnv(stats: ClassStats, convention: Convention = CANONICAL, projected: ProjectedStats | None = None) -> float | None:
    """Directional CDNV (Luthra, Salunkhe & Galanti 2026), averaged over ordered pairs i ≠ j.

    Ṽ_ij = u_ijᵀ Σ_i u_ij / ‖μ_j − μ_i‖², u_ij = (μ_j − μ_i)/‖μ_j − μ_i‖, Σ_i = (1/n_i) S_i (biased):
    the class-i variance along the direction of class j, in units of the squared distance. Needs
    per-class scatter matrices or a :class:`ProjectedStats` replay; returns None otherwise.
    """
    g = _geometry(stats, convention, projected)
    quad = g.pair_forms if g.K >= 2 else None
    if quad is None:
        return None
    dist = g.pair_sq_distances
    off = ~torch.eye(g.K, dtype=torch.bool, device=dist.device)
    if bool((dist[off] == 0).any()):
        return None
    ratio = quad.clamp(min=0.0) / g.counts.unsqueeze(1) / (dist * dist).where(off, torch.ones_like(dist))
    return float(ratio[off].mean())


def _std(x: torch.Tensor, ddof: int) -> float:
    return float(torch.std(x, correction=ddof)) if x.numel() > ddof else 0.0


def equinorm(rows: torch.Tensor, convention: Convention = CANONICAL) -> float | None:
    """NC2 equinorm: std_c ‖row_c‖ / mean_c ‖row_c‖ (Papyan et al. 2020, Fig. 2)."""
    norms = rows.norm(dim=1)
    mean = float(norms.mean())
    return None if mean == 0.0 else _std(norms, convention.std_ddof) / mean


def _off_diagonal_cosines(rows: torch.Tensor) -> torch.Tensor | None:
    norms = rows.norm(dim=1)
    if bool((norms == 0).any()):
        return None
    unit = rows / norms.unsqueeze(1)
    cos = unit @ unit.T
    off = ~torch.eye(len(rows), dtype=torch.bool, device=rows.device)
    return cos[off]


def equiangularity(rows: torch.Tensor, convention: Convention = CANONICAL) -> float | None:
    """NC2 equiangularity: std over ordered pairs c ≠ c' of cos(row_c, row_c') (Papyan et al. 2020, Fig. 3)."""
    cos = _off_diagonal_cosines(rows)
    return None if cos is None else _std(cos, convention.std_ddof)


def max_angle(rows: torch.Tensor) -> float | None:
    """NC2 "max-angle": mean over ordered pairs c ≠ c' of |cos(row_c, row_c') + 1/(K−1)| (Papyan et al. 2020, Fig. 4)."""
    cos = _off_diagonal_cosines(rows)
    return None if cos is None else float((cos + 1.0 / (len(rows) - 1)).abs().mean())


def etf_error(gram: torch.Tensor) -> float | None:
    """‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F (Zhu et al. 2021, NeurIPS, NC2/NC3 metrics)."""
    k = gram.shape[0]
    norm = float(torch.linalg.matrix_norm(gram))
    if norm == 0.0 or k < 2:
        return None
    etf = (torch.eye(k, dtype=gram.dtype, device=gram.device) - 1.0 / k) / math.sqrt(k - 1)
    return float(torch.linalg.matrix_norm(gram / norm - etf))


def nc3_papyan(centered_means: torch.Tensor, weight: torch.Tensor, convention: Convention = CANONICAL) -> float | None:
    """NC3 self-duality ‖W/‖W‖_F − M̃/‖M̃‖_F‖_F² (Papyan et al. 2020, Fig. 5; squared in canonical mode)."""
    wn, mn = float(torch.linalg.matrix_norm(weight)), float(torch.linalg.matrix_norm(centered_means))
    if wn == 0.0 or mn == 0.0:
        return None
    dist = float(torch.linalg.matrix_norm(weight / wn - centered_means / mn))
    return dist * dist if convention.nc3_squared else dist


def collapse_metrics(
    stats: ClassStats,
    W=None,
    convention: Convention = CANONICAL,
    projected: ProjectedStats | None = None,
) -> dict[str, float | None]:
    """Every collapse metric that needs only class statistics (and the classifier weight W, if given).

    Keys: nc1, trace_ratio, separation_fuzziness, cdnv, directional_cdnv, nc2_equinorm_means,
    nc2_equiangular_means, nc2_maxangle_means, nc2_etf_error_means, and with W also
    nc2_equinorm_classifier, nc2_etf_error_classifier, nc3_papyan, nc3_zhu. Classifier rows of classes
    absent from the split are left out together with their means. ``projected`` supplies the
    second-order statistics when ``stats`` holds no scatter matrices.
    """
    g = _Geometry(stats, convention, projected)  # one view: SVDs, Σ_W projection and distances computed once
    out: dict[str, float | None] = {
        "nc1": nc1(g, convention),
        "trace_ratio": trace_ratio(g, convention),
        "separation_fuzziness": separation_fuzziness(g, convention),
        "cdnv": cdnv(g, convention),
        "directional_cdnv": directional_cdnv(g, convention),
    }
    means = g.centered
    enough = g.K >= 2
    out["nc2_equinorm_means"] = equinorm(means, convention) if enough else None
    out["nc2_equiangular_means"] = equiangularity(means, convention) if enough else None
    out["nc2_maxangle_means"] = max_angle(means) if enough else None
    out["nc2_etf_error_means"] = etf_error(means @ means.T) if enough else None
    if W is not None:
        w = torch.as_tensor(W).to(device=means.device, dtype=torch.float64)[g.present]
        out["nc2_equinorm_classifier"] = equinorm(w, convention) if enough else None
        out["nc2_etf_error_classifier"] = etf_error(w @ w.T) if enough else None
        out["nc3_papyan"] = nc3_papyan(means, w, convention) if enough else None
        out["nc3_zhu"] = etf_error(w @ means.T) if enough else None
    return out


def collapse_notes(stats: ClassStats, split: str, layer: str) -> list[str]:
    """One-sentence notes on degenerate statistics: absent classes, one-sample classes, low rank."""
    notes = []
    counts = stats.counts.tolist()
    absent = [c for c, n in enumerate(counts) if n == 0]
    single = [c for c, n in enumerate(counts) if n == 1]
    if absent:
        notes.append(
            f"{split} split has no samples of {_classes(absent)}; {layer} metrics use the "
            f"{len(counts) - len(absent)} present classes (add samples of every class for comparable numbers)."
        )
    if single:
        notes.append(
            f"{_classes(single)} {'has' if len(single) == 1 else 'have'} a single {split} sample, so the within-class variance is 0 "
            f"at {layer}; treat CDNV/NC1 with care or add samples."
        )
    k = len(counts) - len(absent)
    if k >= 2:
        rank = between_rank(stats)
        if rank < min(k - 1, stats.dim):
            notes.append(
                f"the {split} class means at {layer} span only {rank} of {min(k - 1, stats.dim)} dimensions "
                f"(rank-deficient Σ_B); NC1 uses the pseudo-inverse on that rank."
            )
    return notes


def _classes(items: list[int]) -> str:
    return ("class " if len(items) == 1 else "classes ") + _short(items)


def _short(items: list[int], limit: int = 8) -> str:
    text = ", ".join(map(str, items[:limit]))
    return text + (f" … ({len(items)} in all)" if len(items) > limit else "")
