"""Shards of a batch (``--shard i/N``, SLURM job arrays).

Checkpoint ``p`` belongs to shard :func:`shard_of` = ``int(sha256(relative path of p)[:16], 16) % N``
(0-based). The assignment depends on nothing but the checkpoint's own relative path (POSIX form,
relative to the batch root): not on the other files, the order of discovery, the time or the
machine. So N jobs (a SLURM array) started at different times, while checkpoints are still being
added, together evaluate every checkpoint they see exactly once, and a checkpoint added later lands
in one fixed shard; a sorted-index rule (``index % N``) would be better balanced for small folders but
moves every later checkpoint to another shard when one file is added. Shard sizes are therefore
binomial (about ``total/N ± sqrt(total/N)``). The shards may write into one results folder (their
locks do not exclude each other, see :mod:`ncbounds.batch.files`) or into one folder each, combined
afterwards by :func:`ncbounds.batch.merge.merge_results`. Every shard must use the same root layout
(the relative paths), ``glob``, ``N`` and options.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable

from ncbounds.errors import UsageError

__all__ = ["parse_shard", "select_shard", "shard_from_env", "shard_of"]

_SHARD_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*\Z")

def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` → ``(i, N)`` with ``0 <= i < N`` (0-based); :class:`UsageError` otherwise. ``"0/1"`` is every checkpoint."""
    match = _SHARD_TEXT.match(str(text))
    if not match:
        raise UsageError(f"--shard must look like i/N with 0-based i, e.g. 0/4 … 3/4, not {text!r}.")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text}: the shard index is 0-based and must lie in 0..N-1 with N >= 1 (e.g. 0/4 … 3/4).")
    return index, count

def shard_from_env(environ=None) -> tuple[int, int] | None:
    """The shard of a SLURM array task, or None outside an array job.

    ``N = SLURM_ARRAY_TASK_COUNT`` and ``i = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) /
    SLURM_ARRAY_TASK_STEP`` (MIN 0 and STEP 1 when unset), so ``--array=0-7``, ``--array=1-8`` and
    ``--array=0-14:2`` all give the shards 0/8 … 7/8, whatever the first id. An array whose ids are not
    evenly spaced (``--array=1,4,9``) is refused with a :class:`UsageError` naming ``--shard``.
    """
    env = os.environ if environ is None else environ
    count_text = env.get("SLURM_ARRAY_TASK_COUNT")
    if not count_text:
        return None

    def number(key: str, default: int | None = None) -> int:
        value = env.get(key)
        if value is None or value == "":
            if default is None:
                raise UsageError(f"SLURM_ARRAY_TASK_COUNT is set but {key} is not; pass --shard i/N explicitly.")
            return default
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{key}={value!r} is not an integer; pass --shard i/N explicitly.") from None

    count, task_id = number("SLURM_ARRAY_TASK_COUNT"), number("SLURM_ARRAY_TASK_ID")
    first, step = number("SLURM_ARRAY_TASK_MIN", 0), number("SLURM_ARRAY_TASK_STEP", 1)
    last = env.get("SLURM_ARRAY_TASK_MAX")
    offset = task_id - first
    evenly = step > 0 and offset % step == 0 and (not last or (number("SLURM_ARRAY_TASK_MAX") - first) == (count - 1) * step)
    if count < 1 or not evenly or not 0 <= offset // step < count:
        raise UsageError(
            f"cannot derive a shard from SLURM_ARRAY_TASK_ID={task_id} (MIN={first}, STEP={step}, COUNT={count}): the array ids "
            f"must be evenly spaced, e.g. --array=0-{max(count - 1, 0)}; pass --shard i/N explicitly."
        )
    return offset // step, count

def shard_of(relative_path: str, count: int) -> int:
    """The shard (0..count-1) of a checkpoint, from the SHA-256 of its POSIX relative path alone."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).hexdigest()
    return int(digest[:16], 16) % count

def select_shard(paths: Iterable[Path], root: str | Path, shard: tuple[int, int] | None) -> list[Path]:
    """The checkpoints of ``paths`` (under ``root``) that belong to ``shard = (i, N)``, order kept; all when None."""
    paths = list(paths)
    if shard is None:
        return paths
    index, count = shard
    return [p for p in paths if shard_of(Path(p).relative_to(root).as_posix(), count) == index]
