"""Functional twins: every metric straight from in-memory features, labels and a linear head.

These stream the arrays through the same accumulators as the model pipeline (so they are exact
one-pass float64 statistics), which makes them the easiest way to use ncbounds on features you
already have, and the entry point of the tests that compare against brute-force references.
"""

from __future__ import annotations

import numpy as np
import torch

from ncbounds.metrics.collapse import collapse_metrics
from ncbounds.metrics.conventions import CANONICAL, Convention, get_convention
from ncbounds.metrics.margins import margin_summary
from ncbounds.stats.split import SplitStatistics


def split_metrics(split: SplitStatistics, layer: str, W=None, convention: Convention = CANONICAL) -> dict:
    """All per-layer metrics of one finished split: collapse metrics, NCC error, NC4 and margins
    (for multi-label splits: :func:`ncbounds.metrics.classes.multilabel_split_metrics`)."""
    if split.task == "multilabel":
        from ncbounds.metrics.classes import multilabel_split_metrics

        return multilabel_split_metrics(split, layer, W, convention)
    stats = split.layers[layer]
    out = collapse_metrics(stats, W if layer == split.penultimate else None, convention, split.projected.get(layer))
    counter = split.ncc.get(layer)
    out["ncc_error"] = counter.error_rate if counter is not None and counter.n else None
    if layer == split.penultimate and W is not None:
        nc4 = counter.mismatch_rate if counter is not None and counter.n else None
        if nc4 is not None and convention.ncc_agreement:
            nc4 = 1.0 - nc4
        out["nc4_mismatch"] = nc4
        if split.logits is not None:
            out.update(margin_summary(split.logits.margins))
    return out


def metrics_from_features(
    features,
    labels,
    num_classes: int | None = None,
    W=None,
    b=None,
    train_means=None,
    batch_size: int | None = None,
    convention: str | Convention | None = None,
    scatter_mode: str = "none",
) -> dict:
    """Every per-layer metric (:func:`split_metrics`) for features ``(N, d)`` with integer ``labels``.

    ``W`` (K×d), ``b`` (K): the linear head, giving logits h Wᵀ + b (margins, NC4, classifier NC2/NC3).
    ``train_means`` (K×d): reference means for the nearest-class-center decisions (default: the
    means of these features). ``batch_size`` streams the data in batches (default: all at once).
    ``scatter_mode`` 'per-class'/'pooled' computes the second-order metrics from scatter matrices
    instead of the span-restricted replay (a cross-check; results agree to rounding).
    """
    conv = get_convention(convention)
    h = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    K = int(num_classes if num_classes is not None else int(y.max()) + 1)
    Wt = None if W is None else torch.as_tensor(np.asarray(W), dtype=torch.float64)
    bt = None if b is None else torch.as_tensor(np.asarray(b), dtype=torch.float64)
    reference = None
    if train_means is not None:
        m = torch.as_tensor(np.asarray(train_means), dtype=torch.float64)
        reference = {"features": (m, torch.ones(K, dtype=torch.bool))}
    split = SplitStatistics(K, penultimate="features", scatter_mode=scatter_mode)
    step = batch_size or max(len(h), 1)
    for start in range(0, len(h), step):
        hb, yb = h[start : start + step], y[start : start + step]
        logits = nc4 = None
        if Wt is not None:
            logits = hb @ Wt.T + (bt if bt is not None else 0.0)
            nc4 = logits.argmax(1) if conv.nc4_use_bias else (hb @ Wt.T).argmax(1)
        split.update({"features": hb}, yb, logits, nc4)
    split.finish(reference)
    if scatter_mode != "none":
        split.projected.clear()  # cross-check mode: second-order metrics from the scatter matrices
    return split_metrics(split, "features", Wt, conv)
