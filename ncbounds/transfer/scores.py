"""Transferability scores of frozen features on a labelled target set (pure float64 functions).

This module defines the evidence and information scores (LogME, LEEP, NCE, H-score) and re-exports the
class-separability scores (GBC, SFDA, NCTI terms) from :mod:`ncbounds.transfer.separability`, so every
score is importable from here.

Each score takes target features f (N × d, one row per target sample, taken from a frozen layer) and
target labels y (any integers; re-coded to 0..K−1 in sorted order); LEEP and NCE take the source head's
softmax θ(x) (N × Z) instead of features. Higher is better for every score here (they predict higher
transfer accuracy).

Conventions common to all scores
--------------------------------
- Float64 throughout; features are not normalised or centred unless the score's definition says so.
- Classes are the distinct label values present; a label value that does not occur is not a class
  (the authors' LogME and LEEP code loop over ``range(max(y) + 1)`` and would count an absent class).
- Where the authors' public code deviates from their paper, the paper is the default and the code's
  behaviour is offered as a named ``convention`` only where published numbers come from that code.
  Each docstring names the deviation.
- Equation numbers are not cited: the papers' full texts were not available to us, so each formula is
  stated in full instead, as read from the authors' code and checked against the papers' descriptions.

References (paper, then the public code we compared against):
- LogME: You, Liu, Wang & Long (2021), ICML, "LogME: Practical assessment of pre-trained models for
  transfer learning" (log-evidence of Bayesian linear regression) and You et al. (2022), JMLR 23,
  "Ranking and tuning pre-trained models" (fixed-point iteration); code github.com/thuml/LogME (LogME.py).
- LEEP: Nguyen, Hassner, Seeger & Archambeau (2020), ICML, "LEEP: A new measure to evaluate
  transferability of learned representations" (the LEEP definition); code thuml/LogME (LEEP.py).
- NCE: Tran, Nguyen & Hassner (2019), ICCV, "Transferability and hardness of supervised classification
  tasks" (negative conditional entropy); code thuml/LogME (NCE.py).
- H-score: Bao, Li, Huang, Zheng, Wang & Tong (2019), ICIP, "An information-theoretic approach to
  transferability in task transfer learning" (H-score); code github.com/YaojieBao/
  An-Information-theoretic-Metric-of-Transferability (as quoted in google-research/stable_transfer).
- GBC, SFDA, NCTI: see :mod:`ncbounds.transfer.separability`, where they are defined (re-exported here).
"""

from __future__ import annotations

import math

import numpy as np

from ncbounds.errors import StatisticsError
from ncbounds.transfer._checks import choice, class_labels, class_means, features_and_labels, probabilities
from ncbounds.transfer.separability import (  # noqa: F401 - re-exported (private helpers for existing imports)
    _lda_posterior,
    _pca,
    _power_iteration_eigenvalue,
    _scatter,
    _shrink,
    _softmax,
    gbc,
    ncti_terms,
    sfda,
)

__all__ = [
    "LOGME_MAX_ITERATIONS",
    "gbc",
    "hscore",
    "leep",
    "logme",
    "nce",
    "ncti_terms",
    "sfda",
]

#: LogME fixed point: at most this many updates, stop when |t_new − t|/t ≤ 1e−3 (thuml/LogME).
LOGME_MAX_ITERATIONS = 11
_LOGME_TOL = 1e-3
_LOGME_EPS = 1e-5  # added to m² and res² in the α, β updates (thuml/LogME)
_THUML_RANK_CUTOFF = 1e-10  # thuml/LogME truncated_svd: singular values ≤ 1e-10 are dropped (N > d only)


# ================================================================================================
# LogME
# ================================================================================================
def _logme_class_paper(sigma, z2, y2, n, d, r, gram_side):
    """Paper convention for one 0/1 target vector: returns the evidence per sample.

    ``gram_side == 'features'`` (N ≥ d): σ are the d eigenvalues of fᵀf and z = Vᵀfᵀy, so with x = Uᵀy,
    x_i² = z_i²/σ_i; the sums are written in z to stay exact for σ_i → 0:
        m² = Σ z²/(t+σ)²,    res² = ‖y‖² − Σ z²(σ + 2t)/(t+σ)².
    ``gram_side == 'samples'`` (N < d): σ are the N eigenvalues of ffᵀ and z = Uᵀy = x (complete basis):
        m² = Σ σx²/(t+σ)²,   res² = Σ x² t²/(t+σ)².
    log|A| = Σ_{i≤r} ln(α + βσ_i) + (d − r) ln α (the d − r zero eigenvalues of fᵀf).
    """

    def sums(t):
        if gram_side == "features":
            den = (t + sigma) ** 2
            m2 = float(np.sum(z2 / den))
            res2 = float(y2 - np.sum(z2 * (sigma + 2.0 * t) / den))
            res2 = max(res2, 0.0)
        else:
            m2 = float(np.sum(sigma * z2 / (t + sigma) ** 2))
            res2 = float(np.sum(z2 * t * t / (t + sigma) ** 2))
        return m2, res2

    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_MAX_ITERATIONS):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2, res2 = sums(t)
        alpha = gamma / (m2 + _LOGME_EPS)
        beta = (n - gamma) / (res2 + _LOGME_EPS)
        if abs(alpha / beta - t) / t <= _LOGME_TOL:
            break
    t = alpha / beta
    m2, res2 = sums(t)
    logdet = float(np.sum(np.log(alpha + beta * sigma))) + (d - r) * math.log(alpha)
    evidence = (d / 2.0 * math.log(alpha) + n / 2.0 * math.log(beta) - 0.5 * logdet - beta / 2.0 * res2
                - alpha / 2.0 * m2 - n / 2.0 * math.log(2.0 * math.pi))
    return evidence / n


