"""Data-spec dispatch: :func:`load_data`, :func:`data_files` and the table of kinds (:data:`DATA_KINDS`)."""

from __future__ import annotations

import os
from typing import Callable

from ncbounds.errors import UsageError
from ncbounds.io.datasets.cifar import _cifar_root, _load_cifar
from ncbounds.io.datasets.core import DataSource, _resolve
from ncbounds.io.datasets.files import _load_features, _load_npz
from ncbounds.io.datasets.generated import _load_digits, _load_gaussian_etf, _load_mnist1d
from ncbounds.io.datasets.multilabel import _load_mnist1d_pairs
from ncbounds.io.datasets.selection import apply_selection, split_selection

__all__ = ["DATA_KINDS", "data_files", "load_data"]


_LOADERS: dict[str, Callable[[str, str, str | None], DataSource]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    "mnist1d-pairs": _load_mnist1d_pairs,
    "gaussian-etf": lambda s, r, b: _load_gaussian_etf(s, r, b, features=False),
    "gaussian-etf-features": lambda s, r, b: _load_gaussian_etf(s, r, b, features=True),
    "npz": _load_npz,
    "features": _load_features,
    "cifar10": lambda s, r, b: _load_cifar(s, r, b, "cifar10"),
    "cifar100": lambda s, r, b: _load_cifar(s, r, b, "cifar100"),
}


#: The recognised data-spec kinds (the part before the first colon).
DATA_KINDS: tuple[str, ...] = tuple(_LOADERS)


def data_files(spec: str, base_dir: str | None = None) -> list[str]:
    """The files a data spec reads, as absolute paths (relative ones resolved against ``base_dir``).

    ``npz:FILE`` and ``features:FILE`` → that file; ``cifar10:ROOT`` / ``cifar100:ROOT`` → the batch
    files under the folder that the loader reads (or the folder itself when it holds none, so a
    missing folder is still named); built-in generators (``digits``, ``mnist1d``, ``gaussian-etf``)
    read no file → ``[]``. Nothing is opened: this is for trust checks and content hashes.
    """
    if not isinstance(spec, str) or not spec.strip():
        return []
    head, _, rest = spec.strip().partition(":")
    kind = head.strip().lower().replace("_", "-")
    rest = split_selection(rest, spec)[0] if kind in _LOADERS else rest
    if kind in ("npz", "features"):
        return [os.path.abspath(_resolve(rest, base_dir))] if rest.strip() else []
    if kind in ("cifar10", "cifar100"):
        root = os.path.abspath(_resolve(_cifar_root(rest), base_dir))
        sub = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if kind == "cifar10" else ["train", "test"]
        for folder in (root, os.path.join(root, sub)):
            found = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
            if found:
                return found
        return [root]
    return []


def load_data(spec: str, base_dir: str | None = None) -> DataSource:
    """Load the data named by ``spec`` (forms and conventions in the module docstring).

    ``base_dir`` resolves relative file paths (e.g. the sidecar's folder). Nothing is downloaded.
    Every kind also takes the selections ``classes=…`` and ``imbalance=…``
    (:mod:`ncbounds.io.datasets.selection`), written after its own options. Raises :class:`UsageError`
    for an unknown kind or bad options and :class:`DataError` for missing or malformed data.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("the data spec is empty; pass --data, e.g. `digits` or `npz:data.npz`")
    spec = spec.strip()
    head, _, rest = spec.partition(":")
    kind = head.strip().lower().replace("_", "-")
    loader = _LOADERS.get(kind)
    if loader is None:
        raise UsageError(
            f"unknown data kind `{head}` in spec `{spec}`; known kinds: {', '.join(DATA_KINDS)}"
        )
    rest, selection = split_selection(rest, spec)
    return apply_selection(loader(spec, rest, base_dir), selection)
