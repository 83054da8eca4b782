"""Streaming float64 statistics of multi-label (multi-hot) data, one pass, mergeable.

Labels are multi-hot rows t ∈ {0, 1}^K; the multiplicity of a sample is m = Σ_k t_k. For the
multi-label neural-collapse metrics of Li, Li, Wang & Qu (2024, ICML, "Neural collapse in multi-label
learning with pick-all-label loss") the pass collects, per hooked layer:

- ``single``: a :class:`~ncbounds.stats.class_stats.ClassStats` over the **multiplicity-1** samples
  (label = the one positive index): counts, means, centered sums of squares and, per its
  ``scatter_mode``, the within-class scatter (NC1 on multiplicity-1 samples, NC2/NC3 on their means);
- for every observed label pair {a, b} (multiplicity 2): the count, mean and centered sum of squared
  deviations, merged with the pairwise update of Chan, Golub & LeVeque (1979) exactly as ClassStats;
- the number of samples of each multiplicity (0, 1, 2 and ≥ 3, the last ones enter no geometry) and,
  per label, the number of samples carrying it.

:class:`MultiLabelDecisions` counts the errors of a multi-label decision rule from the logits:
per-label false positives / false negatives and the number of samples with any wrong label.

Memory: O(K·d + P·d) plus the ClassStats scatter, P the number of distinct observed pairs (at most
K(K−1)/2). On a GPU, grouping a batch by pair costs one host synchronisation per batch (torch.unique).
"""

from __future__ import annotations

import numpy as np
import torch

from ncbounds.errors import DataError, StatisticsError
from ncbounds.stats.class_stats import ClassStats

DECISION_RULES = ("sigmoid", "top-m")


def _targets(targets, num_classes: int, rows: int | None = None, device=None) -> torch.Tensor:
    """Validate multi-hot targets (B, K) with entries 0/1; returns int64 on ``device``."""
    t = torch.as_tensor(targets)
    if t.ndim != 2 or t.shape[1] != num_classes or (rows is not None and t.shape[0] != rows):
        want = f"({rows if rows is not None else 'batch'}, {num_classes})"
        raise DataError(f"multi-label targets have shape {tuple(t.shape)}, expected {want} multi-hot rows of 0/1.")
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    elif t.is_floating_point():
        if not bool(((t == 0) | (t == 1)).all()):
            raise DataError("multi-label targets must contain only 0 and 1 (multi-hot rows); found other values.")
        t = t.to(torch.int64)
    else:
        t = t.to(torch.int64)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > 1):
            raise DataError("multi-label targets must contain only 0 and 1 (multi-hot rows); found other values.")
    return t.to(device) if device is not None else t


