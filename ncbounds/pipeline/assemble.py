"""Step 3: the record — metrics per layer and split, layerwise summaries, measured errors, provenance."""

from __future__ import annotations

import datetime as _dt
import platform

import numpy as np
import torch

from ncbounds.features import PENULTIMATE
from ncbounds.metrics.classes import multilabel_split_errors
from ncbounds.metrics.collapse import collapse_notes
from ncbounds.metrics.functional import split_metrics
from ncbounds.metrics.layerwise import effective_depth, he_su_fit
from ncbounds.pipeline.classes import add_class_sections
from ncbounds.report.record import EvalRecord
from ncbounds.stats.binomial import clopper_pearson
from ncbounds.stats.split import SplitStatistics
from ncbounds.version import __version__


def _errors(split: SplitStatistics) -> dict | None:
    """Measured 0-1 error with its two-sided 95 % Clopper–Pearson interval; None without a classifier
    (multi-label data: the subset error, with the Hamming error beside it)."""
    if split.task == "multilabel":
        return multilabel_split_errors(split)
    if split.logits is None:
        return None
    k, n = split.logits.errors, split.logits.n
    lo, hi = clopper_pearson(k, n, alpha=0.05)
    return {"error": k / n, "errors": k, "n": n, "ci95": [float(lo), float(hi)]}


def assemble(prep, splits, head, conv, opts, device, num_classes, aliases=None) -> EvalRecord:
    """The record of the finished passes (bounds are added by the caller)."""
    notes = list(prep.notes)
    if opts.amp:
        notes.append("the forward pass ran under automatic mixed precision (--amp): features are half precision, "
                     "statistics are still float64.")
    train = splits["train"]
    aliases = aliases or {}
    order = [name for name in train.layers if name not in aliases]  # forward order, penultimate last, each representation once
    for kept in order:
        merged = [a for a, k in aliases.items() if k == kept]
        if merged:
            notes.append(f"layer{'s' if len(merged) > 1 else ''} {', '.join(merged)} carr{'y' if len(merged) > 1 else 'ies'} the same "
                         f"features as {kept} on every sample (e.g. a pooled last block that the head receives as it is) and "
                         f"{'are' if len(merged) > 1 else 'is'} reported once, as {kept}; layerwise fits count it once.")
    W = head[0] if head is not None else None
    layers = {}
    for index, name in enumerate(order, start=1):
        stats = train.layers[name]
        metrics = {}
        for split_name, split in splits.items():
            metrics[split_name] = split_metrics(split, name, W, conv)
            if name == PENULTIMATE or index == 1:
                notes += [n for n in collapse_notes(split.layers[name], split_name, name) if n not in notes]
        layers[name] = {"dim": stats.dim, "index": index, "scatter_mode": stats.scatter_mode, "metrics": metrics}
        merged = [a for a, k in aliases.items() if k == name]
        if merged:
            layers[name]["aliases"] = merged
    layerwise: dict = {"epsilon": opts.effective_depth_epsilon}
    for split_name in splits:
        if len(order) >= 2:
            layerwise[split_name] = he_su_fit([layers[n]["metrics"][split_name]["separation_fuzziness"] for n in order])
        else:
            layerwise[split_name] = {"layerwise_rho": None, "layerwise_r": None}
    depth = effective_depth([layers[n]["metrics"]["train"]["ncc_error"] for n in order], opts.effective_depth_epsilon)
    layerwise["effective_depth"] = depth
    layerwise["effective_depth_layer"] = order[depth - 1] if depth else None
    errors = {name: _errors(split) for name, split in splits.items()}
    if errors["test"] is None:
        notes.append("no classifier was given with the features, so errors, margins and NC4 are not reported (add W and b to the file).")
    data_info = {
        "spec": prep.data.spec,
        "kind": prep.data.kind,
        "num_classes": num_classes,
        "splits": {name: {"n": int(split.n_samples)} for name, split in splits.items()},
        "info": prep.data.info,
    }
    model_info = prep.model_info
    if model_info is None and head is not None:
        model_info = {"arch": "linear head from features file", "num_classes": num_classes, "penultimate": "features file",
                      "num_params": int(head[0].numel() + head[1].numel())}
    options = opts.to_record()
    provenance = {
        "ncbounds": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "seed": opts.seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hyperparameters": prep.hyperparameters,
        "hyperparameters_source": prep.hparams_source,
        "metadata": prep.metadata,
    }
    record = EvalRecord(
        checkpoint=prep.checkpoint_info,
        model=model_info,
        data=data_info,
        errors=errors,
        layers=layers,
        layerwise=layerwise,
        bounds=[],
        convention={"name": conv.name, "differences": conv.differences(), "description": conv.description},
        provenance=provenance,
        options=options,
        notes=notes,
    )
    add_class_sections(record, splits, head, opts)
    return record
