"""Transfer to a target: one pass of each target split through the frozen model, everything else on cached features.

:func:`run_transfer` is called by :func:`ncbounds.pipeline.run_evaluation` after the source passes when
``target_data`` is given. Order of work:

1. load the target data spec (``classes=`` selections re-index the kept classes 0..K'−1 and record the
   original ids);
2. **one** forward pass per target split through the same hooked, frozen model (eval mode, no
   gradients): per layer the float64 class statistics of the target classes (:class:`SplitStatistics`
   with K' classes; the source head's logits are not used as target predictions), then the usual replay
   of that split's features, which also hands every layer's features to a :class:`FeatureCache` and
   feeds the statistics the transfer bounds request. The test split's nearest-class-center decisions
   use the target-train means;
3. per reported layer, on the cached features (no further forward pass): the collapse metrics of the
   target classes, target NCC error, linear probe, few-shot episodes and transferability scores
   (:func:`ncbounds.transfer.layer.layer_transfer`; LEEP and NCE from the source head's softmax on the
   target-train inputs, computed from the cached penultimate features), the covariance rank;
4. the layer sweep and tunnel-effect summaries (:mod:`ncbounds.transfer.sweep`) and the transfer bounds
   of the registry (group ``transfer``) on a context built from the target statistics.

The result is the record's ``transfer`` object (layout in :mod:`ncbounds.report.record`).
"""

from __future__ import annotations

import contextlib
import time
import types

import numpy as np
import torch

from ncbounds.bounds.base import ReplayInfo, replay_requests
from ncbounds.bounds.context import BoundContext, BoundOptions, SplitSummary
from ncbounds.bounds.runner import options_for, resolve_bound_options, run_bounds
from ncbounds.errors import DataError, UsageError
from ncbounds.features import PENULTIMATE
from ncbounds.io.datasets import DataSource, iterate_batches
from ncbounds.metrics.functional import split_metrics
from ncbounds.options import EvalOptions
from ncbounds.pipeline.passes import exact_cuda_math, forward_batch
from ncbounds.pipeline.prepare import _load_data
from ncbounds.progress import Progress
from ncbounds.report.record import BoundRecord, TransferRecord
from ncbounds.stats.split import SplitStatistics
from ncbounds.transfer.fewshot import PROBE_C, PROBE_MAX_ITER
from ncbounds.transfer.layer import (
    FEWSHOT_EPISODES,
    FEWSHOT_QUERIES,
    FEWSHOT_SHOTS,
    FEWSHOT_WAYS,
    MAX_SCORE_DIM,
    layer_transfer,
    source_softmax,
)
from ncbounds.transfer.sweep import covariance_rank, layer_sweep, tunnel_summary

__all__ = ["FeatureCache", "load_target", "run_transfer", "target_passes"]

SPLITS = ("train", "test")
_CACHE = "transfer_features"


