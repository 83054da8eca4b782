"""Per-class and multi-label parts of a record, rendered: the report's class table and tidy rows.

* :func:`render_classes` — the terminal block of ``ncbounds report``: single-label data get the
  per-class table of the penultimate layer (training count, test count, test error with its
  Clopper–Pearson interval, NCC error, variability, mean norm, ‖w_c‖, bias, margin median, NC1 share)
  and the imbalance geometry (weighted NC1, minority-collapse block cosines beside the ETF value
  −1/(K−1), SELI distances), shown with ``--per-class`` and on its own when the largest/smallest
  training count exceeds 3; multi-label data always get the multi-label block (subset and Hamming
  errors with intervals, nc1_single, ml_pair_angle, per-label errors).
* :func:`class_quantities` — the tidy rows of one layer for ``export --format csv-long``: quantity
  ``class[c].<field>`` for the per-class rows (``ci95`` → ``.lo`` / ``.hi``) and
  ``label[k].<field>`` for the per-label rows.
"""

from __future__ import annotations

from ncbounds.report.record import EvalRecord

__all__ = ["AUTO_RATIO", "CLASS_FIELDS", "LABEL_FIELDS", "class_quantities", "render_classes", "shows_classes"]

#: the per-class table is shown without --per-class when the largest/smallest training count exceeds this
AUTO_RATIO = 3.0
CLASS_FIELDS = ("n", "errors", "error", "ci95", "variability", "mean_norm", "classifier_norm", "bias", "margin_median",
                "ncc_error", "nc1_share")
LABEL_FIELDS = ("positives", "errors", "error", "ci95", "false_positives", "false_negatives")


def class_quantities(layer: dict) -> list[tuple[str, str, object]]:
    """(split, quantity, value) rows of a layer's ``per_class`` and ``per_label`` entries (scalars only)."""
    out: list[tuple[str, str, object]] = []
    for key, prefix, index, fields in (("per_class", "class", "class", CLASS_FIELDS), ("per_label", "label", "label", LABEL_FIELDS)):
        for split, rows in (layer.get(key) or {}).items():
            for row in rows or []:
                tag = f"{prefix}[{row.get(index)}]"
                for field in fields:
                    value = row.get(field)
                    if field == "ci95":
                        lo, hi = value if isinstance(value, (list, tuple)) and len(value) == 2 else (None, None)
                        out += [(split, f"{tag}.error.lo", lo), (split, f"{tag}.error.hi", hi)]
                    else:
                        out.append((split, f"{tag}.{field}", value))
    return out


def shows_classes(record: EvalRecord, per_class: bool | None) -> bool:
    """Whether the report shows the class block: always for multi-label data; else ``per_class``, or
    (None) when the largest/smallest training count exceeds :data:`AUTO_RATIO`."""
    classes = record.classes
    if classes is None:
        return False
    if classes.get("task") == "multilabel":
        return per_class is not False
    if per_class is not None:
        return per_class
    ratio = classes.get("max_min_ratio")
    return ratio is not None and ratio > AUTO_RATIO


def render_classes(record: EvalRecord, per_class: bool | None, fmt, grid) -> list[str]:
    """The class block of the terminal report (lines; empty when not shown, see :func:`shows_classes`).

    ``fmt`` (number → text) and ``grid`` (header, rows → lines) are the report table's own helpers."""
    if not shows_classes(record, per_class):
        return []
    if record.classes.get("task") == "multilabel":
        return _multilabel_block(record, grid, fmt)
    return _single_label_block(record, grid, fmt)


