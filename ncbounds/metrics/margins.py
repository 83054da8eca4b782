"""Margin summaries and the empirical ramp/margin loss (Bartlett, Foster & Telgarsky 2017, §2).

γ_i = f(x_i)_{y_i} − max_{j≠y_i} f(x_i)_j. Percentiles use linear interpolation between order
statistics (NumPy's default ``method='linear'``).
"""

from __future__ import annotations

import numpy as np


def margin_summary(margins: np.ndarray) -> dict[str, float | None]:
    """margin_min, margin_p5, margin_p10, margin_median of the per-sample margins."""
    m = np.asarray(margins, dtype=np.float64)
    if m.size == 0:
        return {"margin_min": None, "margin_p5": None, "margin_p10": None, "margin_median": None}
    p5, p10, p50 = np.percentile(m, [5, 10, 50])
    return {"margin_min": float(m.min()), "margin_p5": float(p5), "margin_p10": float(p10), "margin_median": float(p50)}


def margin_loss(margins: np.ndarray, gamma: float) -> float:
    """L̂_γ = (1/m) Σ_i 1[γ_i ≤ γ], the empirical margin loss (Bartlett et al. 2017, eq. before Lemma 3.1)."""
    m = np.asarray(margins, dtype=np.float64)
    return float(np.mean(m <= gamma)) if m.size else float("nan")


def ramp_loss(margins: np.ndarray, gamma: float) -> float:
    """Empirical ramp loss (1/m) Σ_i ℓ_γ(γ_i), ℓ_γ(t) = 1 for t ≤ 0, 1 − t/γ for 0 < t < γ, 0 for t ≥ γ.

    It lies between the 0-1 error and L̂_γ (Bartlett et al. 2017, proof of Lemma A.4).
    """
    m = np.asarray(margins, dtype=np.float64)
    return float(np.mean(np.clip(1.0 - m / gamma, 0.0, 1.0))) if m.size else float("nan")
