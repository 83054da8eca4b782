"""Metrics from statistics vs a naive d×d pseudo-inverse implementation (time and memory).

Usage:  python benchmarks/metrics.py [--sizes 10x512,100x2048,1000x4096]

For each (K, d): synthetic class statistics (K class means, per-class sums of squares, and the
span-restricted second moments a replay would produce) are built once; then

* ncbounds: ``collapse_metrics(stats, projected=...)`` — every collapse metric (not only NC1): thin SVD
  of the K×d mean matrix, K×K work;
* naive: the textbook route — form Σ_W and Σ_B as d×d matrices, ``numpy.linalg.pinv(Σ_B)``
  (O(d³)), NC1 = Tr(Σ_W Σ_B⁺)/K.

Both NC1 values are printed (they must agree). Each measurement runs in a fresh child process; the
memory figure is the growth of its peak resident set while computing (inputs already built).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ncbounds.metrics.collapse import collapse_metrics  # noqa: E402
from ncbounds.stats import ClassStats, ProjectedStats  # noqa: E402


def synthetic(K: int, d: int, seed: int = 0):
    """Statistics of features h = μ_c + A z (shared anisotropic within-class covariance Σ_W = AAᵀ/…)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((K, d))
    counts = np.full(K, 50)
    a = rng.standard_normal((d, 64)) / 8.0  # low-rank + isotropic within-class covariance
    sigma_w = a @ a.T + 0.05 * np.eye(d)
    stats = ClassStats(K, d, "none")
    stats.counts = torch.as_tensor(counts)
    stats.means = torch.as_tensor(means)
    stats.sq_dev = torch.as_tensor(counts * np.trace(sigma_w))
    proj = ProjectedStats(stats.means, stats.counts)
    q = proj.basis.numpy()
    n = counts.sum()
    proj.within = torch.as_tensor(q.T @ (sigma_w * n) @ q)
    centered = means - means.mean(0)
    # pair forms of the shared covariance: n_i (μ_j − μ_i)ᵀ Σ (μ_j − μ_i) = n_i (B_jj + B_ii − 2 B_ij), B = M̃ Σ M̃ᵀ
    b = centered @ sigma_w @ centered.T
    diag = np.diag(b)
    proj.pair_forms = torch.as_tensor(counts[:, None] * (diag[None, :] + diag[:, None] - 2 * b))
    return stats, proj, sigma_w, means


def naive_nc1(sigma_w: np.ndarray, means: np.ndarray) -> float:
    K = means.shape[0]
    centered = means - means.mean(0)
    sigma_b = centered.T @ centered / K
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / K)


def _child(method: str, K: int, d: int, queue) -> None:
    stats, proj, sigma_w, means = synthetic(K, d)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if method == "ncbounds":
        value = collapse_metrics(stats, projected=proj)["nc1"]
    else:
        value = naive_nc1(sigma_w, means)
    elapsed = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    queue.put((value, elapsed, grown))


def measure(method: str, K: int, d: int):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(method, K, d, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10x512,10x2048,10x4096,100x512,100x2048,100x4096,1000x512,1000x2048,1000x4096")
    args = ap.parse_args()
    print(f"{'K':>5} {'d':>5} {'ncbounds s':>11} {'MiB':>7} {'naive s':>9} {'MiB':>7} {'speed-up':>9}  NC1 (ncbounds / naive)")
    for item in args.sizes.split(","):
        K, d = (int(v) for v in item.split("x"))
        ours, t_ours, m_ours = measure("ncbounds", K, d)
        naive, t_naive, m_naive = measure("naive", K, d)
        print(f"{K:>5} {d:>5} {t_ours:>11.3f} {m_ours:>7.1f} {t_naive:>9.3f} {m_naive:>7.1f} {t_naive / t_ours:>9.1f}  "
              f"{ours:.6g} / {naive:.6g}", flush=True)


if __name__ == "__main__":
    main()
