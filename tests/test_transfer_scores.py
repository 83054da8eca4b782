"""Transferability scores against separately written references.

Each ``ref_*`` below is written from the paper or transcribed from the authors' public code (numpy
instead of numba/TensorFlow), independently of ncbounds.transfer.scores; the library must agree to 1e-8.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from ncbounds.errors import DataError, UsageError
from ncbounds.transfer.scores import gbc, hscore, leep, logme, nce, ncti_terms, sfda

RTOL = 1e-8


def _data(seed, n=240, d=12, k=4, sep=1.0, scale=1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    rng.shuffle(y)
    centers = rng.normal(size=(k, d)) * sep
    x = (centers[y] + rng.normal(size=(n, d))) * scale
    return x, y


def _probs(seed, n, z):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, z)) * 2
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------------
# LogME
# ---------------------------------------------------------------------------------------------------
def ref_logme_thuml(f, y):
    """thuml/LogME LogME._fit_fixed_point (with truncated_svd), transcribed."""
    f = f.astype(np.float64)
    N, D = f.shape
    if N > D:
        u0, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        u_times_sigma = f @ vh.T
        k = int(np.sum(s > 1e-10))
        s = s.reshape(-1, 1)[:k]
        vh = vh[:k]
        u = u_times_sigma[:, :k] / s.reshape(1, -1)
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
    s = s.reshape(-1, 1)
    sigma = s ** 2
    evidences = []
    for i in range(int(y.max() + 1)):
        y_ = (y == i).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x ** 2
        res_x2 = (y_ ** 2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (N - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            if abs(t_ - t) / t <= 1e-3:
                break
        evidence = (D / 2.0 * np.log(alpha) + N / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                    - beta / 2.0 * res2 - alpha / 2.0 * m2 - N / 2.0 * np.log(2 * np.pi))
        evidences.append(evidence / N)
    return float(np.mean(evidences))


def ref_logme_paper(f, y):
    """You et al. (2021) eq. (2)–(3) with explicit D×D matrices: m = (FᵀF + tI)⁻¹Fᵀy, log|A| by slogdet,
    γ = tr(FᵀF(FᵀF + tI)⁻¹); same fixed-point schedule; evidence evaluated at the final (α, β)."""
    N, D = f.shape
    G = f.T @ f
    evidences = []
    for c in np.unique(y):
        yy = (y == c).astype(float)
        fy = f.T @ yy

        def stats(t, fy=fy, yy=yy):
            m = np.linalg.solve(G + t * np.eye(D), fy)
            gamma = np.trace(np.linalg.solve(G + t * np.eye(D), G))
            return m @ m, np.sum((f @ m - yy) ** 2), gamma

        alpha = beta = 1.0
        for _ in range(11):
            t = alpha / beta
            m2, res2, gamma = stats(t)
            alpha, beta = gamma / (m2 + 1e-5), (N - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        m2, res2, _ = stats(alpha / beta)
        logdet = np.linalg.slogdet(alpha * np.eye(D) + beta * G)[1]
        ev = (D / 2 * np.log(alpha) + N / 2 * np.log(beta) - 0.5 * logdet - beta / 2 * res2 - alpha / 2 * m2
              - N / 2 * np.log(2 * np.pi))
        evidences.append(ev / N)
    return float(np.mean(evidences))


@pytest.mark.parametrize("seed,n,d,k", [(0, 200, 10, 4), (1, 30, 50, 3), (2, 500, 40, 10), (3, 64, 64, 5)])
def test_logme_matches_references(seed, n, d, k):
    x, y = _data(seed, n=n, d=d, k=k)
    assert logme(x, y, convention="thuml") == pytest.approx(ref_logme_thuml(x, y), rel=RTOL)
    assert logme(x, y) == pytest.approx(ref_logme_paper(x, y), rel=RTOL)


def test_logme_rank_deficient_conventions_differ_by_the_missing_log_alpha_terms():
    # N < d: thuml's fixed point sums ln(α + βσ) over N singular values only; the paper counts all d.
    x, y = _data(5, n=20, d=60, k=2)
    paper, thuml = logme(x, y), logme(x, y, convention="thuml")
    assert paper == pytest.approx(ref_logme_paper(x, y), rel=RTOL)
    assert abs(paper - thuml) > 1e-3
    # full column rank, N > d: the conventions agree up to the stopping tolerance
    x, y = _data(6, n=400, d=8, k=3)
    assert logme(x, y) == pytest.approx(logme(x, y, convention="thuml"), rel=1e-3)


def test_logme_and_hscore_prefer_informative_features():
    rng = np.random.default_rng(7)
    n, k = 300, 5
    y = np.arange(n) % k
    onehot = np.eye(k)[y]
    informative = np.hstack([onehot, np.zeros((n, 5))]) + 0.1 * rng.normal(size=(n, 10))
    random = rng.normal(size=(n, 10))
    assert logme(informative, y) > logme(random, y) + 0.5
    assert hscore(informative, y) > hscore(random, y) + 1.0


# ---------------------------------------------------------------------------------------------------
# LEEP and NCE
# ---------------------------------------------------------------------------------------------------
def ref_leep(theta, y):
    """Nguyen et al. (2020) eq. (1)–(2) with explicit loops."""
    n, z = theta.shape
    classes = sorted(set(y.tolist()))
    joint = {(c, j): sum(theta[i, j] for i in range(n) if y[i] == c) / n for c in classes for j in range(z)}
    pz = {j: sum(joint[(c, j)] for c in classes) for j in range(z)}
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[(y[i], j)] / pz[j] * theta[i, j] for j in range(z) if pz[j] > 0))
    return total / n


def ref_nce(theta, y):
    z = theta.argmax(1)
    n = len(y)
    out = 0.0
    for a in set(y.tolist()):
        for b in set(z.tolist()):
            nab = np.sum((y == a) & (z == b))
            if nab:
                out += nab / n * math.log(nab / np.sum(z == b))
    return out


def test_leep_and_nce_match_references():
    theta = _probs(0, 90, 7)
    y = np.random.default_rng(1).integers(0, 4, 90)
    assert leep(theta, y) == pytest.approx(ref_leep(theta, y), rel=RTOL)
    assert nce(theta, y) == pytest.approx(ref_nce(theta, y), rel=RTOL, abs=1e-12)


def test_leep_limits():
    k, n = 5, 200
    y = np.arange(n) % k
    perfect = np.eye(12)[y + 3]  # one-hot on a source class determined by the label
    assert leep(perfect, y) == pytest.approx(0.0, abs=1e-12)
    assert nce(perfect, y) == pytest.approx(0.0, abs=1e-12)
    uniform = np.full((n, 12), 1 / 12)
    assert leep(uniform, y) == pytest.approx(math.log(1 / k), rel=1e-12)
    assert nce(uniform, y) == pytest.approx(math.log(1 / k), rel=1e-12)  # −H(Y) when Z is constant


def test_leep_rejects_logits():
    with pytest.raises(DataError, match="softmax"):
        leep(np.random.default_rng(0).normal(size=(10, 3)), np.arange(10) % 2)


# ---------------------------------------------------------------------------------------------------
# H-score
# ---------------------------------------------------------------------------------------------------
def ref_hscore(f, y):
    """Official H-score code (as quoted in stable_transfer's docstring): trace(pinv(CovX, 1e-15) @ CovY)."""
    def cov(m):
        c = m - m.mean(0, keepdims=True)
        return c.T @ c / (m.shape[0] - 1)

    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    return float(np.trace(np.linalg.pinv(cov(f), rcond=1e-15) @ cov(g)))


@pytest.mark.parametrize("seed,n,d,k", [(0, 200, 10, 4), (1, 500, 30, 8)])
def test_hscore_matches_reference(seed, n, d, k):
    x, y = _data(seed, n=n, d=d, k=k)
    assert hscore(x, y) == pytest.approx(ref_hscore(x, y), rel=RTOL)
    assert hscore(x, y, rcond=1e-15) == pytest.approx(ref_hscore(x, y), rel=RTOL)


# ---------------------------------------------------------------------------------------------------
# GBC
# ---------------------------------------------------------------------------------------------------
def ref_gbc(f, y, kind, paper, pca_dim=None):
    """google-research/stable_transfer gbc.py in numpy (+ the paper's d' factor for spherical)."""
    if pca_dim is not None:
        f = PCA(n_components=pca_dim, svd_solver="full").fit_transform(f)
    d = f.shape[1]
    stats = {}
    for c in np.unique(y):
        fc = f[y == c]
        stats[c] = (fc.mean(0), np.maximum(fc.var(0), 1e-4))
    total = 0.0
    for c1 in stats:
        for c2 in stats:
            if c1 == c2:
                continue
            (m1, s1), (m2, s2) = stats[c1], stats[c2]
            if kind == "spherical":
                s1, s2 = s1.mean(), s2.mean()
            avg = (s1 + s2) / 2
            first = np.sum((m1 - m2) ** 2 / avg) / 8
            second = np.sum(np.log(avg)) - 0.5 * np.sum(np.log(s1)) - 0.5 * np.sum(np.log(s2))
            if kind == "spherical" and paper:
                second *= d
            total += math.exp(-(first + 0.5 * second))
    return -total


@pytest.mark.parametrize("kind", ["spherical", "diagonal"])
def test_gbc_matches_reference(kind):
    x, y = _data(3, n=300, d=9, k=5, sep=0.7)
    x[:, 0] *= 0.001  # one dimension below the variance floor
    assert gbc(x, y, kind=kind) == pytest.approx(ref_gbc(x, y, kind, paper=True), rel=RTOL)
    assert gbc(x, y, kind=kind, convention="stable_transfer") == pytest.approx(ref_gbc(x, y, kind, paper=False), rel=RTOL)
    xw, yw = _data(4, n=400, d=80, k=4, sep=0.3)
    assert gbc(xw, yw, kind=kind, pca_dim=64) == pytest.approx(ref_gbc(xw, yw, kind, True, pca_dim=64), rel=RTOL)


def test_gbc_limits():
    rng = np.random.default_rng(0)
    k, m, d = 6, 40, 5
    block = rng.normal(size=(m, d))
    same = np.vstack([block] * k)
    y = np.repeat(np.arange(k), m)
    for kind in ("spherical", "diagonal"):
        assert gbc(same, y, kind=kind) == pytest.approx(-k * (k - 1), rel=1e-12)
    far = np.vstack([block + 1e3 * np.eye(d)[c % d] * (1 + c // d) for c in range(k)])
    for kind in ("spherical", "diagonal"):
        assert -1e-9 < gbc(far, y, kind=kind) <= 0.0


def test_gbc_bad_kind():
    x, y = _data(0)
    with pytest.raises(UsageError):
        gbc(x, y, kind="full")


# ---------------------------------------------------------------------------------------------------
# SFDA
# ---------------------------------------------------------------------------------------------------
def _ref_cov(X, shrinkage=-1):
    emp_cov = np.cov(np.asarray(X).T, bias=1)
    if shrinkage < 0:
        return emp_cov
    n_features = emp_cov.shape[0]
    mu = np.trace(emp_cov) / n_features
    shrunk = (1.0 - shrinkage) * emp_cov
    shrunk.flat[:: n_features + 1] += shrinkage * mu
    return shrunk


def _ref_iterative_A(A, max_iterations=3):
    x = A.sum(axis=1)
    for _ in range(max_iterations):
        temp = A @ x
        yv = temp / np.linalg.norm(temp, 2)
        temp = A @ yv
        x = temp / np.linalg.norm(temp, 2)
    return x.T @ A @ yv


def _ref_softmax(X):
    X = X - X.max(1, keepdims=True)
    X = np.exp(X)
    return X / X.sum(1, keepdims=True)


class RefSFDA:
    """TencentARC/SFDA metrics.py class SFDA, transcribed (``exact`` swaps iterative_A for eigvalsh)."""

    def __init__(self, shrinkage=None, exact=False):
        self.shrinkage = shrinkage
        self.exact = exact

    def fit(self, X, y):
        classes, yi = np.unique(y, return_inverse=True)
        self.priors_ = np.bincount(yi) / float(len(y))
        cnt = np.bincount(yi)
        means = np.zeros((len(classes), X.shape[1]))
        np.add.at(means, yi, X)
        means /= cnt[:, None]
        self.means_ = means
        cov = np.zeros((X.shape[1], X.shape[1]))
        for idx in range(len(classes)):
            cov += self.priors_[idx] * np.atleast_2d(_ref_cov(X[yi == idx, :]))
        Sw = cov
        if self.shrinkage is None:
            top = np.linalg.eigvalsh(Sw)[-1] if self.exact else _ref_iterative_A(Sw, max_iterations=3)
            self.shrinkage = max(np.exp(-5 * top), 1e-10)
        St = _ref_cov(X, shrinkage=self.shrinkage)
        n_features = Sw.shape[0]
        mu = np.trace(Sw) / n_features
        shrunk_Sw = (1.0 - self.shrinkage) * Sw
        shrunk_Sw.flat[:: n_features + 1] += self.shrinkage * mu
        Sb = St - shrunk_Sw
        evals, evecs = linalg.eigh(Sb, shrunk_Sw)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        self.coef_ = (self.means_ @ evecs) @ evecs.T
        self.intercept_ = -0.5 * np.diag(self.means_ @ self.coef_.T) + np.log(self.priors_)
        return self

    def predict_proba(self, X):
        return _ref_softmax(X @ self.coef_.T + self.intercept_)


def ref_sfda(X, y, exact=False):
    X = X.copy()
    n = len(y)
    num_classes = len(np.unique(y))
    first = RefSFDA(exact=exact)
    prob = first.fit(X, y).predict_proba(X)
    prob = np.exp(prob) / np.exp(prob).sum(axis=1, keepdims=True)
    means = np.array([X[y == c].mean(0) for c in range(num_classes)])
    means_ = np.array([(means.sum(0) - means[i]) / (num_classes - 1) for i in range(num_classes)])
    for c in range(num_classes):
        idx = np.where(y == c)[0]
        p = prob[idx, c].reshape(-1, 1)
        X[idx] = p * X[idx] + (1 - p) * means_[c]
    second = RefSFDA(shrinkage=first.shrinkage)
    prob = second.fit(X, y).predict_proba(X)
    return float(np.sum(prob[np.arange(n), y]) / n)


@pytest.mark.parametrize("scale", [1.0, 0.05])  # 0.05: small features, the shrinkage is not at its floor
def test_sfda_matches_reference(scale):
    x, y = _data(11, n=300, d=10, k=5, sep=0.6, scale=scale)
    assert sfda(x, y, eigenvalue="power3") == pytest.approx(ref_sfda(x, y), rel=RTOL)
    assert sfda(x, y) == pytest.approx(ref_sfda(x, y, exact=True), rel=RTOL)


# ---------------------------------------------------------------------------------------------------
# NCTI
# ---------------------------------------------------------------------------------------------------
def ref_ncti(X, y):
    """BUserName/NCTI metrics.py NCTI_Score, transcribed (PCA with the exact 'full' solver)."""
    C = np.unique(y).shape[0]
    pca = PCA(n_components=min(64, X.shape[1]), svd_solver="full")
    X = pca.fit_transform(X, y)
    temp = max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    if temp == 1e-10:
        clf = LinearDiscriminantAnalysis(solver="svd")
    else:
        clf = LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(temp))
    low_feat = clf.fit_transform(X, y)
    low_feat = low_feat - np.mean(low_feat, axis=0, keepdims=True)
    seli = np.linalg.norm(low_feat, ord="nuc")
    low_pred = clf.predict_proba(X)
    ncc = np.sum(low_pred[np.arange(X.shape[0]), y]) / X.shape[0]
    nuc = sum(np.linalg.norm(low_pred[y == c], ord="nuc") for c in range(C))
    return seli, ncc, np.log(nuc), temp


@pytest.mark.parametrize("seed,d,scale,floored", [(0, 20, 0.1, False), (1, 90, 1.0, True), (2, 12, 3.0, True)])
def test_ncti_terms_match_reference(seed, d, scale, floored):
    x, y = _data(seed, n=400, d=d, k=6, sep=0.8, scale=scale)
    seli, ncc, vc, temp = ref_ncti(x, y)
    out = ncti_terms(x, y)
    assert (out["shrinkage"] == 1e-10) == floored
    assert out["shrinkage"] == pytest.approx(temp, rel=RTOL)
    assert out["seli"] == pytest.approx(seli, rel=RTOL)
    assert out["ncc"] == pytest.approx(ncc, rel=RTOL)
    assert out["vc"] == pytest.approx(vc, rel=RTOL)
