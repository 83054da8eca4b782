"""Batch evaluation: every checkpoint under a folder → one JSON record per checkpoint, resumable.

``run_batch(root, out_dir, options)`` finds the checkpoints under ``root``, evaluates each with
:func:`ncbounds.pipeline.evaluate` (architecture, keyword arguments, data spec, initialization checkpoint
and hyperparameters come from the sidecars; options given here override them) and writes one file per
checkpoint into ``out_dir``: ``NAME.json`` (the record plus a ``batch`` object) or ``NAME.error.json``
(the one-sentence reason of a failure, which never stops the other checkpoints).

One module per job:

- :mod:`.discovery` — which files are checkpoints, and their result names;
- :mod:`.shards` — ``--shard i/N`` and SLURM arrays;
- :mod:`.identity` — what makes a record current (``--resume``) or the same (``merge``);
- :mod:`.files` — atomic writes, temporary files, locks, reading the folder back;
- :mod:`.tasks` — one checkpoint's evaluation and the files it leaves;
- :mod:`.local` and :mod:`.ray` — the executors (processes on this machine, a Ray cluster);
- :mod:`.merge` — combining record folders;
- :mod:`.run` — :func:`run_batch`, which ties them together.
"""

from ncbounds.batch.discovery import CHECKPOINT_SUFFIXES, RESULTS_DIRNAME, find_checkpoints, hidden_checkpoints, result_name
from ncbounds.batch.files import ERROR_SUFFIX, locked, read_results
from ncbounds.batch.identity import (
    IDENTITY_EXCLUDED,
    FileHashes,
    file_sha256,
    input_files,
    inputs_hash,
    options_hash,
    sidecar_hash,
)
from ncbounds.batch.merge import MergeSummary, merge_results
from ncbounds.batch.run import BACKENDS, BatchFailure, BatchSummary, run_batch
from ncbounds.batch.shards import parse_shard, select_shard, shard_from_env, shard_of

__all__ = [
    "BACKENDS",
    "CHECKPOINT_SUFFIXES",
    "ERROR_SUFFIX",
    "IDENTITY_EXCLUDED",
    "RESULTS_DIRNAME",
    "BatchFailure",
    "BatchSummary",
    "FileHashes",
    "MergeSummary",
    "file_sha256",
    "find_checkpoints",
    "hidden_checkpoints",
    "input_files",
    "inputs_hash",
    "locked",
    "merge_results",
    "options_hash",
    "parse_shard",
    "read_results",
    "result_name",
    "run_batch",
    "select_shard",
    "shard_from_env",
    "shard_of",
    "sidecar_hash",
]
