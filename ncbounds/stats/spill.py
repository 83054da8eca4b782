"""Temporary on-disk copy of one split's features, for quantities that need the split's final means.

The nearest-class-center error of the training split uses the training means, which are known only
after the pass; directional CDNV with pooled statistics needs the final means too. Rather than running
the network a second time, each layer's features are appended to a temporary file as they stream by
(in the dtype the network produced) and replayed in chunks afterwards. Process memory stays
independent of N (one chunk at a time); disk use is N·d·(bytes per value) per spilled layer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np


class FeatureSpill:
    """Append-only per-layer feature files with chunked replay; delete with :meth:`close`."""

    def __init__(self, directory: str | None = None) -> None:
        self.root = tempfile.mkdtemp(prefix="ncbounds-spill-", dir=directory)
        self._files: dict[str, object] = {}
        self._meta: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self.rows: dict[str, int] = {}

    def append(self, name: str, array: np.ndarray) -> None:
        """Append rows (B, d) to the file of ``name``."""
        arr = np.ascontiguousarray(array)
        if name not in self._files:
            self._files[name] = open(os.path.join(self.root, f"{len(self._files)}.bin"), "wb")
            self._meta[name] = (arr.dtype, tuple(arr.shape[1:]))
            self.rows[name] = 0
        self._files[name].write(arr.tobytes())
        self.rows[name] += arr.shape[0]

    def chunks(self, name: str, rows_per_chunk: int = 4096) -> Iterator[np.ndarray]:
        """Yield the stored rows of ``name`` in order, ``rows_per_chunk`` at a time."""
        fh = self._files[name]
        fh.flush()
        dtype, row_shape = self._meta[name]
        row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        with open(fh.name, "rb") as src:
            while True:
                buf = src.read(rows_per_chunk * row_bytes)
                if not buf:
                    break
                yield np.frombuffer(buf, dtype=dtype).reshape((-1, *row_shape)).copy()

    def close(self) -> None:
        """Delete the files."""
        for fh in self._files.values():
            fh.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FeatureSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