def _logme_class_thuml(sigma, x2, res_x2, n, d):
    """thuml/LogME ``_fit_fixed_point`` for one 0/1 target vector, operation for operation."""
    alpha, beta = 1.0, 1.0
    m2 = res2 = 0.0
    for _ in range(LOGME_MAX_ITERATIONS):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2 = float(np.sum(sigma * x2 / (t + sigma) ** 2))
        res2 = float(np.sum(x2 / (1.0 + sigma / t) ** 2)) + res_x2
        alpha = gamma / (m2 + _LOGME_EPS)
        beta = (n - gamma) / (res2 + _LOGME_EPS)
        if abs(alpha / beta - t) / t <= _LOGME_TOL:
            break
    evidence = (d / 2.0 * math.log(alpha) + n / 2.0 * math.log(beta)
                - 0.5 * float(np.sum(np.log(alpha + beta * sigma)))
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * math.log(2.0 * math.pi))
    return evidence / n


def logme(features, labels, convention: str = "paper") -> float:
    """LogME: mean over target classes of the maximum log-evidence per sample of a Bayesian linear model.

    For each class k, y = 1[label = k] ∈ {0,1}^N is regressed on f (N × d, uncentred) with prior
    w ~ N(0, α⁻¹I) and noise N(0, β⁻¹). With A = αI + βfᵀf and m = βA⁻¹fᵀy the log-evidence is
    (You et al. 2021; standard Bayesian linear-regression evidence)

        L(α, β) = d/2·ln α + N/2·ln β − ½ ln|A| − β/2·‖fm − y‖² − α/2·‖m‖² − N/2·ln 2π,

    evaluated through the eigen-decomposition of the Gram matrix (σ_i = eigenvalues of fᵀf,
    t = α/β, x = Uᵀy): γ = Σσ/(σ+t), ‖m‖² = Σσx²/(t+σ)², ‖fm − y‖² = Σx²/(1+σ/t)² + ‖y‖² − ‖x‖².
    (α, β) is found by the fixed-point iteration of You et al. (2022) as coded in thuml/LogME:
    start α = β = 1; repeat at most 11 times α ← γ/(‖m‖² + 1e−5), β ← (N − γ)/(‖fm − y‖² + 1e−5) until
    |t_new − t|/t ≤ 1e−3. LogME = mean over classes of L/N.

    Conventions
    -----------
    ``'paper'`` (default): L is evaluated exactly at the final (α, β), with m recomputed at t = α/β, and
    ln|A| runs over all d eigenvalues of fᵀf, so the d − r zero eigenvalues (r = rank ≤ min(N, d))
    contribute (d − r)·ln α.
    ``'thuml'``: the public code's ``_fit_fixed_point`` (the method the public LogME class uses by default), which
    (a) sums ln(α + βσ) over the computed singular values only — min(N, d) of them, or, when N > d,
    those above 1e−10 — dropping (d − r)·ln α when the features are rank-deficient or N < d, and
    (b) evaluates the evidence with the updated (α, β) but the ‖m‖², ‖fm − y‖² of the previous t.
    The two conventions agree to the stopping tolerance when N > d and f has full column rank; choose
    ``'thuml'`` to reproduce LogME values published with the authors' code.
    """
    choice(convention, ("paper", "thuml"), "convention")
    f, y, k = features_and_labels(features, labels)
    n, d = f.shape
    if not np.any(f):
        raise StatisticsError("LogME is undefined for all-zero features.")
    targets = np.zeros((n, k))
    targets[np.arange(n), y] = 1.0
    y2 = targets.sum(axis=0)  # ‖y_k‖² = n_k
    evidences = []
    if convention == "paper":
        if n >= d:
            sigma, v = np.linalg.eigh(f.T @ f)
            sigma = np.clip(sigma, 0.0, None)
            z2 = (v.T @ (f.T @ targets)) ** 2  # (d, K)
            side, r = "features", d
        else:
            sigma, u = np.linalg.eigh(f @ f.T)
            sigma = np.clip(sigma, 0.0, None)
            z2 = (u.T @ targets) ** 2  # (N, K)
            side, r = "samples", n
        for c in range(k):
            evidences.append(_logme_class_paper(sigma, z2[:, c], y2[c], n, d, r, side))
    else:
        if n > d:
            evals, v = np.linalg.eigh(f.T @ f)
            s = np.sqrt(np.abs(evals))
            keep = s > _THUML_RANK_CUTOFF
            u = (f @ v[:, keep]) / s[keep]
            s = s[keep]
        else:
            u, s, _ = np.linalg.svd(f, full_matrices=False)
        sigma = s ** 2
        x = u.T @ targets
        x2 = x ** 2
        res_x2 = y2 - x2.sum(axis=0)
        for c in range(k):
            evidences.append(_logme_class_thuml(sigma, x2[:, c], float(res_x2[c]), n, d))
    return float(np.mean(evidences))


