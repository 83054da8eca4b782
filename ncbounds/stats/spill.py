"""A copy of one split's features, kept for quantities that need the split's final means.

The nearest-class-center error of the training split uses the training means, which are known only
after the pass, and the second-order statistics are taken around the final means (see
``stats/projected.py``). Rather than running the network a second time, each layer's features are
kept as they stream by (in the dtype the network produced) and replayed afterwards.

They stay where they were produced — in RAM on the CPU, in device memory on a GPU, so the pass
needs no host synchronisation — until ``memory_budget`` bytes are used; beyond that everything moves
to temporary files on disk and is replayed in chunks, so process memory stays bounded whatever N.
Disk use is then N·d·(bytes per value) per layer, deleted by :meth:`close`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
import torch

#: Bytes of features kept in memory (RAM or device) before spilling to disk.
DEFAULT_MEMORY_BUDGET = 512 * 2**20


class FeatureSpill:
    """Append-only per-name store of (B, ...) tensors with ordered chunked replay."""

    def __init__(self, directory: str | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.directory = directory
        self.memory_budget = memory_budget
        self.root: str | None = None
        self._memory: dict[str, list[torch.Tensor]] = {}
        self._memory_bytes = 0
        self._files: dict[str, object] = {}
        self._meta: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self.rows: dict[str, int] = {}

    @property
    def on_disk(self) -> bool:
        return self.root is not None

    def append(self, name: str, rows: torch.Tensor) -> None:
        """Append ``rows`` (B, ...) under ``name``. The tensor must not be modified afterwards."""
        rows = rows.detach()
        self.rows[name] = self.rows.get(name, 0) + rows.shape[0]
        if not self.on_disk and self._memory_bytes + rows.nbytes <= self.memory_budget:
            self._memory.setdefault(name, []).append(rows)
            self._memory_bytes += rows.nbytes
            return
        if not self.on_disk:
            self._move_to_disk()
        self._write(name, rows)

    def _move_to_disk(self) -> None:
        self.root = tempfile.mkdtemp(prefix="ncbounds-spill-", dir=self.directory)
        for name, parts in self._memory.items():
            for part in parts:
                self._write(name, part)
        self._memory.clear()
        self._memory_bytes = 0

    def _write(self, name: str, rows: torch.Tensor) -> None:
        arr = np.ascontiguousarray(rows.cpu().numpy())
        if name not in self._files:
            self._files[name] = open(os.path.join(self.root, f"{len(self._files)}.bin"), "wb")
            self._meta[name] = (arr.dtype, tuple(arr.shape[1:]))
        self._files[name].write(arr.tobytes())

    def chunks(self, name: str, rows_per_chunk: int = 4096) -> Iterator[torch.Tensor]:
        """Yield the stored rows of ``name`` in order (memory: as appended; disk: ``rows_per_chunk``)."""
        if not self.on_disk:
            yield from self._memory.get(name, [])
            return
        fh = self._files[name]
        fh.flush()
        dtype, row_shape = self._meta[name]
        row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        with open(fh.name, "rb") as src:
            while True:
                buf = src.read(rows_per_chunk * row_bytes)
                if not buf:
                    break
                yield torch.from_numpy(np.frombuffer(buf, dtype=dtype).reshape((-1, *row_shape)).copy())

    def close(self) -> None:
        """Free memory and delete the files."""
        self._memory.clear()
        for fh in self._files.values():
            fh.close()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FeatureSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
