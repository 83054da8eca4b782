"""Streaming logit-level statistics: margins, predictions, 0-1 errors.

Margins follow Bartlett, Foster & Telgarsky (2017, §2): γ_i = f(x_i)_{y_i} − max_{j≠y_i} f(x_i)_j,
computed in float64 from the logits the network returns. The network's decision is argmax_j f(x)_j
with ties broken towards the lowest class index (``torch.argmax`` semantics). Per-sample margins,
decisions and labels are kept (24 bytes per sample, on the device that computed them until read)
because margin percentiles and the ramp loss L̂_γ of the margin bounds need the whole distribution.
"""

from __future__ import annotations

import math

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
        self._margins: list[torch.Tensor] = []
        self._predictions: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._nonfinite: torch.Tensor | None = None
        #: the decisions of the latest batch (argmax of its logits)
        self.last_predictions: torch.Tensor | None = None

    def update(self, logits, labels) -> LogitStats:
        """Add a batch of logits (B, K) with integer labels (B,)."""
        z = torch.as_tensor(logits)
        if z.ndim != 2 or z.shape[1] != self.num_classes:
            raise StatisticsError(
                f"the model returned outputs of shape {tuple(z.shape)}, expected (batch, {self.num_classes}); "
                f"check --arch / num_classes."
            )
        if z.device.type == "cpu":
            # one reduction: the sum is finite unless an entry is NaN/Inf (or it overflows: then the exact test)
            if not math.isfinite(float(z.sum())) and not bool(torch.isfinite(z).all()):
                self._raise_nonfinite()
        else:  # deferred on a GPU: no host synchronisation per batch
            finite = torch.isfinite(z).all()
            self._nonfinite = ~finite if self._nonfinite is None else self._nonfinite | ~finite
        labels = torch.as_tensor(labels, device=z.device).reshape(-1).to(torch.int64)
        margin, pred = margins_and_predictions(z, labels)
        # kept where they were computed; moved to the host once, when read
        self._margins.append(margin)
        self._predictions.append(pred)
        self._labels.append(labels)
        self.last_predictions = pred
        return self

    @staticmethod
    def _raise_nonfinite():
        raise StatisticsError("the model produced NaN or Inf logits; check the checkpoint's weights and input scaling.")

    def check_finite(self) -> LogitStats:
        """Raise if a GPU batch held NaN/Inf logits (CPU batches are checked on arrival)."""
        if self._nonfinite is not None and bool(self._nonfinite):
            self._raise_nonfinite()
        return self

    def merge(self, other: LogitStats) -> LogitStats:
        """Append another shard's samples (order: self, then other)."""
        self._margins += other._margins
        self._predictions += other._predictions
        self._labels += other._labels
        return self

    @staticmethod
    def _cat(parts: list[torch.Tensor], dtype) -> np.ndarray:
        if not parts:
            return np.zeros(0, dtype=dtype)
        return torch.cat([p.cpu() for p in parts]).numpy().astype(dtype, copy=False)

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
        return int(sum(m.shape[0] for m in self._margins))

    @property
    def errors(self) -> int:
        """Number of misclassified samples (argmax decision ≠ label)."""
        return int((self.predictions != self.labels).sum())
