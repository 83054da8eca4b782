"""Step 1 of an evaluation: the sidecar, the data, the checkpoint and the model, checked before any pass.

Every failure here is one sentence naming the fix (a missing checkpoint is named before the data, a
sidecar that would run code needs ``--trust-code``, labels outside the head's range are refused).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ncbounds.errors import CheckpointError, DataError, UsageError
from ncbounds.io.checkpoints import load_checkpoint, load_into_model
from ncbounds.io.datasets import DataSource, load_data
from ncbounds.io.sidecar import read_sidecar
from ncbounds.models import BUILTIN_ARCHITECTURES, build_model, describe_spec
from ncbounds.options import EvalOptions
from ncbounds.trust import check_sidecar_trust


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA if available else CPU; 'cuda' without CUDA is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device (--device) cuda was requested but no CUDA device is available; use cpu or auto.")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"device (--device) must be auto, cpu or cuda[:N], not {name!r}.")
    return torch.device(name)


_GENERATED = ("digits", "mnist1d", "gaussian-etf", "mnist1d-pairs")


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
class Prepared:
    model: torch.nn.Module | None
    data: DataSource
    checkpoint_info: dict | None
    model_info: dict | None
    hyperparameters: dict
    notes: list
    init_checkpoint: str | None
    metadata: dict = field(default_factory=dict)
    hparams_source: str = "none"


def prepare(checkpoint: str | None, opts: EvalOptions) -> Prepared:
    notes: list[str] = []
    if checkpoint and not Path(checkpoint).exists():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist; check the path.")
    side = read_sidecar(checkpoint) if checkpoint else None
    check_sidecar_trust(side, opts.trust_code, arch=not opts.arch, data=not opts.data, init=not opts.init)
    data_spec = opts.data or (side.data if side else None)
    if not data_spec:
        raise UsageError("no data given: pass --data SPEC (e.g. digits, mnist1d, npz:FILE) or add 'data' to the sidecar.")
    data_base = side.base_dir if (side and not opts.data) else None
    data = _load_data(data_spec, data_base)
    if data.kind == "features":
        if checkpoint:
            raise UsageError("--data features:FILE already holds the features; run `ncbounds report --data features:FILE` "
                             "without a checkpoint.")
        return Prepared(None, data, None, None, {}, notes, None)
    if not checkpoint:
        raise UsageError(f"data spec {data_spec!r} holds raw inputs, so a checkpoint is needed: "
                         f"ncbounds report CKPT --arch ... --data {data_spec}.")
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
            notes.append("the checkpoint's module was saved in train mode; it was switched to eval mode (BatchNorm running "
                         "statistics, no dropout).")
    else:
        if not arch:
            raise UsageError(f"no architecture for {checkpoint}: pass --arch (e.g. mlp:width=128) or add 'arch' to "
                             f"{Path(checkpoint).with_suffix('.json').name}.")
        from_sidecar = bool(side and not opts.arch)
        model = build_model(arch, kwargs, base_dir=side.base_dir if from_sidecar else None, strict_factory=from_sidecar)
        notes += _builtin_name_note(arch, side.source_of("arch") if from_sidecar else None)
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
    model_info["hyperparameters"] = {**describe_spec(arch).kwargs, **kwargs}  # inline spec arguments + arch_kwargs
    return Prepared(model, data, checkpoint_info, model_info, dict(side.hyperparameters if side else {}), notes, init,
                     metadata=dict(side.metadata) if side else {}, hparams_source=side.hparams_source if side else "none")


def _builtin_name_note(arch: str, sidecar: str | None) -> list[str]:
    """A note when a built-in architecture was matched only case-insensitively (``MLP`` → ``mlp``)."""
    info = describe_spec(arch)
    written = arch.strip().partition(":")[0].strip()
    if info.kind != "builtin" or written == info.name:
        return []
    where = f" in {sidecar}" if sidecar else ""
    built = BUILTIN_ARCHITECTURES[info.name].__name__
    return [f"the architecture name {written!r}{where} was read as the built-in {info.name!r} ({built}); "
            f"built-in names are case-insensitive and '_' equals '-'."]


def check_labels(data: DataSource, num_classes: int) -> None:
    for name, split in data.splits().items():
        if len(split) == 0:
            raise DataError(f"the {name} split of {data.spec!r} is empty; provide samples for it.")
        if split.y.ndim == 2:  # multi-hot rows: one column per output
            if split.y.shape[1] != num_classes:
                raise DataError(f"the {name} labels of {data.spec!r} are multi-hot rows of {split.y.shape[1]} labels but the model has "
                                f"{num_classes} outputs; store one column per output (or fix the head size in --arch-kwargs).")
            continue
        top = int(split.y.max())
        if top >= num_classes:
            raise DataError(
                f"{name} labels go up to {top} but the model has {num_classes} outputs; labels must lie in "
                f"0..{num_classes - 1} (check --data or the head size in --arch-kwargs)."
            )


_SHAPE_WORDS = ("shape", "size", "mat1 and mat2", "expected input", "channels", "dimension")


_SHAPE_WORDS = ("shape", "size", "mat1 and mat2", "expected input", "channels", "dimension")


def input_mismatch(exc: RuntimeError, prep: Prepared, xb: torch.Tensor) -> DataError | None:
    """A one-sentence DataError when the model rejected the inputs' shape (None for other errors)."""
    message = " ".join(str(exc).split())
    if not any(word in message.lower() for word in _SHAPE_WORDS):
        return None
    first = next(((name, m) for name, m in prep.model.named_modules()
                  if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))), None)
    expects = ""
    if first is not None:
        name, module = first
        what = (f"{module.in_features} input features" if isinstance(module, torch.nn.Linear)
                else f"{module.in_channels} input channel(s)")
        expects = f"its first layer {name} ({type(module).__name__}) expects {what}, "
    shape = tuple(xb.shape[1:])
    return DataError(
        f"the model does not accept the inputs of {prep.data.spec!r}: {expects}and each sample has shape {shape} "
        f"({int(np.prod(shape))} values) — torch says: {message[:200]}; pass an --arch whose input size matches the data "
        f"(e.g. input_dim={int(np.prod(shape))} for an MLP) or data of the shape the model was trained on."
    )


def prep_num_classes(prep: Prepared, head) -> int:
    if head is not None:
        return int(head[0].shape[0])
    return int(prep.data.num_classes)
