"""Step 3b: the per-class parts of the record — per-class rows, imbalance geometry, multi-label errors.

Called by :func:`~ncbounds.pipeline.assemble.assemble` once the layer metrics exist. Everything comes
from the statistics of the one pass per split (no further pass): see :mod:`ncbounds.metrics.classes`.

Single-label data: every layer and split gets ``layers.NAME.per_class.SPLIT`` (one row per class) and
the imbalance metrics in ``layers.NAME.metrics.SPLIT`` (weighted NC1, minority-collapse block cosines,
SELI distances; the minority split and SELI's D from the layer's **training** counts on both splits).
Multi-label data: ``layers.penultimate.per_label.SPLIT`` (per-label errors with Clopper–Pearson
intervals). Both: the top-level ``classes`` section and ``data.task``.
"""

from __future__ import annotations

from ncbounds.features import PENULTIMATE
from ncbounds.io.datasets.selection import parse_classes
from ncbounds.metrics.classes import (
    classifier_cosines,
    imbalance_split_metrics,
    max_min_ratio,
    per_class_rows,
    per_label_rows,
)
from ncbounds.report.record import ClassesInfo, EvalRecord

#: above this largest/smallest training count the report shows the per-class table on its own
IMBALANCE_TABLE_RATIO = 3.0
MINORITY_RULE = "training count below the geometric mean √(n_max·n_min) of the largest and smallest training count"


def explicit_minority(opts) -> tuple[int, ...] | None:
    """The ``--minority`` classes as indices, or None for the default rule."""
    return None if opts.minority in (None, "auto") else parse_classes(opts.minority, "--minority")


def add_class_sections(record: EvalRecord, splits: dict, head, opts) -> None:
    """Add the per-class / multi-label sections of the record in place (see the module docstring)."""
    train = splits["train"]
    record.data["task"] = train.task
    W, b = head if head is not None else (None, None)
    if train.task == "multilabel":
        _multilabel(record, splits, W, opts)
    else:
        _single_label(record, splits, W, b, opts)


def _counts(split, name: str) -> list[int]:
    return [int(c) for c in split.layers[name].counts.cpu().numpy()]


def _single_label(record: EvalRecord, splits: dict, W, b, opts) -> None:
    minority = explicit_minority(opts)
    train = splits["train"]
    minority_classes: list[int] = []
    for name, layer in record.layers.items():
        train_counts = train.layers[name].counts
        per_class = {}
        for split_name, split in splits.items():
            metrics, chosen = imbalance_split_metrics(split, name, W, train_counts, minority)
            layer["metrics"][split_name].update(metrics)
            per_class[split_name] = per_class_rows(split, name, W, b)
            if name == PENULTIMATE and split_name == "train":
                minority_classes = chosen
        layer["per_class"] = per_class
    counts = {split_name: _counts(split, PENULTIMATE) for split_name, split in splits.items()}
    ratio = max_min_ratio(counts["train"])
    record.classes = ClassesInfo.from_dict({
        "task": "multiclass",
        "counts": counts,
        "max_min_ratio": ratio,
        "minority": {"rule": MINORITY_RULE if minority is None else "given (--minority)", "classes": minority_classes,
                     "counts_from": "train"},
        "classifier_cosines": classifier_cosines(W),
    })
    if minority is not None or (ratio is not None and ratio > IMBALANCE_TABLE_RATIO):
        record.notes.append(
            f"class counts: the largest training class has {ratio or 1:.3g}× the samples of the smallest; minority collapse and SELI "
            f"distances read every split against the training counts, with minority classes {minority_classes} "
            f"({'given by --minority' if minority is not None else 'below √(n_max·n_min)'}); per-class rows are in layers.NAME.per_class."
        )


def _multilabel(record: EvalRecord, splits: dict, W, opts) -> None:
    pen = record.layers.get(PENULTIMATE)
    if pen is not None:
        pen["per_label"] = {split_name: per_label_rows(split) for split_name, split in splits.items()}
    ml = {split_name: split.multilabel[PENULTIMATE] for split_name, split in splits.items()}
    counts = {split_name: [int(c) for c in stats.label_counts.cpu().numpy()] for split_name, stats in ml.items()}
    multiplicity = {split_name: [int(c) for c in stats.multiplicity_counts.cpu().numpy()] for split_name, stats in ml.items()}
    record.classes = ClassesInfo.from_dict({
        "task": "multilabel",
        "counts": counts,
        "max_min_ratio": max_min_ratio(counts["train"]),
        "minority": {"rule": "not used on multi-label data", "classes": []},
        "classifier_cosines": classifier_cosines(W),
        "decision_rule": opts.ml_decision,
        "multiplicity": multiplicity,
        "pairs": {split_name: len(stats.pair_keys) for split_name, stats in ml.items()},
    })
    rule = ("sigmoid: label k is predicted when its logit is > 0" if opts.ml_decision == "sigmoid"
            else "top-m: the m largest logits, m the sample's true number of labels (Li et al. 2024)")
    record.notes.append(
        f"multi-label data (multi-hot labels, multiplicity 0/1/2/≥3 in training: {multiplicity['train']}): collapse metrics use the "
        f"multiplicity-1 samples (nc1_single; NC2/NC3 of their class means), ml_pair_angle the means of multiplicity-2 label pairs; "
        f"errors are subset (exact-match) errors, with the Hamming error beside them, under the decision rule {rule}."
    )
    if all(m[0] == 0 and m[2] == 0 and m[3] == 0 for m in multiplicity.values()):
        record.notes.append("every sample has exactly one label: if these are one-hot class labels, store y.argmax(1) "
                            "to evaluate the data as single-label.")
