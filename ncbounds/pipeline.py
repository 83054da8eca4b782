"""evaluate(): checkpoint + architecture + data → one streaming pass per split → EvalRecord.

This is the orchestration layer (it may touch files and devices); everything it computes is
delegated to the pure statistics, metrics and bound modules. Order of work (DESIGN §2):

1. read the sidecar, load the data spec and the checkpoint (CPU first, weights_only), build the model;
2. move the model to the device, switch it to eval mode, hook the penultimate layer (+ ``layers``);
3. one pass over the training split (float64 class statistics, margins, decisions), then one pass
   over the test split, whose nearest-class-center decisions use the training means;
4. metrics per layer and split, layerwise summaries, measured errors with Clopper–Pearson intervals.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import functools
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import ncbounds
from ncbounds.bounds.base import replay_requests
from ncbounds.bounds.binomial import clopper_pearson
from ncbounds.bounds.context import BoundContext, BoundOptions, SplitSummary
from ncbounds.bounds.runner import run_bounds, select_bounds
from ncbounds.errors import DataError, NCBoundsError, UsageError
from ncbounds.features import PENULTIMATE, FeatureExtractor, find_head, resolve_layers
from ncbounds.io.checkpoints import load_checkpoint, load_into_model
from ncbounds.io.datasets import DataSource, iterate_batches, load_data
from ncbounds.io.sidecar import read_sidecar
from ncbounds.metrics.collapse import collapse_notes
from ncbounds.metrics.conventions import get_convention
from ncbounds.metrics.functional import split_metrics
from ncbounds.metrics.layerwise import effective_depth, he_su_fit
from ncbounds.models import build_model
from ncbounds.progress import Progress
from ncbounds.report.record import EvalRecord
from ncbounds.stats.split import SplitStatistics

SPLITS = ("train", "test")


@dataclass
class EvalOptions:
    """Options of one evaluation (recorded in the report, used for --resume identity)."""

    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    data: str | None = None
    layers: str | None = None
    device: str = "auto"
    batch_size: int = 256
    conv_reduce: str = "avg"
    convention: str = "canonical"
    trust_checkpoint: bool = False
    effective_depth_epsilon: float = 0.01
    seed: int = 0
    bounds: str = "default"
    delta: float = 0.05
    init: str | None = None
    mc_samples: int = 100
    shots: tuple[int, ...] | None = None
    amp: bool = False
    progress: bool = False
    debug: bool = False


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA if available else CPU; 'cuda' without CUDA is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA device is available; use --device cpu or auto.")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], not {name!r}.")
    return torch.device(name)


_GENERATED = ("digits", "mnist1d", "gaussian-etf")


@functools.lru_cache(maxsize=2)
def _load_generated(spec: str) -> DataSource:
    return load_data(spec)


def _load_data(spec: str, base_dir: str | None) -> DataSource:
    """Load a data spec; the deterministic built-in generators are cached in-process, so a batch
    over many checkpoints does not regenerate (e.g.) MNIST-1D for each one. File-based specs are
    always read afresh. Cached arrays are shared: the pipeline never writes to them."""
    if spec.split(":", 1)[0] in _GENERATED or spec.startswith("gaussian-etf"):
        return _load_generated(spec)
    return load_data(spec, base_dir=base_dir)


@dataclass
class _Prepared:
    model: torch.nn.Module | None
    data: DataSource
    checkpoint_info: dict | None
    model_info: dict | None
    hyperparameters: dict
    notes: list
    init_checkpoint: str | None


def _prepare(checkpoint: str | None, opts: EvalOptions) -> _Prepared:
    notes: list[str] = []
    side = read_sidecar(checkpoint) if checkpoint else None
    data_spec = opts.data or (side.data if side else None)
    if not data_spec:
        raise UsageError("no data given: pass --data SPEC (e.g. digits, mnist1d, npz:FILE) or add 'data' to the sidecar.")
    data_base = side.base_dir if (side and not opts.data) else None
    data = _load_data(data_spec, data_base)
    if data.kind == "features":
        if checkpoint:
            raise UsageError("--data features:FILE already holds the features; run `ncbounds report --data features:FILE` without a checkpoint.")
        return _Prepared(None, data, None, None, {}, notes, None)
    if not checkpoint:
        raise UsageError(f"data spec {data_spec!r} holds raw inputs, so a checkpoint is needed: ncbounds report CKPT --arch ... --data {data_spec}.")
    ckpt = load_checkpoint(checkpoint, trust=opts.trust_checkpoint)
    arch = opts.arch or side.arch
    kwargs = {**(side.arch_kwargs or {}), **(opts.arch_kwargs or {})}
    prefixes: list[str] = []
    if ckpt.format == "torchscript" and not arch:
        raise UsageError(
            f"{checkpoint} is a TorchScript archive, whose submodules cannot be hooked; pass --arch (e.g. mlp:width=128) "
            f"so its weights are loaded into a Python model."
        )
    if ckpt.module is not None and not arch:
        model = ckpt.module
        arch = f"<{ckpt.format}: {type(model).__name__}>"
        if model.training:
            notes.append("the checkpoint's module was saved in train mode; it was switched to eval mode (BatchNorm running statistics, no dropout).")
    else:
        if not arch:
            raise UsageError(f"no architecture for {checkpoint}: pass --arch (e.g. mlp:width=128) or add 'arch' to {Path(checkpoint).with_suffix('.json').name}.")
        model = build_model(arch, kwargs, base_dir=side.base_dir if (side and not opts.arch) else None)
        prefixes = load_into_model(model, ckpt)
    checkpoint_info = {
        "path": str(Path(checkpoint).resolve()),
        "sha256": ckpt.sha256,
        "format": ckpt.format,
        "wrapper_key": ckpt.wrapper_key,
        "saved_devices": ckpt.saved_devices,
        "prefixes_stripped": prefixes,
        "extra": ckpt.extra,
    }
    model_info = {"arch": arch, "arch_kwargs": kwargs, "num_params": int(sum(p.numel() for p in model.parameters()))}
    init = side.init_checkpoint if side else None
    return _Prepared(model, data, checkpoint_info, model_info, dict(side.hyperparameters if side else {}), notes, init)


def _check_labels(data: DataSource, num_classes: int) -> None:
    for name, split in data.splits().items():
        if len(split) == 0:
            raise DataError(f"the {name} split of {data.spec!r} is empty; provide samples for it.")
        top = int(split.y.max())
        if top >= num_classes:
            raise DataError(
                f"{name} labels go up to {top} but the model has {num_classes} outputs; labels must lie in "
                f"0..{num_classes - 1} (check --data or the head size in --arch-kwargs)."
            )


def _stream(split_name, split, prep, extractor, head, device, opts, reference, conv, replay=None):
    """One pass over one split, then the replay of its features; returns the finished statistics."""
    acc = SplitStatistics(prep_num_classes(prep, head), penultimate=PENULTIMATE, device=device)
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
                xb = xb.pin_memory().to(device, non_blocking=True) if pin else xb
                with torch.autocast(device.type, dtype=torch.float16 if pin else torch.bfloat16, enabled=opts.amp):
                    feats, logits = extractor.run(xb)
            nc4 = None
            if logits is not None and not conv.nc4_use_bias and head is not None:
                nc4 = (feats[PENULTIMATE].to(torch.float64) @ head[0].to(device).T).argmax(1)
            acc.update(feats, yb.pin_memory().to(device, non_blocking=True) if pin else yb, logits, nc4)
            bar.advance()
    bar.close()
    acc.finish(reference, replay_accumulators=replay)
    return acc


def prep_num_classes(prep: _Prepared, head) -> int:
    if head is not None:
        return int(head[0].shape[0])
    return int(prep.data.num_classes)


def evaluate(checkpoint: str | None = None, options: EvalOptions | None = None, **kwargs) -> EvalRecord:
    """Evaluate one checkpoint (or a precomputed-features file) and return its :class:`EvalRecord`.

    ``options`` or keyword arguments set :class:`EvalOptions` fields, e.g.
    ``evaluate("run/epoch10.pt", arch="mlp:width=128", data="digits", layers="all")``.
    """
    opts = options or EvalOptions(**kwargs)
    if options is not None and kwargs:
        opts = EvalOptions(**{**asdict(options), **kwargs})
    if opts.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {opts.batch_size}.")
    conv = get_convention(opts.convention)
    selected = select_bounds(opts.bounds)  # validate names before any work
    if not 0 < opts.delta < 1:
        raise UsageError(f"--delta must lie strictly between 0 and 1, got {opts.delta}.")
    torch.manual_seed(opts.seed)
    t_start = time.perf_counter()
    prep = _prepare(checkpoint, opts)
    device = resolve_device(opts.device)
    timings = {"load": time.perf_counter() - t_start}

    extractor = None
    head = None  # (W, b) float64 on CPU
    layer_names: list[str] = []
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
        head = (torch.as_tensor(prep.data.W, dtype=torch.float64), torch.as_tensor(prep.data.b if prep.data.b is not None else np.zeros(len(prep.data.W)), dtype=torch.float64))
    num_classes = prep_num_classes(prep, head)
    _check_labels(prep.data, num_classes)

    splits: dict[str, SplitStatistics] = {}
    reference = None
    ctx = extractor if extractor is not None else _NullContext()
    with ctx, _exact_cuda_math(device):
        for name in SPLITS:
            t0 = time.perf_counter()
            info = {"split": name, "head": head,
                    "reference_means": None if reference is None else reference[PENULTIMATE][0],
                    "reference_present": None if reference is None else reference[PENULTIMATE][1]}
            replay = {PENULTIMATE: replay_requests(selected, name, info)} if selected else None
            splits[name] = _stream(name, getattr(prep.data, name), prep, extractor, head, device, opts, reference, conv, replay)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings[f"pass_{name}"] = time.perf_counter() - t0
            if name == "train":
                reference = splits[name].class_means()

    t0 = time.perf_counter()
    record = _assemble(prep, splits, head, conv, opts, device, num_classes)
    timings["metrics"] = time.perf_counter() - t0
    if selected:
        t0 = time.perf_counter()
        ctx = _bound_context(prep, splits, head, record, opts, device, num_classes)
        record.bounds = [r.to_dict() for r in run_bounds(ctx, selected, debug=opts.debug)]
        record.notes += [f"each certificate holds with probability ≥ 1 − δ = {1 - opts.delta:g} on its own; "
                         f"k of them hold together with probability ≥ 1 − k·δ."] if any(b["status"] == "certificate" for b in record.bounds) else []
        timings["bounds"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    record.timings = timings
    record.context = {"splits": splits, "head": head, "model": prep.model, "data": prep.data, "init_checkpoint": prep.init_checkpoint}
    return record


def _load_init_state(path: str, model: torch.nn.Module, opts: EvalOptions) -> dict[str, torch.Tensor]:
    """The initialization weights as a state_dict keyed like ``model`` (prefixes stripped, CPU)."""
    ckpt = load_checkpoint(path, trust=opts.trust_checkpoint)
    if ckpt.module is not None:
        return {k: v.detach().cpu() for k, v in ckpt.module.state_dict().items()}
    clone = copy.deepcopy(model).cpu()
    load_into_model(clone, ckpt)
    return {k: v.detach().cpu() for k, v in clone.state_dict().items()}


def _input_norms(split) -> dict[str, float]:
    """Σ_i ‖x_i‖² and max_i ‖x_i‖ of the flattened inputs (for the norm-based bounds), in float64 chunks."""
    total, largest = 0.0, 0.0
    flat = split.x.reshape(len(split.x), -1)
    for start in range(0, len(flat), 8192):
        sq = np.square(flat[start : start + 8192], dtype=np.float64).sum(1)
        total += float(sq.sum())
        largest = max(largest, float(np.sqrt(sq.max())))
    return {"sum_sq": total, "max": largest, "m": len(flat)}


def _bound_context(prep, splits, head, record, opts, device, num_classes) -> BoundContext:
    def summary(name: str) -> SplitSummary:
        sp = splits[name]
        return SplitSummary(
            n=sp.layers[PENULTIMATE].total,
            errors=sp.logits.errors if sp.logits is not None else None,
            margins=sp.logits.margins if sp.logits is not None else None,
            stats=sp.layers[PENULTIMATE],
            projected=sp.projected.get(PENULTIMATE),
            metrics=record.layers[PENULTIMATE]["metrics"][name],
            extras=sp.extras.get(PENULTIMATE, {}),
        )

    init_state = None
    init_path = opts.init or prep.init_checkpoint
    if prep.model is not None and init_path:
        try:
            init_state = _load_init_state(init_path, prep.model, opts)
        except NCBoundsError as exc:
            record.notes.append(f"the initialization checkpoint could not be used ({exc}); init-based bounds are not applicable.")
    gibbs = pacbayes_opt = None
    if prep.model is not None:
        from ncbounds.pacbayes_opt import PacBayesOptEngine
        from ncbounds.perturb import make_gibbs_oracle

        gibbs = make_gibbs_oracle(prep.model, prep.data, device, opts.batch_size)
        unlabeled = {name: split.x for name, split in prep.data.splits().items() if name != "train"}  # inputs only, never labels
        pacbayes_opt = PacBayesOptEngine(prep.model, prep.data.train, unlabeled=unlabeled, init_state=init_state, device=device)
    record.options["init"] = init_path
    return BoundContext(
        num_classes=num_classes,
        train=summary("train"),
        test=summary("test"),
        options=BoundOptions(delta=opts.delta, shots=tuple(opts.shots) if opts.shots else None, mc_samples=opts.mc_samples, seed=opts.seed),
        head=head,
        model=prep.model,
        init_state=init_state,
        input_shape=tuple(prep.data.input_shape),
        input_norms=_input_norms(prep.data.train) if prep.model is not None else {},
        layerwise=record.layerwise,
        gibbs=gibbs,
        pacbayes_opt=pacbayes_opt,
        layer_fuzziness=[layer["metrics"]["train"]["separation_fuzziness"] for layer in record.layers.values()],
    )


@contextlib.contextmanager
def _exact_cuda_math(device: torch.device):
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


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _errors(split: SplitStatistics) -> dict | None:
    if split.logits is None:
        return None
    k, n = split.logits.errors, split.logits.n
    lo, hi = clopper_pearson(k, n, alpha=0.05)
    return {"error": k / n, "errors": k, "n": n, "ci95": [float(lo), float(hi)]}


def _assemble(prep, splits, head, conv, opts, device, num_classes) -> EvalRecord:
    notes = list(prep.notes)
    if opts.amp:
        notes.append("the forward pass ran under automatic mixed precision (--amp): features are half precision, statistics are still float64.")
    train = splits["train"]
    order = list(train.layers)  # forward order, penultimate last
    W = head[0] if head is not None else None
    layers = {}
    for index, name in enumerate(order, start=1):
        stats = train.layers[name]
        metrics = {}
        for split_name, split in splits.items():
            metrics[split_name] = split_metrics(split, name, W, conv)
            if name == PENULTIMATE or index == 1:
                notes += [n for n in collapse_notes(split.layers[name], split_name, name) if n not in notes]
        layers[name] = {"dim": stats.dim, "index": index, "scatter_mode": stats.scatter_mode, "metrics": metrics}
    layerwise: dict = {"epsilon": opts.effective_depth_epsilon}
    for split_name in splits:
        if len(order) >= 2:
            layerwise[split_name] = he_su_fit([layers[n]["metrics"][split_name]["separation_fuzziness"] for n in order])
        else:
            layerwise[split_name] = {"layerwise_rho": None, "layerwise_r": None}
    depth = effective_depth([layers[n]["metrics"]["train"]["ncc_error"] for n in order], opts.effective_depth_epsilon)
    layerwise["effective_depth"] = depth
    layerwise["effective_depth_layer"] = order[depth - 1] if depth else None
    errors = {name: _errors(split) for name, split in splits.items()}
    if errors["test"] is None:
        notes.append("no classifier was given with the features, so errors, margins and NC4 are not reported (add W and b to the file).")
    data_info = {
        "spec": prep.data.spec,
        "kind": prep.data.kind,
        "num_classes": num_classes,
        "splits": {name: {"n": int(split.layers[PENULTIMATE].total)} for name, split in splits.items()},
        "info": prep.data.info,
    }
    model_info = prep.model_info
    if model_info is None and head is not None:
        model_info = {"arch": "linear head from features file", "num_classes": num_classes, "penultimate": "features file", "num_params": int(head[0].numel() + head[1].numel())}
    options = asdict(opts)
    options.pop("progress", None)
    options.pop("debug", None)
    provenance = {
        "ncbounds": ncbounds.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "seed": opts.seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hyperparameters": prep.hyperparameters,
    }
    return EvalRecord(
        checkpoint=prep.checkpoint_info,
        model=model_info,
        data=data_info,
        errors=errors,
        layers=layers,
        layerwise=layerwise,
        bounds=[],
        convention={"name": conv.name, "differences": conv.differences(), "description": conv.description},
        provenance=provenance,
        options=options,
        notes=notes,
    )