class FeatureCache:
    """Replay accumulator that keeps one layer's features (in the dtype the network produced, on the
    CPU) and labels in pass order: the target features every transfer quantity is computed from."""

    def __init__(self) -> None:
        self._features: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self._features.append(features.detach().cpu())
        self._labels.append(labels.detach().cpu())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, d), labels (N,) int64) as NumPy arrays."""
        x = torch.cat(self._features).numpy() if self._features else np.zeros((0, 0))
        y = torch.cat(self._labels).numpy().astype(np.int64) if self._labels else np.zeros(0, np.int64)
        return x, y


def load_target(spec: str) -> DataSource:
    """The target data (generated specs are cached in-process like the source's); checked for transfer."""
    target = _load_data(spec, None)
    for name, split in (("train", target.train), ("test", target.test)):
        if len(split) == 0:
            raise DataError(f"the {name} split of the target {spec!r} is empty; provide samples for it.")
        if len(np.unique(split.y)) < 2:
            raise DataError(f"the {name} split of the target {spec!r} has fewer than 2 classes; transfer needs at least 2.")
    missing = sorted(set(np.unique(target.test.y).tolist()) - set(np.unique(target.train.y).tolist()))
    if missing:
        raise DataError(f"target classes {missing[:5]} of {spec!r} have test samples but no training samples; "
                        "every target class needs both (the NCC, probe and scores are fitted on target train).")
    return target


def _stream(split_name, split, target, model_prep, extractor, layer_names, device, opts) -> SplitStatistics:
    """The one forward pass over one target split (statistics of the K' target classes, no logits)."""
    acc = SplitStatistics(target.num_classes, penultimate=PENULTIMATE, device=device)
    n_batches = (len(split) + opts.batch_size - 1) // opts.batch_size
    bar = Progress(n_batches, f"target {split_name:>5}", enabled=opts.progress and n_batches >= 20)
    with torch.inference_mode():
        for xb, yb in iterate_batches(split, opts.batch_size):
            if extractor is None or target.kind == "features":
                feats = {PENULTIMATE: xb.to(device=device, dtype=torch.float64)}
            else:
                feats, _ = forward_batch(extractor, xb, model_prep, device, opts.amp)
                feats = {name: h for name, h in feats.items() if name in layer_names}
            acc.update(feats, yb.to(device))
            bar.advance()
    bar.close()
    return acc


def target_passes(target: DataSource, extractor, model, layer_names: list[str], device: torch.device, opts: EvalOptions,
                  bound_names: list[str], timings: dict) -> tuple[dict[str, SplitStatistics], dict[str, dict]]:
    """One pass per target split (train first: its means are the test split's NCC reference) and its replay.

    Returns (statistics per split, {split: {layer: (features, labels)}}).
    """
    model_prep = types.SimpleNamespace(model=model, data=target)
    splits: dict[str, SplitStatistics] = {}
    cached: dict[str, dict] = {}
    reference = None
    ctx = extractor if (extractor is not None and target.kind != "features") else contextlib.nullcontext()
    with ctx, exact_cuda_math(device):
        for name in SPLITS:
            t0 = time.perf_counter()
            acc = _stream(name, getattr(target, name), target, model_prep, extractor, layer_names, device, opts)
            info = ReplayInfo(split=name, reference_means=None if reference is None else reference[PENULTIMATE][0],
                              reference_present=None if reference is None else reference[PENULTIMATE][1])
            replay = {layer: {_CACHE: lambda _stats: FeatureCache()} for layer in acc.layers}
            if bound_names and PENULTIMATE in replay:
                replay[PENULTIMATE].update(replay_requests(bound_names, name, info))
            acc.finish(reference, replay_accumulators=replay)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            splits[name] = acc
            cached[name] = {layer: extras[_CACHE].arrays() for layer, extras in acc.extras.items()}
            timings[f"pass_target_{name}"] = time.perf_counter() - t0
            if name == "train":
                reference = acc.class_means()
    return splits, cached


def _target_info(target: DataSource, spec: str) -> dict:
    selected = (target.info.get("classes") or {}).get("original_ids")
    return {"data": spec, "kind": target.kind, "num_classes": int(target.num_classes),
            "classes": list(selected) if selected is not None else list(range(int(target.num_classes))),
            "classes_selected": selected is not None, "n_train": len(target.train), "n_test": len(target.test)}


def _softmax(head, features: np.ndarray, notes: list[str]) -> np.ndarray | None:
    if head is None:
        notes.append("no source classifier, so LEEP and NCE are not computed.")
        return None
    W, b = (t.detach().cpu().numpy() for t in head)
    if W.shape[1] != features.shape[1]:
        notes.append(f"the source classifier takes {W.shape[1]} features but the target penultimate features have "
                     f"{features.shape[1]}, so LEEP and NCE are not computed.")
        return None
    return source_softmax(features, W, b)


def _rank(x: np.ndarray) -> int | None:
    return None if min(x.shape) > MAX_SCORE_DIM else covariance_rank(x)


def _bound_context(splits, layers, target_info, counts, opts, shots, names) -> BoundContext:
    def summary(name: str) -> SplitSummary:
        sp = splits[name]
        return SplitSummary(n=sp.layers[PENULTIMATE].total, errors=None, margins=None, stats=sp.layers[PENULTIMATE],
                            projected=sp.projected.get(PENULTIMATE), metrics=layers[PENULTIMATE]["metrics"][name],
                            extras=sp.extras.get(PENULTIMATE, {}))

    return BoundContext(
        num_classes=int(sum(1 for c in counts["test"] if c > 0)),
        train=summary("train"), test=summary("test"),
        options=BoundOptions(delta=opts.delta, shots=tuple(shots), mc_samples=opts.mc_samples, seed=opts.seed,
                             bound=resolve_bound_options(options_for(opts.bound_settings(), names), names)),
        target={"data": target_info["data"], "fewshot": layers[PENULTIMATE]["fewshot"], "counts": counts},
    )


def run_transfer(prep, extractor, head, device: torch.device, opts: EvalOptions, conv, bound_names: list[str],
                 layer_names: list[str], timings: dict) -> TransferRecord:
    """The ``transfer`` object of the record (module docstring). ``layer_names``: the reported source
    layers in forward order (each representation once); ``bound_names``: the selected transfer bounds."""
    t_start = time.perf_counter()
    notes: list[str] = []
    target = load_target(opts.target_data)
    if prep.model is None and target.kind != "features":
        raise UsageError(f"the source is precomputed features, so the target must be too (features:FILE); "
                         f"{opts.target_data!r} holds raw inputs, which need a checkpoint.")
    if target.kind == "features":
        layer_names = [PENULTIMATE]
        if prep.model is not None:
            notes.append("the target holds precomputed features; they are taken as the penultimate features of this model.")
    elif tuple(target.input_shape) != tuple(prep.data.input_shape):
        notes.append(f"target inputs have shape {tuple(target.input_shape)}, source inputs {tuple(prep.data.input_shape)}.")
    splits, cached = target_passes(target, extractor, prep.model, layer_names, device, opts, bound_names, timings)
    shots = tuple(opts.shots) if opts.shots else FEWSHOT_SHOTS
    probs = _softmax(head, cached["train"][PENULTIMATE][0], notes)
    t0 = time.perf_counter()
    layers: dict[str, dict] = {}
    for index, name in enumerate(n for n in layer_names if n in cached["train"]):
        xtr, ytr = cached["train"][name]
        xte, yte = cached["test"][name]
        res = layer_transfer(xtr, ytr, xte, yte, probs if name == PENULTIMATE else None, shots=shots, seed=opts.seed,
                             delta=opts.delta)
        layers[name] = {"dim": res.pop("dim"), "index": index + 1,
                        "metrics": {s: split_metrics(splits[s], name, None, conv) for s in SPLITS},
                        **res, "covariance_rank": _rank(xtr)}
    timings["transfer_layers"] = time.perf_counter() - t0
    counts = {s: splits[s].layers[PENULTIMATE].counts.cpu().numpy().astype(int).tolist() for s in SPLITS}
    target_info = _target_info(target, opts.target_data)
    bounds = []
    if bound_names:
        t0 = time.perf_counter()
        ctx = _bound_context(splits, layers, target_info, counts, opts, shots, bound_names)
        bounds = [BoundRecord.of(r).to_dict() for r in run_bounds(ctx, bound_names, debug=opts.debug)]
        timings["transfer_bounds"] = time.perf_counter() - t0
    timings["transfer"] = time.perf_counter() - t_start
    return TransferRecord.from_dict({
        "target": {**target_info, "class_counts": counts},
        "settings": {"fewshot": {"split": "test", "ways": list(FEWSHOT_WAYS), "shots": list(shots), "queries": FEWSHOT_QUERIES,
                                 "episodes": FEWSHOT_EPISODES, "seed": opts.seed, "certificate_delta": opts.delta},
                     "probe": {"split": "train -> test", "standardized": True, "C": PROBE_C, "max_iter": PROBE_MAX_ITER,
                               "model": "scikit-learn LogisticRegression (multinomial, L-BFGS, L2)"},
                     "ncc": "target-train class means, evaluated on target test", "scores_split": "train",
                     "leep_nce": "source head softmax on target-train inputs"},
        "layers": layers,
        "layer_sweep": layer_sweep(layers),
        "tunnel": tunnel_summary({n: r["covariance_rank"] for n, r in layers.items()},
                                 {n: r["probe_error"]["error"] for n, r in layers.items()}, PENULTIMATE),
        "bounds": bounds,
        "notes": notes,
    })
