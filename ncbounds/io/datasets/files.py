"""User data from ``.npz`` archives: raw inputs (``npz:FILE``) and precomputed features (``features:FILE``).

Archives are read with ``allow_pickle=False`` (object arrays are refused, never unpickled). Inputs stay
float32; features stay float64, as they feed the statistics directly.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from ncbounds.errors import DataError
from ncbounds.io.datasets.core import (
    DataSource,
    Split,
    _check_finite,
    _check_shapes,
    _first_line,
    _make_split,
    _num_classes,
    _require,
    _resolve,
)


def _open_npz(path: str, spec: str) -> dict[str, np.ndarray]:
    """Read every array of a ``.npz`` archive (never unpickling object arrays)."""
    if not os.path.exists(path):
        raise DataError(f"data file `{path}` of spec `{spec}` does not exist; fix the path")
    if os.path.isdir(path):
        raise DataError(f"data file `{path}` of spec `{spec}` is a folder; point to a .npz file")
    unreadable = f"`{path}` of spec `{spec}` is not a readable .npz file"
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise DataError(f"{unreadable} ({_first_line(exc)}); check its permissions") from None
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(
            f"`{path}` of spec `{spec}` holds a single .npy array, not named arrays; "
            "save with np.savez(file, x_train=..., y_train=..., ...)"
        )
    if not magic.startswith(b"PK"):
        raise DataError(f"{unreadable} (not a zip archive); re-save it with np.savez")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(
                f"`{path}` of spec `{spec}` holds object arrays, which are never unpickled; "
                "save plain numeric arrays"
            ) from None
        raise DataError(f"{unreadable} ({_first_line(exc)}); re-save it with np.savez") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataError(f"{unreadable} ({type(exc).__name__}); re-save it with np.savez") from None


def _splits_from_arrays(
    arrays: dict[str, np.ndarray], xkey: str, spec: str, path: str, dtype=np.float32
) -> dict[str, Split]:
    required = [f"{xkey}_train", "y_train", f"{xkey}_test", "y_test"]
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DataError(
            f"`{path}` lacks the arrays {', '.join(missing)} "
            f"(it has {', '.join(sorted(arrays)) or 'none'}); "
            f"save {', '.join(required)}"
        )
    has_hx, has_hy = f"{xkey}_heldout" in arrays, "y_heldout" in arrays
    if has_hx != has_hy:
        lacking = "y_heldout" if has_hx else f"{xkey}_heldout"
        raise DataError(f"`{path}` has a held-out split without `{lacking}`; save both or neither")
    names = ["train", "test"] + (["heldout"] if has_hx else [])
    splits = {
        name: _make_split(arrays[f"{xkey}_{name}"], arrays[f"y_{name}"], name, f"`{path}`", dtype)
        for name in names
    }
    _check_shapes(splits, f"`{path}`")
    return splits


def _load_npz(spec: str, rest: str, base_dir: str | None) -> DataSource:
    _require(bool(rest.strip()), spec, "name the file: `npz:path/to/data.npz`")
    path = _resolve(rest, base_dir)
    splits = _splits_from_arrays(_open_npz(path, spec), "x", spec, path)
    return DataSource(
        spec=spec,
        kind="inputs",
        num_classes=_num_classes(splits),
        train=splits["train"],
        test=splits["test"],
        heldout=splits.get("heldout"),
        info={"source": "npz", "path": os.path.abspath(path)},
    )


def _load_features(spec: str, rest: str, base_dir: str | None) -> DataSource:
    _require(bool(rest.strip()), spec, "name the file: `features:path/to/features.npz`")
    path = _resolve(rest, base_dir)
    arrays = _open_npz(path, spec)
    # precomputed features stay float64: under strong collapse (spread 1e-6 around means of norm
    # 50) float32 storage alone would destroy the within-class signal
    splits = _splits_from_arrays(arrays, "h", spec, path, np.float64)
    for name, s in splits.items():
        if s.x.ndim != 2:
            raise DataError(
                f"features h_{name} in `{path}` have shape {s.x.shape}; store (N, d) vectors"
            )
    d = splits["train"].x.shape[1]
    num_classes = _num_classes(splits)
    W = b = None
    if "W" in arrays:
        W = np.asarray(arrays["W"], dtype=np.float64)
        if W.ndim != 2 or W.shape[1] != d:
            raise DataError(
                f"classifier W in `{path}` has shape {W.shape} but features have d={d}; "
                f"store W as (K, {d})"
            )
        _check_finite(W, f"classifier W in `{path}`")
        if num_classes > W.shape[0]:
            raise DataError(
                f"labels in `{path}` go up to {num_classes - 1} but W has {W.shape[0]} rows; "
                "labels must be below the number of classifier rows"
            )
        if splits["train"].y.ndim == 2 and num_classes != W.shape[0]:
            raise DataError(
                f"the multi-hot labels in `{path}` have {num_classes} columns but W has {W.shape[0]} rows; "
                "store one classifier row per label"
            )
        num_classes = W.shape[0]
        if "b" in arrays:
            b = np.asarray(arrays["b"], dtype=np.float64).reshape(-1)
            if b.shape != (W.shape[0],):
                raise DataError(
                    f"bias b in `{path}` has {b.size} entries but W has {W.shape[0]} rows; "
                    f"store b of shape ({W.shape[0]},)"
                )
            _check_finite(b, f"bias b in `{path}`")
        else:
            b = np.zeros(W.shape[0])
    elif "b" in arrays:
        raise DataError(f"`{path}` has a bias b without a classifier W; save W too or drop b")
    return DataSource(
        spec=spec,
        kind="features",
        num_classes=num_classes,
        train=splits["train"],
        test=splits["test"],
        heldout=splits.get("heldout"),
        W=W,
        b=b,
        info={"source": "features npz", "path": os.path.abspath(path)},
    )
