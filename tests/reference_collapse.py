"""Independent store-everything float64 reference for the canonical collapse metrics.

This module is deliberately *not* built on ncbounds: it keeps every feature in memory, forms full
d×d matrices and loops explicitly, so that it can serve as ground truth for the streaming library
(``ncbounds.metrics``). Definitions follow DESIGN.md §5 (canonical mode):

K classes, features h ∈ R^d, n_c samples of class c, N total.

* μ_c           class means; μ_G = (1/K) Σ_c μ_c (UNWEIGHTED mean of class means)
* M̃             K×d matrix with rows μ_c − μ_G
* Σ_W           (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ
* Σ_B           (1/K) M̃ᵀM̃
* Σ_c           (1/n_c) Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ (biased)
* v_c           Tr Σ_c = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²
* W (K×d), b    the final linear layer, logits z = h Wᵀ + b

The only numerical judgement call is the pseudo-inverse of a PSD matrix: an eigendecomposition
with eigenvalues below 1e-10·λ_max discarded (see :func:`pinv_psd`).
"""

from __future__ import annotations

import itertools

import numpy as np

# Keys produced from the features alone (present in every result).
FEATURE_KEYS = (
    "nc1",
    "trace_ratio",
    "separation_fuzziness",
    "cdnv",
    "directional_cdnv",
    "nc2_equinorm_means",
    "nc2_equiangular_means",
    "nc2_maxangle_means",
    "nc2_etf_error_means",
)
# Keys that need the classifier W (collapse_metrics gives them when W is passed).
CLASSIFIER_KEYS = (
    "nc2_equinorm_classifier",
    "nc2_etf_error_classifier",
    "nc3_papyan",
    "nc3_zhu",
)
# Sample-level keys: only metrics_from_features gives them (they need the individual samples).
NCC_KEYS = ("ncc_error",)
LOGIT_KEYS = ("nc4_mismatch", "margin_min", "margin_p5", "margin_p10", "margin_median")


def _as_np(x) -> np.ndarray | None:
    """torch.Tensor / array-like -> float64-or-int numpy array (no torch import needed)."""
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def pinv_psd(A: np.ndarray, rel_cutoff: float = 1e-10) -> np.ndarray:
    """Moore–Penrose pseudo-inverse of a symmetric PSD matrix A.

    A = V diag(λ) Vᵀ; A⁺ = Σ_{λ_k > rel_cutoff·λ_max} λ_k⁻¹ v_k v_kᵀ.
    For Σ_B the kept rank is rank(M̃) = min(K−1, d) on generic data.
    """
    A = 0.5 * (A + A.T)
    lam, V = np.linalg.eigh(A)
    keep = lam > rel_cutoff * lam.max()
    Vk = V[:, keep]
    return (Vk / lam[keep]) @ Vk.T


def etf_error(G: np.ndarray) -> float:
    """Zhu et al. 2021 ETF error: ‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F.

    (I − 11ᵀ/K)/√(K−1) is the Gram matrix of a simplex ETF normalised to unit Frobenius norm.
    """
    K = G.shape[0]
    etf = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    return float(np.linalg.norm(G / np.linalg.norm(G, "fro") - etf, "fro"))


def equinorm(vectors: np.ndarray) -> float:
    """std/mean of the row norms, std with ddof=1 (unbiased)."""
    norms = np.linalg.norm(vectors, axis=1)
    return float(np.std(norms, ddof=1) / np.mean(norms))


def class_statistics(h: np.ndarray, y: np.ndarray, K: int):
    """Two-pass, store-everything class statistics.

    Returns counts n_c (K,), means μ_c (K,d) and per-class biased covariances Σ_c (K,d,d),
    Σ_c = (1/n_c) Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ.
    """
    h = np.asarray(h, dtype=np.float64)
    d = h.shape[1]
    counts = np.zeros(K, dtype=np.int64)
    means = np.zeros((K, d))
    covs = np.zeros((K, d, d))
    for c in range(K):
        hc = h[y == c]
        counts[c] = hc.shape[0]
        if counts[c] == 0:
            raise ValueError(f"class {c} has no samples")
        means[c] = hc.mean(axis=0)
        D = hc - means[c]  # centered in a second pass: no raw second moments
        covs[c] = D.T @ D / counts[c]
    return counts, means, covs


def nearest_mean(h: np.ndarray, means: np.ndarray) -> np.ndarray:
    """argmin_c ‖h_i − μ_c‖² per sample (ties -> lowest index, as np.argmin does)."""
    dist2 = np.empty((h.shape[0], means.shape[0]))
    for c in range(means.shape[0]):
        diff = h - means[c]
        dist2[:, c] = np.einsum("ij,ij->i", diff, diff)
    return np.argmin(dist2, axis=1)


