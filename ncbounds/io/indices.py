"""Files that list sample indices (``--prior-samples``: the training samples a user's prior saw).

Accepted formats, chosen by the suffix: ``.npy`` (a 1-D integer array, loaded without pickles),
``.json`` (a list of integers, or an object whose ``indices`` is one) and anything else as text
(integers separated by whitespace or commas; ``#`` starts a comment). Indices are 0-based positions in
the training split as ncbounds loads it; they must be non-negative and must not repeat.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ncbounds.errors import DataError

__all__ = ["read_indices"]


def _as_indices(values, path: Path) -> tuple[int, ...]:
    arr = np.asarray(values)
    if arr.size == 0:
        return ()
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or
                             (np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0))):
        raise DataError(f"{path} must hold a flat list of integer sample indices.")
    out = tuple(int(v) for v in arr)
    if min(out) < 0:
        raise DataError(f"{path} holds a negative sample index ({min(out)}); indices are 0-based positions in the training split.")
    if len(set(out)) != len(out):
        raise DataError(f"{path} repeats a sample index; list each training sample once.")
    return out


def read_indices(path: str | Path) -> tuple[int, ...]:
    """The sample indices listed in ``path`` (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"the index file {path} does not exist or is not a file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _as_indices(np.load(path, allow_pickle=False), path)
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"the index file {path} could not be read ({exc}).") from None
    if suffix == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"the index file {path} is not valid JSON ({exc.msg}, line {exc.lineno}).") from None
        if isinstance(value, dict):
            value = value.get("indices")
        if not isinstance(value, list):
            raise DataError(f"{path} must hold a JSON list of integers or an object whose 'indices' is one.")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise DataError(f"{path} must hold a flat list of integer sample indices.")
        return _as_indices(value, path)
    tokens = [t for line in text.splitlines() for t in re.split(r"[\s,]+", line.split("#", 1)[0]) if t]
    try:
        values = [int(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise DataError(f"{path} holds {bad!r}, which is not an integer sample index.") from None
    return _as_indices(values, path)
