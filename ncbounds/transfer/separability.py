"""Class-separability transferability scores of frozen features: GBC, SFDA and the raw NCTI terms.

Same inputs and conventions as :mod:`ncbounds.transfer.scores` (which re-exports every function here):
target features f (N × d) and integer labels re-coded to 0..K−1, float64 throughout, higher is better,
the paper's definition by default and the authors' code only as a named convention. GBC and NCTI share
the exact PCA below, SFDA and NCTI the Fisher-LDA pieces (class priors, scatters, shrinkage, LDA posterior).

References (paper, then the public code we compared against):
- GBC: Pándy, Agostinelli, Uijlings, Ferrari & Mensink (2022), CVPR, "Transferability estimation using
  Bhattacharyya class separability"; code google-research/stable_transfer (transferability/gbc.py,
  PCA to 64 dimensions in its configs).
- SFDA: Shao, Zhao, Ge, Zhang, Yang, Wang, Shan & Luo (2022), ECCV, "Not all models are equal: predicting
  model transferability in a self-challenging Fisher space"; code github.com/TencentARC/SFDA (metrics.py).
- NCTI: Wang, Luo, Zheng, Huang & Baktashmotlagh (2023), ICCV, "How far pre-trained models are from
  neural collapse on the target dataset informs their transferability"; code github.com/BUserName/NCTI
  (metrics.py ``NCTI_Score``; the combination across models is in :mod:`ncbounds.transfer.ranking`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg

from ncbounds.errors import StatisticsError
from ncbounds.transfer._checks import choice, class_means, features_and_labels

__all__ = ["gbc", "ncti_terms", "sfda"]


# ================================================================================================
# PCA and LDA pieces shared by the scores
# ================================================================================================
def _pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(centred projection onto the top ``dims`` principal axes, all explained variances with ddof 1).

    Exact: eigen-decomposition of the covariance (sklearn's ``PCA(svd_solver='full')`` up to the signs
    of the axes, which none of the scores here depends on).
    """
    xc = x - x.mean(axis=0)
    n = x.shape[0]
    lam, v = np.linalg.eigh(xc.T @ xc / max(n - 1, 1))
    order = np.argsort(lam)[::-1]
    lam, v = np.clip(lam[order], 0.0, None), v[:, order]
    return xc @ v[:, :dims], lam


def _scatter(x: np.ndarray, y: np.ndarray, k: int):
    """(priors π_c, means μ_c, within S_W = Σ_c π_c Cov_c, total S_T), all with 1/n normalisation."""
    counts, means = class_means(x, y, k)
    n, d = x.shape
    xw = x - means[y]
    sw = xw.T @ xw / n
    xt = x - x.mean(axis=0)
    st = xt.T @ xt / n
    return counts / n, means, sw, st


def _shrink(s: np.ndarray, lam: float) -> np.ndarray:
    """(1 − λ)S + λ·(tr S/d)·I (scikit-learn's ``shrunk_covariance``)."""
    d = s.shape[0]
    out = (1.0 - lam) * s
    out[np.diag_indices(d)] += lam * np.trace(s) / d
    return out


