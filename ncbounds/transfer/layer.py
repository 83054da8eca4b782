"""Everything measured on one layer's frozen target features (pure: arrays in, a JSON-ready dict out).

:func:`layer_transfer` takes the cached features of one hooked layer on the target training and test
splits and returns, with the conventions of the modules it calls:

- ``ncc_error``: nearest-class-center classifier with the target-**train** class means, evaluated on the
  target test split, with a two-sided 95 % Clopper–Pearson interval
  (:func:`ncbounds.transfer.fewshot.ncc_error`);
- ``probe_error``: multinomial logistic regression on standardized target-train features (scikit-learn,
  C = 1, L-BFGS, at most 1000 iterations), evaluated on target test, with its Clopper–Pearson interval
  (:func:`ncbounds.transfer.fewshot.linear_probe_error`);
- ``fewshot``: m-shot NCC episodes drawn from the target **test** split
  (:func:`ncbounds.transfer.fewshot.fewshot_table`; defaults all-way and 5-way, shots 1, 5, 10,
  15 queries per class, 600 episodes, seeded), each with its t-interval and episodic certificate;
- ``scores``: transferability scores on the target **training** split — ``logme`` (paper convention),
  ``hscore``, ``gbc_spherical`` and ``gbc_diagonal`` (paper convention, PCA to 64 dimensions), ``sfda``,
  the three raw NCTI terms ``ncti_seli``, ``ncti_ncc``, ``ncti_vc`` (NCTI itself is relative to a set of
  models: :func:`ncbounds.transfer.ranking.ncti_combine`), and, when the source head's softmax on the
  target inputs is given, ``leep`` and ``nce``. A score that cannot be computed (e.g. a singular
  covariance) is None with its reason in ``score_notes``; scores that form d×d matrices are skipped
  above ``max_score_dim`` dimensions.

:func:`source_softmax` gives that softmax from the penultimate features and the source classifier.
"""

from __future__ import annotations

import numpy as np

from ncbounds.errors import NCBoundsError, UsageError
from ncbounds.transfer._checks import features_2d
from ncbounds.transfer.fewshot import CERTIFICATE_DELTA, fewshot_table, linear_probe_error, ncc_error
from ncbounds.transfer.scores import gbc, hscore, leep, logme, nce, ncti_terms, sfda

__all__ = [
    "FEWSHOT_EPISODES",
    "FEWSHOT_QUERIES",
    "FEWSHOT_SHOTS",
    "FEWSHOT_WAYS",
    "MAX_SCORE_DIM",
    "SCORE_NAMES",
    "layer_transfer",
    "source_softmax",
    "transfer_scores",
]

#: Few-shot protocol defaults (Tian et al. 2020, github.com/WangYueFt/rfs): all-way and 5-way episodes.
FEWSHOT_WAYS = ("all", 5)
FEWSHOT_SHOTS = (1, 5, 10)
FEWSHOT_QUERIES = 15
FEWSHOT_EPISODES = 600
#: Scores that form d×d matrices (H-score, SFDA, LogME's Gram) are skipped above this feature dimension.
MAX_SCORE_DIM = 8192
#: Every score key of ``scores`` (higher is better for all of them).
SCORE_NAMES = ("logme", "leep", "nce", "hscore", "gbc_spherical", "gbc_diagonal", "sfda", "ncti_seli", "ncti_ncc", "ncti_vc")


