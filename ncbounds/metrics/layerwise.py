"""Across-layer summaries: He & Su's law of data separation and the effective depth.

He & Su (2023, PNAS, "A law of data separation in deep learning") observe that the separation
fuzziness decays geometrically with depth, D_l ≈ ρ^l·D_0. We fit log D_l = a + b·l by least squares
over the hooked layers, l = 1..L in forward order, and report ρ = exp(b) and the Pearson correlation r
of (l, log D_l); ρ < 1 means the data get more separated with depth, r ≈ −1 means the law holds well.

Effective depth (Galanti, Galanti, Ben-Shaul 2023, "Comparative generalization bounds for deep neural
networks", Def. of ε-effective depth): the first layer (1-based, forward order) whose nearest-class-
center training error is ≤ ε.
"""

from __future__ import annotations

import math

import numpy as np


def he_su_fit(fuzziness: list[float | None]) -> dict[str, float | None]:
    """ρ = exp(slope) and Pearson r of the least-squares fit of log D_l on l = 1..L."""
    pts = [(i + 1, math.log(v)) for i, v in enumerate(fuzziness) if v is not None and v > 0]
    if len(pts) < 2 or len(pts) != len(fuzziness):
        return {"layerwise_rho": None, "layerwise_r": None}
    x, y = np.array(pts, dtype=np.float64).T
    slope, _ = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1]) if np.std(y) > 0 else None
    return {"layerwise_rho": float(math.exp(slope)), "layerwise_r": r}


def effective_depth(ncc_train_errors: list[float | None], epsilon: float) -> int | None:
    """1-based index of the first layer with NCC training error ≤ ε, or None if none reaches it."""
    for i, err in enumerate(ncc_train_errors):
        if err is not None and err <= epsilon:
            return i + 1
    return None
