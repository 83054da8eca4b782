"""Transferability scores of frozen features on a labelled target set (pure float64 functions).

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
from ncbounds.transfer._checks import choice, class_labels, class_means, features_and_labels, probabilities

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


# ================================================================================================
# GBC
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
# LDA pieces shared by SFDA and NCTI
# ================================================================================================
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
