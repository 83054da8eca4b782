"""Step 2: one streaming pass per split through the hooked model, then the replay of that split's features.

The training split goes first; its class means become the reference of the test split's
nearest-class-center decisions and of the bounds' replay statistics (:class:`ReplayInfo`). Bounds that
need per-sample statistics name them in their registration; :func:`run_passes` asks the registry for
those of the selected bounds (:func:`ncbounds.bounds.base.replay_requests`).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from ncbounds.bounds.base import ReplayInfo, replay_requests
from ncbounds.features import PENULTIMATE, SameFeatures
from ncbounds.io.datasets import iterate_batches
from ncbounds.options import EvalOptions
from ncbounds.pipeline.prepare import Prepared, input_mismatch, prep_num_classes
from ncbounds.progress import Progress
from ncbounds.stats.multilabel_split import MultiLabelSplitStatistics
from ncbounds.stats.split import SplitStatistics

SPLITS = ("train", "test")


def forward_batch(extractor, xb: torch.Tensor, prep: Prepared, device: torch.device, amp: bool):
    """(features by layer, logits) of one input batch through the hooked model on ``device``: pinned
    non-blocking copies on CUDA, autocast with ``amp`` (float16 on CUDA, bfloat16 elsewhere), and an
    input that does not fit the model turned into one sentence naming both shapes."""
    pin = device.type == "cuda"
    xb = xb.pin_memory().to(device, non_blocking=True) if pin else xb
    with torch.autocast(device.type, dtype=torch.float16 if pin else torch.bfloat16, enabled=amp):
        try:
            return extractor.run(xb)
        except RuntimeError as exc:
            mismatch = input_mismatch(exc, prep, xb)
            if mismatch is None:
                raise
            raise mismatch from None


def stream_split(split_name, split, prep, extractor, head, device, opts, reference, conv, replay=None, same=None):
    """One pass over one split, then the replay of its features; returns the finished statistics.

    ``same``: a :class:`SameFeatures` tracker fed with every batch's features (layers that are one
    representation are reported once)."""
    K = prep_num_classes(prep, head)
    acc = (MultiLabelSplitStatistics(K, penultimate=PENULTIMATE, rule=opts.ml_decision, device=device) if prep.data.task == "multilabel"
           else SplitStatistics(K, penultimate=PENULTIMATE, device=device, expected_rows=len(split)))
    n_batches = (len(split) + opts.batch_size - 1) // opts.batch_size
    bar = Progress(n_batches, f"{split_name:>5}", enabled=opts.progress and n_batches >= 20)
    pin = device.type == "cuda"
    with torch.inference_mode():
        for xb, yb in iterate_batches(split, opts.batch_size):
            if extractor is None:  # precomputed features
                h = xb.to(device=device, dtype=torch.float64)
                feats = {PENULTIMATE: h}
                logits = None
                if prep.data.W is not None:
                    W = torch.as_tensor(prep.data.W, dtype=torch.float64, device=device)
                    b = torch.as_tensor(prep.data.b if prep.data.b is not None else np.zeros(len(W)), dtype=torch.float64, device=device)
                    logits = h @ W.T + b
            else:
                feats, logits = forward_batch(extractor, xb, prep, device, opts.amp)
            nc4 = None
            if logits is not None and not conv.nc4_use_bias and head is not None:
                nc4 = (feats[PENULTIMATE].to(torch.float64) @ head[0].to(device).T).argmax(1)
            if same is not None and len(feats) > 1:
                same.update(feats)
            acc.update(feats, yb.pin_memory().to(device, non_blocking=True) if pin else yb, logits, nc4)
            bar.advance()
    bar.close()
    acc.finish(reference, replay_accumulators=replay)
    return acc



def run_passes(prep: Prepared, extractor, head, device: torch.device, opts: EvalOptions, conv, selected: list[str],
               timings: dict) -> tuple[dict[str, SplitStatistics], dict[str, str]]:
    """Both splits' passes and replays; returns the statistics and the layer aliases (:class:`SameFeatures`)."""
    splits: dict[str, SplitStatistics] = {}
    same = {name: SameFeatures() for name in SPLITS}
    reference = None
    ctx = extractor if extractor is not None else contextlib.nullcontext()
    with ctx, exact_cuda_math(device):
        for name in SPLITS:
            t0 = time.perf_counter()
            info = ReplayInfo(split=name, head=head,
                              reference_means=None if reference is None else reference[PENULTIMATE][0],
                              reference_present=None if reference is None else reference[PENULTIMATE][1])
            replay = {PENULTIMATE: replay_requests(selected, name, info)} if selected else None
            splits[name] = stream_split(name, getattr(prep.data, name), prep, extractor, head, device, opts, reference, conv,
                                        replay, same[name])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings[f"pass_{name}"] = time.perf_counter() - t0
            if name == "train":
                reference = splits[name].class_means()
    return splits, same["train"].merge(same["test"]).aliases()


@contextlib.contextmanager
def exact_cuda_math(device: torch.device):
    """Disable TF32 in matmul and cuDNN while evaluating on a GPU, so features match the CPU's float32."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
