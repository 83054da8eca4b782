"""evaluate(): checkpoint + architecture + data → one streaming pass per split → EvalRecord.

This is the orchestration layer (it may touch files and devices); everything it computes is delegated
to the pure statistics, metrics and bound modules. The order of work (``docs/architecture.md``, *Data
flow*), one module each:

1. :mod:`.prepare` — read the sidecar (``--trust-code`` rule), load the data spec and the checkpoint
   (CPU first, ``weights_only``), build the model;
2. :mod:`.passes` — move the model to the device in eval mode, hook the penultimate layer (+ ``layers``),
   one pass over the training split and one over the test split (whose nearest-class-center decisions
   use the training means), each followed by the replay that feeds the statistics the selected bounds
   request;
3. :mod:`.assemble` — metrics per layer and split, layerwise summaries, measured errors with
   Clopper–Pearson intervals: the :class:`~ncbounds.report.record.EvalRecord`;
4. :mod:`.bound_context` — the context of the bounds, which :func:`ncbounds.bounds.runner.run_bounds`
   evaluates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ncbounds.bounds.base import BoundResult
from ncbounds.bounds.multilabel import run_task_bounds
from ncbounds.bounds.targets import split_target_bounds
from ncbounds.features import FeatureExtractor, find_head, resolve_layers
from ncbounds.metrics.conventions import get_convention
from ncbounds.options import EvalOptions
from ncbounds.pipeline.assemble import assemble
from ncbounds.pipeline.bound_context import bound_context
from ncbounds.pipeline.passes import SPLITS, run_passes
from ncbounds.pipeline.prepare import check_labels, prep_num_classes, prepare, resolve_device
from ncbounds.report.record import BoundRecord, EvalRecord
from ncbounds.stats.split import SplitStatistics
from ncbounds.threads import default_threads, use_threads

__all__ = ["SPLITS", "EvalOptions", "EvaluationRun", "evaluate", "resolve_device", "run_evaluation"]


@dataclass
class EvaluationRun:
    """A finished evaluation with what it was computed from: the record, the per-split statistics
    (:class:`~ncbounds.stats.split.SplitStatistics`), the classifier (W, b) float64, the model and the data."""

    record: EvalRecord
    splits: dict[str, SplitStatistics]
    head: tuple[torch.Tensor, torch.Tensor] | None
    model: torch.nn.Module | None
    data: Any


def _options(options: EvalOptions | None, kwargs: dict) -> EvalOptions:
    if options is None:
        return EvalOptions(**kwargs)
    return replace(options, **kwargs) if kwargs else options


def run_evaluation(checkpoint: str | None = None, options: EvalOptions | None = None, **kwargs) -> EvaluationRun:
    """Evaluate one checkpoint and keep the statistics (see :func:`evaluate` for the arguments).

    Torch runs with ``options.threads`` intra-op threads (default: the cores this process may use,
    :func:`ncbounds.threads.default_threads`), restored afterwards; the record says how many."""
    opts = _options(options, kwargs)
    selected = opts.validate()  # every option checked before any work
    threads = opts.threads or default_threads(1)
    with use_threads(threads):
        run = _run(checkpoint, opts, selected)
    run.record.provenance["threads"] = threads
    return run


def _run(checkpoint: str | None, opts: EvalOptions, selected: list[str]) -> EvaluationRun:
    selected, target_bounds = split_target_bounds(selected)  # transfer bounds read the target statistics
    conv = get_convention(opts.convention)
    torch.manual_seed(opts.seed)
    t_start = time.perf_counter()
    prep = prepare(checkpoint, opts)
    device = resolve_device(opts.device)
    timings = {"load": time.perf_counter() - t_start}

    extractor = None
    head = None  # (W, b) float64 on CPU
    if prep.model is not None:
        model = prep.model.to(device)
        model.eval()
        head_name, head_module = find_head(model)
        layer_names = resolve_layers(model, opts.layers, head_name)
        extractor = FeatureExtractor(model, layer_names, opts.conv_reduce)
        bias = head_module.bias if head_module.bias is not None else torch.zeros(head_module.out_features)
        head = (head_module.weight.detach().to("cpu", torch.float64), bias.detach().to("cpu", torch.float64))
        prep.model_info.update(num_classes=head_module.out_features, penultimate=f"input of {head_name}", conv_reduce=opts.conv_reduce)
    elif prep.data.W is not None:
        b = prep.data.b if prep.data.b is not None else np.zeros(len(prep.data.W))
        head = (torch.as_tensor(prep.data.W, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    num_classes = prep_num_classes(prep, head)
    check_labels(prep.data, num_classes)

    splits, aliases = run_passes(prep, extractor, head, device, opts, conv, selected, timings)

    t0 = time.perf_counter()
    record = assemble(prep, splits, head, conv, opts, device, num_classes, aliases)
    timings["metrics"] = time.perf_counter() - t0
    if selected:
        t0 = time.perf_counter()
        ctx = bound_context(prep, splits, head, record, opts, device, num_classes, selected)
        results: list[BoundResult] = run_task_bounds(ctx, selected, prep.data.task, debug=opts.debug)
        record.bounds = [BoundRecord.of(r) for r in results]
        if any(b["status"] == "certificate" for b in record.bounds):
            record.notes.append(f"each certificate holds with probability ≥ 1 − δ = {1 - opts.delta:g} on its own; "
                                f"k of them hold together with probability ≥ 1 − k·δ.")
        timings["bounds"] = time.perf_counter() - t0
    if opts.target_data is not None:  # one pass per target split, the rest on cached features (pipeline/transfer.py)
        from ncbounds.pipeline.transfer import run_transfer

        record.transfer = run_transfer(prep, extractor, head, device, opts, conv, target_bounds, list(record.layers), timings)
    timings["total"] = time.perf_counter() - t_start
    record.timings = timings
    return EvaluationRun(record, splits, head, prep.model, prep.data)


def evaluate(checkpoint: str | None = None, options: EvalOptions | None = None, **kwargs) -> EvalRecord:
    """Evaluate one checkpoint (or a precomputed-features file) and return its :class:`EvalRecord`.

    ``options`` (an :class:`EvalOptions`) and/or keyword arguments naming its fields, e.g.
    ``evaluate("run/epoch10.pt", arch="mlp:width=128", data="digits", layers="all")``; keywords override
    ``options``. :func:`run_evaluation` also returns the statistics the record was computed from.
    """
    return run_evaluation(checkpoint, options, **kwargs).record