def reference_metrics(h, y, K=None, W=None, b=None, train_means=None) -> dict:
    """Every canonical metric, computed from scratch in float64.

    Parameters
    ----------
    h : (N, d) features; y : (N,) integer labels in 0..K−1
    K : number of classes (default y.max() + 1)
    W : (K, d) classifier weights, b : (K,) bias (zeros when W is given without b)
    train_means : (K, d) class means used for nearest-class-mean decisions (ncc_error, nc4);
        the split's own class means when None.
    """
    h = _as_np(h).astype(np.float64)
    y = _as_np(y).astype(np.int64)
    if K is None:
        K = int(y.max()) + 1
    N, d = h.shape
    counts, means, covs = class_statistics(h, y, K)

    # ---- global quantities ---------------------------------------------------------------
    mu_G = means.mean(axis=0)                  # μ_G = (1/K) Σ_c μ_c (unweighted)
    Mt = means - mu_G                          # M̃, rows μ_c − μ_G
    # Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ, formed directly from all samples
    R = h - means[y]
    Sigma_W = R.T @ R / N
    Sigma_B = Mt.T @ Mt / K                    # Σ_B = (1/K) M̃ᵀM̃

    out: dict[str, float] = {}

    # NC1 = Tr(Σ_W Σ_B⁺)/K                               (Papyan, Han, Donoho 2020)
    out["nc1"] = float(np.trace(Sigma_W @ pinv_psd(Sigma_B)) / K)

    # trace ratio = Tr Σ_W / Tr Σ_B
    out["trace_ratio"] = float(np.trace(Sigma_W) / np.trace(Sigma_B))

    # He & Su separation fuzziness D = Tr(SS_W SS_B⁺),
    #   SS_W = Σ_W, SS_B = Σ_c (n_c/N)(μ_c − μ̄)(μ_c − μ̄)ᵀ, μ̄ = Σ_c (n_c/N) μ_c (sample-weighted)
    mu_bar = (counts[:, None] * means).sum(axis=0) / N
    SS_B = np.zeros((d, d))
    for c in range(K):
        dc = means[c] - mu_bar
        SS_B += (counts[c] / N) * np.outer(dc, dc)
    out["separation_fuzziness"] = float(np.trace(Sigma_W @ pinv_psd(SS_B)))

    # CDNV = mean_{i<j} (v_i + v_j) / (2‖μ_i − μ_j‖²),  v_c = Tr Σ_c     (Galanti et al. 2022)
    v = np.array([np.trace(covs[c]) for c in range(K)])
    pair_vals = []
    for i, j in itertools.combinations(range(K), 2):
        dist2 = np.sum((means[i] - means[j]) ** 2)
        pair_vals.append((v[i] + v[j]) / (2.0 * dist2))
    out["cdnv"] = float(np.mean(pair_vals))

    # directional CDNV = mean over ordered i≠j of u_ijᵀ Σ_i u_ij / ‖μ_j − μ_i‖²,
    #   u_ij = (μ_j − μ_i)/‖μ_j − μ_i‖                                 (Luthra et al. 2026)
    dir_vals = []
    for i, j in itertools.permutations(range(K), 2):
        diff = means[j] - means[i]
        dist2 = float(diff @ diff)
        u = diff / np.sqrt(dist2)
        dir_vals.append(float(u @ covs[i] @ u) / dist2)
    out["directional_cdnv"] = float(np.mean(dir_vals))

    # NC2 equinorm (means) = std_{ddof=1}(‖μ_c − μ_G‖) / mean(‖μ_c − μ_G‖)
    out["nc2_equinorm_means"] = equinorm(Mt)

    # NC2 equiangularity: cosines between rows of M̃ over the K(K−1) ordered off-diagonal pairs
    #   equiangular = std_{ddof=1}(cos_ij), maxangle = mean |cos_ij + 1/(K−1)|
    cos = []
    for i, j in itertools.permutations(range(K), 2):
        cos.append(Mt[i] @ Mt[j] / (np.linalg.norm(Mt[i]) * np.linalg.norm(Mt[j])))
    cos = np.array(cos)
    out["nc2_equiangular_means"] = float(np.std(cos, ddof=1))
    out["nc2_maxangle_means"] = float(np.mean(np.abs(cos + 1.0 / (K - 1))))

    # NC2 ETF error (means), G = M̃M̃ᵀ                                  (Zhu et al. 2021)
    out["nc2_etf_error_means"] = etf_error(Mt @ Mt.T)

    # ---- nearest-class-mean decisions --------------------------------------------------------
    ncc_means = means if train_means is None else _as_np(train_means).astype(np.float64)
    ncc_pred = nearest_mean(h, ncc_means)
    # ncc_error = (1/N) #{i : argmin_c ‖h_i − μ_c‖ ≠ y_i}
    out["ncc_error"] = float(np.mean(ncc_pred != y))

    if W is None:
        return out

    # ---- classifier quantities ---------------------------------------------------------------
    W = _as_np(W).astype(np.float64)
    b = np.zeros(K) if b is None else _as_np(b).astype(np.float64)

    # NC2 equinorm (classifier) = std_{ddof=1}(‖w_c‖)/mean(‖w_c‖), rows of W NOT centred
    out["nc2_equinorm_classifier"] = equinorm(W)
    # NC2 ETF error (classifier), G = W Wᵀ
    out["nc2_etf_error_classifier"] = etf_error(W @ W.T)
    # NC3 (Papyan) = ‖W/‖W‖_F − M̃/‖M̃‖_F‖_F²   (squared)
    out["nc3_papyan"] = float(
        np.linalg.norm(W / np.linalg.norm(W, "fro") - Mt / np.linalg.norm(Mt, "fro"), "fro") ** 2
    )
    # NC3 (Zhu) = ETF error with G = W M̃ᵀ
    out["nc3_zhu"] = etf_error(W @ Mt.T)

    # logits z_i = W h_i + b
    z = h @ W.T + b
    net_pred = np.argmax(z, axis=1)
    # NC4 = (1/N) #{i : argmax_c z_ic ≠ nearest-class-mean decision}
    out["nc4_mismatch"] = float(np.mean(net_pred != ncc_pred))

    # margins γ_i = z_{i,y_i} − max_{j≠y_i} z_ij
    gamma = np.empty(N)
    for i in range(N):
        others = np.delete(z[i], y[i])
        gamma[i] = z[i, y[i]] - others.max()
    out["margin_min"] = float(gamma.min())
    out["margin_p5"] = float(np.percentile(gamma, 5))
    out["margin_p10"] = float(np.percentile(gamma, 10))
    out["margin_median"] = float(np.percentile(gamma, 50))
    return out


