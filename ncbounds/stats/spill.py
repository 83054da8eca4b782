"""A copy of one split's features, kept for quantities that need the split's final means.

The nearest-class-center error of the training split uses the training means, which are known only
after the pass, and the second-order statistics are taken around the final means (see
``stats/projected.py``). Rather than running the network a second time, each layer's features are
kept as they stream by (in the dtype the network produced) and replayed afterwards.

They stay where they were produced — in RAM on the CPU, in device memory on a GPU, so the pass
needs no host synchronisation — until ``memory_budget`` bytes are used; beyond that everything moves
to temporary files on disk and is replayed in chunks, so process memory stays bounded whatever N.
Disk use is then N·d·(bytes per value) per layer, deleted by :meth:`close`.

When the number of rows is known in advance (``capacity``, e.g. the split's size), :meth:`reserve`
hands out rows of one store per name allocated once, to be filled and then appended: no large block
is allocated per batch and kept alive (on the CPU that would make the allocator hand the network
fresh, page-faulting memory for its own temporaries on every batch).
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

    def __init__(self, directory: str | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 capacity: int | None = None) -> None:
        self.directory = directory
        self.memory_budget = memory_budget
        self.capacity = capacity
        self._stores: dict[str, torch.Tensor] = {}  # name → (capacity, ...) preallocated rows
        self._parts: dict[str, list[int]] = {}  # name → sizes of the parts appended to its store
        self.root: str | None = None
        self._memory: dict[str, list[torch.Tensor]] = {}
        self._memory_bytes = 0
        self._files: dict[str, object] = {}
        self._meta: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._disk_dtype: dict[str, torch.dtype] = {}
        self.rows: dict[str, int] = {}

    @property
    def on_disk(self) -> bool:
        return self.root is not None

    def append(self, name: str, rows: torch.Tensor, disk_dtype: torch.dtype | None = None) -> None:
        """Append ``rows`` (B, ...) under ``name``. The tensor must not be modified afterwards.

        ``disk_dtype``: the dtype the rows of ``name`` are written in once the copy moves to disk
        (e.g. a float64 copy of float32 features is kept in memory, where it saves the replay a
        conversion, but written as the float32 it exactly equals); default: as given."""
        rows = rows.detach()
        if disk_dtype is not None:
            self._disk_dtype.setdefault(name, disk_dtype)
        filled = self.rows.get(name, 0)
        self.rows[name] = filled + rows.shape[0]
        store = self._stores.get(name)
        if store is not None:
            if filled + rows.shape[0] <= store.shape[0]:
                target = store[filled:filled + rows.shape[0]]
                if target.data_ptr() != rows.data_ptr():  # not the rows reserve() handed out: copy them in
                    target.copy_(rows)
                self._parts[name].append(rows.shape[0])
                return
            self._move_to_disk()  # more rows than announced
        if not self.on_disk and self._memory_bytes + rows.nbytes <= self.memory_budget:
            self._memory.setdefault(name, []).append(rows)
            self._memory_bytes += rows.nbytes
            return
        if not self.on_disk:
            self._move_to_disk()
        self._write(name, rows)

    def owns(self, name: str) -> bool:
        """True when the rows that :meth:`chunks` yields for ``name`` belong to the spill (a preallocated
        store, or fresh tensors read from disk), so a reader may overwrite them; False for appended
        tensors kept as they were given."""
        return self.on_disk or name in self._stores

    def reserve(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """The next B rows (uninitialised) of the store of ``name``, to fill and then pass to :meth:`append`;
        None when there is no such store (no ``capacity``, ``capacity`` rows would exceed the memory
        budget, the copy is on disk or ``name`` was appended to without one)."""
        B = shape[0]
        store = self._stores.get(name)
        if store is None and self.capacity and not self.on_disk and name not in self._memory:
            nbytes = self.capacity * int(np.prod(shape[1:], dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
            if self._memory_bytes + nbytes <= self.memory_budget:
                with torch.inference_mode(False):  # a normal tensor, so its rows may be reused in place after the pass
                    store = self._stores[name] = torch.empty((self.capacity, *shape[1:]), dtype=dtype, device=device)
                self._parts[name] = []
                self._memory_bytes += nbytes
        filled = self.rows.get(name, 0)
        if (store is not None and store.dtype == dtype and store.device == torch.device(device)
                and tuple(store.shape[1:]) == tuple(shape[1:]) and filled + B <= store.shape[0]):
            return store[filled:filled + B]
        return None

    def _move_to_disk(self) -> None:
        self.root = tempfile.mkdtemp(prefix="ncbounds-spill-", dir=self.directory)
        for name, store in self._stores.items():
            start = 0
            for size in self._parts[name]:
                self._write(name, store[start:start + size])
                start += size
        self._stores.clear()
        self._parts.clear()
        for name, parts in self._memory.items():
            for part in parts:
                self._write(name, part)
        self._memory.clear()
        self._memory_bytes = 0

    def _write(self, name: str, rows: torch.Tensor) -> None:
        disk_dtype = self._disk_dtype.get(name)
        if disk_dtype is not None:
            rows = rows.to(disk_dtype)
        arr = np.ascontiguousarray(rows.cpu().numpy())
        if name not in self._files:
            self._files[name] = open(os.path.join(self.root, f"{len(self._files)}.bin"), "wb")
            self._meta[name] = (arr.dtype, tuple(arr.shape[1:]))
        self._files[name].write(arr.tobytes())

    def chunks(self, name: str, rows_per_chunk: int = 4096) -> Iterator[torch.Tensor]:
        """Yield the stored rows of ``name`` in order.

        On disk: ``rows_per_chunk`` rows at a time. In memory: consecutive appended parts joined until
        they hold at least ``rows_per_chunk`` rows (a single part as it is) — so names appended in
        lockstep (a layer, its labels) give chunks of the same sizes, and small batches are replayed
        in fewer, larger steps."""
        if not self.on_disk:
            store = self._stores.get(name)
            parts = self._memory.get(name, [])
            sizes = self._parts[name] if store is not None else [p.shape[0] for p in parts]
            first = begin = end = 0
            for i, size in enumerate(sizes):
                end += size
                if end - begin < rows_per_chunk and i + 1 < len(sizes):
                    continue
                if store is not None:
                    yield store[begin:end]
                else:
                    yield parts[first] if i == first else torch.cat(parts[first:i + 1])
                first, begin = i + 1, end
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
        self._stores.clear()
        self._parts.clear()
        for fh in self._files.values():
            fh.close()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FeatureSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