# ================================================================================================
# LEEP and NCE
# ================================================================================================
def leep(source_probs, labels) -> float:
    """LEEP (Nguyen et al. 2020): log expected empirical prediction of the source head.

    θ(x_i) ∈ Δ^Z is the source head's softmax on target input i (rows of ``source_probs``). Empirical
    joint P(y, z) = (1/N) Σ_{i: y_i = y} θ_z(x_i), marginal P(z) = Σ_y P(y, z), conditional
    P(y | z) = P(y, z)/P(z); LEEP = (1/N) Σ_i ln Σ_z P(y_i | z) θ_z(x_i) ∈ (−∞, 0].
    A source class with P(z) = 0 has θ_z(x_i) = 0 for every i and contributes nothing (the public code
    would divide 0/0 there). Perfect deterministic source predictions give 0; constant predictions
    give Σ_y P(y) ln P(y) (ln(1/K) for K balanced classes). Matches thuml/LogME LEEP.py otherwise.
    """
    p = probabilities(source_probs)
    y, values = class_labels(labels, p.shape[0])
    n, k = p.shape[0], len(values)
    counts, class_mean_probs = class_means(p, y, k)
    joint = class_mean_probs * (counts[:, None] / n)  # P(y, z)
    pz = joint.sum(axis=0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = np.einsum("iz,iz->i", p, cond[y])
    if np.any(eep <= 0):
        raise StatisticsError("LEEP is −∞: some target sample gets zero expected empirical probability of its label.")
    return float(np.mean(np.log(eep)))


def nce(source_probs, labels) -> float:
    """NCE (Tran et al. 2019): negative conditional entropy −H(Y | Z) of target labels given source labels.

    Z = argmax_z θ_z(x) (the source head's hard prediction; ties → lowest index). With the empirical
    joint P̂(y, z) = #{i: y_i = y, z_i = z}/N, NCE = Σ_{y,z} P̂(y, z) ln P̂(y | z) ≤ 0, with 0·ln 0 = 0.
    The public copy in thuml/LogME adds 1e−20 inside the logarithm (a change below 1e−18 here).
    """
    p = probabilities(source_probs)
    y, values = class_labels(labels, p.shape[0], min_classes=1)
    z = np.argmax(p, axis=1)
    n = p.shape[0]
    joint = np.zeros((len(values), p.shape[1]))
    np.add.at(joint, (y, z), 1.0)
    joint /= n
    pz = joint.sum(axis=0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)
    terms = np.where(joint > 0, joint * np.log(np.where(cond > 0, cond, 1.0)), 0.0)
    return float(np.sum(terms))


# ================================================================================================
# H-score
# ================================================================================================
def hscore(features, labels, rcond: float | None = None) -> float:
    """H-score (Bao et al. 2019): tr(cov(f)⁺ · cov(E[f | y])).

    cov(f) = (1/(N−1)) Σ_i (f_i − f̄)(f_i − f̄)ᵀ; g_i = μ_{y_i} (the class mean of sample i's class), so
    cov(g) = (1/(N−1)) Σ_c n_c (μ_c − f̄)(μ_c − f̄)ᵀ. The pseudo-inverse keeps the eigenvalues λ of cov(f)
    above ``rcond``·λ_max (default max(N, d)·ε_float64, numpy's numerical-rank tolerance):
    H = Σ_{λ_i > tol} v_iᵀ cov(g) v_i / λ_i. The official code uses ``np.linalg.pinv(cov f, rcond=1e-15)``
    — pass ``rcond=1e-15`` to reproduce it; the two agree unless cov(f) is numerically rank-deficient,
    where a 1e−15 cutoff inverts rounding noise. (google-research/stable_transfer multiplies pinv and
    cov(g) elementwise inside the trace, contradicting its own docstring; not offered.)
    """
    f, y, k = features_and_labels(features, labels)
    n, d = f.shape
    if n < 2:
        raise StatisticsError("H-score needs at least 2 samples.")
    counts, means = class_means(f, y, k)
    mean = f.mean(axis=0)
    fc = f - mean
    cov_f = fc.T @ fc / (n - 1)
    mc = (means - mean) * np.sqrt(counts)[:, None]
    cov_g = mc.T @ mc / (n - 1)
    lam, v = np.linalg.eigh(cov_f)
    if lam[-1] <= 0:
        raise StatisticsError("H-score is undefined for constant features.")
    tol = (max(n, d) * np.finfo(np.float64).eps if rcond is None else float(rcond)) * lam[-1]
    keep = lam > tol
    vk = v[:, keep]
    quad = np.einsum("ij,ij->j", vk, cov_g @ vk)
    return float(np.sum(quad / lam[keep]))