def source_softmax(features, W, b=None) -> np.ndarray:
    """softmax(f Wᵀ + b) in float64, row by row (max subtracted first): the source head's class
    probabilities on target inputs, from the penultimate features f (N, d) and the head W (Z, d), b (Z,)."""
    f = features_2d(features)
    w = np.asarray(W, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != f.shape[1]:
        raise UsageError(f"the source classifier has shape {w.shape}, which does not take {f.shape[1]}-dimensional features.")
    logits = f @ w.T
    if b is not None:
        logits = logits + np.asarray(b, dtype=np.float64)[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _try(name: str, compute, notes: dict) -> float | None:
    try:
        value = compute()
    except (NCBoundsError, np.linalg.LinAlgError, ValueError, MemoryError) as exc:
        notes[name] = f"not computed: {' '.join(str(exc).split()) or type(exc).__name__}"
        return None
    if value is None or not np.isfinite(value):
        notes[name] = "not finite"
        return None
    return float(value)


def transfer_scores(features, labels, source_probs=None, max_dim: int = MAX_SCORE_DIM) -> tuple[dict, dict]:
    """({score name: value or None}, {score name: why it is None}) on one split's features (module docstring)."""
    x = features_2d(features)
    y = np.asarray(labels)
    notes: dict[str, str] = {}
    scores: dict[str, float | None] = {}
    big = x.shape[1] > int(max_dim)
    for name, compute in (("logme", lambda: logme(x, y)), ("hscore", lambda: hscore(x, y))):
        if big:
            scores[name] = None
            notes[name] = f"skipped: {x.shape[1]} dimensions > {int(max_dim)}"
        else:
            scores[name] = _try(name, compute, notes)
    if source_probs is None:
        scores["leep"] = scores["nce"] = None
        notes["leep"] = notes["nce"] = "needs the source head's softmax on the target inputs (penultimate layer only)"
    else:
        scores["leep"] = _try("leep", lambda: leep(source_probs, y), notes)
        scores["nce"] = _try("nce", lambda: nce(source_probs, y), notes)
    scores["gbc_spherical"] = _try("gbc_spherical", lambda: gbc(x, y, kind="spherical"), notes)
    scores["gbc_diagonal"] = _try("gbc_diagonal", lambda: gbc(x, y, kind="diagonal"), notes)
    if big:
        scores["sfda"] = None
        notes["sfda"] = f"skipped: {x.shape[1]} dimensions > {int(max_dim)}"
    else:
        scores["sfda"] = _try("sfda", lambda: sfda(x, y), notes)
    terms: dict = {}

    def ncti() -> float:
        terms.update(ncti_terms(x, y))
        return terms["seli"]

    scores["ncti_seli"] = _try("ncti_seli", ncti, notes)
    scores["ncti_ncc"] = terms.get("ncc")
    scores["ncti_vc"] = terms.get("vc")
    if "ncti_seli" in notes:
        notes["ncti_ncc"] = notes["ncti_vc"] = notes["ncti_seli"]
    return {k: scores[k] for k in SCORE_NAMES}, notes


def layer_transfer(train_features, train_labels, test_features, test_labels, source_probs=None,
                   shots=FEWSHOT_SHOTS, ways=FEWSHOT_WAYS, queries: int = FEWSHOT_QUERIES, episodes: int = FEWSHOT_EPISODES,
                   seed: int = 0, delta: float = CERTIFICATE_DELTA, max_score_dim: int = MAX_SCORE_DIM) -> dict:
    """One layer's transfer results (module docstring): {'dim', 'ncc_error', 'probe_error', 'fewshot',
    'scores', 'score_notes'}.

    ``source_probs``: the source head's softmax on the target-train inputs (rows aligned with
    ``train_features``), for LEEP and NCE; ``delta``: one-sided level of the episodic certificates.
    """
    xtr = features_2d(train_features, "train_features")
    xte = features_2d(test_features, "test_features")
    scores, notes = transfer_scores(xtr, train_labels, source_probs, max_score_dim)
    return {
        "dim": int(xtr.shape[1]),
        "ncc_error": ncc_error(xtr, train_labels, xte, test_labels),
        "probe_error": linear_probe_error(xtr, train_labels, xte, test_labels),
        "fewshot": fewshot_table(xte, test_labels, ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed,
                                 delta=delta),
        "scores": scores,
        "score_notes": notes,
    }
