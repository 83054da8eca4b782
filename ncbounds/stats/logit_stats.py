"""Streaming logit-level statistics: margins, predictions, 0-1 errors (DESIGN §4, §5 "margins").

Margins follow Bartlett, Foster & Telgarsky (2017, §2): γ_i = f(x_i)_{y_i} − max_{j≠y_i} f(x_i)_j,
computed in float64 from the logits the network returns. The network's decision is argmax_j f(x)_j
with ties broken towards the lowest class index (``torch.argmax`` semantics). Per-sample margins and
decisions are kept (8 + 8 bytes per sample) because margin percentiles and the ramp loss L̂_γ of the
margin bounds need the whole distribution; feature-sized data is never kept.
"""

from __future__ import annotations

import numpy as np
import torch

from ncbounds.errors import StatisticsError


def margins_and_predictions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiclass margins γ_i = z_{i,y_i} − max_{j≠y_i} z_ij (float64) and argmax decisions."""
    z = logits.to(torch.float64)
    y = labels.to(device=z.device, dtype=torch.int64).reshape(-1, 1)
    true = z.gather(1, y).squeeze(1)
    others = z.scatter(1, y, float("-inf"))
    return true - others.max(1).values, z.argmax(1)


class LogitStats:
    """Accumulates margins, decisions and labels of one split, batch by batch (mergeable)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self._margins: list[np.ndarray] = []
        self._predictions: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, logits, labels) -> LogitStats:
        """Add a batch of logits (B, K) with integer labels (B,)."""
        z = torch.as_tensor(logits)
        if z.ndim != 2 or z.shape[1] != self.num_classes:
            raise StatisticsError(
                f"the model returned outputs of shape {tuple(z.shape)}, expected (batch, {self.num_classes}); "
                f"check --arch / num_classes."
            )
        if not bool(torch.isfinite(z).all()):
            raise StatisticsError("the model produced NaN or Inf logits; check the checkpoint's weights and input scaling.")
        margin, pred = margins_and_predictions(z, torch.as_tensor(labels))
        self._margins.append(margin.cpu().numpy())
        self._predictions.append(pred.cpu().numpy())
        self._labels.append(torch.as_tensor(labels).reshape(-1).cpu().numpy().astype(np.int64))
        return self

    def merge(self, other: LogitStats) -> LogitStats:
        """Append another shard's samples (order: self, then other)."""
        self._margins += other._margins
        self._predictions += other._predictions
        self._labels += other._labels
        return self

    @staticmethod
    def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    @property
    def margins(self) -> np.ndarray:
        return self._cat(self._margins, np.float64)

    @property
    def predictions(self) -> np.ndarray:
        return self._cat(self._predictions, np.int64)

    @property
    def labels(self) -> np.ndarray:
        return self._cat(self._labels, np.int64)

    @property
    def n(self) -> int:
        return int(sum(len(m) for m in self._margins))

    @property
    def errors(self) -> int:
        """Number of misclassified samples (argmax decision ≠ label)."""
        return int((self.predictions != self.labels).sum())