# ------------------------------------------------------------------------------------------------
# Synthetic data with closed-form collapse quantities (DESIGN §5)
# ------------------------------------------------------------------------------------------------


def simplex_etf_means(K: int, d: int, r: float = 1.0, rng=None) -> np.ndarray:
    """K×d matrix whose rows form a centred simplex ETF of row norm r.

    Rows r·(e_c − 1/K)/‖e_c − 1/K‖ (‖e_c − 1/K‖ = √((K−1)/K)) in the first K coordinates,
    then rotated by a random orthogonal d×d matrix when rng is given. Needs d ≥ K.
    (Gram matrix: r²·K/(K−1)·(I − 11ᵀ/K), pairwise cosines −1/(K−1).)
    """
    if d < K:
        raise ValueError("the embedding used here needs d >= K")
    M = np.zeros((K, d))
    M[:, :K] = (np.eye(K) - 1.0 / K) * (r / np.sqrt((K - 1) / K))
    if rng is not None:
        M = M @ random_orthogonal(d, rng).T
    return M


def random_orthogonal(d: int, rng) -> np.ndarray:
    """Haar-ish random orthogonal d×d matrix (QR of a Gaussian matrix, signs fixed)."""
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


def exact_isotropic_etf_data(K, d, sigma, r=1.0, offset=None, repeats=1, rng=None):
    """Balanced data whose empirical within-class covariance is EXACTLY σ²I (up to rounding).

    For each class c, with a random orthonormal basis q_1..q_d, the 2d noise vectors
    ±σ√d·q_k have mean 0 and empirical covariance (1/2d)·Σ_k 2·σ²d·q_k q_kᵀ = σ²I.
    Samples h = μ_c + offset ± σ√d q_k, repeated ``repeats`` times (n_c = 2d·repeats).

    Closed forms (DESIGN §5): NC1 = σ²(K−1)²/(K r²), D = σ²(K−1)²/r², CDNV = σ²d(K−1)/(2r²K),
    directional CDNV = σ²(K−1)/(2r²K), trace ratio = σ²d/r².
    Returns h (N,d), y (N,), the centred ETF means M̃ (K,d) and the offset (d,).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    Mt = simplex_etf_means(K, d, r, rng)
    offset = np.zeros(d) if offset is None else np.asarray(offset, dtype=np.float64)
    hs, ys = [], []
    for c in range(K):
        Q = random_orthogonal(d, rng)
        noise = sigma * np.sqrt(d) * np.concatenate([Q.T, -Q.T])  # rows ±q_k
        block = np.tile(noise, (repeats, 1))
        hs.append(Mt[c] + offset + block)
        ys.append(np.full(block.shape[0], c))
    h = np.concatenate(hs)
    y = np.concatenate(ys)
    perm = rng.permutation(h.shape[0])  # interleave classes so batches are mixed
    return h[perm], y[perm], Mt, offset


def closed_forms(K, d, sigma, r=1.0) -> dict:
    """DESIGN §5 closed forms for balanced simplex-ETF means of norm r with noise σ²I."""
    s2 = sigma**2
    return {
        "nc1": s2 * (K - 1) ** 2 / (K * r**2),
        "separation_fuzziness": s2 * (K - 1) ** 2 / r**2,
        "cdnv": s2 * d * (K - 1) / (2 * r**2 * K),
        "directional_cdnv": s2 * (K - 1) / (2 * r**2 * K),
        "trace_ratio": s2 * d / r**2,
    }
