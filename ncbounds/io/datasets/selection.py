"""Selections every data spec accepts: a subset of classes, and a class-imbalance profile.

Written after the loader's own options (they must come last in the spec):

* ``classes=SET`` keeps only those classes, e.g. ``mnist1d:classes=5-9``, ``digits:classes=0,2,4``,
  ``npz:data.npz:classes=0-4,9``. ``SET`` is a comma list of ids and inclusive ranges ``a-b``. The kept
  classes are re-indexed 0..K'−1 in increasing order of their original ids, in every split; a
  classifier given with precomputed features (``W``, ``b``) keeps the rows of those classes. The
  original ids are recorded in ``info['classes']`` so a record says which classes it saw (transfer to
  new classes: a network trained on classes 0–4 evaluated on ``classes=5-9``).
* ``imbalance=exp:R`` or ``imbalance=step:R:F`` (optionally ``imbalance_seed=S``) subsamples the
  **training split only** to a long-tailed or step profile (:mod:`ncbounds.io.imbalance`); the test
  split stays as it is. Applied after ``classes``. The class counts before and after are recorded in
  ``info['imbalance']``.

``classes=0,2,4`` contains commas, so these options are read with a tolerant rule: a comma-separated
piece without ``=`` continues the previous value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from ncbounds.errors import UsageError
from ncbounds.io.datasets.core import DataSource, Split
from ncbounds.io.imbalance import parse_imbalance, subsample_split
from ncbounds.io.kv import parse_value

__all__ = ["SELECTION_KEYS", "Selection", "apply_selection", "parse_classes", "split_selection"]

#: Option names read here, not by the loaders.
SELECTION_KEYS = ("classes", "imbalance", "imbalance_seed")
_START = re.compile(r"(?:^|[:,])(?=(?:%s)=)" % "|".join(SELECTION_KEYS))


@dataclass(frozen=True)
class Selection:
    """The selection options of one spec (None: not given)."""

    classes: tuple[int, ...] | None = None
    imbalance: str | None = None
    imbalance_seed: int = 0

    @property
    def empty(self) -> bool:
        return self.classes is None and self.imbalance is None


def parse_classes(text: str, spec: str = "") -> tuple[int, ...]:
    """``"5-9"`` → (5, 6, 7, 8, 9); ``"0,2,4"``; ``"0-2,7"``; sorted and without repeats."""
    out: set[int] = set()
    for piece in str(text).replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", piece)
        if not match:
            raise UsageError(f"classes={text!r} in data spec `{spec}` must list ids and ranges such as 5-9 or 0,2,4.")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise UsageError(f"classes range {piece!r} in data spec `{spec}` runs backwards; write {hi}-{lo}.")
        out.update(range(lo, hi + 1))
    if not out:
        raise UsageError(f"classes= in data spec `{spec}` names no class.")
    return tuple(sorted(out))


def split_selection(rest: str, spec: str = "") -> tuple[str, Selection]:
    """(the spec's rest without the selection options, the parsed :class:`Selection`)."""
    match = _START.search(rest)
    if match is None:
        return rest, Selection()
    head, tail = rest[: match.start()], rest[match.end():]
    values: dict[str, str] = {}
    key = None
    for piece in tail.split(","):
        name, eq, value = piece.partition("=")
        if eq and name.strip() in SELECTION_KEYS:
            key = name.strip()
            if key in values:
                raise UsageError(f"`{key}` is given twice in data spec `{spec}`; keep one.")
            values[key] = value
        elif key is not None and not eq:
            values[key] += "," + piece
        else:
            raise UsageError(f"`{piece}` in data spec `{spec}`: the selections ({', '.join(SELECTION_KEYS)}) come after the "
                             f"data kind's own options.")
    seed = parse_value(values.get("imbalance_seed", "0"))
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UsageError(f"imbalance_seed in data spec `{spec}` must be an integer, not {values['imbalance_seed']!r}.")
    classes = parse_classes(values["classes"], spec) if "classes" in values else None
    imbalance = values.get("imbalance")
    if imbalance is not None:
        parse_imbalance(imbalance)  # a bad profile is a usage error before anything is loaded
    return head, Selection(classes, imbalance, seed)


def _keep_classes(split: Split, mapping: np.ndarray) -> Split:
    keep = mapping[split.y] >= 0
    return Split(split.x[keep], mapping[split.y[keep]])


def apply_selection(src: DataSource, sel: Selection) -> DataSource:
    """``src`` with the selection applied (see the module docstring); ``src`` itself is not changed."""
    if sel.empty:
        return src
    if src.task == "multilabel":
        raise UsageError(f"classes= and imbalance= select classes of single-label data, but `{src.spec}` has multi-hot labels; "
                         "select the label columns before saving the file.")
    info = dict(src.info)
    out = src
    if sel.classes is not None:
        missing = [c for c in sel.classes if c >= src.num_classes]
        if missing:
            raise UsageError(f"classes={','.join(map(str, sel.classes))} of data spec `{src.spec}` names class {missing[0]}, "
                             f"but the data has classes 0..{src.num_classes - 1}.")
        mapping = np.full(src.num_classes, -1, dtype=np.int64)
        mapping[list(sel.classes)] = np.arange(len(sel.classes))
        splits = {name: _keep_classes(s, mapping) for name, s in src.splits().items()}
        W = src.W[list(sel.classes)] if src.W is not None else None
        b = src.b[list(sel.classes)] if src.b is not None else None
        info["classes"] = {"selected": list(sel.classes), "original_ids": list(sel.classes),
                           "rule": "kept classes re-indexed 0..K'-1 in increasing order of their original ids"}
        out = replace(out, num_classes=len(sel.classes), train=splits["train"], test=splits["test"],
                      heldout=splits.get("heldout"), W=W, b=b, info=info)
    if sel.imbalance is not None:
        profile = parse_imbalance(sel.imbalance)
        available = np.bincount(out.train.y, minlength=out.num_classes)
        x, y, counts = subsample_split(out.train.x, out.train.y, profile, out.num_classes, seed=sel.imbalance_seed)
        info["imbalance"] = {
            "profile": str(profile), "seed": sel.imbalance_seed, "applied_to": "train",
            "class_counts": {"train": [int(c) for c in np.bincount(y, minlength=out.num_classes)],
                             "train_available": [int(c) for c in available],
                             "test": [int(c) for c in np.bincount(out.test.y, minlength=out.num_classes)]},
            "target_counts": [int(c) for c in counts],
        }
        out = replace(out, train=Split(x, y), info=info)
    return out
