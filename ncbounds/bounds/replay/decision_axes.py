"""Statistics of held-out features along the decision axes of a fixed affine classifier (replay).

Used by the sample-split certificate ``nc_split_certificate`` (``bounds/nc_certificates.py``): the
classifier — the deployed linear head (W, b) or the nearest-class-center (NCC) rule with the
**training** means — is fixed before the test split is seen, so the test split is held-out data for it.

Affine decision margins
-----------------------
Both classifiers are affine score rules ``predict(x) = argmax_k G_k(x)``, ``G(x) = W x + b``:

- head: W, b as deployed;
- NCC with training means μ̂_k: ‖x − μ̂_j‖² − ‖x − μ̂_i‖² = 2(μ̂_i − μ̂_j)ᵀx + ‖μ̂_j‖² − ‖μ̂_i‖², i.e.
  W = 2M̂, b_k = −‖μ̂_k‖² (the common ‖x‖² cancels).

For a class-i sample and a competitor j the decision margin is g_ij(x) = G_i(x) − G_j(x) =
Δwᵀx + Δb with Δw = w_i − w_j, Δb = b_i − b_j; the sample can be classified as j only if
g_ij(x) ≤ 0 (ties are counted as errors, whatever the tie-breaking of the deployed rule).

Bounded, sign-preserving normalization
--------------------------------------
Features are not assumed bounded. With a fixed centre o ∈ R^d (chosen before the test data; the
factory uses the unweighted mean of the training class means, o = 0 gives ``‖x‖`` below) write
g_ij(x) = Δwᵀ(x − o) + g_ij(o) and define, for Δw ≠ 0,

    t_ij(x) = g_ij(x) / c_ij(x),     c_ij(x) = ‖x − o‖ + |g_ij(o)| / ‖Δw‖.

Claim: sign t_ij(x) = sign g_ij(x) and |t_ij(x)| ≤ ‖Δw‖.
Proof. c_ij(x) ≥ 0, and c_ij(x) = 0 only if x = o and g_ij(o) = 0, where g_ij(x) = g_ij(o) = 0 too;
we set t = 0 there (0 ≤ 0: counted as an error, consistent with the tie rule). Otherwise c > 0, so
dividing by it preserves the sign, and by Cauchy–Schwarz and the triangle inequality
|g_ij(x)| ≤ ‖Δw‖·‖x − o‖ + |g_ij(o)| = ‖Δw‖·c_ij(x), i.e. |t_ij(x)| ≤ ‖Δw‖.  ∎
Hence t_ij ∈ [−‖Δw‖, ‖Δw‖] (range width 2‖Δw‖) for every x, and {g_ij ≤ 0} = {t_ij ≤ 0}.
If Δw = 0 the margin g_ij ≡ Δb is constant: the pair is decided without data (class i is never
sent to j when Δb > 0, always "at risk" when Δb ≤ 0); those pairs are flagged ``degenerate`` and t
is stored as 0. The centre o only changes the (positive) scale, so any fixed o is valid; taking it
near the data makes the denominator comparable to the margin (a common offset of the features, e.g.
after ReLU, would otherwise shrink E[t] relative to the range and waste the Hoeffding step).

Numerics. The margins are computed as differences of the scores G (the quantity the deployed
classifier compares), after centring at o (bias b' = b + W o, which makes scores and their differences
small); the K×K table of ‖Δw‖ comes from one GEMM, with exact differences where the Gram-matrix
form would cancel (:func:`pairwise_row_distances`). The computed t is clipped to [−‖Δw‖, ‖Δw‖]
(clipping preserves the sign), so the stored values are a deterministic function of x with exactly
the range the confidence bounds use, whatever rounding ‖Δw‖ carries (it only changes the positive
scale), and with the sign of the computed score difference — the comparison the rule itself makes.

Accumulated statistics
----------------------
Per rule and per ordered pair (i, j): the count, mean and centred sum of squares of t_ij over the
class-i samples, combined across batches with the pairwise update of Chan, Golub & LeVeque (float64,
never raw second moments): for parts a, b with δ = m_b − m_a,
n = n_a + n_b, m = m_a + δ·n_b/n, M2 = M2_a + M2_b + δ²·n_a n_b/n. Plus class counts. Memory
O(K² + K·d) per rule, O(B·K) per batch of B rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ncbounds.bounds.base import ReplayInfo, ReplayRequest
from ncbounds.errors import StatisticsError

__all__ = ["DECISION_AXES", "AffineRule", "DecisionAxisStats", "decision_axes_factory", "pairwise_row_distances"]

_F64 = torch.float64


def _as_f64(x: Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(x).to(device=device, dtype=_F64)


def pairwise_row_distances(W: torch.Tensor, rel_tol: float = 1e-6, chunk: int = 4096) -> torch.Tensor:
    """‖w_i − w_j‖ for all row pairs (K×K, zero diagonal).

    The Gram-matrix form ‖w_i‖² + ‖w_j‖² − 2w_iᵀw_j costs one GEMM but cancels for nearly equal
    rows; pairs whose result is below ``rel_tol``·(‖w_i‖² + ‖w_j‖²) (where that cancellation could
    matter) are recomputed from explicit differences, so identical rows give exactly 0.
    """
    sq = (W * W).sum(1)
    scale = sq.unsqueeze(1) + sq.unsqueeze(0)
    d2 = (scale - 2.0 * (W @ W.T)).clamp(min=0.0)
    close = d2 <= rel_tol * scale
    close.fill_diagonal_(False)
    idx = close.nonzero()
    for start in range(0, idx.shape[0], chunk):
        i, j = idx[start:start + chunk, 0], idx[start:start + chunk, 1]
        diff = W[i] - W[j]
        d2[i, j] = (diff * diff).sum(1)
    d2.fill_diagonal_(0.0)
    return d2.sqrt()


class AffineRule:
    """A fixed K-class affine rule argmax_k (W x + b)_k with centre o (see module docstring).

    ``active`` marks the classes the rule can predict (NCC: classes present in the training split);
    inactive classes are never competitors, and their own samples are always misclassified.
    ``certify`` (default: ``active``) marks the classes whose own error may be bounded from data; the
    others get the trivial bound 1 (used when it is unknown whether a class can be predicted).
    Attributes (K×K tensors, row i = true class, column j = competitor): ``dw_norm`` = ‖w_i − w_j‖,
    ``db`` = g_ij(o) = b'_i − b'_j, ``offset`` = |g_ij(o)|/‖Δw‖ (0 where degenerate), ``degenerate`` =
    (Δw = 0, including the diagonal).
    """

    def __init__(self, weight: Any, bias: Any, center: Any | None = None, active: Any | None = None,
                 device: str | torch.device = "cpu", centered_bias: bool = False, certify: Any | None = None) -> None:
        dev = torch.device(device)
        W = _as_f64(weight, dev)
        if W.ndim != 2:
            raise StatisticsError(f"an affine rule needs a K×d weight matrix, got shape {tuple(W.shape)}.")
        K, d = W.shape
        b = torch.zeros(K, dtype=_F64, device=dev) if bias is None else _as_f64(bias, dev).reshape(-1)
        o = torch.zeros(d, dtype=_F64, device=dev) if center is None else _as_f64(center, dev).reshape(-1)
        if b.shape[0] != K or o.shape[0] != d:
            raise StatisticsError(f"bias ({b.shape[0]}) / centre ({o.shape[0]}) do not match weight {K}×{d}.")
        self.weight = W
        self.center = o
        # scores of x are W (x − o) + b' with b' = b + W o (or b itself when given centred already)
        self.bias = b if centered_bias else b + W @ o
        self.active = (torch.ones(K, dtype=torch.bool, device=dev) if active is None
                       else torch.as_tensor(active).to(device=dev, dtype=torch.bool).reshape(-1))
        self.certify = (self.active.clone() if certify is None
                        else torch.as_tensor(certify).to(device=dev, dtype=torch.bool).reshape(-1) & self.active)
        self.dw_norm = pairwise_row_distances(W)
        self.db = self.bias.unsqueeze(1) - self.bias.unsqueeze(0)
        self.degenerate = self.dw_norm <= 0
        safe = torch.where(self.degenerate, torch.ones_like(self.dw_norm), self.dw_norm)
        self.offset = torch.where(self.degenerate, torch.zeros_like(self.db), self.db.abs() / safe)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def to(self, device) -> AffineRule:
        for key in ("weight", "center", "bias", "active", "certify", "dw_norm", "db", "degenerate", "offset"):
            setattr(self, key, getattr(self, key).to(device))
        return self

    def margins(self, features: Any, labels: Any) -> torch.Tensor:
        """g_{y_n, j}(x_n) for every row n and every j (B×K; column y_n is 0)."""
        x = _as_f64(features, self.weight.device) - self.center
        y = torch.as_tensor(labels).to(device=self.weight.device, dtype=torch.int64).reshape(-1)
        G = x @ self.weight.T + self.bias
        return G.gather(1, y.unsqueeze(1)) - G

    def values(self, features: Any, labels: Any) -> torch.Tensor:
        """t_{y_n, j}(x_n) (B×K): sign of the margin, |t| ≤ ‖w_{y_n} − w_j‖; 0 on degenerate pairs."""
        x = _as_f64(features, self.weight.device) - self.center
        y = torch.as_tensor(labels).to(device=self.weight.device, dtype=torch.int64).reshape(-1)
        return self.values_from_scores(x @ self.weight.T + self.bias, x.norm(dim=1, keepdim=True), y)

    def values_from_scores(self, G: torch.Tensor, x_norm: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`values` from the scores G = W(x − o) + b' (B×K) and ‖x − o‖ (B×1) of int64 labels ``y``."""
        g = G.gather(1, y.unsqueeze(1)) - G
        denom = x_norm + self.offset[y]
        pos = denom > 0
        t = torch.where(pos, g / torch.where(pos, denom, torch.ones_like(denom)), torch.zeros_like(g))
        R = self.dw_norm[y]
        t = torch.minimum(torch.maximum(t, -R), R)
        return torch.where(self.degenerate[y], torch.zeros_like(t), t)

    @classmethod
    def nearest_center(cls, means: Any, active: Any | None = None, center: Any | None = None,
                       device: str | torch.device = "cpu", certify: Any | None = None) -> AffineRule:
        """The NCC rule of ``means`` as an affine rule: W = 2(M − o), b' = −‖μ_k − o‖² (centred at o).

        ‖x − μ_j‖² − ‖x − μ_i‖² is invariant under translating x and the means by o, so building the
        rule from the centred means gives the same margins with smaller scores (less cancellation).
        """
        dev = torch.device(device)
        M = _as_f64(means, dev)
        o = torch.zeros(M.shape[1], dtype=_F64, device=dev) if center is None else _as_f64(center, dev).reshape(-1)
        mc = M - o
        return cls(2.0 * mc, -(mc * mc).sum(1), center=o, active=active, device=dev, centered_bias=True, certify=certify)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays describing the rule (the bias is stored centred: scores W (x − o) + b')."""
        return {"weight": self.weight.cpu().numpy(), "centered_bias": self.bias.cpu().numpy(),
                "center": self.center.cpu().numpy(), "active": self.active.cpu().numpy(),
                "certify": self.certify.cpu().numpy()}


class DecisionAxisStats:
    """Replay accumulator: per rule and ordered pair (i, j), count / mean / centred SS of t_ij on class i.

    Parameters
    ----------
    rules: {name: AffineRule} — typically ``'head'`` and/or ``'ncc'`` (see :func:`decision_axes_factory`).

    After the replay, ``class_counts`` (K), and per rule ``pair_count[name]`` (K×K, = n_i on row i),
    ``pair_mean[name]`` and ``pair_m2[name]`` (K×K, Σ (t − mean)² over class i) describe the held-out
    split. :meth:`pair_variance` gives the unbiased variance (NaN where n_i < 2).
    """

    def __init__(self, rules: dict[str, AffineRule]) -> None:
        if not rules:
            raise StatisticsError("DecisionAxisStats needs at least one affine rule (a head or reference means).")
        shapes = {(r.num_classes, r.dim) for r in rules.values()}
        if len(shapes) != 1:
            raise StatisticsError(f"all rules must share K and d; got {sorted(shapes)}.")
        (K, d), = shapes
        self.num_classes, self.dim = K, d
        self.rules = dict(rules)
        dev = next(iter(rules.values())).weight.device
        self.class_counts = torch.zeros(K, dtype=torch.int64, device=dev)
        self.pair_count = {k: torch.zeros(K, K, dtype=torch.int64, device=dev) for k in rules}
        self.pair_mean = {k: torch.zeros(K, K, dtype=_F64, device=dev) for k in rules}
        self.pair_m2 = {k: torch.zeros(K, K, dtype=_F64, device=dev) for k in rules}

    @property
    def device(self) -> torch.device:
        return self.class_counts.device

    def update(self, features: Any, labels: Any) -> DecisionAxisStats:
        """Add a batch (B×d features, B labels in 0..K−1) of the held-out split."""
        x = _as_f64(features, self.device)
        y = torch.as_tensor(labels).to(device=self.device, dtype=torch.int64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise StatisticsError(f"decision-axis replay got features of shape {tuple(x.shape)}, expected (batch, {self.dim}).")
        if y.numel() == 0:
            return self
        K = self.num_classes
        if int(y.min()) < 0 or int(y.max()) >= K:
            raise StatisticsError(f"labels must lie in 0..{K - 1} for the decision-axis replay.")
        return self._add(x, y, torch.bincount(y, minlength=K))

    def update_batch(self, batch) -> DecisionAxisStats:
        """:meth:`update` from a :class:`~ncbounds.stats.accumulator.ReplayBatch` of checked labels."""
        if batch.h.shape[1] != self.dim:
            raise StatisticsError(f"decision-axis replay got features of shape {tuple(batch.h.shape)}, expected (batch, {self.dim}).")
        if batch.y.numel() == 0:
            return self
        return self._add(batch.h, batch.y, batch.counts)

    def _scores(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per rule the scores W(x − o) + b' and ‖x − o‖: one centred copy and one norm per distinct centre,
        and one product for the rules that share a centre."""
        groups: list[tuple[torch.Tensor, list[str]]] = []
        for name, rule in self.rules.items():
            for center, names in groups:
                if center is rule.center or torch.equal(center, rule.center):
                    names.append(name)
                    break
            else:
                groups.append((rule.center, [name]))
        out = {}
        for center, names in groups:
            xc = x - center
            norm = torch.linalg.vector_norm(xc, dim=1, keepdim=True)
            weights = torch.cat([self.rules[n].weight for n in names]) if len(names) > 1 else self.rules[names[0]].weight
            scores = xc @ weights.T
            K = self.num_classes
            for i, n in enumerate(names):
                out[n] = (scores[:, i * K:(i + 1) * K] + self.rules[n].bias, norm)
        return out

    def _add(self, x: torch.Tensor, y: torch.Tensor, counts_b: torch.Tensor) -> DecisionAxisStats:
        K = self.num_classes
        n_b = counts_b.to(_F64).unsqueeze(1)
        for name, (G, x_norm) in self._scores(x).items():
            t = self.rules[name].values_from_scores(G, x_norm, y)
            mean_b = torch.zeros(K, K, dtype=_F64, device=self.device).index_add_(0, y, t) / n_b.clamp(min=1.0)
            dev = t - mean_b[y]
            m2_b = torch.zeros(K, K, dtype=_F64, device=self.device).index_add_(0, y, dev * dev)
            self._merge_rule(name, counts_b.unsqueeze(1).expand(K, K), mean_b, m2_b)
        self.class_counts += counts_b
        return self

    def _merge_rule(self, name: str, cnt_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al. pairwise update of one rule's K×K tables with another part's tables."""
        n_a = self.pair_count[name].to(_F64)
        nb = cnt_b.to(_F64)
        n = n_a + nb
        safe = n.clamp(min=1.0)
        delta = mean_b - self.pair_mean[name]
        self.pair_mean[name] = self.pair_mean[name] + delta * (nb / safe)
        self.pair_m2[name] = self.pair_m2[name] + m2_b + delta * delta * (n_a * nb / safe)
        self.pair_count[name] = self.pair_count[name] + cnt_b.to(torch.int64)

    def merge(self, other: DecisionAxisStats) -> DecisionAxisStats:
        """Combine with the replay of another shard made with the same rules (Chan update); returns self."""
        if set(other.rules) != set(self.rules) or other.num_classes != self.num_classes:
            raise StatisticsError("decision-axis statistics can only be merged when made with the same rules.")
        for name in self.rules:
            a, b = self.rules[name], other.rules[name]
            if not (torch.equal(a.weight, b.weight.to(a.weight.device)) and torch.equal(a.bias, b.bias.to(a.bias.device))
                    and torch.equal(a.center, b.center.to(a.center.device))):
                raise StatisticsError(f"cannot merge decision-axis statistics of different {name!r} rules.")
            self._merge_rule(name, other.pair_count[name].to(self.device), other.pair_mean[name].to(self.device),
                             other.pair_m2[name].to(self.device))
        self.class_counts += other.class_counts.to(self.device)
        return self

    def pair_variance(self, name: str) -> torch.Tensor:
        """Unbiased sample variance M2/(n−1) of t_ij over class i (NaN where n_i < 2)."""
        n = self.pair_count[name].to(_F64)
        return torch.where(n >= 2, self.pair_m2[name] / (n - 1).clamp(min=1.0), torch.full_like(n, float("nan")))

    def state(self) -> dict[str, np.ndarray]:
        """Arrays describing the accumulator (for shipping between processes)."""
        out: dict[str, np.ndarray] = {"class_counts": self.class_counts.cpu().numpy(), "rules": np.array(sorted(self.rules))}
        for name, rule in self.rules.items():
            for key, val in rule.state().items():
                out[f"{name}.rule.{key}"] = val
            out[f"{name}.count"] = self.pair_count[name].cpu().numpy()
            out[f"{name}.mean"] = self.pair_mean[name].cpu().numpy()
            out[f"{name}.m2"] = self.pair_m2[name].cpu().numpy()
        return out

    @classmethod
    def from_state(cls, state: dict) -> DecisionAxisStats:
        """Inverse of :meth:`state`."""
        names = [str(n) for n in np.asarray(state["rules"]).reshape(-1)]
        rules = {n: AffineRule(state[f"{n}.rule.weight"], state[f"{n}.rule.centered_bias"], state[f"{n}.rule.center"],
                               state[f"{n}.rule.active"], centered_bias=True, certify=state[f"{n}.rule.certify"])
                 for n in names}
        out = cls(rules)
        out.class_counts = torch.as_tensor(np.asarray(state["class_counts"]), dtype=torch.int64)
        for n in names:
            out.pair_count[n] = torch.as_tensor(np.asarray(state[f"{n}.count"]), dtype=torch.int64)
            out.pair_mean[n] = torch.as_tensor(np.asarray(state[f"{n}.mean"]), dtype=_F64)
            out.pair_m2[n] = torch.as_tensor(np.asarray(state[f"{n}.m2"]), dtype=_F64)
        return out

    def __repr__(self) -> str:
        return f"DecisionAxisStats(K={self.num_classes}, d={self.dim}, rules={sorted(self.rules)}, N={int(self.class_counts.sum())})"


def _reference(info: ReplayInfo) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Training means, the classes NCC can predict, and the classes whose error may be certified.

    Without ``info.reference_present`` it is unknown whether an all-zero row is the mean of a class
    absent from training (ClassStats leaves those at 0) or a genuine zero mean, so the conservative
    reading of both is taken: the row stays a competitor of every class, and its own class gets the
    trivial bound 1.
    """
    if info.reference_means is None:
        return None, None, None
    means = torch.as_tensor(info.reference_means).to(_F64).cpu()
    if info.reference_present is None:
        active = torch.ones(means.shape[0], dtype=torch.bool)
        return means, active, (means != 0).any(1)
    active = torch.as_tensor(info.reference_present).to(torch.bool).reshape(-1).cpu()
    return means, active, active


def decision_axes_factory(stats: Any, info: ReplayInfo) -> DecisionAxisStats | None:
    """Replay factory of :data:`DECISION_AXES` (the test split of the sample-split certificates).

    ``info.head`` = (W, b) or None gives the rule ``'head'``; ``info.reference_means`` (training means,
    K×d, with ``info.reference_present``) gives the rule ``'ncc'`` (W = 2M̂, b = −‖μ̂‖², only
    training-present classes active; see :func:`_reference` for the conservative reading when no mask
    is given). The centre o of both rules is the unweighted mean of the present training means (0
    without them). Returns None when there is neither a head nor reference means (a head or means
    whose shape is not K×d of ``stats`` is ignored, so a mismatch never breaks the replay).
    """
    device = stats.means.device if hasattr(stats, "means") else torch.device("cpu")
    K, d = int(stats.means.shape[0]), int(stats.means.shape[1])
    means, present, certify = _reference(info)
    if means is not None and tuple(means.shape) != (K, d):
        means = None  # not this layer's means: no NCC rule (never fail the replay)
    center = means[present].mean(0) if means is not None and bool(present.any()) else None
    rules: dict[str, AffineRule] = {}
    head = info.head
    if head is not None and tuple(torch.as_tensor(head[0]).shape) == (K, d):
        W, b = head
        rules["head"] = AffineRule(W, b, center=center, device=device)
    if means is not None:
        rules["ncc"] = AffineRule.nearest_center(means, active=present, center=center, device=device, certify=certify)
    if not rules:
        return None
    return DecisionAxisStats(rules)


#: The statistic of the sample-split certificates, on the test split (held-out features).
DECISION_AXES = ReplayRequest("decision_axes", decision_axes_factory, splits=("test",))
