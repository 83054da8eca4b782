"""One checkpoint's evaluation as a task, and the files it leaves (shared by the local and Ray executors).

:func:`evaluate_task` evaluates without touching the results folder (it runs in a worker of either
backend); :func:`finish_task` writes the record (``NAME.json``: the record plus a ``batch`` object
``{root, relative_path, checkpoint_sha256, options_hash, sidecar_hash, inputs_hash, created}``) or the
error record (``NAME.error.json``: ``{checkpoint, error: {reason, type, exit_code, traceback}, batch}``,
``reason`` one sentence) atomically, in the process that owns the results folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ncbounds.batch.files import ERROR_SUFFIX, atomic_write, read_json, remove
from ncbounds.batch.identity import record_is_current, safe_sha
from ncbounds.errors import NCBoundsError
from ncbounds.options import EvalOptions

__all__ = ["Task", "evaluate_task", "failure_outcome", "finish_task", "free_device_memory", "one_sentence", "run_task", "write_failure"]

@dataclass
class Task:
    """One checkpoint to evaluate: where it is, its result name, the options and its identity hashes."""

    path: str
    relative_path: str
    name: str
    root: str
    out_dir: str
    options: EvalOptions
    options_hash: str
    sidecar_hash: str | None
    inputs_hash: str | None = None
    files_free: bool = True  # reads no file besides the checkpoint (records without inputs_hash can be current)

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

def one_sentence(exc: BaseException, error_file: str) -> str:
    if isinstance(exc, NCBoundsError):
        return " ".join(str(exc).split())
    first = " ".join(str(exc).split())
    first = first[:300] + ("..." if len(first) > 300 else "")
    return f"unexpected {type(exc).__name__}{': ' + first if first else ''} (the traceback is in {error_file})."

def batch_info(task: Task, sha: str | None) -> dict:
    return {"root": task.root, "relative_path": task.relative_path, "checkpoint_sha256": sha,
            "options_hash": task.options_hash, "sidecar_hash": task.sidecar_hash, "inputs_hash": task.inputs_hash,
            "created": _now()}

def evaluate_task(task: Task) -> dict:
    """Evaluate one checkpoint without touching the results folder (runs in a worker of either backend).

    Returns ``{"status": "done", "record": dict}`` or ``{"status": "failed", "reason", "type",
    "exit_code", "traceback", "retry"}``; ``retry`` is False for an :class:`NCBoundsError` (a
    deterministic input problem) and True for any other exception.
    """
    from ncbounds.pipeline import evaluate

    try:
        return {"status": "done", "record": evaluate(task.path, task.options).to_dict()}
    except Exception as exc:  # noqa: BLE001 - every failure is recorded; the batch goes on
        expected = isinstance(exc, NCBoundsError)
        outcome = failure_outcome(task, exc, None if expected else traceback.format_exc())
        free_device_memory()
        return outcome

def failure_outcome(task: Task, exc: BaseException, tb: str | None) -> dict:
    return {"status": "failed", "reason": one_sentence(exc, f"{task.name}{ERROR_SUFFIX}"), "type": type(exc).__name__,
            "exit_code": getattr(exc, "exit_code", 1), "traceback": tb, "retry": not isinstance(exc, NCBoundsError)}

def finish_task(task: Task, outcome: dict, t0: float) -> dict:
    """Write the record or error file of ``outcome`` (from :func:`evaluate_task`) atomically; a small summary dict."""
    out = Path(task.out_dir)
    if outcome["status"] == "done":
        data = outcome["record"]
        data["batch"] = batch_info(task, (data.get("checkpoint") or {}).get("sha256"))
        try:
            text = json.dumps(data, indent=2, allow_nan=False)
        except (TypeError, ValueError) as exc:
            outcome = failure_outcome(task, exc, traceback.format_exc())
        else:
            atomic_write(out / f"{task.name}.json", text)
            remove(out / f"{task.name}{ERROR_SUFFIX}")
            return {"name": task.name, "relative_path": task.relative_path, "status": "done",
                    "seconds": time.perf_counter() - t0}
    if task.options.debug and outcome.get("traceback"):
        sys.stderr.write(outcome["traceback"])
    return write_failure(task, outcome["reason"], outcome["type"], outcome["exit_code"], outcome.get("traceback"), t0)

def run_task(task: Task) -> dict:
    """Evaluate one checkpoint and write its record or error file; returns a small outcome dict."""
    t0 = time.perf_counter()
    return finish_task(task, evaluate_task(task), t0)

def free_device_memory() -> None:
    """After a failure (e.g. CUDA out of memory), hand cached device memory back before the next checkpoint."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()

def write_failure(task: Task, reason: str, error_type: str, exit_code: int, tb: str | None, t0: float) -> dict:
    out = Path(task.out_dir)
    record_path = out / f"{task.name}.json"
    error_path = out / f"{task.name}{ERROR_SUFFIX}"
    sha = safe_sha(task.path)
    payload = {
        "checkpoint": {"path": task.path, "relative_path": task.relative_path, "sha256": sha},
        "error": {"reason": reason, "type": error_type, "exit_code": exit_code, "traceback": tb},
        "batch": batch_info(task, sha),
    }
    atomic_write(error_path, json.dumps(payload, indent=2, default=str))
    if record_path.exists() and not record_is_current(read_json(record_path), task, sha):
        remove(record_path)  # a record for other inputs would be read as this checkpoint's result
    return {"name": task.name, "relative_path": task.relative_path, "status": "failed", "reason": reason,
            "type": error_type, "error_file": str(error_path), "seconds": time.perf_counter() - t0}