def _softmax(a: np.ndarray) -> np.ndarray:
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def _lda_posterior(x: np.ndarray, priors: np.ndarray, means: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian-LDA posterior softmax_c(xᵀΣ⁻¹μ_c − ½ μ_cᵀΣ⁻¹μ_c + ln π_c) for every row x."""
    try:
        factor = linalg.cho_factor(sigma)
    except linalg.LinAlgError as err:
        raise StatisticsError("the within-class covariance is singular; these features need shrinkage or more samples.") from err
    coef = linalg.cho_solve(factor, means.T).T  # μ_c Σ⁻¹
    intercept = -0.5 * np.einsum("cd,cd->c", means, coef) + np.log(priors)
    return _softmax(x @ coef.T + intercept)


def _power_iteration_eigenvalue(a: np.ndarray, iterations: int = 3) -> float:
    """TencentARC/SFDA ``iterative_A``: x = row sums of A; repeat (y = Ax/‖Ax‖, x = Ay/‖Ay‖); return xᵀAy."""
    x = a.sum(axis=1)
    y = x
    for _ in range(iterations):
        t = a @ x
        y = t / np.linalg.norm(t)
        t = a @ y
        x = t / np.linalg.norm(t)
    return float(x @ a @ y)


# ================================================================================================
# GBC
# ================================================================================================
def gbc(features, labels, kind: str = "spherical", pca_dim: int | None = 64, convention: str = "paper",
        variance_floor: float = 1e-4) -> float:
    """GBC (Pándy et al. 2022): −Σ over ordered class pairs of the Bhattacharyya coefficient exp(−D_B).

    Each class c is modelled as a Gaussian N(μ_c, Σ_c) with Σ_c = diag(s_c) (``kind='diagonal'``:
    s_c,j the biased per-dimension variance, floored at ``variance_floor`` = 1e−4 as in the public
    code) or Σ_c = s̄_c·I (``kind='spherical'``: s̄_c the mean of the floored per-dimension variances).
    With s = (s_i + s_j)/2 the Bhattacharyya distance of two Gaussians is

        D_B = ⅛ (μ_i − μ_j)ᵀ Σ⁻¹ (μ_i − μ_j) + ½ ln( |Σ| / √(|Σ_i| |Σ_j|) ),

    i.e. ⅛ Σ_l (μ_il − μ_jl)²/s_l + ½ Σ_l [ln s_l − ½ ln s_il − ½ ln s_jl] over the d' dimensions.
    GBC = −Σ_{i≠j} exp(−D_B(i, j)) ∈ [−K(K−1), 0]: −K(K−1) when all classes coincide, → 0 when they are
    well separated.

    ``pca_dim``: features are first projected onto their top ``pca_dim`` principal axes (exact PCA,
    centred) when d > ``pca_dim`` — the stable_transfer configurations use 64; ``None`` keeps all d.

    Conventions
    -----------
    ``'paper'`` (default): the determinant term of a spherical Gaussian in d' dimensions is
    ½·d'·[ln s̄ − ½ ln s̄_i − ½ ln s̄_j] (the formula above with Σ = s̄·I).
    ``'stable_transfer'``: google-research/stable_transfer (gbc.py) evaluates the spherical
    determinant term once, without the factor d' (a scalar variance passed to the diagonal formula);
    choose it to reproduce GBC values published with that code. Diagonal GBC is the same in both.
    The public code also casts the PCA output to float32; we stay in float64.
    """
    choice(kind, ("spherical", "diagonal"), "kind")
    choice(convention, ("paper", "stable_transfer"), "convention")
    x, y, k = features_and_labels(features, labels)
    if pca_dim is not None and x.shape[1] > int(pca_dim):
        x, _ = _pca(x, int(pca_dim))
    d = x.shape[1]
    counts, means = class_means(x, y, k)
    var = np.zeros_like(means)
    np.add.at(var, y, (x - means[y]) ** 2)
    var = np.maximum(var / counts[:, None], variance_floor)
    if kind == "spherical":
        s = var.mean(axis=1)  # (K,)
        log_factor = float(d) if convention == "paper" else 1.0
        total = 0.0
        for i in range(k):
            others = np.arange(k) != i
            avg = (s[i] + s[others]) / 2.0
            quad = np.sum((means[i] - means[others]) ** 2, axis=1) / avg / 8.0
            logt = 0.5 * log_factor * (np.log(avg) - 0.5 * np.log(s[i]) - 0.5 * np.log(s[others]))
            total += float(np.sum(np.exp(-(quad + logt))))
        return -total
    total = 0.0
    logv = np.log(var)
    for i in range(k):
        others = np.arange(k) != i
        avg = (var[i] + var[others]) / 2.0
        quad = np.sum((means[i] - means[others]) ** 2 / avg, axis=1) / 8.0
        logt = 0.5 * np.sum(np.log(avg) - 0.5 * logv[i] - 0.5 * logv[others], axis=1)
        total += float(np.sum(np.exp(-(quad + logt))))
    return -total


# ================================================================================================
# SFDA
# ================================================================================================
def sfda(features, labels, shrinkage: float | None = None, eigenvalue: str = "exact", scale: float = 5.0) -> float:
    """SFDA (Shao et al. 2022): mean probability of the true class under a regularised Fisher (LDA) model
    fitted twice, the second time on "ConfMix"-perturbed features.

    Steps, as in TencentARC/SFDA ``SFDA_Score`` (metrics.py):

    1. Priors π_c = n_c/N, class means μ_c, within scatter S_W = Σ_c π_c Cov_c and total scatter S_T
       (both biased, 1/n). Regularisation λ = max(exp(−``scale``·σ_max(S_W)), 1e−10) unless
       ``shrinkage`` is given; S_W^λ = (1−λ)S_W + λ·tr(S_W)/d·I and S_T^λ likewise. (The Fisher directions
       V solve S_B^λ v = ϵ S_W^λ v with S_B^λ = S_T^λ − S_W^λ, normalised VᵀS_W^λV = I; the classifier
       uses all d of them, so its coefficients μ_c V Vᵀ equal μ_c (S_W^λ)⁻¹, computed here by a Cholesky
       solve.)
    2. p(c | x) = softmax_c(xᵀ(S_W^λ)⁻¹μ_c − ½ μ_cᵀ(S_W^λ)⁻¹μ_c + ln π_c), then "softened" by a second
       softmax over these probabilities: q = softmax(p).
    3. ConfMix: x̃_i = q_{i,y_i}·x_i + (1 − q_{i,y_i})·μ̄_{−y_i}, μ̄_{−c} = mean of the other K−1 class means
       (unweighted).
    4. Refit step 1 on (x̃, y) with the same λ; SFDA = (1/N) Σ_i p̃(y_i | x̃_i) (no logarithm, as in the
       code, which notes that the log was dropped for stability).

    ``eigenvalue``: ``'exact'`` (default) uses the largest eigenvalue of S_W; ``'power3'`` uses the public
    code's estimate (three steps of its power iteration started from the row sums, which approaches
    σ_max from below) — choose it to reproduce published SFDA numbers. The two differ only when
    exp(−5σ_max) > 1e−10, i.e. σ_max < 4.6 (small-scale features). ``scale`` = 5 is the code's constant.
    """
    choice(eigenvalue, ("exact", "power3"), "eigenvalue")
    x, y, k = features_and_labels(features, labels)
    priors, means, sw, st = _scatter(x, y, k)
    if shrinkage is None:
        top = float(np.linalg.eigvalsh(sw)[-1]) if eigenvalue == "exact" else _power_iteration_eigenvalue(sw)
        lam = max(math.exp(-scale * top), 1e-10)
    else:
        lam = float(shrinkage)
    prob = _lda_posterior(x, priors, means, _shrink(sw, lam))
    soft = _softmax(prob)
    others = (means.sum(axis=0)[None, :] - means) / (k - 1)
    w = soft[np.arange(len(y)), y][:, None]
    mixed = w * x + (1.0 - w) * others[y]
    priors2, means2, sw2, _ = _scatter(mixed, y, k)
    prob2 = _lda_posterior(mixed, priors2, means2, _shrink(sw2, lam))
    return float(np.mean(prob2[np.arange(len(y)), y]))


# ================================================================================================
# NCTI terms
# ================================================================================================
def ncti_terms(features, labels, pca_dim: int = 64, variance_components: int = 32,
               rank_tol: float = 1e-8) -> dict:
    """The three raw terms of NCTI (Wang et al. 2023) for one model on one target set.

    Steps, as in BUserName/NCTI ``NCTI_Score`` (metrics.py):

    1. PCA (exact, centred) to p = min(``pca_dim``, d) dimensions: z_i. Shrinkage
       λ = max(exp(−Σ of the top ``variance_components`` = 32 explained variances (ddof 1)), 1e−10).
    2. LDA on (z, y) with priors π_c = n_c/N, within scatter S_W (1/n) and between scatter
       S_B = Σ_c π_c (μ_c − z̄)(μ_c − z̄)ᵀ, z̄ = Σ_c π_c μ_c. If λ > 1e−10 the code uses scikit-learn's
       eigen solver with that shrinkage: Σ_W = (1−λ)S_W + λ·tr(S_W)/p·I and discriminant directions from
       Σ_B = (1−λ)S_B + λ·tr(S_B)/p·I; at the floor λ = 1e−10 it switches to the unshrunk svd solver:
       Σ_W = S_W, Σ_B = S_B, directions whose generalised eigenvalue is ≤ ``rank_tol``·(largest) dropped
       (the svd solver's 1e−4 relative cutoff on singular values). Discriminant directions V: the top
       min(K−1, p) solutions of Σ_B v = ϵ Σ_W v, normalised VᵀΣ_W V = I.
    3. ``seli`` = ‖(Z − z̄)V‖_* — nuclear norm of the centred discriminant features (the SELI term).
    4. ``ncc`` = (1/N) Σ_i P(y_i | z_i) with the LDA posterior P(c | z) = softmax_c(zᵀΣ_W⁻¹μ_c −
       ½μ_cᵀΣ_W⁻¹μ_c + ln π_c) (the nearest-class-center term; mean probability, no logarithm).
    5. ``vc`` = ln Σ_c ‖P_c‖_*, P_c the n_c × K matrix of posteriors of the samples of class c (the
       within-class variability-collapse term; larger = less collapsed).

    NCTI itself = norm(ncc) + norm(seli) − norm(vc), each term min–max normalised across the models
    being ranked — see :func:`ncbounds.transfer.ranking.ncti_combine`.

    Deviations from the public code (each a change of computation, not of definition): PCA is exact
    (the code's ``PCA(n_components=64)`` picks a randomised solver on large inputs) and p = min(64, d)
    instead of failing when d < 64; the svd-solver branch follows scikit-learn ≥ 1.9, whose within-class
    covariance is normalised by 1/N like the eigen solver (older releases used 1/(N−K), which scales
    ``seli`` by √((N−K)/N) and changes the posterior slightly); a singular within-class covariance raises
    StatisticsError instead of being rank-reduced. Paper formulas were not available to us beyond the
    three phenomena they name; the terms follow the authors' code.

    Returns {'seli', 'ncc', 'vc', 'shrinkage', 'pca_dim', 'explained_variance_top'}.
    """
    x, y, k = features_and_labels(features, labels)
    p = min(int(pca_dim), x.shape[1])
    z, lam_all = _pca(x, p)
    top = float(np.sum(lam_all[:min(int(variance_components), p)]))
    lam = max(math.exp(-top), 1e-10)
    floor = lam == 1e-10
    priors, means, sw, st = _scatter(z, y, k)
    sb = st - sw
    if floor:
        sigma_w, sigma_b = sw, sb
    else:
        sigma_w, sigma_b = _shrink(sw, lam), _shrink(sb, lam)
    try:
        evals, evecs = linalg.eigh(sigma_b, sigma_w)
    except linalg.LinAlgError as err:
        raise StatisticsError("NCTI: the within-class covariance of the PCA features is singular; "
                              "it needs more samples per dimension.") from err
    order = np.argsort(evals)[::-1][: min(k - 1, p)]
    evals, v = evals[order], evecs[:, order]
    if floor:
        v = v[:, evals > rank_tol * evals[0]]
    centred = (z - z.mean(axis=0)) @ v  # z̄ = Σ_c π_c μ_c is the sample mean
    seli = float(np.sum(np.linalg.svd(centred, compute_uv=False)))
    post = _lda_posterior(z, priors, means, sigma_w)
    ncc = float(np.mean(post[np.arange(len(y)), y]))
    nuc = sum(float(np.sum(np.linalg.svd(post[y == c], compute_uv=False))) for c in range(k))
    return {"seli": seli, "ncc": ncc, "vc": math.log(nuc), "shrinkage": lam, "pca_dim": p,
            "explained_variance_top": top}