def _single_label_block(record: EvalRecord, grid, fmt) -> list[str]:
    pen = record.layers.get("penultimate")
    if pen is None or not pen.get("per_class"):
        return []
    classes = record.classes
    minority = set((classes.get("minority") or {}).get("classes") or [])
    counts = classes.get("counts") or {}
    train_n = counts.get("train") or []
    out = [f"classes (penultimate layer; n = training count, the rest on the test split; * = minority class; largest/smallest "
           f"training count {fmt(classes.get('max_min_ratio'), 3)}):"]
    test_rows = pen["per_class"].get("test") or []
    order = sorted(range(len(test_rows)), key=lambda c: (-(train_n[c] if c < len(train_n) else 0), c))
    rows = []
    for c in order:
        r = test_rows[c]
        ci = r.get("ci95") or [None, None]
        rows.append([f"{c}{'*' if c in minority else ''}", str(train_n[c]) if c < len(train_n) else "—", str(r.get("n")),
                     fmt(r.get("error")), f"[{fmt(ci[0], 3)}, {fmt(ci[1], 3)}]", fmt(r.get("ncc_error")),
                     fmt(r.get("variability")), fmt(r.get("mean_norm")), fmt(r.get("classifier_norm")), fmt(r.get("bias")),
                     fmt(r.get("margin_median")), fmt(r.get("nc1_share"))])
    out += grid(["class", "n train", "n test", "error", "95% CP", "NCC err", "variability", "‖μ_c−μ_G‖", "‖w_c‖", "bias",
                 "margin med", "NC1 share"], rows)
    m = pen["metrics"]
    etf = m["train"].get("etf_cos")
    out.append("")
    out.append(f"imbalance geometry (penultimate; minority/SELI from the training counts; simplex-ETF cosine −1/(K−1) = {fmt(etf)}):")
    geometry = [("nc1 (canonical)", "nc1"), ("nc1_weighted (Hong & Ling 2023)", "nc1_weighted"),
                ("cos W: minority", "minority_cos_W"), ("cos W: majority", "majority_cos_W"), ("cos W: across", "cross_cos_W"),
                ("cos M: minority", "minority_cos_M"), ("cos M: majority", "majority_cos_M"), ("cos M: across", "cross_cos_M"),
                ("SELI distance W", "seli_distance_W"), ("SELI distance M", "seli_distance_M"),
                ("SELI distance logits", "seli_distance_logits")]
    out += grid(["quantity", "train", "test"], [[label, fmt(m["train"].get(k)), fmt(m["test"].get(k))]
                                                for label, k in geometry if k in m["train"]])
    out.append("")
    return out


def _multilabel_block(record: EvalRecord, grid, fmt) -> list[str]:
    classes = record.classes
    out = [f"multi-label data (decision rule {classes.get('decision_rule')}; samples of multiplicity 0/1/2/≥3: "
           f"train {classes.get('multiplicity', {}).get('train')}, test {classes.get('multiplicity', {}).get('test')}):"]
    rows = []
    for split in ("train", "test"):
        e = record.errors.get(split)
        if e:
            ci, hci = e.get("ci95") or [None, None], e.get("hamming_ci95") or [None, None]
            rows.append([split, fmt(e.get("error")), f"[{fmt(ci[0])}, {fmt(ci[1])}]", fmt(e.get("hamming_error")),
                         f"[{fmt(hci[0])}, {fmt(hci[1])}]", str(e.get("n"))])
    if rows:
        out += grid(["split", "subset error", "95% Clopper–Pearson", "Hamming error", "95% kl (Hoeffding)", "n"], rows)
    pen = record.layers.get("penultimate")
    if pen is not None:
        m = pen["metrics"]
        keys = [k for k in ("nc1_single", "ml_pair_angle", "nc2_etf_error_means", "nc2_etf_error_classifier", "nc3_zhu", "ncc_error")
                if k in m["train"]]
        out += grid(["metric (Li et al. 2024)", "train", "test"], [[k, fmt(m["train"].get(k)), fmt(m["test"].get(k))] for k in keys])
        labels = (pen.get("per_label") or {}).get("test") or []
        if labels:
            out.append("per-label errors on the test split:")
            out += grid(["label", "positives", "error", "95% CP", "false pos.", "false neg."],
                        [[str(r["label"]), str(r["positives"]), fmt(r.get("error")),
                          f"[{fmt((r.get('ci95') or [None, None])[0], 3)}, {fmt((r.get('ci95') or [None, None])[1], 3)}]",
                          str(r["false_positives"]), str(r["false_negatives"])] for r in labels])
    out.append("")
    return out