def single_label_rows(targets) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of multiplicity-1 rows, their class indices): what a single-label replay should be fed."""
    t = torch.as_tensor(targets).to(torch.int64)
    single = t.sum(1) == 1
    return single, t[single].argmax(1)


class MultiLabelStats:
    """One layer's multi-label statistics (see the module docstring); ``update``/``merge`` like ClassStats."""

    def __init__(self, num_classes: int, dim: int, scatter_mode: str = "pooled", device="cpu", name: str = "features") -> None:
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.name = name
        self.single = ClassStats(num_classes, dim, scatter_mode, device=device, name=name)
        dev = torch.device(device)
        self.pair_keys: list[tuple[int, int]] = []
        self._pair_index: dict[tuple[int, int], int] = {}
        self.pair_counts = torch.zeros(0, dtype=torch.int64, device=dev)
        self.pair_means = torch.zeros(0, dim, dtype=torch.float64, device=dev)
        self.pair_sq_dev = torch.zeros(0, dtype=torch.float64, device=dev)
        #: samples with multiplicity 0, 1, 2 and ≥ 3
        self.multiplicity_counts = torch.zeros(4, dtype=torch.int64, device=dev)
        #: samples carrying each label (any multiplicity)
        self.label_counts = torch.zeros(num_classes, dtype=torch.int64, device=dev)

    @property
    def device(self) -> torch.device:
        return self.single.means.device

    # ------------------------------------------------------------------ accumulation
    def update(self, features, targets) -> MultiLabelStats:
        """Add a batch: ``features`` (B, d), ``targets`` (B, K) multi-hot 0/1."""
        x = torch.as_tensor(features)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise StatisticsError(f"layer {self.name} gave features of shape {tuple(x.shape)}, expected (batch, {self.dim}).")
        t = _targets(targets, self.num_classes, x.shape[0], self.device)
        x = x.to(device=self.device, dtype=torch.float64)
        if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
            raise StatisticsError(
                f"layer {self.name} produced NaN or Inf features; check the checkpoint's weights and the input scaling."
            )
        m = t.sum(1)
        self.multiplicity_counts += torch.stack([(m == 0).sum(), (m == 1).sum(), (m == 2).sum(), (m >= 3).sum()])
        self.label_counts += t.sum(0)
        single = m == 1
        if bool(single.any()):
            self.single.update(x[single], t[single].argmax(1))
        double = m == 2
        if bool(double.any()):
            self._update_pairs(x[double], t[double])
        return self

    def _update_pairs(self, x: torch.Tensor, t: torch.Tensor) -> None:
        K = self.num_classes
        pos = torch.nonzero(t, as_tuple=False)  # rows sorted by sample, then label: (a, b) with a < b
        labels = pos[:, 1].reshape(-1, 2)
        codes = labels[:, 0] * K + labels[:, 1]
        uniq, inverse = torch.unique(codes, return_inverse=True)
        P = uniq.shape[0]
        counts = torch.zeros(P, dtype=torch.int64, device=x.device).index_add_(0, inverse, torch.ones_like(inverse))
        sums = torch.zeros(P, self.dim, dtype=torch.float64, device=x.device).index_add_(0, inverse, x)
        means = sums / counts.unsqueeze(1)
        dev = x - means[inverse]
        sq = torch.zeros(P, dtype=torch.float64, device=x.device).index_add_(0, inverse, (dev * dev).sum(1))
        keys = [(int(c) // K, int(c) % K) for c in uniq.tolist()]
        self._merge_pairs(keys, counts, means, sq)

    def _merge_pairs(self, keys, counts, means, sq) -> None:
        """Chan et al. merge of per-pair (count, mean, centered sum of squares) into the accumulator."""
        new = [k for k in keys if k not in self._pair_index]
        if new:
            for k in new:
                self._pair_index[k] = len(self.pair_keys)
                self.pair_keys.append(k)
            grow = len(new)
            dev = self.device
            self.pair_counts = torch.cat([self.pair_counts, torch.zeros(grow, dtype=torch.int64, device=dev)])
            self.pair_means = torch.cat([self.pair_means, torch.zeros(grow, self.dim, dtype=torch.float64, device=dev)])
            self.pair_sq_dev = torch.cat([self.pair_sq_dev, torch.zeros(grow, dtype=torch.float64, device=dev)])
        idx = torch.as_tensor([self._pair_index[k] for k in keys], dtype=torch.int64, device=self.device)
        n_a = self.pair_counts[idx].to(torch.float64)
        n_b = counts.to(device=self.device, dtype=torch.float64)
        n = n_a + n_b
        delta = means.to(self.device) - self.pair_means[idx]
        self.pair_means[idx] = self.pair_means[idx] + delta * (n_b / n).unsqueeze(1)
        self.pair_sq_dev[idx] = self.pair_sq_dev[idx] + sq.to(self.device) + (n_a * n_b / n) * (delta * delta).sum(1)
        self.pair_counts[idx] = self.pair_counts[idx] + counts.to(self.device)

    def merge(self, other: MultiLabelStats) -> MultiLabelStats:
        """Combine with another shard of the same layer (Chan et al. pairwise update); returns self."""
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise StatisticsError(
                f"cannot merge multi-label statistics of shape (K={other.num_classes}, d={other.dim}) "
                f"into (K={self.num_classes}, d={self.dim}); they come from different layers or label sets."
            )
        self.single.merge(other.single)
        if other.pair_keys:
            self._merge_pairs(list(other.pair_keys), other.pair_counts, other.pair_means, other.pair_sq_dev)
        self.multiplicity_counts += other.multiplicity_counts.to(self.device)
        self.label_counts += other.label_counts.to(self.device)
        return self

    def check_finite(self) -> MultiLabelStats:
        """Raise if a GPU batch held NaN/Inf features (delegates to the single-label ClassStats)."""
        self.single.check_finite()
        if not bool(torch.isfinite(self.pair_means).all()):
            raise StatisticsError(
                f"layer {self.name} produced NaN or Inf features on multiplicity-2 samples; "
                "check the checkpoint's weights and the input scaling."
            )
        return self

    # ------------------------------------------------------------------ views
    @property
    def total(self) -> int:
        """N, all samples seen (every multiplicity)."""
        return int(self.multiplicity_counts.sum())

    def pair_table(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(pairs (P, 2) int array sorted by (a, b), counts (P,), means (P, d)) of the observed pairs."""
        if not self.pair_keys:
            return np.zeros((0, 2), dtype=np.int64), self.pair_counts, self.pair_means
        order = sorted(range(len(self.pair_keys)), key=lambda i: self.pair_keys[i])
        idx = torch.as_tensor(order, dtype=torch.int64, device=self.device)
        return np.asarray([self.pair_keys[i] for i in order], dtype=np.int64), self.pair_counts[idx], self.pair_means[idx]

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, np.ndarray]:
        """Arrays that fully describe the accumulator (single-label part prefixed ``single_``)."""
        out = {f"single_{k}": v for k, v in self.single.state().items()}
        out.update({
            "pair_keys": np.asarray(self.pair_keys, dtype=np.int64).reshape(-1, 2),
            "pair_counts": self.pair_counts.cpu().numpy(),
            "pair_means": self.pair_means.cpu().numpy(),
            "pair_sq_dev": self.pair_sq_dev.cpu().numpy(),
            "multiplicity_counts": self.multiplicity_counts.cpu().numpy(),
            "label_counts": self.label_counts.cpu().numpy(),
        })
        return out

    @classmethod
    def from_state(cls, state: dict) -> MultiLabelStats:
        """Inverse of :meth:`state`."""
        single = ClassStats.from_state({k[len("single_"):]: v for k, v in state.items() if k.startswith("single_")})
        out = cls(single.num_classes, single.dim, single.scatter_mode, name=single.name)
        out.single = single
        keys = np.asarray(state["pair_keys"], dtype=np.int64).reshape(-1, 2)
        out.pair_keys = [(int(a), int(b)) for a, b in keys]
        out._pair_index = {k: i for i, k in enumerate(out.pair_keys)}
        out.pair_counts = torch.as_tensor(np.asarray(state["pair_counts"]), dtype=torch.int64)
        out.pair_means = torch.as_tensor(np.asarray(state["pair_means"]), dtype=torch.float64).reshape(-1, single.dim)
        out.pair_sq_dev = torch.as_tensor(np.asarray(state["pair_sq_dev"]), dtype=torch.float64)
        out.multiplicity_counts = torch.as_tensor(np.asarray(state["multiplicity_counts"]), dtype=torch.int64)
        out.label_counts = torch.as_tensor(np.asarray(state["label_counts"]), dtype=torch.int64)
        return out

    def __repr__(self) -> str:
        return f"MultiLabelStats(name={self.name!r}, K={self.num_classes}, d={self.dim}, N={self.total}, pairs={len(self.pair_keys)})"


# ------------------------------------------------------------------------------------------------
# decisions and error counts
# ------------------------------------------------------------------------------------------------


def multilabel_decisions(logits, targets, rule: str = "sigmoid") -> torch.Tensor:
    """Multi-hot decisions (B, K) bool from logits under a decision rule.

    - ``'sigmoid'``: label k is predicted when σ(z_k) > 0.5, i.e. z_k > 0 (a logit of exactly 0 is
      not predicted);
    - ``'top-m'``: the m labels with the largest logits, m = the sample's true multiplicity (the
      evaluation of Li et al. 2024, which assumes m known); ties go to the lower label index.
    """
    z = torch.as_tensor(logits).to(torch.float64)
    if rule == "sigmoid":
        return z > 0
    if rule != "top-m":
        raise ValueError(f"unknown multi-label decision rule {rule!r}; choose one of {DECISION_RULES}")
    t = _targets(targets, z.shape[1], z.shape[0], z.device)
    m = t.sum(1)
    # stable descending order: equal logits keep increasing label index
    order = torch.sort(-z, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(z.shape[1], device=z.device).expand_as(order))
    return rank < m.unsqueeze(1)


class MultiLabelDecisions:
    """Error counts of a multi-label decision rule, batch by batch (mergeable).

    Attributes: ``n`` samples; per label ``false_positives``, ``false_negatives`` and ``positives``
    (K,) int64; ``subset_errors`` (samples with at least one wrong label); ``rule``.
    """

    def __init__(self, num_classes: int, rule: str = "sigmoid") -> None:
        if rule not in DECISION_RULES:
            raise ValueError(f"unknown multi-label decision rule {rule!r}; choose one of {DECISION_RULES}")
        self.num_classes = int(num_classes)
        self.rule = rule
        self.n = 0
        self.false_positives = torch.zeros(num_classes, dtype=torch.int64)
        self.false_negatives = torch.zeros(num_classes, dtype=torch.int64)
        self.positives = torch.zeros(num_classes, dtype=torch.int64)
        self.subset_errors = 0

    def update(self, logits, targets) -> MultiLabelDecisions:
        """Add a batch of logits (B, K) with multi-hot targets (B, K)."""
        z = torch.as_tensor(logits)
        if z.ndim != 2 or z.shape[1] != self.num_classes:
            raise StatisticsError(f"the model returned outputs of shape {tuple(z.shape)}, expected (batch, {self.num_classes}).")
        if not bool(torch.isfinite(z).all()):
            raise StatisticsError("the model produced NaN or Inf logits; check the checkpoint's weights and input scaling.")
        t = _targets(targets, self.num_classes, z.shape[0], z.device).bool()
        pred = multilabel_decisions(z, t, self.rule)
        fp = (pred & ~t).sum(0).cpu()
        fn = (~pred & t).sum(0).cpu()
        self.false_positives += fp
        self.false_negatives += fn
        self.positives += t.sum(0).cpu()
        self.subset_errors += int((pred != t).any(1).sum())
        self.n += int(z.shape[0])
        return self

    def merge(self, other: MultiLabelDecisions) -> MultiLabelDecisions:
        """Add another shard's counts (same K and rule)."""
        if other.rule != self.rule or other.num_classes != self.num_classes:
            raise StatisticsError("multi-label error counts can only be merged with the same decision rule and number of labels.")
        self.n += other.n
        self.false_positives += other.false_positives
        self.false_negatives += other.false_negatives
        self.positives += other.positives
        self.subset_errors += other.subset_errors
        return self
