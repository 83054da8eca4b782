"""CIFAR-10/100 from the standard python-pickle batches (``cifar10:ROOT`` / ``cifar100:ROOT``), never downloaded.

Batches are unpickled by :class:`_ArrayUnpickler`, which only admits what a CIFAR batch holds (dicts,
lists, bytes, NumPy arrays). Images become float32 (N, 3, 32, 32): pixels / 255, then standardised per
channel by :data:`CIFAR_STATS` unless ``normalize=false``.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from ncbounds.errors import DataError
from ncbounds.io.datasets.core import DataSource, Split, _first_line, _make_split, _num_classes, _options, _require, _resolve

__all__ = ["CIFAR_STATS"]


#: Per-channel (mean, std) of the training images in [0, 1], the values used by common CIFAR code.
CIFAR_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler restricted to what CIFAR batches contain (dicts, lists, bytes, numpy arrays)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: str, label_key: str, spec: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(
            f"CIFAR file `{path}` is missing (spec `{spec}`); "
            "point to the extracted python-pickle folder"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(
            f"CIFAR file `{path}` is unreadable or not a CIFAR batch ({_first_line(exc)}); "
            "re-extract the python version of the dataset"
        ) from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR file `{path}` is not a CIFAR batch; re-extract the python version")
    norm = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    for key in ("data", label_key):
        if key not in norm:
            raise DataError(
                f"CIFAR file `{path}` has no `{key}` entry; "
                "re-extract the python version of the dataset"
            )
    data = np.asarray(norm["data"])
    labels = np.asarray(norm[label_key])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"CIFAR file `{path}` holds data of shape {data.shape}, not (N, 3072); re-extract it"
        )
    return data, labels


def _cifar_folder(root: str, name: str, spec: str) -> str:
    sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    marker = "test_batch" if name == "cifar10" else "test"
    if not os.path.isdir(root):
        raise DataError(f"CIFAR folder `{root}` of spec `{spec}` does not exist; fix the path")
    for cand in (root, os.path.join(root, sub)):
        if os.path.isfile(os.path.join(cand, marker)):
            return cand
    raise DataError(
        f"`{root}` holds no {name} python-pickle batches (no `{marker}` in it or in `{sub}/`); "
        f"point {name}:ROOT at the extracted `{sub}` folder"
    )


def _to_images(data: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    out = np.empty((data.shape[0], 3, 32, 32), dtype=np.float32)
    chunk = 4096
    for s in range(0, data.shape[0], chunk):
        block = data[s : s + chunk].reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
        if mean is not None:
            block = (block - mean) / std
        out[s : s + chunk] = block
    return out


def _cifar_root(rest: str) -> str:
    """The folder part of a ``cifar10:``/``cifar100:`` spec's rest (trailing ``,normalize=…`` removed)."""
    head, sep, tail = rest.rpartition(",")
    if sep and tail.strip().split("=")[0].strip() == "normalize":
        return head
    return rest


def _load_cifar(spec: str, rest: str, base_dir: str | None, name: str) -> DataSource:
    # trailing `,normalize=...` options; everything before is the folder (it may contain commas)
    root = _cifar_root(rest)
    opts = rest[len(root) + 1:] if len(root) < len(rest) else ""
    _require(bool(root.strip()), spec, f"name the folder: `{name}:path/to/{name}`")
    opt = _options(spec, opts, {"normalize": (bool, True)})
    folder = _cifar_folder(_resolve(root, base_dir), name, spec)
    if name == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = ["test_batch"], "labels"
    else:
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
    mean = std = None
    if opt["normalize"]:
        m, s = CIFAR_STATS[name]
        mean = np.asarray(m, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(s, dtype=np.float32).reshape(1, 3, 1, 1)

    def read(files: list[str], split: str) -> Split:
        parts = [_read_cifar_batch(os.path.join(folder, f), label_key, spec) for f in files]
        data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([np.asarray(p[1]).reshape(-1) for p in parts])
        if data.dtype != np.uint8:
            raise DataError(
                f"CIFAR data in `{folder}` has dtype {data.dtype}, not uint8 pixels; re-extract it"
            )
        return _make_split(_to_images(data, mean, std), labels, split, f"`{folder}`")

    splits = {"train": read(train_files, "train"), "test": read(test_files, "test")}
    return DataSource(
        spec=spec,
        kind="inputs",
        num_classes=_num_classes(splits),
        train=splits["train"],
        test=splits["test"],
        info={
            "source": f"{name} python-pickle batches",
            "path": os.path.abspath(folder),
            "scaling": "pixels / 255, then (x - mean) / std per channel"
            if opt["normalize"]
            else "pixels / 255",
            "mean": list(CIFAR_STATS[name][0]) if opt["normalize"] else None,
            "std": list(CIFAR_STATS[name][1]) if opt["normalize"] else None,
        },
    )
